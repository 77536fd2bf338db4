"""The live per-step overhead: what the profiled SPS table misses, measured while serving, moves the gate.

`LiveOverhead` keeps an average per request-count bucket; `SPSTable.with_live` charges it to every
round; `VerifyPlanner.observe_step` feeds it from measured step times (the engine calls it from
`LLM.step`). A load whose steps cost far more than the table says (prefill mixed in, host work) makes
more tokens per step worth more: a gate that stayed closed on the bare table opens.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_drafter
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.errors import ConfigError
from dspark.scheduling.live_overhead import LiveOverhead, bucket_of
from dspark.scheduling.planner import VerifyPlanner
from dspark.scheduling.sps_table import SPSTable


def test_live_overhead_buckets_average_and_publish():
    live = LiveOverhead(alpha=0.5, min_samples=3)
    assert (bucket_of(1), bucket_of(5), bucket_of(64), bucket_of(100)) == (1, 4, 64, 64)
    live.observe(5, 0.010)
    live.observe(6, 0.010)
    assert live.at(5) == 0.0 and live.version == 0  # not enough samples yet
    live.observe(7, 0.020)
    assert live.at(4) == pytest.approx(0.015) and live.version == 1
    assert live.at(1) == pytest.approx(0.015) and live.at(256) == pytest.approx(0.015)  # the nearest counted bucket
    for _ in range(3):
        live.observe(1, -0.5)  # the table was pessimistic: never a negative charge
    assert live.at(1) == 0.0 and live.at(4) == pytest.approx(0.015)
    assert set(live.to_dict()["samples"]) == {1, 4}
    with pytest.raises(ConfigError):
        LiveOverhead(alpha=0.0)


def _table() -> SPSTable:
    # 1 ms per forward up to 16 tokens, 2 ms at 128; drafting costs 3 ms a round
    return SPSTable([1, 16, 128], [1000.0, 1000.0, 500.0], draft_cost={1: 0.003, 16: 0.003})


def test_with_live_charges_every_round_and_leaves_the_table_alone():
    table, live = _table(), LiveOverhead(min_samples=1)
    live.observe(16, 0.005)
    view = table.with_live(live)
    assert view.request_time(16) == pytest.approx(0.005) and table.request_time(16) == 0.0
    assert view.per_request_overhead(16) == pytest.approx(0.008)
    assert np.allclose(view.request_time(np.array([16, 16])), [0.005, 0.005])


def test_the_simulator_prices_steps_without_the_live_overhead():
    """The live overhead is what the measured cost terms also price: the simulator's step prices drop it
    (counted twice, table-driven policies simulated 20-35% slow), the planner keeps it."""
    from dspark.eval.sim_check import price_table

    table, live = _table(), LiveOverhead(min_samples=1)
    live.observe(4, 0.004)
    view = table.with_live(live)
    priced = price_table(view)
    assert priced.live is None and view.live is live and priced.request_time(4) == 0.0
    assert priced.round_time(16, 4) == pytest.approx(table.round_time(16, 4))
    assert price_table(table) is table


def test_measured_overhead_opens_a_closed_gate():
    planner = VerifyPlanner("dspark-async+gate", _table())
    survival = np.cumprod(np.full((16, 7), 0.8), axis=1)
    planner.gate.observe(survival)
    assert not planner.should_draft(16)  # on the bare table a drafted round does not pay
    predicted = 0.001  # a plain step of 16 tokens on the table
    for _ in range(40):  # every plain step really takes 12 ms more than the table says
        planner.observe_step(16, 16, False, predicted + 0.012)
    assert planner.live.at(16) == pytest.approx(0.012, rel=0.05)
    assert planner.should_draft(16)
    planner.observe_step(16, 16, False, 5.0)  # an idle gap is not overhead
    assert planner.live.at(16) == pytest.approx(0.012, rel=0.05)


def test_fixed_policies_keep_no_live_overhead():
    planner = VerifyPlanner("fixed:3")
    planner.observe_step(4, 16, True, 1.0)
    assert planner.live is None


def test_engine_feeds_the_planner_its_step_times(qwen3_target):
    drafter = tiny_drafter(qwen3_target, "dspark")
    llm = LLM(qwen3_target, drafter, policy="dspark-async+gate", sps=_table(), page_size=8, eos_token_ids=(-1,))
    llm.generate([[1, 2, 3, 4], [5, 6, 7]], max_new_tokens=24, temperature=1.0, seed=3, ignore_eos=True)
    samples = llm.planner.live.to_dict()["samples"]
    assert sum(samples.values()) > 8  # every step after the first was observed


@pytest.mark.parametrize("policy", ["dspark-async", "dspark-async+gate"])
def test_prepare_while_the_gpu_runs_changes_no_decision(policy):
    """`prepare` (the engine calls it between a step's launch and its read-back) only moves work earlier."""
    rng = np.random.default_rng(0)
    rounds = [np.cumprod(rng.uniform(0.5, 0.99, (r, 7)), axis=1) for r in [16] * 12 + [15, 16, 16]]
    table = SPSTable([1, 16, 64, 128], [1000.0, 900.0, 600.0, 400.0], draft_cost={1: 0.0005, 16: 0.001})
    got = []
    for prepared in (False, True):
        planner, out = VerifyPlanner(policy, table), []
        for s in rounds:
            out.append((planner.should_draft(len(s)), planner.plan(s).tolist()))
            if prepared:
                planner.prepare(len(s))
        got.append(out)
    assert got[0] == got[1]
    if policy == "dspark-async":
        assert planner._capacity is not None  # the capacity was computed ahead
