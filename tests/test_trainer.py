"""Trainer: learning happens, resume == uninterrupted (bit-identical on CPU), online == cached,
training computations agree with inference, bad configs fail clearly."""

import json

import pytest
import torch

from conftest import save_tiny_target, tiny_drafter
from dspark import load_drafter, load_target
from dspark.drafters.base import ContextUpdate
from dspark.errors import ConfigError
from dspark.sampling import SamplingParams
from dspark.train.anchors import block_attention_mask, block_layout, sample_anchors
from dspark.train.config import load_train_config
from dspark.train.objectives import _chain_masks
from dspark.train.trainer import Trainer
from helpers_trainer import learnable_target_and_data, small_config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    return root, *learnable_target_and_data(root)


@pytest.mark.parametrize("method", ["dspark", "mtp"])
def test_training_clearly_raises_acceptance(setup, method):
    root, tdir, data = setup
    trainer = Trainer(small_config(tdir, data, root / f"learn-{method}", method, max_steps=120, save_every=120))
    before = trainer.evaluate()
    after = trainer.fit()
    assert after["tau_estimate"] > before["tau_estimate"] + 0.4, (before, after)
    assert after["accept_conditional"][0] > before["accept_conditional"][0] + 0.15
    drafter = load_drafter(root / f"learn-{method}" / "final", target=load_target(tdir))
    assert drafter.config.method == method
    assert (root / f"learn-{method}" / "train_config.json").is_file()


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_resume_equals_uninterrupted_bitwise(setup):
    root, tdir, data = setup
    full = Trainer(small_config(tdir, data, root / "full", max_steps=6, save_every=3))
    full.fit()
    part = Trainer(small_config(tdir, data, root / "part", max_steps=6, save_every=3))
    part.fit(stop_at=4)  # "killed" during step 4, after the step-3 checkpoint
    assert not (root / "part" / "final").exists()
    resumed = Trainer(small_config(tdir, data, root / "part", max_steps=6, save_every=3), resume=True)
    assert resumed.step == 3
    resumed.fit()
    a = load_drafter(root / "full" / "final").state_dict()
    b = load_drafter(root / "part" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in _metrics(root / "full")] == [m["loss"] for m in _metrics(root / "part")]


def test_online_equals_cached(setup):
    from dspark.train.cache_build import build_cache
    from dspark.train.data import DataConfig

    root, tdir, data = setup
    target = load_target(tdir)
    drafter_cfg = Trainer(small_config(tdir, data, root / "probe", max_steps=1)).drafter.config
    build_cache(target, [str(data)], root / "cache", layer_ids=drafter_cfg.target_layer_ids,
                data_config=DataConfig(max_length=4096))
    online = Trainer(small_config(tdir, data, root / "online", max_steps=4))
    online.fit()
    cached = Trainer(small_config(tdir, root / "unused.jsonl", root / "cached", max_steps=4, cache=str(root / "cache")))
    cached.fit()
    assert [m["loss"] for m in _metrics(root / "online")] == pytest.approx([m["loss"] for m in _metrics(root / "cached")], rel=1e-5)


def test_packed_training_blocks_equal_score_block(qwen3_target):
    """Each packed training block computes exactly what `score_block` does for that anchor."""
    drafter = tiny_drafter(qwen3_target, "dspark", num_anchors=5)
    ids = torch.randint(0, 64, (1, 30))
    loss_mask = torch.ones(1, 30)
    feats = qwen3_target.features(ids, drafter.config.target_layer_ids)
    anchors, keep = sample_anchors(loss_mask, 5, torch.Generator().manual_seed(0))
    layout = block_layout(ids, loss_mask, anchors, keep, 4, drafter.config.mask_token_id)
    kv = drafter.context_kv(feats.context_features, torch.arange(30).unsqueeze(0))
    hidden = drafter.backbone(layout.block_ids, layout.block_positions, kv, block_attention_mask(anchors, keep, 30, 4))
    for n, a in enumerate(anchors[0].tolist()):
        ref = drafter.score_block(feats.context_features[:, :a], ids[:, a], layout.prev_ids[:, n])
        assert torch.allclose(hidden[0, n * 4:(n + 1) * 4], ref.hidden[0], atol=1e-5)


def test_eagle3_training_steps_match_inference_chain(qwen3_target):
    """Training-time test step k at position t == the inference chain's k-th draft after context ..t."""
    from dspark.train.objectives import _shift

    drafter = tiny_drafter(qwen3_target, "eagle3")
    ids = torch.randint(0, 64, (1, 16))
    f = qwen3_target.features(ids, drafter.config.target_layer_ids)
    s, t = 16, 9
    feature = drafter.context_feature(f.context_features, f.last_hidden)
    pos = torch.arange(s)
    causal, diag = pos.view(-1, 1) >= pos.view(1, -1), torch.eye(s, dtype=torch.bool)
    keys_k, keys_v, train_logits = [], [], []
    for k in range(3):
        mask = torch.cat([causal] + [diag] * k, 1).unsqueeze(0)
        feature, kk, vv = drafter.step(feature, _shift(ids, 1 + k), (pos + k).unsqueeze(0),
                                       torch.cat(keys_k, 1) if keys_k else None, torch.cat(keys_v, 1) if keys_v else None, mask)
        keys_k.append(kk)
        keys_v.append(vv)
        train_logits.append(drafter.lm_head(drafter.norm(feature[0, t])))
    # inference with teacher forcing: feed ground-truth tokens as "drafts" by greedy on a one-hot hack
    state = drafter.new_state(1, torch.device("cpu"))
    upd = ContextUpdate(f.context_features[:, : t + 1], f.last_hidden[:, : t + 1], ids[:, 1: t + 2], torch.tensor([t + 1]))
    prop = drafter.propose(state, upd, ids[:, t + 1], SamplingParams(temperature=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(torch.softmax(train_logits[0], -1), prop.draft_probs[0, 0], atol=1e-5)
    assert _chain_masks(torch.ones(1, 6), 2)[1].tolist() == [[True, True, True, False, False, False]]


def test_bad_training_configs(tmp_path, setup):
    root, tdir, data = setup
    with pytest.raises(ConfigError, match="unknown training config key"):
        load_train_config(None, ["learning_rate=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_train_config(None, ["lr"])
    (tmp_path / "bad.toml").write_text("lr = [unclosed")
    with pytest.raises(ConfigError, match="malformed"):
        load_train_config(str(tmp_path / "bad.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_train_config(str(tmp_path / "none.toml"))
    with pytest.raises(ConfigError, match="method"):
        load_train_config(None, ["method=medusa"])
    with pytest.raises(ConfigError, match="'lr' expects float"):
        load_train_config(None, ["lr=abc"])
    with pytest.raises(ConfigError, match="'max_steps'"):
        load_train_config(None, ["max_steps=1.5"])
    assert load_train_config(None, ["data=a.jsonl", "max_steps=null", "target_layer_ids=[1,2]", "lr=1"]).lr == 1
    cfg = small_config(tdir, data, tmp_path / "o")
    cfg.data = []
    with pytest.raises(ConfigError, match="data"):
        Trainer(cfg)
