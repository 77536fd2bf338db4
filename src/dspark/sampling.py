"""Sampling math shared by the target and the drafter (pure functions).

Speculative decoding is lossless only if the target's and the drafter's distributions go through
exactly the same processing (temperature, then top-k, then top-p) before the accept/reject test.
Every decoding path in dspark therefore calls `processed_probs` and nothing else.

Temperature 0 means greedy: `processed_probs` returns the one-hot distribution of the argmax, so the
generic rejection rule degenerates to exact greedy verification.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How a distribution is post-processed before sampling. `top_k=0` and `top_p=1` disable."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def processed_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Turn logits `[..., V]` into the processed float32 distribution `[..., V]`."""
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass of strictly better tokens
        drop_sorted = mass_before >= params.top_p  # the first token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_from(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row of `probs [..., V]` -> `[...]` (long).

    Inverse CDF in float64: one uniform per row scaled by the row's total mass, then the first index
    whose cumulative mass exceeds it (zero-probability tokens have empty intervals and are never drawn).
    Exact up to float64 rounding, and several times faster than `torch.multinomial` on a CPU.
    """
    flat = probs.reshape(-1, probs.shape[-1]).double()  # [N, V]
    cdf = flat.cumsum(-1)  # [N, V]
    u = torch.rand(flat.shape[0], 1, generator=generator, dtype=torch.float64, device=flat.device) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(flat.shape[-1] - 1)  # [N]
    return ids.reshape(probs.shape[:-1])


def draw(probs: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample from processed `probs` (argmax when greedy: the one-hot law, without a random draw)."""
    return probs.argmax(-1) if params.greedy else sample_from(probs, generator)
