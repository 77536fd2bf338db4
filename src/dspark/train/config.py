"""`TrainConfig`: every knob of `dspark train`, with DeepSpec's recipe as the defaults (SPEC §2.5).

Config files (JSON or TOML) hold only what differs from these defaults (a DeepSpec or SpecForge config
can be imported underneath, `train.config_import`); `--set key=value` overrides single fields (values parsed as JSON when they parse, else kept as strings). Every numeric field is
checked against its range in `RANGES` when the config is made (zero anchors, a negative learning rate or
`max_steps = 0` are refused with one line). The resolved config is written beside the outputs as
`train_config.json`.
"""

from __future__ import annotations

import json
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dspark.errors import ConfigError
from dspark.ranges import AT_LEAST_ONE, FRACTION, MAX_TOKENS, NON_NEGATIVE, POSITIVE, Range, check_device

# Valid values of the numeric fields (None, where a field allows it, means "derive it").
RANGES: dict[str, Range] = {
    "num_draft_layers": AT_LEAST_ONE, "block_size": AT_LEAST_ONE, "num_anchors": AT_LEAST_ONE,
    "target_layer_ids": NON_NEGATIVE, "markov_rank": Range(0, note="0: no Markov head"),
    "max_length": Range(2, MAX_TOKENS), "eval_fraction": Range(0, 1, open_high=True),
    "lr": POSITIVE, "warmup_ratio": FRACTION, "weight_decay": NON_NEGATIVE, "grad_clip": POSITIVE,
    "epochs": POSITIVE, "max_steps": AT_LEAST_ONE, "global_batch": AT_LEAST_ONE, "micro_batch": AT_LEAST_ONE,
    "loss_ce": NON_NEGATIVE, "loss_tv": NON_NEGATIVE, "loss_conf": NON_NEGATIVE, "slot_decay": POSITIVE,
    "seed": Range(0), "log_every": AT_LEAST_ONE, "eval_every": AT_LEAST_ONE, "save_every": AT_LEAST_ONE,
    "keep_checkpoints": Range(0, note="0: keep all"), "max_eval_samples": AT_LEAST_ONE,
    "mask_token_id": NON_NEGATIVE, "min_loss_tokens": NON_NEGATIVE, "num_workers": NON_NEGATIVE,
    "step_loss_decay": POSITIVE,
}
DTYPE_NAMES = ("float32", "bfloat16", "float16")

# What every key means (`dspark train --print-config`, `dspark train --help`, docs/training_config.md).
HELP: dict[str, str] = {
    "target": "target model directory or hub id (required)",
    "output_dir": "run directory: train_config.json, metrics.jsonl, tb/, checkpoints/, final/",
    "method": "drafter: dspark | dflash | eagle3 | mtp",
    "data": "JSONL files (conversations, documents or token ids): online mode, features computed by the target",
    "cache": "target-feature cache directory (dspark cache build): cached mode; overrides data",
    "num_draft_layers": "drafter layers (unset: 5 for dspark/dflash, 1 for eagle3/mtp)",
    "block_size": "gamma: drafted tokens per block (eagle3: ttt_length)",
    "num_anchors": "anchor blocks trained per sequence",
    "target_layer_ids": "target layers whose outputs feed the drafter (unset: spread evenly)",
    "mask_token_id": "id filling the block after its anchor (unset: picked from the tokenizer)",
    "markov_rank": "rank of the sequential (Markov) head; 0: none",
    "markov_head_type": "sequential head: vanilla | gated | rnn",
    "enable_confidence_head": "train a confidence head (dspark)",
    "confidence_head_with_markov": "the confidence head also sees the previous token's Markov embedding",
    "max_length": "truncate samples to this many tokens",
    "min_loss_tokens": "drop samples with fewer loss (assistant) tokens (DeepSpec's cache builder uses 14)",
    "chat_template_kwargs": "extra arguments of the chat template, e.g. {enable_thinking = false} for Qwen3",
    "eval_fraction": "share of samples held out for evaluation",
    "num_workers": "background processes preparing batches (0: in the training process)",
    "lr": "peak learning rate (AdamW, betas 0.9/0.95)",
    "warmup_ratio": "share of steps with linear warm-up, then cosine to 0",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "gradient-norm clipping",
    "epochs": "passes over the training samples (ignored when max_steps is set)",
    "max_steps": "optimizer steps (unset: from epochs)",
    "global_batch": "sequences per optimizer step, over all ranks and accumulation",
    "micro_batch": "sequences per forward per rank (accumulation makes up the rest)",
    "loss_ce": "weight of the cross-entropy loss",
    "loss_tv": "weight of the total-variation (L1) loss",
    "loss_conf": "weight of the confidence-head loss",
    "slot_decay": "block slot j is weighted exp(-j / slot_decay)",
    "step_loss_decay": "eagle3: step k of the chain is weighted step_loss_decay ** k",
    "seed": "seed of data order, anchors and initialisation",
    "device": "auto | cpu | cuda (under torchrun each rank takes its local GPU)",
    "bf16": "bf16 autocast on CUDA (master weights stay fp32); ignored on CPU",
    "fsdp": "shard the drafter with FSDP2 under torchrun (else DDP)",
    "torch_compile": "torch.compile the training forward",
    "target_dtype": "target precision for online features on CUDA (fp32 on CPU)",
    "feature_dtype": "online features are rounded to this, like the standard cache",
    "save_dtype": "dtype of final/: auto (the training dtype: bfloat16 with bf16 on CUDA, else float32) or a name",
    "log_every": "steps between metrics lines",
    "eval_every": "steps between evaluations on the held-out split",
    "save_every": "steps between checkpoints",
    "keep_checkpoints": "checkpoints kept (0: all)",
    "max_eval_samples": "held-out samples evaluated",
    "tensorboard": "write TensorBoard logs to output_dir/tb",
}


