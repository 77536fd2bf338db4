"""`TrainConfig`: every knob of `dspark train`, with DeepSpec's recipe as the defaults (SPEC §2.5).

Config files (JSON or TOML) hold only what differs from these defaults; `--set key=value` overrides
single fields (values parsed as JSON when they parse, else kept as strings). Every numeric field is
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
}


@dataclass
class TrainConfig:
    target: str = ""  # target model directory or hub id
    output_dir: str = "runs/drafter"
    method: str = "dspark"  # dspark | dflash | eagle3 | mtp
    data: list[str] = field(default_factory=list)  # JSONL files (conversations / turns / text); online mode
    cache: str = ""  # target-cache directory; when set, features come from it (cached mode)
    # drafter shape (None: derived from the target)
    num_draft_layers: int | None = None
    block_size: int = 7
    num_anchors: int = 512
    target_layer_ids: list[int] | None = None
    markov_rank: int = 256
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = True
    confidence_head_with_markov: bool = True
    # data
    max_length: int = 4096
    eval_fraction: float = 0.02
    # optimisation
    lr: float = 6e-4
    warmup_ratio: float = 0.04
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    epochs: float = 10.0
    max_steps: int | None = None  # overrides epochs when set
    global_batch: int = 512  # sequences per optimizer step, over all ranks and accumulation
    micro_batch: int = 1  # sequences per forward per rank
    loss_ce: float = 0.1
    loss_tv: float = 0.9
    loss_conf: float = 1.0
    slot_decay: float = 4.0
    # runtime
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    bf16: bool = True  # autocast on CUDA (master weights stay fp32); ignored on CPU
    fsdp: bool = False  # shard the drafter with FSDP under torchrun (large drafters)
    target_dtype: str = "bfloat16"  # target precision for online features on CUDA (fp32 on CPU)
    feature_dtype: str = "bfloat16"  # online features are rounded to this, exactly like the standard cache
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
        if isinstance(self.data, str):
            self.data = [self.data]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def load_train_config(path: str | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the file (JSON or TOML; may `extends = "other.toml"`), then `key=value` overrides."""
    values: dict[str, Any] = {}
    if path:
        values = _read_file(Path(path))
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
    if "list" in hint:
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
