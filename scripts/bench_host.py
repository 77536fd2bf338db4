"""Host (Python) time of one engine step, by phase, at each concurrency and policy: what a CUDA graph cannot hide.

    python scripts/bench_host.py                                   # C = 1,4,16,64,256 x none, fixed:7, dspark-async(+gate)
    python scripts/bench_host.py --concurrency 64 --policies dspark-async+gate --profile 25

The real engine (`dspark.engine.llm.LLM`) serves C requests of a tiny random-weight Qwen3 (``random:tiny``,
4 layers of width 64) with a random 1-layer DSpark drafter (γ = 7), so the model's math is small next to
the host work around it. The runner is the one an H200 runs (`GraphedStep` over `GraphedDenseTarget`, the
graph inputs written and copied every step) in its ``replay_eagerly`` mode: the captured step runs eagerly on
those buffers instead of replaying, on graph sizes every 8 tokens (`fine_ladder`; `--eager`: the plain
eager runner instead). Drafting policies draw
their acceptance from `--synthetic-acceptance` (default ``dspark/math``; NOT lossless, benchmark only)
and plan on an analytic H200 Qwen3-8B table (`dspark.scheduling.roofline`), so their decisions resemble
the GPU runs' (docs/benchmarks/serving.md).

Every request has a random prompt and never finishes while measured; after the prefills and `--warmup`
decode steps, `--steps` steps are timed with `time.perf_counter` around each part of `LLM.step`:

* schedule  `Scheduler.schedule` less the planner calls inside it (pages, rows, preemption);
* plan      the planner on the critical path: `plan`, `should_draft` and `observe_step`;
* overlap   the planner's `prepare`, which runs while the GPU works (hidden there behind a longer step);
* inputs    `Runner._plan` (the step's `HostPlan`, and `GraphedStep.upload`: its key, the padded layout
            written and sent in one copy, the waiting distributions' stack) and the graph side's host
            work (`GraphedStep`: the output slices);
* forward   `speculative_step` itself (the tiny model; on a GPU this is the graph replay);
* commit    `Runner._read_back` (the one device-to-host read and the per-row results), `Scheduler.update`
            and the per-request outputs;
* host      the whole step less `forward`.

On a GPU (``--device cuda --shape qwen3-8b --drafter-layers 5``) the engine keeps its own runner and replays
real CUDA graphs: `forward` is then only the launch, `commit` includes the wait for the GPU at the one
read-back, and `total` is the step's wall time, so two policies' totals side by side show what a policy's
host work (or its graphs) costs a step.

Median microseconds per step (per phase: the median of that phase's per-step sums). `--profile N` also
prints cProfile's top N functions (own time) of the timed steps of every cell. Prints a table, then ONE
JSON line. CPU host time is the measurement here (host time IS CPU time); the absolute numbers are this
machine's, ratios between code versions are what to read.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

import dspark.engine.graphed_step as graphed_step_module
import dspark.engine.runner as runner_module
from dspark.drafters.base import Drafter
from dspark.engine.graphed_step import GraphedStep
from dspark.engine.graphed_target import GraphedDenseTarget
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.engine.runner import Runner
from dspark.engine.synthetic import NOT_LOSSLESS
from dspark.models import DenseLM
from dspark.scheduling import SPSTable, parse_policy
from dspark.scheduling.roofline import roofline_table
from dspark.targets.adapter import TargetModel
from dspark.targets.random_weights import random_drafter, random_target

POLICIES = ("none", "fixed:7", "dspark-async", "dspark-async+gate")
CONCURRENCY = (1, 4, 16, 64, 256)
PHASES = ("schedule", "plan", "overlap", "inputs", "forward", "commit", "host", "total")
PAGE = 16
LADDER_STEP = 8  # graph sizes of this bench (see fine_ladder)


class _Timed:
    """A callable timed into `phase`; other attributes are the wrapped callable's (the runner finds a
    wrapped `GraphedStep`'s `upload` through it)."""

    def __init__(self, fn: Callable, current: dict[str, float], phase: str, nested_in: str | None) -> None:
        self.fn, self.current, self.phase, self.nested_in = fn, current, phase, nested_in

    def __call__(self, *args: object, **kwargs: object) -> object:
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            self.current[self.phase] += dt
            if self.nested_in is not None:
                self.current[self.nested_in] -= dt

    def __getattr__(self, name: str) -> object:
        return getattr(self.fn, name)


