"""Sweeps over policies and loads, and reading the throughput / per-user-speed frontier at SLA anchors.

Where it sits: `dspark simulate` calls `run_sweep` (one `simulate` per policy × load, the same seed for
all, so every policy sees the same requests) and then `sla_table` / `matched_speedups` to summarise the
curves the way the paper's Fig. 7 does. All outputs are simulated.

A policy's curve is its (per-user tok/s, aggregate tok/s) points ordered by load, joined by straight
lines. The throughput "at an SLA of s tok/s/user" is the highest point of that polyline whose per-user
speed is at least s (None when the policy never reaches s); symmetrically, the per-user speed "at a
matched throughput X" is the highest per-user speed on the polyline at an aggregate of at least X.
The readers take any `CurvePoint` (a `SimResult`, or a point measured on the engine by
`dspark.eval.frontier`), so simulated and measured curves are read by the same rule.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from dspark.scheduling import SPSTable
from dspark.sim.acceptance import AcceptanceModel
from dspark.sim.engine import SimConfig, SimResult, simulate
from dspark.sim.workload import Arrivals

PAPER_SLAS = (80.0, 120.0)  # tok/s/user anchors of the paper's V4-Flash frontier (Fig. 7)


class CurvePoint(Protocol):
    """One (policy, load) point of a frontier: what the curve readers and `dspark.sim.plots` need."""

    policy: str
    concurrency: int | None
    rate: float | None
    per_user_mean: float
    throughput: float


def run_sweep(
    policies: Sequence[str],
    loads: Sequence[Arrivals | Callable[[], Arrivals]],
    table_for: Callable[[str], SPSTable],
    acceptance: AcceptanceModel,
    base: SimConfig,
) -> list[SimResult]:
    """One simulation per (policy, load); `loads` are Arrivals or factories (Arrivals hold RNG state)."""
    results = []
    for policy in policies:
        for load in loads:
            arrivals = load() if callable(load) else load
            results.append(simulate(replace(base, policy=policy), arrivals, table_for(policy), acceptance))
    return results


def _curve(results: Sequence[CurvePoint], policy: str) -> tuple[np.ndarray, np.ndarray]:
    rows = sorted((r for r in results if r.policy == policy), key=lambda r: (r.concurrency or 0, r.rate or 0.0))
    return np.array([r.per_user_mean for r in rows]), np.array([r.throughput for r in rows])


def best_on_polyline(xs: np.ndarray, ys: np.ndarray, x_min: float) -> float | None:
    """Highest y on the polyline through (xs[i], ys[i]) (in order) among points with x >= x_min."""
    best = None
    for i in range(len(xs)):
        if xs[i] >= x_min:
            best = ys[i] if best is None else max(best, ys[i])
        if i + 1 < len(xs) and (xs[i] - x_min) * (xs[i + 1] - x_min) < 0:  # the segment crosses x_min
            frac = (x_min - xs[i]) / (xs[i + 1] - xs[i])
            y = ys[i] + frac * (ys[i + 1] - ys[i])
            best = y if best is None else max(best, y)
    return None if best is None else float(best)


def throughput_at_sla(results: Sequence[CurvePoint], policy: str, sla: float) -> float | None:
    per_user, throughput = _curve(results, policy)
    return best_on_polyline(per_user, throughput, sla)


def per_user_at_throughput(results: Sequence[CurvePoint], policy: str, throughput: float) -> float | None:
    per_user, thr = _curve(results, policy)
    return best_on_polyline(thr, per_user, throughput)


def sla_table(results: Sequence[SimResult], target: str, baseline: str, slas: Sequence[float] = PAPER_SLAS) -> list[dict]:
    """Throughput of `target` and `baseline` at each SLA and the relative gain (None if not reached)."""
    out = []
    for sla in slas:
        t, b = throughput_at_sla(results, target, sla), throughput_at_sla(results, baseline, sla)
        gain = None if t is None or not b else t / b - 1.0
        out.append({"sla_tok_s_user": sla, target: t, baseline: b, "gain": gain})
    return out


def matched_speedups(results: Sequence[SimResult], target: str, baseline: str) -> list[dict]:
    """Per-user speed-up of `target` over `baseline` at each of the baseline's own throughput points."""
    base_user, base_thr = _curve(results, baseline)
    out = []
    for user, thr in zip(base_user, base_thr):
        t = per_user_at_throughput(results, target, float(thr))
        out.append({"throughput": float(thr), baseline: float(user), target: t, "speedup": None if t is None else t / user - 1.0})
    return out
