"""Counter-based random numbers: uniform draws that depend only on (seed, counter), never on batching.

The engine gives every request its own stream: the k-th uniform of request r is
``uniform(seed_r, counter_r + k)``, computed by a SplitMix64-style integer hash on int64 tensors. So a
request draws the same numbers alone or in a batch of 32, after a preemption, on CPU or GPU, with no
generator objects and no host synchronisation (the hash is plain tensor arithmetic, graph-capturable).

int64 arithmetic in torch wraps modulo 2^64; right shifts are arithmetic, so each shift is masked to
make it logical. The uniforms carry 53 random bits (every float64 in [0, 1) on a 2^-53 grid).
"""

from __future__ import annotations

import torch


def _signed(x: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return x - (1 << 64) if x >= (1 << 63) else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)
_SEED_MUL = _signed(0xD1342543DE82EF95)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser of int64 tensors (bijective on 64-bit patterns)."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MUL1
    x = (x ^ _shr(x, 27)) * _MUL2
    return x ^ _shr(x, 31)


def counter_uniforms(seeds: torch.Tensor, counters: torch.Tensor, num: int) -> torch.Tensor:
    """Uniforms in [0, 1): seeds [R], counters [R] (int64) -> [R, num] float64, entry k from counter+k."""
    steps = torch.arange(num, dtype=torch.int64, device=seeds.device)  # [num]
    key = mix64(seeds.to(torch.int64) * _SEED_MUL)  # [R]: decorrelates neighbouring seeds
    bits = mix64(key.unsqueeze(1) ^ mix64(counters.to(torch.int64).unsqueeze(1) + steps))  # [R, num]
    return _shr(bits, 11).to(torch.float64) * (2.0 ** -53)
