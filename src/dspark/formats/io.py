"""Checkpoint file I/O: JSON, and safetensors weights (single file or sharded with an index), checked whole.

Directories are written through `dspark.output_dir` (atomic, never over a user's files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dspark.errors import CheckpointError


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from exc


def save_weights(directory: Path, state: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})


def check_safetensors(path: Path) -> None:
    """Raise `CheckpointError` naming `path` unless it is a whole safetensors file (header and all tensor bytes)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if header_len < 0 or header_len > size - 8:
            raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({size} bytes: no complete safetensors "
                                  "header); copy or download it again")
        try:
            header = json.loads(handle.read(header_len))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise CheckpointError(f"{str(path)!r} is corrupt (unreadable safetensors header)") from None
    if 8 + header_len + end > size:
        raise CheckpointError(f"{str(path)!r} is truncated: {size} bytes, but its header describes "
                              f"{8 + header_len + end}; copy or download it again")


def weight_files(directory: Path) -> list[Path]:
    """model.safetensors, or the shards listed in model.safetensors.index.json ([] when neither exists)."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            return [directory / shard for shard in sorted(set(read_json(index)["weight_map"].values()))]
        except (KeyError, AttributeError, TypeError) as exc:
            raise CheckpointError(f"{str(index)!r} has no valid weight_map: {exc}") from exc
    return []


def check_weight_files(directory: Path) -> None:
    """Refuse, naming the file, a model directory whose safetensors weights are missing, truncated or corrupt."""
    for path in weight_files(Path(directory)):
        if not path.is_file():
            raise CheckpointError(f"weight shard {str(path)!r} is missing")
        check_safetensors(path)


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    files = weight_files(directory)
    check_weight_files(directory)
    try:
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(load_file(str(path)))
        if files:
            return state
    except (OSError, KeyError) as exc:
        raise CheckpointError(f"cannot read weights in {str(directory)!r}: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error type on corrupt files
        raise CheckpointError(f"corrupt weights in {str(directory)!r}: {exc}") from exc
    raise CheckpointError(f"no model.safetensors (or index) in {str(directory)!r}")
