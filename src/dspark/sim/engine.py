"""A seeded discrete-event simulation of one speculative-decoding serving engine (one GPU).

Where it sits: `SPSTable + acceptance model + workload ─ simulate ─► SimResult` (simulated metrics).
Every decoding round asks a `dspark.scheduling.planner.VerifyPlanner`, the same object the engine's scheduler uses.

The engine, step by step (the clock jumps by each step's duration):

1. Arrivals (closed loop or Poisson, `dspark.sim.workload`) join a FIFO queue.
2. If requests wait and the batch has room (the concurrency in a closed loop, `max_concurrency` in an
   open one), the engine admits them. With ``prefill="inline"`` it runs one prefill forward over all their
   prompt tokens (duration `step_time(Σ prompt)`; decoding pauses meanwhile, no chunking) that yields each
   request's first token. With ``prefill="none"`` (prefill runs elsewhere, as in a disaggregated
   deployment) the request joins the batch at once with its first token already produced.
3. Otherwise one decoding round for the R running requests: the acceptance model draws confidences and
   outcomes, the survival a = cumprod(c) goes to the policy (``dspark-async`` gets the survival of two
   rounds earlier), each request verifies ℓ_r drafts (at most its remaining tokens − 1), accepts
   min(accepted_if_all, ℓ_r) and commits that plus one. Duration: `step_time(R + Σℓ) + request_time(R)
   + draft_time(R)`; the draft cost is skipped for policy ``none``, which drafts nothing, and in the
   rounds where a ``POLICY+gate`` policy's `DraftGate` (fed the survival of the recent drafted rounds)
   finds that drafting does not pay: those rounds commit one token per request.

Measurement: requests are numbered in arrival order; the first `warmup_requests` are a warm-up, the next
`num_requests` are measured, and arrivals continue until every measured request has finished (so a closed
loop stays at its concurrency). Throughput counts every output token produced between the first measured
arrival and the last measured finish. Everything here is a model: results are labelled simulated.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling import SPSTable, parse_policy
from dspark.scheduling.planner import VerifyPlanner
from dspark.sim.acceptance import AcceptanceModel
from dspark.sim.workload import Arrivals, LengthDist

log = logging.getLogger(__name__)


@dataclass
class SimConfig:
    """Knobs of one simulation run (the workload and engine; the policy is part of it)."""

    policy: str = "dspark"
    prompt_len: LengthDist = field(default_factory=lambda: LengthDist("uniform", 256, 768))
    output_len: LengthDist = field(default_factory=lambda: LengthDist("uniform", 128, 384))
    num_requests: int | None = None  # measured; default max(64, 2·concurrency) closed, 200 open
    warmup_requests: int | None = None  # default: the concurrency (closed), num_requests // 10 (open)
    max_concurrency: int = 256  # batch cap of an open loop
    prefill: str = "inline"  # inline | none
    seed: int = 0

    def check(self) -> None:
        parse_policy(self.policy)
        if self.prefill not in ("inline", "none"):
            raise ConfigError(f"prefill must be 'inline' or 'none', got {self.prefill!r}")
        for name in ("num_requests", "warmup_requests"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (1 if name == "num_requests" else 0)):
                raise ConfigError(f"{name} must be a non-negative integer (num_requests >= 1), got {value!r}")
        if not isinstance(self.max_concurrency, int) or self.max_concurrency < 1:
            raise ConfigError(f"max_concurrency must be an integer >= 1, got {self.max_concurrency!r}")


@dataclass
class SimResult:
    """Simulated metrics of one run. Times in seconds, speeds in tokens/s."""

    policy: str
    load: str
    concurrency: int | None
    rate: float | None
    acceptance: str
    num_measured: int
    window_s: float
    throughput: float  # aggregate output tokens/s of the engine (one GPU)
    per_user_mean: float  # mean over requests of (output tokens − 1) / (finish − first token)
    per_user_p50: float
    mean_budget: float  # mean verified tokens per request per round, 1 + ℓ (MTP-1: 2)
    mean_committed: float  # mean committed tokens per request per round (τ)
    mean_batch_tokens: float
    mean_running: float
    rounds: int
    drafted_rounds: int  # decoding rounds that ran the drafter (all of them unless none or +gate)
    ttft: dict[str, float]
    tpot: dict[str, float]
    simulated: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentiles(x: np.ndarray) -> dict[str, float]:
    if x.size == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p = np.percentile(x, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


class _Engine:
    """The mutable state of one run; `run()` advances the clock until every measured request finished."""

    def __init__(self, cfg: SimConfig, arrivals: Arrivals, table: SPSTable, acceptance: AcceptanceModel) -> None:
        self.cfg, self.arrivals, self.table, self.acc = cfg, arrivals, table, acceptance
        self.planner = VerifyPlanner(cfg.policy, table)
        closed = arrivals.closed_loop
        self.cap = arrivals.concurrency if closed else cfg.max_concurrency
        self.num_measured = cfg.num_requests or (max(64, 2 * arrivals.concurrency) if closed else 200)
        self.warmup = cfg.warmup_requests if cfg.warmup_requests is not None else (arrivals.concurrency if closed else self.num_measured // 10)
        self.rng_work = np.random.default_rng([cfg.seed, 1])
        self.rng_acc = np.random.default_rng([cfg.seed, 2])
        self.t = 0.0
        self.arrival: list[float] = []
        self.out_len: list[int] = []
        self.prompt: list[int] = []
        self.first: list[float] = []
        self.finish: list[float] = []
        self.queue: deque[int] = deque()
        self.run_id = np.empty(0, dtype=np.int64)  # [R] running request ids
        self.run_rem = np.empty(0, dtype=np.int64)  # [R] output tokens still to produce
        self.pending: list[float] = list(arrivals.initial())  # known future arrival times (closed loop)
        self.next_open = arrivals.next_open(self.rng_work) if not closed else float("inf")
        self.measured_left = self.num_measured
        self.steps: list[tuple[float, int, int, int, int]] = []  # (t_end, tokens out, R, B, 0 prefill / 1 plain / 2 drafted)

    # -------------------------------------------------------------------------------- requests
    def _new_request(self, t_arrive: float) -> None:
        rid = len(self.arrival)
        self.arrival.append(t_arrive)
        self.prompt.append(int(self.cfg.prompt_len.sample(self.rng_work)[0]))
        self.out_len.append(int(self.cfg.output_len.sample(self.rng_work)[0]))
        self.first.append(float("nan"))
        self.finish.append(float("nan"))
        self.queue.append(rid)

    def _is_measured(self, rid: int) -> bool:
        return self.warmup <= rid < self.warmup + self.num_measured

    def _collect_arrivals(self) -> None:
        due = [x for x in self.pending if x <= self.t]
        self.pending = [x for x in self.pending if x > self.t]
        for x in due:
            self._new_request(x)
        while self.next_open <= self.t:
            self._new_request(self.next_open)
            self.next_open = self.arrivals.next_open(self.rng_work)

    def _finish(self, ids: np.ndarray) -> None:
        for rid in ids.tolist():
            self.finish[rid] = self.t
            if self._is_measured(rid):
                self.measured_left -= 1
            if self.arrivals.closed_loop:
                self.pending.append(self.t)  # the closed loop replaces it at once

    # -------------------------------------------------------------------------------- steps
    def _admit(self) -> None:
        room = self.cap - self.run_id.size
        ids = np.array([self.queue.popleft() for _ in range(min(room, len(self.queue)))], dtype=np.int64)
        if self.cfg.prefill == "inline":
            self.t += float(self.table.step_time(sum(self.prompt[i] for i in ids.tolist())))
        for rid in ids.tolist():
            self.first[rid] = self.t
        rem = np.array([self.out_len[i] - 1 for i in ids.tolist()], dtype=np.int64)
        self.steps.append((self.t, int(ids.size) if self.cfg.prefill == "inline" else 0, 0, 0, 0))
        done = rem == 0
        self._finish(ids[done])
        self.run_id = np.concatenate([self.run_id, ids[~done]])
        self.run_rem = np.concatenate([self.run_rem, rem[~done]])

    def _decode_round(self) -> None:
        num_rows = self.run_id.size
        drafting = self.planner.should_draft(num_rows)
        if drafting:
            conf, accepted_if_all = self.acc.draw(num_rows, self.rng_acc)  # [R, γ], [R]
            lengths = self.planner.plan(np.cumprod(conf, axis=1))  # [R]
            lengths = np.minimum(lengths, self.run_rem - 1)
            committed = np.minimum(accepted_if_all, lengths) + 1  # [R]
        else:
            committed = np.ones(num_rows, dtype=np.int64)  # a plain round: one token per request
            lengths = np.zeros_like(committed)
        batch_tokens = num_rows + int(lengths.sum())
        dt = float(self.table.step_time(batch_tokens)) + float(self.table.request_time(num_rows))
        if drafting:
            dt += float(self.table.draft_time(num_rows))
        self.t += dt
        self.run_rem = self.run_rem - committed
        self.steps.append((self.t, int(committed.sum()), num_rows, batch_tokens, 2 if drafting else 1))
        done = self.run_rem <= 0
        if done.any():
            self._finish(self.run_id[done])
            self.run_id, self.run_rem = self.run_id[~done], self.run_rem[~done]

    def run(self) -> None:
        while self.measured_left > 0:
            self._collect_arrivals()
            if self.queue and self.run_id.size < self.cap:
                self._admit()
            elif self.run_id.size:
                self._decode_round()
            else:  # idle until the next arrival
                upcoming = min(self.pending + [self.next_open])
                if upcoming == float("inf"):
                    raise RuntimeError("simulation stalled with no arrivals pending")  # a bug, not user input
                self.t = max(self.t, upcoming)

    # -------------------------------------------------------------------------------- results
    def result(self) -> SimResult:
        ids = np.arange(self.warmup, self.warmup + self.num_measured)
        arrival = np.asarray(self.arrival)[ids]
        first = np.asarray(self.first)[ids]
        finish = np.asarray(self.finish)[ids]
        out_len = np.asarray(self.out_len)[ids]
        t0, t1 = float(arrival.min()), float(finish.max())
        steps = np.asarray(self.steps, dtype=np.float64)  # [S, 5]
        in_window = (steps[:, 0] > t0) & (steps[:, 0] <= t1)
        decode = in_window & (steps[:, 4] >= 1)
        multi = out_len > 1
        decode_time = finish[multi] - first[multi]
        speed = (out_len[multi] - 1) / np.maximum(decode_time, 1e-12)
        req_rounds = steps[decode, 2].sum()
        return SimResult(
            policy=self.cfg.policy,
            load=self.arrivals.label(),
            concurrency=self.arrivals.concurrency,
            rate=self.arrivals.rate,
            acceptance=self.acc.name,
            num_measured=self.num_measured,
            window_s=t1 - t0,
            throughput=float(steps[in_window, 1].sum() / max(t1 - t0, 1e-12)),
            per_user_mean=float(speed.mean()) if speed.size else float("nan"),
            per_user_p50=float(np.median(speed)) if speed.size else float("nan"),
            mean_budget=float(steps[decode, 3].sum() / max(req_rounds, 1)),
            mean_committed=float(steps[decode, 1].sum() / max(req_rounds, 1)),
            mean_batch_tokens=float(steps[decode, 3].mean()) if decode.any() else 0.0,
            mean_running=float(steps[decode, 2].mean()) if decode.any() else 0.0,
            rounds=int(decode.sum()),
            drafted_rounds=int((in_window & (steps[:, 4] == 2)).sum()),
            ttft=_percentiles(first - arrival),
            tpot=_percentiles(decode_time / np.maximum(out_len[multi] - 1, 1)),
        )


def simulate(config: SimConfig, arrivals: Arrivals, table: SPSTable, acceptance: AcceptanceModel) -> SimResult:
    """Run one seeded simulation; the same seed gives the same workload for every policy."""
    config.check()
    engine = _Engine(config, arrivals, table, acceptance)
    engine.run()
    result = engine.result()
    log.info("simulated %s %s: %.0f tok/s, %.1f tok/s/user, budget %.2f", config.policy, result.load, result.throughput, result.per_user_mean, result.mean_budget)
    return result
