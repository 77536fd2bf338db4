"""Losses at known optima and on hand-computed cases; anchor sampling and block masks exactly."""

import math

import torch

from dspark.train.anchors import block_attention_mask, block_layout, sample_anchors
from dspark.train.losses import LossWeights, block_loss_sums, slot_weights, soft_ce_sums


def test_block_loss_at_its_optimum():
    """q == p == one-hot on the label: CE → 0, L1 = 0, and the confidence target is 1."""
    logits = torch.full((2, 3, 5), -40.0)
    labels = torch.tensor([[1, 2, 3], [0, 4, 4]])
    logits.scatter_(-1, labels.unsqueeze(-1), 40.0)
    out = block_loss_sums(logits, logits.clone(), labels, torch.ones(2, 3, dtype=torch.bool),
                          torch.full((2, 3), 30.0), LossWeights())
    assert out["ce"] < 1e-6 and out["tv"] < 1e-6 and out["conf"] < 1e-6
    assert torch.allclose(out["accept"], torch.full((3,), 2.0))


def test_block_loss_hand_computed():
    q = torch.tensor([0.75, 0.25])
    p = torch.tensor([0.5, 0.5])
    logits = torch.log(q).view(1, 1, 2).expand(1, 2, 2).contiguous()
    target = torch.log(p).view(1, 1, 2).expand(1, 2, 2).contiguous()
    labels = torch.tensor([[1, 0]])
    mask = torch.tensor([[True, True]])
    conf = torch.tensor([[0.0, 0.0]])  # σ = 0.5
    w = LossWeights(ce=0.1, tv=0.9, conf=1.0, slot_decay=4.0)
    out = block_loss_sums(logits, target, labels, mask, conf, w)
    w0, w1 = 1.0, math.exp(-1 / 4)
    ce = w0 * -math.log(0.25) + w1 * -math.log(0.75)
    l1 = (w0 + w1) * 0.5  # |0.75-0.5| + |0.25-0.5|
    c_star = 1 - 0.5 * 0.5  # 0.75
    bce = -(c_star * math.log(0.5) + (1 - c_star) * math.log(0.5))  # = log 2
    assert math.isclose(out["ce"].item(), ce, rel_tol=1e-5)
    assert math.isclose(out["tv"].item(), l1, rel_tol=1e-5)
    assert math.isclose(out["conf"].item(), (w0 + w1) * bce, rel_tol=1e-5)
    assert math.isclose(out["loss"].item(), 0.1 * ce + 0.9 * l1 + (w0 + w1) * bce, rel_tol=1e-5)
    assert math.isclose(out["weight"].item(), w0 + w1, rel_tol=1e-6)
    assert torch.allclose(slot_weights(3, 4.0), torch.tensor([1.0, math.exp(-0.25), math.exp(-0.5)]))


def test_unsupervised_slots_count_nothing():
    logits = torch.randn(2, 3, 7)
    out = block_loss_sums(logits, torch.randn(2, 3, 7), torch.zeros(2, 3, dtype=torch.long),
                          torch.zeros(2, 3, dtype=torch.bool), torch.randn(2, 3), LossWeights())
    assert out["loss"] == 0 and out["weight"] == 0


def test_soft_ce_minimum_is_the_entropy_with_zero_gradient():
    p_logits = torch.randn(4, 6)
    q_logits = p_logits.clone().requires_grad_(True)
    out = soft_ce_sums(q_logits, p_logits, torch.ones(4), weight=0.8)
    p = torch.softmax(p_logits, -1)
    entropy = -(p * p.log()).sum(-1).sum()
    assert torch.allclose(out["loss"], 0.8 * entropy, rtol=1e-5)
    (grad,) = torch.autograd.grad(out["loss"], q_logits)
    assert grad.abs().max() < 1e-6
    assert math.isclose(out["accept"].item(), 4.0, rel_tol=1e-5)


def test_anchors_only_where_anchor_and_next_are_response_tokens():
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 0, 1, 1, 0, 1],
                              [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]])
    valid = {0: {2, 3, 6}, 1: {8}}
    for seed in range(20):
        anchors, keep = sample_anchors(loss_mask, 2, torch.Generator().manual_seed(seed))
        a0 = anchors[0][keep[0]].tolist()
        assert len(a0) == 2 and set(a0) <= valid[0] and a0 == sorted(a0) and len(set(a0)) == 2
        assert anchors[1][keep[1]].tolist() == [8] and keep[1].tolist() == [True, False]
    all_anchors, keep = sample_anchors(loss_mask, 8, torch.Generator().manual_seed(0))
    assert set(all_anchors[0][keep[0]].tolist()) == valid[0] and keep.shape == (2, 8)


def test_block_layout_labels_and_cumulative_mask():
    ids = torch.arange(10).unsqueeze(0) + 100  # token at position t is 100 + t
    loss_mask = torch.tensor([[0, 1, 1, 1, 0, 1, 1, 1, 1, 1]])
    anchors, keep = torch.tensor([[1, 7]]), torch.tensor([[True, True]])
    lay = block_layout(ids, loss_mask, anchors, keep, block_size=4, mask_token_id=9)
    assert lay.labels[0, 0].tolist() == [102, 103, 104, 105]
    assert lay.slot_mask[0, 0].tolist() == [True, True, False, False]  # position 4 is not a response token
    assert lay.slot_mask[0, 1].tolist() == [True, True, False, False]  # the sequence ends at position 9
    assert lay.prev_ids[0, 0].tolist() == [101, 102, 103, 104]
    assert lay.block_ids[0].tolist() == [101, 9, 9, 9, 107, 9, 9, 9]
    assert lay.block_positions[0].tolist() == [1, 2, 3, 4, 7, 8, 9, 10]
    assert lay.target_index[0, 0].tolist() == [1, 2, 3, 4]


def test_block_attention_mask_by_hand():
    mask = block_attention_mask(torch.tensor([[2, 4]]), torch.tensor([[True, False]]), seq_len=5, block_size=2)
    assert mask.shape == (1, 4, 9)
    context, own = mask[0, :, :5].int().tolist(), mask[0, :, 5:].int().tolist()
    assert context == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0] * 5, [0] * 5]  # unused block: no context
    assert own == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]  # bidirectional within a block
