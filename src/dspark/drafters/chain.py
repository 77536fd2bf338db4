"""Autoregressive chain drafters (Eagle3, MTP-1): one decoder layer run token by token.

Position t of the chain consumes a feature g_t and the embedding of the token at t+1, and predicts the
token at t+2. Over verified context, g_t comes from the target (Eagle3: fc of fused target layers;
MTP-1: the target's last hidden state); while drafting, g is the chain's own previous layer output.
The chain keeps its layer's K/V over the verified context in a `RaggedKV`; the K/V of the drafted
steps live only inside one `propose` call. The last verified position (whose next token is the anchor)
directly yields the first draft.

Subclasses define `context_feature(update)` and `layer_inputs(token_emb, feature) -> (attn_in, residual)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dspark.drafters.base import ContextKV, ContextUpdate, FlatUpdate, Proposal, SlotWriter, copy_frozen_from_target
from dspark.drafters.config import DrafterConfig
from dspark.drafters.kv_cache import RaggedKV
from dspark.drafters.layers import RMSNorm, Rotary
from dspark.sampling import Sampler, SamplingParams, as_sampler


@dataclass
class ChainState:
    kv: ContextKV


class ChainDrafter(nn.Module):
    layers: nn.ModuleList

    def __init__(self, config: DrafterConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.norm = RMSNorm(d, config.rms_norm_eps)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.rope_scaling)

    def context_feature(self, features: torch.Tensor, last_hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_inputs(self, token_emb: torch.Tensor, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def init_from_target(self, target: Any) -> None:
        copy_frozen_from_target(self, target)

    context_layers = 1

    def state_for(self, kv: ContextKV) -> ChainState:
        return ChainState(kv)

    def new_state(self, batch: int, device: torch.device) -> ChainState:
        c = self.config
        return ChainState(RaggedKV(1, batch, c.num_key_value_heads, c.head_dim, self.lm_head.weight.dtype, device))

    def step(self, feature: torch.Tensor, token_ids: torch.Tensor, positions: torch.Tensor,
             past_k: torch.Tensor | None, past_v: torch.Tensor | None, mask: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """feature [B,T,d], token_ids/positions [B,T], mask [B,T,P+T] -> (layer output, own k, own v)."""
        attn_in, residual = self.layer_inputs(self.embed_tokens(token_ids), feature)
        cos, sin = self.rotary(positions, attn_in.dtype)
        return self.layers[0].attn_block(residual, attn_in, cos, sin, past_k, past_v, mask)

    @torch.no_grad()
    def propose(self, state: ChainState, update: ContextUpdate | None, anchor_ids: torch.Tensor,
                params: SamplingParams | Sampler, generator: torch.Generator | None = None) -> Proposal:
        if update is None:
            raise ValueError(f"{type(self).__name__} needs the verified positions of every round (update=None)")
        return self.draft(state, self.absorb(state, update), anchor_ids, as_sampler(params, generator))

    @torch.no_grad()
    def absorb(self, state: ChainState, update: ContextUpdate) -> torch.Tensor:
        """Run the chain over the newly verified positions, append their K/V; returns the layer output
        at each row's last new position `[R, 1, d]` (the feature the first draft is read from)."""
        kv, rows = state.kv, update.num_new.shape[0]
        width = update.features.shape[1]
        pos, real = kv.write_positions(update.num_new, width)
        causal = torch.ones(width, width, dtype=torch.bool, device=pos.device).tril()
        mask = torch.cat([kv.valid_mask().unsqueeze(1).expand(-1, width, -1), causal & real.unsqueeze(1)], dim=2)
        past_k, past_v = kv.view(0)
        next_ids = update.next_ids.clamp_min(0)
        out, k, v = self.step(self.context_feature(update.features, update.last_hidden), next_ids, pos, past_k, past_v, mask)
        kv.append([k], [v], update.num_new)
        last = (update.num_new - 1).clamp_min(0)
        return out[torch.arange(rows, device=out.device), last].unsqueeze(1)  # [R, 1, d]

    @torch.no_grad()
    def absorb_flat_chain(self, cache: SlotWriter, update: FlatUpdate, past: ChainState) -> torch.Tensor:
        """The engine's absorb (`FlatChainAbsorber`): the chain's K/V at every flat position (they depend on
        its own inputs alone) written at its slot, then each row's last committed position attends over
        `past` and itself; returns that output `[B, 1, d]`, as `absorb` does."""
        feature = self.context_feature(update.features, update.last_hidden).unsqueeze(0)  # [1, N, d]
        attn_in, residual = self.layer_inputs(self.embed_tokens(update.next_ids.clamp_min(0)).unsqueeze(0), feature)
        cos, sin = self.rotary(update.positions.unsqueeze(0), attn_in.dtype)
        k, v = self.layers[0].self_attn.kv(attn_in, cos, sin)
        cache.write(0, update.slot_mapping, k[0], v[0])
        last, kv = update.last_index, past.kv
        past_k, past_v = kv.view(0)
        own = torch.ones(last.shape[0], 1, 1, dtype=torch.bool, device=last.device)
        mask = torch.cat([kv.valid_mask().unsqueeze(1), own], dim=2)  # [B, 1, L + 1]
        cos, sin = self.rotary(update.positions[last].unsqueeze(1), attn_in.dtype)
        out, _, _ = self.layers[0].attn_block(residual[0, last].unsqueeze(1), attn_in[0, last].unsqueeze(1), cos, sin,
                                              past_k, past_v, mask)
        return out

    @torch.no_grad()
    def draft(self, state: ChainState, feature: torch.Tensor, anchor_ids: torch.Tensor, sampler: Sampler) -> Proposal:
        """Draft `num_drafts` tokens token by token from the last verified position's feature `[R, 1, d]`."""
        kv, rows = state.kv, anchor_ids.shape[0]
        ids, probs = [], []
        step_k: list[torch.Tensor] = []
        step_v: list[torch.Tensor] = []
        past_k, past_v = kv.view(0)
        ctx_mask = kv.valid_mask().unsqueeze(1)  # [R, 1, L]
        for j in range(self.config.num_drafts):
            p = sampler.probs(self.lm_head(self.norm(feature[:, 0])))  # [R, V]
            token = sampler.draw(p)
            ids.append(token)
            probs.append(p)
            if j + 1 == self.config.num_drafts:
                break
            # the chain's next position consumes (own output, the token just drafted)
            position = (kv.length + j).unsqueeze(1)
            keys_k = torch.cat([past_k] + step_k, dim=1) if step_k else past_k
            keys_v = torch.cat([past_v] + step_v, dim=1) if step_v else past_v
            mask = torch.cat([ctx_mask, torch.ones(rows, 1, j + 1, dtype=torch.bool, device=ctx_mask.device)], dim=2)
            feature, k, v = self.step(feature, token.unsqueeze(1), position, keys_k, keys_v, mask)
            step_k.append(k)
            step_v.append(v)
        return Proposal(torch.stack(ids, dim=1), sampler.stack(probs))
