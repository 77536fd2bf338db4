"""Helpers shared by CLI commands: loading the target/drafter pair, checking output paths, printing results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dspark.output_dir import OutputKind

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_TARGET = ASSETS / "tiny-target"
DEFAULT_DRAFT = ASSETS / "tiny-dspark"

# The report directories `dspark eval --out` and `dspark simulate --out` write (see `dspark.output_dir`).
EVAL_OUTPUT = OutputKind("evaluation report", frozenset({
    "results.json", "traces.jsonl", "acceptance_conditional.png", "acceptance_unconditional.png", "reliability.png",
    "threshold_sweep.png"}))
SIMULATION_OUTPUT = OutputKind("simulation report", frozenset({"simulation.json", "frontier.png", "load.png"}))


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help=f"target model directory or hub id (default: the embedded {DEFAULT_TARGET.name})")
    parser.add_argument("--draft", help=f"drafter checkpoint directory (default: the embedded {DEFAULT_DRAFT.name})")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ..., auto)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")


def resolve_device(device: str | None) -> str:
    """`auto` or unset: cuda when available, else cpu; anything else as given (checked by `validate_args`)."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_target_checked(path: str, dtype: str, device: str | None) -> Any:
    """`load_target`, after checking that the weight files are whole (a truncated file is named, not a traceback)."""
    from dspark import load_target
    from dspark.formats.io import check_weight_files

    if Path(path).expanduser().is_dir():
        check_weight_files(Path(path).expanduser())
    return load_target(path, dtype=dtype, device=resolve_device(device))


def load_pair(args: argparse.Namespace, need_draft: bool = True) -> tuple[Any, Any]:
    """The target and drafter the flags name, or the embedded defaults."""
    from dspark import load_drafter
    from dspark.errors import CheckpointError

    target_path = args.target or (str(DEFAULT_TARGET) if DEFAULT_TARGET.is_dir() else None)
    if target_path is None:
        raise CheckpointError("no --target given and no embedded default model is installed")
    device = resolve_device(args.device)
    target = load_target_checked(target_path, args.dtype, device)
    draft_path = args.draft or (str(DEFAULT_DRAFT) if args.target is None and DEFAULT_DRAFT.is_dir() else None)
    if draft_path is None:
        if need_draft:
            raise CheckpointError("no --draft given (a drafter checkpoint directory is required)")
        return target, None
    return target, load_drafter(draft_path, target=target, device=device, dtype=args.dtype)


def check_output_file(path: str | None, flag: str) -> None:
    """Before any work: an output FILE must not be a directory, and the directory it goes in must exist."""
    from dspark.errors import ConfigError

    if path is None:
        return
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConfigError(f"{flag} {path!r} is a directory; give the path of a file to write")
    if not out.parent.is_dir():
        raise ConfigError(f"{flag} {path!r}: directory {str(out.parent)!r} does not exist")


def check_report_dir(path: str | None, kind: OutputKind, overwrite: bool) -> None:
    """Before any work: the `--out` directory of a report may be written (`dspark.output_dir`)."""
    from dspark.output_dir import check_output_dir

    if path is not None:
        check_output_dir(path, kind, overwrite)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=float))
