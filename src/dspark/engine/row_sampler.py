"""`RowSampler`: per-row sampling parameters and per-request random streams, for target and drafter alike.

Row r applies its own request's temperature / top-k / top-p (`dspark.sampling.processed_probs_rows`)
and draws from its request's counter-based stream (`dspark.counter_rng`) starting at a counter the
scheduler assigned, so the draws of a request never depend on which other requests share the batch.
"""

from __future__ import annotations

import torch

from dspark.counter_rng import counter_uniforms
from dspark.sampling import RowParams, processed_probs_rows, sample_from


class RowSampler:
    def __init__(self, params: RowParams, seeds: torch.Tensor, counters: torch.Tensor,
                 uniforms: torch.Tensor | None = None) -> None:
        """`uniforms` [R, U]: the streams' next U draws, already computed (the step draws them all at once)."""
        self.params = params
        self.seeds = seeds  # [R] int64
        self.counters = counters  # [R] int64, advanced by every draw
        self._ready, self._used = uniforms, 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [R, ..., V] -> processed float32 probs of the same shape (row r with request r's params)."""
        vocab = logits.shape[-1]
        per_row = logits[0].numel() // vocab if logits.shape[0] else 1
        flat = processed_probs_rows(logits.reshape(-1, vocab), self.params.repeat(per_row) if per_row > 1 else self.params)
        return flat.reshape(logits.shape)

    def uniforms(self, num: int) -> torch.Tensor:
        """The next `num` draws of every row's stream: [R, num] float64."""
        if self._ready is not None and self._used + num <= self._ready.shape[1]:
            u = self._ready[:, self._used: self._used + num]
            self._used += num
        else:
            self._ready = None
            u = counter_uniforms(self.seeds, self.counters, num)
        self.counters = self.counters + num
        return u

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """probs [R, ..., V] -> ids [R, ...] (one-hot rows of greedy requests give their argmax)."""
        per_row = probs[0].numel() // probs.shape[-1] if probs.shape[0] else 1
        return sample_from(probs, uniforms=self.uniforms(per_row).reshape(probs.shape[:-1]))
