"""Closed-loop load on an in-process engine: C clients, each sending its next prompt when its last one finished.

Where it sits: `scripts/bench_frontier.py` runs one `run_closed_loop` per (policy, concurrency) on an
`LLM`, then `ClosedLoopRun.point()` (`dspark.eval.frontier.point_metrics`) makes the frontier point.

The loop follows the simulator's closed loop (`dspark.sim.engine`): C requests arrive at the start, every
finished request is replaced at once (its successor's arrival is that step's end), requests are numbered
in arrival order, the first `warmup_requests` (default max(2C, 16)) are a warm-up, the next `num_requests` are
measured, and arrivals continue until every measured request has finished, so the load stays at C
throughout the measured window. Every request asks for exactly `max_tokens` tokens (ignore_eos). Times
are host clock readings after each `LLM.step()` (which reads its results back once per step, so on a GPU
the step has finished by then). With `captures` (the engine's CUDA-graph count) every step also records how
many graphs it captured: `ClosedLoopRun.window_captures` says how many of them, and how much of the
window's time, fell inside the measured window (a capture there is a step a warmed-up server would not pay).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dspark.engine.options import SamplingOptions
from dspark.errors import ConfigError
from dspark.eval.frontier import FrontierPoint, point_metrics

if TYPE_CHECKING:
    from dspark.engine.llm import LLM
    from dspark.engine.results import RoundRecord


@dataclass
class ClosedLoopRun:
    """Timings of one closed loop: the measured requests, every step, the measured requests' rounds."""

    concurrency: int
    arrival: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    step_end: list[float] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    verified: list[int] = field(default_factory=list)
    committed: list[int] = field(default_factory=list)
    drafted: list[bool] = field(default_factory=list)
    rounds: list[RoundRecord] = field(default_factory=list)  # the measured requests' rounds, as the engine recorded them
    step_captures: list[int] = field(default_factory=list)  # CUDA graphs each step captured (empty: not counted)
    start: float = 0.0  # clock at the first arrival
    wall_s: float = 0.0

    def window_captures(self) -> tuple[int, float]:
        """(graphs captured, seconds of the steps that captured) inside the measured window: from the first
        measured arrival to the last measured finish."""
        if not self.step_captures or not self.arrival:
            return 0, 0.0
        lo, hi = min(self.arrival), max(self.finish)
        count, seconds, before = 0, 0.0, self.start
        for end, got in zip(self.step_end, self.step_captures):
            if got and lo < end <= hi:
                count += got
                seconds += end - max(before, lo)
            before = end
        return count, seconds

    def point(self, policy: str) -> FrontierPoint:
        return point_metrics(policy, self.concurrency, self.arrival, self.first, self.finish, self.num_tokens,
                             self.step_end, self.step_tokens, self.verified, self.committed, self.drafted)


def default_warmup(concurrency: int) -> int:
    """Warm-up requests when none are given: enough steps that lazily captured CUDA graphs exist before timing."""
    return max(2 * concurrency, 16)


def run_closed_loop(llm: LLM, prompts: Sequence[list[int]], concurrency: int, num_requests: int, max_tokens: int, *,
                    warmup_requests: int | None = None, temperature: float = 1.0, seed: int = 0,
                    clock: Callable[[], float] = time.perf_counter, captures: Callable[[], int] | None = None
                    ) -> ClosedLoopRun:
    """Drive `llm` (idle) with a closed loop (see the module docstring); prompt i is ``prompts[i % len]``;
    `captures`: the engine's CUDA-graph count, read after every step (`dspark.engine.profile.graph_count`)."""
    if not prompts:
        raise ConfigError("the closed loop needs at least one prompt")
    for name, value, low in (("concurrency", concurrency, 1), ("num_requests", num_requests, 1), ("max_tokens", max_tokens, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if llm.has_unfinished():
        raise ConfigError("run the closed loop on an idle engine (requests are running)")
    warmup = default_warmup(concurrency) if warmup_requests is None else int(warmup_requests)
    first_measured, end_measured = warmup, warmup + num_requests
    run = ClosedLoopRun(concurrency)
    live: dict[str, int] = {}  # request id -> arrival index
    arrival: dict[int, float] = {}
    first: dict[int, float] = {}
    issued = 0

    def issue(now: float) -> None:
        nonlocal issued
        rid = f"loop-c{concurrency}-{issued}"
        opts = SamplingOptions(max_tokens, temperature, seed=seed + issued, ignore_eos=True)
        llm.add_request(list(prompts[issued % len(prompts)]), opts, request_id=rid)
        live[rid], arrival[issued] = issued, now
        issued += 1

    held = captures() if captures is not None else 0
    start = run.start = clock()
    for _ in range(concurrency):
        issue(start)
    left = num_requests
    while left > 0:
        outputs = llm.step()
        now = clock()
        run.step_end.append(now)
        if captures is not None:
            count = captures()
            run.step_captures.append(count - held)
            held = count
        run.step_tokens.append(sum(len(o.new_token_ids) for o in outputs))
        for out in outputs:
            index = live.get(out.request_id)
            if index is None:
                continue
            if out.new_token_ids and index not in first:
                first[index] = now
            if not out.finished:
                continue
            if first_measured <= index < end_measured:
                left -= 1
                run.arrival.append(arrival[index])
                run.first.append(first.get(index, now))
                run.finish.append(now)
                run.num_tokens.append(len(out.token_ids))
                rounds = llm.request(out.request_id).rounds
                run.rounds += rounds
                for rec in rounds:
                    run.verified.append(rec.verified)
                    run.committed.append(rec.committed if rec.stopped else rec.accepted + 1)
                    run.drafted.append(rec.drafted > 0)
            del live[out.request_id]
            llm.release(out.request_id)
            if left > 0:
                issue(now)  # the closed loop replaces it at once
    for rid in list(live):  # arrivals after the last measured one: not needed any more
        llm.abort(rid)
        llm.release(rid)
    run.wall_s = clock() - start
    return run
