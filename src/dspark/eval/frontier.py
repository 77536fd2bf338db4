"""The serving frontier measured on the engine: per-point metrics and throughput at per-user speed targets.

Where it sits: `scripts/bench_frontier.py` runs closed loops on the engine (`dspark.eval.closed_loop`),
`point_metrics` turns each loop's timings into a `FrontierPoint`, and `sla_summary` reads the curves the
way `dspark simulate` reads its simulated ones (the same `dspark.sim.sweep` readers), so the two can be
compared point for point. Pure: arrays in, numbers out.

Definitions (the simulator's, `dspark.sim.engine`):
* **throughput**: output tokens committed by every engine step that ended inside the window from the
  first measured request's arrival to the last measured request's finish, over the window's length;
* **per-user speed**: mean over measured requests of (output tokens − 1) / (finish − first token), i.e.
  the decode speed a user sees once the first token arrived (requests of one token are left out);
* **TPOT**: (finish − first token) / (output tokens − 1) per request; p50 / p99 over measured requests;
* **TTFT**: first token − arrival; **mean verify length**: drafts verified per request-round (ℓ, plain
  rounds count 0); **τ**: committed tokens per request-round.

Throughput at a per-user target S (the paper's SLA view): the highest point of the policy's polyline of
(per-user speed, throughput) points, ordered by concurrency, whose per-user speed is >= S (None: never).
The targets are fractions (50 / 75 / 90%) of the reference policy's (plain decoding's) per-user speed at
its lowest measured concurrency (concurrency 1 in the default sweep). Per-user speed at matched
throughput: the highest per-user speed a policy reaches at an aggregate of at least the reference's
throughput at that target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from dspark.errors import ConfigError
from dspark.sim.engine import _percentiles  # the simulator's p50 / p90 / p99, for like-for-like points
from dspark.sim.sweep import per_user_at_throughput, throughput_at_sla

SLA_FRACTIONS = (0.5, 0.75, 0.9)


@dataclass
class FrontierPoint:
    """One (policy, concurrency) point measured on the engine. Times in seconds, speeds in tokens/s."""

    policy: str
    concurrency: int
    throughput: float
    per_user_mean: float
    per_user_p50: float
    tpot: dict[str, float]
    ttft: dict[str, float]
    mean_verify: float
    tau: float
    drafted: float  # share of request-rounds that had drafts (below 1 under a +gate policy)
    num_measured: int
    output_tokens: int  # tokens in the window
    window_s: float
    rate: float | None = None  # closed loop: no arrival rate (for the `dspark.sim.sweep` readers)
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def point_metrics(policy: str, concurrency: int, arrival: Sequence[float], first: Sequence[float],
                  finish: Sequence[float], num_tokens: Sequence[int], step_end: Sequence[float],
                  step_tokens: Sequence[int], verified: Sequence[int] = (), committed: Sequence[int] = (),
                  drafted: Sequence[bool] = ()) -> FrontierPoint:
    """Metrics of one closed loop (see the module docstring).

    `arrival`, `first`, `finish`, `num_tokens` [N]: the measured requests; `step_end`, `step_tokens` [S]:
    every engine step of the run (end time, output tokens committed); `verified`, `committed`, `drafted`
    [rounds]: the measured requests' decoding rounds (drafts verified, tokens committed, drafted or not).
    """
    arrival_a, first_a, finish_a = (np.asarray(x, dtype=np.float64) for x in (arrival, first, finish))
    tokens = np.asarray(num_tokens, dtype=np.int64)
    if arrival_a.size == 0 or not arrival_a.size == first_a.size == finish_a.size == tokens.size:
        raise ConfigError(f"point {policy} @ {concurrency}: needs equally long, non-empty request arrays")
    ends, out = np.asarray(step_end, dtype=np.float64), np.asarray(step_tokens, dtype=np.int64)
    t0, t1 = float(arrival_a.min()), float(finish_a.max())
    in_window = (ends > t0) & (ends <= t1)
    window_tokens = int(out[in_window].sum())
    multi = tokens > 1
    decode_time = finish_a[multi] - first_a[multi]
    speed = (tokens[multi] - 1) / np.maximum(decode_time, 1e-12)
    ver = np.asarray(verified, dtype=np.float64)
    com = np.asarray(committed, dtype=np.float64)
    nan = float("nan")
    return FrontierPoint(
        policy=policy, concurrency=int(concurrency),
        throughput=window_tokens / max(t1 - t0, 1e-12),
        per_user_mean=float(speed.mean()) if speed.size else nan,
        per_user_p50=float(np.median(speed)) if speed.size else nan,
        tpot=_percentiles(decode_time / np.maximum(tokens[multi] - 1, 1)),
        ttft=_percentiles(first_a - arrival_a),
        mean_verify=float(ver.mean()) if ver.size else 0.0,
        tau=float(com.mean()) if com.size else 1.0,
        drafted=float(np.mean(np.asarray(drafted, dtype=bool))) if len(drafted) else 0.0,
        num_measured=int(tokens.size), output_tokens=window_tokens, window_s=t1 - t0,
    )


def reference_speed(points: Sequence[FrontierPoint], reference: str = "none") -> float:
    """The reference policy's per-user speed at its lowest measured concurrency."""
    rows = sorted((p for p in points if p.policy == reference), key=lambda p: p.concurrency)
    if not rows:
        raise ConfigError(f"the per-user targets need the reference policy {reference!r} in the sweep")
    return float(rows[0].per_user_mean)


def sla_summary(points: Sequence[FrontierPoint], reference: str = "none",
                fractions: Sequence[float] = SLA_FRACTIONS) -> list[dict[str, object]]:
    """Per target S = fraction x the reference's lowest-concurrency per-user speed: every policy's throughput
    at per-user speed >= S, its gain over the reference there, and its per-user speed at the reference's
    throughput there (None where a curve does not reach it)."""
    base = reference_speed(points, reference)
    policies = list(dict.fromkeys(p.policy for p in points))
    out: list[dict[str, object]] = []
    for frac in fractions:
        if not 0 < frac <= 1:
            raise ConfigError(f"per-user target fractions must lie in (0, 1], got {frac}")
        target = frac * base
        thr = {pol: throughput_at_sla(points, pol, target) for pol in policies}
        ref_thr = thr[reference]
        gain = {pol: (t / ref_thr if t is not None and ref_thr else None) for pol, t in thr.items()}
        matched = {pol: (per_user_at_throughput(points, pol, ref_thr) if ref_thr is not None else None) for pol in policies}
        out.append({"fraction": frac, "per_user_target": target, "throughput": thr, "vs_reference": gain,
                    "per_user_at_reference_throughput": matched, "reference_throughput": ref_thr})
    return out
