"""`dspark serve`: an OpenAI-compatible server on the engine (FastAPI + uvicorn, the `[serve]` extra).

    dspark serve                                              # embedded tiny model, http://127.0.0.1:8000/v1
    dspark serve --model DIR --draft DIR --policy dspark-async+gate --api-key KEY     # SPS table profiled at start
    dspark serve DIR --speculative-config '{"method":"dspark","model":"DRAFT","num_speculative_tokens":7}'

The last form is vLLM's spelling: a `vllm serve` command line works with `vllm serve` replaced by
`dspark serve`. `enable_adaptive_verification: true` there selects `--policy dspark-async+gate`; its
SPS table comes from `--sps FILE` or is profiled by the engine at the first start (then cached). The
default policy is the engine's: `fixed:γ` with a drafter, `none` without. Binds 127.0.0.1 unless `--host` says
otherwise; `--api-key` (or DSPARK_API_KEY) guards every route but /health; SIGTERM drains and exits 0.

`--synthetic-acceptance PRESET|FILE` (benchmark only, NOT lossless: acceptance drawn from a model, see
`dspark.engine.synthetic`) is refused unless `--benchmark` is given too; such a server says NOT lossless
in its startup line, in every response's `X-DSpark-Acceptance` header and in its /v1/models entry
(`dspark_acceptance`), and `dspark bench serve` labels its results from there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from dspark.errors import ConfigError

log = logging.getLogger(__name__)

# vLLM's speculative methods -> our drafter methods
SPEC_METHODS = {"dspark": "dspark", "dflash": "dflash", "eagle3": "eagle3", "eagle": "eagle3", "mtp": "mtp",
                "deepseek_mtp": "mtp"}
ADAPTIVE_POLICY = "dspark-async+gate"
SERVE_EXTRA = "pip install 'dspark[serve]' (fastapi, uvicorn, pydantic, httpx, prometheus-client)"


def add_arguments_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="target model directory (same as --model)")
    parser.add_argument("--model", help="target model directory or hub id (default: the embedded tiny model)")
    parser.add_argument("--draft", help="drafter checkpoint directory (default: none, or the embedded drafter "
                                        "when no model is given)")
    parser.add_argument("--speculative-config", help="vLLM-style JSON: {\"method\": \"dspark\", \"model\": DIR, "
                                                     "\"num_speculative_tokens\": K, \"enable_adaptive_verification\": B}")
    parser.add_argument("--no-draft", action="store_true", help="plain decoding, even with the embedded model")
    parser.add_argument("--policy", help="verification-length policy (fixed:K, dspark, dspark-async, POLICY+gate, none; "
                                         "default fixed:γ with a drafter)")
    parser.add_argument("--sps", help="SPS table JSON for dspark / dspark-async / +gate (default: profiled at the "
                                      "first start and cached)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("DSPARK_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but /health (default: $DSPARK_API_KEY)")
    parser.add_argument("--served-model-name", nargs="+", help="name(s) clients use in 'model' (default: the model path)")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="requests decoding at once")
    parser.add_argument("--max-model-len", type=int, help="prompt + output limit (default: the target's)")
    parser.add_argument("--max-num-batched-tokens", type=int, help="tokens per engine step (default: enough for "
                                                                   "every sequence's verify block, at least 2048)")
    parser.add_argument("--num-pages", type=int, help="KV pages of the pool (default: sized for max-num-seqs "
                                                      "full-length sequences within the memory budget)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond --max-num-seqs before "
                                                                   "new ones get HTTP 429")
    parser.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for running requests")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="auto: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--device", default="auto", help="torch device (cpu, cuda, cuda:1, ..., auto)")
    parser.add_argument("--runner", default="auto", choices=["auto", "model", "hf"], help="engine model runner")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="no CUDA graphs: every step runs op by op (same results, slower on a GPU)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--synthetic-acceptance", metavar="PRESET|FILE",
                        help="benchmark only, NOT lossless: acceptance drawn from a preset, curve:... or a JSONL "
                             "trace (needs --benchmark)")
    parser.add_argument("--benchmark", action="store_true", help="allow benchmark-only options that are NOT lossless")


def speculative_config(text: str) -> dict[str, Any]:
    """vLLM's --speculative-config JSON -> {"draft": DIR, "method": ..., "k": K or None, "adaptive": bool}."""
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--speculative-config is not JSON: {exc}") from exc
    if not isinstance(cfg, dict):
        raise ConfigError("--speculative-config must be a JSON object")
    method = cfg.get("method", "dspark")
    if method not in SPEC_METHODS:
        raise ConfigError(f"--speculative-config method {method!r} is not supported; use one of {sorted(SPEC_METHODS)}")
    if not isinstance(cfg.get("model"), str):
        raise ConfigError("--speculative-config needs \"model\": the drafter checkpoint directory")
    k = cfg.get("num_speculative_tokens")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
        raise ConfigError(f"--speculative-config num_speculative_tokens must be an integer >= 0, got {k!r}")
    known = {"method", "model", "num_speculative_tokens", "enable_adaptive_verification"}
    for key in sorted(set(cfg) - known):
        log.warning("--speculative-config: ignoring %r", key)
    return {"draft": cfg["model"], "method": SPEC_METHODS[method], "k": k,
            "adaptive": bool(cfg.get("enable_adaptive_verification", False))}


