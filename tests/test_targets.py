"""The target adapter on Qwen3 and Llama: features, layer ids, frozen pieces, bad input."""

import json

import pytest
import torch

from dspark import load_target
from dspark.errors import CheckpointError, IncompatibleModelsError, UnsupportedModelError
from dspark.targets import default_layer_ids


@pytest.mark.parametrize("fixture", ["qwen3_target", "llama_target"])
def test_features_are_raw_layer_outputs(fixture, request):
    target = request.getfixturevalue(fixture)
    ids = torch.randint(0, 64, (2, 9))
    feats = target.features(ids, [-1, 0, 2], with_logits=True)
    hs = target.model(ids, output_hidden_states=True).hidden_states
    assert feats.context_features.shape == (2, 9, 3 * 32)
    assert torch.equal(feats.context_features, torch.cat([hs[0], hs[1], hs[3]], -1))
    assert torch.allclose(target.lm_head(feats.last_hidden), feats.logits, atol=1e-5)
    assert torch.equal(target.embed_tokens(ids), hs[0])
    assert not any(p.requires_grad for p in target.model.parameters())


def test_layer_id_rules(qwen3_target):
    with pytest.raises(IncompatibleModelsError, match="last layer"):
        qwen3_target.features(torch.zeros(1, 3, dtype=torch.long), [0, 3])
    with pytest.raises(IncompatibleModelsError, match="strictly increasing"):
        qwen3_target.validate_layer_ids([2, 1])
    with pytest.raises(IncompatibleModelsError, match="out of range"):
        qwen3_target.validate_layer_ids([-2])
    assert default_layer_ids(36) == [1, 9, 17, 25, 33]
    assert default_layer_ids(4, 5) == [0, 1, 2]


def test_fingerprint_tracks_weights(qwen3_target):
    fp = qwen3_target.fingerprint()
    assert fp == qwen3_target.fingerprint()
    w = qwen3_target.model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w[0, 0] += 1.0
    try:
        assert qwen3_target.fingerprint() != fp
    finally:
        with torch.no_grad():
            w[0, 0] -= 1.0


def test_bad_target_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_target(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_target(tmp_path / "empty")
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 32}))
    with pytest.raises(UnsupportedModelError):
        load_target(tmp_path / "enc")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(UnsupportedModelError):
        load_target(tmp_path / "odd")
