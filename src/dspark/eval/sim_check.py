"""The simulator held against the engine: the same workload simulated beside every measured frontier point.

Where it sits: ``scripts/bench_frontier.py --simulate``. For each policy's engine (`dspark.engine.LLM`),
after its closed loops (`dspark.eval.closed_loop`):

1. **Costs** (`engine_cost`): the SPS table the engine's planner uses (or, for policies that need none,
   the one `dspark.engine.profile.table_for` profiles and caches for this engine; re-profiled with
   `profile_engine` at more request counts when the grid goes past the table's largest, so the
   simulator prices no step by extrapolation), plus the terms the table leaves out
   (`dspark.sim.cost.StepCost`), measured here on the same engine:
   * `dspark.eval.step_terms.measure_prefill_cost`: what a prefill chunk adds to a step (steps with and
     without one new request, timed with the profiler's own `median_seconds`, captures excluded);
   * `dspark.eval.step_terms.measure_context_cost`: what a longer context adds per decoding row
     (`profile_engine` at the table's context and at the workload's, one request count);
   * `dspark.eval.plan_cost.measure_plan_cost`: the planner's host time per drafted round beyond
     ``fixed:γ``'s, timed in the closed loops themselves by a `PlannerTimer` standing in for the planner;
   * the CUDA-graph padding ladder of the engine's step (`graph_ladder`; None when it runs eagerly);
   * `dspark.eval.host_cost.measure_host_cost`: the serving loop's per-step excess over all of the
     above, by R (host work the profile's steady steps do not do), from a short calibration closed
     loop of its own on the engine (not the measured points).
2. **Acceptance**: a trace of the measured requests' rounds (`dspark.sim.acceptance.trace_records`, all
   concurrencies of the policy pooled). The engine only sees acceptance among the drafts it VERIFIED:
   rounds with ℓ < γ whose ℓ drafts were all accepted are censored, and the replay continues them slot
   by slot at the round's own calibrated confidences (``censored="confidence"``; exact in distribution
   for synthetic acceptance, whose confidences are the true probabilities).
3. **Simulation** (`simulate_point`): `dspark.sim.engine` with the same policy, closed loop at the same
   concurrency, the same measured / warm-up request counts, the same prompt lengths in the same order
   (`LengthSequence`), the engine's chunked prefill within its `max_num_batched_tokens`, exactly
   `max_tokens` output tokens and the engine's budget rule (the last round verifies what the policy
   chose; its commit is cut).
4. **Errors** (`compare`): simulated / measured − 1 for throughput and per-user tokens/s, per point, and
   the largest |error| per policy (`max_errors`). `simulate_point(..., base=True)` gives the table-only
   model (`dspark simulate --sps TABLE --prefill inline` as it always was) for comparison.

Timings taken here are only as good as the machine: on a shared CPU they are noise, not a measurement.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dspark.errors import DSparkError
from dspark.eval.host_cost import measure_host_cost
from dspark.eval.plan_cost import PlannerTimer, measure_plan_cost
from dspark.eval.step_terms import PREFILL_REQUESTS, measure_context_cost, measure_prefill_cost, pages_fit
from dspark.scheduling import SPSTable, parse_policy
from dspark.scheduling.planner import NEEDS_SPS
from dspark.sim.acceptance import AcceptanceModel, CurveAcceptance, TraceAcceptance, trace_records
from dspark.sim.cost import PrefillCost, StepCost
from dspark.sim.engine import SimConfig, SimResult, simulate
from dspark.sim.workload import Arrivals, LengthDist, LengthSequence

if TYPE_CHECKING:
    from dspark.engine.llm import LLM
    from dspark.eval.frontier import FrontierPoint

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------------------------- costs
def planner_table(llm: LLM, given: SPSTable | None = None) -> SPSTable:
    """The table the engine's planner reads: `given` (the table the engine was built with), else the
    planner's own; for a policy that needs none, the engine's profile (`table_for`: cached, or measured now)."""
    from dspark.engine.profile import table_for

    if given is not None:
        return given
    parsed = parse_policy(llm.config.policy)
    uses_table = parsed.kind in NEEDS_SPS or parsed.gate
    return llm.planner.sps if uses_table else table_for(llm)


def price_table(table: SPSTable) -> SPSTable:
    """The table the simulator prices steps with: the planner's without its live overhead. That overhead is
    what the engine's rounds took beyond the profile; the measured terms (prefill, planning, host) price the
    same time, so counting both made the simulated steps of table-driven policies 20-35% slow (session 11,
    `docs/benchmarks/serving.md`). The simulated planner still plans with the live table, as the engine's."""
    return table.without_live()