def _plan(args: argparse.Namespace) -> tuple[str, str | None, str | None, dict[str, Any] | None]:
    """(target path, drafter path, policy, speculative config) from the flags."""
    from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET

    if args.model and args.model_path and args.model != args.model_path:
        raise ConfigError(f"two models given: {args.model_path!r} and --model {args.model!r}")
    target = args.model or args.model_path
    spec = speculative_config(args.speculative_config) if args.speculative_config else None
    if spec is not None and args.draft:
        raise ConfigError("give the drafter once: --draft or --speculative-config's \"model\"")
    draft = spec["draft"] if spec is not None else args.draft
    if target is None:
        target = str(DEFAULT_TARGET)
        if draft is None and not args.no_draft:
            draft = str(DEFAULT_DRAFT)
    if args.no_draft:
        draft = None
    policy = args.policy
    if policy is None and spec is not None:
        policy = ADAPTIVE_POLICY if spec["adaptive"] else (f"fixed:{spec['k']}" if spec["k"] is not None else None)
    return target, draft, policy, spec


def build_llm(args: argparse.Namespace) -> Any:
    from dspark.cli.common import load_target_checked, resolve_device
    from dspark.engine.llm import LLM
    from dspark.formats import load_drafter

    target_path, draft_path, policy, spec = _plan(args)
    device = resolve_device(args.device)
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    target = load_target_checked(target_path, dtype, device)
    drafter = load_drafter(draft_path, target=target, device=device, dtype=dtype) if draft_path else None
    num_drafts = drafter.config.num_drafts if drafter is not None else 0
    if spec is not None:
        if drafter is not None and drafter.config.method != spec["method"]:
            raise ConfigError(f"--speculative-config says method {spec['method']!r}, but {draft_path} is a "
                              f"{drafter.config.method!r} drafter")
        if spec["k"] is not None and spec["k"] > num_drafts:
            raise ConfigError(f"num_speculative_tokens {spec['k']} is more than the drafter proposes ({num_drafts})")
    if policy is None and drafter is None:
        policy = "none"
    batched = args.max_num_batched_tokens or max(2048, args.max_num_seqs * (num_drafts + 1))
    options: dict[str, Any] = {"max_num_seqs": args.max_num_seqs, "max_num_batched_tokens": batched}
    if args.max_model_len is not None:
        options["max_model_len"] = args.max_model_len
    if args.num_pages is not None:
        options["num_pages"] = args.num_pages
    if getattr(args, "synthetic_acceptance", None) is not None:
        options["synthetic_acceptance"] = args.synthetic_acceptance
    if getattr(args, "enforce_eager", False):
        options["enforce_eager"] = True
    llm = LLM(target, drafter, policy=policy, sps=args.sps, runner=args.runner, dtype=dtype, device=device,
              detokenize=False, **options)
    return llm, target_path, draft_path


def check_benchmark_only(args: argparse.Namespace) -> None:
    """Benchmark-only options are refused by a server unless `--benchmark` says the operator means it."""
    if getattr(args, "synthetic_acceptance", None) is not None and not getattr(args, "benchmark", False):
        raise ConfigError(f"--synthetic-acceptance {args.synthetic_acceptance!r} is for benchmarks only (its outputs "
                          f"are NOT lossless): add --benchmark to serve with it")


def run_serve(args: argparse.Namespace) -> int:
    check_benchmark_only(args)
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ConfigError(f"dspark serve needs {exc.name}: {SERVE_EXTRA}") from exc
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    from dspark.serve.app import create_app
    from dspark.serve.engine_loop import EngineLoop
    from dspark.serve.inputs import ModelInfo
    from dspark.serve.metrics import ServerMetrics
    from dspark.serve.server import serve

    llm, target_path, draft_path = build_llm(args)
    names = args.served_model_name or [args.model or args.model_path or Path(target_path).name]
    metrics = ServerMetrics(names[0])
    engine = EngineLoop(llm, metrics, max_queue=args.max_queue)
    app = create_app(engine, ModelInfo.from_llm(llm, names), metrics, api_key=args.api_key)
    shown = "[::1]" if args.host == "::1" else args.host
    print(f"dspark serve: http://{shown}:{args.port}/v1  model {names[0]!r} ({target_path}), drafter "
          f"{draft_path or 'none'}, policy {llm.config.policy}, max_model_len {llm.max_model_len}, "
          f"{llm.blocks.num_pages - 1} KV pages{', API key required' if args.api_key else ''}"
          f"{f', {llm.synthetic_label}: benchmark only' if llm.synthetic_label else ''}", file=sys.stderr,
          flush=True)
    serve(app, engine, args.host, args.port, args.drain_timeout, "info" if args.verbose else "warning")
    return 0
