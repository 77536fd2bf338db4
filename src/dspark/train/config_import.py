"""Import DeepSpec and SpecForge training configs as `TrainConfig` keys (`dspark train --from-deepspec|--from-specforge`).

DeepSpec configs are Python modules (`config/dspark/dspark_qwen3_8b.py`: top-level `model = dict(...)`,
`train`, `logging`, `data`, `seed`, `exp_name`). They are parsed with `ast` and never executed:
literals, `dict(...)` calls, arithmetic on numbers and names assigned earlier in the file are
evaluated; anything else (imported classes, `os.path` calls, `finalize_cfg`) is kept as its source
text, and only the trainer class is read from it. SpecForge configs are YAML recipes
(`examples/configs/*.yaml`, sections `model`, `data`, `training`, `deployment`) whose
`model.draft_model_config` names a draft JSON (read too, relative to the working directory or the
recipe), or such a draft JSON alone. Keys a source does not set take that framework's default
(`SPECFORGE_DEFAULTS`; DeepSpec has none, except the cache builder's `min_loss_tokens` 14).

The key mapping is `DEEPSPEC_KEYS` / `SPECFORGE_KEYS` (documented in docs/config_import.md); source
keys without a counterpart are returned in `Imported.ignored`, with the reason, so they can be shown.
"""

from __future__ import annotations

import ast
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspark.errors import ConfigError

# (section, key) -> our key. Value conversions are in `_convert`.
DEEPSPEC_KEYS: dict[tuple[str, str], str] = {
    ("", "seed"): "seed",
    ("", "exp_name"): "output_dir",
    ("model", "target_model_name_or_path"): "target",
    ("model", "block_size"): "block_size",
    ("model", "ttt_length"): "block_size",
    ("model", "num_draft_layers"): "num_draft_layers",
    ("model", "draft_num_hidden_layers"): "num_draft_layers",
    ("model", "target_layer_ids"): "target_layer_ids",
    ("model", "mask_token_id"): "mask_token_id",
    ("model", "num_anchors"): "num_anchors",
    ("model", "markov_rank"): "markov_rank",
    ("model", "markov_head_type"): "markov_head_type",
    ("model", "confidence_head_alpha"): "loss_conf",
    ("model", "confidence_head_with_markov"): "confidence_head_with_markov",
    ("model", "loss_decay_gamma"): "slot_decay",
    ("model", "ce_loss_alpha"): "loss_ce",
    ("model", "l1_loss_alpha"): "loss_tv",
    ("model", "step_loss_decay"): "step_loss_decay",
    ("train", "trainer_cls"): "method",
    ("train", "lr"): "lr",
    ("train", "warmup_ratio"): "warmup_ratio",
    ("train", "weight_decay"): "weight_decay",
    ("train", "precision"): "bf16",
    ("train", "local_batch_size"): "micro_batch",
    ("train", "global_batch_size"): "global_batch",
    ("train", "num_train_epochs"): "epochs",
    ("train", "max_train_steps"): "max_steps",
    ("train", "max_grad_norm"): "grad_clip",
    ("train", "sharding_strategy"): "fsdp",
    ("train", "torch_compile"): "torch_compile",
    ("logging", "logging_steps"): "log_every",
    ("logging", "checkpointing_steps"): "save_every",
    ("data", "target_cache_path"): "cache",
    ("data", "max_length"): "max_length",
    ("data", "num_workers"): "num_workers",
    ("data", "min_loss_tokens"): "min_loss_tokens",
    ("data", "chat_template_kwargs"): "chat_template_kwargs",
}
TEMPLATE_NOTE = "dspark renders conversations with the tokenizer's own chat template (see chat_template_kwargs)"
DEEPSPEC_DEFAULTS: dict[str, Any] = {"min_loss_tokens": 14}  # scripts/data/prepare_target_cache.py's default

SPECFORGE_KEYS: dict[tuple[str, str], str] = {
    ("", "output_dir"): "output_dir",
    ("model", "target_model_path"): "target",
    ("model", "torch_dtype"): "target_dtype",
    ("model", "mask_token_id"): "mask_token_id",
    ("model", "draft_num_hidden_layers"): "num_draft_layers",
    ("model", "draft_block_size"): "block_size",
    ("data", "train_data_path"): "data",
    ("data", "prompts_path"): "data",
    ("data", "max_length"): "max_length",
    ("data", "dataloader_num_workers"): "num_workers",
    ("training", "strategy"): "method",
    ("training", "num_epochs"): "epochs",
    ("training", "max_steps"): "max_steps",
    ("training", "batch_size"): "micro_batch",
    ("training", "learning_rate"): "lr",
    ("training", "warmup_ratio"): "warmup_ratio",
    ("training", "max_grad_norm"): "grad_clip",
    ("training", "num_anchors"): "num_anchors",
    ("training", "loss_decay_gamma"): "slot_decay",
    ("training", "dspark_ce_loss_alpha"): "loss_ce",
    ("training", "dspark_l1_loss_alpha"): "loss_tv",
    ("training", "dspark_confidence_head_alpha"): "loss_conf",
    ("training", "ttt_length"): "block_size",
    ("training", "save_interval"): "save_every",
    ("training", "eval_interval"): "eval_every",
    ("training", "log_interval"): "log_every",
    ("training", "max_checkpoints"): "keep_checkpoints",
    ("training", "seed"): "seed",
    ("training", "fsdp_sharding"): "fsdp",
}
# SpecForge's schema defaults for what a recipe may leave out (examples/configs/README.md).
SPECFORGE_DEFAULTS: dict[str, Any] = {"lr": 1e-4, "warmup_ratio": 0.015, "grad_clip": 0.5, "epochs": 1.0,
                                      "micro_batch": 1, "max_length": 2048, "log_every": 50, "seed": 42,
                                      "num_anchors": 512, "loss_ce": 0.1, "loss_tv": 0.9, "loss_conf": 1.0}
