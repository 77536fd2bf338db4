"""`dspark train --config FILE [--set key=value ...] [--resume]`: train a drafter (plain Python or under torchrun).

    dspark train --config configs/presets/qwen3-4b.toml --set target=/models/Qwen3-4B --set data=train.jsonl
    torchrun --nproc-per-node 8 -m dspark train --config ... (DDP; add --set fsdp=true for FSDP2)
    dspark train --config ... --resume       # continue the newest checkpoint in output_dir
    dspark train --from-deepspec config/dspark/dspark_qwen3_8b.py --set data=train.jsonl
    dspark train --from-specforge examples/configs/qwen3-8b-dspark-offline.yaml --print-config > run.toml

Settings are layered: defaults, an imported DeepSpec (Python, read without running it) or SpecForge
(YAML recipe or draft JSON) config, `--config`, `--output-dir`, then `--set`. `--print-config` prints the
result as a TOML file with every key, its meaning and default, and exits: that is also the converter.
An output_dir holding a checkpoint is refused unless --resume is given; a resume is refused when the
checkpoint's target, data or settings differ from this run's (see `dspark.train.resume`).
"""

from __future__ import annotations

import argparse
import logging

from dspark.cli.common import add_output_dir_argument

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dspark.train.config import config_help_lines

    parser.add_argument("--config", default=None, help="JSON or TOML file with the keys that differ from the defaults")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--from-deepspec", metavar="CONFIG.py",
                        help="import a DeepSpec training config (a Python file; parsed, never executed)")
    source.add_argument("--from-specforge", metavar="RECIPE.yaml",
                        help="import a SpecForge recipe (YAML) or draft-model config (JSON)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key (repeatable; the value is read as JSON when it parses)")
    add_output_dir_argument(parser, default=None, help="the run directory (same as --set output_dir=DIR)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest checkpoint in output_dir (target, data and settings must match; "
                             "max_steps, epochs, logging and checkpoint cadence may change)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (every key with its meaning and default) as TOML and exit")
    parser.epilog = "config keys (default: meaning):\n" + "\n".join(config_help_lines())


def resolve_config(args: argparse.Namespace):
    """The `TrainConfig` the flags describe, and the imported source's keys that have no counterpart."""
    from dspark.train.config import load_train_config

    imported, ignored = {}, {}
    if args.from_deepspec or args.from_specforge:
        from dspark.train.config_import import import_deepspec, import_specforge

        result = import_deepspec(args.from_deepspec) if args.from_deepspec else import_specforge(args.from_specforge)
        imported, ignored = result.values, result.ignored
    overrides = ([f"output_dir={args.out}"] if args.out else []) + list(args.set)
    return load_train_config(args.config, overrides, base=imported), ignored


def run(args: argparse.Namespace) -> int:
    import sys

    from dspark.cli.common import print_json
    from dspark.train.config import config_toml

    cfg, ignored = resolve_config(args)
    for key, why in ignored.items():
        print(f"dspark: note: imported key {key!r} not used: {why}", file=sys.stderr)
    if args.print_config:
        print(config_toml(cfg), end="")
        return 0
    from dspark.train.trainer import Trainer

    trainer = Trainer(cfg, resume=args.resume)
    last = trainer.fit()
    if trainer.dist.is_main:
        print(f"trained {cfg.method} for {trainer.step} steps; drafter at {trainer.out / 'final'}")
        print_json({"step": trainer.step, **{k: v for k, v in last.items() if k != "step"}})
    return 0
