"""The draft gate: skip drafting in a round when its expected gain does not pay for the drafter's cost.

Where it sits: `DraftGate.decide(last survival, R) ─► draft this round or not`, asked BEFORE the drafter
runs (by `dspark.sim.engine` and `dspark.decode.policy_planner` for policies named ``POLICY+gate``).

The verification-length policies only choose how many drafts to verify; the drafter itself has already
run, so its cost (`SPSTable.draft_time(R)`) is paid every round. Under heavy load, or with a weak drafter,
the best speculative round can be slower per committed token than a plain decoding round. The gate
compares, for the R active requests,

* Θ_draft = max_k Θ_k along the ranked path of the expected prefix survival (the `dspark-async` capacity
  search: round time `1/SPS(R + k) + request_time(R) + draft_time(R)`), and
* Θ_plain = R / (1/SPS(R) + request_time(R)), one token per request and no drafter,

and drafts only when Θ_draft > Θ_plain. The expected survival comes from the last `window` rounds that
drafted: Θ_draft is computed for each of them (rows repeated or cut to R) and averaged, which smooths the
round-to-round noise of a single round's confidences (with one request, one round is one row). The
decision never looks at the current round's drafts, so each round's output is exactly the target's
distribution whichever way it goes (lossless). While the gate is closed no new survival arrives, so
after `probe_every` skipped rounds it drafts once anyway to refresh it; each probe that finds drafting
still not paying doubles that interval (up to `max_probe_every`), and opening resets it, so a gate that
stays closed under steady heavy load costs few probes. With no history yet it drafts.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling.policy import _ranked, _throughput_path, _to_numpy, check_survival
from dspark.scheduling.sps_table import SPSTable

DEFAULT_PROBE_EVERY = 8
DEFAULT_MAX_PROBE_EVERY = 64
DEFAULT_WINDOW = 8


def plain_throughput(sps: SPSTable, num_requests: int) -> float:
    """Θ_plain: tokens per second of a round that verifies no drafts and runs no drafter."""
    return num_requests / (float(sps.step_time(num_requests)) + float(sps.request_time(num_requests)))


def best_throughput(survival: Any, sps: SPSTable, num_requests: int) -> float:
    """Θ_draft: the best expected throughput of a drafted round along the ranked path of `survival`.

    `survival` [R', γ]: expected prefix survival per request, rows repeated or cut to `num_requests`.
    """
    if num_requests < 1:
        raise ConfigError(f"num_requests must be >= 1, got {num_requests}")
    arr = _to_numpy(survival, "survival")  # [R', γ]
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        arr = np.zeros((1, 1))
    slots = check_survival(np.resize(arr, (num_requests, arr.shape[1])))  # [γ, R]
    values, _ = _ranked(slots)
    return float(_throughput_path(values, num_requests, sps).max())


def drafting_pays(survival: Any, sps: SPSTable, num_requests: int) -> bool:
    """True when the best expected drafted round beats a plain round (always, without a draft cost)."""
    return not sps.has_draft_cost or best_throughput(survival, sps, num_requests) > plain_throughput(sps, num_requests)


class DraftGate:
    """Per-round draft / no-draft decisions with periodic probes while closed (see the module docstring).

    Use: ``if gate.decide(R): draft, plan, verify; gate.observe(survival)`` else run a plain round.
    """

    def __init__(self, sps: SPSTable, probe_every: int = DEFAULT_PROBE_EVERY, window: int = DEFAULT_WINDOW,
                 max_probe_every: int = DEFAULT_MAX_PROBE_EVERY) -> None:
        for name, value in (("probe_every", probe_every), ("window", window), ("max_probe_every", max_probe_every)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        self.sps, self.probe_every, self.max_probe_every = sps, probe_every, max(max_probe_every, probe_every)
        self.interval = probe_every  # skipped rounds before the next probe
        self.recent: deque[np.ndarray] = deque(maxlen=window)  # survival [R', γ] of the last drafted rounds
        self.skipped = 0  # consecutive rounds the gate has kept closed
        self.rounds_skipped = 0  # total, for reporting

    def observe(self, survival: Any) -> None:
        """Record the prefix survival [R', γ] of a round that drafted."""
        arr = _to_numpy(survival, "survival")
        if arr.shape[0] > 0:
            self.recent.append(arr)

    def expected_gain(self, num_requests: int) -> float:
        """Mean over the recent drafted rounds of Θ_draft / Θ_plain at `num_requests` requests (> 1 pays)."""
        plain = plain_throughput(self.sps, num_requests)
        return float(np.mean([best_throughput(s, self.sps, num_requests) for s in self.recent])) / plain

    def decide(self, num_requests: int) -> bool:
        """Draft this round, with `num_requests` active requests?"""
        if not self.recent or num_requests < 1 or not self.sps.has_draft_cost or self.expected_gain(num_requests) > 1.0:
            self.skipped, self.interval = 0, self.probe_every
            return True
        if self.skipped >= self.interval:  # closed for a while: draft once to refresh the estimate
            self.skipped, self.interval = 0, min(2 * self.interval, self.max_probe_every)
            return True
        self.skipped += 1
        self.rounds_skipped += 1
        return False
