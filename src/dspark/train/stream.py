"""Deterministic data order for training: an endless stream of seeded permutations.

Stream position p belongs to epoch p // n and is `perm_epoch[p % n]`, with `perm_epoch` drawn from a
generator seeded by (seed, epoch). Optimizer step i consumes positions [i·G, (i+1)·G) for a global
batch G; rank r takes every world-th of them. So the samples of any step are a pure function of
(seed, step, rank): resuming at step i replays exactly what an uninterrupted run would have seen.

`StepBatches[i]` is rank r's CPU micro-batches of step i, anchor seeds included, built from that alone,
so `num_workers` background processes (a `DataLoader` over step numbers) prepare exactly the batches
the training process would have built itself.
"""

from __future__ import annotations

import hashlib
from typing import Any

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


class StepBatches(torch.utils.data.Dataset):
    """Step i -> [(micro-batch, micro seed)]: one rank's padded CPU batches of optimizer step i.

    The anchor seed of a sample follows its slot in the global batch, not the rank or micro-batch, so any
    world size / micro_batch draws the same anchors."""

    def __init__(self, train_set: torch.utils.data.Subset, seed: int, global_batch: int, micro_batch: int,
                 rank: int = 0, world: int = 1) -> None:
        self.train_set, self.seed, self.global_batch, self.micro_batch = train_set, seed, global_batch, micro_batch
        self.rank, self.world = rank, world

    def items(self, step: int) -> list[list[tuple[int, int]]]:
        """This rank's micro-batches of (dataset index, anchor seed) at `step`."""
        local = step_indices(len(self.train_set), self.seed, step, self.global_batch, self.rank, self.world)
        slots = range(self.rank, self.global_batch, self.world)  # the positions step_indices walked
        items = [(self.train_set.indices[i], micro_seed(self.seed, step, 0, slot)) for i, slot in zip(local, slots)]
        return [items[i: i + self.micro_batch] for i in range(0, len(items), self.micro_batch)]

    def __len__(self) -> int:
        return 1 << 62  # endless; a sampler picks the steps

    def __getitem__(self, step: int) -> list[tuple[dict[str, Any], int]]:
        from dspark.train.data import collate_padded

        out = []
        for m, items in enumerate(self.items(step)):
            batch = collate_padded([self.train_set.dataset[i] for i, _ in items])
            batch["anchor_seeds"] = torch.tensor([s for _, s in items], dtype=torch.long)  # [B]
            out.append((batch, micro_seed(self.seed, step, self.rank, m)))
        return out


def unbatched(item: Any) -> Any:
    """`DataLoader` collate for `StepBatches`: a step's batches are already built."""
    return item
