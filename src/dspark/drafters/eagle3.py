"""Eagle3 (SPEC §2.6): one decoder layer whose attention reads [norm(emb(token)) ; norm(feature)].

The feature is fc(concat of the fused target layers) over verified context and the drafter's own
previous (pre-norm) layer output while drafting. The layer's residual stream is the feature.
State-dict names follow DeepSpec's `Qwen3Eagle3Model` (`layers.0.hidden_norm` etc.).
"""

from __future__ import annotations

import torch
from torch import nn

from dspark.drafters.chain import ChainDrafter
from dspark.drafters.config import DrafterConfig
from dspark.drafters.layers import DecoderLayer, RMSNorm


class Eagle3Drafter(ChainDrafter):
    def __init__(self, config: DrafterConfig) -> None:
        super().__init__(config)
        d = config.hidden_size
        layer = DecoderLayer(config, attn_in_dim=2 * d)
        layer.hidden_norm = RMSNorm(d, config.rms_norm_eps)
        self.layers = nn.ModuleList([layer])
        self.fc = nn.Linear(len(config.target_layer_ids) * d, d, bias=False)

    def context_feature(self, features: torch.Tensor, last_hidden: torch.Tensor) -> torch.Tensor:
        return self.fc(features.to(self.fc.weight.dtype))

    def layer_inputs(self, token_emb: torch.Tensor, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layers[0]
        attn_in = torch.cat([layer.input_layernorm(token_emb), layer.hidden_norm(feature)], dim=-1)
        return attn_in, feature
