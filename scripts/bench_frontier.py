"""Closed-loop serving frontier on the engine: throughput against per-user speed for every policy, one run.

    python scripts/bench_frontier.py --target DIR --drafter DIR --mtp-drafter DIR --prompts gsm8k \\
        --concurrency 1,2,4,8,16,32,64,128,256 --max-tokens 256 --plot frontier.png --json-out frontier.json
    python scripts/bench_frontier.py --target random:qwen3-8b --drafter random:5 \\
        --synthetic-acceptance dspark/math --plot frontier.png          # random weights: NOT lossless

For each policy (default: none, mtp1, fixed:3/5/7, dspark, dspark-async, each speculative one also
+gate) one engine (`dspark.engine.LLM`) is built in this process, one after the other, and for each
concurrency C a closed loop runs on it (`dspark.eval.closed_loop`: C clients, each sending its next prompt
when its last one finished; the first C requests are a warm-up, the next `--num-requests` (default
`measured_requests(C)`: max(32, 4C) up to C = 16, 2C above) are measured; every request makes exactly
`--max-tokens` tokens; `--repeats N` runs the whole policy list N times, in reverse order every other
round, and keeps each point's median-throughput repeat, so that two close policies are compared across
the drift of one lease rather than one window each). Measured per point
(`dspark.eval.frontier`, the simulator's definitions): throughput (output tokens/s over the measured
window), per-user tokens/s (mean over requests of (tokens − 1) / (finish − first token)), TPOT p50/p99,
TTFT p50, mean verify length ℓ per request-round, τ and the share of drafted rounds. Then, from each
curve, the throughput a policy reaches while per-user speed stays >= 50 / 75 / 90% of plain decoding's
concurrency-1 speed, and its per-user speed at plain decoding's throughput there. Prints a table, then
ONE JSON line; `--plot` writes the frontier PNG, `--json-out` the same JSON.

Policies: ``none`` runs no drafter. ``mtp1`` runs an MTP-1 drafter (one layer, one slot, its own cost):
`--mtp-drafter DIR`, or the main drafter when it is MTP-1, or (with synthetic acceptance) ``random``, an
MTP-1 module of random weights fitted to the target; without one, ``mtp1`` is left out of the default
list (fixed:1 on a γ-slot drafter is not MTP-1: it pays the whole drafter's cost). Policies needing an
SPS table take `--sps FILE`; else the table is profiled (and cached, `dspark.engine.profile.table_for`)
on a throwaway engine of the same drafter and options, freed before the policy's own engine is built,
so every measured engine starts alike, without a profile's graphs and requests behind it
(`--profile-in-engine`: the policy's engine profiles itself at start, as `dspark serve` does; on an
H200 in session 14 such an engine served C = 1 at 0.89x the speed of one that did not, in another lease).

`--simulate` holds the simulator against every point (`dspark.eval.sim_check`): after a policy's closed
loops, its engine's SPS table (the planner's; `table_for`'s profile for policies that need none;
re-profiled at the concurrencies past its largest request count, `--sim-requests`), the step costs the
table leaves out (a prefill chunk in a step, longer contexts, the planner's host time, CUDA-graph
padding, the serving loop's host excess from a short calibration loop: `dspark.sim.cost`, measured on
the same engine) and a trace of the measured requests' rounds
feed `dspark.sim.engine` with the same policy, concurrency, request counts, prompt lengths and max
tokens. A second table gives per point the simulated throughput and per-user tokens/s beside the
measured ones and the relative errors (also those of the table-only model, `dspark simulate --sps
TABLE`), then the largest |error| per policy; the JSON gets a "simulation" key. (With --simulate a
`PlannerTimer` times the planner's calls in the closed loops, a microsecond or two per step.)
`--sim-dir DIR` keeps each policy's inputs (POLICY.sps.json, POLICY.cost.json, POLICY.cost.sps.json,
POLICY.trace.jsonl). CPU timings make this a check of the pipeline, not a measurement.

Targets: a model directory, or ``random:SHAPE`` (``qwen3-4b``, ``qwen3-8b``; ``tiny`` for tests) with
random weights made on the device; drafters: a checkpoint directory or ``random[:LAYERS]`` (DSpark,
default 5 layers). Random weights need `--synthetic-acceptance PRESET|FILE` (`dspark.engine.synthetic`:
acceptance drawn from a preset such as ``dspark/math``, a ``curve:...`` or a JSONL trace; the MTP-1
engine draws from `--mtp-synthetic-acceptance`, default ``mtp/DOMAIN`` of the main preset). Such a run
is a benchmark of scheduling, NOT of losslessness: every line it prints says NOT lossless.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import platform
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET, load_target_checked, resolve_device, resolve_dtype_name
from dspark.drafters.base import Drafter
from dspark.engine.llm import LLM
from dspark.engine.profile import PROFILE_WIDTHS, graph_count, output_budget, table_for
from dspark.engine.synthetic import NOT_LOSSLESS
from dspark.errors import ConfigError, DSparkError
from dspark.eval.closed_loop import ClosedLoopRun, default_warmup, run_closed_loop
from dspark.eval.frontier import FrontierPoint, reference_speed, sla_summary
from dspark.eval.plan_cost import PlannerTimer
from dspark.eval.sim_check import (EngineCosts, Workload, acceptance_from_rounds, compare, engine_cost, max_errors,
                                   simulate_point)
from dspark.formats import load_drafter
from dspark.scheduling import SPSTable, parse_policy
from dspark.scheduling.planner import NEEDS_SPS
from dspark.sim.acceptance import CurveAcceptance, trace_records
from dspark.targets.adapter import TargetModel
from dspark.targets.random_weights import random_drafter, random_target

BASE_POLICIES = ("none", "mtp1", "fixed:3", "fixed:5", "fixed:7", "dspark", "dspark-async")
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PAGE = 16


@dataclass
class EngineSpec:
    """How one policy's engine is built: its drafter, the policy string the engine gets, its acceptance."""

    name: str
    policy: str
    drafter: Drafter | None
    synthetic: str | None
    sps: SPSTable | None


