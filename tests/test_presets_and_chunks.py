"""Training presets parse and match DeepSpec's recipe; vocabulary chunking changes nothing."""

import tomllib
from pathlib import Path

import pytest
import torch

import dspark.train.objectives as objectives
from conftest import tiny_drafter
from dspark.targets import default_layer_ids
from dspark.train.config import TrainConfig, load_train_config
from dspark.train.losses import LossWeights

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "presets"


@pytest.mark.parametrize("name, layers", [("qwen3-4b", 36), ("qwen3-8b", 36), ("qwen3-14b", 40), ("llama-3.1-8b", 32)])
def test_presets_follow_the_recipe(name, layers):
    cfg = load_train_config(str(PRESETS / f"{name}.toml"))
    assert (cfg.block_size, cfg.num_anchors, cfg.lr, cfg.global_batch, cfg.epochs, cfg.max_length) == (7, 512, 6e-4, 512, 10, 4096)
    assert cfg.target_layer_ids == default_layer_ids(layers) and cfg.method == "dspark"
    keys = set(tomllib.loads((PRESETS / f"{name}.toml").read_text()))
    defaults = TrainConfig().to_dict()
    assert keys == {"target", "target_layer_ids"} and defaults["target_layer_ids"] is None  # only what differs


def test_dflash_preset_extends():
    cfg = load_train_config(str(PRESETS / "dflash-qwen3-4b.toml"), ["epochs=2"])
    assert cfg.method == "dflash" and cfg.target == "Qwen/Qwen3-4B" and cfg.epochs == 2


@pytest.mark.parametrize("method", ["dspark", "eagle3"])
def test_vocabulary_chunking_is_exact(qwen3_target, monkeypatch, method):
    drafter = tiny_drafter(qwen3_target, method, num_anchors=12)
    ids = torch.randint(0, 64, (2, 24))
    f = qwen3_target.features(ids, drafter.config.target_layer_ids)
    batch = dict(input_ids=ids, loss_mask=torch.ones(2, 24), context_features=f.context_features, last_hidden=f.last_hidden)
    obj = objectives.OBJECTIVES[method][0]
    whole = obj(drafter, batch, torch.Generator().manual_seed(0), LossWeights())
    grads_whole = torch.autograd.grad(whole["loss"], [p for p in drafter.parameters() if p.requires_grad])
    monkeypatch.setattr(objectives, "CHUNK_ELEMENTS", 3 * 64 * 4)  # a few blocks / positions per chunk
    chunked = obj(drafter, batch, torch.Generator().manual_seed(0), LossWeights())
    grads_chunked = torch.autograd.grad(chunked["loss"], [p for p in drafter.parameters() if p.requires_grad])
    assert torch.allclose(whole["loss"], chunked["loss"], rtol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads_whole, grads_chunked))
