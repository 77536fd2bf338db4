"""`dspark data regenerate`: the target answers every user turn (in process or via an endpoint).

    dspark data regenerate --target DIR --input prompts.jsonl --output conv.jsonl [--batch-size 8]
    dspark data regenerate --endpoint http://localhost:8000 --input prompts.jsonl --output conv.jsonl \\
        [--model NAME --concurrency 16 --retries 3]

Rerunning the same command after a kill continues where it stopped (see dspark.train.regenerate).
Prints a summary table, then one JSON line. Exits with status 1 when every sample of the run failed
(the reasons are in the failures file).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from dspark.cli.common import add_device_dtype_arguments, add_output_file_argument, check_output_file, load_target_checked
from dspark.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--target", help="target model directory or hub id (in-process HF generation)")
    source.add_argument("--endpoint", help="OpenAI-compatible server URL (e.g. http://localhost:8000)")
    parser.add_argument("--input", required=True, help="JSONL with conversations or {'turns': [...]} prompts")
    add_output_file_argument(parser, dest="output", required=True,
                             help="JSONL of regenerated conversations (appended, resumable)")
    parser.add_argument("--failures", help="failed samples (default: OUTPUT.failures.jsonl)")
    parser.add_argument("--limit", type=int, help="only the first N input records")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chat-template-kwargs", default='{"enable_thinking": false}',
                        help="JSON passed to the chat template (and to the server)")
    parser.add_argument("--batch-size", type=int, default=8, help="in-process: conversations per generate call")
    add_device_dtype_arguments(parser, "the target (in-process)")
    parser.add_argument("--model", help="endpoint: model name (default: first of /v1/models)")
    parser.add_argument("--concurrency", type=int, default=16, help="endpoint: conversations in flight")
    parser.add_argument("--retries", type=int, default=3, help="endpoint: retries per request")
    parser.add_argument("--timeout", type=float, default=600.0, help="endpoint: seconds per request")
    parser.add_argument("--backoff", type=float, default=0.5, help="endpoint: first retry delay in seconds")


def run(args: argparse.Namespace) -> int:
    from dspark.train.regen_backends import EndpointBackend, HFBackend
    from dspark.train.regenerate import RegenerateOptions, SamplingParams, regenerate

    for path, flag in ((args.output, "--output"), (args.failures, "--failures")):
        check_output_file(path, flag)
    try:
        template_kwargs = json.loads(args.chat_template_kwargs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--chat-template-kwargs is not JSON: {exc}") from exc
    options = RegenerateOptions(
        sampling=SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                max_new_tokens=args.max_new_tokens, seed=args.seed),
        chat_template_kwargs=template_kwargs, batch_size=args.batch_size, concurrency=args.concurrency,
        retries=args.retries, timeout=args.timeout, backoff=args.backoff, model=args.model)
    if args.endpoint:
        backend = EndpointBackend(args.endpoint, options)
    else:
        backend = HFBackend(load_target_checked(args.target, args.dtype, args.device), options)
    from tqdm import tqdm

    bar: list[tqdm] = []

    def progress(summary) -> None:  # noqa: ANN001 - RegenerateSummary
        if not bar:
            bar.append(tqdm(total=summary.pending, desc="regenerate", unit="sample"))
        bar[0].update(1)
        bar[0].set_postfix(failed=summary.failed, refresh=False)

    try:
        summary = asdict(regenerate(args.input, args.output, backend, options, args.failures, args.limit, progress))
    finally:
        for b in bar:
            b.close()
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(summary))
    if summary["failed"] and not summary["completed"]:
        print(f"dspark: error: all {summary['failed']} samples of this run failed; the reasons are in "
              f"{summary['failures']}", file=sys.stderr)
        return 1
    return 0
