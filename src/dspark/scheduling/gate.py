"""The draft gate: skip drafting in a round when its expected gain does not pay for the drafter's cost.

Where it sits: `DraftGate.decide(R) ─► draft this round or not`, asked BEFORE the drafter runs (by
`dspark.scheduling.planner.VerifyPlanner`, shared by the engine and `dspark.sim`, for policies named ``POLICY+gate``); the
survival of the rounds that drafted is fed in by `observe`.

The verification-length policies only choose how many drafts to verify; the drafter itself has already
run, so its cost (`SPSTable.draft_time(R)`) is paid every round. Under heavy load, or with a weak drafter,
the best speculative round can be slower per committed token than a plain decoding round. The gate
compares, for the R active requests,

* Θ_draft = the expected throughput of a drafted round whose verify lengths the gated policy itself
  chooses on the expected prefix survival (round time `1/SPS(R + Σℓ) + request_time(R) + draft_time(R)`;
  with `dspark`'s early stop on a jagged table that can be ℓ = 0 everywhere), and
* Θ_plain = R / (1/SPS(R) + request_time(R)), one token per request and no drafter,

and drafts only when Θ_draft > Θ_plain. The expected survival comes from the last `window` rounds that
drafted: Θ_draft is computed for each of them (rows repeated or cut to R; once per request count, as
the decision runs every round) and averaged, which smooths the round-to-round noise of a single
round's confidences (with one request, one round is one row). The decision never looks at the current round's drafts, so each round's output is exactly the target's
distribution whichever way it goes (lossless). While the gate is closed no new survival arrives, so
after `probe_every` skipped rounds it drafts once anyway to refresh it; each probe that finds drafting
still not paying doubles that interval (up to `max_probe_every`), and opening resets it, so a gate that
stays closed under steady heavy load costs few probes. With no history yet it drafts. One computed
gain serves `recheck_every` rounds at the same request count and live overhead (a probe of a closed
gate is judged at once): planning runs on the host between GPU steps, so its time is the engine's.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling.policy import Policy, _plan, _to_numpy, check_survival, parse_policy
from dspark.scheduling.sps_table import SPSTable

DEFAULT_PROBE_EVERY = 8
DEFAULT_MAX_PROBE_EVERY = 64
DEFAULT_WINDOW = 8
DEFAULT_RECHECK_EVERY = 4  # rounds one computed gain serves at the same request count (host time per round)


def plain_throughput(sps: SPSTable, num_requests: int) -> float:
    """Θ_plain: tokens per second of a round that verifies no drafts and runs no drafter."""
    return num_requests / (float(sps.step_time(num_requests)) + float(sps.request_time(num_requests)))


def drafted_throughput(survival: Any, sps: SPSTable, num_requests: int, policy: str = "dspark-async") -> float:
    """Θ_draft: expected tokens per second of a drafted round whose verify lengths `policy` chooses.

    `survival` [R', γ]: expected prefix survival per request, rows repeated or cut to `num_requests`.
    The policy is applied to these values as it will be to the real ones (`dspark` with its early
    stop, `dspark-async` with its capacity search on them), so the gate predicts what the round will do.
    """
    if num_requests < 1:
        raise ConfigError(f"num_requests must be >= 1, got {num_requests}")
    base = parse_policy(policy)
    arr = _to_numpy(survival, "survival")  # [R', γ]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        arr = np.zeros((1, 1))
    slots = check_survival(np.resize(arr, (num_requests, arr.shape[1])))  # [γ, R]
    plain = Policy(base.kind, base.param)
    lengths = _plan(slots, sps, plain, slots if base.kind == "dspark-async" else None, None, None)  # [R]
    prefix = np.vstack([np.zeros((1, num_requests)), np.cumsum(slots, axis=0)])  # [γ+1, R]
    tokens = num_requests + float(prefix[lengths, np.arange(num_requests)].sum())
    seconds = float(sps.step_time(num_requests + int(lengths.sum()))) + sps.per_request_overhead(num_requests)
    return tokens / seconds


def drafting_pays(survival: Any, sps: SPSTable, num_requests: int, policy: str = "dspark-async") -> bool:
    """True when the expected drafted round beats a plain round (always, without a draft cost)."""
    return not sps.has_draft_cost or drafted_throughput(survival, sps, num_requests, policy) > plain_throughput(sps, num_requests)


class DraftGate:
    """Per-round draft / no-draft decisions with periodic probes while closed (see the module docstring).

    Use: ``if gate.decide(R): draft, plan, verify; gate.observe(survival)`` else run a plain round.
    `policy` is the base verification policy of the drafted rounds (without ``+gate``).
    """

    def __init__(self, sps: SPSTable, policy: str = "dspark-async", probe_every: int = DEFAULT_PROBE_EVERY,
                 window: int = DEFAULT_WINDOW, max_probe_every: int = DEFAULT_MAX_PROBE_EVERY,
                 recheck_every: int = DEFAULT_RECHECK_EVERY) -> None:
        for name, value in (("probe_every", probe_every), ("window", window), ("max_probe_every", max_probe_every),
                            ("recheck_every", recheck_every)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        base = parse_policy(policy)
        self.sps, self.policy = sps, str(Policy(base.kind, base.param))
        self.probe_every, self.max_probe_every = probe_every, max(max_probe_every, probe_every)
        self.interval = probe_every  # skipped rounds before the next probe
        # the last drafted rounds: (survival [R', γ], {(R, live version): Θ_draft}) — once per request count
        self.recent: deque[tuple[np.ndarray, dict[tuple[int, int | None], float]]] = deque(maxlen=window)
        self.recheck_every = recheck_every
        self._memo: tuple[tuple[int, int | None], float, int] | None = None  # ((R, live version), gain, rounds served)
        self.skipped = 0  # consecutive rounds the gate has kept closed
        self.rounds_skipped = 0  # total, for reporting

    def observe(self, survival: Any) -> None:
        """Record the prefix survival [R', γ] of a round that drafted."""
        arr = _to_numpy(survival, "survival")
        if arr.shape[0] > 0:
            self.recent.append((arr, {}))
            if self._memo is not None and self._memo[1] <= 1.0:  # a closed gate's probe: judge it at once
                self._memo = None

    def expected_gain(self, num_requests: int) -> float:
        """Mean over the recent drafted rounds of Θ_draft / Θ_plain at `num_requests` requests (> 1 pays)."""
        thetas = []
        key = (num_requests, None if self.sps.live is None else self.sps.live.version)  # the live overhead moves
        for arr, cache in self.recent:
            if key not in cache:
                cache[key] = drafted_throughput(arr, self.sps, num_requests, self.policy)
            thetas.append(cache[key])
        return float(np.mean(thetas)) / plain_throughput(self.sps, num_requests)

    def _gain(self, num_requests: int) -> float:
        """`expected_gain`, recomputed when R changes or after `recheck_every` rounds (a few survival rounds
        more barely move a mean over `window` of them; the host time of a round does not pay for it)."""
        memo, key = self._memo, (num_requests, None if self.sps.live is None else self.sps.live.version)
        if memo is not None and memo[0] == key and memo[2] < self.recheck_every:
            self._memo = (key, memo[1], memo[2] + 1)
            return memo[1]
        gain = self.expected_gain(num_requests)
        self._memo = (key, gain, 1)
        return gain

    def prefetch(self, num_requests: int) -> None:
        """Compute the gain the next `decide(num_requests)` will need now (off the critical path)."""
        key = (num_requests, None if self.sps.live is None else self.sps.live.version)
        memo = self._memo
        stale = memo is None or memo[0] != key or memo[2] >= self.recheck_every
        if stale and self.recent and num_requests >= 1 and self.sps.has_draft_cost:
            self._memo = (key, self.expected_gain(num_requests), 0)

    def decide(self, num_requests: int) -> bool:
        """Draft this round, with `num_requests` active requests?"""
        if not self.recent or num_requests < 1 or not self.sps.has_draft_cost or self._gain(num_requests) > 1.0:
            self.skipped, self.interval = 0, self.probe_every
            return True
        if self.skipped >= self.interval:  # closed for a while: draft once to refresh the estimate
            self.skipped, self.interval = 0, min(2 * self.interval, self.max_probe_every)
            return True
        self.skipped += 1
        self.rounds_skipped += 1
        return False
