"""The engine's SPS profile (`dspark.engine.profile`): its measured curves are cleaned of slow outliers
(`lower_envelope`), and a real profile on a tiny engine gives non-decreasing curves (no timing asserted)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from dspark.engine.llm import LLM
from dspark.engine.profile import (
    FIRST_WARMUP,
    MAX_CAPTURE_RETRIES,
    OUTLIER_FACTOR,
    median_seconds,
    lower_envelope,
    output_budget,
    profile_engine,
)
from dspark.errors import ConfigError
from dspark.targets.random_weights import random_drafter, random_target


def test_a_slow_first_point_is_lowered_to_the_next_one_and_reported():
    # the brief's case: the first request count paid the process's first calls (0.342 s against 0.47 ms)
    got, reasons = lower_envelope({1: 0.342, 2: 0.00047, 4: 0.0006}, "request cost")
    assert got == {1: 0.00047, 2: 0.00047, 4: 0.0006}
    assert len(reasons) == 1 and reasons[0].startswith("request cost at 1:") and "outlier" in reasons[0]


def test_the_envelope_is_monotone_and_never_raises_a_point():
    rng = np.random.default_rng(0)
    curve = {int(k): float(v) for k, v in zip(rng.choice(1000, 20, replace=False), rng.uniform(0.001, 0.01, 20))}
    got, _ = lower_envelope(curve)
    keys = sorted(got)
    assert keys == sorted(curve)
    assert all(got[a] <= got[b] for a, b in zip(keys, keys[1:]))
    assert all(got[k] <= curve[k] for k in keys)
    assert lower_envelope({1: 1.0, 2: 2.0})[0] == {1: 1.0, 2: 2.0}  # already monotone: unchanged
    _, small = lower_envelope({1: 0.9 * OUTLIER_FACTOR, 2: 1.0})  # lowered, but not by the outlier factor
    assert small == []


def test_bad_times_are_a_clear_error():
    with pytest.raises(ConfigError, match="finite"):
        lower_envelope({1: float("nan"), 2: 1.0}, "verify")
    with pytest.raises(ConfigError, match="verify"):
        lower_envelope({1: -1.0}, "verify")


def test_output_budget_leaves_room_for_the_first_counts_extra_warmup():
    assert output_budget(3, 4, 3, 1) == (1 + FIRST_WARMUP + 3 + MAX_CAPTURE_RETRIES + 2) * 6 * 4 + 8


class _Capturing:
    """A step whose calls listed in `slow` capture a graph (the count grows) and take a second."""

    def __init__(self, slow: set[int]) -> None:
        self.calls, self.graphs, self.slow = 0, 0, slow

    def __call__(self) -> None:
        self.calls += 1
        if self.calls in self.slow:
            self.graphs += 1
            time.sleep(0.05)


def test_calls_that_capture_a_graph_are_not_timed():
    # session 13's profile: two of three timed drafted steps at 1 request captured (a new context bucket), so the
    # median was a capture (0.64 s against a ~1.5 ms step); such calls are replaced by further calls
    step = _Capturing({2, 3})  # call 1 is the warm-up
    got = median_seconds(step, torch.device("cpu"), repeats=3, warmup=1, captures=lambda: step.graphs)
    assert got < 0.01 and step.calls == 1 + 3 + 2
    always = _Capturing(set(range(1, 100)))  # every call captures: the retries run out, the fastest are kept
    got = median_seconds(always, torch.device("cpu"), repeats=3, warmup=1, captures=lambda: always.graphs)
    assert got >= 0.05 and always.calls == 1 + 3 + MAX_CAPTURE_RETRIES


def test_profile_of_a_tiny_engine_gives_non_decreasing_curves():
    target = random_target("tiny", "cpu", torch.float32)
    llm = LLM(target, random_drafter(target, "dspark", 1), policy="fixed:3", max_num_seqs=4, max_model_len=512,
              num_pages=256, enable_prefix_caching=False, detokenize=False)
    table, rows = profile_engine(llm, requests=(1, 2, 4), widths=(1, 2, 4), context=16, repeats=1, warmup=0)
    data = table.to_dict()
    for key in ("request_cost", "draft_cost"):
        secs = data[key]["seconds"]
        assert data[key]["requests"] == [1, 2, 4] and all(a <= b for a, b in zip(secs, secs[1:]))
    times = [1.0 / s for s in data["steps_per_second"]]
    assert all(a <= b for a, b in zip(times, times[1:]))
    assert any("plain_step_seconds" in r for r in rows)  # the raw rows keep the measurements as taken
    assert not llm.has_unfinished()


def test_a_cached_table_with_an_outlier_is_flagged():
    from dspark.engine.profile import cached_outliers
    from dspark.scheduling import SPSTable

    bad = SPSTable([1, 4], [100.0, 90.0], request_cost={1: 0.342, 2: 0.00047})
    good = SPSTable([1, 4], [100.0, 90.0], {1: 0.002, 4: 0.003}, request_cost={1: 0.0004, 2: 0.00047})
    assert len(cached_outliers(bad)) == 1 and cached_outliers(good) == []


def test_a_cost_that_came_out_non_positive_takes_its_neighbours_value():
    from dspark.engine.profile import MIN_COST, fill_unmeasured

    got, reasons = fill_unmeasured({1: 0.000861, 2: MIN_COST, 4: 0.001}, what="draft cost")
    assert got == {1: 0.000861, 2: 0.001, 4: 0.001} and len(reasons) == 1 and "draft cost at 2" in reasons[0]
    assert fill_unmeasured({1: 0.002, 2: MIN_COST})[0] == {1: 0.002, 2: 0.002}  # nothing larger: the previous one
    assert fill_unmeasured({1: MIN_COST, 2: MIN_COST})[0] == {1: MIN_COST, 2: MIN_COST}  # nothing measured
    assert lower_envelope(fill_unmeasured({1: 0.000861, 2: MIN_COST})[0])[0] == {1: 0.000861, 2: 0.000861}
