"""Checkpoint formats: save/load round trips, SpecForge export/import, detection, bad checkpoints."""

import json

import pytest
import torch

from conftest import fixture_case, tiny_drafter
from dspark import load_drafter
from dspark.errors import CheckpointError, DSparkError, IncompatibleModelsError
from dspark.formats import export_drafter, read_drafter_config, save_drafter

METHODS = [("dspark", {"markov_head_type": "vanilla"}), ("dspark", {"markov_head_type": "gated"}),
           ("dspark", {"markov_head_type": "rnn", "confidence_head_with_markov": False}), ("dflash", {}),
           ("eagle3", {}), ("mtp", {})]


def _settings(drafter) -> dict:
    return {k: v for k, v in drafter.config.to_dict().items() if k != "target_config"}


@pytest.mark.parametrize("method, kw", METHODS)
def test_save_load_round_trip(qwen3_target, tmp_path, method, kw):
    drafter = tiny_drafter(qwen3_target, method, **kw)
    if method == "dspark":
        drafter.set_calibration([1.5, 1.2, 1.0, 0.9])
    save_drafter(drafter, tmp_path / "ckpt")
    back = load_drafter(tmp_path / "ckpt", target=qwen3_target)
    assert _settings(back) == _settings(drafter)
    save_drafter(back, tmp_path / "again")
    assert (tmp_path / "again" / "config.json").read_text() == (tmp_path / "ckpt" / "config.json").read_text()
    a, b = drafter.state_dict(), back.state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    arch = json.loads((tmp_path / "ckpt" / "config.json").read_text())["architectures"][0]
    assert arch == {"eagle3": "Qwen3Eagle3Model", "mtp": "DSparkMTPModel"}.get(method, "Qwen3DSparkModel")


@pytest.mark.parametrize("method", ["dspark", "dflash"])
def test_specforge_export_import(qwen3_target, tmp_path, method):
    drafter = tiny_drafter(qwen3_target, method)
    save_drafter(drafter, tmp_path / "ds")
    export_drafter(tmp_path / "ds", tmp_path / "sf", "specforge")
    raw = json.loads((tmp_path / "sf" / "config.json").read_text())
    assert raw["architectures"] == ["DSparkDraftModel"]
    nested = raw["dflash_config"]
    assert nested["projector_type"] == "dspark" and nested["target_layer_ids"] == drafter.config.target_layer_ids
    assert "markov_rank" not in raw and raw["block_size"] == drafter.config.block_size
    config, fmt = read_drafter_config(tmp_path / "sf")
    assert fmt == "specforge"
    back = load_drafter(tmp_path / "sf", target=qwen3_target)
    assert _settings(back) == _settings(drafter)
    export_drafter(tmp_path / "sf", tmp_path / "ds2", "deepspec")
    assert json.loads((tmp_path / "ds2" / "config.json").read_text()) == json.loads((tmp_path / "ds" / "config.json").read_text())


def test_fixture_round_trip_is_byte_identical_config(tmp_path):
    root = fixture_case("deepspec-dspark-vanilla")
    export_drafter(root / "draft", tmp_path / "out", "deepspec")
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((root / "draft" / "config.json").read_text())


def test_bad_checkpoints(qwen3_target, llama_target, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_drafter(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_drafter(tmp_path / "empty")
    save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "ok")
    (tmp_path / "ok" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_drafter(tmp_path / "ok")
    save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "cfg")
    raw = json.loads((tmp_path / "cfg" / "config.json").read_text())
    (tmp_path / "cfg" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_drafter(tmp_path / "cfg")
    del raw["mask_token_id"]
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="mask_token_id"):
        load_drafter(tmp_path / "cfg")
    raw["architectures"] = ["MedusaModel"]
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unknown drafter architecture"):
        load_drafter(tmp_path / "cfg")
    with pytest.raises(DSparkError, match="already exists"):
        save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "cfg")


def test_mismatched_target_is_rejected(qwen3_target, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from dspark import load_target

    save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "d")
    for name, kw in (("hidden size", dict(hidden_size=48, head_dim=12)), ("vocabulary size", dict(vocab_size=80))):
        cfg = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8)
        cfg.update(kw)
        Qwen3ForCausalLM(Qwen3Config(**cfg)).save_pretrained(tmp_path / name)
        with pytest.raises(IncompatibleModelsError, match=name):
            load_drafter(tmp_path / "d", target=load_target(tmp_path / name))


def test_lean_checkpoint_needs_and_uses_the_target(qwen3_target, tmp_path):
    drafter = tiny_drafter(qwen3_target, "dspark")
    save_drafter(drafter, tmp_path / "lean", include_frozen=False)
    from safetensors.torch import load_file

    assert "embed_tokens.weight" not in load_file(str(tmp_path / "lean" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lean checkpoint"):
        load_drafter(tmp_path / "lean")
    back = load_drafter(tmp_path / "lean", target=qwen3_target)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in drafter.state_dict().items())
