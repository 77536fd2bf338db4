"""`dspark simulate`: a table then one JSON line, files under --out, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from dspark.cli import main
from dspark.scheduling import SPSTable

SMALL = ["--concurrency", "1,8", "--num-requests", "8", "--output-len", "32", "--prompt-len", "16", "--policy", "none,mtp1,dspark"]


def test_roofline_run_prints_table_then_json(tmp_path, capsys):
    out = tmp_path / "sim"
    sps = tmp_path / "sps.json"
    assert main(["simulate", "--roofline", "qwen3-8b", "--acceptance", "dspark/math", "--out", str(out), "--save-sps", str(sps), *SMALL]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "SIMULATED" in lines[0]
    summary = json.loads(lines[-1])
    assert summary["simulated"] is True and len(summary["rows"]) == 6
    assert {r["policy"] for r in summary["rows"]} == {"none", "mtp1", "dspark"}
    full = json.loads((out / "simulation.json").read_text())
    assert full["note"].startswith("simulated") and full["results"][0]["simulated"] is True
    assert (out / "frontier.png").stat().st_size > 0 and (out / "load.png").stat().st_size > 0
    assert SPSTable.load(sps).has_draft_cost


def test_sps_file_and_trace_and_rate(tmp_path, capsys):
    sps = tmp_path / "sps.json"
    SPSTable([1, 64], [100.0, 50.0], {1: 0.001}).save(sps)
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"confidences": [0.9, 0.5], "accepted": i % 3}) for i in range(10)))
    args = ["simulate", "--sps", str(sps), "--acceptance", str(trace), "--rate", "5", "--num-requests", "8", "--output-len", "16", "--policy", "dspark-async,threshold:0.6"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["acceptance"] == "trace:trace.jsonl" and summary["sla"] == []


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--roofline", "qwen3-8b", "--acceptance", "medusa/chat"], "unknown acceptance preset"),
        (["--roofline", "qwen3-8b", "--policy", "dspark,fastest"], "unknown policy"),
        (["--roofline", "gpt2"], "unknown roofline model"),
        (["--roofline", "qwen3-8b", "--concurrency", "4,x"], "comma-separated"),
        (["--roofline", "qwen3-8b", "--output-len", "uniform:5"], "--output-len"),
        (["--sps", "MISSING.json"], "MISSING.json"),
    ],
)
def test_bad_input_is_one_line(extra, match, capsys):
    assert main(["simulate", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("dspark: error:")
    assert match in err


def test_bad_sps_table_file(tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"tokens": [1, 2], "steps_per_second": [1.0, -1.0]}))
    assert main(["simulate", "--sps", str(path)]) == 2
    assert "steps_per_second must be finite and > 0" in capsys.readouterr().err


def test_engine_like_simulation_with_measured_cost_terms(tmp_path, capsys):
    """--prefill chunked, --max-num-batched-tokens, --censored and --cost (a bench_frontier --sim-dir file)."""
    sps = tmp_path / "sps.json"
    SPSTable([1, 8, 64], [1000.0, 900.0, 400.0], {1: 0.0002}).save(sps)
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"confidences": [0.9, 0.6, 0.3], "accepted": i % 3, "verified": 2})
                               for i in range(12)))
    cost = tmp_path / "fixed-2.cost.json"
    cost.write_text(json.dumps({"cost": {"ladder": [1, 2, 4, 8, 16, 32, 64]}, "rows": {}}))
    base = ["simulate", "--sps", str(sps), "--acceptance", str(trace), "--concurrency", "1,4", "--num-requests", "8",
            "--output-len", "16", "--prompt-len", "32", "--policy", "none,fixed:2", "--prefill", "chunked",
            "--max-num-batched-tokens", "64", "--censored", "confidence"]
    assert main(base + ["--cost", f"fixed:2={cost}"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["prefill"] == "chunked" and summary["step_cost"] == {"fixed:2": "measured terms"}
    assert len(summary["rows"]) == 4
    assert main(base + ["--cost", f"dspark={cost}"]) == 2
    assert "not in --policy" in capsys.readouterr().err
    assert main(base + ["--cost", str(tmp_path / "none.json")]) == 2
    assert "is not a file" in capsys.readouterr().err
