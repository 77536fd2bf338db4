"""Atomic directory writes and safetensors reading (single file or sharded with an index)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from dspark.errors import CheckpointError


def write_dir_atomically(out_dir: str | Path, fill: Callable[[Path], None], overwrite: bool = False) -> Path:
    """Build a directory in a temp sibling, then rename it into place (never a half-written checkpoint)."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and not overwrite:
        raise CheckpointError(f"output {str(out)!r} already exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(read_json(index)["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(str(directory / shard)))
            return state
    except (OSError, KeyError) as exc:
        raise CheckpointError(f"cannot read weights in {str(directory)!r}: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error type on corrupt files
        raise CheckpointError(f"corrupt weights in {str(directory)!r}: {exc}") from exc
    raise CheckpointError(f"no model.safetensors (or index) in {str(directory)!r}")
