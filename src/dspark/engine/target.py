"""The target side of a runner: one forward over a `FlatBatch`, whatever model code runs it.

`TargetForward` is what `dspark.engine.step` needs from a target: logits at the batch's
`logits_indices`, the drafter's features at `target_layer_ids` and the final-normed hidden state, all
from the same forward; plus `release(req_id)` for backends that keep per-request state. Two backends:
`HFTarget` (transformers, the oracle) and `DenseTarget` (our own forward over the paged cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from dspark.engine.batch import FlatBatch
from dspark.engine.messages import ScheduledSeq


@dataclass
class TargetOutput:
    logits: torch.Tensor  # [M, V] at batch.logits_indices
    features: torch.Tensor | None  # [N, n·d] raw layer outputs at the requested layer ids
    last_hidden: torch.Tensor  # [N, d] final-normed


class TargetForward(Protocol):
    vocab_size: int
    device: torch.device
    supports_prefix_caching: bool

    def forward(self, batch: FlatBatch, seqs: list[ScheduledSeq], layer_ids: list[int] | None) -> TargetOutput: ...

    def release(self, req_id: str) -> None: ...
