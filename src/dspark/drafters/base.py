"""The drafter interface: what the decoder hands a drafter each round and what it gets back.

Every drafter (DSpark, DFlash, Eagle3, MTP-1) is an `nn.Module` with a `DrafterConfig` and:
* `init_from_target(target)`: copy the target's frozen input embedding and LM head;
* `new_state(batch, device)`: per-request inference state (its context caches);
* `absorb(state, update) -> carry`: take in the newly verified positions (`ContextUpdate`: the target's
  features there, the token that followed each one) — append their context K/V;
* `draft(state, carry, anchor_ids, sampler) -> Proposal`: draft `num_drafts` tokens after the anchor,
  returning the exact per-slot distributions they were drawn from (`sampler` applies each row's
  temperature / top-k / top-p and draws from each row's random stream);
* `propose(state, update, anchor_ids, params, generator)`: both in one call (the Python API);
* `context_layers` and `state_for(kv)`: how many K/V layers its context cache has, and the state
  object around a given cache (the engine passes a paged view, `dspark.engine.draft_kv`).
Drafters whose context K/V at a position depend on the target's features there and nothing else
(DSpark, DFlash) are also a `FlatAbsorber`: the engine hands them the step's flat token axis and the
target's own slot mapping (no per-row padding; positions later rejected are overwritten, like the target's).
The chain drafters (MTP-1, Eagle3) are a `FlatChainAbsorber`: their K/V at a position depend on its inputs
alone too (the target's feature there and the token that follows it), so they are written over the flat
axis the same way; only each row's last committed position attends (its output seeds the first draft).
Round flow: target verifies -> ContextUpdate -> drafter.absorb -> drafter.draft -> policy picks lengths -> verify.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from dspark.drafters.config import DrafterConfig
from dspark.sampling import Sampler, SamplingParams


@dataclass
class ContextUpdate:
    """Positions that became verified since the last round, per row (left-aligned, padded)."""

    features: torch.Tensor  # [R, T, n·d] target features at target_layer_ids
    last_hidden: torch.Tensor  # [R, T, d] final-normed target hidden state
    next_ids: torch.Tensor  # [R, T] the committed token that follows each position (last valid = anchor)
    num_new: torch.Tensor  # [R] valid entries per row


def concat_updates(first: ContextUpdate | None, second: ContextUpdate) -> ContextUpdate:
    """Row-wise concatenation of two left-aligned updates: row r = first's valid entries, then second's.

    Used when a round skips drafting: the positions it verified wait for the drafter's next `propose`.
    Entries past each row's total are zero.
    """
    if first is None or first.features.shape[1] == 0:
        return second
    if second.features.shape[1] == 0:
        return first
    num_new = first.num_new + second.num_new  # [R]
    width = max(int(num_new.max()), 1)
    pos = torch.arange(width, device=num_new.device).unsqueeze(0)  # [1, W]
    in_first = pos < first.num_new.unsqueeze(1)  # [R, W]
    valid = pos < num_new.unsqueeze(1)  # [R, W]
    idx_first = pos.clamp(max=first.features.shape[1] - 1).expand_as(in_first)  # [R, W]
    idx_second = (pos - first.num_new.unsqueeze(1)).clamp(0, second.features.shape[1] - 1)  # [R, W]

    def merge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [R, T_a, ...], [R, T_b, ...] -> [R, W, ...]
        shape = (-1, width) + (1,) * (a.dim() - 2)
        pick_a = a.gather(1, idx_first.reshape(shape).expand(-1, -1, *a.shape[2:]))
        pick_b = b.gather(1, idx_second.reshape(shape).expand(-1, -1, *b.shape[2:]))
        out = torch.where(in_first.reshape(shape), pick_a, pick_b)
        return torch.where(valid.reshape(shape), out, torch.zeros_like(out))

    return ContextUpdate(merge(first.features, second.features), merge(first.last_hidden, second.last_hidden),
                         merge(first.next_ids, second.next_ids), num_new)


@dataclass
class Proposal:
    draft_ids: torch.Tensor  # [R, K]
    draft_probs: torch.Tensor  # [R, K, V] float32, the processed distribution each draft was sampled from
    confidence: torch.Tensor | None = None  # [R, K] calibrated conditional survival c_k, or None


@dataclass
class BlockScores:
    """Teacher-forced outputs of one block placed right after a context (`score_block`)."""

    hidden: torch.Tensor  # [B, γ, d] after the final norm
    base_logits: torch.Tensor  # [B, γ, V]
    logits: torch.Tensor  # [B, γ, V] base + sequential-head bias (== base without a head)
    confidence_logits: torch.Tensor | None  # [B, γ] pre-sigmoid, uncalibrated


class ContextKV(Protocol):
    """A drafter's per-row context cache (`RaggedKV`, or the engine's `PagedContextKV`)."""

    length: torch.Tensor  # [R] cached positions per row
    max_length: int

    def write_positions(self, num_new: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def append(self, ks: list[torch.Tensor], vs: list[torch.Tensor], num_new: torch.Tensor) -> None: ...

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def pages(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """k, v caches `[num_pages, page_size, Hkv, D]` and block tables `[R, P]` (what paged kernels read)."""
        ...

    def valid_mask(self) -> torch.Tensor: ...


class DrafterState(Protocol):
    kv: ContextKV


class SlotWriter(Protocol):
    """A paged K/V store (`dspark.engine.kv_cache.PagedKVCache`): k, v [N, Hkv, D] at flat slots [N] (< 0: dropped).

    `k[layer]`, `v[layer]` are its pages `[num_pages, page_size, Hkv, D]` (fused kernels write them directly).
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None: ...