# draft JSON (`DSparkDraftModel`, DeepSpec style, or nested `dflash_config`) -> our key
DRAFT_JSON_KEYS: dict[str, str] = {
    "num_hidden_layers": "num_draft_layers", "block_size": "block_size", "target_layer_ids": "target_layer_ids",
    "mask_token_id": "mask_token_id", "markov_rank": "markov_rank", "markov_head_type": "markov_head_type",
    "enable_confidence_head": "enable_confidence_head", "confidence_head_with_markov": "confidence_head_with_markov",
    "num_anchors": "num_anchors",
}


@dataclass
class Imported:
    """Our config keys from a foreign config, and the source keys that have no counterpart (with why)."""

    values: dict[str, Any]
    source: str
    ignored: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Unevaluated:
    """A Python expression the importer does not evaluate (a call, an imported name); kept as its text."""

    text: str


# -- safe evaluation of a Python config ---------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _evaluate(node: ast.AST, names: dict[str, Any]) -> Any:
    """The value of a literal-like expression, or `Unevaluated` (nothing is ever executed)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_evaluate(e, names) for e in node.elts]
        return items if not isinstance(node, ast.Tuple) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):  # {**other}
            return Unevaluated(ast.unparse(node))
        return {_evaluate(k, names): _evaluate(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Name):
        value = names.get(node.id, Unevaluated(node.id))
        return value
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args \
            and all(k.arg is not None for k in node.keywords):
        return {k.arg: _evaluate(k.value, names) for k in node.keywords}
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        value = _evaluate(node.operand, names)
        if _number(value) or isinstance(value, bool):
            return _UNARY[type(node.op)](value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        if _number(left) and _number(right) and not (isinstance(node.op, ast.Pow) and abs(right) > 64):
            try:
                return _BINARY[type(node.op)](left, right)
            except (ArithmeticError, ValueError):
                pass
        elif isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            return left + right
    return Unevaluated(ast.unparse(node))


def read_python_config(path: str | Path) -> dict[str, Any]:
    """Top-level assignments of a Python config file, evaluated safely (`_evaluate`); never executed."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} not found")
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise ConfigError(f"config {str(path)!r} is not valid Python: {exc}") from None
    names: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            value = _evaluate(stmt.value, names)
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = value
                elif (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                      and isinstance(names.get(target.value.id), dict)):  # model["lr"] = ...
                    names[target.value.id][_evaluate(target.slice, names)] = value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names[stmt.target.id] = _evaluate(stmt.value, names)
    return names


# -- mapping ------------------------------------------------------------------------------------------
def _flatten(raw: dict[str, Any], sections: set[str]) -> dict[tuple[str, str], Any]:
    out: dict[tuple[str, str], Any] = {}
    for key, value in raw.items():
        if key in sections and isinstance(value, dict):
            out.update({(key, str(k)): v for k, v in value.items()})
        else:
            out[("", key)] = value
    return out


def _deepspec_method(trainer: Any, flat: dict[tuple[str, str], Any]) -> str:
    name = trainer.text if isinstance(trainer, Unevaluated) else str(trainer)
    if "Eagle3" in name:
        return "eagle3"
    if "DSpark" in name:
        heads = (flat.get(("model", "markov_rank")) or 0) > 0 or (flat.get(("model", "confidence_head_alpha")) or 0) > 0
        return "dspark" if heads else "dflash"
    raise ConfigError(f"DeepSpec trainer_cls {name!r} is neither a DSpark nor an Eagle3 trainer")


