"""`HFTarget`: the target run by `transformers` itself, one request at a time — the engine's test oracle.

Each request keeps its own HF `DynamicCache`; before a request's tokens run, the cache is cut back to
the positions the scheduler says are computed (`seq.start`), which drops the K/V of rejected drafts
(public `crop` API, negative count = tokens to remove, the form every transformers version accepts).
Slow (a forward per request per step) but exactly what plain transformers computes, so the engine's
scheduling, paging and speculation can be checked against it token for token. The paged cache's pages
are not used for the target here, so prefix caching is off with this backend.
"""

from __future__ import annotations

import torch

from dspark.engine.batch import FlatBatch
from dspark.engine.messages import ScheduledSeq
from dspark.engine.target import TargetOutput
from dspark.targets.adapter import TargetModel


class HFTarget:
    supports_prefix_caching = False

    def __init__(self, target: TargetModel) -> None:
        self.target = target
        self.vocab_size = target.vocab_size
        self.device = target.device
        self.caches: dict[str, object] = {}

    def release(self, req_id: str) -> None:
        self.caches.pop(req_id, None)

    def _cache_at(self, seq: ScheduledSeq) -> object:
        from transformers import DynamicCache

        cache = self.caches.get(seq.req_id)
        if cache is None or seq.start == 0:
            cache = DynamicCache()
            self.caches[seq.req_id] = cache
        have = cache.get_seq_length()
        if have > seq.start:
            cache.crop(seq.start - have)
        elif have < seq.start:
            raise RuntimeError(f"request {seq.req_id}: HF cache holds {have} positions, step starts at {seq.start}")
        return cache

    @torch.no_grad()
    def forward(self, batch: FlatBatch, seqs: list[ScheduledSeq], layer_ids: list[int] | None) -> TargetOutput:
        starts = batch.query_start.tolist()
        feats, hidden, logits = [], [], []
        for b, seq in enumerate(seqs):
            lo, hi = starts[b], starts[b + 1]
            out = self.target.forward(batch.input_ids[lo:hi].unsqueeze(0), layer_ids, position_ids=batch.positions[lo:hi].unsqueeze(0),
                                      past_key_values=self._cache_at(seq), use_cache=True)
            feats.append(out.context_features[0])
            hidden.append(out.last_hidden[0])
            logits.append(out.logits[0])
        all_logits = torch.cat(logits, dim=0)  # [N, V]
        return TargetOutput(all_logits[batch.logits_indices], torch.cat(feats, dim=0) if layer_ids is not None else None,
                            torch.cat(hidden, dim=0))
