"""Drafters: DeepSpec fixture reproduction, Eagle3 fixture loading, incremental == full computation."""

import pytest
import torch
from safetensors.torch import load_file

from conftest import fixture_case, tiny_drafter
from dspark import load_drafter, load_target
from dspark.drafters.base import ContextUpdate
from dspark.drafters.config import DrafterConfig
from dspark.errors import ConfigError, IncompatibleModelsError
from dspark.sampling import SamplingParams


@pytest.mark.parametrize("case", ["deepspec-dspark-vanilla", "deepspec-dflash"])
def test_deepspec_fixture_reproduction(case):
    root = fixture_case(case)
    target = load_target(root / "target")
    drafter = load_drafter(root / "draft", target=target)
    ref = load_file(str(root / "reference.safetensors"))
    full = torch.cat([ref["prompt_ids"], ref["committed_ids"]], dim=1)
    feats = target.features(full, drafter.config.target_layer_ids, with_logits=True)
    assert (feats.context_features - ref["context_features"]).abs().max() < 1e-4
    assert (feats.logits - ref["target_logits"]).abs().max() < 1e-4
    for block, ctx_len in (("block0", 20), ("block1", 23)):
        assert ref[f"{block}_position_ids"][0].tolist() == list(range(ctx_len, ctx_len + 7))
        anchor = ref[f"{block}_draft_input_ids"][:, 0]
        assert torch.equal(drafter.block_inputs(anchor), ref[f"{block}_draft_input_ids"])
        out = drafter.score_block(ref["context_features"][:, :ctx_len], anchor, ref[f"{block}_prev_ids"])
        assert (out.hidden - ref[f"{block}_backbone_hidden"]).abs().max() < 1e-4
        assert (out.base_logits - ref[f"{block}_base_logits"]).abs().max() < 1e-4
        assert (out.logits - ref[f"{block}_logits"]).abs().max() < 1e-4
        if f"{block}_confidence_logits" in ref:
            assert (out.confidence_logits - ref[f"{block}_confidence_logits"]).abs().max() < 1e-4
        else:
            assert out.confidence_logits is None and torch.equal(out.logits, out.base_logits)
        assert drafter.score_block(ref["context_features"][:, :ctx_len], anchor).confidence_logits is None


def test_eagle3_fixture_loads_with_matching_keys_and_shapes():
    root = fixture_case("deepspec-eagle3")
    drafter = load_drafter(root / "draft", target=load_target(root / "target"))
    stored = load_file(str(root / "draft" / "model.safetensors"))
    ours = drafter.state_dict()
    assert set(ours) == set(stored)
    assert all(tuple(ours[k].shape) == tuple(stored[k].shape) for k in stored)
    assert drafter.config.method == "eagle3" and drafter.config.target_layer_ids == [0, 1, 2, 3, 4]


def _update(target, ids, layer_ids, start, stop, next_token):
    feats = target.features(ids, layer_ids)
    sl = slice(start, stop)
    nxt = torch.cat([ids[:, start + 1:stop + 1], next_token], 1)[:, : stop - start]
    return ContextUpdate(feats.context_features[:, sl], feats.last_hidden[:, sl], nxt,
                         torch.full((ids.shape[0],), stop - start))


@pytest.mark.parametrize("head", ["vanilla", "gated", "rnn"])
def test_dspark_cached_inference_matches_score_block(qwen3_target, head):
    """Context absorbed over two rounds into the K/V cache == recomputing the whole context."""
    drafter = tiny_drafter(qwen3_target, "dspark", markov_head_type=head)
    ids = torch.randint(0, 64, (2, 12))
    state = drafter.new_state(2, torch.device("cpu"))
    anchor = ids[:, 11]
    drafter.absorb(state, _update(qwen3_target, ids, drafter.config.target_layer_ids, 0, 7, anchor[:, None]))
    drafter.absorb(state, _update(qwen3_target, ids, drafter.config.target_layer_ids, 7, 11, anchor[:, None]))
    cached = drafter.block_hidden(state, anchor)
    full = drafter.score_block(qwen3_target.features(ids[:, :11], drafter.config.target_layer_ids).context_features, anchor)
    assert torch.allclose(cached, full.hidden, atol=1e-5)
    # greedy proposal == argmax of the teacher-forced logits fed with its own drafts
    prop = drafter.propose(state, None, anchor, SamplingParams(temperature=0))
    prev = torch.cat([anchor[:, None], prop.draft_ids[:, :-1]], 1)
    scored = drafter.score_block(qwen3_target.features(ids[:, :11], drafter.config.target_layer_ids).context_features, anchor, prev)
    assert torch.equal(scored.logits.argmax(-1), prop.draft_ids)
    assert torch.allclose(torch.sigmoid(scored.confidence_logits), prop.confidence, atol=1e-5)


@pytest.mark.parametrize("method", ["eagle3", "mtp"])
def test_chain_drafter_incremental_equals_one_shot(qwen3_target, method):
    drafter = tiny_drafter(qwen3_target, method)
    ids = torch.randint(0, 64, (2, 12))
    anchor = ids[:, 11]
    lids = drafter.config.target_layer_ids
    params = SamplingParams(temperature=0)
    one = drafter.new_state(2, torch.device("cpu"))
    a = drafter.propose(one, _update(qwen3_target, ids, lids, 0, 11, anchor[:, None]), anchor, params)
    two = drafter.new_state(2, torch.device("cpu"))
    drafter.propose(two, _update(qwen3_target, ids, lids, 0, 6, ids[:, 6:7]), ids[:, 6], params)
    b = drafter.propose(two, _update(qwen3_target, ids, lids, 6, 11, anchor[:, None]), anchor, params)
    assert torch.allclose(a.draft_probs, b.draft_probs, atol=1e-5)
    assert a.draft_ids.shape[1] == (1 if method == "mtp" else drafter.config.ttt_length)


def test_default_config_from_target(qwen3_target):
    d = tiny_drafter(qwen3_target, "dspark")
    c = d.config
    assert (c.hidden_size, c.vocab_size, c.num_target_layers) == (32, 64, 4)
    assert qwen3_target.num_layers - 1 not in c.target_layer_ids
    assert 0 <= c.mask_token_id < 64


def test_bad_drafter_configs(qwen3_target):
    base = tiny_drafter(qwen3_target, "dspark").config
    with pytest.raises(IncompatibleModelsError, match="last layer"):
        base.replace(target_layer_ids=[0, 3])
    with pytest.raises(ConfigError, match="markov_head_type"):
        base.replace(markov_head_type="lstm")
    with pytest.raises(ConfigError, match="method"):
        base.replace(method="medusa")
    with pytest.raises(ConfigError, match="mask_token_id"):
        base.replace(mask_token_id=64)
    assert isinstance(base, DrafterConfig)
