"""`VerifyPlanner`: the per-step verification decisions of one engine, shared by the engine and the simulator.

Where it sits: the engine's CPU scheduler (and `dspark.sim.engine`) asks it, each step,
1. `should_draft(R)`: run the drafter after this step? (always, unless the policy is ``POLICY+gate``
   and the `DraftGate` finds drafting does not pay at R requests; never for ``none``);
2. `plan(survival, confidence)`: the verify lengths ℓ [R] of the requests whose drafts wait, under the
   named policy. It forms nothing itself: survival a = cumprod(c) comes in [R, γ] (numpy).
The bookkeeping both callers used to keep separately lives here once: the survival of the last two
planned steps (``dspark-async`` ranks with the current values and takes its capacity from the values of
two steps back) and the gate's history of drafted steps. Policies that read the table also learn, from
`observe_step` (the engine's measured step times), what each step costs beyond the table's prediction
(`dspark.scheduling.live_overhead`), and plan with it. Pure numpy: no torch in the scheduler.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling.gate import DraftGate
from dspark.scheduling.live_overhead import LiveOverhead
from dspark.scheduling.policy import async_capacity, parse_policy, plan_verify_lengths
from dspark.scheduling.sps_table import SPSTable

NEEDS_SPS = ("dspark", "dspark-async", "global")
NEEDS_CONFIDENCE = ("threshold", "dspark", "dspark-async", "global")


class Planner(Protocol):
    """What the engine's scheduler asks each step (a `VerifyPlanner`, or a test's scripted planner)."""

    policy: str
    drafting: bool  # does this policy ever draft?
    needs_confidence: bool

    def should_draft(self, num_requests: int) -> bool: ...

    def plan(self, survival: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray: ...


def survival_from_confidence(confidence: np.ndarray) -> np.ndarray:
    """Prefix survival a_j = c_1 ··· c_j: [R, γ] -> [R, γ]."""
    return np.cumprod(np.asarray(confidence, dtype=np.float64), axis=1)


class VerifyPlanner:
    def __init__(self, policy: str, sps: SPSTable | None = None) -> None:
        parsed = parse_policy(policy)
        if (parsed.kind in NEEDS_SPS or parsed.gate) and sps is None:
            raise ConfigError(f"policy {policy!r} needs an SPS table (profile one with `dspark profile`, or pass --sps FILE)")
        self.policy, self.parsed = policy, parsed
        self.base_sps = sps if sps is not None else SPSTable([1, 2], [1.0, 1.0])
        reads_table = parsed.kind in NEEDS_SPS or parsed.gate
        self.live = LiveOverhead() if reads_table else None  # fed by observe_step (the engine)
        self.sps = self.base_sps.with_live(self.live) if self.live is not None else self.base_sps
        self.drafting = not (parsed.kind == "none" or (parsed.kind == "fixed" and parsed.param == 0))
        self.needs_confidence = parsed.kind in NEEDS_CONFIDENCE or parsed.gate
        self.history: deque[np.ndarray] = deque(maxlen=2)  # survival of the last two planned steps
        self._capacity: tuple[np.ndarray, int, int | None, int] | None = None  # (stale, R, live version, K): `prepare`
        self.gate = DraftGate(self.sps, policy) if parsed.gate else None
        self.rounds_planned = 0
        self.tokens_planned = 0  # Σ ℓ over planned rows (mean verify length = tokens / rows)
        self.rows_planned = 0

    def prepare(self, num_requests: int) -> None:
        """Work for the NEXT step that needs only what is known now, done while the GPU runs this one (the
        engine calls it between a step's launch and its read-back): `dspark-async`'s capacity from the
        survival the next plan takes as stale (`history[0]`, for as many rows as this step planned), and
        the gate's gain at `num_requests`. The next step's decisions are exactly those without it."""
        if self.parsed.kind == "dspark-async" and len(self.history) == 2:
            stale, rows = self.history[0], len(self.history[-1])
            if not self._capacity_ready(stale, rows):
                self._capacity = (stale, rows, self._live_version(), async_capacity(stale, self.sps, rows))
        if self.gate is not None:
            self.gate.prefetch(num_requests)

    def _live_version(self) -> int | None:
        return None if self.live is None else self.live.version

    def _capacity_ready(self, stale: np.ndarray, rows: int) -> bool:
        c = self._capacity  # holds `stale` itself: compared by identity, never a recycled id
        return c is not None and c[0] is stale and c[1] == rows and c[2] == self._live_version()

    def observe_step(self, num_requests: int, num_tokens: int, drafted: bool, seconds: float) -> None:
        """A step's measured wall time (start to the next start); its excess over the table feeds `live`.

        Gaps far beyond the prediction (an idle engine waiting for requests) are not overhead: skipped.
        """
        if self.live is None or num_requests < 1 or num_tokens < 1:
            return
        base = self.base_sps
        predicted = float(base.step_time(num_tokens)) + float(base.request_time(num_requests))
        if drafted:
            predicted += float(base.draft_time(num_requests))
        residual = seconds - predicted
        if residual <= 2.0 * predicted + 0.01:
            self.live.observe(num_requests, residual)

    def should_draft(self, num_requests: int) -> bool:
        if not self.drafting or num_requests < 1:
            return False
        return self.gate is None or self.gate.decide(num_requests)

    def plan(self, survival: np.ndarray, confidence: np.ndarray | None = None) -> np.ndarray:
        """Verify lengths [R] (int64) for drafted rows with prefix survival [R, γ]."""
        survival = np.asarray(survival, dtype=np.float64)
        if survival.ndim != 2:
            raise ConfigError(f"survival must be [R, γ], got shape {survival.shape}")
        if survival.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        stale = self.history[0] if len(self.history) == 2 else None
        capacity = None
        if stale is not None and self._capacity_ready(stale, len(survival)):
            capacity = self._capacity[3]  # computed by `prepare` while the GPU ran the last step
        lengths = np.asarray(plan_verify_lengths(survival, self.sps, self.policy, stale_survival=stale,
                                                 confidence=confidence, capacity=capacity), dtype=np.int64)
        self.history.append(survival)
        if self.gate is not None:
            self.gate.observe(survival)
        self.rounds_planned += 1
        self.rows_planned += int(lengths.size)
        self.tokens_planned += int(lengths.sum())
        return lengths

    @property
    def rounds_skipped(self) -> int:
        return 0 if self.gate is None else self.gate.rounds_skipped


def planner_from_args(policy: str, sps_path: str | None) -> VerifyPlanner:
    """A planner for a CLI's --policy / --sps pair (the table file is checked here)."""
    from pathlib import Path

    sps = None
    if sps_path is not None:
        if not Path(sps_path).is_file():
            raise ConfigError(f"SPS table {sps_path!r} not found")
        sps = SPSTable.load(sps_path)
    return VerifyPlanner(policy, sps)