@dataclass
class TrainConfig:
    target: str = ""
    output_dir: str = "runs/drafter"
    method: str = "dspark"
    data: list[str] = field(default_factory=list)
    cache: str = ""
    # drafter shape (None: derived from the target)
    num_draft_layers: int | None = None
    block_size: int = 7
    num_anchors: int = 512
    target_layer_ids: list[int] | None = None
    mask_token_id: int | None = None
    markov_rank: int = 256
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = True
    confidence_head_with_markov: bool = True
    # data
    max_length: int = 4096
    min_loss_tokens: int = 2
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    eval_fraction: float = 0.02
    num_workers: int = 0
    # optimisation
    lr: float = 6e-4
    warmup_ratio: float = 0.04
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: float = 10.0
    max_steps: int | None = None
    global_batch: int = 512
    micro_batch: int = 1
    loss_ce: float = 0.1
    loss_tv: float = 0.9
    loss_conf: float = 1.0
    slot_decay: float = 4.0
    step_loss_decay: float = 0.8
    # runtime
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    fsdp: bool = False
    torch_compile: bool = False
    target_dtype: str = "bfloat16"
    feature_dtype: str = "bfloat16"
    save_dtype: str = "auto"
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 500
    keep_checkpoints: int = 2
    max_eval_samples: int = 256
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("dspark", "dflash", "eagle3", "mtp"):
            raise ConfigError(f"unknown method {self.method!r}; choose dspark, dflash, eagle3 or mtp")
        for key, valid in RANGES.items():
            valid.check(f"training config key {key!r}", getattr(self, key))
        if self.loss_ce + self.loss_tv + self.loss_conf == 0:
            raise ConfigError("loss_ce, loss_tv and loss_conf are all 0: nothing would be trained")
        check_device("training config key 'device'", self.device)
        for key in ("target_dtype", "feature_dtype", "save_dtype"):
            allowed = DTYPE_NAMES + (("auto",) if key == "save_dtype" else ())
            if getattr(self, key) not in allowed:
                raise ConfigError(f"training config key {key!r} must be one of {list(allowed)}, got {getattr(self, key)!r}")
        if isinstance(self.data, str):
            self.data = [self.data]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_train_config(path: str | None = None, overrides: list[str] | None = None,
                      base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then `base` (an imported DeepSpec / SpecForge config), then the file (JSON or TOML; may
    `extends = "other.toml"`), then `key=value` overrides."""
    values: dict[str, Any] = dict(base or {})
    if path:
        values.update(_read_file(Path(path)))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        values[key.strip()] = _parse_value(text)
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown training config key(s) {unknown}; known keys: {sorted(known)}")
    for key, value in values.items():
        _check_type(key, value)
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"bad training config: {exc}") from exc


def _check_type(key: str, value: Any) -> None:
    """Reject values of the wrong type with a message naming the key (`lr = "abc"`, `epochs = [1]`)."""
    kind = typing.get_type_hints(TrainConfig)[key]
    hint = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
    if value is None and "None" in hint:
        return
    if hint.startswith("dict"):
        ok = isinstance(value, dict)
    elif "list" in hint:
        ok = isinstance(value, list) and all(isinstance(v, int if "int" in hint else str) and not isinstance(v, bool) for v in value)
        ok = ok or ("str" in hint and isinstance(value, str))
    elif "bool" in hint:
        ok = isinstance(value, bool)
    elif "float" in hint:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif "int" in hint:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"training config key {key!r} expects {hint}, got {value!r}")


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"training config {str(path)!r} not found")
    try:
        raw = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"training config {str(path)!r} is malformed: {exc}") from exc
    base = raw.pop("extends", None)
    if base:
        parent = _read_file((path.parent / base).resolve())
        parent.update(raw)
        raw = parent
    return raw


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def config_toml(cfg: TrainConfig | None = None) -> str:
    """Every key of `cfg` (default: the defaults) as TOML, each with its meaning and default as a comment.

    The text is a valid `--config` file; keys whose value is unset (derived) are commented out."""
    cfg = cfg or TrainConfig()
    defaults = asdict(TrainConfig())
    lines = ["# dspark train configuration: every key, its value, its meaning and default (# ...).",
             "# Use as `dspark train --config FILE`; a file needs only the keys that differ from the defaults."]
    for key, value in cfg.to_dict().items():
        default = defaults[key]
        note = HELP[key] + ("" if value == default else f" [default: {_toml_value(default) if default is not None else 'unset'}]")
        lines.append(f"{key} = {_toml_value(value)}  # {note}" if value is not None else f"# {key} =   # {note}")
    return "\n".join(lines) + "\n"


def config_help_lines() -> list[str]:
    """`key (default): meaning` for every key, for `dspark train --help`."""
    return [f"  {key} = {_toml_value(value) if value is not None else '(unset)'}: {HELP[key]}"
            for key, value in asdict(TrainConfig()).items()]
