"""One engine step as one function: verify -> commit -> absorb -> propose, for every drafter and policy.

`speculative_step(plan, target, drafter)`:
1. **verify**: one target forward over the step's flat batch (prefill chunks and verify blocks of any
   length, back to back); each verify row's drafts are accepted or rejected by the lossless rule
   (`dspark.verify.rejection_sample`, one-hot distributions for greedy rows), and fresh requests whose
   prefill ends here sample their first token;
2. **commit**: the accepted drafts plus the recovered/bonus token of every verify row (the scheduler
   appends them; rejected positions' K/V are simply overwritten next step);
3. **absorb**: the drafter takes the target's features at every newly committed position into its
   context K/V (in the same pages as the target's), so both caches always cover the same positions;
4. **propose**: rows that decode next step draft γ tokens after their new anchor, recording the exact
   draft distributions and the calibrated confidences the policy ranks next step.
Randomness: each row reads its request's stream at the counter the scheduler assigned (γ+1 draws for
verification or the first token, then γ for drafting), so results never depend on the batch.

The function only reads tensors and host-side sizes of the plan (never the device), so one CUDA graph
can capture it whole (`dspark.engine.graphed_step`). ``plan.forced_accepted`` (benchmarks only, see
`dspark.engine.synthetic`) replaces the rejection rule by given accepted counts: NOT lossless.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dspark.counter_rng import counter_uniforms
from dspark.drafters.base import ContextUpdate, Drafter, Proposal
from dspark.engine.batch import FlatBatch
from dspark.engine.draft_kv import PagedContextKV
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import ScheduledSeq
from dspark.engine.row_sampler import RowSampler
from dspark.engine.target import TargetForward
from dspark.sampling import RowParams, processed_probs_rows, sample_from
from dspark.verify import forced_accept, rejection_sample


@dataclass
class StepPlan:
    """Tensors of one step (built by the runner from a `SchedulerOutput`). B seqs, N flat tokens."""

    batch: FlatBatch
    seqs: list[ScheduledSeq]
    params: RowParams  # [B]
    seeds: torch.Tensor  # [B] int64
    counters: torch.Tensor  # [B] int64, first draw of this step per seq
    logit_rows: torch.Tensor  # [M] seq index of each logits row
    verify_rows: list[int]  # seq indices with a verify block (host copy of verify_index)
    verify_index: torch.Tensor  # [Rv] the same on the device
    verify_logits: torch.Tensor  # [Rv, K+1] logits row of slot j of verify row i (clamped past ℓ)
    draft_ids: torch.Tensor  # [Rv, K] drafts being verified (padded)
    draft_probs: torch.Tensor  # [Rv, K, V]
    num_verify: torch.Tensor  # [Rv]
    first_rows: list[int]  # seq indices sampling their first token
    first_index: torch.Tensor  # [Rf] the same on the device
    first_logits: torch.Tensor  # [Rf] their logits rows
    update_index: torch.Tensor  # [B, W] flat token of slot w of seq b (clamped), W = max query length
    next_known: torch.Tensor  # [B, W] token following each position when known on the host (else -1)
    num_new_host: torch.Tensor  # [B] positions each seq commits when known on the host (prefill rows)
    draft_rows: list[int]  # seq indices that draft after this step
    draft_index: torch.Tensor  # [Rd] the same on the device
    known_anchor: torch.Tensor  # [B] next anchor when known on the host (resumed prefill), else -1
    num_drafts: int  # γ
    max_context: int  # max(context_lens), known on the host
    forced_accepted: torch.Tensor | None = None  # [Rv] synthetic acceptance (benchmarks only, NOT lossless)


@dataclass
class StepResult:
    out_ids: torch.Tensor  # [Rv, K+1] accepted drafts, recovered/bonus token, -1 padding
    num_accepted: torch.Tensor  # [Rv]
    first_ids: torch.Tensor  # [Rf]
    proposal: Proposal | None  # for plan.draft_rows


def _verify(plan: StepPlan, target_probs: torch.Tensor, uniforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = target_probs[plan.verify_logits]  # [Rv, K+1, V]
    u = uniforms[plan.verify_index, : plan.num_drafts + 1]  # [Rv, γ+1]
    if plan.forced_accepted is not None:
        return forced_accept(plan.draft_ids, probs, plan.forced_accepted, uniforms=u)
    return rejection_sample(plan.draft_ids, plan.draft_probs, probs, plan.num_verify, uniforms=u)


def _context_update(plan: StepPlan, features: torch.Tensor | None, last_hidden: torch.Tensor, out_ids: torch.Tensor,
                    num_accepted: torch.Tensor, first_ids: torch.Tensor) -> ContextUpdate:
    """The positions every seq commits this step, left-aligned [B, W]."""
    device = last_hidden.device
    width = plan.update_index.shape[1]
    next_ids = plan.next_known.clone()
    num_new = plan.num_new_host.clone()
    if plan.verify_rows:
        rows = plan.verify_index
        k1 = out_ids.shape[1]
        padded = torch.full((len(plan.verify_rows), width), -1, dtype=torch.long, device=device)
        padded[:, : min(width, k1)] = out_ids[:, :width]
        next_ids[rows] = padded
        num_new[rows] = num_accepted + 1
    if plan.first_rows:
        rows = plan.first_index
        next_ids[rows, plan.num_new_host[rows] - 1] = first_ids
    feats = features if features is not None else last_hidden[:, :0]
    return ContextUpdate(feats[plan.update_index], last_hidden[plan.update_index], next_ids.clamp_min(0), num_new)


def speculative_step(plan: StepPlan, target: TargetForward, drafter: Drafter | None, draft_kv: PagedKVCache | None
                     ) -> StepResult:
    """Run one step (see the module docstring); returns device tensors, read by the runner once."""
    batch = plan.batch
    layer_ids = drafter.config.target_layer_ids if drafter is not None else None
    out = target.forward(batch, plan.seqs, layer_ids)  # 1. verify (and prefill)
    target_probs = processed_probs_rows(out.logits, plan.params.select(plan.logit_rows))
    device = target_probs.device
    g = plan.num_drafts  # every draw of the step at once: γ+1 to verify (or the first token), then γ to draft
    uniforms = counter_uniforms(plan.seeds, plan.counters, 2 * g + 1 if drafter is not None else g + 1)  # [B, ·]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    out_ids, num_accepted = _verify(plan, target_probs, uniforms) if plan.verify_rows else (empty.view(0, 1), empty)  # 2. commit
    first_ids = empty
    if plan.first_rows:
        first_ids = sample_from(target_probs[plan.first_logits], uniforms=uniforms[plan.first_index, 0])
    if drafter is None or draft_kv is None:
        return StepResult(out_ids, num_accepted, first_ids, None)

    update = _context_update(plan, out.features, out.last_hidden, out_ids, num_accepted, first_ids)  # 3. absorb
    lengths = batch.context_lens
    max_len = plan.max_context
    state = drafter.state_for(PagedContextKV(draft_kv, batch.block_tables, lengths, max_len))
    carry = drafter.absorb(state, update)
    if not plan.draft_rows:
        return StepResult(out_ids, num_accepted, first_ids, None)

    rows = plan.draft_index  # 4. propose
    anchors = plan.known_anchor.clone()
    if plan.verify_rows:
        anchors[plan.verify_index] = out_ids.gather(1, num_accepted.unsqueeze(1)).squeeze(1)
    if plan.first_rows:
        anchors[plan.first_index] = first_ids
    sub = drafter.state_for(PagedContextKV(draft_kv, batch.block_tables[rows], (lengths + update.num_new)[rows],
                                           max_len + update.next_ids.shape[1]))
    sampler = RowSampler(plan.params.select(rows), plan.seeds[rows], plan.counters[rows] + g + 1, uniforms[rows, g + 1:])
    proposal = drafter.draft(sub, None if carry is None else carry[rows], anchors[rows], sampler)
    return StepResult(out_ids, num_accepted, first_ids, proposal)
