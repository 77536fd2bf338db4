"""`Scheduler`: the engine's CPU half — which requests run this step, with how many tokens each.

No torch here. Each `schedule()` call builds one `SchedulerOutput`:
1. Decoding requests first: each verifies its anchor plus ℓ waiting drafts, ℓ chosen by the
   `VerifyPlanner` from the drafts' calibrated survival at the current load (capped so the round cannot
   pass max_tokens or max_model_len). A request that cannot get the pages for its block preempts the
   most recently admitted running request (recompute: its pages are freed, it re-queues at the front
   and later re-prefills prompt + output so far); nothing is dropped.
2. Then prefill, within the step's token budget: running requests in the middle of a chunked prefill,
   then waiting requests in arrival order (prefix-cache hits skip their cached pages), while there are
   sequences and pages to spare.
3. Whether the runner drafts after this step (the planner's gate), for the next round.
`update()` applies the runner's answer: appends committed tokens, stops at stop tokens / max_tokens /
max_model_len, keeps the new drafts' survival for the next plan, registers completed pages in the prefix
cache and releases finished requests.
"""

from __future__ import annotations

import itertools
import operator
from collections import deque

import numpy as np

from dspark.engine.block_manager import BlockManager
from dspark.engine.messages import NewRequest, RunnerOutput, ScheduledSeq, SchedulerOutput
from dspark.engine.options import EngineConfig
from dspark.engine.request import Request, Status
from dspark.engine.results import RoundRecord
from dspark.scheduling.planner import Planner


def survival_of(confidence: list[float]) -> list[float]:
    """Prefix survival a_j = c_1 ··· c_j of one row, multiplied left to right in float64 (as np.cumprod)."""
    return list(itertools.accumulate(map(float, confidence), operator.mul))


def draw_stride(num_drafts: int) -> int:
    """Draws a request reserves per sampling step: γ+1 for verification (or the first token), γ for drafting."""
    return 2 * num_drafts + 2


