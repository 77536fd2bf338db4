"""Reference target pretraining: a few CPU steps lower the loss and save a loadable HF directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_reference_corpus import write_source_tree

from dspark.cli import main
from dspark.errors import ConfigError
from dspark.reference.packing import eval_windows, load_split, random_windows
from dspark.reference.presets import PRESETS, get_preset
from dspark.reference.pretrain import SUMMARY_FILE, learning_rate, pretrain


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Corpus and tokenizer made through the CLI from a tiny source tree."""
    root = tmp_path_factory.mktemp("ref")
    src = write_source_tree(root / "src", stdlib=True)
    assert main(["data", "corpus", "--roots", str(src), "--out", str(root / "corpus"), "--workers", "1",
                 "--validation-fraction", "0.1", "--test-fraction", "0.1"]) == 0
    assert main(["tokenizer", "--corpus", str(root / "corpus"), "--vocab-size", "320", "--out", str(root / "tok")]) == 0
    return root


@pytest.fixture
def one_thread():
    """Tiny models train faster on one CPU thread, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_packing(built: Path) -> None:
    stream = load_split(built / "corpus", built / "tok", "train", cache_dir=built / "cache")
    assert stream.tokens.dtype.name == "uint16" and stream.tokens[0] == 0 and (stream.tokens == 1).sum() == stream.num_documents
    cached = load_split(built / "corpus", built / "tok", "train", cache_dir=built / "cache")
    assert (cached.tokens == stream.tokens).all() and len(list((built / "cache").iterdir())) == 1
    plain = load_split(built / "corpus", built / "tok", "train", with_chat=False)
    assert plain.tokens.size < stream.tokens.size  # chat documents are appended to the train split
    tokens = torch.from_numpy(stream.tokens.astype("int32"))
    windows = random_windows(tokens, 4, 16, torch.Generator().manual_seed(0))
    assert windows.shape == (4, 17) and windows.dtype == torch.int64
    assert torch.equal(windows, random_windows(tokens, 4, 16, torch.Generator().manual_seed(0)))
    evaluation = eval_windows(tokens, 16, 64)
    assert evaluation.shape == (4, 17) and torch.equal(evaluation[1, 0], evaluation[0, -1])


def test_schedule() -> None:
    preset = get_preset("tiny").with_overrides(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(preset, 0, 0.0, 0.5) == pytest.approx(0.1)
    assert learning_rate(preset, 10, 0.5, 0.5) == pytest.approx(1.0)
    assert learning_rate(preset, 20, 1.0, 0.5) == pytest.approx(0.1)
    assert learning_rate(preset, 20, 0.75, 0.5) == pytest.approx(0.55)


def test_presets() -> None:
    assert {"tiny", "small"} <= set(PRESETS)
    with pytest.raises(ConfigError):
        get_preset("huge")
    with pytest.raises(ConfigError):
        get_preset("tiny").with_overrides(num_layers=3)


def test_pretrain_lowers_loss_and_saves_hf_dir(built: Path, tmp_path: Path, one_thread: None) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    preset = get_preset("tiny").with_overrides(
        hidden_size=32, num_layers=4, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64,
        seq_len=32, batch_size=8, steps=40, warmup_steps=4, eval_every=20, eval_tokens=1024, lr=1e-2,
        time_budget_s=0.0,
    )
    out = tmp_path / "target"
    summary = pretrain(preset, built / "corpus", built / "tok", out, device="cpu", micro_batch_size=4, log_every=10)
    assert summary["steps"] == 40 and summary["stopped_by"] == "steps"
    assert summary["val_loss"] < summary["initial_val_loss"] - 0.5
    assert summary["val_perplexity"] == pytest.approx(2.718281828 ** summary["val_loss"], rel=1e-3)
    assert json.loads((out / SUMMARY_FILE).read_text())["val_loss"] == summary["val_loss"]
    assert not list(tmp_path.glob(".target*"))  # the temporary directory was renamed away

    model = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(out), local_files_only=True)
    assert model.config.model_type == "qwen3" and model.config.num_hidden_layers == 4
    assert model.dtype == torch.bfloat16 and model.config.vocab_size == len(tokenizer) == 320
    assert model.generation_config.eos_token_id == [1, 5]
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=True)
    ids = torch.tensor([ids["input_ids"] if not isinstance(ids, list) else ids])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(hidden) == 5 and hidden[-1].shape == (1, ids.shape[1], 32)


def test_pretrain_cli_and_overwrite(built: Path, tmp_path: Path, capsys: pytest.CaptureFixture, one_thread: None) -> None:
    out = tmp_path / "cli-target"
    args = ["pretrain", "--preset", "tiny", "--corpus", str(built / "corpus"), "--tokenizer", str(built / "tok"),
            "--out", str(out), "--steps", "2", "--batch-size", "2", "--seq-len", "16", "--warmup-steps", "1",
            "--eval-every", "1", "--eval-tokens", "32", "--device", "cpu", "--save-dtype", "float16"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2  # an existing output is never replaced silently
    assert "--overwrite" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 0  # replaced atomically; files dspark did not write stay
    assert (out / "notes.txt").read_text() == "mine"
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["steps"] == 2 and last["num_parameters"] > 4_000_000
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert json.loads((out / SUMMARY_FILE).read_text())["val_tokens_evaluated"] == 32 * 4
    assert main(["pretrain", "--corpus", str(tmp_path / "nope"), "--tokenizer", str(built / "tok"), "--out", str(out),
                 "--device", "cpu"]) == 2


def test_shipped_tiny_target() -> None:
    """The embedded tiny target: small enough to ship, a real training run, loadable offline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dspark.reference.tokenizer import SPECIAL_TOKENS

    directory = Path(__file__).resolve().parents[1] / "src" / "dspark" / "assets" / "tiny-target"
    if not (directory / "model.safetensors").is_file():
        pytest.skip("the tiny target is not in this checkout")
    assert sum(f.stat().st_size for f in directory.iterdir()) <= 16 * 1024 * 1024
    summary = json.loads((directory / SUMMARY_FILE).read_text())
    assert 5e6 <= summary["num_parameters"] <= 15e6 and summary["val_loss"] < summary["initial_val_loss"] / 2
    model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    assert model.config.num_hidden_layers >= 4 and model.config.vocab_size == len(tokenizer)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
