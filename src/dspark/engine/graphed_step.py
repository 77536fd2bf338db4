"""`GraphedStep`: a whole engine step (target verify, sampling, rejection, absorb, proposal) as ONE CUDA graph.

Where it sits: `dspark.engine.runner.ModelRunner` on CUDA hands every `StepPlan` to a `GraphedStep`
instead of calling `dspark.engine.step.speculative_step` directly. Decode steps (every sequence
verifies a block, or decodes one token, and every sequence drafts after it, or none does) replay a
graph that captured `speculative_step` itself over static buffers, so the drafter's γ-step loop and
the sampler cost one launch instead of hundreds. Other steps (prefill chunks, first tokens) run
`speculative_step` eagerly with the graphed target (`GraphedDenseTarget`) underneath.

Shapes. A graph serves the target's `GraphKey` (tokens and sequences padded up a ladder, a promised
query length, a context bound: see `dspark.engine.graphed_target`) plus what the rest of the step
depends on: the sampling summaries (top-k bucketed to a power of two, any top-p, any greedy row), whether the step
drafts, the synthetic-acceptance flag, and a power-of-two bound of the drafter's context (its
attention gathers that many positions). The runner already pads verify blocks to γ and update rows
to γ+1, so every decode step of B sequences has the same plan shape; sequences B .. S_pad are padding
rows (no drafts verified, context 0, an all -1 block table: their K/V writes land in the null page)
whose outputs are sliced off.

Outputs are views of the graph's static tensors, valid until the next replay; the proposal's draft
distributions (kept per request until its next verify step) are copied out. ``replay_eagerly`` (tests
on the CPU) pads into the same buffers and runs `speculative_step` on them instead of a graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dspark.drafters.base import Drafter, Proposal
from dspark.engine.batch import FlatBatch
from dspark.engine.graphed_target import MIN_CONTEXT_BUCKET, GraphedDenseTarget, GraphKey
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import ScheduledSeq
from dspark.engine.step import StepPlan, StepResult, speculative_step
from dspark.engine.target import TargetOutput
from dspark.sampling import RowParams


@dataclass(frozen=True)
class StepKey:
    target: GraphKey
    top_k_bound: int  # 0: no row uses top-k; else a power of two >= every row's top_k
    any_top_p: bool
    any_greedy: bool
    draft: bool  # every sequence drafts after the step (else none does)
    forced: bool  # synthetic acceptance (benchmarks only)
    draft_context: int  # bound of the drafter's cached context (0 without a drafter)


def _pow2_at_least(x: int, floor: int) -> int:
    b = floor
    while b < x:
        b *= 2
    return b


class _RawForward:
    """The model run eagerly over the static batch (what the graph captures as the target forward)."""

    def __init__(self, target: GraphedDenseTarget) -> None:
        self.target = target
        self.vocab_size, self.device = target.vocab_size, target.device

    def forward(self, batch: FlatBatch, seqs: list[ScheduledSeq], layer_ids: list[int] | None) -> TargetOutput:
        out = self.target.model(batch, self.target.kv, layer_ids)
        return TargetOutput(out.logits, out.features, out.last_hidden)


class _PlanBuffers:
    """Static plan tensors shared by every graph (each graph reads a prefix)."""

    def __init__(self, max_seqs: int, max_tokens: int, gamma: int, vocab: int, device: torch.device) -> None:
        long = dict(dtype=torch.long, device=device)
        s, w = max_seqs, gamma + 1
        self.temperature = torch.ones(s, dtype=torch.float32, device=device)
        self.top_k = torch.zeros(s, **long)
        self.top_p = torch.ones(s, dtype=torch.float32, device=device)
        self.seeds = torch.zeros(s, **long)
        self.counters = torch.zeros(s, **long)
        self.logit_rows = torch.zeros(max_tokens, **long)
        self.verify_logits = torch.zeros(s, w, **long)
        self.draft_ids = torch.zeros(s, gamma, **long)
        self.draft_probs = torch.zeros(s, gamma, vocab, dtype=torch.float32, device=device)
        self.num_verify = torch.zeros(s, **long)
        self.update_index = torch.zeros(s, w, **long)
        self.next_known = torch.full((s, w), -1, **long)
        self.num_new = torch.zeros(s, **long)
        self.known_anchor = torch.full((s,), -1, **long)
        self.forced = torch.zeros(s, **long)
        self.index = torch.arange(s, **long)
        self.gamma = gamma

    def plan(self, key: StepKey, batch: FlatBatch) -> StepPlan:
        s, n = key.target.num_seqs, key.target.num_tokens
        rows = list(range(s))
        params = RowParams(self.temperature[:s], self.top_k[:s], self.top_p[:s], key.top_k_bound, key.any_top_p,
                           key.any_greedy)
        empty = self.index[:0]
        return StepPlan(batch, [], params, self.seeds[:s], self.counters[:s], self.logit_rows[:n], rows,
                        self.index[:s], self.verify_logits[:s], self.draft_ids[:s], self.draft_probs[:s],
                        self.num_verify[:s], [], empty, empty, self.update_index[:s], self.next_known[:s],
                        self.num_new[:s], rows if key.draft else [], self.index[:s] if key.draft else empty,
                        self.known_anchor[:s], self.gamma, key.draft_context,
                        self.forced[:s] if key.forced else None)

    def fill(self, key: StepKey, plan: StepPlan) -> None:
        """Copy a decode step's plan in, padding rows B .. S_pad (device-to-device only)."""
        b, s, m = len(plan.seqs), key.target.num_seqs, int(plan.logit_rows.shape[0])  # padding rows: b .. s
        pairs = [(self.temperature, plan.params.temperature, 1.0), (self.top_k, plan.params.top_k, 0),
                 (self.top_p, plan.params.top_p, 1.0), (self.seeds, plan.seeds, 0), (self.counters, plan.counters, 0),
                 (self.verify_logits, plan.verify_logits, 0), (self.num_verify, plan.num_verify, 0),
                 (self.update_index, plan.update_index, 0), (self.next_known, plan.next_known, -1),
                 (self.num_new, plan.num_new_host, 0), (self.known_anchor, plan.known_anchor, -1)]
        if self.gamma:
            pairs += [(self.draft_ids, plan.draft_ids, 0), (self.draft_probs, plan.draft_probs, 0.0)]
        if plan.forced_accepted is not None:
            pairs.append((self.forced, plan.forced_accepted, 0))
        pairs.append((self.logit_rows[: key.target.num_tokens], plan.logit_rows, None))
        torch._foreach_copy_([buf[: val.shape[0]] for buf, val, _ in pairs], [val for _, val, _ in pairs])  # one launch
        if b < s:
            for buf, _, pad in pairs[:-1]:
                buf[b:s].fill_(pad)
        self.logit_rows[m:key.target.num_tokens].zero_()

    def fill_idle(self, key: StepKey) -> None:
        """Every row padding (warm-up and capture)."""
        s = key.target.num_seqs
        for buf, pad in ((self.temperature, 1.0), (self.top_k, 0), (self.top_p, 1.0), (self.seeds, 0), (self.counters, 0),
                         (self.verify_logits, 0), (self.num_verify, 0), (self.update_index, 0), (self.next_known, -1),
                         (self.num_new, 0), (self.known_anchor, -1), (self.draft_ids, 0), (self.draft_probs, 0.0),
                         (self.forced, 0)):
            buf[:s].fill_(pad)
        self.logit_rows[:key.target.num_tokens].zero_()


