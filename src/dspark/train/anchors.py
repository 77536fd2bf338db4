"""Anchor sampling and the packed-block layout for DSpark/DFlash training (pure functions).

From each sequence, up to `num_anchors` positions a are drawn where the anchor token and the token after
it are both response (loss-masked) tokens. Each anchor forms one γ-slot block at positions a..a+γ-1;
slot j's label is the data token at a+j+1 and its target distribution comes from the target's final
hidden state at a+j. A slot is supervised only while every label up to it is a response token inside
the sequence (cumulative mask). All blocks of a sequence go through one forward: a block sees the
context strictly before its anchor and its own slots only (`block_attention_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def sample_anchors(loss_mask: torch.Tensor, num_anchors: int, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """loss_mask [B, S] -> anchors [B, N] (sorted, 0 where unused) and keep [B, N] bool."""
    b, s = loss_mask.shape
    valid = torch.zeros(b, s, dtype=torch.bool, device=loss_mask.device)
    valid[:, :-1] = (loss_mask[:, :-1] > 0) & (loss_mask[:, 1:] > 0)
    scores = torch.rand(b, s, generator=generator, device=loss_mask.device)
    scores = torch.where(valid, scores, torch.full_like(scores, 2.0))  # invalid positions sort last
    n = min(num_anchors, s)
    picked = scores.argsort(dim=1)[:, :n]  # [B, n] random valid positions first
    keep = torch.gather(valid, 1, picked)
    anchors = torch.where(keep, picked, torch.full_like(picked, s))  # push unused to the end when sorting
    anchors, order = anchors.sort(dim=1)
    keep = torch.gather(keep, 1, order)
    anchors = torch.where(keep, anchors, torch.zeros_like(anchors))
    if n < num_anchors:
        pad = num_anchors - n
        anchors = torch.cat([anchors, anchors.new_zeros(b, pad)], 1)
        keep = torch.cat([keep, keep.new_zeros(b, pad)], 1)
    return anchors, keep


@dataclass
class BlockLayout:
    block_ids: torch.Tensor  # [B, N·γ] anchor then MASK per block
    block_positions: torch.Tensor  # [B, N·γ]
    labels: torch.Tensor  # [B, N, γ] data token at a+j+1 (0 where out of range)
    prev_ids: torch.Tensor  # [B, N, γ] teacher-forced previous token (anchor, then labels)
    slot_mask: torch.Tensor  # [B, N, γ] bool: supervised slots
    target_index: torch.Tensor  # [B, N, γ] position a+j whose target hidden gives slot j's distribution


def block_layout(input_ids: torch.Tensor, loss_mask: torch.Tensor, anchors: torch.Tensor, keep: torch.Tensor,
                 block_size: int, mask_token_id: int) -> BlockLayout:
    b, s = input_ids.shape
    n = anchors.shape[1]
    offsets = torch.arange(block_size, device=input_ids.device).view(1, 1, -1)
    target_index = (anchors.unsqueeze(-1) + offsets).clamp(max=s - 1)  # [B, N, γ]
    label_pos = anchors.unsqueeze(-1) + offsets + 1
    in_range = label_pos < s
    label_pos = label_pos.clamp(max=s - 1)
    flat = lambda x: x.reshape(b, -1)  # noqa: E731
    labels = torch.gather(input_ids, 1, flat(label_pos)).view(b, n, block_size)
    ok = in_range & (torch.gather(loss_mask, 1, flat(label_pos)).view(b, n, block_size) > 0) & keep.unsqueeze(-1)
    slot_mask = ok.long().cumprod(dim=-1).bool()
    anchor_ids = torch.gather(input_ids, 1, anchors)  # [B, N]
    labels = torch.where(in_range, labels, torch.zeros_like(labels))
    prev_ids = torch.cat([anchor_ids.unsqueeze(-1), labels[..., :-1]], dim=-1)
    block_ids = torch.full((b, n, block_size), mask_token_id, dtype=input_ids.dtype, device=input_ids.device)
    block_ids[..., 0] = anchor_ids
    positions = anchors.unsqueeze(-1) + offsets
    return BlockLayout(flat(block_ids), flat(positions), labels, prev_ids, slot_mask, target_index)


def block_attention_mask(anchors: torch.Tensor, keep: torch.Tensor, seq_len: int, block_size: int) -> torch.Tensor:
    """[B, N·γ, S + N·γ] bool: context strictly before the block's anchor, plus the block's own slots.

    Unused blocks attend only to themselves (never to context), so no attention row is empty.
    """
    b, n = anchors.shape
    q_block = torch.arange(n * block_size, device=anchors.device) // block_size  # [Q]
    ctx = torch.arange(seq_len, device=anchors.device).view(1, 1, -1) < anchors[:, q_block].unsqueeze(-1)
    ctx = ctx & keep[:, q_block].unsqueeze(-1)
    own = (q_block.view(-1, 1) == q_block.view(1, -1)).unsqueeze(0).expand(b, -1, -1)
    return torch.cat([ctx, own], dim=-1)
