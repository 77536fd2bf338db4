"""Issue 15, item 4: no wrong result with exit 0. Every numeric flag is range-checked before any work (one
line, exit 2), and the checks that need a model or data say what is wrong instead of running on."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tiny_drafter
from dspark.cli import build_parser, main
from dspark.cli.validation import CHECKS
from dspark.formats import load_drafter, save_drafter


def _numeric_flags() -> list[tuple[str, str]]:
    found = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())
            elif action.type in (int, float) or getattr(action.type, "__name__", "") == "parse_size":
                found.append((path, action.dest))

    walk(build_parser(), "")
    return found


def test_every_numeric_flag_of_every_command_has_a_declared_range():
    missing = [f"{cmd} --{dest}" for cmd, dest in _numeric_flags() if dest not in CHECKS]
    assert not missing, f"add these flags to dspark.cli.validation.CHECKS: {missing}"


GEN = ["generate", "--prompt-ids", "1,2"]
EVAL = ["eval", "--datasets", "x.jsonl"]
REGEN = ["data", "regenerate", "--endpoint", "http://127.0.0.1:9", "--input", "x.jsonl", "--output", "o.jsonl"]
CACHE = ["cache", "build", "--target", "t", "--data", "x.jsonl", "--output", "c"]
TRAIN = ["train", "--set", "target=t", "--set", "data=x.jsonl"]


@pytest.mark.parametrize("argv, message", [
    (GEN + ["--temperature", "nan"], "--temperature must be >= 0, got nan"),
    (GEN + ["--temperature", "1e-40"], "too small to sample with"),
    (GEN + ["--temperature", "-1"], "--temperature must be >= 0"),
    (GEN + ["--top-p", "0"], "--top-p must be in (0, 1]"),
    (GEN + ["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (GEN + ["--top-k", "-1"], "--top-k must be >= 0"),
    (GEN + ["--max-new-tokens", "0"], "--max-new-tokens must be in [1,"),
    (GEN + ["--max-new-tokens", str(10 ** 20)], "--max-new-tokens must be in [1,"),
    (GEN + ["--threshold", "inf"], "--threshold must be in [0, 1]"),
    (GEN + ["--device", "nonsense"], "is not a device"),
    (EVAL + ["--top-p", "1.5"], "--top-p"),
    (EVAL + ["--temperature", "1e-9"], "too small"),
    (EVAL + ["--thresholds", "0.5", "nan"], "--thresholds"),
    (REGEN + ["--max-new-tokens", "0"], "--max-new-tokens"),
    (REGEN + ["--top-k", "-1"], "--top-k"),
    (REGEN + ["--temperature", "-1"], "--temperature"),
    (REGEN + ["--limit", "-1"], "--limit must be >= 1"),
    (REGEN + ["--top-p", "0"], "--top-p"),
    (REGEN + ["--timeout", "0"], "--timeout must be > 0"),
    (CACHE + ["--limit", "-1"], "--limit"),
    (CACHE + ["--batch-size", "0"], "--batch-size"),
    (["simulate", "--roofline", "qwen3-8b", "--bandwidth-efficiency", "0"], "--bandwidth-efficiency must be in (0, 1]"),
    (["simulate", "--roofline", "qwen3-8b", "--overhead-ms", "-1"], "--overhead-ms"),
    (["profile", "--out", "s.json", "--context", "0"], "--context"),
    (["tokenizer", "--corpus", "c", "--out", "t", "--max-bytes", "-1"], "--max-bytes"),
    (["pretrain", "--corpus", "c", "--tokenizer", "t", "--out", "o", "--lr", "-1"], "--lr must be > 0"),
    (TRAIN + ["--set", "num_anchors=0"], "'num_anchors' must be >= 1"),
    (TRAIN + ["--set", "max_steps=0"], "'max_steps' must be >= 1"),
    (TRAIN + ["--set", "max_steps=-5"], "'max_steps' must be >= 1"),
    (TRAIN + ["--set", "log_every=0"], "'log_every'"),
    (TRAIN + ["--set", "save_every=0"], "'save_every'"),
    (TRAIN + ["--set", "lr=-0.001"], "'lr' must be > 0"),
    (TRAIN + ["--set", "lr=NaN"], "'lr' must be > 0"),
    (TRAIN + ["--set", "device=nonsense"], "is not a device"),
])
def test_bad_numbers_are_one_line_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("argv", [GEN + ["--device", "cuda"], CACHE + ["--device", "cuda:0"],
                                  TRAIN + ["--set", "device=cuda"]])
def test_cuda_without_cuda_is_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err


def test_generate_checks_the_context_length(qwen3_target, capsys):
    """The target has 512 positions: a budget past them is refused, not silently run."""
    argv = ["generate", "--target", qwen3_target.path, "--no-spec", "--prompt-ids", "1,2,3"]
    assert main([*argv, "--max-new-tokens", "600"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "512" in err and "--max-new-tokens" in err


def test_a_truncated_safetensors_file_is_named(qwen3_target, tmp_path, capsys):
    target = Path(shutil.copytree(qwen3_target.path, tmp_path / "target"))
    weights = target / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["generate", "--target", str(target), "--no-spec", "--prompt-ids", "1,2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(weights) in err and "truncated" in err
    draft = save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "draft")
    (draft / "model.safetensors").write_bytes((draft / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(Exception, match="truncated"):
        load_drafter(draft)


def test_calibrate_in_place_on_too_little_data_keeps_the_fitted_temperatures(qwen3_target, tmp_path, capsys):
    drafter = tiny_drafter(qwen3_target, "dspark")
    drafter.set_calibration([0.5, 0.6, 0.7, 0.8])
    draft = save_drafter(drafter, tmp_path / "draft")
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps({"input_ids": [1, 2, 3]}) + "\n")
    assert main(["calibrate", "--target", qwen3_target.path, "--draft", str(draft), "--data", str(data),
                 "--max-new-tokens", "4", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "kept from the checkpoint" in out
    stored = json.loads((draft / "config.json").read_text())["dspark_calibration_temperatures"]
    assert stored == pytest.approx([0.5, 0.6, 0.7, 0.8])
    assert json.loads(out.strip().splitlines()[-1])["unfitted_slots"] == [1, 2, 3, 4]


def test_regenerate_exits_non_zero_when_every_sample_failed(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "turns": [f"q{i}"]}) + "\n" for i in range(2)))
    assert main(["data", "regenerate", "--endpoint", "http://127.0.0.1:9", "--model", "m", "--retries", "0",
                 "--timeout", "2", "--input", str(src), "--output", str(tmp_path / "out.jsonl")]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["failed"] == 2
    assert "all 2 samples of this run failed" in captured.err
