"""Deterministic data order for training: an endless stream of seeded permutations.

Stream position p belongs to epoch p // n and is `perm_epoch[p % n]`, with `perm_epoch` drawn from a
generator seeded by (seed, epoch). Optimizer step i consumes positions [i·G, (i+1)·G) for a global
batch G; rank r takes every world-th of them. So the samples of any step are a pure function of
(seed, step, rank): resuming at step i replays exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib

import torch


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def step_indices(n: int, seed: int, step: int, global_batch: int, rank: int = 0, world: int = 1) -> list[int]:
    """Dataset indices this rank uses at optimizer step `step`."""
    out, cache = [], {}
    for p in range(step * global_batch + rank, (step + 1) * global_batch, world):
        epoch = p // n
        if epoch not in cache:
            cache[epoch] = epoch_permutation(n, seed, epoch)
        out.append(int(cache[epoch][p % n]))
    return out


def micro_seed(seed: int, step: int, rank: int, micro: int) -> int:
    """A seed for the anchor draw of one micro-batch, independent of the run's history."""
    digest = hashlib.sha256(f"{seed}:{step}:{rank}:{micro}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
