"""Sampling math shared by the target and the drafter (pure functions).

Speculative decoding is lossless only if the target's and the drafter's distributions go through
exactly the same processing (temperature, then top-k, then top-p) before the accept/reject test.
Every decoding path in dspark therefore calls `processed_probs` and nothing else.

Temperature 0 means greedy: `processed_probs` returns the one-hot distribution of the argmax, so the
generic rejection rule degenerates to exact greedy verification.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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


def sample_from(probs: torch.Tensor, generator: torch.Generator | None = None,
                uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Draw one token id per row of `probs [..., V]` -> `[...]` (long).

    Inverse CDF in float64: one uniform per row scaled by the row's total mass, then the first index
    whose cumulative mass exceeds it (zero-probability tokens have empty intervals and are never drawn).
    Exact up to float64 rounding, and several times faster than `torch.multinomial` on a CPU.
    `uniforms [...]` in [0, 1) may be given instead of a generator (the engine's per-request streams).
    """
    flat = probs.reshape(-1, probs.shape[-1]).double()  # [N, V]
    cdf = flat.cumsum(-1)  # [N, V]
    if uniforms is None:
        uniforms = torch.rand(flat.shape[0], generator=generator, dtype=torch.float64, device=flat.device)
    u = uniforms.reshape(-1, 1).to(torch.float64) * cdf[:, -1:]
    ids = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(flat.shape[-1] - 1)  # [N]
    return ids.reshape(probs.shape[:-1])


def draw(probs: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample from processed `probs` (argmax when greedy: the one-hot law, without a random draw)."""
    return probs.argmax(-1) if params.greedy else sample_from(probs, generator)


# ------------------------------------------------------------------------------------------ per row
@dataclass
class RowParams:
    """Per-row sampling parameters of a batch whose requests sample differently: each [R].

    `max_top_k` / `any_top_p` / `any_greedy` are host-side summaries (from the lists the batch was built
    from) so the processing skips work no row asks for without reading the device.
    """

    temperature: torch.Tensor  # float32, 0 = greedy
    top_k: torch.Tensor  # long, 0 = off
    top_p: torch.Tensor  # float32, 1 = off
    max_top_k: int = -1  # largest top_k in use (0: none; -1: unknown, check everything)
    any_top_p: bool = True
    any_greedy: bool = True

    @classmethod
    def from_list(cls, params: list[SamplingParams], device: torch.device | str) -> "RowParams":
        return cls(torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device),
                   torch.tensor([p.top_k for p in params], dtype=torch.long, device=device),
                   torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
                   max((p.top_k for p in params), default=0), any(p.top_p < 1.0 for p in params),
                   any(p.greedy for p in params))

    def _rows(self, tensors: tuple[torch.Tensor, ...]) -> "RowParams":
        return RowParams(*tensors, self.max_top_k, self.any_top_p, self.any_greedy)

    def repeat(self, times: int) -> "RowParams":
        """Each row's parameters repeated `times` times in a row (rows with several positions)."""
        return self._rows(tuple(t.repeat_interleave(times) for t in (self.temperature, self.top_k, self.top_p)))

    def select(self, index: torch.Tensor) -> "RowParams":
        """The rows at `index` [M] (the summaries stay valid upper bounds)."""
        return self._rows(tuple(t[index] for t in (self.temperature, self.top_k, self.top_p)))


def processed_probs_rows(logits: torch.Tensor, params: RowParams) -> torch.Tensor:
    """`processed_probs` with per-row parameters: logits `[R, V]` -> float32 probs `[R, V]`.

    Row r equals `processed_probs(logits[r], SamplingParams(temperature[r], top_k[r], top_p[r]))`
    (same operations in the same order), so target and draft rows stay processed identically.
    """
    logits = logits.float()
    vocab = logits.shape[-1]
    temp = params.temperature.unsqueeze(-1)  # [R, 1]
    greedy = temp == 0
    scaled = logits / torch.where(greedy, torch.ones_like(temp), temp)
    kmax = vocab if params.max_top_k < 0 else min(params.max_top_k, vocab)
    if kmax > 0:
        k = torch.where((params.top_k > 0) & (params.top_k < vocab), params.top_k, vocab)  # [R]
        top = torch.topk(scaled, kmax, dim=-1).values  # [R, kmax] descending
        kth = top.gather(-1, (k.clamp(max=kmax) - 1).unsqueeze(-1))  # [R, 1]
        cut = (k < vocab).unsqueeze(-1) & (scaled < kth)
        scaled = scaled.masked_fill(cut, float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    if params.any_top_p:
        top_p = params.top_p.unsqueeze(-1)  # [R, 1]
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs
        drop = torch.zeros_like(mass_before, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
        drop = drop & (top_p < 1.0)
        nucleus = probs.masked_fill(drop, 0.0)
        probs = torch.where(top_p < 1.0, nucleus / nucleus.sum(-1, keepdim=True), probs)
    if params.any_greedy:
        probs = torch.where(greedy, torch.nn.functional.one_hot(logits.argmax(-1), vocab).float(), probs)
    return probs


class Sampler(Protocol):
    """How a drafter turns logits into its exact draft distribution and draws from it, row by row."""

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [R, V] -> processed float32 probs [R, V]."""
        ...

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        """probs [R, V] -> token ids [R] (argmax for greedy rows)."""
        ...

    def stack(self, probs: list[torch.Tensor]) -> torch.Tensor:
        """The slots' [R, V] distributions -> [R, γ, V] (where the caller wants them: a graph's shared buffer)."""
        ...


@runtime_checkable
class MarkovSampler(Sampler, Protocol):
    """A sampler that can also run a low-rank Markov head's whole γ-slot loop itself (fused kernels)."""

    def markov_slots(self, base: torch.Tensor, anchor_ids: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """base [R, γ, V] logits, anchor ids [R], the head's W1 / W2 [V, r] -> (ids [R, γ], probs [R, γ, V]):
        slot k's logits are ``base[:, k] + W2 W1[token k-1]``; None where it cannot (the caller loops)."""
        ...


class ScalarSampler:
    """One `SamplingParams` for every row and one `torch.Generator` (the Python API's default)."""

    def __init__(self, params: SamplingParams, generator: torch.Generator | None = None) -> None:
        self.params, self.generator = params, generator

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return processed_probs(logits, self.params)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        return draw(probs, self.params, self.generator)

    def stack(self, probs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(probs, dim=1)


def as_sampler(params: SamplingParams | Sampler, generator: torch.Generator | None = None) -> Sampler:
    return ScalarSampler(params, generator) if isinstance(params, SamplingParams) else params