class Printer:
    """Every line of a synthetic run carries the NOT lossless label."""

    def __init__(self, synthetic: bool) -> None:
        self.suffix = f"  [{NOT_LOSSLESS}]" if synthetic else ""

    def out(self, line: str = "") -> None:
        print(line + self.suffix, flush=True)

    def log(self, line: str) -> None:
        print(line + self.suffix, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _auto_or_ints(text: str) -> str | list[int]:
    word = text.strip().lower()
    return word if word in ("auto", "none") else _ints(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="model directory or random:SHAPE (default: the embedded tiny target)")
    p.add_argument("--drafter", help="drafter directory or random[:LAYERS] (default: the embedded tiny drafter)")
    p.add_argument("--mtp-drafter", help="MTP-1 drafter for the mtp1 policy: a directory or 'random'")
    p.add_argument("--policies", default="default", help="comma-separated policies; 'default' = "
                   + ",".join(BASE_POLICIES) + " and each speculative one +gate")
    p.add_argument("--concurrency", type=_ints, default=list(CONCURRENCY), help="comma-separated client counts")
    p.add_argument("--max-tokens", type=int, default=256, help="output tokens of every request (ignore_eos)")
    p.add_argument("--prompts", help="prompt set name (gsm8k, mt-bench, ...) or JSONL file (default: random ids)")
    p.add_argument("--prompt-len", type=int, default=256, help="length of the random prompts")
    p.add_argument("--num-prompts", type=int, default=512, help="distinct prompts (cycled)")
    p.add_argument("--num-requests", type=int, help="measured requests per point (default max(32, 4C) up to C = 16, "
                   "2C above)")
    p.add_argument("--repeats", type=int, default=1, help="run every policy this many times, the order reversed on "
                   "every other round (ABBA); each point reports its median-throughput repeat, the JSON every repeat")
    p.add_argument("--warmup-requests", type=int, help="warm-up requests per point (default max(2C, 16))")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-acceptance", metavar="PRESET|FILE", help="benchmark only, NOT lossless")
    p.add_argument("--mtp-synthetic-acceptance", metavar="PRESET|FILE", help="the mtp1 engine's (default mtp/DOMAIN)")
    p.add_argument("--sps", help="SPS table JSON for dspark / dspark-async / +gate (default: profiled, cached)")
    p.add_argument("--mtp-sps", help="SPS table JSON for mtp1+gate")
    p.add_argument("--profile-in-engine", action="store_true", help="a policy's engine profiles its own SPS table "
                   "at start (default: a throwaway engine profiles it first)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--runner", default="auto", choices=["auto", "model", "hf"])
    p.add_argument("--prefix-caching", action="store_true", help="keep the prefix cache on (off: every prompt prefills)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--plot", help="PNG of throughput against per-user tokens/s per policy")
    p.add_argument("--json-out", help="write the JSON result here too")
    p.add_argument("--memory-snapshot", help="CUDA: record allocations and write torch's memory snapshot (pickle) "
                   "here on an out-of-memory error (view it at pytorch.org/memory_viz)")
    p.add_argument("--simulate", action="store_true", help="simulate every point with the engine's own costs and "
                   "acceptance trace, and report the simulator's error")
    p.add_argument("--sim-dir", help="with --simulate: keep each policy's SPS table, cost terms and trace here")
    p.add_argument("--sim-requests", type=_auto_or_ints, default="auto",
                   help="with --simulate: request counts the step costs must cover (re-profiled where the "
                   "planner's table stops short): auto = the concurrencies, none, or a list")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- models
def load_models(args: argparse.Namespace) -> tuple[TargetModel, Drafter | None, str, str]:
    device = resolve_device(args.device)
    target_spec = args.target or str(DEFAULT_TARGET)
    if target_spec.startswith("random:"):
        dtype = resolve_dtype_name(args.dtype, device)
        target = random_target(target_spec.split(":", 1)[1], device, dtype, seed=args.seed)
    else:
        dtype = resolve_dtype_name(args.dtype, device, target_spec)
        target = load_target_checked(target_spec, dtype, device)
    return target, make_drafter(args.drafter or (str(DEFAULT_DRAFT) if args.target is None else None), target, "dspark"), device, dtype


def make_drafter(spec: str | None, target: TargetModel, method: str) -> Drafter | None:
    if spec is None:
        return None
    if spec == "random" or spec.startswith("random:"):
        layers = spec.split(":", 1)[1] if ":" in spec else ("5" if method == "dspark" else None)
        if layers is not None and not layers.isdigit():
            raise ConfigError(f"drafter {spec!r}: expected random or random:LAYERS (an integer)")
        return random_drafter(target, method, None if layers is None else int(layers))
    return load_drafter(spec, target=target, device=target.device, dtype=target.dtype)


def mtp_spec(main: str | None, given: str | None) -> str | None:
    if main is None or given is not None:
        return given
    _, sep, domain = main.lower().partition("/")
    if sep and not main.startswith("curve:") and not main.endswith(".jsonl"):
        return f"mtp/{domain}"
    raise ConfigError(f"--synthetic-acceptance {main!r} names no domain: give the mtp1 engine its own with "
                      f"--mtp-synthetic-acceptance (e.g. mtp/chat)")


def policy_list(args: argparse.Namespace, gamma: int, mtp: Drafter | None, confident: bool, printer: Printer
                ) -> list[str]:
    """The explicit --policies, or the default list trimmed to what the drafters can run (a note for mtp1)."""
    if args.policies != "default":
        names = [p.strip() for p in args.policies.split(",") if p.strip()]
        for name in names:
            parse_policy(name)
        return names
    names = []
    for base in BASE_POLICIES:
        parsed = parse_policy(base)
        if base == "mtp1" and mtp is None:
            printer.log("note: no MTP-1 drafter (--mtp-drafter DIR, or random with --synthetic-acceptance): mtp1 left out")
            continue
        if base.startswith("fixed:") and parsed.param > gamma:
            continue
        if gamma == 0 and base != "none":
            continue
        names.append(base)
        scores = mtp.config.has_confidence if base == "mtp1" and mtp is not None else confident
        if base != "none" and (scores or args.synthetic_acceptance):  # the gate reads confidences
            names.append(base + "+gate")
    if not confident and not args.synthetic_acceptance:
        names = [n for n in names if parse_policy(n).kind not in ("dspark", "dspark-async")]
    return names


def engine_specs(args: argparse.Namespace, target: TargetModel, drafter: Drafter | None, printer: Printer
                 ) -> list[EngineSpec]:
    gamma = drafter.config.num_drafts if drafter is not None else 0
    synthetic = args.synthetic_acceptance
    if drafter is not None and gamma == 1:
        mtp = drafter
    else:
        mtp_source = args.mtp_drafter or ("random" if synthetic else None)
        mtp = make_drafter(mtp_source, target, "mtp") if mtp_source else None
    confident = drafter is not None and drafter.config.has_confidence
    names = policy_list(args, gamma, mtp, confident, printer)
    sps = SPSTable.load(args.sps) if args.sps else None
    mtp_sps = SPSTable.load(args.mtp_sps) if args.mtp_sps else None
    specs = []
    for name in names:
        parsed = parse_policy(name)
        if parsed.kind == "none" or (parsed.kind == "fixed" and parsed.param == 0):
            specs.append(EngineSpec(name, name, None, None, None))
        elif name.lower().removesuffix("+gate") == "mtp1" and mtp is not drafter:
            if mtp is None:
                raise ConfigError("policy mtp1 needs an MTP-1 drafter: --mtp-drafter DIR (or 'random' with "
                                  "--synthetic-acceptance)")
            specs.append(EngineSpec(name, name, mtp, mtp_spec(synthetic, args.mtp_synthetic_acceptance), mtp_sps))
        else:
            if drafter is None:
                raise ConfigError(f"policy {name!r} drafts, but no --drafter was given")
            specs.append(EngineSpec(name, name, drafter, synthetic, sps))
    return specs


def prompt_set(args: argparse.Namespace, target: TargetModel) -> list[list[int]]:
    if args.prompts is None:
        rng = np.random.default_rng(args.seed)
        return [rng.integers(0, target.vocab_size, args.prompt_len).tolist() for _ in range(args.num_prompts)]
    from dspark.eval.runner import _Prompter, load_conversations, resolve_prompt_sets

    (ps,) = resolve_prompt_sets([args.prompts])
    prompter = _Prompter(target)
    limit = int(getattr(target.text_config, "max_position_embeddings", 0) or 1 << 20) - args.max_tokens - 16
    prompts = [ids for conv in load_conversations(ps.path, args.num_prompts) if len(ids := prompter.prompt(conv, [])) <= limit]
    if not prompts:
        raise ConfigError(f"--prompts {args.prompts}: no prompt fits the target's context with {args.max_tokens} new tokens")
    return prompts


# ---------------------------------------------------------------------------------------------- run
def measured_requests(concurrency: int) -> int:
    """Measured requests of a point by default: 4C and at least 32 up to C = 16, 2C above, so that a
    point at low concurrency measures a window of several seconds (8 requests at C = 4 made a ~1 s window
    on an H200, where the same point moved 9% between leases; 16 at C = 1 and 32 at C = 4 still left 2-3%
    between two runs of one policy in session 15)."""
    return max(32, 4 * concurrency) if concurrency <= 16 else 2 * concurrency


def median_points(rounds: list[list[FrontierPoint]]) -> list[FrontierPoint]:
    """One point per (policy, concurrency) from several repeats of the grid: the repeat whose throughput is
    the median (the lower middle one for an even count), in the first round's order, each with every
    repeat's throughput in ``extra['repeat_throughput']``."""
    by_key: dict[tuple[str, int], list[FrontierPoint]] = {}
    for points in rounds:
        for p in points:
            by_key.setdefault((p.policy, p.concurrency), []).append(p)
    out = []
    for key, group in by_key.items():
        ranked = sorted(group, key=lambda p: p.throughput)
        chosen = ranked[(len(ranked) - 1) // 2]
        chosen.extra = {**chosen.extra, "repeat_throughput": [round(p.throughput, 3) for p in group]}
        out.append(chosen)
    return out


def build_engine(spec: EngineSpec, target: TargetModel, args: argparse.Namespace, longest: int, mean_prompt: float) -> LLM:
    gamma = spec.drafter.config.num_drafts if spec.drafter is not None else 0
    top = max(args.concurrency)
    context = int(mean_prompt + args.max_tokens / 2)  # the planner's SPS table is profiled at the workload's context
    # room for the start-up profile's requests at that context (`startup_profile`: its widths and the one of γ+1)
    seq_len = max(longest + args.max_tokens + gamma + 1, context + output_budget(gamma, len(PROFILE_WIDTHS) + 1, 3, 1))
    num_pages = max(top * -(-seq_len // PAGE) + 1, 2048)
    # every policy gets the same room for prefill beside a full round of verify blocks
    budget = top * (gamma + 1) + max(2048, longest)
    options: dict[str, object] = dict(max_num_seqs=top, max_num_batched_tokens=budget,
                                      num_pages=num_pages, page_size=PAGE, enable_prefix_caching=args.prefix_caching,
                                      max_model_len=max(seq_len, 512), profile_context=context)
    if spec.synthetic is not None:
        options.update(synthetic_acceptance=spec.synthetic, synthetic_seed=args.seed)
    return LLM(target, spec.drafter, policy=spec.policy, sps=spec.sps, runner=args.runner, detokenize=False, **options)


def graph_counts(llm: LLM) -> dict[str, int]:
    """CUDA graphs captured so far and graphed / eager steps of the engine (empty off the GPU)."""
    step = llm.runner.step
    if not hasattr(step, "graphs"):
        return {}
    out = {"graphs": len(step.graphs), "graph_steps": step.num_graph_steps, "eager_steps": step.num_eager_steps}
    if torch.cuda.is_available():  # device memory held (GiB): where a long grid runs out, and why
        out.update(mem_gib=round(torch.cuda.memory_allocated() / 2**30, 2),
                   peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    return out


def memory_report(printer: Printer, top: int = 15) -> None:
    """After a CUDA out-of-memory error: the allocator's totals and the largest live tensors by shape."""
    sizes: dict[tuple[str, tuple[int, ...]], list[int]] = {}
    seen = 0
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                seen += 1
                key = (str(obj.dtype), tuple(obj.shape))
                sizes.setdefault(key, []).append(obj.untyped_storage().nbytes())
        except Exception:  # objects that fail to answer isinstance / storage: not tensors we can size
            continue
    stats = torch.cuda.memory_stats()
    printer.log(f"memory: allocated {stats.get('allocated_bytes.all.current', 0) / 2**30:.2f} GiB, "
                f"reserved {stats.get('reserved_bytes.all.current', 0) / 2**30:.2f} GiB; {seen} CUDA tensors seen by gc")
    ranked = sorted(sizes.items(), key=lambda kv: -sum(kv[1]))[:top]
    for (dtype, shape), nbytes in ranked:
        printer.log(f"  {len(nbytes):5d} x {dtype} {list(shape)}: {sum(nbytes) / 2**30:.2f} GiB (storage)")


def profile_apart(spec: EngineSpec, target: TargetModel, args: argparse.Namespace, longest: int,
                  mean_prompt: float, tables: dict[int, SPSTable]) -> EngineSpec:
    """`spec` with the SPS table its planner reads, profiled on a throwaway engine (once per drafter, kept
    in `tables`), when it needs one and none was given; otherwise `spec` itself."""
    parsed = parse_policy(spec.policy)
    if spec.sps is not None or spec.drafter is None or not (parsed.kind in NEEDS_SPS or parsed.gate):
        return spec
    key = id(spec.drafter)
    if key not in tables:
        gamma = spec.drafter.config.num_drafts
        llm = build_engine(replace(spec, policy=f"fixed:{gamma}"), target, args, longest, mean_prompt)
        try:
            tables[key] = table_for(llm)
        finally:
            del llm
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return replace(spec, sps=tables[key])


def run_policy(spec: EngineSpec, target: TargetModel, prompts: list[list[int]], args: argparse.Namespace,
               printer: Printer, simulate: bool = False) -> tuple[list[FrontierPoint], str | None, dict | None]:
    """The policy's closed loops on its own engine; with `simulate` also the simulator's rows for them."""
    llm = build_engine(spec, target, args, max(len(p) for p in prompts), float(np.mean([len(p) for p in prompts])))
    label = llm.synthetic_label
    points, runs = [], []
    timer = PlannerTimer(llm.scheduler.planner).install(llm) if simulate else None  # host time of the planning
    try:
        for c in args.concurrency:
            n = args.num_requests or measured_requests(c)
            run = run_closed_loop(llm, prompts, c, n, args.max_tokens, warmup_requests=args.warmup_requests,
                                  temperature=args.temperature, seed=args.seed, captures=functools.partial(graph_count, llm))
            point = run.point(spec.name)
            caught, caught_s = run.window_captures()
            point.extra = {"wall_s": run.wall_s, "acceptance": label or "lossless", **graph_counts(llm),
                           "window_captures": caught, "window_capture_s": round(caught_s, 4)}
            points.append(point)
            runs.append(run)
            mem = f", {point.extra['mem_gib']} GiB held" if "mem_gib" in point.extra else ""
            printer.log(f"{spec.name} c={c}: {point.throughput:.1f} tok/s, {point.per_user_mean:.1f} tok/s/user, "
                        f"verify {point.mean_verify:.2f}, {run.wall_s:.1f} s, {point.extra.get('graphs', 0)} graphs "
                        f"({caught} captured in the measured window, {caught_s:.3f} s){mem}")
        if timer is not None:
            timer.restore(llm)
        sim = simulate_policy(spec, llm, prompts, points, runs, timer, args, printer) if simulate else None
    except torch.cuda.OutOfMemoryError:
        memory_report(printer)
        if args.memory_snapshot:
            torch.cuda.memory._dump_snapshot(args.memory_snapshot)
            printer.log(f"memory snapshot written to {args.memory_snapshot}")
        raise
    finally:
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return points, label, sim


def simulate_policy(spec: EngineSpec, llm: LLM, prompts: list[list[int]], points: list[FrontierPoint],
                    runs: list[ClosedLoopRun], timer: PlannerTimer | None, args: argparse.Namespace,
                    printer: Printer) -> dict:
    """`dspark.eval.sim_check` for one engine: its costs, its rounds' trace, every point simulated."""
    lengths = tuple(len(p) for p in prompts)
    mean_prompt = float(np.mean(lengths))
    t0 = time.time()
    acceptance = acceptance_from_rounds([rec for run in runs for rec in run.rounds], spec.name)
    if acceptance is None and spec.drafter is not None:  # a gate that never opened: nothing recorded to replay
        printer.log(f"{spec.name}: no drafted round recorded; the simulator replays 'nothing accepted'")
        acceptance = CurveAcceptance((1e-6,) * llm.num_drafts, name="none recorded")
    cover = {"auto": args.concurrency, "none": []}.get(args.sim_requests, args.sim_requests)
    costs = engine_cost(llm, mean_prompt, mean_prompt + args.max_tokens / 2, table=spec.sps, acceptance=acceptance,
                        requests=args.concurrency, cover=cover, timer=timer, max_tokens=args.max_tokens, seed=args.seed)
    work = Workload(lengths, args.max_tokens, llm.config.max_num_batched_tokens, args.seed)
    rows = []
    for point in points:
        c = point.concurrency
        n = args.num_requests or measured_requests(c)
        warm = default_warmup(c) if args.warmup_requests is None else args.warmup_requests
        sim = simulate_point(spec.policy, c, n, warm, work, costs.table, costs.cost, acceptance)
        base = simulate_point(spec.policy, c, n, warm, work, costs.table, costs.cost, acceptance, base=True)
        rows.append(compare(point, sim, base))
    printer.log(f"{spec.name}: simulated {len(rows)} points ({time.time() - t0:.1f} s with the cost measurements)")
    trace = None
    if acceptance is not None:
        trace = {"records": int(acceptance.accepted.size), "gamma": acceptance.gamma,
                 "censored": acceptance.censored_fraction, "conditional": acceptance.conditional_acceptance().tolist()}
    if args.sim_dir:
        save_sim_inputs(args.sim_dir, spec.name, costs, runs)
    engine = {k: v for k, v in costs.to_dict().items() if k != "rows"}  # the raw measurements: --sim-dir
    return {"rows": rows, "engine": {**engine, "trace": trace}}


def save_sim_inputs(directory: str, name: str, costs: EngineCosts, runs: list[ClosedLoopRun]) -> None:
    """POLICY.sps.json (the planner's table), POLICY.cost.json (`StepCost.to_dict` and the raw measurements),
    POLICY.cost.sps.json (the step prices' table, when re-profiled) and POLICY.trace.jsonl (for
    `dspark simulate --sps ... --acceptance ...`)."""
    from pathlib import Path

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    stem = name.replace(":", "-").replace("+", "_")
    costs.table.save(out / f"{stem}.sps.json")
    if costs.cost.table is not costs.table:  # the step prices' table, profiled at more request counts
        costs.cost.table.save(out / f"{stem}.cost.sps.json")
    terms = {"cost": costs.cost.to_dict(), "rows": costs.rows}
    (out / f"{stem}.cost.json").write_text(json.dumps(terms, indent=1) + "\n")
    records = trace_records([r for run in runs for r in run.rounds])
    if records:  # none for a policy that never drafted
        with open(out / f"{stem}.trace.jsonl", "w") as fh:
            fh.writelines(json.dumps(rec) + "\n" for rec in records)


def _fmt(x: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if x is None or x != x else f"{x:>{width}.{digits}f}"


def print_report(points: list[FrontierPoint], sla: list[dict], printer: Printer, title: str) -> None:
    printer.out(title)
    printer.out(f"{'policy':<20}{'conc':>5}{'tok/s':>10}{'tok/s/user':>11}{'TPOT p50':>9}{'TPOT p99':>9}"
                f"{'TTFT p50':>9}{'verify':>7}{'tau':>6}{'drafted':>8}{'reqs':>5}")
    printer.out(f"{'':<20}{'':>5}{'':>10}{'':>11}{'ms':>9}{'ms':>9}{'ms':>9}")
    for p in points:
        printer.out(f"{p.policy:<20}{p.concurrency:>5}{p.throughput:>10.1f}{p.per_user_mean:>11.1f}"
                    f"{_fmt(p.tpot['p50'] * 1e3, 9, 2)}{_fmt(p.tpot['p99'] * 1e3, 9, 2)}{_fmt(p.ttft['p50'] * 1e3, 9)}"
                    f"{p.mean_verify:>7.2f}{p.tau:>6.2f}{p.drafted:>8.2f}{p.num_measured:>5}")
    if not sla:
        return
    printer.out()
    printer.out("throughput (tok/s) at per-user speed >= S, S = a fraction of plain decoding's lowest-concurrency "
                "speed (x = vs none there; user@thr = tok/s/user at none's throughput there)")
    head = "".join(f"{format(row['fraction'], '.0%') + ' S=' + format(row['per_user_target'], '.1f'):>30}" for row in sla)
    printer.out(f"{'policy':<20}{head}")
    for policy in sla[0]["throughput"]:
        cells = []
        for row in sla:
            thr, gain, user = row["throughput"][policy], row["vs_reference"][policy], row["per_user_at_reference_throughput"][policy]
            cells.append(f"{_fmt(thr, 9)} {'x' + format(gain, '.2f') if gain is not None else '-':>6} "
                         f"{'user@thr ' + format(user, '.1f') if user is not None else '-':>13}")
        printer.out(f"{policy:<20}" + "".join(f"{c:>30}" for c in cells))


def print_sim_report(rows: list[dict], printer: Printer, cpu: bool) -> None:
    printer.out()
    printer.out("simulator against the engine (SIMULATED beside MEASURED; err = simulated / measured - 1; table-only = "
                "the SPS table alone, inline prefill)" + ("; CPU timings: a pipeline check, NOT a measurement" if cpu else ""))
    printer.out(f"{'policy':<20}{'conc':>5}{'tok/s':>10}{'sim':>10}{'err':>8}{'tok/s/user':>11}{'sim':>9}{'err':>8}"
                f"{'table-only err':>16}{'verify':>7}{'sim':>6}{'tau':>6}{'sim':>6}{'drafted':>8}{'sim':>6}")
    for r in rows:
        base = f"{r['base_throughput_error']:+.1%} {r['base_per_user_error']:+.1%}" if "base_throughput_error" in r else "-"
        printer.out(f"{r['policy']:<20}{r['concurrency']:>5}{r['throughput']:>10.1f}{r['sim_throughput']:>10.1f}"
                    f"{r['throughput_error']:>+8.1%}{r['per_user']:>11.1f}{r['sim_per_user']:>9.1f}{r['per_user_error']:>+8.1%}"
                    f"{base:>16}{r['verify']:>7.2f}{r['sim_verify']:>6.2f}{r['tau']:>6.2f}{r['sim_tau']:>6.2f}"
                    f"{r['drafted']:>8.2f}{r['sim_drafted']:>6.2f}")
    for policy, err in max_errors(rows).items():
        base = (f" (table-only: {err['base_throughput_error']:.1%}, {err['base_per_user_error']:.1%})"
                if "base_throughput_error" in err else "")
        printer.out(f"max |error| {policy}: throughput {err['throughput_error']:.1%}, "
                    f"per-user {err['per_user_error']:.1%}{base}")


def summary(args: argparse.Namespace, points: list[FrontierPoint], labels: dict[str, str | None], device: str,
            dtype: str, seconds: float, sims: dict[str, dict] | None = None) -> dict[str, object]:
    """The JSON result (also written after every policy with --json-out, so a cut-short run keeps its points)."""
    synthetic = args.synthetic_acceptance is not None
    has_none = any(p.policy == "none" for p in points)
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "cpu"
    result = {"bench": "frontier", "lossless": not synthetic, "note": NOT_LOSSLESS if synthetic else "lossless",
              "synthetic_acceptance": {k: v for k, v in labels.items() if v} or None, "device": gpu, "dtype": dtype,
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "seconds": seconds, "config": vars(args),
              "reference_per_user": reference_speed(points) if has_none else None,
              "points": [p.to_dict() for p in points], "sla": sla_summary(points) if has_none else [], "plot": args.plot}
    if sims is not None:
        rows = [row for sim in sims.values() for row in sim["rows"]]
        result["simulation"] = {"note": "SIMULATED (dspark.sim) beside the measured points" + (
                                    "; CPU timings: a pipeline check, NOT a measurement" if device == "cpu" else ""),
                                "points": rows, "max_abs_error": max_errors(rows),
                                "engines": {name: sim["engine"] for name, sim in sims.items()}}
    return result


def write_json(path: str | None, result: dict[str, object]) -> str:
    line = json.dumps(result, default=float)
    if path:
        with open(path, "w") as fh:
            fh.write(line + "\n")
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    printer = Printer(args.synthetic_acceptance is not None)
    t0 = time.time()
    points: list[FrontierPoint] = []
    labels: dict[str, str | None] = {}
    sims: dict[str, dict] | None = {} if args.simulate else None
    try:
        if args.target and args.target.startswith("random:") and not args.synthetic_acceptance:
            raise ConfigError("a random-weight target accepts nothing: give --synthetic-acceptance PRESET|FILE")
        if args.memory_snapshot and torch.cuda.is_available():
            torch.cuda.memory._record_memory_history(max_entries=200_000)
        target, drafter, device, dtype = load_models(args)
        prompts = prompt_set(args, target)
        longest, mean_prompt = max(len(p) for p in prompts), float(np.mean([len(p) for p in prompts]))
        if args.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
        tables: dict[int, SPSTable] = {}
        specs = engine_specs(args, target, drafter, printer)
        rounds: list[list[FrontierPoint]] = []
        for r in range(args.repeats):
            rounds.append([])
            for spec in (specs if r % 2 == 0 else specs[::-1]):
                if not args.profile_in_engine:
                    spec = profile_apart(spec, target, args, longest, mean_prompt, tables)
                got, labels[spec.name], sim = run_policy(spec, target, prompts, args, printer,
                                                         simulate=args.simulate and r == 0)
                rounds[-1] += got
                if sims is not None and sim is not None:
                    sims[spec.name] = sim
                points = median_points(rounds)
                write_json(args.json_out, summary(args, points, labels, device, dtype, time.time() - t0, sims))
        result = summary(args, points, labels, device, dtype, time.time() - t0, sims)
    except DSparkError as exc:
        print(f"bench_frontier: error: {exc}", file=sys.stderr)
        return 2
    drafter_name = args.drafter or (DEFAULT_DRAFT.name if args.target is None else "no drafter")
    print_report(points, result["sla"], printer, f"frontier: {target.path} + {drafter_name} on {result['device']} "
                 f"({dtype}), {args.max_tokens} tokens/request, {args.prompts or 'random prompts'}")
    if result.get("simulation"):
        print_sim_report(result["simulation"]["points"], printer, device == "cpu")
    if args.plot:
        from dspark.sim.plots import plot_frontier

        kind = f"MEASURED, {NOT_LOSSLESS}" if printer.suffix else "MEASURED"
        slas = [row["per_user_target"] for row in result["sla"]]
        plot_frontier(points, args.plot, f"{target.path}, {args.max_tokens} tok/req", slas, kind=kind)
    print(write_json(args.json_out, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
