"""Checkpoint I/O: load any drafter checkpoint (format detected), save in DeepSpec or SpecForge format.

`load_drafter(path, target=None)` reads config.json, recognises the format from `architectures`
(`Qwen3DSparkModel`/`Qwen3Eagle3Model`/`DSparkMTPModel`: DeepSpec style; `DSparkDraftModel`: SpecForge),
builds the drafter and loads its weights. `path` is a directory or a hub id (`formats.hub`). With a
target it also checks that they fit (hidden size, vocabulary, layer count and ids) and fills a missing
embedding / LM head from the target.

Saved checkpoints are what serving engines read: `config.json` (with the stored `dtype`) and
`model.safetensors`, sharded with an index above `max_shard_bytes`; a lean checkpoint leaves out the
frozen embedding / LM head and says so in its config (`LEAN_KEY`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dspark.drafters import build_drafter
from dspark.drafters.config import DrafterConfig
from dspark.errors import CheckpointError, IncompatibleModelsError
from dspark.formats.deepspec import from_deepspec_config, to_deepspec_config
from dspark.formats.hub import resolve_checkpoint_dir
from dspark.formats.io import DEFAULT_MAX_SHARD_BYTES, INDEX_NAME, load_weights, read_json, save_weights, write_json
from dspark.formats.specforge import from_specforge_config, to_specforge_config
from dspark.output_dir import OutputKind, check_output_dir, write_output_dir

FORMATS = ("deepspec", "specforge")
_FROZEN = ("embed_tokens.weight", "lm_head.weight")
LEAN_KEY = "dspark_frozen_from_target"  # config flag of a checkpoint saved without embedding / LM head
# What a drafter checkpoint directory may hold (its own files, calibrate's report, a trainer's state).
CHECKPOINT = OutputKind("drafter checkpoint", frozenset({
    "config.json", "model.safetensors", INDEX_NAME, "trainer_state.pt", "calibration.json", "calibration_reliability.png",
    "training_summary.json"}))


def detect_format(raw: dict[str, Any]) -> str:
    arch = (raw.get("architectures") or [""])[0]
    if arch == "DSparkDraftModel":
        return "specforge"
    if arch in ("Qwen3DSparkModel", "Qwen3Eagle3Model", "DSparkMTPModel"):
        return "deepspec"
    raise CheckpointError(
        f"unknown drafter architecture {raw.get('architectures')!r}: expected Qwen3DSparkModel, Qwen3Eagle3Model, "
        "DSparkMTPModel (DeepSpec style) or DSparkDraftModel (SpecForge)"
    )


def read_drafter_config(path: str | Path) -> tuple[DrafterConfig, str]:
    directory = resolve_checkpoint_dir(path)
    raw = read_json(directory / "config.json")
    fmt = detect_format(raw)
    where = str(directory / "config.json")
    return (from_specforge_config(raw, where) if fmt == "specforge" else from_deepspec_config(raw, where)), fmt


def check_compatible(config: DrafterConfig, target: Any) -> None:
    """Raise `IncompatibleModelsError` naming the first mismatch between drafter and target."""
    pairs = [("hidden size", config.hidden_size, target.hidden_size), ("vocabulary size", config.vocab_size, target.vocab_size),
             ("number of target layers", config.num_target_layers, target.num_layers)]
    for what, mine, theirs in pairs:
        if mine != theirs:
            raise IncompatibleModelsError(f"drafter {what} is {mine} but the target's is {theirs}")
    target.validate_layer_ids(config.target_layer_ids)


def is_lean(path: str | Path) -> bool:
    """Whether a checkpoint directory was saved without the frozen embedding / LM head."""
    return bool(read_json(resolve_checkpoint_dir(path) / "config.json").get(LEAN_KEY, False))


def load_drafter(path: str | Path, target: Any = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None, allow_lean: bool = False) -> nn.Module:
    """`allow_lean` (no target): a lean checkpoint loads with its embedding / LM head left at their initial
    values, for conversions that write it lean again; never use such a drafter for decoding."""
    directory = resolve_checkpoint_dir(path)
    config, _ = read_drafter_config(directory)
    if target is not None:
        check_compatible(config, target)
    drafter = build_drafter(config)
    state = load_weights(directory)
    if target is None and not allow_lean and any(k not in state for k in _FROZEN):
        raise CheckpointError(f"drafter {str(path)!r} stores no embedding/LM head (a lean checkpoint): "
                              "load it with its target (load_drafter(path, target=...), or --target)")
    missing, unexpected = drafter.load_state_dict(state, strict=False)
    missing = [k for k in missing if not ((target is not None or allow_lean) and k in _FROZEN)]
    if missing or unexpected:
        raise CheckpointError(f"drafter weights in {str(path)!r} do not match its config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    if target is not None and any(k not in state for k in _FROZEN):
        drafter.init_from_target(target)
    for name in ("embed_tokens", "lm_head"):
        getattr(drafter, name).requires_grad_(False)
    if dtype is not None:
        from dspark.targets.adapter import resolve_dtype

        drafter.to(resolve_dtype(dtype))
    return drafter.to(device).eval()


def save_drafter(drafter: nn.Module, out_dir: str | Path, fmt: str = "deepspec", overwrite: bool = False,
                 extra_files: dict[str, Any] | None = None, include_frozen: bool = True,
                 write_extra: Callable[[Path], None] | None = None, flag: str = "--output-dir",
                 state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | str | None = None,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write config.json + safetensors weights atomically in `fmt` ("deepspec" or "specforge").

    `include_frozen=False` leaves out the embedding and LM head (copies of the target's): a lean
    checkpoint that `load_drafter(path, target=...)` completes from the target. `extra_files` are JSON
    files and `write_extra(directory)` writes more files, both into the checkpoint before it is installed.
    `state` replaces `drafter.state_dict()` (a state gathered from FSDP shards), `dtype` casts the floating
    tensors, and weights above `max_shard_bytes` are sharded with an index. An existing `out_dir` follows
    `dspark.output_dir` (`overwrite` replaces only a checkpoint dspark wrote). Files get the usual modes
    (the umask's), so a serving process running as another user can read them.
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")

    def fill(tmp: Path) -> None:
        write_drafter_files(drafter, tmp, fmt, include_frozen, state=state, dtype=dtype, max_shard_bytes=max_shard_bytes)
        for name, obj in (extra_files or {}).items():
            write_json(tmp / name, obj)
        if write_extra is not None:
            write_extra(tmp)

    return write_output_dir(out_dir, CHECKPOINT, fill, overwrite=overwrite, flag=flag)


def write_drafter_files(drafter: nn.Module, directory: Path, fmt: str = "deepspec", include_frozen: bool = True,
                        state: dict[str, torch.Tensor] | None = None, dtype: torch.dtype | str | None = None,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> list[str]:
    """config.json + safetensors weights into an existing (temporary) directory; returns the weight files."""
    from dspark.targets.adapter import resolve_dtype

    config: DrafterConfig = drafter.config
    raw = to_specforge_config(config) if fmt == "specforge" else to_deepspec_config(config)
    state = dict(drafter.state_dict() if state is None else state)
    if dtype is not None:
        cast = resolve_dtype(dtype)
        state = {k: v.to(cast) if v.is_floating_point() else v for k, v in state.items()}
    stored = next((v.dtype for v in state.values() if v.is_floating_point()), next(drafter.parameters()).dtype)
    raw["dtype"] = str(stored).replace("torch.", "")
    if not include_frozen:
        state = {k: v for k, v in state.items() if k not in _FROZEN}
        raw[LEAN_KEY] = True
    write_json(directory / "config.json", raw)
    return save_weights(directory, state, max_shard_bytes)


def export_drafter(src: str | Path, out_dir: str | Path, fmt: str, overwrite: bool = False, target: Any = None,
                   dtype: torch.dtype | str | None = None, lean: bool | None = None,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, flag: str = "--output-dir") -> Path:
    """Convert a checkpoint to `fmt` (the output is checked before anything is loaded).

    `target` completes a lean checkpoint (and checks that the drafter fits it); `lean` chooses whether
    the embedding / LM head are written (None: as the source has them, or in full when a target is
    given); `dtype` casts the weights (None: as stored)."""
    check_output_dir(out_dir, CHECKPOINT, overwrite, flag=flag)
    src_lean = is_lean(src)
    if lean is None:
        lean = src_lean and target is None
    if src_lean and not lean and target is None:
        raise CheckpointError(f"drafter {str(src)!r} is a lean checkpoint (no embedding / LM head): give its target "
                              "(--target) to write them, or export it lean")
    drafter = load_drafter(src, target=target, allow_lean=lean)
    stored = read_json(resolve_checkpoint_dir(src) / "config.json").get("dtype")
    dtype = dtype or (stored if stored in ("float32", "bfloat16", "float16") else None)
    return save_drafter(drafter, out_dir, fmt=fmt, overwrite=overwrite, include_frozen=not lean, dtype=dtype,
                        max_shard_bytes=max_shard_bytes, flag=flag)


__all__ = ["load_drafter", "save_drafter", "write_drafter_files", "export_drafter", "read_drafter_config", "detect_format",
           "check_compatible", "is_lean", "FORMATS", "CHECKPOINT", "LEAN_KEY"]
