"""`RowSampler`: per-row sampling parameters and per-request random streams, for target and drafter alike.

Row r applies its own request's temperature / top-k / top-p (`dspark.sampling.processed_probs_rows`)
and draws from its request's counter-based stream (`dspark.counter_rng`) starting at a counter the
scheduler assigned, so the draws of a request never depend on which other requests share the batch.

On CUDA with Triton installed, the drafter's per-slot work is four fused kernels
(`dspark.kernels.sampling_triton`): `probs` when no row uses top-k or top-p (the host-side `RowParams`
summaries say so, and they are part of a captured graph's key), and every `draw`; a low-rank Markov
head's whole slot loop is three kernels a slot (`markov_slots`, `dspark.kernels.markov_sampling`). Elsewhere, and for
top-k / top-p rows, the PyTorch functions run unchanged (CPU results are bit-identical to them).
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from dspark.counter_rng import counter_uniforms
from dspark.sampling import RowParams, processed_probs_rows, sample_from


@functools.cache
def _triton_sampling() -> ModuleType | None:
    try:
        from dspark.kernels import sampling_triton
    except ImportError:  # CPU-only installs without Triton
        return None
    return sampling_triton


def sampling_kernels(device: torch.device) -> ModuleType | None:
    """`dspark.kernels.sampling_triton` for tensors on `device` when it is CUDA and Triton imports, else None."""
    return _triton_sampling() if device.type == "cuda" else None


@functools.cache
def _triton_markov() -> ModuleType | None:
    try:
        from dspark.kernels import markov_sampling
    except ImportError:  # CPU-only installs without Triton
        return None
    return markov_sampling


def markov_kernels(device: torch.device) -> ModuleType | None:
    """`dspark.kernels.markov_sampling` for tensors on `device` when it is CUDA and Triton imports (and
    ``DSPARK_FUSED_MARKOV`` is not 0), else None."""
    if device.type != "cuda" or os.environ.get("DSPARK_FUSED_MARKOV", "1") == "0":
        return None
    return _triton_markov()


def temperature_only(params: RowParams) -> bool:
    """No row can use top-k or top-p (per the host-side summaries), so the fused probs kernel applies."""
    return params.max_top_k == 0 and not params.any_top_p


class RowSampler:
    def __init__(self, params: RowParams, seeds: torch.Tensor, counters: torch.Tensor,
                 uniforms: torch.Tensor | None = None, out: torch.Tensor | None = None) -> None:
        """`uniforms` [R, U]: the streams' next U draws, already computed (the step draws them all at once);
        `out` [≥R, γ, V]: where `stack` writes the draft distributions (a graphed step's one shared buffer)."""
        self.out = out
        self.params = params
        self.seeds = seeds  # [R] int64
        self._counters, self._advanced = counters, 0  # [R] int64 and how far every draw has moved them
        self._ready, self._used = uniforms, 0

    @property
    def counters(self) -> torch.Tensor:
        """[R] int64: each stream's next counter (added on demand, not one device op per draw)."""
        return self._counters + self._advanced if self._advanced else self._counters

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [R, ..., V] -> processed float32 probs of the same shape (row r with request r's params)."""
        vocab = logits.shape[-1]
        per_row = logits[0].numel() // vocab if logits.shape[0] else 1
        flat = logits.reshape(-1, vocab)
        kernels = sampling_kernels(logits.device)
        if kernels is not None and temperature_only(self.params):
            probs = kernels.processed_probs(flat, self.params.temperature, self.params.any_greedy)
        else:
            probs = processed_probs_rows(flat, self.params.repeat(per_row) if per_row > 1 else self.params)
        return probs.reshape(logits.shape)

    def stack(self, probs: list[torch.Tensor]) -> torch.Tensor:
        """[R, V] per slot -> [R, γ, V], into `out` when given (no allocation of its own)."""
        if self.out is None:
            return torch.stack(probs, dim=1)
        return torch.stack(probs, dim=1, out=self.out[: probs[0].shape[0]])

    def uniforms(self, num: int) -> torch.Tensor:
        """The next `num` draws of every row's stream: [R, num] float64."""
        if self._ready is not None and self._used + num <= self._ready.shape[1]:
            u = self._ready[:, self._used: self._used + num]
            self._used += num
        else:
            self._ready = None
            u = counter_uniforms(self.seeds, self.counters, num)
        self._advanced += num
        return u

    def markov_slots(self, base: torch.Tensor, anchor_ids: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The Markov head's γ slots in three fused kernels each (`dspark.kernels.markov_sampling`): the same
        uniforms, in the same order, as γ `probs` + `draw` calls; probs into `out`. None (the caller loops)
        off CUDA, without Triton, or when a row may use top-k / top-p."""
        kernels = markov_kernels(base.device)
        if kernels is None or not temperature_only(self.params):
            return None
        rows, gamma = base.shape[0], base.shape[1]
        out = None if self.out is None else self.out[:rows]
        return kernels.markov_draft(base, anchor_ids, w1, w2, self.params.temperature, self.params.any_greedy,
                                    self.uniforms(gamma), out)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """probs [R, ..., V] -> ids [R, ...] (one-hot rows of greedy requests give their argmax)."""
        per_row = probs[0].numel() // probs.shape[-1] if probs.shape[0] else 1
        uniforms = self.uniforms(per_row).reshape(probs.shape[:-1])
        kernels = sampling_kernels(probs.device)
        if kernels is not None:
            return kernels.inverse_cdf(probs, uniforms)
        return sample_from(probs, uniforms=uniforms)