def graph_ladder(llm: LLM) -> tuple[int, ...] | None:
    """The token / sequence ladder the engine's CUDA graphs pad decode steps to (None: eager steps)."""
    return llm.runner.graph_ladder()


@dataclass
class EngineCosts:
    """Everything the simulator takes from one engine: its planner's table and the measured step costs."""

    table: SPSTable  # the planner's (the simulated planner reads it)
    cost: StepCost  # the step prices (its table: the planner's, or one profiled at more request counts)
    rows: dict[str, list[dict]] = field(default_factory=dict)  # raw measurements

    def to_dict(self) -> dict[str, Any]:
        out = {"table": self.table.to_dict(), "cost": self.cost.to_dict(), "rows": self.rows}
        if self.cost.table is not self.table:
            out["cost_table"] = self.cost.table.to_dict()
        return out


def table_requests(table: SPSTable) -> list[int]:
    """The request counts a table's per-request curves were profiled at (empty when it has none)."""
    data = table.to_dict()
    return sorted({int(r) for key in ("request_cost", "draft_cost") for r in data.get(key, {}).get("requests", [])})


@dataclass
class _EngineTerms:
    """The policy-independent part of an engine's step costs (one per engine setup: see `engine_terms`)."""

    cost_table: SPSTable | None  # re-profiled at more request counts (None: the planner's table serves)
    prefill: dict[str, PrefillCost]
    context_s: float
    draft_context_s: float
    context_0: float
    rows: dict[str, list[dict]]


_TERMS: dict[tuple, _EngineTerms] = {}  # engine_terms, memoised in this process


def _tried(what: str, fn: Any) -> Any:
    """`fn()`, or None (logged) when this engine cannot measure it: that term is left out, the run goes on."""
    try:
        return fn()
    except DSparkError as exc:
        log.warning("simulator cost model: %s left out (%s)", what, exc)
        return None


