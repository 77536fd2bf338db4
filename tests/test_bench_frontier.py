"""The engine's serving frontier: point metrics and SLA readings on hand-made curves, and scripts/bench_frontier.py
end to end on tiny models (synthetic acceptance on a random pair, and the embedded trained pair)."""

from __future__ import annotations

import json
import sys

import pytest

from dspark.errors import ConfigError
from dspark.eval.closed_loop import ClosedLoopRun
from dspark.eval.frontier import FrontierPoint, point_metrics, reference_speed, sla_summary
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import bench_frontier  # noqa: E402


def test_point_metrics_follow_the_simulators_definitions():
    # two requests: 5 tokens from t=1 (first token) to t=3, 3 tokens from t=2 to t=4; steps every 0.5 s
    p = point_metrics("x", 2, arrival=[0.0, 1.5], first=[1.0, 2.0], finish=[3.0, 4.0], num_tokens=[5, 3],
                      step_end=[0.5 * i for i in range(1, 11)], step_tokens=[1] * 10,
                      verified=[2, 2, 0], committed=[3, 2, 1], drafted=[True, True, False])
    assert p.window_s == 4.0 and p.output_tokens == 8 and p.throughput == 2.0  # steps ending in (0, 4]
    assert p.per_user_mean == pytest.approx((4 / 2 + 2 / 2) / 2)
    assert p.tpot["p50"] == pytest.approx(0.75) and p.ttft["p50"] == pytest.approx(0.75)
    assert (p.mean_verify, p.tau, p.drafted) == (pytest.approx(4 / 3), 2.0, pytest.approx(2 / 3))
    with pytest.raises(ConfigError, match="non-empty"):
        point_metrics("x", 1, [], [], [], [], [], [])


def test_graph_captures_inside_the_measured_window_are_counted():
    # steps end at 1..6 s; the window runs from the first measured arrival (2.5) to the last finish (5.0)
    run = ClosedLoopRun(1, arrival=[2.5, 3.0], finish=[4.0, 5.0], step_end=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                        step_captures=[3, 0, 2, 0, 1, 4])
    assert run.window_captures() == (3, pytest.approx(0.5 + 1.0))  # the step ending at 3 counts from 2.5
    assert ClosedLoopRun(1, arrival=[0.0], finish=[1.0], step_end=[1.0]).window_captures() == (0, 0.0)


