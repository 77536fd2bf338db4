"""The planner's host time per drafted round, measured: in the engine's own steps (`PlannerTimer`) or as a
microbenchmark (`planner_seconds`), beyond what ``fixed:γ``'s planning (in the SPS profile) already paid.

Where it sits: `dspark.eval.sim_check.engine_cost` prices it as the simulator's plan term
(`dspark.sim.cost.StepCost.plan`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dspark.scheduling import SPSTable, parse_policy
from dspark.sim.acceptance import AcceptanceModel
from dspark.sim.cost import RequestCurve

if TYPE_CHECKING:
    from dspark.engine.llm import LLM


def planner_seconds(policy: str, table: SPSTable, acceptance: AcceptanceModel, num_requests: int, repeats: int = 30,
                    warmup: int = 5, seed: int = 0) -> float:
    """Median host seconds of `should_draft(R)` + `plan(survival, confidences)` of a fresh planner of
    `policy`, on rounds drawn from `acceptance` (a microbenchmark: in an engine step it runs slower)."""
    from dspark.scheduling.planner import VerifyPlanner

    rng = np.random.default_rng(seed)
    planner = VerifyPlanner(policy, table)
    times = []
    for i in range(warmup + repeats):
        conf, _ = acceptance.draw(num_requests, rng)
        survival = np.cumprod(conf, axis=1)
        t0 = time.perf_counter()
        planner.should_draft(num_requests)
        planner.plan(survival, conf)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


class PlannerTimer:
    """Stands in for an engine's planner (``llm.scheduler.planner = PlannerTimer(planner)``) and records
    the host time of every `should_draft` / `plan` call by request count, in the engine's own steps.

    Everything else is the wrapped planner's (attributes pass through); `restore(llm)` puts it back.
    """

    def __init__(self, planner: Any) -> None:
        self.inner = planner
        self.gate: dict[int, list[float]] = defaultdict(list)
        self.plans: dict[int, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def should_draft(self, num_requests: int) -> bool:
        t0 = time.perf_counter()
        out = self.inner.should_draft(num_requests)
        self.gate[int(num_requests)].append(time.perf_counter() - t0)
        return out

    def plan(self, survival: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        t0 = time.perf_counter()
        out = self.inner.plan(survival, confidence)
        self.plans[int(np.shape(survival)[0])].append(time.perf_counter() - t0)
        return out

    def install(self, llm: LLM) -> PlannerTimer:
        llm.scheduler.planner = self
        return self

    def restore(self, llm: LLM) -> None:
        if llm.scheduler.planner is self:
            llm.scheduler.planner = self.inner

    def curve(self, baseline: Any = None) -> RequestCurve | None:
        """Mean seconds of a drafted round's planning (its `plan` call plus a `should_draft` call) by R, less
        `baseline(R)` (what the table's profile already paid), at least 0; None before any `plan` call."""
        rows = sorted(r for r in self.plans if r > 0)
        if not rows:
            return None
        secs = []
        for r in rows:
            gate = float(np.mean(self.gate[r])) if self.gate.get(r) else 0.0
            secs.append(max(0.0, float(np.mean(self.plans[r])) + gate - (baseline(r) if baseline else 0.0)))
        return RequestCurve(tuple(rows), tuple(secs))


def measure_plan_cost(policy: str, table: SPSTable, acceptance: AcceptanceModel | None, requests: Sequence[int],
                      timer: PlannerTimer | None = None, seed: int = 0) -> RequestCurve | None:
    """The planner's host time per drafted round beyond ``fixed:γ``'s (what the table's profile paid), by R.

    From `timer` (the engine's own steps) when it saw any plan, else from `planner_seconds` at `requests`;
    the ``fixed:γ`` part is a microbenchmark either way. None for ``fixed:K`` without a gate (it plans as
    the profile's ``fixed:γ`` does), for a policy that never drafts, or without an acceptance model.
    """
    parsed = parse_policy(policy)
    if acceptance is None or parsed.kind == "none" or (parsed.kind == "fixed" and not parsed.gate):
        return None
    base = f"fixed:{acceptance.gamma}"
    cache: dict[int, float] = {}

    def baseline(r: int) -> float:
        if r not in cache:
            cache[r] = planner_seconds(base, table, acceptance, r, seed=seed)
        return cache[r]

    got = timer.curve(baseline) if timer is not None else None
    if got is not None:
        return got
    rows = sorted({max(1, int(r)) for r in requests})
    return RequestCurve(tuple(rows), tuple(max(0.0, planner_seconds(policy, table, acceptance, r, seed=seed) - baseline(r))
                                           for r in rows))