def engine_terms(llm: LLM, table: SPSTable, mean_prompt: float, mean_context: float, requests: Sequence[int],
                 cover: Sequence[int], prefill: bool, context: bool, seed: int) -> _EngineTerms:
    """Re-profiled table, prefill and context terms of one engine setup. They do not depend on the policy
    (each measurement sets its own planners), so engines of one target + drafter (`cache_key`) measure
    them once per process; the planning term is the policy's own (`engine_cost`)."""
    from dspark.engine.profile import PROFILE_WIDTHS, cache_key, output_budget, profile_engine

    key = (cache_key(llm), json.dumps(table.to_dict(), sort_keys=True), round(mean_prompt), round(mean_context),
           tuple(requests), tuple(cover), prefill, context, seed, llm.config.max_num_seqs,
           llm.config.max_num_batched_tokens, llm.max_model_len, llm.blocks.num_pages)
    if key in _TERMS:
        return _TERMS[key]
    rows: dict[str, list[dict]] = {}
    cost_table = None
    known = table_requests(table)
    beyond = [int(r) for r in cover if known and int(r) > known[-1]]
    if beyond:
        ctx = int(table.meta.get("context", 64) or 64)
        growth = output_budget(llm.num_drafts, len(PROFILE_WIDTHS), 3, 1)  # what profile_engine's requests grow by
        wanted = sorted({r for r in [*beyond, *known] if 1 <= r <= llm.config.max_num_seqs
                         and ctx + growth < llm.max_model_len and pages_fit(llm, r, ctx + growth)})
        if wanted and wanted[-1] > known[-1]:
            got = _tried("re-profile", lambda: profile_engine(llm, requests=wanted, widths=PROFILE_WIDTHS, context=ctx,
                                                              repeats=3, warmup=1, seed=seed))
            if got is not None:
                cost_table, rows["profile"] = got
    pre: dict[str, PrefillCost] = {}
    if prefill:
        counts = sorted(set(PREFILL_REQUESTS) | {min(max(requests, default=1), llm.config.max_num_seqs - 2)})
        got = _tried("prefill term", lambda: measure_prefill_cost(llm, max(1, round(mean_prompt)), counts, seed=seed))
        if got is not None:
            pre, rows["prefill"] = got
    ctx_s = draft_ctx_s = 0.0
    priced = cost_table or table
    ctx_0 = float(priced.meta.get("context", 0) or 0)
    if context and ctx_0 > 0:
        profiled = [r for r in table_requests(priced) if r <= min(64, llm.config.max_num_seqs)]
        num = max(profiled or [min(16, llm.config.max_num_seqs)])
        budget = output_budget(llm.num_drafts, 2, 3, 1) + 8  # what profile_engine's requests grow by, and some room
        hi = int(min(mean_context, llm.max_model_len - budget))
        while num > 1 and not pages_fit(llm, num, hi + budget):
            num //= 2
        got = None
        if hi >= 2 * ctx_0:  # a difference that stands above the steps' noise
            got = _tried("context term", lambda: measure_context_cost(llm, num, (int(ctx_0), hi), seed=seed))
        if got is not None:
            ctx_s, draft_ctx_s, rows["context"] = got
        else:
            log.info("context term skipped: the workload's context (%.0f) is under twice the table's (%.0f) "
                     "or does not fit max_model_len", mean_context, ctx_0)
    terms = _EngineTerms(cost_table, pre, ctx_s, draft_ctx_s, ctx_0 if (ctx_s or draft_ctx_s) else 0.0, rows)
    _TERMS[key] = terms
    return terms


def engine_cost(llm: LLM, mean_prompt: float, mean_context: float, *, table: SPSTable | None = None,
                acceptance: AcceptanceModel | None = None, requests: Sequence[int] = (1, 16, 64),
                cover: Sequence[int] = (), timer: PlannerTimer | None = None, prefill: bool = True,
                context: bool = True, plan: bool = True, host: bool = True, max_tokens: int = 32,
                seed: int = 0) -> EngineCosts:
    """The planner's table (`planner_table(llm, table)`) and a `StepCost` with the measured terms
    (`prefill` / `context` / `plan` / `host` switch them off). The host term is the excess of a
    calibration closed loop's decoding steps (at the `requests` counts, requests of at most
    `max_tokens` tokens) over all the other terms. The prefill term is measured beside `requests`
    rows (and `PREFILL_REQUESTS`); the plan term comes from `timer` (the planner's calls in the engine's
    closed loops), else is timed at `requests` rows on rounds drawn from `acceptance`. `cover`: request
    counts the step costs must reach; when one is beyond the table's largest, the step costs come from
    `profile_engine` at the table's counts and those beyond (at the table's context), while the
    simulated planner keeps reading the planner's table."""
    table = planner_table(llm, table)
    terms = engine_terms(llm, price_table(table), mean_prompt, mean_context, requests, cover, prefill, context, seed)
    rows = dict(terms.rows)
    plan_cost = measure_plan_cost(llm.config.policy, table, acceptance, requests, timer, seed=seed) if plan else None
    if plan_cost is not None:
        rows["plan"] = [{"requests": r, "seconds": t} for r, t in zip(plan_cost.requests, plan_cost.seconds)]
    cost = StepCost(terms.cost_table or price_table(table), terms.prefill, graph_ladder(llm), terms.context_s,
                    terms.draft_context_s, terms.context_0, plan_cost)
    if host:
        got = _tried("host term", lambda: measure_host_cost(llm, cost, max(1, round(mean_prompt)), requests, max_tokens,
                                                            seed=seed))
        if got is not None:
            curve, rows["host"] = got
            cost = dataclasses.replace(cost, host=curve)
    return EngineCosts(table, cost, rows)


