"""`dspark pretrain`: pretrain a reference target (Qwen3 architecture, HF format) on a corpus.

    dspark pretrain --preset tiny --corpus runs/corpus --tokenizer runs/tokenizer --output-dir runs/tiny-target
    dspark pretrain --preset small ... --device cuda --time-budget 780

Flags override the preset (see `dspark.reference.presets`). Prints the loss history as a table,
then one JSON line with the summary (also saved as `training_summary.json` in the output). An existing
--output-dir is never deleted: it is refused before training unless it holds a target dspark wrote and
--overwrite is given.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from dspark.cli.common import add_output_dir_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--corpus", required=True, type=Path, help="corpus directory (`dspark data corpus`)")
    parser.add_argument("--tokenizer", required=True, type=Path, help="tokenizer directory (`dspark tokenizer`)")
    add_output_dir_argument(parser, required=True, type=Path, help="output model directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a target dspark wrote in --output-dir")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per optimiser step")
    parser.add_argument("--micro-batch-size", type=int, default=0, help="sequences per forward (0: batch size)")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None, help="wall-clock seconds for the loop (0: none)")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--eval-tokens", type=int, default=None, help="validation tokens per periodic evaluation")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache encoded token streams here")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--save-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])


def run(args: argparse.Namespace) -> int:
    from dspark.reference.presets import get_preset
    from dspark.reference.pretrain import pretrain

    preset = get_preset(args.preset).with_overrides(
        steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
        warmup_steps=args.warmup_steps, time_budget_s=args.time_budget, eval_every=args.eval_every,
        eval_tokens=args.eval_tokens,
    )  # fmt: skip
    summary = pretrain(
        preset, args.corpus, args.tokenizer, args.out, device=args.device, seed=args.seed,
        micro_batch_size=args.micro_batch_size, cache_dir=args.cache_dir, compile_model=args.compile,
        save_dtype=args.save_dtype, command="dspark " + shlex.join(sys.argv[1:]), overwrite=args.overwrite,
    )  # fmt: skip
    print(f"{'step':>7}{'train loss':>12}{'val loss':>10}{'lr':>10}{'time s':>9}")
    for row in summary["history"]:
        val = f"{row['val_loss']:.4f}" if "val_loss" in row else ""
        print(f"{row['step']:>7}{row['train_loss']:>12.4f}{val:>10}{row['lr']:>10.2e}{row['elapsed_s']:>9.1f}")
    print(f"{summary['num_parameters'] / 1e6:.2f}M parameters, {summary['tokens_trained'] / 1e6:.1f}M tokens, "
          f"val loss {summary['val_loss']:.4f}, perplexity {summary['val_perplexity']:.2f}, saved to {args.out}")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("history", "corpus", "preset")}))
    return 0
