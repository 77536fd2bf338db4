"""The defects of issue 14's reliability probe, as a new user met them: one line and exit 2, never a traceback.

Out-of-range sampling / token / device / simulator / training numbers are covered for every command by
tests/test_validation_cli.py (issue 15); here: broken targets for every command that loads one, and a
training run pointed at a directory written for another target.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import save_tiny_target
from dspark.cli import main
from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    (root / "prompts.jsonl").write_text(json.dumps({"turns": ["hi"]}) + "\n")
    (root / "chat.jsonl").write_text(json.dumps({"conversations": [{"role": "user", "content": "hi"},
                                                                  {"role": "assistant", "content": "hello there"}]}) + "\n")
    truncated = root / "truncated"
    shutil.copytree(DEFAULT_TARGET, truncated)
    weights = truncated / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    mismatched = root / "mismatched"
    shutil.copytree(DEFAULT_TARGET, mismatched)
    config = json.loads((mismatched / "config.json").read_text())
    config["vocab_size"] = 8000  # the weights hold 8192 rows
    (mismatched / "config.json").write_text(json.dumps(config))
    return root


def _commands(root: Path, target: Path) -> dict[str, list[str]]:
    return {
        "generate": ["generate", "--target", str(target), "--draft", str(DEFAULT_DRAFT), "--max-new-tokens", "2"],
        "train": ["train", "--set", f"target={target}", "--set", f"data={root / 'chat.jsonl'}", "--output-dir",
                  str(root / f"train-{target.name}")],
        "cache build": ["cache", "build", "--target", str(target), "--data", str(root / "chat.jsonl"), "--output-dir",
                        str(root / f"cache-{target.name}")],
        "data regenerate": ["data", "regenerate", "--target", str(target), "--input", str(root / "prompts.jsonl"),
                            "--output", str(root / f"regen-{target.name}.jsonl")],
    }


@pytest.mark.parametrize("command", ["generate", "train", "cache build", "data regenerate"])
@pytest.mark.parametrize("broken, message", [("truncated", "is truncated"), ("mismatched", "8192-token embedding but "
                                                                                          "config.json says vocab_size 8000")])
def test_a_broken_target_is_named_in_one_line(inputs, command, broken, message, capsys):
    assert main(_commands(inputs, inputs / broken)[command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(inputs / broken) in err


def test_training_into_another_targets_run_names_both_and_keeps_the_checkpoint(tmp_path, capsys):
    a = save_tiny_target(tmp_path / "A", vocab=64, hidden=32, layers=4, seed=1)
    b = save_tiny_target(tmp_path / "B", vocab=96, hidden=48, layers=4, seed=2)
    with (tmp_path / "d.jsonl").open("w") as f:
        for i in range(4):
            f.write(json.dumps({"id": i, "input_ids": list(range(1, 24)), "loss_mask": [1] * 23}) + "\n")
    common = [f"data={tmp_path / 'd.jsonl'}", "max_steps=1", "num_draft_layers=1", "global_batch=2", "micro_batch=2",
              "num_anchors=4", "markov_rank=8", "block_size=4", "tensorboard=false", "device=cpu", "eval_fraction=0.0"]
    argv = [a for kv in common for a in ("--set", kv)] + ["--output-dir", str(tmp_path / "run")]
    assert main(["train", "--set", f"target={a}", *argv]) == 0
    capsys.readouterr()
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "run").rglob("*")}
    assert main(["train", "--set", f"target={b}", *argv]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--set", f"target={b}", "--set", "max_steps=2", *argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(a) in err and str(b) in err and "trained for" in err
    assert before == {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in (tmp_path / "run").rglob("*")}
