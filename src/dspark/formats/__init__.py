"""Checkpoint I/O: load any drafter checkpoint (format detected), save in DeepSpec or SpecForge format.

`load_drafter(path, target=None)` reads config.json, recognises the format from `architectures`
(`Qwen3DSparkModel`/`Qwen3Eagle3Model`/`DSparkMTPModel`: DeepSpec style; `DSparkDraftModel`: SpecForge),
builds the drafter and loads its weights. With a target it also checks that they fit (hidden size,
vocabulary, layer count and ids) and fills a missing embedding / LM head from the target.
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
from dspark.formats.io import load_weights, read_json, save_weights, write_json
from dspark.formats.specforge import from_specforge_config, to_specforge_config
from dspark.output_dir import OutputKind, check_output_dir, write_output_dir

FORMATS = ("deepspec", "specforge")
_FROZEN = ("embed_tokens.weight", "lm_head.weight")
LEAN_KEY = "dspark_frozen_from_target"  # config flag of a checkpoint saved without embedding / LM head
# What a drafter checkpoint directory may hold (its own files, calibrate's report, a trainer's state).
CHECKPOINT = OutputKind("drafter checkpoint", frozenset({
    "config.json", "model.safetensors", "trainer_state.pt", "calibration.json", "calibration_reliability.png",
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
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"drafter path {str(path)!r} does not exist or is not a directory")
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


def load_drafter(path: str | Path, target: Any = None, device: str | torch.device = "cpu",
                 dtype: torch.dtype | str | None = None) -> nn.Module:
    config, _ = read_drafter_config(path)
    if target is not None:
        check_compatible(config, target)
    drafter = build_drafter(config)
    state = load_weights(Path(path).expanduser())
    if target is None and any(k not in state for k in _FROZEN):
        raise CheckpointError(f"drafter {str(path)!r} stores no embedding/LM head (a lean checkpoint): "
                              "load it with its target (load_drafter(path, target=...))")
    missing, unexpected = drafter.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (target is not None and k in _FROZEN)]
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
                 write_extra: Callable[[Path], None] | None = None, flag: str = "--out") -> Path:
    """Write config.json + model.safetensors atomically in `fmt` ("deepspec" or "specforge").

    `include_frozen=False` leaves out the embedding and LM head (copies of the target's): a lean
    checkpoint that `load_drafter(path, target=...)` completes from the target. `extra_files` are JSON
    files and `write_extra(directory)` writes more files, both into the checkpoint before it is installed.
    An existing `out_dir` follows `dspark.output_dir` (`overwrite` replaces only a checkpoint dspark wrote).
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose one of {FORMATS}")

    def fill(tmp: Path) -> None:
        write_drafter_files(drafter, tmp, fmt, include_frozen)
        for name, obj in (extra_files or {}).items():
            write_json(tmp / name, obj)
        if write_extra is not None:
            write_extra(tmp)

    return write_output_dir(out_dir, CHECKPOINT, fill, overwrite=overwrite, flag=flag)


def write_drafter_files(drafter: nn.Module, directory: Path, fmt: str = "deepspec", include_frozen: bool = True) -> None:
    """config.json + model.safetensors into an existing (temporary) directory."""
    config: DrafterConfig = drafter.config
    raw = to_specforge_config(config) if fmt == "specforge" else to_deepspec_config(config)
    raw["dtype"] = str(next(drafter.parameters()).dtype).replace("torch.", "")
    state = drafter.state_dict()
    if not include_frozen:
        state = {k: v for k, v in state.items() if k not in _FROZEN}
        raw[LEAN_KEY] = True
    write_json(directory / "config.json", raw)
    save_weights(directory, state)


def export_drafter(src: str | Path, out_dir: str | Path, fmt: str, overwrite: bool = False) -> Path:
    """Convert a checkpoint directory to `fmt`, tensors unchanged (the output is checked before loading)."""
    check_output_dir(out_dir, CHECKPOINT, overwrite)
    return save_drafter(load_drafter(src), out_dir, fmt=fmt, overwrite=overwrite)


__all__ = ["load_drafter", "save_drafter", "write_drafter_files", "export_drafter", "read_drafter_config", "detect_format",
           "check_compatible", "FORMATS", "CHECKPOINT"]
