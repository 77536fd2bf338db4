"""`Runner`: executes a `SchedulerOutput` on a target backend and a drafter, returns a `RunnerOutput`.

It turns the scheduler's lists into the step's tensors (`StepPlan`), calls
`dspark.engine.step.speculative_step`, and reads the results back to the host ONCE per step (one packed
transfer). Per request it keeps only what must stay on the device between steps: the waiting drafts'
exact distributions, plus the request's sampling parameters and seed.

`HFRunner(target, drafter)` runs the target through transformers (the test oracle);
`ModelRunner(target, drafter)` through our own dense forward over the paged cache (prefix caching on).
The drafter's context K/V always live in a `PagedKVCache` indexed by the scheduler's block tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dspark.drafters.base import Drafter
from dspark.engine.batch import FlatBatch, slots_for
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import RunnerOutput, SchedulerOutput, SeqResult
from dspark.engine.step import StepPlan, StepResult, speculative_step
from dspark.engine.target import TargetForward
from dspark.sampling import RowParams, SamplingParams


@dataclass
class _ReqState:
    params: SamplingParams
    seed: int
    draft_ids: list[int]
    draft_probs: torch.Tensor | None = None  # [γ, V] exact distributions of the waiting drafts


class Runner:
    def __init__(self, target: TargetForward, drafter: Drafter | None, num_pages: int, page_size: int) -> None:
        self.target, self.drafter = target, drafter
        self.device = target.device
        self.page_size = page_size
        self.num_drafts = drafter.config.num_drafts if drafter is not None else 0
        self.states: dict[str, _ReqState] = {}
        self.draft_kv: PagedKVCache | None = None
        if drafter is not None:
            c = drafter.config
            dtype = next(drafter.parameters()).dtype
            self.draft_kv = PagedKVCache(drafter.context_layers, num_pages, page_size, c.num_key_value_heads,
                                         c.head_dim, dtype, self.device)
        self.host_syncs = 0  # device -> host reads (one per step by design)

    @property
    def supports_prefix_caching(self) -> bool:
        return self.target.supports_prefix_caching

    # ------------------------------------------------------------------------------ plan
    def _plan(self, out: SchedulerOutput) -> StepPlan:
        seqs, dev, ps = out.seqs, self.device, self.page_size
        vocab = self.target.vocab_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        qstart, ctx = [0], []
        logit_rows: list[int] = []
        verify_rows: list[int] = []
        verify_logits: list[list[int]] = []
        first_rows: list[int] = []
        first_logits: list[int] = []
        next_known: list[list[int]] = []
        num_new: list[int] = []
        known_anchor: list[int] = []
        logits_indices: list[int] = []  # flat tokens whose logits are read, in seq order (= logit_rows)
        width = max(s.num_query for s in seqs)
        k = max([s.num_verify for s in seqs if not s.prefill] + [0])
        for b, seq in enumerate(seqs):
            st = self.states[seq.req_id]
            toks = seq.token_ids + ([] if seq.prefill else st.draft_ids[: seq.num_verify])
            n, base = len(toks), qstart[-1]
            ids += toks
            pos += range(seq.start, seq.start + n)
            slots += slots_for(seq.block_table, seq.start, n, ps)
            ctx.append(seq.start)
            qstart.append(base + n)
            anchor, nxt = -1, [-1] * width
            if seq.prefill:
                nxt[: n - 1] = toks[1:]
                if seq.next_token is not None:
                    nxt[n - 1] = seq.next_token
                    anchor = seq.next_token if seq.final_chunk else -1
                if seq.sample_first:
                    first_rows.append(b)
                    first_logits.append(len(logit_rows))
                    logit_rows.append(b)
                    logits_indices.append(base + n - 1)
                num_new.append(n)
            else:
                verify_rows.append(b)
                first = len(logit_rows)
                verify_logits.append([first + min(j, n - 1) for j in range(k + 1)])
                logit_rows += [b] * n
                logits_indices += range(base, base + n)
                num_new.append(0)
            next_known.append(nxt)
            known_anchor.append(anchor)
        max_pages = max(-(-(max(ctx) + width) // ps), max(len(s.block_table) for s in seqs), 1)
        tables = [s.block_table + [-1] * (max_pages - len(s.block_table)) for s in seqs]
        update_index = [[min(qstart[b] + w, qstart[b + 1] - 1) for w in range(width)] for b in range(len(seqs))]
        draft_ids, draft_probs, num_verify = self._waiting_drafts(seqs, verify_rows, k, vocab)
        tensor = lambda x, dtype=torch.long: torch.tensor(x, dtype=dtype, device=dev)  # noqa: E731
        batch = FlatBatch(tensor(ids), tensor(pos), tensor(slots), tensor(qstart), tensor(ctx), tensor(tables, torch.int32),
                          tensor(logits_indices))
        params = [self.states[s.req_id].params for s in seqs]
        draft_rows = [b for b, s in enumerate(seqs) if out.draft and (not s.prefill or s.final_chunk)]
        return StepPlan(batch, seqs, RowParams.from_list(params, dev), tensor([self.states[s.req_id].seed for s in seqs]),
                        tensor([s.rng_counter for s in seqs]), tensor(logit_rows), verify_rows,
                        tensor(verify_logits).view(len(verify_rows), k + 1), draft_ids, draft_probs, num_verify,
                        first_rows, tensor(first_logits), tensor(update_index), tensor(next_known), tensor(num_new),
                        draft_rows, tensor(known_anchor), self.num_drafts, max(ctx))

    def _waiting_drafts(self, seqs, verify_rows: list[int], k: int, vocab: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The drafts each verify row checks, padded to k: ids [Rv, k], exact distributions [Rv, k, V], ℓ [Rv].

        Slots past a row's ℓ hold whatever its proposal had (or zeros): `rejection_sample` never reads them.
        """
        states = [self.states[seqs[b].req_id] for b in verify_rows]
        num_verify = [seqs[b].num_verify for b in verify_rows]
        ids = [(st.draft_ids[:n] + [0] * k)[:k] for st, n in zip(states, num_verify)]
        empty = torch.zeros(max(self.num_drafts, k), vocab, dtype=torch.float32, device=self.device)
        probs = [st.draft_probs if n and st.draft_probs is not None else empty for st, n in zip(states, num_verify)]
        stacked = torch.stack(probs)[:, :k] if probs else torch.zeros(0, k, vocab, device=self.device)
        return (torch.tensor(ids, dtype=torch.long, device=self.device).view(len(verify_rows), k), stacked,
                torch.tensor(num_verify, dtype=torch.long, device=self.device))

    # ------------------------------------------------------------------------------ execute
    def execute(self, out: SchedulerOutput) -> RunnerOutput:
        for req_id in out.released:
            self.states.pop(req_id, None)
            self.target.release(req_id)
        for new in out.new_requests:
            self.states[new.req_id] = _ReqState(SamplingParams(new.temperature, new.top_k, new.top_p), new.seed, [])
        if not out.seqs:
            return RunnerOutput([])
        plan = self._plan(out)
        result = speculative_step(plan, self.target, self.drafter, self.draft_kv)
        return self._read_back(plan, result)

    def _read_back(self, plan: StepPlan, result: StepResult) -> RunnerOutput:
        parts = [result.out_ids.reshape(-1), result.num_accepted, result.first_ids]
        prop = result.proposal
        if prop is not None:
            parts.append(prop.draft_ids.reshape(-1))
            if prop.confidence is not None:
                parts.append(prop.confidence.reshape(-1))
        flat = torch.cat([p.double() for p in parts]).tolist()  # the one host sync of the step
        self.host_syncs += 1
        rv, k1 = result.out_ids.shape
        out_ids, flat = flat[: rv * k1], flat[rv * k1:]
        accepted, flat = [int(x) for x in flat[:rv]], flat[rv:]
        first, flat = [int(x) for x in flat[: len(plan.first_rows)]], flat[len(plan.first_rows):]
        results = {s.req_id: SeqResult(s.req_id, []) for s in plan.seqs}
        for i, b in enumerate(plan.verify_rows):
            res = results[plan.seqs[b].req_id]
            res.num_accepted = accepted[i]
            res.committed = [int(x) for x in out_ids[i * k1: i * k1 + accepted[i] + 1]]
        for i, b in enumerate(plan.first_rows):
            results[plan.seqs[b].req_id].committed = [first[i]]
        if prop is not None:
            g = self.num_drafts
            ids, conf = flat[: len(plan.draft_rows) * g], flat[len(plan.draft_rows) * g:]
            for i, b in enumerate(plan.draft_rows):
                req_id = plan.seqs[b].req_id
                st = self.states[req_id]
                st.draft_ids = [int(x) for x in ids[i * g:(i + 1) * g]]
                st.draft_probs = prop.draft_probs[i]
                results[req_id].draft_ids = st.draft_ids
                results[req_id].confidences = conf[i * g:(i + 1) * g] if prop.confidence is not None else None
        for s in plan.seqs:
            if not results[s.req_id].draft_ids:
                self.states[s.req_id].draft_ids, self.states[s.req_id].draft_probs = [], None
        return RunnerOutput([results[s.req_id] for s in plan.seqs])


