"""The serving loop's per-step excess (`dspark.eval.host_cost`) and the cost model's host term and padded
prefill (`dspark.sim.cost`). Pure functions on made-up steps; one tiny-engine run checks the plumbing
(CPU timings: no value is asserted)."""

from __future__ import annotations

import pytest
import torch

from dspark.engine.llm import LLM
from dspark.engine.messages import ScheduledSeq, SchedulerOutput
from dspark.errors import ConfigError
from dspark.eval.host_cost import StepRecorder, StepShape, host_curve, measure_host_cost, step_excess, trimmed_mean
from dspark.scheduling import SPSTable
from dspark.sim.cost import MIN_PRICE_FACTOR, PrefillCost, RequestCurve, StepCost
from dspark.targets.random_weights import random_drafter, random_target

TABLE = SPSTable([1, 8, 64], [1000.0, 500.0, 250.0], {1: 0.002, 8: 0.003}, request_cost={1: 0.0005, 8: 0.001})


def _seq(start: int, tokens: int, prefill: bool = False, verify: int = 0) -> ScheduledSeq:
    return ScheduledSeq("r", start, [0] * tokens, [], 0, prefill=prefill, num_verify=verify)


def test_step_shape_reads_rows_tokens_chunks_and_contexts():
    out = SchedulerOutput([_seq(10, 1, verify=3), _seq(20, 1, verify=1), _seq(0, 30, prefill=True)], draft=True)
    assert StepShape.of(out) == StepShape(2, 6, True, 1, 30, 30)


def test_step_excess_skips_prefill_steps_and_prices_the_rest():
    cost = StepCost(TABLE)
    shapes = [StepShape(1, 1, False, 0, 0, 5), StepShape(2, 2, False, 1, 40, 9), StepShape(8, 8, True, 0, 0, 80)]
    got = step_excess(shapes, [0.004, 1.0, 0.010], cost)
    assert [r for r, _ in got] == [1, 8]
    assert got[0][1] == pytest.approx(0.004 - 0.0015) and got[1][1] == pytest.approx(0.010 - 0.006)
    with pytest.raises(ConfigError):
        step_excess(shapes, [0.1], cost)


def test_trimmed_mean_and_host_curve():
    assert trimmed_mean([1.0, 2.0, 3.0, 100.0], 0.25) == pytest.approx(2.0)
    assert trimmed_mean([5.0], 0.5) == 5.0
    with pytest.raises(ConfigError):
        trimmed_mean([], 0.1)
    with pytest.raises(ConfigError):
        trimmed_mean([1.0], 1.0)
    excess = [(4, 0.002)] * 5 + [(4, 0.5)] + [(1, -0.001)] * 3 + [(2, 0.1)]  # R = 2: too few steps
    curve = host_curve(excess, min_steps=3, trim=0.2)
    assert curve.requests == (1, 4) and curve.seconds[0] == pytest.approx(-0.001)  # the table priced it too high
    assert curve.signed
    assert curve.seconds[1] == pytest.approx(0.002)  # the slowest 20% left out
    assert host_curve([(1, 0.1)], min_steps=3) is None


def test_host_term_is_charged_to_steps_with_decoding_rows():
    host = RequestCurve((1, 8), (0.001, 0.004))
    bare, cost = StepCost(TABLE), StepCost(TABLE, host=host)
    assert cost.step_seconds(8, 8, True) == pytest.approx(bare.step_seconds(8, 8, True) + 0.004)
    assert cost.step_seconds(0, 0, False, prefill_chunks=1, prefill_tokens=8) == bare.step_seconds(
        0, 0, False, prefill_chunks=1, prefill_tokens=8)  # a step of prefill alone: no decoding rows
    assert StepCost.from_dict(TABLE, cost.to_dict()).host.seconds == host.seconds
    assert StepCost.from_dict(TABLE, bare.to_dict()).host is None
    faster = StepCost(TABLE, host=RequestCurve((1, 8), (-0.001, -1.0), signed=True))  # the table priced too high
    assert faster.step_seconds(1, 1, False) == pytest.approx(bare.step_seconds(1, 1, False) - 0.001)
    assert faster.step_seconds(8, 8, True) == pytest.approx(MIN_PRICE_FACTOR * bare.step_seconds(8, 8, True))  # floored
    assert StepCost.from_dict(TABLE, faster.to_dict()).host == faster.host
    with pytest.raises(ConfigError):
        RequestCurve((1,), (-0.001,))  # unsigned curves hold no negative seconds


def test_prefill_chunks_on_the_ladder_are_priced_padded():
    ladder = (1, 2, 4, 8, 16)
    cost = StepCost(TABLE, ladder=ladder)
    # 3 rows, 5 tokens and a 6-token chunk: one graph of pad(11) = 16 tokens, 4 sequences
    assert cost.step_seconds(3, 5, False, prefill_chunks=1, prefill_tokens=6) == pytest.approx(
        TABLE.step_time(16) + TABLE.request_time(4))
    measured = StepCost(TABLE, {"plain": PrefillCost(RequestCurve((0,), (0.0,)), token_s=1e-3)}, ladder=ladder)
    # the decoding rows at pad(5) = 8 tokens, the chunk at P' = pad(11) - 8 = 8 tokens
    assert measured.step_seconds(3, 5, False, prefill_chunks=1, prefill_tokens=6) == pytest.approx(
        TABLE.step_time(8) + TABLE.request_time(4) + 8e-3)
    # past the ladder's top: eager, unpadded
    assert measured.step_seconds(3, 5, False, prefill_chunks=1, prefill_tokens=20) == pytest.approx(
        TABLE.step_time(5) + TABLE.request_time(3) + 20e-3)


def test_measure_host_cost_on_a_tiny_engine_leaves_it_idle(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_CACHE", str(tmp_path / "cache"))
    target = random_target("tiny", "cpu", torch.float32)
    llm = LLM(target, random_drafter(target, "dspark", 1), policy="fixed:3", synthetic_acceptance="dspark/code",
              max_num_seqs=4, max_model_len=512, num_pages=256, enable_prefix_caching=False, detokenize=False)
    curve, rows = measure_host_cost(llm, StepCost(TABLE), 12, (1, 2, 9), 8)  # 9 > max_num_seqs: skipped
    assert {r["requests"] for r in rows} <= {1, 2} and rows and all(r["steps"] >= 1 for r in rows)
    assert curve is None or all(s >= 0 for s in curve.seconds)
    assert "schedule" not in vars(llm.scheduler)  # the recorder is gone
    assert not llm.has_unfinished()
    with pytest.raises(ConfigError):
        measure_host_cost(llm, StepCost(TABLE), 0, (1,), 8)


def test_step_recorder_passes_the_output_through():
    out = SchedulerOutput([_seq(3, 1)])
    rec = StepRecorder(lambda: out)
    assert rec() is out and rec.shapes == [StepShape(1, 1, False, 0, 0, 3)]
