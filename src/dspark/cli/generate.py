"""`dspark generate`: speculative generation, with τ, per-slot acceptance and speed against plain decoding.

    dspark generate --prompt "def fib(n):"                                   # embedded default model
    dspark generate --target DIR --draft DIR --prompt-ids 1,2,3 --max-new-tokens 64 --json
    dspark generate --synthetic-acceptance dspark/math      # benchmark only: acceptance drawn, NOT lossless

`--synthetic-acceptance PRESET|FILE` (`dspark.engine.synthetic`) times the speculative engine with
acceptance drawn from a preset, ``curve:...`` or a JSONL trace instead of the target's verdict: the text
is NOT the target's distribution, and every line printed says so.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from dspark.cli.common import add_model_arguments, load_pair, print_json
from dspark.cli.validation import check_context_length
from dspark.errors import ConfigError, DSparkError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="prompt text (needs a target with a tokenizer)")
    src.add_argument("--prompt-file", help="file whose text is the prompt")
    src.add_argument("--prompt-ids", help="comma-separated token ids")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify-len", type=int, default=None, help="drafts verified per round (default: all)")
    parser.add_argument("--threshold", type=float, default=0.0, help="verify up to the first slot with confidence < T")
    parser.add_argument("--policy", default=None, help="verification-length policy (see `dspark simulate --help`)")
    parser.add_argument("--sps", default=None, help="SPS table JSON for --policy dspark / dspark-async / POLICY+gate")
    parser.add_argument("--no-spec", action="store_true", help="plain target decoding only")
    parser.add_argument("--synthetic-acceptance", metavar="PRESET|FILE",
                        help="benchmark only, NOT lossless: acceptance drawn from a preset (dspark/math, mtp/chat, "
                             "...), curve:a1,a2,... or a JSONL trace")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="no CUDA graphs: every step runs op by op (same results, slower on a GPU)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def prompt_ids(args: argparse.Namespace, tokenizer) -> list[int]:
    if args.prompt_ids is not None:
        try:
            ids = [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError as exc:
            raise DSparkError(f"--prompt-ids must be comma-separated integers: {exc}") from exc
    else:
        text = args.prompt
        if args.prompt_file is not None:
            path = Path(args.prompt_file)
            if not path.is_file():
                raise DSparkError(f"prompt file {args.prompt_file!r} not found")
            text = path.read_text()
        if text is None:
            text = "def fibonacci(n):\n    "
        if tokenizer is None:
            raise DSparkError("this target has no tokenizer: pass --prompt-ids")
        if args.chat and getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
        else:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise DSparkError("the prompt is empty")
    return list(ids)


def _timed(llm, ids: list[int], opts) -> tuple[object, float]:
    """One request through `llm` after an identical warm-up run (graph captures and caches out of the timing)."""
    for timed in (False, True):
        t0 = time.perf_counter()
        rid = llm.add_request(ids, opts)
        while llm.has_unfinished():
            llm.step()
        seconds = time.perf_counter() - t0
    return llm.result(rid), seconds


def run(args: argparse.Namespace) -> int:
    from dspark.engine.decoder import policy_for
    from dspark.engine.llm import LLM
    from dspark.engine.options import SamplingOptions
    from dspark.eval.metrics import summarize

    synthetic = getattr(args, "synthetic_acceptance", None)
    if synthetic is not None and args.no_spec:
        raise ConfigError("--synthetic-acceptance replaces the acceptance of drafts; --no-spec drafts nothing")
    target, drafter = load_pair(args, need_draft=not args.no_spec)
    ids = prompt_ids(args, target.tokenizer)
    check_context_length(target, drafter, len(ids), args.max_new_tokens)
    opts = SamplingOptions(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
    # plain decoding and speculation in the same engine code, side by side in this run
    eager = {"enforce_eager": True} if args.enforce_eager else {}
    base, base_time = _timed(LLM(target, None, max_num_seqs=1, **eager), ids, opts)
    result, spec_time = base, base_time
    if not args.no_spec:
        policy = policy_for(drafter, True, args.verify_len, args.threshold, args.policy)
        extra = dict(eager, **({"synthetic_acceptance": synthetic} if synthetic is not None else {}))
        result, spec_time = _timed(LLM(target, drafter, policy=policy, sps=args.sps, max_num_seqs=1, **extra), ids, opts)
    stats = summarize([result], drafter.config.num_drafts if drafter is not None else 0)
    text = target.tokenizer.decode(result.token_ids) if target.tokenizer is not None else None
    out = {
        "text": text, "token_ids": result.token_ids, "rounds": len(result.rounds),
        "tau": stats["tau"] if stats["tau"] is not None else 1.0,  # no round: only the prefill token
        "accept_lengths": [r.accepted for r in result.rounds],
        "accept_rate_conditional": stats["accept_rate_conditional"],
        "tokens_per_s": len(result.token_ids) / spec_time, "baseline_tokens_per_s": len(base.token_ids) / base_time,
        "finish_reason": result.finish_reason,
    }
    label = result.synthetic_acceptance
    if label is not None:
        out.update(synthetic_acceptance=label, lossless=False)
    if args.json:
        print_json(out)
        return 0
    tag = f" [{label}]" if label is not None else ""
    if label is not None:
        print(f"[dspark] {label}: the text below is NOT the target's distribution (benchmark only)")
    print(text if text is not None else " ".join(map(str, result.token_ids)))
    acc = " ".join("-" if a is None else f"{a:.2f}" for a in stats["accept_rate_conditional"])
    print(f"\n[dspark] tau={out['tau']:.2f} rounds={out['rounds']} per-slot acceptance (conditional): {acc}{tag}")
    print(f"[dspark] {out['tokens_per_s']:.1f} tok/s speculative vs {out['baseline_tokens_per_s']:.1f} tok/s plain "
          f"({out['tokens_per_s'] / out['baseline_tokens_per_s']:.2f}x, same engine, measured in this run on {target.device}){tag}")
    return 0