def HFRunner(target, drafter: Drafter | None, num_pages: int, page_size: int) -> Runner:  # noqa: N802 (a factory)
    """The oracle runner: the target through transformers (one request at a time)."""
    from dspark.engine.hf_target import HFTarget

    return Runner(HFTarget(target), drafter, num_pages, page_size)


def ModelRunner(target, drafter: Drafter | None, num_pages: int, page_size: int,  # noqa: N802
                cuda_graphs: bool = True) -> Runner:
    """The engine's own dense forward over the paged cache (`dspark.models`).

    On CUDA with ``cuda_graphs`` the target steps replay CUDA graphs (`GraphedDenseTarget`, verify graphs
    promise γ+1 query tokens per request); ``cuda_graphs=False`` (``--enforce-eager``) or a CPU model runs
    every step eagerly (`DenseTarget`).
    """
    from dspark.engine.dense_target import DenseTarget
    from dspark.models import DenseLM

    model = target if isinstance(target, DenseLM) else DenseLM.from_hf_model(target.model)
    if cuda_graphs and model.device.type == "cuda":
        from dspark.engine.graphed_target import GraphedDenseTarget

        gamma = drafter.config.num_drafts if drafter is not None else 0
        backend = GraphedDenseTarget(model, num_pages, page_size, max_query_len=gamma + 1)
        return Runner(backend, drafter, num_pages, page_size)
    return Runner(DenseTarget(model, num_pages, page_size), drafter, num_pages, page_size)