# ---------------------------------------------------------------------------------------------- simulation
def acceptance_from_rounds(rounds: Sequence[Any], name: str) -> TraceAcceptance | None:
    """The replay of an engine's rounds (censored rounds continued at their confidences); None if none drafted."""
    records = trace_records(rounds)
    if not records:
        return None
    conf = np.array([r["confidences"] for r in records], dtype=np.float64)
    return TraceAcceptance(conf, np.array([r["accepted"] for r in records], dtype=np.int64), name=f"trace:{name}",
                           verified=np.array([r["verified"] for r in records], dtype=np.int64), censored="confidence")


NO_DRAFTS = CurveAcceptance((0.5,), name="unused")  # for policies that never draft


@dataclass(frozen=True)
class Workload:
    """What the engine's closed loop ran: prompt lengths in issue order, tokens per request, step budget."""

    prompt_lengths: tuple[int, ...]
    max_tokens: int
    max_num_batched_tokens: int
    seed: int = 0


def simulate_point(policy: str, concurrency: int, num_requests: int, warmup_requests: int, work: Workload,
                   table: SPSTable, cost: StepCost, acceptance: AcceptanceModel | None, *, base: bool = False
                   ) -> SimResult:
    """One frontier point simulated as the engine ran it (module docstring); `base`: the table-only model
    (inline prefill priced on the verify curve, ℓ capped by the remaining tokens, no extra terms)."""
    common = dict(policy=policy, prompt_len=LengthSequence(work.prompt_lengths),
                  output_len=LengthDist("fixed", float(work.max_tokens)), num_requests=num_requests,
                  warmup_requests=warmup_requests, seed=work.seed)
    if base:
        cfg = SimConfig(**common, prefill="inline")
    else:
        cfg = SimConfig(**common, prefill="chunked", max_num_batched_tokens=work.max_num_batched_tokens,
                        verify_past_budget=True, cost=cost)
    return simulate(cfg, Arrivals(concurrency=concurrency), table, acceptance or NO_DRAFTS)


def _err(sim: float, measured: float) -> float:
    return float(sim / measured - 1.0) if measured and np.isfinite(measured) and np.isfinite(sim) else float("nan")


def compare(measured: FrontierPoint, sim: SimResult, base: SimResult | None = None) -> dict[str, Any]:
    """Simulated against measured at one point: both values and the relative error (sim / measured − 1)."""
    row = {"policy": measured.policy, "concurrency": measured.concurrency,
           "throughput": measured.throughput, "sim_throughput": sim.throughput,
           "throughput_error": _err(sim.throughput, measured.throughput),
           "per_user": measured.per_user_mean, "sim_per_user": sim.per_user_mean,
           "per_user_error": _err(sim.per_user_mean, measured.per_user_mean),
           "verify": measured.mean_verify, "sim_verify": sim.mean_budget - 1.0,
           "tau": measured.tau, "sim_tau": sim.mean_committed,
           "drafted": measured.drafted, "sim_drafted": sim.drafted_rounds / max(sim.rounds, 1),
           "simulated": True}
    if base is not None:
        row.update(base_throughput_error=_err(base.throughput, measured.throughput),
                   base_per_user_error=_err(base.per_user_mean, measured.per_user_mean))
    return row


def max_errors(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per policy, the largest |relative error| over its points (throughput, per-user, and the base model's)."""
    out: dict[str, dict[str, float]] = {}
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == policy]
        out[policy] = {key: float(np.nanmax([abs(r[key]) for r in mine]))
                       for key in ("throughput_error", "per_user_error", "base_throughput_error", "base_per_user_error")
                       if all(key in r for r in mine) and not all(np.isnan(r[key]) for r in mine)}
    return out
