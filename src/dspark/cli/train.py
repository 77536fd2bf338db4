"""`dspark train --config FILE [--set key=value ...] [--resume]`: train a drafter (plain Python or under torchrun).

    dspark train --config configs/presets/qwen3-4b.toml --set target=/models/Qwen3-4B --set data=train.jsonl
    torchrun --nproc-per-node 8 -m dspark train --config ... (DDP; add --set fsdp=true for FSDP)
    dspark train --config ... --resume       # continue the newest checkpoint in output_dir

An output_dir holding a checkpoint is refused unless --resume is given; a resume is refused when the
checkpoint's target, data or settings differ from this run's (see `dspark.train.resume`).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="JSON or TOML file with the keys that differ from the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest checkpoint in output_dir (target, data and settings must match; "
                             "max_steps, epochs, logging and checkpoint cadence may change)")


def run(args: argparse.Namespace) -> int:
    from dspark.cli.common import print_json
    from dspark.train.config import load_train_config
    from dspark.train.trainer import Trainer

    cfg = load_train_config(args.config, args.set)
    trainer = Trainer(cfg, resume=args.resume)
    last = trainer.fit()
    if trainer.dist.is_main:
        print(f"trained {cfg.method} for {trainer.step} steps; drafter at {trainer.out / 'final'}")
        print_json({"step": trainer.step, **{k: v for k, v in last.items() if k != "step"}})
    return 0
