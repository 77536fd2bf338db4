"""The benchmark scripts on the CPU: `bench_e2e.py` (plain and speculative engines side by side, the profile's
ideal, the SPS plot) and `bench_engine.py --sps-plot` (measured rows as SPS tables beside the roofline)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import save_tiny_target, tiny_drafter
from dspark import load_target
from dspark.formats import save_drafter
from dspark.scheduling import SPSTable

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    """Import scripts/NAME.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_random_pair_both_temperatures_with_sps_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    target_dir = save_tiny_target(tmp_path / "target")
    drafter = save_drafter(tiny_drafter(load_target(target_dir), "dspark", block_size=3), tmp_path / "dspark")
    out = tmp_path / "out"
    assert _script("bench_e2e").main(["--target", str(target_dir), "--draft", str(drafter), "--device", "cpu",
                              "--num-prompts", "2", "--prompt-len", "5", "--max-new-tokens", "5", "--repeats", "1",
                              "--warmup", "0", "--sps-plot", str(tmp_path / "sps.png"), "--sps-requests", "1,2",
                              "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = _last_json(printed)
    assert "spec/ideal" in printed  # the table comes before the JSON line
    assert json.loads((out / "bench_e2e.json").read_text()) == result
    assert result["policy"] == "fixed:3" and result["gamma"] == 3 and result["profile_context"] == 5 + 5 // 2
    assert [r["temperature"] for r in result["results"]] == [0.0, 1.0]
    for r in result["results"]:
        assert r["plain_tokens"] == r["spec_tokens"] == 2 * 5  # EOS ignored: exactly max_new_tokens each
        assert r["tau"] >= 1.0 and r["spec_rounds"] >= 1
        assert min(r["T_decode_s"], r["T_verify_s"], r["ideal_spec_tokens_per_s"]) > 0 and r["T_draft_s"] >= 0
        assert r["ideal_spec_tokens_per_s"] == pytest.approx(r["tau"] / (r["T_draft_s"] + r["T_verify_s"]))
        assert r["efficiency_vs_ideal"] == pytest.approx(r["spec_tokens_per_s"] / r["ideal_spec_tokens_per_s"])
        assert r["goal_speedup_met"] == (r["speedup"] > 1)
    assert result["results"][0]["same_tokens_fraction"] == 1.0  # greedy: speculation is lossless
    assert (tmp_path / "sps.png").read_bytes()[:4] == b"\x89PNG"
    table = SPSTable.load(out / "sps.json")
    assert table.has_draft_cost and 4 in table.tokens and table.to_dict() == result["sps"]["table"]


def test_prompt_file_through_the_chat_template(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The embedded tiny pair (real tokenizer): `turns` and `input_ids` records, as `dspark eval` reads them."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"turns": ["Write a function that adds two numbers.", "Now in C."]}) + "\n"
                       + json.dumps({"input_ids": [11, 40, 41, 42, 43]}) + "\n" + json.dumps({"text": "def f(x):"}) + "\n")
    assert _script("bench_e2e").main(["--target", str(ROOT / "src/dspark/assets/tiny-target"), "--draft", str(ROOT / "src/dspark/assets/tiny-dspark"),
                              "--device", "cpu", "--prompts", str(prompts), "--num-prompts", "2", "--max-new-tokens", "4",
                              "--temperatures", "0", "--repeats", "1", "--warmup", "0", "--stop-at-eos"]) == 0
    result = _last_json(capsys.readouterr().out)
    assert result["num_prompts"] == 2 and result["gamma"] == 7 and result["sps"] is None and not result["ignore_eos"]
    assert result["prompt_tokens_mean"] > 5  # the chat-templated first turn is longer than the raw ids
    (row,) = result["results"]
    assert row["same_tokens_fraction"] == 1.0 and row["plain_tokens"] == row["spec_tokens"]


def _rows(model: str) -> list[dict]:
    rows = []
    for ctx in (1024, 4096):
        for case, q, batches in (("decode", 1, (1, 8, 32)), ("verify8", 8, (1, 8))):
            for b in batches:
                rows.append(dict(model=model, case=case, batch=b, q_len=q, context=ctx, step_ms=2.0 + 0.01 * b * q + ctx / 4096))
    rows.append(dict(model=model, case="decode", batch=128, q_len=1, context=1024, error="OutOfMemoryError: made up"))
    return rows


def test_sps_tables_and_plots_from_measured_rows(tmp_path: Path) -> None:
    bench = _script("bench_engine")
    rows = _rows("qwen3-4b") + _rows("qwen3-8b")
    drafts = [dict(case="drafter.draft", batch=b, context=1024, graph_ms=0.3 + 0.01 * b) for b in (1, 8)]
    tables = bench.sps_tables(rows, drafts, "qwen3-4b")
    assert set(tables) == {f"{r}{case} ctx {ctx}" for r in ("", "roofline ") for case in ("decode", "verify8")
                           for ctx in (1024, 4096)}
    assert tables["decode ctx 1024"].tokens == [1, 8, 32]  # the failed batch-128 row is left out
    assert tables["verify8 ctx 1024"].tokens == [8, 64] and tables["verify8 ctx 1024"].has_draft_cost
    assert abs(tables["verify8 ctx 1024"].draft_time(8) - 0.38e-3) < 1e-12
    assert not tables["verify8 ctx 4096"].has_draft_cost  # the drafter ran at the smallest context only
    assert abs(tables["decode ctx 1024"].step_time(8) - (2.0 + 0.08 + 0.25) * 1e-3) < 1e-12
    roof = tables["roofline verify8 ctx 1024"]  # R requests of 8 tokens: the verify curve plus R contexts' KV reads
    assert roof.tokens[:3] == [8, 16, 24] and roof.has_draft_cost and roof.step_time(16) > roof.step_time(8)
    assert not bench.sps_tables(rows, drafts, "qwen3-8b")["roofline verify8 ctx 1024"].has_draft_cost
    paths = bench.write_sps_plots(str(tmp_path / "sps.png"), rows, drafts, "made-up GPU")
    assert paths == [str(tmp_path / "sps-qwen3-4b.png"), str(tmp_path / "sps-qwen3-8b.png")]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_bench_host_table_then_json(capsys: pytest.CaptureFixture) -> None:
    """`bench_host.py`: every phase of every cell, then one JSON line (synthetic acceptance says so)."""
    assert _script("bench_host").main(["--concurrency", "2", "--policies", "none,dspark-async+gate", "--steps", "3",
                                       "--warmup", "1", "--prompt-len", "8"]) == 0
    out = capsys.readouterr().out
    data = _last_json(out)
    assert data["bench"] == "host_time" and "NOT lossless" in data["acceptance"]
    assert [(r["policy"], r["concurrency"]) for r in data["rows"]] == [("none", 2), ("dspark-async+gate", 2)]
    assert all(r["total"] >= r["host"] > 0 for r in data["rows"])
    assert "random:tiny" in out


def test_bench_mixed_builds_a_decode_plus_chunk_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mixed step's batch: decode rows then one chunk, every sequence on its own pages, last-token logits;
    the GPU scripts refuse cleanly without CUDA."""
    import torch

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # they import their sibling scripts
    mixed = _script("bench_mixed")
    batch = mixed.mixed_batch(3, 40, 20, 64, 100, torch.Generator().manual_seed(0), "cpu")
    assert batch.query_start.tolist() == [0, 1, 2, 3, 23] and batch.context_lens.tolist() == [40, 40, 40, 0]
    assert batch.logits_indices.tolist() == [0, 1, 2, 22] and batch.max_query_len == 20
    slots = batch.slot_mapping.tolist()
    assert len(set(slots)) == len(slots) and min(slots) >= 16  # own pages, never the null page 0
    if not torch.cuda.is_available():
        assert mixed.main(["--rows", "2"]) == 2
        if importlib.util.find_spec("triton") is not None:  # bench_markov imports the Triton kernels
            assert _script("bench_markov").main(["--rows", "1"]) == 2
