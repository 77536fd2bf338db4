"""The committed reference configs load and type-check; the recipes parse; `bench_tau.py --plain` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dspark.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_CONFIGS = sorted((ROOT / "configs" / "reference").glob("*.toml"))


@pytest.mark.parametrize("path", REFERENCE_CONFIGS, ids=lambda p: p.stem)
def test_reference_config_loads(path: Path) -> None:
    cfg = load_train_config(str(path))
    assert cfg.method in ("dspark", "dflash", "eagle3", "mtp")
    assert cfg.block_size == 7 and cfg.epochs == 3  # every method: same γ and budget


def test_tiny_and_small_configs_pair_up() -> None:
    stems = {p.stem for p in REFERENCE_CONFIGS}
    for stem in [s for s in stems if s.startswith("tiny-")]:
        assert stem.replace("tiny-", "small-") in stems


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("*.sh")), ids=lambda p: p.name)
def test_recipe_parses(path: Path) -> None:
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_bench_tau_times_plain_decoding_beside_the_drafter(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"input_ids": [11 + i, 40, 41, 42]}) + "\n" for i in range(3)))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_tau.py"), "--target", "src/dspark/assets/tiny-target",
         "--prompts", str(prompts), "--drafts", "d=src/dspark/assets/tiny-dspark", "--plain",
         "--max-new-tokens", "6", "--device", "cpu", "--temperature", "0"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])["results"]
    assert [r["drafter"] for r in rows] == ["d", "plain"]
    assert all(r["seconds"] > 0 and r["new_tokens"] > 0 for r in rows)
    assert rows[1]["tau"] == 1.0 and rows[0]["tau"] >= 1.0


def test_bench_tau_runs_policies_with_a_profiled_table(tmp_path: Path) -> None:
    """`dspark profile` (the engine's own steps) writes a loadable table with a draft cost; bench_tau runs dspark+gate with it."""
    from dspark.scheduling import SPSTable

    sps = tmp_path / "sps.json"
    out = subprocess.run(
        [sys.executable, "-m", "dspark", "profile", "--out", str(sps), "--requests", "1,2", "--widths", "1,3",
         "--context", "8", "--repeats", "1", "--warmup", "0", "--round-tokens", "8"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    table = SPSTable.load(sps)
    # the widths asked for, plus γ+1 (the drafted step's verify width, which the draft cost needs)
    assert table.tokens == [1, 2, 3, 6, 8, 16] and table.has_draft_cost and table.monotone and summary["points"] == 6
    assert {r["requests"] for r in summary["rows"] if "draft_seconds" in r} == {1, 2}
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"input_ids": [11 + i, 40, 41, 42]}) + "\n" for i in range(2)))
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_tau.py"), "--target", "src/dspark/assets/tiny-target",
         "--prompts", str(prompts), "--drafts", "d=src/dspark/assets/tiny-dspark", "--policies", "all", "dspark+gate",
         "--sps", str(sps), "--max-new-tokens", "6", "--device", "cpu", "--temperature", "0"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])["results"]
    assert [r["drafter"] for r in rows] == ["d", "d:dspark+gate"]
    assert rows[0]["drafted"] == 1.0 and 0.0 < rows[1]["drafted"] <= 1.0


def test_profile_rejects_bad_input(tmp_path: Path) -> None:
    for args, message in ((["--requests", "0,2"], "--requests"), (["--widths", "a"], "--widths"),
                          (["--out", str(tmp_path / "missing" / "sps.json")], "does not exist")):
        out = args if "--out" in args else ["--out", str(tmp_path / "s.json"), *args]
        proc = subprocess.run([sys.executable, "-m", "dspark", "profile", *out], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode != 0 and message in proc.stderr
