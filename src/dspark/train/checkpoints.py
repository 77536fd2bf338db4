"""Trainer checkpoints: the drafter in DeepSpec format plus `trainer_state.pt`, written atomically.

Layout: `<output_dir>/checkpoints/step-00000500/{config.json, model.safetensors, trainer_state.pt}`.
The weights are the fp32 master weights, lean: the frozen embedding / LM head are the target's and are
not copied into every checkpoint (a resume takes them from the target, as the first run did).
The newest complete checkpoint (one with trainer_state.pt) is what `latest_checkpoint` returns; a
half-written one never exists under its final name (temp dir + rename, `dspark.output_dir`), so a kill
cannot corrupt it, and the temporary directories a kill leaves are removed by `clean_checkpoint_leftovers`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from dspark.formats import CHECKPOINT, write_drafter_files
from dspark.output_dir import clean_leftovers, write_output_dir


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:08d}"


def save_checkpoint(output_dir: str | Path, step: int, drafter: Any, state: dict[str, Any], keep: int = 2,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """`weights`: the drafter's full state dict (gathered from FSDP shards), default `drafter.state_dict()`."""
    def fill(tmp: Path) -> None:
        write_drafter_files(drafter, tmp, "deepspec", include_frozen=False, state=weights)
        torch.save(state, tmp / "trainer_state.pt")

    path = write_output_dir(checkpoint_dir(output_dir, step), CHECKPOINT, fill, overwrite=True)
    existing = sorted(p for p in (Path(output_dir) / "checkpoints").glob("step-*") if (p / "trainer_state.pt").is_file())
    for old in existing[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step-*") if (p / "trainer_state.pt").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def clean_checkpoint_leftovers(output_dir: str | Path) -> list[Path]:
    """Remove the `.step-N.tmp-*` directories of checkpoint writes that were killed."""
    return clean_leftovers(Path(output_dir) / "checkpoints")
