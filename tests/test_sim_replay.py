"""`scripts/sim_replay.py` replays a frontier run's saved simulator inputs and reproduces that run's own
simulation where nothing unsaved entered it: session 11's fixed:7 points (no planner, so no live overhead)
come out with the errors the GPU run printed, to rounding."""

from __future__ import annotations

import importlib.util
import json
import tarfile
from pathlib import Path

import pytest

RAW = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "serving" / "session11"


def _script():
    spec = importlib.util.spec_from_file_location("sim_replay", Path(__file__).resolve().parents[1] / "scripts" / "sim_replay.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_reproduces_the_runs_fixed_k_simulation(tmp_path, capsys):
    if not (RAW / "sim8b.tar.xz").is_file():
        pytest.skip("session 11 raw results absent")
    with tarfile.open(RAW / "sim8b.tar.xz") as tar:
        tar.extractall(tmp_path, filter="data")
    frontier = json.loads((RAW / "frontier8b.json").read_text())
    rows = _script().replay(tmp_path / "sim8b", frontier)
    in_run = {(r["policy"], r["concurrency"]): r for r in frontier["simulation"]["points"]}
    fixed = [r for r in rows if r["policy"] == "fixed:7"]
    assert len(fixed) == 3
    for r in fixed:
        want = in_run[("fixed:7", r["concurrency"])]
        assert r["throughput_error"] == pytest.approx(want["throughput_error"], abs=1e-9)
        assert r["per_user_error"] == pytest.approx(want["per_user_error"], abs=1e-9)
    assert {r["policy"] for r in rows} == {"fixed:7", "dspark-async", "dspark-async+gate"}
    assert all(abs(r["throughput_error"]) < 0.12 for r in rows)


def test_refit_signs_the_host_term_from_the_raw_rows():
    from dspark.scheduling import SPSTable
    from dspark.sim.cost import RequestCurve, StepCost

    table = SPSTable([1, 64], [200.0, 100.0])
    cost = StepCost(table, host=RequestCurve((1, 4), (0.0, 0.0)))
    rows = {"host": [{"requests": 1, "steps": 16, "mean_s": -0.005, "trimmed_s": -0.004},
                     {"requests": 4, "steps": 2, "mean_s": 0.1, "trimmed_s": 0.1}]}  # too few steps: left out
    got = _script().refit(cost, rows)
    assert got.host.requests == (1,) and got.host.seconds == (-0.004,) and got.host.signed
    assert _script().refit(cost, {}) is cost
