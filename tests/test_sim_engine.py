"""The discrete-event serving simulator: exact numbers on constant cost tables, determinism, the closed
and open loops, trace replay, and the frontier helpers of `dspark.sim.sweep`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dspark.errors import ConfigError
from dspark.scheduling import SPSTable, roofline_table
from dspark.sim.acceptance import CurveAcceptance, make_acceptance
from dspark.sim.engine import SimConfig, simulate
from dspark.sim.sweep import best_on_polyline, matched_speedups, run_sweep, sla_table, throughput_at_sla
from dspark.sim.workload import Arrivals, LengthDist

FLAT = SPSTable([1], [100.0])  # every forward takes 10 ms whatever its size
ALWAYS = CurveAcceptance((0.999999,) * 4, sharpness=1e6)  # every draft accepted (up to 1e-6)
FAST = dict(output_len=LengthDist("fixed", 41), prompt_len=LengthDist("fixed", 8), num_requests=16, prefill="none")


def test_no_speculation_on_a_flat_table_is_exact():
    result = simulate(SimConfig(policy="none", **FAST), Arrivals(concurrency=4), FLAT, ALWAYS)
    assert result.simulated
    assert result.mean_budget == 1.0 and result.mean_committed == 1.0
    assert result.per_user_mean == pytest.approx(100.0)
    assert result.tpot["p50"] == pytest.approx(0.01)
    assert result.throughput == pytest.approx(400.0, rel=0.03)
    assert result.mean_running == pytest.approx(4.0)


def test_fixed_k_with_certain_acceptance_commits_k_plus_one():
    result = simulate(SimConfig(policy="fixed:3", **FAST), Arrivals(concurrency=2), FLAT, ALWAYS)
    assert result.mean_committed == pytest.approx(4.0)
    assert result.mean_budget == pytest.approx(4.0)
    assert result.per_user_mean == pytest.approx(400.0)


def test_draft_cost_is_skipped_only_for_none():
    costly = SPSTable([1], [100.0], {1: 0.01})
    none = simulate(SimConfig(policy="none", **FAST), Arrivals(concurrency=1), costly, ALWAYS)
    mtp = simulate(SimConfig(policy="mtp1", **FAST), Arrivals(concurrency=1), costly, ALWAYS)
    assert none.per_user_mean == pytest.approx(100.0)
    assert mtp.per_user_mean == pytest.approx(100.0)  # 2 tokens per 20 ms round


def test_inline_prefill_sets_ttft():
    cfg = SimConfig(policy="none", output_len=LengthDist("fixed", 5), prompt_len=LengthDist("fixed", 8), num_requests=4, prefill="inline")
    result = simulate(cfg, Arrivals(rate=0.01), FLAT, ALWAYS)  # requests hardly ever overlap
    assert result.ttft["p50"] == pytest.approx(0.01)  # one 10 ms prefill forward
    assert result.tpot["p50"] == pytest.approx(0.01)


def test_seeded_runs_are_deterministic_and_share_the_workload():
    table = roofline_table("h200", "qwen3-8b", context_len=512, drafter="dspark")
    acc = make_acceptance("dspark/code")
    cfg = SimConfig(policy="dspark", num_requests=24, seed=3)
    a = simulate(cfg, Arrivals(rate=50.0), table, acc)
    b = simulate(cfg, Arrivals(rate=50.0), table, acc)
    assert a == b
    c = simulate(SimConfig(policy="dspark", num_requests=24, seed=4), Arrivals(rate=50.0), table, acc)
    assert c != a


def test_dspark_is_at_least_as_good_as_fixed_policies_on_a_roofline():
    table = roofline_table("h200", "qwen3-8b", context_len=640, drafter="dspark")
    acc = make_acceptance("dspark/math")
    base = SimConfig(num_requests=32, prefill="none", output_len=LengthDist("uniform", 64, 128))
    results = run_sweep(["fixed:1", "fixed:3", "fixed:7", "dspark"], [lambda: Arrivals(concurrency=4), lambda: Arrivals(concurrency=128)], lambda p: table, acc, base)
    for conc in (4, 128):
        best_fixed = max(r.throughput for r in results if r.concurrency == conc and r.policy != "dspark")
        ours = next(r.throughput for r in results if r.concurrency == conc and r.policy == "dspark")
        assert ours >= 0.97 * best_fixed


def test_trace_replay_through_the_engine(tmp_path):
    path = tmp_path / "trace.jsonl"
    path.write_text("\n".join(json.dumps({"confidences": [1.0, 1.0, 1.0], "accepted": 3}) for _ in range(5)))
    result = simulate(SimConfig(policy="dspark", **FAST), Arrivals(concurrency=2), FLAT, make_acceptance(str(path)))
    assert result.mean_committed == pytest.approx(4.0) and result.mean_budget == pytest.approx(4.0)


def test_bad_configs():
    with pytest.raises(ConfigError, match="prefill"):
        simulate(SimConfig(prefill="disaggregated"), Arrivals(concurrency=1), FLAT, ALWAYS)
    with pytest.raises(ConfigError, match="unknown policy"):
        simulate(SimConfig(policy="fast"), Arrivals(concurrency=1), FLAT, ALWAYS)
    with pytest.raises(ConfigError, match="exactly one"):
        Arrivals()
    with pytest.raises(ConfigError, match="rate"):
        Arrivals(rate=-1.0)
    with pytest.raises(ConfigError, match="uniform"):
        LengthDist.parse("uniform:9:3")
    with pytest.raises(ConfigError, match="expected"):
        LengthDist.parse("poisson:3")


def test_length_distributions():
    rng = np.random.default_rng(0)
    assert LengthDist.parse("7").sample(rng, 3).tolist() == [7, 7, 7]
    u = LengthDist.parse("uniform:2:4").sample(rng, 1000)
    assert set(u.tolist()) == {2, 3, 4}
    ln = LengthDist.parse("lognormal:100:0.5")
    assert ln.sample(rng, 20_000).mean() == pytest.approx(ln.mean(), rel=0.03)
    assert str(LengthDist.parse("fixed:9")) == "fixed:9"


def test_polyline_helpers():
    xs, ys = np.array([300.0, 200.0, 100.0]), np.array([1.0, 5.0, 9.0])
    assert best_on_polyline(xs, ys, 150.0) == pytest.approx(7.0)  # interpolated on the last segment
    assert best_on_polyline(xs, ys, 200.0) == pytest.approx(5.0)
    assert best_on_polyline(xs, ys, 400.0) is None


def test_sla_summary_on_real_runs():
    table = SPSTable([1, 64, 128], [100.0, 90.0, 50.0])
    acc = make_acceptance("dspark/math")
    base = SimConfig(num_requests=16, prefill="none", output_len=LengthDist("fixed", 64))
    loads = [lambda c=c: Arrivals(concurrency=c) for c in (1, 8, 32)]
    results = run_sweep(["mtp1", "dspark"], loads, lambda p: table, acc, base)
    rows = sla_table(results, "dspark", "mtp1", [150.0, 10_000.0])
    assert rows[0]["gain"] > 0 and rows[1]["gain"] is None
    assert throughput_at_sla(results, "dspark", 150.0) == rows[0]["dspark"]
    assert all(row["speedup"] > 0 for row in matched_speedups(results, "dspark", "mtp1"))
