"""`SpeculativeDecoder`: the reference speculative decoding loop for a batch of prompts.

Per round, for every row (lockstep, per-row lengths):
  drafter.propose (absorbs the newly verified positions, drafts γ tokens with exact distributions)
  -> choose verification lengths (fixed, confidence threshold, or a scheduling policy)
  -> one target forward over [anchor, drafts[:ℓ]] -> verify.rejection_sample / greedy_verify
  -> commit accepted + recovered/bonus; the target cache masks rejected entries; the drafter receives
     the features of the committed positions next round.
`speculative=False` is plain target decoding through the same sampling and verification code (ℓ = 0).
A planner with a `should_draft(active)` method (a ``POLICY+gate`` `PolicyPlanner`) may skip drafting in a
round: that round runs plain, and the positions it verifies reach the drafter with the next proposal.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from dspark.decode.records import GenerationResult, RoundRecord
from dspark.decode.target_runner import TargetRunner
from dspark.drafters.base import ContextUpdate, Proposal, concat_updates
from dspark.errors import ConfigError, DSparkError
from dspark.sampling import SamplingParams, draw, processed_probs
from dspark.verify import greedy_verify, rejection_sample

# proposal -> verification lengths [R] (e.g. `decode.policy_planner.PolicyPlanner`)
LengthPlanner = Callable[[Proposal], torch.Tensor]


def threshold_lengths(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Verify up to the first slot whose conditional confidence is below `threshold`: [R, K] -> [R]."""
    return (confidence >= threshold).long().cumprod(dim=1).sum(dim=1)


