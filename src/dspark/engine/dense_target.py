"""`DenseTarget`: the target run by our own dense forward (`dspark.models.DenseLM`) over the paged cache.

The target's K/V live in a `PagedKVCache` indexed by the engine's block tables (the drafter's context
K/V use the same pages), so prefix caching, preemption and abort need no per-request state here.
"""

from __future__ import annotations

import torch

from dspark.engine.batch import FlatBatch
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import ScheduledSeq
from dspark.engine.target import TargetOutput
from dspark.models import DenseLM


class DenseTarget:
    supports_prefix_caching = True

    def __init__(self, model: DenseLM, num_pages: int, page_size: int) -> None:
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.device = model.device
        self.kv: PagedKVCache = model.new_kv_cache(num_pages, page_size)

    def release(self, req_id: str) -> None:
        pass

    @torch.no_grad()
    def forward(self, batch: FlatBatch, seqs: list[ScheduledSeq], layer_ids: list[int] | None) -> TargetOutput:
        out = self.model(batch, self.kv, layer_ids)
        return TargetOutput(out.logits, out.features, out.last_hidden)