class PhaseTimer:
    """Per-step seconds of each phase, from timed wrappers installed as instance attributes (`install`)."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self._installed: list[tuple[object, str, Callable, bool]] = []  # (owner, name, original, owned)

    def wrap(self, fn: Callable, phase: str, *, nested_in: str | None = None) -> Callable:
        """`fn` timed into `phase` (and taken out of `nested_in`, the phase of a call around it)."""
        return _Timed(fn, self.current, phase, nested_in)

    def install(self, owner: object, name: str, phase: str, nested_in: str | None = None) -> None:
        """Replace `owner.name` (a method, an instance attribute or a module global) by its timed wrapper."""
        original = getattr(owner, name)
        owned = name in getattr(owner, "__dict__", {})
        setattr(owner, name, self.wrap(original, phase, nested_in=nested_in))
        self._installed.append((owner, name, original, owned))

    def uninstall(self) -> None:
        for owner, name, original, owned in reversed(self._installed):
            if owned:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
        self._installed = []

    def step(self, llm: LLM) -> None:
        """One timed `llm.step()`; its phases are kept in `steps`."""
        self.current.clear()
        t0 = time.perf_counter()
        llm.step()
        total = time.perf_counter() - t0
        row = dict(self.current)
        row["total"] = total
        row["host"] = total - row.get("forward", 0.0)
        self.steps.append(row)

    def medians_us(self) -> dict[str, float]:
        return {p: float(np.median([s.get(p, 0.0) for s in self.steps])) * 1e6 for p in PHASES}


def install_timers(timer: PhaseTimer, llm: LLM) -> None:
    sched, runner, planner = llm.scheduler, llm.runner, llm.scheduler.planner
    timer.install(sched, "schedule", "schedule")
    for name in ("plan", "should_draft"):  # called inside schedule
        timer.install(planner, name, "plan", nested_in="schedule")
    timer.install(planner, "observe_step", "plan")  # called by LLM.step
    timer.install(planner, "prepare", "overlap")  # called by the runner between the launch and the read-back
    timer.install(runner, "_plan", "inputs")
    timer.install(runner, "step", "inputs")  # the graph side's host work; the forward inside is taken out
    timer.install(graphed_step_module, "speculative_step", "forward", nested_in="inputs")
    timer.install(runner_module, "speculative_step", "forward", nested_in="inputs")
    timer.install(runner, "_read_back", "commit")
    timer.install(sched, "update", "commit")
    timer.install(llm, "_output", "commit")


# ---------------------------------------------------------------------------------------------- engines
def planner_table(gamma: int, context: int) -> SPSTable:
    """The analytic H200 Qwen3-8B table (with a DSpark drafter's cost) the drafting policies plan on."""
    return roofline_table("h200", "qwen3-8b", context_len=context, drafter="dspark", draft_slots=gamma)


def fine_ladder(budget: int, max_seqs: int) -> tuple[int, ...]:
    """Graph sizes every `LADDER_STEP` tokens (the engine's ladder doubles): padding stays small, so the
    CPU's reference attention does not pay for a padding sequence of hundreds of query tokens."""
    return tuple(sorted({1, 2, 4, max_seqs + 1, *range(LADDER_STEP, budget + LADDER_STEP, LADDER_STEP)}))


def graphed_runner(llm: LLM, drafter: Drafter | None, max_seqs: int, budget: int) -> Runner:
    """The H200's runner (`GraphedStep`) in `replay_eagerly` mode, over the engine's page pool."""
    gamma = drafter.config.num_drafts if drafter is not None else 0
    pages = llm.blocks.num_pages
    backend = GraphedDenseTarget(DenseLM.from_hf_model(llm.target.model), pages, PAGE, max_query_len=gamma + 1,
                                 sizes=fine_ladder(budget, max_seqs), max_model_len=llm.max_model_len)
    backend.replay_eagerly = True
    runner = Runner(backend, drafter, pages, PAGE, llm.synthetic)
    runner.step = GraphedStep(backend, drafter, runner.draft_kv, max_seqs)
    return runner


def build_engine(target: TargetModel, drafter: Drafter, policy: str, concurrency: int, args: argparse.Namespace) -> LLM:
    parsed = parse_policy(policy)
    drafts = not (parsed.kind == "none" or (parsed.kind == "fixed" and parsed.param == 0))
    gamma = drafter.config.num_drafts
    seq_len = args.prompt_len + output_tokens(args, gamma) + gamma + 1
    budget = concurrency * (gamma + 1) + args.prompt_len
    max_model_len = seq_len + LADDER_STEP  # a graph's padding sequence holds < LADDER_STEP tokens
    options: dict[str, object] = dict(max_num_seqs=concurrency, max_num_batched_tokens=budget, page_size=PAGE,
                                      num_pages=concurrency * -(-seq_len // PAGE) + 1, enable_prefix_caching=False,
                                      max_model_len=max_model_len, eos_token_ids=(-1,),
                                      enforce_eager=target.device.type != "cuda" or args.eager)
    if drafts:
        options.update(synthetic_acceptance=args.synthetic_acceptance, synthetic_seed=args.seed)
    context = args.prompt_len + (args.warmup + args.steps) * 3
    sps = planner_table(gamma, context) if drafts else None
    llm = LLM(target, drafter if drafts else None, policy=policy, sps=sps, runner="model", detokenize=False, **options)
    if not args.eager and target.device.type != "cuda":  # on a GPU: the engine's own runner, real graph replays
        llm.runner = graphed_runner(llm, llm.drafter, concurrency, budget)
    return llm


def output_tokens(args: argparse.Namespace, gamma: int) -> int:
    """Tokens every request asks for: more than the prefill steps (< prompt_len), the warm-up and the timed
    steps can commit at γ+1 tokens per step."""
    return (args.prompt_len + args.warmup + args.steps + 8) * (gamma + 1)


def measure(llm: LLM, concurrency: int, args: argparse.Namespace, profile: cProfile.Profile | None) -> dict[str, float]:
    """Median µs per phase over `args.steps` steps of `concurrency` decoding requests (after the warm-up)."""
    rng = np.random.default_rng(args.seed)
    vocab = llm.target.vocab_size
    options = SamplingOptions(output_tokens(args, llm.num_drafts), temperature=1.0, ignore_eos=True)
    for i in range(concurrency):
        llm.add_request(rng.integers(1, vocab, args.prompt_len).tolist(), replace(options, seed=args.seed + i))
    while any(r.in_prefill for r in llm.scheduler.running.values()) or llm.scheduler.waiting:
        llm.step()
    for _ in range(args.warmup):
        llm.step()
    timer = PhaseTimer()
    install_timers(timer, llm)
    try:
        if profile is not None:
            profile.enable()
        for _ in range(args.steps):
            timer.step(llm)
    finally:
        if profile is not None:
            profile.disable()
        timer.uninstall()
    sched = llm.scheduler
    if len(sched.running) != concurrency or sched.num_preemptions or any(r.in_prefill for r in sched.running.values()):
        raise RuntimeError("a request finished, was preempted or prefilled while measured: not a steady decode")
    return timer.medians_us()


def top_functions(profile: cProfile.Profile, count: int) -> str:
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(count)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="comma-separated request counts")
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies")
    p.add_argument("--steps", type=int, default=30, help="timed decode steps per cell")
    p.add_argument("--warmup", type=int, default=10, help="decode steps before timing (after every prefill)")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--drafter-layers", type=int, default=1)
    p.add_argument("--shape", default="tiny", help="random target shape (dspark.targets.random_weights.SHAPES)")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: the engine's own runner replaying real CUDA graphs")
    p.add_argument("--dtype", default=None, help="default float32 on the CPU, bfloat16 on CUDA")
    p.add_argument("--synthetic-acceptance", default="dspark/math", help="acceptance of drafting policies (NOT lossless)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eager", action="store_true", help="the plain eager runner instead of GraphedStep's host path")
    p.add_argument("--torch-threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N functions per cell")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.torch_threads)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    target = random_target(args.shape, args.device, dtype, seed=args.seed)
    drafter = random_drafter(target, "dspark", args.drafter_layers)
    rows = []
    for c in (int(x) for x in args.concurrency.split(",")):
        for policy in (p.strip() for p in args.policies.split(",") if p.strip()):
            llm = build_engine(target, drafter, policy, c, args)
            profile = cProfile.Profile() if args.profile else None
            with torch.no_grad():
                row = {"policy": policy, "concurrency": c, **measure(llm, c, args, profile)}
            rows.append(row)
            print(f"{policy} C={c}: host {row['host']:.0f} µs/step", file=sys.stderr, flush=True)
            if profile is not None:
                print(f"--- cProfile, {policy} C={c} ({args.steps} steps) ---\n{top_functions(profile, args.profile)}")
            del llm
    if args.eager:
        runner = "eager runner"
    elif target.device.type == "cuda":
        runner = "GraphedStep replaying CUDA graphs (forward = launch only; commit includes the wait for the GPU)"
    else:
        runner = "GraphedStep host path (replay_eagerly)"
    device = torch.cuda.get_device_name(target.device) if target.device.type == "cuda" else platform.processor() or "cpu"
    print(f"median µs per engine step and phase; random:{args.shape} + {args.drafter_layers}-layer DSpark (γ=7), {runner}, "
          f"{device}, torch threads {args.torch_threads}; drafting policies: {NOT_LOSSLESS}")
    print(f"{'policy':<20}{'C':>5}" + "".join(f"{p:>10}" for p in PHASES))
    for r in rows:
        print(f"{r['policy']:<20}{r['concurrency']:>5}" + "".join(f"{r[p]:>10.0f}" for p in PHASES))
    print(json.dumps({"bench": "host_time", "date": time.strftime("%Y-%m-%d"), "runner": runner,
                      "acceptance": f"{args.synthetic_acceptance}, {NOT_LOSSLESS}", "unit": "us_per_step_median",
                      "config": vars(args), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