class SpeculativeDecoder:
    def __init__(self, target: Any, drafter: Any = None) -> None:
        self.target = target
        self.drafter = drafter
        if drafter is not None:
            from dspark.formats import check_compatible

            check_compatible(drafter.config, target)
            drafter.to(target.device).eval()

    def _validate(self, prompts: list[list[int]], max_new_tokens: int) -> None:
        if not prompts:
            raise DSparkError("no prompts given")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise DSparkError(f"prompt {i} is empty")
            bad = [t for t in p if not 0 <= int(t) < self.target.vocab_size]
            if bad:
                raise DSparkError(f"prompt {i} has token ids outside the vocabulary [0, {self.target.vocab_size}): {bad[:5]}")
        if max_new_tokens < 1:
            raise DSparkError(f"max_new_tokens must be >= 1, got {max_new_tokens}")

    def _plan(self, proposal: Proposal, verify_len: int | None, threshold: float,
              planner: LengthPlanner | None) -> torch.Tensor:
        rows, k = proposal.draft_ids.shape
        if planner is not None:
            lengths = planner(proposal).to(proposal.draft_ids.device).long()
        else:
            lengths = torch.full((rows,), k if verify_len is None else min(int(verify_len), k), dtype=torch.long,
                                 device=proposal.draft_ids.device)
        if threshold > 0:
            if proposal.confidence is None:
                raise ConfigError("a confidence threshold needs a drafter with a confidence head")
            lengths = torch.minimum(lengths, threshold_lengths(proposal.confidence, threshold))
        return lengths

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, eos_token_id: int | list[int] | None = None,
                 verify_len: int | None = None, threshold: float = 0.0, speculative: bool = True,
                 planner: LengthPlanner | None = None) -> list[GenerationResult]:
        self._validate(prompts, max_new_tokens)
        speculative = speculative and self.drafter is not None
        if verify_len is not None and verify_len < 0:
            raise ConfigError(f"verify_len must be >= 0, got {verify_len}")
        params = SamplingParams(temperature, top_k, top_p)
        device = self.target.device
        gen = torch.Generator(device=device)
        gen.manual_seed(seed if seed is not None else int(torch.seed() % (2**63)))
        eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
        rows = len(prompts)
        layer_ids = self.drafter.config.target_layer_ids if speculative else None
        runner = TargetRunner(self.target, layer_ids)

        step = runner.prefill(prompts)
        last = torch.tensor([len(p) - 1 for p in prompts], device=device)
        first_logits = step.logits[torch.arange(rows, device=device), last]
        anchors = draw(processed_probs(first_logits, params), params, gen)  # [R]
        outputs: list[list[int]] = [[int(a)] for a in anchors.tolist()]
        rounds: list[list[RoundRecord]] = [[] for _ in range(rows)]
        reasons = ["eos" if int(a) in eos else ("length" if max_new_tokens == 1 else "") for a in anchors.tolist()]
        state, update = None, None
        if speculative:
            state = self.drafter.new_state(rows, device)
            next_ids = torch.zeros(rows, step.logits.shape[1], dtype=torch.long, device=device)
            for r, p in enumerate(prompts):
                next_ids[r, : len(p)] = torch.tensor(p[1:] + [outputs[r][0]], device=device)
            update = ContextUpdate(step.features, step.last_hidden, next_ids,
                                   torch.tensor([len(p) for p in prompts], device=device))

        gate = getattr(planner, "should_draft", None) if speculative else None
        while not all(reasons):
            done = torch.tensor([bool(x) for x in reasons], device=device)
            remaining = torch.tensor([max_new_tokens - len(o) for o in outputs], device=device)
            drafting = speculative and (gate is None or bool(gate(~done)))
            if drafting:
                proposal = self.drafter.propose(state, update, anchors, params, gen)
                lengths = self._plan(proposal, verify_len, threshold, planner)
            else:
                proposal = Proposal(anchors.new_zeros(rows, 0), torch.zeros(rows, 0, self.target.vocab_size, device=device))
                lengths = anchors.new_zeros(rows)
            lengths = torch.where(done, 0, torch.minimum(lengths, (remaining - 1).clamp_min(0)))
            width = int(lengths.max()) + 1
            drafts = proposal.draft_ids[:, : width - 1]
            step = runner.verify(torch.cat([anchors.unsqueeze(1), drafts], dim=1), torch.where(done, 0, lengths + 1))
            if params.greedy:
                out_ids, accepted = greedy_verify(drafts, step.logits.argmax(-1), lengths)
            else:
                out_ids, accepted = rejection_sample(drafts, proposal.draft_probs[:, : width - 1],
                                                     processed_probs(step.logits, params), lengths, gen)
            committed = torch.where(done, 0, accepted + 1)
            runner.commit(committed, width)
            self._commit_rows(out_ids, accepted, lengths, proposal, outputs, rounds, reasons, eos, max_new_tokens)
            anchors = out_ids.gather(1, accepted.unsqueeze(1)).squeeze(1).clamp_min(0)
            if speculative:
                new = ContextUpdate(step.features, step.last_hidden, out_ids.clamp_min(0), committed)
                update = new if drafting else concat_updates(update, new)
        return [GenerationResult(o, r, why) for o, r, why in zip(outputs, rounds, reasons)]

    @staticmethod
    def _commit_rows(out_ids: torch.Tensor, accepted: torch.Tensor, lengths: torch.Tensor, proposal: Proposal,
                     outputs: list[list[int]], rounds: list[list[RoundRecord]], reasons: list[str],
                     eos: set[int], max_new_tokens: int) -> None:
        out_list, acc_list, len_list = out_ids.tolist(), accepted.tolist(), lengths.tolist()
        drafts = proposal.draft_ids.tolist()
        conf = proposal.confidence.tolist() if proposal.confidence is not None else None
        for r in range(len(outputs)):
            if reasons[r]:
                continue
            new = out_list[r][: acc_list[r] + 1]
            cut = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
            new = new[:cut]
            outputs[r].extend(new)
            rounds[r].append(RoundRecord(len(drafts[r]), len_list[r], acc_list[r], len(new), drafts[r],
                                         None if conf is None else conf[r]))
            if cut < acc_list[r] + 1 or (new and new[-1] in eos):
                reasons[r] = "eos"
            elif len(outputs[r]) >= max_new_tokens:
                reasons[r] = "length"
