"""One engine step as one function: verify -> commit -> absorb -> propose, for every drafter and policy.

`speculative_step(plan, target, drafter)`:
1. **verify**: one target forward over the step's flat batch (prefill chunks and verify blocks of any
   length, back to back); every row's drafts are accepted or rejected by the lossless rule
   (`dspark.verify.rejection_sample`, one-hot distributions for greedy rows). Every row is a verify
   row: a decode row verifies its ℓ waiting drafts (ℓ = 0: plain decoding), a prefill row verifies
   none, so the token it draws is its first token (rows in mid-prompt draw one nobody reads);
2. **commit**: the accepted drafts plus the recovered/bonus token of every decode row, the whole chunk
   of a prefill row (the scheduler appends them; rejected positions' K/V are overwritten next step);
3. **absorb**: the drafter takes the target's features at every newly committed position into its
   context K/V (in the same pages as the target's), so both caches always cover the same positions:
   a `FlatAbsorber` (DSpark, DFlash) over the step's flat tokens and the target's slot mapping, a
   `FlatChainAbsorber` (MTP-1, Eagle3) the same way plus one attending query per row (`_flat_update`),
   other drafters over per-row left-aligned updates `[B, W]`;
4. **propose**: rows that decode next step draft γ tokens after their new anchor, recording the exact
   draft distributions and the calibrated confidences the policy ranks next step.
Randomness: each row reads its request's stream at the counter the scheduler assigned (γ+1 draws for
verification, the last of them for the final token, then γ for drafting), so results never depend on
the batch.

The function only reads tensors and host-side sizes of the plan (never the device) and has no branch
on which rows prefill, so one CUDA graph can capture it whole, mixed steps included
(`dspark.engine.graphed_step`). ``plan.forced_accepted`` (benchmarks only, see
`dspark.engine.synthetic`) replaces the rejection rule by given accepted counts: NOT lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.profiler import record_function

from dspark.counter_rng import counter_uniforms
from dspark.drafters.base import ContextUpdate, Drafter, FlatAbsorber, FlatChainAbsorber, FlatUpdate, Proposal
from dspark.engine.batch import FlatBatch
from dspark.engine.draft_kv import PagedContextKV
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import ScheduledSeq
from dspark.engine.row_sampler import RowSampler
from dspark.engine.target import TargetForward
from dspark.sampling import RowParams, processed_probs_rows
from dspark.verify import forced_accept, rejection_sample


@dataclass
class StepPlan:
    """Tensors of one step (built by the runner from a `SchedulerOutput`). B seqs, N flat tokens, M logits rows."""

    batch: FlatBatch
    seqs: list[ScheduledSeq]
    params: RowParams  # [B]
    seeds: torch.Tensor  # [B] int64
    counters: torch.Tensor  # [B] int64, first draw of this step per seq
    logit_rows: torch.Tensor  # [M] seq index of each logits row (M >= 1)
    verify_logits: torch.Tensor  # [B, K+1] logits row of slot j of seq b (clamped past ℓ; prefill rows: their last)
    draft_ids: torch.Tensor  # [B, K] drafts being verified (padded)
    draft_probs: torch.Tensor  # [B, K, V]
    num_verify: torch.Tensor  # [B] ℓ (0 for prefill rows)
    num_new_host: torch.Tensor  # [B] positions a prefill row commits (its chunk), 0 for decode rows
    update_index: torch.Tensor  # [B, W] flat token of slot w of seq b (clamped); W = 0 for a flat absorber
    next_known: torch.Tensor  # [B, W] token following each position when known on the host (else -1)
    known_anchor: torch.Tensor  # [B] the token after a prefill chunk when known on the host (its anchor if final), else -1
    sampled_rows: list[int]  # seqs whose drawn tokens commit (decode rows, prefills drawing their first token)
    draft_rows: list[int]  # seq indices that draft after this step
    draft_index: torch.Tensor  # [Rd] the same on the device
    num_drafts: int  # γ
    max_context: int  # host bound of context_lens
    draft_length: int  # host bound of context_lens + committed positions (what the proposal's context reads)
    forced_accepted: torch.Tensor | None = None  # [B] synthetic acceptance (benchmarks only, NOT lossless)
    proposal_out: torch.Tensor | None = None  # [≥R, γ, V] where the proposal's distributions go (graphs: shared)


@dataclass
class StepResult:
    out_ids: torch.Tensor  # [B, K+1] accepted drafts, recovered/bonus (or first) token, -1 padding
    num_accepted: torch.Tensor  # [B]
    proposal: Proposal | None  # for plan.draft_rows


def _verify(plan: StepPlan, target_probs: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = target_probs[plan.verify_logits]  # [B, K+1, V]
    u = uniforms[:, : plan.num_drafts + 1]  # [B, γ+1]: column k tests slot k, the last draws the final token
    if plan.forced_accepted is not None:
        return forced_accept(plan.draft_ids, probs, plan.forced_accepted, uniforms=u)
    return rejection_sample(plan.draft_ids, plan.draft_probs, probs, plan.num_verify, uniforms=u)


def _context_update(plan: StepPlan, features: torch.Tensor | None, last_hidden: torch.Tensor, out_ids: torch.Tensor,
                    num_new: torch.Tensor) -> ContextUpdate:
    """The positions every seq commits this step, left-aligned [B, W] (drafters that absorb per row)."""
    width = plan.update_index.shape[1]
    k1 = out_ids.shape[1]
    drawn = out_ids[:, :width] if width <= k1 else torch.cat([out_ids, out_ids.new_full((out_ids.shape[0], width - k1), -1)], 1)
    prefill = (plan.num_new_host > 0).unsqueeze(1)
    known = torch.where(plan.next_known >= 0, plan.next_known, out_ids[:, :1])  # a prefill's unknown next = its first token
    next_ids = torch.where(prefill, known, drawn)
    feats = features if features is not None else last_hidden[:, :0]
    return ContextUpdate(feats[plan.update_index], last_hidden[plan.update_index], next_ids.clamp_min(0), num_new)


def _flat_update(plan: StepPlan, features: torch.Tensor | None, last_hidden: torch.Tensor, num_new: torch.Tensor,
                 anchors: torch.Tensor) -> FlatUpdate:
    """The step's flat positions for a `FlatChainAbsorber`: the token after flat position i is the step's token
    i+1 up to its row's last committed position, whose next is the row's new anchor: the recovered / bonus or
    first token, or the token after a prefill chunk where the host knows it (`known_anchor`)."""
    batch = plan.batch
    ids, starts = batch.input_ids, batch.query_start
    flat = torch.arange(ids.shape[0], device=ids.device)
    row = torch.searchsorted(starts[1:], flat, right=True).clamp_max(starts.shape[0] - 2)  # padding: the last row
    last = (starts[:-1] + num_new - 1).clamp(0, ids.shape[0] - 1)  # [B] (padding rows, no tokens: the last one)
    following = torch.cat([ids[1:], ids[-1:]])
    next_ids = torch.where(flat < last[row], following, anchors[row])
    feats = features if features is not None else last_hidden[:, :0]
    return FlatUpdate(feats, last_hidden, next_ids, batch.positions, batch.slot_mapping, last)


def speculative_step(plan: StepPlan, target: TargetForward, drafter: Drafter | None, draft_kv: PagedKVCache | None
                     ) -> StepResult:
    """Run one step (see the module docstring); returns device tensors, read by the runner once."""
    batch = plan.batch
    layer_ids = drafter.config.target_layer_ids if drafter is not None else None
    with record_function("step.target"):
        out = target.forward(batch, plan.seqs, layer_ids)  # 1. verify (and prefill)
    with record_function("step.verify"):
        target_probs = processed_probs_rows(out.logits, plan.params.select(plan.logit_rows))
        g = plan.num_drafts  # every draw of the step at once: γ+1 to verify, then γ to draft
        uniforms = counter_uniforms(plan.seeds, plan.counters, 2 * g + 1 if drafter is not None else g + 1)  # [B, ·]
        out_ids, num_accepted = _verify(plan, target_probs, uniforms)  # 2. commit
    if drafter is None or draft_kv is None:
        return StepResult(out_ids, num_accepted, None)

    num_new = torch.where(plan.num_new_host > 0, plan.num_new_host, num_accepted + 1)  # 3. absorb
    lengths = batch.context_lens
    drawn = out_ids.gather(1, num_accepted.unsqueeze(1)).squeeze(1)  # the recovered/bonus or first token
    anchors = torch.where(plan.known_anchor >= 0, plan.known_anchor, drawn)
    carry = None
    with record_function("step.absorb"):
        if isinstance(drafter, FlatAbsorber):
            drafter.absorb_flat(draft_kv, out.features, batch.positions, batch.slot_mapping)
        elif isinstance(drafter, FlatChainAbsorber):
            update = _flat_update(plan, out.features, out.last_hidden, num_new, anchors)
            past = drafter.state_for(PagedContextKV(draft_kv, batch.block_tables, lengths + num_new - 1, plan.draft_length))
            carry = drafter.absorb_flat_chain(draft_kv, update, past)
        else:
            update = _context_update(plan, out.features, out.last_hidden, out_ids, num_new)
            state = drafter.state_for(PagedContextKV(draft_kv, batch.block_tables, lengths, plan.max_context))
            carry = drafter.absorb(state, update)
    if not plan.draft_rows:
        return StepResult(out_ids, num_accepted, None)

    rows = plan.draft_index  # 4. propose
    sub = drafter.state_for(PagedContextKV(draft_kv, batch.block_tables[rows], (lengths + num_new)[rows],
                                           plan.draft_length))
    sampler = RowSampler(plan.params.select(rows), plan.seeds[rows], plan.counters[rows] + g + 1, uniforms[rows, g + 1:],
                         plan.proposal_out)
    with record_function("step.propose"):
        proposal = drafter.draft(sub, None if carry is None else carry[rows], anchors[rows], sampler)
    return StepResult(out_ids, num_accepted, proposal)
