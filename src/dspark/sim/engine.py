"""A seeded discrete-event simulation of one speculative-decoding serving engine (one GPU).

Where it sits: `SPSTable + acceptance model + workload ─ simulate ─► SimResult` (simulated metrics).
Every decoding round asks a `dspark.scheduling.planner.VerifyPlanner`, the same object the engine's scheduler uses.

The engine, step by step (the clock jumps by each step's duration):

1. Arrivals (closed loop or Poisson, `dspark.sim.workload`) join a FIFO queue.
2. Prefill, one of three ways (`SimConfig.prefill`):
   * ``"inline"``: if requests wait and the batch has room (the concurrency in a closed loop,
     `max_concurrency` in an open one), the engine admits them all and runs one prefill forward over
     their prompt tokens (decoding pauses meanwhile, no chunking) that yields each one's first token;
   * ``"chunked"`` (what `dspark.engine` does): prefill rides in the decoding steps. Each step takes the
     decoding rows' verify blocks first, then, within `max_num_batched_tokens` tokens, the next chunk of
     each request already in prefill (in admission order), then new requests from the queue while the
     batch has room. A request whose last chunk is in the step gets its first token at the step's end
     (and drafts, in a step that drafts: the decoding rows', or the planner's answer for the new rows
     in a step of prefill alone) and decodes from the next step on;
   * ``"none"`` (prefill runs elsewhere, as in a disaggregated deployment): a request joins the batch
     at once with its first token already produced.
3. A decoding round for the R running requests: the acceptance model draws confidences and outcomes,
   the survival a = cumprod(c) goes to the policy (``dspark-async`` gets the survival of two rounds
   earlier), each request verifies ℓ_r drafts, accepts min(accepted_if_all, ℓ_r) and commits that plus
   one. ℓ_r is capped at the request's remaining tokens − 1, unless `verify_past_budget` (the engine's
   rule: a request's last round verifies what the policy chose and its commit is cut). The draft cost
   is skipped for policy ``none``, which drafts nothing, and in the rounds where a ``POLICY+gate``
   policy's `DraftGate` (fed the survival of the recent drafted rounds) finds that drafting does not
   pay: those rounds commit one token per request.

Step durations come from `SimConfig.cost` (`dspark.sim.cost.StepCost`), by default the table alone:
a decoding round takes `step_time(R + Σℓ) + request_time(R) + draft_time(R)` (no draft time when it
does not draft) and an inline prefill `step_time(Σ prompt)`. A measured cost model adds CUDA-graph
padding, longer contexts, the planner's host time and the cost of a prefill chunk in a step (see
`dspark.sim.cost`). The
planner always reads the table (as the engine's does), whatever prices the steps.

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
from dspark.sim.cost import StepCost
from dspark.sim.workload import Arrivals, LengthDist, LengthSequence

log = logging.getLogger(__name__)

PREFILL_MODES = ("inline", "chunked", "none")


@dataclass
class SimConfig:
    """Knobs of one simulation run (the workload and engine; the policy is part of it)."""

    policy: str = "dspark"
    prompt_len: LengthDist | LengthSequence = field(default_factory=lambda: LengthDist("uniform", 256, 768))
    output_len: LengthDist | LengthSequence = field(default_factory=lambda: LengthDist("uniform", 128, 384))
    num_requests: int | None = None  # measured; default max(64, 2·concurrency) closed, 200 open
    warmup_requests: int | None = None  # default: the concurrency (closed), num_requests // 10 (open)
    max_concurrency: int = 256  # batch cap of an open loop
    prefill: str = "inline"  # inline | chunked | none
    max_num_batched_tokens: int = 2048  # tokens of one step, with prefill="chunked" (the engine's option)
    verify_past_budget: bool = False  # True: as the engine, ℓ is not capped by the remaining tokens (the commit is)
    cost: StepCost | None = None  # step prices (None: the table alone, `StepCost(table)`)
    seed: int = 0

    def check(self) -> None:
        parse_policy(self.policy)
        if self.prefill not in PREFILL_MODES:
            raise ConfigError(f"prefill must be one of {', '.join(PREFILL_MODES)}, got {self.prefill!r}")
        if not isinstance(self.max_num_batched_tokens, int) or self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be an integer >= 1, got {self.max_num_batched_tokens!r}")
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
    mean_committed: float  # τ: mean accepted + 1 per request per round (a budget-cut last round counts uncut)
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
        self.cost = cfg.cost if cfg.cost is not None else StepCost(table)
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
        self.prefilling: deque[list[int]] = deque()  # chunked prefill: [request id, prompt tokens left], admission order
        self.run_id = np.empty(0, dtype=np.int64)  # [R] running request ids
        self.run_rem = np.empty(0, dtype=np.int64)  # [R] output tokens still to produce
        self.run_ctx = np.empty(0, dtype=np.int64)  # [R] tokens in context (prompt + output so far)
        self.pending: list[float] = list(arrivals.initial())  # known future arrival times (closed loop)
        self.next_open = arrivals.next_open(self.rng_work) if not closed else float("inf")
        self.measured_left = self.num_measured
        # (t_end, tokens out, R, B, 0 prefill / 1 plain / 2 drafted, Σ accepted + 1 of the R decoding rows)
        self.steps: list[tuple[float, int, int, int, int, int]] = []

    # -------------------------------------------------------------------------------- requests
    def _length(self, dist: LengthDist | LengthSequence, rid: int) -> int:
        return dist.at(rid) if isinstance(dist, LengthSequence) else int(dist.sample(self.rng_work)[0])

    def _new_request(self, t_arrive: float) -> None:
        rid = len(self.arrival)
        self.arrival.append(t_arrive)
        self.prompt.append(self._length(self.cfg.prompt_len, rid))
        self.out_len.append(self._length(self.cfg.output_len, rid))
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

    def _join(self, ids: list[int]) -> None:
        """Requests whose prefill ended now: first token at `t`, then they decode (or are done)."""
        for rid in ids:
            self.first[rid] = self.t
        arr = np.array(ids, dtype=np.int64)
        rem = np.array([self.out_len[i] - 1 for i in ids], dtype=np.int64)
        done = rem == 0
        self._finish(arr[done])
        self.run_id = np.concatenate([self.run_id, arr[~done]])
        self.run_rem = np.concatenate([self.run_rem, rem[~done]])
        self.run_ctx = np.concatenate([self.run_ctx, np.array([self.prompt[i] + 1 for i in ids], dtype=np.int64)[~done]])

    # -------------------------------------------------------------------------------- steps
    def _admit(self) -> None:
        room = self.cap - self.run_id.size
        ids = [self.queue.popleft() for _ in range(min(room, len(self.queue)))]
        if self.cfg.prefill == "inline":
            self.t += self.cost.step_seconds(0, 0, False, prefill_chunks=len(ids),
                                             prefill_tokens=sum(self.prompt[i] for i in ids))
        self.steps.append((self.t, len(ids) if self.cfg.prefill == "inline" else 0, 0, 0, 0, 0))
        self._join(ids)

    def _plan_round(self) -> tuple[bool, np.ndarray, np.ndarray, int]:
        """Drafting or not, verify lengths ℓ [R], committed tokens [R] of the running requests' round, and
        Σ (accepted + 1): τ's count, which a budget cut does not shorten (as the engine's round records)."""
        num_rows = self.run_id.size
        drafting = self.planner.should_draft(num_rows)
        if not drafting:  # a plain round: one token per request
            return False, np.zeros(num_rows, dtype=np.int64), np.ones(num_rows, dtype=np.int64), num_rows
        conf, accepted_if_all = self.acc.draw(num_rows, self.rng_acc)  # [R, γ], [R]
        lengths = self.planner.plan(np.cumprod(conf, axis=1))  # [R]
        if not self.cfg.verify_past_budget:
            lengths = np.minimum(lengths, self.run_rem - 1)
        uncut = np.minimum(accepted_if_all, lengths) + 1  # [R]
        return True, lengths, np.minimum(uncut, self.run_rem), int(uncut.sum())

    def _commit(self, committed: np.ndarray) -> None:
        self.run_rem = self.run_rem - committed
        self.run_ctx = self.run_ctx + committed
        done = self.run_rem <= 0
        if done.any():
            self._finish(self.run_id[done])
            keep = ~done
            self.run_id, self.run_rem, self.run_ctx = self.run_id[keep], self.run_rem[keep], self.run_ctx[keep]

    def _decode_round(self) -> None:
        num_rows = self.run_id.size
        drafting, lengths, committed, tau_tokens = self._plan_round()
        batch_tokens = num_rows + int(lengths.sum())
        self.t += self.cost.step_seconds(num_rows, batch_tokens, drafting, context_tokens=float(self.run_ctx.sum()))
        self.steps.append((self.t, int(committed.sum()), num_rows, batch_tokens, 2 if drafting else 1, tau_tokens))
        self._commit(committed)

    def _chunks(self, budget: int) -> tuple[list[int], int, int]:
        """Chunked prefill within `budget` tokens: (requests whose prefill ends in this step, chunks, tokens)."""
        chunks, tokens, final = 0, 0, []
        for entry in self.prefilling:  # requests in the middle of their prefill first
            if budget - tokens <= 0:
                break
            take = min(entry[1], budget - tokens)
            entry[1] -= take
            chunks, tokens = chunks + 1, tokens + take
        while self.queue and budget - tokens > 0 and self.run_id.size + len(self.prefilling) < self.cap:
            rid = self.queue.popleft()
            take = min(self.prompt[rid], budget - tokens)
            self.prefilling.append([rid, self.prompt[rid] - take])
            chunks, tokens = chunks + 1, tokens + take
        while self.prefilling and self.prefilling[0][1] == 0:
            final.append(self.prefilling.popleft()[0])
        return final, chunks, tokens

    def _chunked_step(self) -> None:
        num_rows = self.run_id.size
        none = np.zeros(0, dtype=np.int64)
        drafting, lengths, committed, tau_tokens = self._plan_round() if num_rows else (False, none, none, 0)
        batch_tokens = num_rows + int(lengths.sum())
        final, chunks, tokens = self._chunks(self.cfg.max_num_batched_tokens - batch_tokens)
        if not num_rows and final:  # as the engine: the new rows draft after their prefill if the planner drafts
            drafting = self.planner.should_draft(len(final))
        self.t += self.cost.step_seconds(num_rows, batch_tokens, drafting, prefill_chunks=chunks, prefill_tokens=tokens,
                                         context_tokens=float(self.run_ctx.sum()))
        kind = (2 if drafting else 1) if num_rows else 0
        self.steps.append((self.t, int(committed.sum()) + len(final), num_rows, batch_tokens, kind, tau_tokens))
        self._commit(committed)
        self._join(final)

    def run(self) -> None:
        chunked = self.cfg.prefill == "chunked"
        while self.measured_left > 0:
            self._collect_arrivals()
            if chunked and (self.run_id.size or self.prefilling or self.queue):
                self._chunked_step()
            elif not chunked and self.queue and self.run_id.size < self.cap:
                self._admit()
            elif not chunked and self.run_id.size:
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
        steps = np.asarray(self.steps, dtype=np.float64)  # [S, 6]
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
            mean_committed=float(steps[decode, 5].sum() / max(req_rounds, 1)),
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