def _point(policy: str, c: int, user: float, thr: float) -> FrontierPoint:
    nan = {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    return FrontierPoint(policy, c, thr, user, user, nan, nan, 0.0, 1.0, 0.0, 8, 0, 1.0)


def test_sla_summary_on_hand_made_curves():
    points = [_point("none", c, u, t) for c, u, t in ((1, 100, 100), (2, 90, 180), (4, 60, 240))]
    points += [_point("spec", c, u, t) for c, u, t in ((1, 200, 200), (2, 150, 300), (4, 50, 350))]
    assert reference_speed(points) == 100
    s50, s75, s90 = sla_summary(points)
    assert [row["per_user_target"] for row in (s50, s75, s90)] == [50, 75, 90]
    assert s50["throughput"] == {"none": 240, "spec": 350}  # spec's last point sits exactly at S
    assert s75["throughput"] == {"none": pytest.approx(210), "spec": pytest.approx(337.5)}  # on the segments
    assert s90["throughput"] == {"none": 180, "spec": pytest.approx(330)}
    assert s50["vs_reference"]["spec"] == pytest.approx(350 / 240)
    assert s50["per_user_at_reference_throughput"]["spec"] == pytest.approx(180)  # between 200 and 300 tok/s
    slow = [_point("none", 1, 100, 100), _point("slow", 1, 40, 500)]
    assert sla_summary(slow, fractions=(0.5,))[0]["throughput"]["slow"] is None  # never reaches S
    with pytest.raises(ConfigError, match="reference policy 'none'"):
        sla_summary(points[3:])


def run_script(capsys, *argv: str) -> tuple[list[str], dict]:
    common = ["--concurrency", "1,2", "--max-tokens", "8", "--num-requests", "4", "--prompt-len", "6",
              "--num-prompts", "12", "--torch-threads", "1"]
    assert bench_frontier.main([*argv, *common]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, json.loads(lines[-1])


def test_bench_frontier_synthetic_random_pair(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "frontier.png"
    lines, result = run_script(capsys, "--target", "random:tiny", "--drafter", "random:1", "--policies",
                               "none,mtp1,fixed:3", "--synthetic-acceptance", "dspark/code", "--plot", str(plot),
                               "--json-out", str(tmp_path / "f.json"))
    assert all("NOT lossless" in line for line in lines)
    assert result["lossless"] is False and result["synthetic_acceptance"]["mtp1"].startswith("synthetic-acceptance:mtp/code")
    points = result["points"]
    assert [(p["policy"], p["concurrency"]) for p in points] == [(pol, c) for pol in ("none", "mtp1", "fixed:3") for c in (1, 2)]
    assert all(p["num_measured"] == 4 and p["throughput"] > 0 for p in points)
    assert all(p["extra"]["window_captures"] == 0 for p in points)  # CPU: no CUDA graphs
    assert {p["policy"]: p["mean_verify"] for p in points if p["concurrency"] == 1} == {"none": 0, "mtp1": 1, "fixed:3": 3}
    assert len(result["sla"]) == 3 and plot.stat().st_size > 0
    assert json.loads((tmp_path / "f.json").read_text())["points"] == points


def test_bench_frontier_real_pair_from_a_prompt_file(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"input_ids": [1 + i, 2, 3, 4]}) + "\n" for i in range(5)))
    lines, result = run_script(capsys, "--policies", "none,fixed:2", "--prompts", str(prompts), "--repeats", "3")
    assert result["lossless"] is True and not any("NOT lossless" in line for line in lines)
    assert [(p["policy"], p["concurrency"]) for p in result["points"]] == [("none", 1), ("none", 2), ("fixed:2", 1),
                                                                           ("fixed:2", 2)]
    assert all(len(p["extra"]["repeat_throughput"]) == 3 for p in result["points"])  # three rounds, ABBA order
    assert bench_frontier.main(["--policies", "none", "--repeats", "0"]) == 2
    assert "--repeats" in capsys.readouterr().err
    assert bench_frontier.main(["--target", "random:tiny", "--policies", "none"]) == 2
    assert "--synthetic-acceptance" in capsys.readouterr().err


def test_median_points_keep_the_median_repeat_in_first_round_order():
    rounds = [[_point("a", 1, 10, 5.0), _point("b", 1, 10, 9.0)], [_point("b", 1, 10, 7.0), _point("a", 1, 10, 3.0)],
              [_point("a", 1, 10, 4.0), _point("b", 1, 10, 8.0)]]
    got = bench_frontier.median_points(rounds)
    assert [(p.policy, p.throughput) for p in got] == [("a", 4.0), ("b", 8.0)]
    assert got[0].extra["repeat_throughput"] == [5.0, 3.0, 4.0]
    two = bench_frontier.median_points(rounds[:2])
    assert [p.throughput for p in two] == [3.0, 7.0]  # an even count: the lower middle one
    assert bench_frontier.measured_requests(1) == 32 and bench_frontier.measured_requests(16) == 64
    assert bench_frontier.measured_requests(64) == 128


def test_table_reading_policies_get_a_table_profiled_on_a_throwaway_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPARK_CACHE", str(tmp_path / "cache"))
    args = bench_frontier.parse_args(["--target", "random:tiny", "--drafter", "random:1", "--synthetic-acceptance",
                                      "dspark/code", "--policies", "fixed:3,dspark-async,dspark-async+gate",
                                      "--concurrency", "1,2", "--max-tokens", "8", "--torch-threads", "1"])
    target, drafter, _, _ = bench_frontier.load_models(args)
    specs = bench_frontier.engine_specs(args, target, drafter, bench_frontier.Printer(True))
    tables: dict = {}
    got = [bench_frontier.profile_apart(s, target, args, 6, 6.0, tables) for s in specs]
    assert got[0] is specs[0] and got[0].sps is None  # fixed:3 plans without a table
    assert got[1].sps is not None and got[2].sps is got[1].sps  # one profile for the drafter, shared
    assert [s.policy for s in got] == ["fixed:3", "dspark-async", "dspark-async+gate"]
    assert len(list((tmp_path / "cache" / "sps").glob("*.json"))) == 1  # cached as `dspark serve` would find it
