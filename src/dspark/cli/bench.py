"""`dspark bench serve`: benchmark an OpenAI-compatible server through its HTTP API (see `dspark.serve.bench`).

    dspark bench serve --base-url http://127.0.0.1:8000/v1 --dataset mt-bench --concurrency 1,8,64,256 \\
        --num-prompts 256 [--max-tokens 128] [--plot bench.png]

Prints a table, then one JSON line. Needs `httpx` (the `[serve]` extra); `--plot` needs matplotlib.
A server started with `dspark serve --benchmark --synthetic-acceptance SPEC` is NOT lossless: its results
carry that label on every line. `--synthetic-acceptance SPEC` makes sure the server runs that model.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from dspark.cli.common import check_output_file
from dspark.errors import ConfigError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return values


def add_arguments_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server (http://host:port[/v1])")
    parser.add_argument("--dataset", default="mt-bench", help="shared prompt set (mt-bench, humaneval, ...) or a JSONL file")
    parser.add_argument("--concurrency", type=_int_list, default=[1, 8, 64], help="comma-separated levels, e.g. 1,8,64,256")
    parser.add_argument("--num-prompts", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0, help="request i gets seed + i")
    parser.add_argument("--ignore-eos", action="store_true", help="ask for exactly max-tokens tokens (vLLM's ignore_eos)")
    parser.add_argument("--model", help="model name (default: the first of /v1/models)")
    parser.add_argument("--api-key", help="bearer token for the server")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--plot", help="PNG of throughput against per-user tokens/s")
    parser.add_argument("--synthetic-acceptance", metavar="PRESET|FILE",
                        help="expect a server with this synthetic acceptance (benchmark only, NOT lossless); "
                             "refuse any other")


def run_serve(args: argparse.Namespace) -> int:
    try:
        import httpx  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError("dspark bench serve needs httpx: pip install httpx (or the [serve] extra)") from exc
    from dspark.serve.bench import benchmark, plot, table

    check_output_file(args.plot, "--plot")
    if any(c < 1 for c in args.concurrency):
        raise ConfigError(f"--concurrency levels must be >= 1, got {args.concurrency}")
    result = asyncio.run(benchmark(args.base_url, args.dataset, args.concurrency, args.num_prompts, args.max_tokens,
                                   args.model, args.temperature, args.seed, args.ignore_eos, args.api_key, args.timeout,
                                   expect_acceptance=args.synthetic_acceptance))
    if args.plot:
        plot(result, args.plot)
        result["plot"] = args.plot
    print(table(result))
    print(json.dumps(result))
    return 0