@dataclass
class _Captured:
    plan: StepPlan  # over the static buffers
    result: StepResult | None  # the graph's static outputs (None: replayed eagerly)
    graph: torch.cuda.CUDAGraph | None


class GraphedStep:
    def __init__(self, target: GraphedDenseTarget, drafter: Drafter | None, draft_kv: PagedKVCache | None,
                 max_seqs: int) -> None:
        """`max_seqs`: the most sequences a step schedules (the engine's max_num_seqs)."""
        self.target, self.drafter, self.draft_kv = target, drafter, draft_kv
        self.gamma = drafter.config.num_drafts if drafter is not None else 0
        self.layer_ids = None if drafter is None else list(drafter.config.target_layer_ids)
        sizes = target.sizes
        need = max_seqs + 1  # + the dummy sequence of padding tokens
        self.max_seqs = next((x for x in sizes if x >= need), sizes[-1])
        self.replay_eagerly = target.replay_eagerly
        self.graphs: dict[StepKey, _Captured] = {}
        self._buffers: _PlanBuffers | None = None
        self._raw = _RawForward(target)
        self.num_graph_steps = self.num_eager_steps = 0

    @property
    def enabled(self) -> bool:
        return self.target.use_graphs or self.replay_eagerly

    def __call__(self, plan: StepPlan) -> StepResult:
        key = self.key(plan)
        if key is None:
            self.num_eager_steps += 1
            return speculative_step(plan, self.target, self.drafter, self.draft_kv)
        entry = self.graphs.get(key) or self.capture(key)
        self.target.static_buffers().fill(key.target, plan.batch)
        self._buffers.fill(key, plan)
        if entry.graph is not None:
            entry.graph.replay()
            result = entry.result
        else:
            result = speculative_step(entry.plan, self._raw, self.drafter, self.draft_kv)
        self.num_graph_steps += 1
        return self._slice(result, len(plan.seqs))

    def key(self, plan: StepPlan) -> StepKey | None:
        """The graph that serves this plan, or None (an eager step)."""
        if not self.enabled or plan.first_rows or len(plan.verify_rows) != len(plan.seqs):
            return None
        if plan.draft_rows and len(plan.draft_rows) != len(plan.seqs):
            return None
        if plan.verify_logits.shape[1] != self.gamma + 1 or plan.update_index.shape[1] != self.gamma + 1:
            return None
        batch = plan.batch
        max_q, max_ctx = self.target.host_bounds(batch, plan.seqs)
        tkey = self.target.graph_key(batch.num_tokens, batch.num_seqs, max_q, max_ctx, batch.block_tables.shape[1],
                                     self.layer_ids)
        if tkey is None or tkey.num_seqs > self.max_seqs:
            return None
        p = plan.params
        top_k = 0 if p.max_top_k == 0 else (self.target.vocab_size if p.max_top_k < 0 else
                                            min(_pow2_at_least(p.max_top_k, 1), self.target.vocab_size))
        draft_ctx = 0
        if self.drafter is not None:  # the proposal gathers draft_ctx + γ+1 positions: within the block tables
            room = self.target.max_model_len - (self.gamma + 1)
            if plan.max_context > room:
                return None
            draft_ctx = min(_pow2_at_least(plan.max_context, MIN_CONTEXT_BUCKET), room)
        return StepKey(tkey, top_k, p.any_top_p, p.any_greedy, bool(plan.draft_rows), plan.forced_accepted is not None, draft_ctx)

    @torch.no_grad()
    def capture(self, key: StepKey) -> _Captured:
        """Capture (or, in `replay_eagerly` mode, only prepare) the graph of `key`."""
        if self._buffers is None:
            self._buffers = _PlanBuffers(self.max_seqs, self.target.sizes[-1], self.gamma, self.target.vocab_size,
                                         self.target.device)
        static = self.target.static_buffers()
        plan = self._buffers.plan(key, static.batch(key.target))
        if not self.target.use_graphs:
            entry = _Captured(plan, None, None)
            self.graphs[key] = entry
            return entry
        device = self.target.device
        static.fill_idle(key.target)
        self._buffers.fill_idle(key)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # compile kernels and pick GEMM algorithms outside the capture
            for _ in range(2):
                speculative_step(plan, self._raw, self.drafter, self.draft_kv)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.target.graph_pool()):
            result = speculative_step(plan, self._raw, self.drafter, self.draft_kv)
        self.target.keep_pool(graph.pool())
        entry = _Captured(plan, result, graph)
        self.graphs[key] = entry
        return entry

    def _slice(self, result: StepResult, b: int) -> StepResult:
        prop = result.proposal
        if prop is not None:
            prop = Proposal(prop.draft_ids[:b], prop.draft_probs[:b].clone(),
                            None if prop.confidence is None else prop.confidence[:b])
        return StepResult(result.out_ids[:b], result.num_accepted[:b], result.first_ids, prop)

    def clear_graphs(self) -> None:
        self.graphs.clear()
        self.target.clear_graphs()
