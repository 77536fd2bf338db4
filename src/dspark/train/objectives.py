"""Per-method training objectives: a batch of target features in, weighted loss sums out.

`objective_for(method)` returns a function `(drafter, batch, generator, weights) -> dict of sums`
(see `losses.py`). The vocabulary-sized tensors (draft logits, target logits, softmaxes) are built a
chunk of blocks at a time under activation checkpointing, so memory stays bounded by the chunk, not by
anchors × γ × V (512 × 7 × 150K would be ~2 GB per sequence in fp32 otherwise).

A batch is a dict with `input_ids [B,S]`, `loss_mask [B,S]`, `context_features [B,S,n·d]` and
`last_hidden [B,S,d]` (from the cache or computed online from the target).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.checkpoint import checkpoint

from dspark.train.anchors import block_attention_mask, block_layout, sample_anchors
from dspark.train.losses import LossWeights, block_loss_sums, slot_weights, soft_ce_sums

Objective = Callable[[Any, dict[str, torch.Tensor], torch.Generator | None, LossWeights], dict[str, torch.Tensor]]
CHUNK_ELEMENTS = 1 << 27  # vocabulary-sized elements per chunk (~0.5 GB per fp32 tensor)


def _chunk(rows_per_item: int, vocab: int) -> int:
    """How many items (blocks, or positions × batch) fit one chunk of CHUNK_ELEMENTS logits."""
    return max(1, CHUNK_ELEMENTS // max(1, rows_per_item * vocab))


def _anchors(batch: dict[str, torch.Tensor], num_anchors: int, generator: torch.Generator | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors drawn on the CPU (same draw on any device), then moved to the batch's device.

    With `anchor_seeds [B]` in the batch (the trainer sets them), each row draws from its own seed over
    its own length, so a sample's anchors do not depend on the micro-batch, rank or padding it lands in:
    data parallelism and gradient accumulation then train on exactly the blocks one big batch would.
    """
    loss_mask = batch["loss_mask"]
    seeds = batch.get("anchor_seeds")
    if seeds is None:
        anchors, keep = sample_anchors(loss_mask.cpu(), num_anchors, generator)
    else:
        rows = []
        for row, seed in zip(loss_mask.cpu(), seeds.tolist()):
            used = row.nonzero()
            length = int(used[-1]) + 1 if len(used) else 1  # padding past the last response token is never an anchor
            rows.append(sample_anchors(row[None, :length], num_anchors, torch.Generator().manual_seed(int(seed))))
        anchors, keep = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
    return anchors.to(loss_mask.device), keep.to(loss_mask.device)


