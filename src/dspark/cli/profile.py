"""`dspark profile`: measure the engine's SPS table for a target (and a drafter's cost).

    dspark profile --target DIR --draft DIR --device cuda --requests 1,8,32,128,512 --out sps.json
    dspark generate ... --policy dspark+gate --sps sps.json      # the scheduler and the gate read it

Times one verify forward per (requests, width) at a fixed context and, with a drafter, whole plain and
drafted engine steps per request count (`dspark.engine.profile`); writes the table (the
`dspark.scheduling.sps_table` format, atomically), prints a table, then ONE JSON line. With no
--target/--draft it profiles the embedded default pair.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dspark.cli.common import add_model_arguments, check_output_file, load_pair, print_json
from dspark.errors import ConfigError


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what} needs integers >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dspark.cli.common import add_output_file_argument

    add_model_arguments(parser)
    add_output_file_argument(parser, required=True, help="SPS table JSON to write")
    parser.add_argument("--requests", default="1,8,32,128", help="request counts, comma-separated (rows per round)")
    parser.add_argument("--widths", default="1,2,4,8", help="tokens verified per request, comma-separated (1 + drafts)")
    parser.add_argument("--context", type=int, default=128, help="prompt tokens already in the cache")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per point (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before each point")
    parser.add_argument("--round-tokens", type=int, default=64, help=argparse.SUPPRESS)  # unused since the engine profiles steps
    parser.add_argument("--no-monotone", action="store_true", help="store the curve as measured (no monotone envelope)")
    parser.add_argument("--no-draft", action="store_true", help="profile the target only (no draft cost)")


def run(args: argparse.Namespace) -> int:
    check_output_file(args.out, "--out")  # before the work, not after it
    from dspark.engine.llm import LLM
    from dspark.engine.profile import profile_engine

    requests, widths = _ints(args.requests, "--requests"), _ints(args.widths, "--widths")
    out = Path(args.out)
    target, drafter = load_pair(args, need_draft=not args.no_draft)
    drafter = None if args.no_draft else drafter
    gamma = drafter.config.num_drafts if drafter is not None else 0
    llm = LLM(target, drafter, max_num_seqs=max(requests), max_num_batched_tokens=max(2048, max(requests) * (gamma + 1)))
    table, rows = profile_engine(llm, requests, widths, args.context, args.repeats, args.warmup,
                                 monotone=not args.no_monotone)
    table.save(out)
    print(f"{'requests':>9}{'width':>7}{'tokens':>8}{'ms':>9}{'steps/s':>9}")
    for row in rows:
        if "width" in row:
            print(f"{row['requests']:>9}{row['width']:>7}{row['tokens']:>8}{row['seconds'] * 1e3:>9.2f}{1 / row['seconds']:>9.1f}")
    for row in rows:
        if "plain_step_seconds" in row:
            drafted = (f", drafted {row['drafted_step_seconds'] * 1e3:.2f} ms -> draft cost {row['draft_seconds'] * 1e3:.2f} ms"
                       if "draft_seconds" in row else "")
            print(f"engine step at {row['requests']} requests: plain {row['plain_step_seconds'] * 1e3:.2f} ms -> request "
                  f"cost {row['request_seconds'] * 1e3:.2f} ms{drafted}")
    print_json({"out": str(out), "device": str(target.device), "runner": table.meta.get("runner"),
                "points": len(table.tokens), "rows": rows})
    return 0