@dataclass
class FlatUpdate:
    """A step's positions on its flat token axis (N tokens, B rows), for a `FlatChainAbsorber`."""

    features: torch.Tensor  # [N, n·d] target features at target_layer_ids ([N, 0] when none are read)
    last_hidden: torch.Tensor  # [N, d] final-normed target hidden states
    next_ids: torch.Tensor  # [N] the committed token after each position (past a row's last committed one: any id)
    positions: torch.Tensor  # [N]
    slot_mapping: torch.Tensor  # [N] where each position's K/V goes (< 0: dropped)
    last_index: torch.Tensor  # [B] flat index of each row's last committed position


@runtime_checkable
class FlatChainAbsorber(Protocol):
    def absorb_flat_chain(self, cache: SlotWriter, update: FlatUpdate, past: DrafterState) -> torch.Tensor:
        """Write every flat position's K/V into `cache`; return the layer output at each row's last committed
        position [B, 1, d], attending over `past` (each row's context before that position)."""
        ...


def absorbs_flat(drafter: object) -> bool:
    """Whether the engine hands `drafter` the flat token axis (else per-row left-aligned updates [B, W])."""
    return isinstance(drafter, (FlatAbsorber, FlatChainAbsorber))


@runtime_checkable
class FlatAbsorber(Protocol):
    def absorb_flat(self, cache: SlotWriter, features: torch.Tensor, positions: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None: ...


class Drafter(Protocol):
    config: DrafterConfig
    context_layers: int

    def init_from_target(self, target: Any) -> None: ...

    def new_state(self, batch: int, device: torch.device) -> DrafterState: ...

    def state_for(self, kv: ContextKV) -> DrafterState: ...

    def absorb(self, state: DrafterState, update: ContextUpdate) -> torch.Tensor | None: ...

    def draft(self, state: DrafterState, carry: torch.Tensor | None, anchor_ids: torch.Tensor, sampler: Sampler) -> Proposal: ...

    def propose(self, state: DrafterState, update: ContextUpdate | None, anchor_ids: torch.Tensor,
                params: SamplingParams | Sampler, generator: torch.Generator | None = None) -> Proposal: ...


def copy_frozen_from_target(drafter: torch.nn.Module, target: Any) -> None:
    """Copy the target's input embedding and LM head into the drafter and freeze both."""
    emb, head = target.embed_tokens.weight, target.lm_head.weight
    for name, src in (("embed_tokens", emb), ("lm_head", head)):
        dst = getattr(drafter, name).weight
        if dst.shape != src.shape:
            from dspark.errors import IncompatibleModelsError

            raise IncompatibleModelsError(f"drafter {name} is {tuple(dst.shape)} but the target's is {tuple(src.shape)}")
        with torch.no_grad():
            dst.copy_(src.detach().to(dst.dtype))
        getattr(drafter, name).requires_grad_(False)


def calibrated_confidence(conf_logits: torch.Tensor, temperatures: torch.Tensor | None) -> torch.Tensor:
    """σ(logit_k / T_k): per-slot temperature scaling of the confidence logits [..., K]."""
    if temperatures is not None:
        conf_logits = conf_logits / temperatures[: conf_logits.shape[-1]].to(conf_logits)
    return torch.sigmoid(conf_logits.float())