def _merge(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def _block_chunk(drafter: Any, weights: LossWeights, h: torch.Tensor, target_h: torch.Tensor, prev: torch.Tensor,
                 labels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    logits = drafter.lm_head(h)
    if getattr(drafter, "markov_head", None) is not None:
        logits = logits + drafter.markov_head.block_bias(prev, h)
    conf = drafter.confidence_logits(h, prev) if hasattr(drafter, "confidence_logits") else None
    sums = block_loss_sums(logits, drafter.lm_head(target_h), labels, mask, conf, weights)
    keys = ("loss", "ce", "tv", "conf", "weight", "accept", "count", "tau_terms", "blocks")
    return tuple(sums.get(k, torch.zeros((), device=h.device)) for k in keys)


def block_objective(drafter: Any, batch: dict[str, torch.Tensor], generator: torch.Generator | None,
                    weights: LossWeights) -> dict[str, torch.Tensor]:
    """DSpark and DFlash: packed anchor blocks, CE + L1 + confidence BCE (DFlash: CE only)."""
    cfg = drafter.config
    if cfg.method == "dflash":
        weights = LossWeights(ce=1.0, tv=0.0, conf=0.0, slot_decay=weights.slot_decay)
    ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    b, s = ids.shape
    anchors, keep = _anchors(batch, cfg.num_anchors, generator)
    layout = block_layout(ids, loss_mask, anchors, keep, cfg.block_size, cfg.mask_token_id)
    ctx_pos = torch.arange(s, device=ids.device).unsqueeze(0).expand(b, -1)
    ctx_kv = drafter.context_kv(batch["context_features"], ctx_pos)
    mask = block_attention_mask(anchors, keep, s, cfg.block_size)
    hidden = drafter.backbone(layout.block_ids, layout.block_positions, ctx_kv, mask)  # [B, N·γ, d]
    g = cfg.block_size
    sel = keep.reshape(-1)  # only real blocks reach the vocabulary-sized part
    h = hidden.reshape(-1, g, hidden.shape[-1])[sel]
    tgt_idx = layout.target_index.reshape(b, -1)
    target_h = torch.gather(batch["last_hidden"], 1, tgt_idx.unsqueeze(-1).expand(-1, -1, batch["last_hidden"].shape[-1]))
    target_h = target_h.reshape(-1, g, target_h.shape[-1])[sel]
    prev, labels, smask = (x.reshape(-1, g)[sel] for x in (layout.prev_ids, layout.labels, layout.slot_mask))
    keys = ("loss", "ce", "tv", "conf", "weight", "accept", "count", "tau_terms", "blocks")
    parts = []
    step = _chunk(g, cfg.vocab_size)
    for i in range(0, max(h.shape[0], 1), step):
        sl = slice(i, i + step)
        args = (h[sl], target_h[sl].detach(), prev[sl], labels[sl], smask[sl])
        out = checkpoint(_block_chunk, drafter, weights, *args, use_reentrant=False) if torch.is_grad_enabled() \
            else _block_chunk(drafter, weights, *args)
        parts.append(dict(zip(keys, out)))
    return _merge(parts)


def block_weight(drafter: Any, batch: dict[str, torch.Tensor], generator: torch.Generator | None,
                 weights: LossWeights) -> torch.Tensor:
    """Σ of slot weights over supervised slots: the normaliser, known before any forward."""
    cfg = drafter.config
    anchors, keep = _anchors(batch, cfg.num_anchors, generator)
    layout = block_layout(batch["input_ids"], batch["loss_mask"], anchors, keep, cfg.block_size, cfg.mask_token_id)
    return (slot_weights(cfg.block_size, weights.slot_decay, keep.device) * layout.slot_mask.float()).sum()


def _chain_masks(loss_mask: torch.Tensor, steps: int) -> list[torch.Tensor]:
    """mask_k [B, S]: position t at step k predicts x_{t+2+k}; supervised while x_{t+2..t+2+k} are response."""
    b, s = loss_mask.shape
    alive = torch.ones(b, s, dtype=torch.bool, device=loss_mask.device)
    masks = []
    for k in range(steps):
        nxt = torch.zeros_like(alive)
        if s - 2 - k > 0:
            nxt[:, : s - 2 - k] = loss_mask[:, 2 + k:] > 0
        alive = alive & nxt
        masks.append(alive)
    return masks


def _shift(x: torch.Tensor, by: int) -> torch.Tensor:
    """x[:, t + by] at t (zero past the end)."""
    out = torch.zeros_like(x)
    if x.shape[1] > by:
        out[:, : x.shape[1] - by] = x[:, by:]
    return out


def _soft_chunk(drafter: Any, out: torch.Tensor, target_h: torch.Tensor, mask: torch.Tensor, w: float) -> tuple[torch.Tensor, ...]:
    sums = soft_ce_sums(drafter.lm_head(drafter.norm(out)), drafter.lm_head(target_h), mask, w)
    return sums["loss"], sums["weight"], sums["accept"], sums["count"]


def chain_objective(drafter: Any, batch: dict[str, torch.Tensor], generator: torch.Generator | None,
                    weights: LossWeights) -> dict[str, torch.Tensor]:
    """Eagle3 (training-time test over ttt_length steps) and MTP-1 (one step): soft CE vs the target."""
    cfg = drafter.config
    ids, last_hidden = batch["input_ids"], batch["last_hidden"]
    b, s = ids.shape
    steps = cfg.num_drafts
    masks = _chain_masks(batch["loss_mask"], steps)
    pos = torch.arange(s, device=ids.device)
    causal = pos.view(-1, 1) >= pos.view(1, -1)  # [S, S]
    diag = torch.eye(s, dtype=torch.bool, device=ids.device)
    feature = drafter.context_feature(batch["context_features"], last_hidden)
    keys_k: list[torch.Tensor] = []
    keys_v: list[torch.Tensor] = []
    parts, per_step = [], []
    for k in range(steps):
        mask = torch.cat([causal] + [diag] * k, dim=1).unsqueeze(0).expand(b, -1, -1)  # [B, S, (k+1)·S]
        positions = (pos + k).unsqueeze(0).expand(b, -1)
        past_k = torch.cat(keys_k, 1) if keys_k else None
        past_v = torch.cat(keys_v, 1) if keys_v else None
        feature, kk, vv = drafter.step(feature, _shift(ids, 1 + k), positions, past_k, past_v, mask)
        keys_k.append(kk)
        keys_v.append(vv)
        target_h = _shift(last_hidden, 1 + k).detach()
        w = cfg.step_loss_decay ** k
        step_parts = []
        width = _chunk(b, cfg.vocab_size)
        for i in range(0, s, width):
            sl = slice(i, i + width)
            args = (feature[:, sl], target_h[:, sl], masks[k][:, sl], w)
            out = checkpoint(_soft_chunk, drafter, *args, use_reentrant=False) if torch.is_grad_enabled() \
                else _soft_chunk(drafter, *args)
            step_parts.append(dict(zip(("loss", "weight", "accept", "count"), out)))
        merged = _merge(step_parts)
        per_step.append(merged)
        parts.append({"loss": merged["loss"], "weight": merged["weight"]})
    total = _merge(parts)
    total["accept"] = torch.stack([p["accept"] for p in per_step])  # [steps] Σ(1 − TV)
    total["count"] = torch.stack([p["count"] for p in per_step])
    return total


def chain_weight(drafter: Any, batch: dict[str, torch.Tensor], generator: torch.Generator | None,
                 weights: LossWeights) -> torch.Tensor:
    cfg = drafter.config
    masks = _chain_masks(batch["loss_mask"], cfg.num_drafts)
    return sum(cfg.step_loss_decay ** k * m.float().sum() for k, m in enumerate(masks))


OBJECTIVES: dict[str, tuple[Objective, Callable[..., torch.Tensor]]] = {
    "dspark": (block_objective, block_weight), "dflash": (block_objective, block_weight),
    "eagle3": (chain_objective, chain_weight), "mtp": (chain_objective, chain_weight),
}