class Scheduler:
    def __init__(self, config: EngineConfig, blocks: BlockManager, planner: Planner, num_drafts: int,
                 eos_token_ids: set[int], max_model_len: int) -> None:
        self.config, self.blocks, self.planner = config, blocks, planner
        self.num_drafts = num_drafts
        self.eos = set(eos_token_ids)
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}  # in admission order (the last is preempted first)
        self.requests: dict[str, Request] = {}
        self.released: list[str] = []  # runner state to drop at the next step
        self.step_index = 0
        self.num_preemptions = 0
        self._stop_sets: dict[str, tuple[object, frozenset[int]]] = {}  # req_id -> (its options, `_stops`)

    # ------------------------------------------------------------------------------ requests
    def add(self, req: Request) -> None:
        req.arrival = self.step_index
        self.requests[req.req_id] = req
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, req_id: str, reason: str) -> bool:
        """Finish a request now (abort, or a stop string the caller found); False if unknown or done."""
        req = self.requests.get(req_id)
        if req is None or req.finished:
            return False
        if req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, reason)
        return True

    def _finish(self, req: Request, reason: str) -> None:
        req.status, req.finish_reason = Status.FINISHED, reason
        self._stop_sets.pop(req.req_id, None)
        self.running.pop(req.req_id, None)
        self.blocks.release(req.pages)
        self.released.append(req.req_id)

    def _preempt(self, req: Request) -> None:
        del self.running[req.req_id]
        self.blocks.release(req.pages)
        req.status, req.num_computed, req.num_hashed_pages = Status.WAITING, 0, 0
        req.survival = req.conditional = None
        req.draft_ids = []
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(req)
        self.released.append(req.req_id)

    # ------------------------------------------------------------------------------ one step
    def _room(self, req: Request) -> int:
        """Tokens the request may still commit."""
        return min(req.remaining, self.max_model_len - req.num_tokens)

    def _plan_lengths(self, decoding: list[Request]) -> dict[str, int]:
        drafted = [r for r in decoding if r.survival is not None]
        if not drafted:
            return {}
        survival = np.array([r.survival for r in drafted], dtype=np.float64)  # [R, γ]
        conf = None if drafted[0].conditional is None else np.array([r.conditional for r in drafted], dtype=np.float64)
        lengths = self.planner.plan(survival, conf)
        return {r.req_id: int(n) for r, n in zip(drafted, lengths)}

    def schedule(self) -> SchedulerOutput:
        self.step_index += 1
        budget = self.config.max_num_batched_tokens
        seqs: list[ScheduledSeq] = []
        new: list[NewRequest] = []
        stride = draw_stride(self.num_drafts)

        decoding = [r for r in self.running.values() if not r.in_prefill]
        lengths = self._plan_lengths(decoding)
        scheduled: list[Request] = []
        for req in decoding:
            if req.req_id not in self.running:  # preempted by an earlier row of this loop
                continue
            # capped by the positions left under max_model_len, not by max_tokens: a round the budget ends
            # verifies what the policy chose and its commit is cut (as DeepSpec does, so τ counts alike)
            ell = max(0, min(lengths.get(req.req_id, 0), self.max_model_len - req.num_tokens - 1, len(req.draft_ids)))
            while not self.blocks.grow(req.pages, req.num_computed + 1 + ell):
                victim = next(reversed(self.running.values()))
                self._preempt(victim)
                if victim is req:
                    break
            if req.req_id not in self.running:
                continue
            seqs.append(ScheduledSeq(req.req_id, req.num_computed, [req.last_token], list(req.pages), req.rng_counter,
                                     num_verify=ell))
            req.rng_counter += stride
            budget -= 1 + ell
            scheduled.append(req)

        for req in [r for r in self.running.values() if r.in_prefill]:
            if budget <= 0:
                break
            budget -= self._schedule_prefill(req, budget, seqs, stride)

        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            req = self.waiting[0]
            hit = self.blocks.match_prefix(req.all_ids, req.prefill_end)
            req.pages, req.num_computed, req.num_hashed_pages = hit, len(hit) * self.blocks.page_size, len(hit)
            if not self.blocks.can_grow(req.pages, req.num_computed + min(budget, req.prefill_end - req.num_computed)):
                self.blocks.release(req.pages)
                req.num_computed = req.num_hashed_pages = 0
                break
            self.waiting.popleft()
            if req.num_tokens == len(req.prompt_ids):
                req.num_cached = req.num_computed
            req.status = Status.RUNNING
            self.running[req.req_id] = req
            o = req.options
            new.append(NewRequest(req.req_id, o.temperature, o.top_p, o.top_k, req.seed))
            budget -= self._schedule_prefill(req, budget, seqs, stride)

        next_decoding = len(scheduled) + sum(1 for s in seqs if s.final_chunk)
        out = SchedulerOutput(seqs, new, self.planner.should_draft(next_decoding) and self.num_drafts > 0, self.released)
        self.released = []
        return out

    def _schedule_prefill(self, req: Request, budget: int, seqs: list[ScheduledSeq], stride: int) -> int:
        chunk = min(req.prefill_end - req.num_computed, budget)
        if chunk <= 0 or not self.blocks.grow(req.pages, req.num_computed + chunk):
            return 0
        start, end = req.num_computed, req.num_computed + chunk
        ids = req.all_ids
        final = end == req.prefill_end
        sample_first = final and not req.output_ids
        seqs.append(ScheduledSeq(req.req_id, start, ids[start:end], list(req.pages), req.rng_counter, prefill=True,
                                 final_chunk=final, sample_first=sample_first,
                                 next_token=ids[end] if end < len(ids) else None))
        if final:  # the steps that draw (first token, drafting) advance the stream; plain chunks draw nothing
            req.rng_counter += stride
        return chunk

    # ------------------------------------------------------------------------------ results
    def update(self, out: SchedulerOutput, result: RunnerOutput) -> list[Request]:
        """Apply the runner's answer; returns the requests that got tokens or finished this step."""
        by_id = {s.req_id: s for s in out.seqs}
        touched: list[Request] = []
        for res in result.results:
            req = self.requests.get(res.req_id)
            seq = by_id[res.req_id]
            if req is None or req.finished or req.status is not Status.RUNNING:
                continue
            if seq.prefill:
                req.num_computed += len(seq.token_ids)
            else:
                req.num_computed += res.num_accepted + 1
            kept = self._append(req, res.committed)
            if not seq.prefill:
                stopped = req.finished and req.finish_reason in ("eos", "stop")
                req.rounds.append(RoundRecord(len(req.draft_ids), seq.num_verify, res.num_accepted, kept,
                                            req.draft_ids, req.conditional, stopped))
            req.draft_ids = res.draft_ids
            req.conditional = res.confidences if res.draft_ids else None
            if res.draft_ids:
                conf = res.confidences if res.confidences is not None else [0.0] * len(res.draft_ids)
                req.survival = survival_of(conf)
            else:
                req.survival = None
            if not req.finished and self.blocks.completes_pages(req.pages, req.num_tokens, req.num_computed,
                                                                req.num_hashed_pages):
                req.num_hashed_pages = self.blocks.register(req.pages, req.all_ids, req.num_computed, req.num_hashed_pages)
            if res.committed or req.finished:
                touched.append(req)
        return touched

    def _stops(self, req: Request) -> frozenset[int]:
        """The tokens that end `req` (its stop_token_ids, and EOS unless ignore_eos), kept per request."""
        cached = self._stop_sets.get(req.req_id)
        if cached is not None and cached[0] is req.options:
            return cached[1]
        stops = frozenset(req.options.stop_token_ids) | (frozenset() if req.options.ignore_eos else frozenset(self.eos))
        self._stop_sets[req.req_id] = (req.options, stops)
        return stops

    def _append(self, req: Request, tokens: list[int]) -> int:
        """Append committed tokens up to a stop condition; returns how many were kept.

        Token i ends the request at a stop token, else when it leaves no room (each appended token takes
        one from `_room`); a stop token wins over the length limit at the same token."""
        stops = self._stops(req)
        length_at = max(self._room(req) - 1, 0)  # the token after which no room is left
        stop_at = next((i for i, tok in enumerate(tokens) if tok in stops), None) if stops else None
        if stop_at is not None and stop_at <= length_at:
            req.output_ids += tokens[: stop_at + 1]
            tok = tokens[stop_at]
            self._finish(req, "stop" if tok in req.options.stop_token_ids else "eos")
            return stop_at + 1
        if length_at < len(tokens):
            req.output_ids += tokens[: length_at + 1]
            self._finish(req, "length")
            return length_at + 1
        req.output_ids += tokens
        return len(tokens)
