"""`dspark generate` and `dspark export` end to end, including clear errors and non-zero exits."""

import json
import subprocess
import sys

import pytest

from conftest import tiny_drafter
from dspark.cli import main
from dspark.formats import save_drafter


@pytest.fixture(scope="module")
def drafters(qwen3_target, tmp_path_factory):
    root = tmp_path_factory.mktemp("drafters")
    out = {}
    for method in ("dspark", "dflash", "eagle3", "mtp"):
        out[method] = save_drafter(tiny_drafter(qwen3_target, method), root / method)
    return out


@pytest.mark.parametrize("method", ["dspark", "dflash", "eagle3", "mtp"])
def test_generate_json_with_each_drafter(qwen3_target, drafters, method, capsys):
    rc = main(["generate", "--target", qwen3_target.path, "--draft", str(drafters[method]), "--prompt-ids", "1,2,3",
               "--max-new-tokens", "12", "--json", "--seed", "3"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(out["token_ids"]) == 12 and out["text"] is None
    assert out["tau"] >= 1.0 and out["tokens_per_s"] > 0 and out["baseline_tokens_per_s"] > 0
    assert len(out["accept_lengths"]) == out["rounds"]


def test_generate_text_mode_and_greedy_flags(qwen3_target, drafters, capsys):
    rc = main(["generate", "--target", qwen3_target.path, "--draft", str(drafters["dspark"]), "--prompt-ids", "5,6",
               "--max-new-tokens", "8", "--temperature", "0", "--verify-len", "2"])
    assert rc == 0
    assert "tau=" in capsys.readouterr().out


def test_generate_enforce_eager_gives_the_same_tokens(qwen3_target, drafters, capsys):
    """--enforce-eager (no CUDA graphs) is accepted and changes nothing but speed."""
    outs = []
    for extra in ([], ["--enforce-eager"]):
        assert main(["generate", "--target", qwen3_target.path, "--draft", str(drafters["dspark"]), "--prompt-ids", "5,6",
                     "--max-new-tokens", "8", "--temperature", "0", "--json"] + extra) == 0
        outs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("args, message", [
    (["--draft", "/no/such/dir", "--prompt-ids", "1"], "does not exist"),
    (["--prompt-ids", ""], "prompt is empty"),
    (["--prompt", "hello"], "no tokenizer"),
    (["--prompt-ids", "1,x"], "comma-separated"),
    (["--prompt-ids", "999"], "outside the vocabulary"),
])
def test_generate_bad_input(qwen3_target, drafters, capsys, args, message):
    full = ["generate", "--target", qwen3_target.path, "--draft", str(drafters["dspark"])] + args
    if "--draft" in args:
        full = ["generate", "--target", qwen3_target.path] + args
    assert main(full) == 2
    assert message in capsys.readouterr().err


def test_mismatched_drafter_and_missing_target_exit_nonzero(qwen3_target, llama_target, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    Qwen3ForCausalLM(Qwen3Config(vocab_size=80, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=8)).save_pretrained(tmp_path / "t")
    save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "d")
    for target, msg in ((str(tmp_path / "t"), "vocabulary size"), (str(tmp_path / "missing"), "does not exist")):
        proc = subprocess.run([sys.executable, "-m", "dspark", "generate", "--target", target, "--draft",
                               str(tmp_path / "d"), "--prompt-ids", "1,2"], capture_output=True, text=True)
        assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr


def test_export_cli(drafters, tmp_path, capsys):
    assert main(["export", "--draft", str(drafters["dspark"]), "--format", "specforge", "--out", str(tmp_path / "sf")]) == 0
    assert json.loads((tmp_path / "sf" / "config.json").read_text())["architectures"] == ["DSparkDraftModel"]
    assert main(["export", "--draft", str(drafters["dspark"]), "--format", "specforge", "--out", str(tmp_path / "sf")]) == 2
    assert "already exists" in capsys.readouterr().err