def _convert(ours: str, value: Any, source_key: str) -> Any:
    if ours == "bf16":
        if value not in ("bf16", "fp32", "float32", "bfloat16"):
            raise ConfigError(f"{source_key} {value!r}: dspark trains in bf16 autocast or fp32 (bf16 = false)")
        return value in ("bf16", "bfloat16")
    if ours == "fsdp":
        return str(value).lower() != "no_shard"
    if ours == "data":
        return [str(value)]
    if ours == "target_dtype":
        return {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(str(value), str(value))
    if ours == "epochs":
        return float(value)
    return value


def _map(flat: dict[tuple[str, str], Any], table: dict[tuple[str, str], str], source: str) -> Imported:
    result = Imported({}, source)
    for key, value in flat.items():
        name = ".".join(k for k in key if k)
        ours = table.get(key)
        if ours is None:
            if not callable(value) and key[1] != "finalize_cfg":
                result.ignored[name] = "no dspark counterpart"
            continue
        if isinstance(value, Unevaluated) and ours != "method":
            result.ignored[name] = f"not a literal ({value.text}); set {ours} yourself"
            continue
        if value is None or (ours in ("save_every", "eval_every") and value == 0):
            continue  # unset in the source: our default (0 intervals mean "off" there)
        result.values[ours] = _convert(ours, value, name)
    return result


def import_deepspec(path: str | Path) -> Imported:
    """A DeepSpec Python config -> our keys (see DEEPSPEC_KEYS)."""
    raw = read_python_config(path)
    flat = _flatten(raw, {"model", "train", "logging", "data"})
    if ("train", "trainer_cls") not in flat:
        raise ConfigError(f"{path}: no train = dict(trainer_cls=...) — not a DeepSpec training config")
    flat[("train", "trainer_cls")] = _deepspec_method(flat[("train", "trainer_cls")], flat)
    if ("", "exp_name") in flat and isinstance(flat[("", "exp_name")], str):
        flat[("", "exp_name")] = f"runs/{flat[('', 'exp_name')]}"
    result = _map(flat, DEEPSPEC_KEYS, str(path))
    alpha = flat.get(("model", "confidence_head_alpha"))
    if isinstance(alpha, (int, float)):
        result.values["enable_confidence_head"] = alpha > 0  # DeepSpec: the head exists iff its loss weight > 0
    for key, value in DEEPSPEC_DEFAULTS.items():
        result.values.setdefault(key, value)
    if ("data", "chat_template") in flat:
        result.ignored["data.chat_template"] = TEMPLATE_NOTE
    return result


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading a SpecForge YAML recipe needs PyYAML (pip install 'dspark[train]')") from None
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"SpecForge recipe {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"SpecForge recipe {str(path)!r} is not a mapping")
    return raw


def _draft_json_values(raw: dict[str, Any]) -> dict[str, Any]:
    nested = raw.get("dflash_config") if isinstance(raw.get("dflash_config"), dict) else {}
    merged = {**raw, **nested}
    out = {ours: merged[key] for key, ours in DRAFT_JSON_KEYS.items() if merged.get(key) is not None}
    if "confidence_head_alpha" in merged:
        out["loss_conf"] = float(merged["confidence_head_alpha"])
    return out


def _find(name: str, recipe: Path) -> Path | None:
    """SpecForge resolves paths from the working directory; also try the recipe's folder and its parents."""
    for base in [Path.cwd(), recipe.parent, *recipe.parent.parents][:5]:
        if (base / name).is_file():
            return base / name
    return None


def import_specforge(path: str | Path) -> Imported:
    """A SpecForge YAML recipe (or a draft-model JSON) -> our keys (see SPECFORGE_KEYS)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"config {str(path)!r} not found")
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
        return Imported(_draft_json_values(raw), str(path))
    raw = _read_yaml(path)
    flat = _flatten(raw, {"model", "data", "training", "deployment", "tracking", "profiling", "runtime"})
    strategy = flat.get(("training", "strategy"), "eagle3")
    if strategy not in ("eagle3", "dflash", "dspark"):
        raise ConfigError(f"{path}: SpecForge strategy {strategy!r} has no dspark counterpart (eagle3, dflash, dspark)")
    flat[("training", "strategy")] = strategy
    result = _map({k: v for k, v in flat.items() if k[0] != "deployment"}, SPECFORGE_KEYS, str(path))
    for key in [k for k in flat if k[0] == "deployment"]:
        result.ignored[".".join(key)] = "launch topology: start dspark train under torchrun instead"
    if ("data", "hidden_states_path") in flat and flat[("data", "hidden_states_path")]:
        result.ignored["data.hidden_states_path"] = ("SpecForge feature files are not a dspark cache; build one with "
                                                     "`dspark cache build` and set cache")
    world = int(flat.get(("deployment", "trainer"), {}).get("nproc_per_node", 1) or 1) * \
        int(flat.get(("deployment", "trainer"), {}).get("nnodes", 1) or 1)
    micro = int(result.values.get("micro_batch", SPECFORGE_DEFAULTS["micro_batch"]))
    result.values["global_batch"] = micro * int(flat.get(("training", "accumulation_steps"), 1) or 1) * world
    result.ignored.pop("training.accumulation_steps", None)
    draft = flat.get(("model", "draft_model_config"))
    if isinstance(draft, str) and draft:
        found = _find(draft, path)
        if found is not None and found.suffix == ".json":
            result.values = {**_draft_json_values(json.loads(found.read_text())), **result.values}
            result.ignored.pop("model.draft_model_config", None)
        else:
            result.ignored["model.draft_model_config"] = f"{draft!r} not found as a JSON file; drafter shape not imported"
    if ("data", "chat_template") in flat:
        result.ignored["data.chat_template"] = TEMPLATE_NOTE
    for key, value in SPECFORGE_DEFAULTS.items():
        result.values.setdefault(key, value)
    return result
