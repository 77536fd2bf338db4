"""MTP-1 (SPEC §2.6), DeepSeek's production baseline: drafts exactly one token per round.

h' = eh_proj([hnorm(h_t) ; enorm(emb(x_{t+1}))]) -> one standard decoder layer -> norm -> the shared
LM head -> x_{t+2}. h_t is the target's final-normed last hidden state at position t.
"""

from __future__ import annotations

import torch
from torch import nn

from dspark.drafters.chain import ChainDrafter
from dspark.drafters.config import DrafterConfig
from dspark.drafters.layers import DecoderLayer, RMSNorm


class MTPDrafter(ChainDrafter):
    def __init__(self, config: DrafterConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.hnorm = RMSNorm(d, config.rms_norm_eps)
        self.enorm = RMSNorm(d, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.layers = nn.ModuleList([DecoderLayer(config)])

    def context_feature(self, features: torch.Tensor, last_hidden: torch.Tensor) -> torch.Tensor:
        return last_hidden.to(self.eh_proj.weight.dtype)

    def layer_inputs(self, token_emb: torch.Tensor, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.eh_proj(torch.cat([self.hnorm(feature), self.enorm(token_emb)], dim=-1))
        return self.layers[0].input_layernorm(h), h
