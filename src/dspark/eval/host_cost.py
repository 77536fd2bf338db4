"""The serving loop's per-step excess over the step prices, measured on the engine: the `host` term of `StepCost`.

Where it sits: `dspark.eval.sim_check.engine_cost` calls `measure_host_cost` after the other terms
(the table, prefill, context, plan) are known. The SPS profile (`dspark.engine.profile`) times steady
steps: the same R requests decoding, nothing finishing, nothing joining, the caller doing nothing
between steps. A serving loop does more host work per step (requests finishing, released and
admitted, their outputs handed back, the loop between two steps, the planner's bookkeeping), and on
a GPU, where a step is a CUDA graph of a few milliseconds, that host time is a large part of it.

The measurement is a short calibration run, separate from the points being predicted: for each
request count c, a closed loop of c clients (`dspark.eval.closed_loop.run_closed_loop`: c warm-up
and c measured requests of random prompts of the workload's mean length, `CALIBRATION_TOKENS`
output tokens each) on the engine itself, on its device. A `StepRecorder` standing in for the
scheduler's `schedule` notes every step's shape (decoding rows R, their tokens B and contexts, the
prefill chunks, whether it drafts). Each step's duration (from the previous step's end to its own:
the loop's work between steps included) less its price under the other terms (`StepCost.step_seconds`)
is its excess (`step_excess`); `host_curve` keeps, per R, the trimmed mean over the decoding steps
without a prefill chunk (those steps' own excess is the prefill term's to price). The curve is signed: a
negative excess says the table prices those serving steps above what they took, and the simulator
takes that off (`dspark.sim.cost`: never below a share of the table's price).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from dspark.errors import ConfigError
from dspark.eval.closed_loop import run_closed_loop
from dspark.sim.cost import RequestCurve

if TYPE_CHECKING:
    from dspark.engine.llm import LLM
    from dspark.engine.messages import SchedulerOutput

CALIBRATION_TOKENS = 32  # output tokens per calibration request (at most the workload's)
MIN_STEPS = 3  # decoding steps a request count needs before its excess counts
TRIM = 0.1  # share of the slowest steps left out of each mean (a shared machine's hiccups)


class StepPricer(Protocol):
    def step_seconds(self, decode_rows: int, verify_tokens: int, drafting: bool, *, prefill_chunks: int = 0,
                     prefill_tokens: int = 0, context_tokens: float | None = None) -> float: ...


@dataclass(frozen=True)
class StepShape:
    """What the price of one engine step depends on, read off its `SchedulerOutput`."""

    decode_rows: int
    verify_tokens: int  # B: the decoding rows' anchors and verified drafts
    drafting: bool
    prefill_chunks: int
    prefill_tokens: int
    context_tokens: int  # Σ over the decoding rows of the tokens before the step

    @classmethod
    def of(cls, out: SchedulerOutput) -> StepShape:
        decode = [s for s in out.seqs if not s.prefill]
        chunks = [s for s in out.seqs if s.prefill]
        return cls(len(decode), sum(s.num_query for s in decode), bool(out.draft), len(chunks),
                   sum(len(s.token_ids) for s in chunks), sum(s.start for s in decode))


class StepRecorder:
    """Stands in for ``llm.scheduler.schedule`` (an instance attribute) and notes every step's `StepShape`."""

    def __init__(self, schedule: Callable[[], SchedulerOutput]) -> None:
        self.inner = schedule
        self.shapes: list[StepShape] = []

    def __call__(self) -> SchedulerOutput:
        out = self.inner()
        self.shapes.append(StepShape.of(out))
        return out


def step_excess(shapes: Sequence[StepShape], seconds: Sequence[float], cost: StepPricer) -> list[tuple[int, float]]:
    """(R, measured − priced seconds) of every decoding step without a prefill chunk."""
    if len(shapes) != len(seconds):
        raise ConfigError(f"{len(shapes)} step shapes for {len(seconds)} step durations")
    out = []
    for shape, dt in zip(shapes, seconds):
        if shape.decode_rows == 0 or shape.prefill_chunks > 0:
            continue
        price = cost.step_seconds(shape.decode_rows, shape.verify_tokens, shape.drafting,
                                  context_tokens=float(shape.context_tokens))
        out.append((shape.decode_rows, float(dt) - price))
    return out


def trimmed_mean(values: Sequence[float], trim: float = TRIM) -> float:
    """Mean of `values` without the largest `trim` share of them (at least one value is kept)."""
    if not values:
        raise ConfigError("a trimmed mean needs at least one value")
    if not 0.0 <= trim < 1.0:
        raise ConfigError(f"trim must be in [0, 1), got {trim}")
    x = np.sort(np.asarray(values, dtype=np.float64))
    keep = max(1, int(np.ceil(x.size * (1.0 - trim))))
    return float(x[:keep].mean())


def host_curve(excess: Sequence[tuple[int, float]], min_steps: int = MIN_STEPS, trim: float = TRIM
               ) -> RequestCurve | None:
    """Per request count with at least `min_steps` steps, the trimmed mean excess (signed); None if none has."""
    by_rows: dict[int, list[float]] = defaultdict(list)
    for rows, dt in excess:
        by_rows[int(rows)].append(float(dt))
    counts = sorted(r for r, v in by_rows.items() if len(v) >= min_steps)
    if not counts:
        return None
    return RequestCurve(tuple(counts), tuple(trimmed_mean(by_rows[r], trim) for r in counts), signed=True)


def measure_host_cost(llm: LLM, cost: StepPricer, prompt_len: int, requests: Sequence[int], max_tokens: int,
                      seed: int = 0) -> tuple[RequestCurve | None, list[dict[str, float]]]:
    """The `host` term (module docstring) at the request counts in `requests` that fit the engine, and
    the raw rows (per request count: steps seen, mean and trimmed-mean excess). None when no count
    gave `MIN_STEPS` decoding steps."""
    if llm.has_unfinished():
        raise ConfigError("measure the host cost on an idle engine (requests are running)")
    if prompt_len < 1 or max_tokens < 1:
        raise ConfigError(f"prompt_len and max_tokens must be >= 1, got {prompt_len} / {max_tokens}")
    tokens = min(int(max_tokens), CALIBRATION_TOKENS)
    rng = np.random.default_rng([seed, 7])
    counts = sorted({int(c) for c in requests if 1 <= int(c) <= llm.config.max_num_seqs})
    prompts = [rng.integers(0, llm.target.vocab_size, int(prompt_len)).tolist() for _ in range(2 * max(counts, default=1))]
    excess: list[tuple[int, float]] = []
    scheduler = llm.scheduler
    owned = "schedule" in vars(scheduler)  # an instance attribute already (put back as it was)
    original = scheduler.schedule
    for c in counts:
        recorder = StepRecorder(original)
        scheduler.schedule = recorder
        try:
            run = run_closed_loop(llm, prompts, c, c, tokens, warmup_requests=c, seed=seed)
        finally:
            if owned:
                scheduler.schedule = original
            else:
                del scheduler.schedule  # the class's method again
        ends = np.asarray(run.step_end)
        # the first step's duration is unknown (the loop's start is not recorded): start at the second
        excess += step_excess(recorder.shapes[1:len(ends)], np.diff(ends).tolist(), cost)
    curve = host_curve(excess)
    rows = []
    for r in sorted({r for r, _ in excess}):
        mine = [dt for rr, dt in excess if rr == r]
        rows.append({"requests": r, "steps": len(mine), "mean_s": float(np.mean(mine)), "trimmed_s": trimmed_mean(mine)})
    return curve, rows
