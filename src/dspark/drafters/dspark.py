"""DSpark and DFlash: the anchor-first parallel backbone, with (DSpark) or without (DFlash) heads.

Backbone (SPEC §2.1): a block of γ slots at positions L..L+γ-1 holds [anchor, MASK × (γ-1)]; slot j
predicts the token at L+j+1. Context features C = hidden_norm(fc(concat target layers)) are injected as
extra keys/values in every layer (the layer's own k/v projections, k_norm, rotary at the context
positions); block slots see all context before the anchor and, bidirectionally, their own block.
DSpark adds the sequential head (left-to-right bias from the previously sampled token) and the
confidence head. DFlash is the same class with both heads off.

Inference keeps each layer's context K/V in a `RaggedKV` (or the engine's pages) and appends the newly
verified positions per round; the block's own K/V are never stored. Inference (`absorb`, `absorb_flat`,
`block_hidden`, hence `draft`) runs the fused path of `dspark.drafters.fused` on CUDA with Triton, or
wherever ``fused=True`` forces it; training and `score_block` always run the plain modules (the reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from dspark.drafters.base import (BlockScores, ContextKV, ContextUpdate, Proposal, SlotWriter, calibrated_confidence,
                                  copy_frozen_from_target)
from dspark.drafters.config import DrafterConfig
from dspark.drafters.heads import HEADS, ConfidenceHead, MarkovHead
from dspark.drafters.kv_cache import RaggedKV
from dspark.drafters.layers import DecoderLayer, RMSNorm, Rotary
from dspark.sampling import MarkovSampler, Sampler, SamplingParams, as_sampler

if TYPE_CHECKING:
    from dspark.drafters.fused import FusedWeights


@dataclass
class DSparkState:
    kv: ContextKV  # context K/V per draft layer (RaggedKV, or the engine's paged view)


class DSparkDrafter(nn.Module):
    def __init__(self, config: DrafterConfig, fused: bool | None = None) -> None:
        """`fused` None: the fused inference path on CUDA with Triton only; True / False force it on / off."""
        super().__init__()
        self.config = config
        self.fused = fused
        self._fused_weights: FusedWeights | None = None  # built on first fused use, outside the state dict
        d, n = config.hidden_size, len(config.target_layer_ids)
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList([DecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = RMSNorm(d, config.rms_norm_eps)
        self.fc = nn.Linear(n * d, d, bias=False)
        self.hidden_norm = RMSNorm(d, config.rms_norm_eps)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.rotary = Rotary(config.head_dim, config.rope_theta, config.rope_scaling)
        self.markov_head: MarkovHead | None = None
        if config.has_markov:
            self.markov_head = HEADS[config.markov_head_type](config.vocab_size, config.markov_rank, d)
        self.confidence_head: ConfidenceHead | None = None
        if config.has_confidence:
            extra = config.markov_rank if config.confidence_head_with_markov else 0
            self.confidence_head = ConfidenceHead(d + extra)
        temps = config.calibration_temperatures
        self.register_buffer("calibration_temperatures",
                             None if temps is None else torch.tensor(temps, dtype=torch.float32), persistent=False)

    # -- shared pieces ----------------------------------------------------------------------------
    def init_from_target(self, target: Any) -> None:
        copy_frozen_from_target(self, target)

    def set_calibration(self, temperatures: list[float] | None) -> None:
        self.config.calibration_temperatures = None if temperatures is None else [float(t) for t in temperatures]
        device = self.lm_head.weight.device
        self.calibration_temperatures = None if temperatures is None else torch.tensor(temperatures, dtype=torch.float32, device=device)

    def context_kv(self, features: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Raw target features [B, L, n·d] at positions [B, L] -> per layer (k, v) [B, L, Hkv, D]."""
        c = self.hidden_norm(self.fc(features.to(self.fc.weight.dtype)))
        cos, sin = self.rotary(positions, c.dtype)
        return [layer.self_attn.kv(c, cos, sin) for layer in self.layers]

    def backbone(self, block_ids: torch.Tensor, block_positions: torch.Tensor,
                 ctx_kv: list[tuple[torch.Tensor, torch.Tensor]], mask: torch.Tensor) -> torch.Tensor:
        """block_ids/positions [B, Q], per-layer context (k, v) [B, L, Hkv, D], mask [B, Q, L+Q] -> normed hidden [B, Q, d]."""
        h = self.embed_tokens(block_ids)
        cos, sin = self.rotary(block_positions, h.dtype)
        for layer, (ck, cv) in zip(self.layers, ctx_kv):
            h, _, _ = layer.attn_block(h, layer.input_layernorm(h), cos, sin, ck, cv, mask)
        return self.norm(h)

    def block_inputs(self, anchor_ids: torch.Tensor) -> torch.Tensor:
        """[anchor, MASK × (γ-1)] per row: anchor_ids [B] -> [B, γ]."""
        ids = anchor_ids.new_full((anchor_ids.shape[0], self.config.block_size), self.config.mask_token_id)
        ids[:, 0] = anchor_ids
        return ids

    def confidence_logits(self, hidden: torch.Tensor, prev_ids: torch.Tensor) -> torch.Tensor | None:
        if self.confidence_head is None:
            return None
        prev_emb = self.markov_head.prev_embedding(prev_ids) if self.config.confidence_head_with_markov else None
        return self.confidence_head(hidden, prev_emb)

    # -- teacher-forced block (fixtures, calibration) ---------------------------------------------
    def score_block(self, context_features: torch.Tensor, anchor_ids: torch.Tensor,
                    prev_ids: torch.Tensor | None = None) -> BlockScores:
        """One block right after a context of length L; slots at positions L..L+γ-1."""
        b, ctx_len = context_features.shape[:2]
        g = self.config.block_size
        device = context_features.device
        ctx_pos = torch.arange(ctx_len, device=device).unsqueeze(0).expand(b, -1)
        blk_pos = ctx_len + torch.arange(g, device=device).unsqueeze(0).expand(b, -1)
        mask = torch.ones(b, g, ctx_len + g, dtype=torch.bool, device=device)
        hidden = self.backbone(self.block_inputs(anchor_ids), blk_pos, self.context_kv(context_features, ctx_pos), mask)
        base = self.lm_head(hidden)
        if prev_ids is None:
            return BlockScores(hidden, base, base, None)
        logits = base if self.markov_head is None else base + self.markov_head.block_bias(prev_ids, hidden)
        return BlockScores(hidden, base, logits, self.confidence_logits(hidden, prev_ids))

    # -- inference --------------------------------------------------------------------------------
    def uses_fused_path(self) -> bool:
        if self.fused is not None:
            return self.fused
        from dspark.models.dense import fused_available  # lazy: dense imports this package

        return fused_available(self.lm_head.weight.device)

    def prepare_inference(self) -> FusedWeights:
        """(Re)build the fused QKV / gate-up / context-k|v weights now (else done on first use, and again
        whenever a source weight changes); the state dict is unchanged."""
        from dspark.drafters import fused  # lazy: imports Triton

        self._fused_weights = fused.build_fused_weights(self)
        return self._fused_weights

    def _fused(self) -> tuple[ModuleType, FusedWeights]:
        """`dspark.drafters.fused` and the current fused weights."""
        from dspark.drafters import fused

        self._fused_weights = fused.fused_weights(self, self._fused_weights)
        return fused, self._fused_weights

    def _project(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x @ weight.T: the fused path's GEMM (the skinny kernel for few rows where it is faster) or F.linear."""
        if self.uses_fused_path():
            from dspark.kernels.skinny_gemm import linear  # lazy: imports Triton

            return linear(x, weight)
        return F.linear(x, weight)

    @property
    def context_layers(self) -> int:
        return self.config.num_hidden_layers

    def state_for(self, kv: ContextKV) -> DSparkState:
        return DSparkState(kv)

    def new_state(self, batch: int, device: torch.device) -> DSparkState:
        c = self.config
        return DSparkState(RaggedKV(c.num_hidden_layers, batch, c.num_key_value_heads, c.head_dim,
                                    self.lm_head.weight.dtype, device))

    @torch.no_grad()
    def absorb(self, state: DSparkState, update: ContextUpdate) -> None:
        """Append the context K/V of newly verified positions."""
        pos, _ = state.kv.write_positions(update.num_new, update.features.shape[1])
        if self.uses_fused_path():
            fused, weights = self._fused()
            kv = fused.context_kv(self, weights, update.features, pos)
        else:
            kv = self.context_kv(update.features, pos)
        state.kv.append([k for k, _ in kv], [v for _, v in kv], update.num_new)

    def absorb_flat(self, cache: SlotWriter, features: torch.Tensor, positions: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
        """The engine's absorb: features [N, n·d] at positions [N] -> context K/V stored at slot_mapping [N]."""
        if self.uses_fused_path():
            fused, weights = self._fused()
            fused.absorb_flat(self, weights, cache.k, cache.v, features, positions, slot_mapping)
            return
        kv = self.context_kv(features.unsqueeze(0), positions.unsqueeze(0))
        for layer, (k, v) in enumerate(kv):
            cache.write(layer, slot_mapping, k[0], v[0])

    def block_hidden(self, state: DSparkState, anchor_ids: torch.Tensor) -> torch.Tensor:
        """Backbone output [R, γ, d] for a block right after each row's cached context."""
        g, kv = self.config.block_size, state.kv
        blk_pos = kv.length.unsqueeze(1) + torch.arange(g, device=anchor_ids.device).unsqueeze(0)
        if self.uses_fused_path():
            fused, weights = self._fused()
            return fused.block_hidden(self, weights, self.block_inputs(anchor_ids), blk_pos, kv)
        mask = torch.cat([kv.valid_mask().unsqueeze(1).expand(-1, g, -1),
                          torch.ones(anchor_ids.shape[0], g, g, dtype=torch.bool, device=anchor_ids.device)], dim=2)
        return self.backbone(self.block_inputs(anchor_ids), blk_pos, [kv.view(i) for i in range(len(self.layers))], mask)

    @torch.no_grad()
    def propose(self, state: DSparkState, update: ContextUpdate | None, anchor_ids: torch.Tensor,
                params: SamplingParams | Sampler, generator: torch.Generator | None = None) -> Proposal:
        if update is not None:
            self.absorb(state, update)
        return self.draft(state, None, anchor_ids, as_sampler(params, generator))

    @torch.no_grad()
    def draft(self, state: DSparkState, carry: None, anchor_ids: torch.Tensor, sampler: Sampler) -> Proposal:
        """Draft one block after each row's cached context (`carry` is unused: the context K/V is all it needs)."""
        with record_function("draft.backbone"):
            hidden = self.block_hidden(state, anchor_ids)
        with record_function("draft.lm_head"):
            base = self._project(hidden, self.lm_head.weight)  # [R, γ, V]: one GEMM for every slot
        if self.markov_head is None and self.confidence_head is None:  # DFlash: slots are independent
            probs = sampler.stack(list(sampler.probs(base).unbind(1)))  # into the caller's buffer, if any
            return Proposal(sampler.draw(probs), probs)
        with record_function("draft.sequential"):
            return self._sample_sequential(base, hidden, anchor_ids, sampler)

    def _sample_sequential(self, base: torch.Tensor, hidden: torch.Tensor, anchor_ids: torch.Tensor,
                           sampler: Sampler) -> Proposal:
        """Left to right: bias from the previously sampled token, record the exact distribution."""
        if type(self.markov_head) is MarkovHead and isinstance(sampler, MarkovSampler):  # fused where it can
            head = self.markov_head
            fused = sampler.markov_slots(base, anchor_ids, head.markov_w1.weight, head.markov_w2.weight)
            if fused is not None:
                return Proposal(fused[0], fused[1], self._confidence(hidden, anchor_ids, fused[0]))
        prev, head_state = anchor_ids, None
        if self.markov_head is not None:
            head_state = self.markov_head.initial_state(anchor_ids.shape[0], hidden)
        ids, probs = [], []
        for k in range(base.shape[1]):
            logits = base[:, k]
            if self.markov_head is not None:
                bias, head_state = self.markov_head.step(prev, hidden[:, k], head_state, self._project)
                logits = logits + bias
            p = sampler.probs(logits)  # [R, V]
            prev = sampler.draw(p)
            ids.append(prev)
            probs.append(p)
        draft_ids = torch.stack(ids, dim=1)  # [R, γ]
        return Proposal(draft_ids, sampler.stack(probs), self._confidence(hidden, anchor_ids, draft_ids))

    def _confidence(self, hidden: torch.Tensor, anchor_ids: torch.Tensor, draft_ids: torch.Tensor) -> torch.Tensor | None:
        """Calibrated c_k [R, γ] (None without a confidence head): c_k depends on x_{k-1} only, so one batched
        call after sampling."""
        if self.confidence_head is None:
            return None
        prev_ids = torch.cat([anchor_ids.unsqueeze(1), draft_ids[:, :-1]], dim=1)
        return calibrated_confidence(self.confidence_logits(hidden, prev_ids), self.calibration_temperatures)
