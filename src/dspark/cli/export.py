"""`dspark export --draft DIR --format deepspec|specforge --out DIR`: convert a drafter checkpoint."""

from __future__ import annotations

import argparse

from dspark.formats import FORMATS, export_drafter, read_drafter_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draft", required=True, help="drafter checkpoint directory (any supported format)")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true")


def run(args: argparse.Namespace) -> int:
    config, src_fmt = read_drafter_config(args.draft)
    out = export_drafter(args.draft, args.out, args.format, overwrite=args.overwrite)
    print(f"exported {config.method} drafter ({src_fmt} -> {args.format}) to {out}")
    return 0
