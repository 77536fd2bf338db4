"""`Runner`: executes a `SchedulerOutput` on a target backend and a drafter, returns a `RunnerOutput`.

It turns the scheduler's lists into the step's inputs on the host (`dspark.engine.host_plan.HostPlan`),
uploads them (the step's own `upload` when it has one: `GraphedStep` writes its graphs' padded layout
and sends it in one copy; else `upload_plan`), calls `dspark.engine.step.speculative_step` (or the
graph), and reads the results back to the host ONCE per step (one packed
transfer). Per request it keeps only what must stay on the device between steps: the waiting drafts'
exact distributions, plus the request's sampling parameters and seed.

`HFRunner(target, drafter)` runs the target through transformers (the test oracle);
`ModelRunner(target, drafter)` through our own dense forward over the paged cache (prefix caching on).
The drafter's context K/V always live in a `PagedKVCache` indexed by the scheduler's block tables.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from dspark.drafters.base import Drafter, absorbs_flat
from dspark.engine.host_plan import HostPlan, upload_plan
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.layout import flat_layout, ragged_to_padded
from dspark.engine.messages import RunnerOutput, SchedulerOutput, SeqResult
from dspark.engine.step import StepPlan, StepResult, speculative_step
from dspark.engine.target import TargetForward
from dspark.sampling import SamplingParams


StepFn = Callable[[StepPlan], StepResult]


def _ints(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


class SyntheticAcceptance(Protocol):
    """Benchmark-only acceptance (`dspark.engine.synthetic`): forced accepted counts, model confidences. NOT lossless."""

    label: str

    def propose(self, req_ids: list[str]) -> list[list[float]]: ...

    def accepted(self, req_id: str, num_verify: int) -> int: ...

    def release(self, req_id: str) -> None: ...


@dataclass
class _ReqState:
    params: SamplingParams
    seed: int
    draft_ids: list[int]
    draft_probs: torch.Tensor | None = None  # [γ, V] exact distributions of the waiting drafts


class Runner:
    def __init__(self, target: TargetForward, drafter: Drafter | None, num_pages: int, page_size: int,
                 synthetic: SyntheticAcceptance | None = None, step: StepFn | None = None) -> None:
        """`synthetic`: benchmark-only acceptance (NOT lossless); `step`: what runs a plan (default `speculative_step`;
        a step with an ``upload(HostPlan) -> StepPlan`` method, `GraphedStep`, uploads each step's inputs itself)."""
        self.target, self.drafter = target, drafter
        self.synthetic = synthetic
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
        self.per_row_update = drafter is not None and not absorbs_flat(drafter)  # [B, W] updates
        self.host_syncs = 0  # device -> host reads (one per step by design)
        self.step: StepFn = step or (lambda plan: speculative_step(plan, self.target, self.drafter, self.draft_kv))

    @property
    def supports_prefix_caching(self) -> bool:
        return self.target.supports_prefix_caching

    def graph_ladder(self) -> tuple[int, ...] | None:
        """The token / sequence sizes the step's CUDA graphs pad a decode step up to (None: eager steps)."""
        if not getattr(self.step, "enabled", False):
            return None
        sizes = getattr(self.target, "sizes", None)
        return tuple(int(x) for x in sizes) if sizes else None

    # ------------------------------------------------------------------------------ plan
    def _plan(self, out: SchedulerOutput) -> StepPlan:
        """The step's `StepPlan`: through the step's own `upload` when it has one (`GraphedStep`), else `upload_plan`."""
        host = self._host_plan(out)
        upload = getattr(self.step, "upload", None)
        return upload(host) if upload is not None else upload_plan(host, self.device)

    def _host_plan(self, out: SchedulerOutput) -> HostPlan:
        """The step's inputs on the host: numpy arrays and lists, no torch call (the waiting distributions by reference)."""
        seqs, ps, k = out.seqs, self.page_size, self.num_drafts
        states = [self.states[s.req_id] for s in seqs]
        num_verify = [s.num_verify for s in seqs]  # 0 for prefill rows
        toks = [s.token_ids if s.prefill else s.token_ids + st.draft_ids[: s.num_verify] for s, st in zip(seqs, states)]
        qlens = [len(t) for t in toks]
        ctx = [s.start for s in seqs]
        decode = np.fromiter((not s.prefill for s in seqs), dtype=bool, count=len(seqs))
        sample_first = np.fromiter((s.prefill and s.sample_first for s in seqs), dtype=bool, count=len(seqs))
        draft_length = max(c + n for c, n in zip(ctx, qlens))
        max_pages = max(-(-draft_length // ps), max(len(s.block_table) for s in seqs), 1)
        tables = ragged_to_padded([s.block_table for s in seqs], max_pages, -1)
        ctx_arr = np.asarray(ctx, dtype=np.int64)
        lay = flat_layout(ctx_arr, np.asarray(qlens, dtype=np.int64), decode, sample_first, tables, ps, k)
        num_new = [len(s.token_ids) if s.prefill else 0 for s in seqs]
        # the token after a prefill chunk when the host knows it (the anchor of a resumed prefill's final chunk;
        # mid-prompt, the next chunk's first token: a chain drafter's K/V at the chunk's last position read it)
        known_anchor = [s.next_token if s.prefill and s.next_token is not None else -1 for s in seqs]
        sampled_rows = [b for b, s in enumerate(seqs) if not s.prefill or s.sample_first]
        update_index, next_known = self._update_layout(seqs, qlens)
        draft_rows = [b for b, s in enumerate(seqs) if out.draft and (not s.prefill or s.final_chunk)]
        draft_ids = ragged_to_padded([st.draft_ids[: min(n, k)] for st, n in zip(states, num_verify)], k, 0)
        forced = None
        if self.synthetic is not None:
            forced = _ints([0 if s.prefill else self.synthetic.accepted(s.req_id, s.num_verify) for s in seqs])
        ids = np.fromiter(itertools.chain.from_iterable(toks), dtype=np.int64, count=lay.positions.size)
        params = [st.params for st in states]
        probs = [st.draft_probs if n else None for st, n in zip(states, num_verify)]
        return HostPlan(seqs, ids, lay.positions, lay.slots, lay.query_start, ctx_arr, tables, lay.logits_indices,
                        _ints([st.seed for st in states]), _ints([s.rng_counter for s in seqs]), lay.logit_rows,
                        lay.verify_logits, draft_ids, _ints(num_verify), _ints(num_new), update_index, next_known,
                        _ints(known_anchor), _ints([p.top_k for p in params]),
                        np.asarray([p.temperature for p in params], dtype=np.float32),
                        np.asarray([p.top_p for p in params], dtype=np.float32), forced, _ints(draft_rows),
                        sampled_rows, draft_rows, probs, max((p.top_k for p in params), default=0),
                        any(p.top_p < 1.0 for p in params), any(p.greedy for p in params), max(qlens), max(ctx),
                        draft_length, k, self.target.vocab_size)

    def _update_layout(self, seqs, qlens: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """[B, W] flat token of slot w of each seq (clamped) and the token after it when known (-1: drawn this step).

        Only drafters that absorb per row (not `absorbs_flat`) read it (W = max(query, γ+1)); others get W = 0.
        """
        b = len(seqs)
        if not self.per_row_update:
            return np.zeros((b, 0), dtype=np.int64), np.zeros((b, 0), dtype=np.int64)
        width = max(max(qlens), self.num_drafts + 1)
        ends = np.cumsum(qlens)
        starts = ends - np.asarray(qlens)
        update_index = np.minimum(starts[:, None] + np.arange(width)[None, :], ends[:, None] - 1)
        next_known = np.full((b, width), -1, dtype=np.int64)
        for row, seq in enumerate(seqs):
            if seq.prefill:
                n = len(seq.token_ids)
                next_known[row, : n - 1] = seq.token_ids[1:]
                if seq.next_token is not None:
                    next_known[row, n - 1] = seq.next_token
        return update_index, next_known

    # ------------------------------------------------------------------------------ execute
    def execute(self, out: SchedulerOutput, overlap: Callable[[], None] | None = None) -> RunnerOutput:
        """Run the step; `overlap` runs on the host while the GPU works (before the one read-back)."""
        for req_id in out.released:
            self.states.pop(req_id, None)
            self.target.release(req_id)
            if self.synthetic is not None:
                self.synthetic.release(req_id)
        for new in out.new_requests:
            self.states[new.req_id] = _ReqState(SamplingParams(new.temperature, new.top_k, new.top_p), new.seed, [])
        if not out.seqs:
            return RunnerOutput([])
        plan = self._plan(out)
        result = self.step(plan)
        if overlap is not None:
            overlap()
        return self._read_back(plan, result)

    def _read_back(self, plan: StepPlan, result: StepResult) -> RunnerOutput:
        parts = [result.out_ids.reshape(-1), result.num_accepted]
        prop = result.proposal
        if prop is not None:
            parts.append(prop.draft_ids.reshape(-1))
            if prop.confidence is not None:
                parts.append(prop.confidence.reshape(-1))
        flat = torch.cat([p.double() for p in parts]).tolist()  # the one host sync of the step
        self.host_syncs += 1
        rows, k1 = result.out_ids.shape
        num_ints = rows * k1 + rows + (len(plan.draft_rows) * self.num_drafts if prop is not None else 0)
        ints = list(map(int, flat[:num_ints]))  # token ids and counts (exact in float64)
        out_ids, accepted, ids, conf = ints[: rows * k1], ints[rows * k1: rows * k1 + rows], ints[rows * k1 + rows:], flat[num_ints:]
        results = [SeqResult(s.req_id, []) for s in plan.seqs]
        for b in plan.sampled_rows:
            res = results[b]
            res.num_accepted = accepted[b]  # 0 for a first token
            res.committed = out_ids[b * k1: b * k1 + accepted[b] + 1]
        if prop is not None:
            g = self.num_drafts
            if self.synthetic is not None:  # the acceptance model's calibrated predictions replace the head's
                conf = [c for row in self.synthetic.propose([plan.seqs[b].req_id for b in plan.draft_rows]) for c in row]
            has_conf = prop.confidence is not None or self.synthetic is not None
            probs = prop.draft_probs.unbind(0)  # one view per drafted row, in one call
            for i, b in enumerate(plan.draft_rows):
                st = self.states[plan.seqs[b].req_id]
                st.draft_ids = ids[i * g:(i + 1) * g]
                st.draft_probs = probs[i]
                results[b].draft_ids = st.draft_ids
                results[b].confidences = conf[i * g:(i + 1) * g] if has_conf else None
        for s, res in zip(plan.seqs, results):
            if not res.draft_ids:
                self.states[s.req_id].draft_ids, self.states[s.req_id].draft_probs = [], None
        return RunnerOutput(results)


def HFRunner(target, drafter: Drafter | None, num_pages: int, page_size: int,  # noqa: N802 (a factory)
             synthetic: SyntheticAcceptance | None = None) -> Runner:
    """The oracle runner: the target through transformers (one request at a time)."""
    from dspark.engine.hf_target import HFTarget

    return Runner(HFTarget(target), drafter, num_pages, page_size, synthetic)


def ModelRunner(target, drafter: Drafter | None, num_pages: int, page_size: int,  # noqa: N802
                cuda_graphs: bool = True, synthetic: SyntheticAcceptance | None = None, max_num_seqs: int = 64,
                max_num_batched_tokens: int = 512) -> Runner:
    """The engine's own dense forward over the paged cache (`dspark.models`).

    On CUDA with ``cuda_graphs`` every step replays one CUDA graph (`GraphedStep`: target, sampling,
    rejection and the drafter's proposal; verify graphs promise γ+1 query tokens per request, steps with
    prefill chunks a power-of-two chunk length; the ladder reaches `max_num_batched_tokens`); ``cuda_graphs=False``
    (``--enforce-eager``) or a CPU model runs every step eagerly (`DenseTarget`), with identical results.
    """
    from dspark.engine.dense_target import DenseTarget
    from dspark.models import DenseLM

    model = target if isinstance(target, DenseLM) else DenseLM.from_hf_model(target.model)
    if cuda_graphs and model.device.type == "cuda":
        from dspark.engine.graphed_step import GraphedStep
        from dspark.engine.graphed_target import GraphedDenseTarget, ladder_for

        gamma = drafter.config.num_drafts if drafter is not None else 0
        backend = GraphedDenseTarget(model, num_pages, page_size, max_query_len=gamma + 1,
                                     sizes=ladder_for(max(max_num_batched_tokens, max_num_seqs + 1), max_num_seqs))
        runner = Runner(backend, drafter, num_pages, page_size, synthetic)
        runner.step = GraphedStep(backend, drafter, runner.draft_kv, max_num_seqs)
        return runner
    return Runner(DenseTarget(model, num_pages, page_size), drafter, num_pages, page_size, synthetic)
