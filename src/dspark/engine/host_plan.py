"""`HostPlan`: one step's inputs on the host (numpy, unpadded), and their eager upload into a `StepPlan`.

Where it sits: `dspark.engine.runner.Runner._plan` builds a `HostPlan` from a `SchedulerOutput` (every
integer of the step in numpy, the sampling floats, the host-side summaries, the waiting drafts'
distributions per row). A step function that can take host inputs itself (`GraphedStep.upload`: the
padded layout of its CUDA graphs, one copy) receives it as is; every other step gets `upload_plan`'s
`StepPlan`: every integer packed into one int64 buffer and sent in one host-to-device copy, the floats
in a second, the waiting distributions stacked on the device. Both give the same values to
`dspark.engine.step.speculative_step`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dspark.engine.batch import FlatBatch
from dspark.engine.messages import ScheduledSeq
from dspark.engine.step import StepPlan
from dspark.sampling import RowParams


@dataclass
class HostPlan:
    """A step of B seqs, N flat tokens, M logits rows, K = γ drafts, W update columns; int64 unless noted."""

    seqs: list[ScheduledSeq]
    input_ids: np.ndarray  # [N]
    positions: np.ndarray  # [N]
    slots: np.ndarray  # [N]
    query_start: np.ndarray  # [B+1]
    context_lens: np.ndarray  # [B]
    tables: np.ndarray  # [B, pages] page ids, -1 padded
    logits_indices: np.ndarray  # [M]
    seeds: np.ndarray  # [B]
    counters: np.ndarray  # [B]
    logit_rows: np.ndarray  # [M]
    verify_logits: np.ndarray  # [B, K+1]
    draft_ids: np.ndarray  # [B, K]
    num_verify: np.ndarray  # [B]
    num_new: np.ndarray  # [B]
    update_index: np.ndarray  # [B, W]
    next_known: np.ndarray  # [B, W]
    known_anchor: np.ndarray  # [B]
    top_k: np.ndarray  # [B]
    temperature: np.ndarray  # [B] float32
    top_p: np.ndarray  # [B] float32
    forced: np.ndarray | None  # [B] synthetic acceptance (benchmarks only, NOT lossless)
    draft_index: np.ndarray  # [Rd] = draft_rows
    sampled_rows: list[int]
    draft_rows: list[int]
    waiting_probs: list[torch.Tensor | None]  # [B] the [≥K, V] distributions of a row's waiting drafts (None: none verified)
    max_top_k: int
    any_top_p: bool
    any_greedy: bool
    max_query_len: int
    max_context: int
    draft_length: int
    num_drafts: int
    vocab_size: int

    @property
    def num_seqs(self) -> int:
        return len(self.seqs)


def stack_waiting_probs(host: HostPlan, device: torch.device) -> torch.Tensor:
    """Exact distributions of the waiting drafts [B, K, V], one stack (zeros for rows verifying none).

    Slots past a row's ℓ hold whatever its proposal had: `rejection_sample` never reads them.
    """
    k, probs = host.num_drafts, host.waiting_probs
    if k == 0 or all(p is None for p in probs):
        return torch.zeros(host.num_seqs, k, host.vocab_size, device=device)
    empty = torch.zeros(k, host.vocab_size, dtype=torch.float32, device=device)
    return torch.stack([empty if p is None else p[:k] for p in probs])


def upload_plan(host: HostPlan, device: torch.device) -> StepPlan:
    """The eager `StepPlan`: every integer in ONE int64 host-to-device copy (views split off), the floats in one more."""
    parts = [host.input_ids, host.positions, host.slots, host.query_start, host.context_lens, host.tables,
             host.logits_indices, host.seeds, host.counters, host.logit_rows, host.verify_logits, host.draft_ids,
             host.num_verify, host.update_index, host.next_known, host.num_new, host.draft_index, host.known_anchor,
             host.top_k, host.forced if host.forced is not None else np.zeros(0, dtype=np.int64)]
    packed = torch.from_numpy(np.concatenate([p.reshape(-1) for p in parts]))
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    else:
        packed = packed.to(device)
    views = [v if p.ndim == 1 else v.view(p.shape) for v, p in zip(torch.split(packed, [p.size for p in parts]), parts)]
    (ids, pos, slots, qstart, ctx, tables, logits_indices, seeds, counters, logit_rows, verify_logits, draft_ids,
     num_verify, update_index, next_known, num_new, draft_index, known_anchor, top_k, forced) = views
    floats = torch.from_numpy(np.stack([host.temperature, host.top_p])).to(device)
    params = RowParams(floats[0], top_k, floats[1], host.max_top_k, host.any_top_p, host.any_greedy)
    batch = FlatBatch(ids, pos, slots, qstart, ctx, tables.int(), logits_indices, max_query_len=host.max_query_len,
                      max_context_len=host.max_context)
    return StepPlan(batch, host.seqs, params, seeds, counters, logit_rows, verify_logits, draft_ids,
                    stack_waiting_probs(host, device), num_verify, num_new, update_index, next_known, known_anchor,
                    host.sampled_rows, host.draft_rows, draft_index, host.num_drafts, host.max_context,
                    host.draft_length, forced if host.forced is not None else None)
