"""Helpers shared by CLI commands: loading the target/drafter pair and printing results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_TARGET = ASSETS / "tiny-target"
DEFAULT_DRAFT = ASSETS / "tiny-dspark"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", help=f"target model directory or hub id (default: the embedded {DEFAULT_TARGET.name})")
    parser.add_argument("--draft", help=f"drafter checkpoint directory (default: the embedded {DEFAULT_DRAFT.name})")
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")


def load_pair(args: argparse.Namespace, need_draft: bool = True) -> tuple[Any, Any]:
    """The target and drafter the flags name, or the embedded defaults."""
    from dspark import load_drafter, load_target
    from dspark.errors import CheckpointError

    target_path = args.target or (str(DEFAULT_TARGET) if DEFAULT_TARGET.is_dir() else None)
    if target_path is None:
        raise CheckpointError("no --target given and no embedded default model is installed")
    target = load_target(target_path, dtype=args.dtype, device=args.device)
    draft_path = args.draft or (str(DEFAULT_DRAFT) if args.target is None and DEFAULT_DRAFT.is_dir() else None)
    if draft_path is None:
        if need_draft:
            raise CheckpointError("no --draft given (a drafter checkpoint directory is required)")
        return target, None
    return target, load_drafter(draft_path, target=target, device=args.device, dtype=args.dtype)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=float))
