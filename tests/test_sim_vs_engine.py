"""The simulator held against the engine: the cost model's terms (`dspark.sim.cost`), the engine's chunked
prefill and budget rule in the simulator, censored trace replay, and `bench_frontier.py --simulate` end to
end on a tiny random pair (CPU timings: the pipeline is checked, the errors are not)."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from dspark.errors import ConfigError
from dspark.eval.plan_cost import PlannerTimer
from dspark.eval.sim_check import compare, max_errors
from dspark.eval.step_terms import _fit_prefill
from dspark.scheduling import SPSTable
from dspark.sim.acceptance import CurveAcceptance, TraceAcceptance, trace_records
from dspark.sim.cost import MIN_PRICE_FACTOR, PrefillCost, RequestCurve, StepCost, pad_up
from dspark.sim.engine import SimConfig, simulate
from dspark.sim.workload import Arrivals, LengthDist, LengthSequence
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_frontier  # noqa: E402

# verify forward: 1 ms at 1 token, 2 ms at 8, 4 ms at 64; request cost 0.5 ms at 1, 1 ms at 8; draft 2 / 3 ms
TABLE = SPSTable([1, 8, 64], [1000.0, 500.0, 250.0], {1: 0.002, 8: 0.003}, request_cost={1: 0.0005, 8: 0.001})
FLAT = SPSTable([1], [100.0])  # 10 ms per forward, whatever its size
ALWAYS = CurveAcceptance((0.999999,) * 4, sharpness=1e6)


def test_a_bare_step_cost_is_the_table():
    cost = StepCost(TABLE)
    for rows, tokens, drafting in ((1, 1, False), (4, 20, True), (8, 64, True), (3, 3, False)):
        want = TABLE.step_time(tokens) + TABLE.request_time(rows) + (TABLE.draft_time(rows) if drafting else 0.0)
        assert cost.step_seconds(rows, tokens, drafting) == pytest.approx(want)
    # prefill alone with no measured term: the prompt through the verify curve (the old inline price)
    assert cost.step_seconds(0, 0, False, prefill_chunks=2, prefill_tokens=40) == pytest.approx(TABLE.step_time(40))
    # and beside decoding rows: one forward over both
    assert cost.step_seconds(2, 4, False, prefill_chunks=1, prefill_tokens=30) == pytest.approx(
        TABLE.step_time(34) + TABLE.request_time(2))


def test_graph_padding_prices_the_padded_shape_and_eager_steps_unpadded():
    assert [pad_up(x, (1, 2, 4, 8)) for x in (1, 3, 5, 8, 9)] == [1, 4, 8, 8, 9] and pad_up(5, None) == 5
    cost = StepCost(TABLE, ladder=(8, 1, 2, 4))  # sorted on construction
    assert cost.ladder == (1, 2, 4, 8)
    assert cost.step_seconds(3, 5, True) == pytest.approx(TABLE.round_time(8, 4))  # 5 tokens, 3 rows -> 8, 4
    assert cost.step_seconds(3, 20, True) == pytest.approx(TABLE.round_time(20, 3))  # above the ladder: eager
    prefilled = cost.step_seconds(3, 5, True, prefill_chunks=1, prefill_tokens=10)  # a prefill chunk: eager
    assert prefilled == pytest.approx(TABLE.round_time(15, 3))


def test_prefill_term_by_mode_rows_chunks_and_tokens():
    curve = RequestCurve((8, 0, 1), (0.003, 0.010, 0.002))  # sorted on construction
    assert curve.requests == (0, 1, 8) and curve.at(0) == 0.010 and curve.at(4.5) == pytest.approx(0.0025)
    assert curve.at(100) == 0.003  # constant beyond the ends
    plain, drafted = PrefillCost(curve, row_s=0.001, token_s=1e-5), PrefillCost(RequestCurve((0,), (0.02,)))
    cost = StepCost(TABLE, {"plain": plain, "drafted": drafted})
    base = cost.step_seconds(1, 1, False)
    assert cost.step_seconds(1, 1, False, prefill_chunks=3, prefill_tokens=100) == pytest.approx(
        base + 0.002 + 2 * 0.001 + 100e-5)  # the prompt does not go through the verify curve any more
    assert cost.step_seconds(0, 0, True, prefill_chunks=1, prefill_tokens=50) == pytest.approx(0.02)
    assert cost.step_seconds(0, 0, False, prefill_chunks=0, prefill_tokens=0) == 0.0
    with pytest.raises(ConfigError, match="keyed"):
        StepCost(TABLE, {"eager": plain})
    with pytest.raises(ConfigError, match="distinct"):
        RequestCurve((1, 1), (0.1, 0.2))
    with pytest.raises(ConfigError, match=">= 0"):
        PrefillCost(curve, token_s=-1.0)


def test_context_and_plan_terms():
    cost = StepCost(TABLE, context_s=1e-6, draft_context_s=2e-6, context_0=100, plan=RequestCurve((1, 8), (1e-4, 8e-4)))
    base = StepCost(TABLE)
    plain = cost.step_seconds(2, 2, False, context_tokens=2 * 600)  # 1000 row-tokens past the profiled context
    assert plain == pytest.approx(base.step_seconds(2, 2, False) + 1000 * 1e-6)  # no plan term in a plain step
    drafted = cost.step_seconds(2, 8, True, context_tokens=2 * 600)
    assert drafted == pytest.approx(base.step_seconds(2, 8, True) + 1000 * 3e-6 + 2e-4)
    assert cost.step_seconds(2, 2, False) == pytest.approx(base.step_seconds(2, 2, False))  # no contexts given
    short = StepCost(TABLE, context_s=1.0, context_0=100).step_seconds(1, 1, False, context_tokens=0)
    assert short == pytest.approx(MIN_PRICE_FACTOR * base.step_seconds(1, 1, False))  # floored
    again = StepCost.from_dict(TABLE, json.loads(json.dumps(cost.to_dict())))
    assert again.to_dict() == cost.to_dict()


def test_fit_prefill_recovers_the_terms():
    step, row, token = {0: 0.004, 4: 0.002}, 0.0005, 1e-5
    rows = []
    for r, fixed in step.items():
        base = 0.01 * r
        rows.append({"requests": r, "prompt_len": 100, "base": base, "one": base + fixed + token * 100,
                     "long": base + fixed + token * 200, "two": base + fixed + row + token * 200})
    fit = _fit_prefill(rows)
    assert fit.token_s == pytest.approx(token) and fit.row_s == pytest.approx(row)
    assert fit.step.requests == (0, 4) and fit.step.seconds == pytest.approx((0.004, 0.002))


# ---------------------------------------------------------------------------------------------- simulator
FAST = dict(output_len=LengthDist("fixed", 9), prompt_len=LengthDist("fixed", 8), num_requests=4, warmup_requests=0)


def test_chunked_prefill_rides_in_the_steps_within_the_budget():
    one = simulate(SimConfig(policy="none", prefill="chunked", **FAST), Arrivals(concurrency=1), FLAT, ALWAYS)
    assert one.ttft["p50"] == pytest.approx(0.01)  # the prompt fits one 10 ms step, which yields the first token
    assert one.per_user_mean == pytest.approx(100.0)  # then one token per step
    chunked = simulate(SimConfig(policy="none", prefill="chunked", max_num_batched_tokens=3, **FAST),
                       Arrivals(concurrency=1), FLAT, ALWAYS)
    assert chunked.ttft["p50"] == pytest.approx(0.03)  # 8 prompt tokens in chunks of 3: three steps
    # at concurrency 2 a new request prefills beside the other's decoding: decoding never pauses
    staggered = dict(FAST, output_len=LengthSequence((9, 5)))
    two = simulate(SimConfig(policy="none", prefill="chunked", **staggered), Arrivals(concurrency=2), FLAT, ALWAYS)
    inline = simulate(SimConfig(policy="none", prefill="inline", **staggered), Arrivals(concurrency=2), FLAT, ALWAYS)
    assert two.per_user_mean == pytest.approx(100.0) and two.throughput > inline.throughput


def test_the_engines_budget_rule_and_prompt_sequences():
    cfg = dict(FAST, output_len=LengthDist("fixed", 6), prefill="none")
    capped = simulate(SimConfig(policy="fixed:3", **cfg), Arrivals(concurrency=1), FLAT, ALWAYS)
    engine = simulate(SimConfig(policy="fixed:3", verify_past_budget=True, **cfg), Arrivals(concurrency=1), FLAT, ALWAYS)
    # 5 tokens after the first: 4 + 1; the capped round verifies 0 drafts, the engine's verifies 3 and cuts the commit
    assert capped.mean_budget == pytest.approx((4 + 1) / 2) and capped.mean_committed == pytest.approx(2.5)
    assert engine.mean_budget == pytest.approx(4.0) and engine.mean_committed == pytest.approx(4.0)  # τ counts uncut
    assert engine.per_user_mean == capped.per_user_mean  # the same steps on a flat table
    seq, table = LengthSequence((3, 50)), SPSTable([1, 100], [1000.0, 10.0])
    assert [seq.at(i) for i in range(4)] == [3, 50, 3, 50] and seq.mean() == 26.5
    run = simulate(SimConfig(policy="none", prompt_len=seq, output_len=LengthDist("fixed", 2), num_requests=2,
                             warmup_requests=0), Arrivals(concurrency=1), table, ALWAYS)
    assert run.ttft["p50"] == pytest.approx((table.step_time(3) + table.step_time(50)) / 2)  # request i: prompt i % 2
    with pytest.raises(ConfigError, match=">= 1"):
        LengthSequence((0,))



# ---------------------------------------------------------------------------------------------- traces
def test_censored_rounds_continue_at_their_confidences():
    conf = np.array([[1.0, 1.0, 0.0, 0.5], [0.9, 0.9, 0.9, 0.9]])
    accepted, verified = np.array([1, 1]), np.array([1, 2])  # row 0 censored after slot 1; row 1 rejected slot 2
    rng = np.random.default_rng(0)
    cont = TraceAcceptance(conf, accepted, verified=verified, censored="confidence")
    _, got = cont.draw(2000, rng)
    assert set(got.tolist()) == {1, 2} and cont.censored_fraction == 0.5  # row 0: slot 2 always, slot 3 never
    _, got = TraceAcceptance(conf, accepted, verified=verified).draw(200, rng)  # reject: as recorded
    assert set(got.tolist()) == {1}
    drop = TraceAcceptance(conf, accepted, verified=verified, censored="drop")
    assert drop.verified.tolist() == [2] and "censored:drop" in drop.name
    with pytest.raises(ConfigError, match="censored"):
        TraceAcceptance(conf, accepted, censored="impute")
    # Kaplan-Meier: slot 1 passed twice; slot 2 was tested by row 1 only (rejected); slots 3-4 by no round
    km = TraceAcceptance(conf, accepted, verified=verified).conditional_acceptance()
    assert km[0] == 1.0 and km[1] == 0.0 and np.isnan(km[2]) and np.isnan(km[3])


def test_trace_records_from_engine_rounds(tmp_path):
    rec = lambda d, v, a, c: SimpleNamespace(drafted=d, verified=v, accepted=a, confidences=c)  # noqa: E731
    rounds = [rec(0, 0, 0, None), rec(3, 3, 1, [0.9, 0.8, 1.0000001]), rec(3, 1, 1, [0.5, 0.5, 0.5]), rec(3, 2, 0, None)]
    records = trace_records(rounds)
    assert len(records) == 3  # the plain round is left out
    assert records[0] == {"confidences": [0.9, 0.8, 1.0], "accepted": 1, "verified": 3}
    assert records[1]["verified"] == 1 and records[2]["confidences"][:2] == pytest.approx([2 / 3, 0.0])  # KM fill-in
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    loaded = TraceAcceptance.load(path, censored="confidence")
    assert loaded.gamma == 3 and loaded.verified.tolist() == [3, 1, 2] and loaded.censored_fraction == pytest.approx(1 / 3)


def test_planner_timer_passes_through_and_times():
    class Fake:
        policy, drafting = "fixed:2", True

        def should_draft(self, n):
            return n > 0

        def plan(self, survival, confidence=None):
            return np.full(len(survival), 2)

    llm = SimpleNamespace(scheduler=SimpleNamespace(planner=Fake()))
    timer = PlannerTimer(llm.scheduler.planner).install(llm)
    assert timer.policy == "fixed:2" and timer.curve() is None
    assert llm.scheduler.planner.should_draft(3) and llm.scheduler.planner.plan(np.ones((3, 2))).tolist() == [2, 2, 2]
    curve = timer.curve(lambda r: 0.0)
    assert curve.requests == (3,) and curve.seconds[0] >= 0
    assert timer.curve(lambda r: 1.0).seconds == (0.0,)  # never below 0
    timer.restore(llm)
    assert isinstance(llm.scheduler.planner, Fake)


def test_compare_and_max_errors():
    m = SimpleNamespace(policy="p", concurrency=2, throughput=100.0, per_user_mean=50.0, mean_verify=2.0, tau=3.0, drafted=1.0)
    s = SimpleNamespace(throughput=110.0, per_user_mean=45.0, mean_budget=3.0, mean_committed=2.9, drafted_rounds=5, rounds=10)
    row = compare(m, s, s)
    assert row["throughput_error"] == pytest.approx(0.1) and row["per_user_error"] == pytest.approx(-0.1)
    assert row["sim_verify"] == 2.0 and row["sim_drafted"] == 0.5 and row["base_throughput_error"] == pytest.approx(0.1)
    worst = max_errors([row, {**row, "concurrency": 4, "throughput_error": -0.3, "per_user_error": float("nan")}])
    assert worst["p"]["throughput_error"] == pytest.approx(0.3) and worst["p"]["per_user_error"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------- end to end
def test_bench_frontier_simulate_end_to_end(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_CACHE", str(tmp_path / "cache"))
    sim_dir = tmp_path / "sim"
    argv = ["--target", "random:tiny", "--drafter", "random:1", "--policies", "none,fixed:3,dspark-async+gate",
            "--synthetic-acceptance", "dspark/code", "--concurrency", "1,2", "--max-tokens", "8", "--num-requests", "3",
            "--warmup-requests", "2", "--prompt-len", "6", "--num-prompts", "8", "--torch-threads", "1", "--simulate",
            "--sim-dir", str(sim_dir)]
    assert bench_frontier.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert any("simulator against the engine" in line and "NOT a measurement" in line for line in lines)
    assert all("NOT lossless" in line for line in lines)
    sim = result["simulation"]
    assert [(r["policy"], r["concurrency"]) for r in sim["points"]] == [
        (p, c) for p in ("none", "fixed:3", "dspark-async+gate") for c in (1, 2)]
    for row in sim["points"]:
        assert row["simulated"] and row["sim_throughput"] > 0 and math.isfinite(row["throughput_error"])
        assert math.isfinite(row["per_user_error"]) and math.isfinite(row["base_throughput_error"])
    assert set(sim["max_abs_error"]) == {"none", "fixed:3", "dspark-async+gate"}
    assert {r["policy"]: r["sim_verify"] for r in sim["points"] if r["concurrency"] == 1}["fixed:3"] == 3.0
    engines = sim["engines"]
    assert engines["none"]["trace"] is None and engines["fixed:3"]["trace"]["gamma"] == 7
    assert engines["fixed:3"]["trace"]["censored"] > 0  # fixed:3 verifies 3 of 7: censored when all 3 pass
    assert engines["dspark-async+gate"]["cost"]["plan"] is not None
    assert engines["none"]["cost"]["plan"] is None and engines["fixed:3"]["cost"]["plan"] is None
    assert all("host" in e["cost"] for e in engines.values())  # the calibration loop's term (None: too few steps)
    rows = json.loads((sim_dir / "none.cost.json").read_text())["rows"]
    assert {r["requests"] for r in rows["host"]} <= {1, 2}
    assert set(engines["fixed:3"]["cost"]["prefill"]) == {"plain", "drafted"} and set(engines["none"]["cost"]["prefill"]) == {"plain"}
    for stem in ("none", "fixed-3", "dspark-async_gate"):
        SPSTable.load(sim_dir / f"{stem}.sps.json")
        assert json.loads((sim_dir / f"{stem}.cost.json").read_text())["cost"]["ladder"] is None  # CPU: eager
    assert TraceAcceptance.load(sim_dir / "fixed-3.trace.jsonl").gamma == 7
    # the start-up table is profiled up to max_num_seqs (2): it covers every concurrency, nothing re-profiled
    assert engines["fixed:3"]["table"]["request_cost"]["requests"] == [1, 2] and "cost_table" not in engines["fixed:3"]
    assert not (sim_dir / "fixed-3.cost.sps.json").exists()


def test_engine_measurements_leave_the_engine_idle(tmp_path, monkeypatch):
    import torch

    from dspark.engine.llm import LLM
    from dspark.eval.sim_check import graph_ladder, planner_table
    from dspark.eval.step_terms import measure_context_cost, measure_prefill_cost
    from dspark.targets.random_weights import random_drafter, random_target

    monkeypatch.setenv("DSPARK_CACHE", str(tmp_path / "cache"))
    target = random_target("tiny", "cpu", torch.float32)
    llm = LLM(target, random_drafter(target, "dspark", 1), policy="fixed:3", synthetic_acceptance="dspark/code",
              max_num_seqs=4, max_model_len=512, num_pages=256, enable_prefix_caching=False, detokenize=False)
    costs, rows = measure_prefill_cost(llm, 16, requests=(0, 1, 2))
    assert set(costs) == {"plain", "drafted"} and costs["drafted"].step.requests == (0, 1, 2)
    assert len(rows) == 6 and all(r["one"] > 0 and r["two"] > 0 for r in rows)
    assert [r["base"] for r in rows if r["requests"] == 0] == [0.0, 0.0]
    plain, drafted, raw = measure_context_cost(llm, 2, (16, 48), repeats=1, warmup=0)
    assert plain >= 0 and drafted >= 0 and {r["context"] for r in raw} == {16, 48}
    assert not llm.has_unfinished() and not llm.scheduler.requests  # every probe aborted and released
    assert graph_ladder(llm) is None  # the CPU runs every step eagerly
    assert planner_table(llm).has_draft_cost  # fixed:3 needs no table: the engine's profile (cached)
