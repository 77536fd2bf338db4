"""`GraphedStep`: a whole engine step (target verify, sampling, rejection, absorb, proposal) as ONE CUDA graph.

Where it sits: `dspark.engine.runner.ModelRunner` on CUDA hands every `StepPlan` to a `GraphedStep`
instead of calling `dspark.engine.step.speculative_step` directly. A step replays a graph that
captured `speculative_step` itself over static buffers, so the drafter's γ-step loop and the sampler
cost one launch instead of hundreds. Steps with prefill chunks replay graphs too: the step treats
every row alike (a prefill row verifies nothing; see `dspark.engine.step`), so a graph only depends
on shapes. Steps no graph can serve (more tokens than the ladder) run `speculative_step` eagerly.

Shapes. A graph serves the target's `GraphKey` (tokens, sequences and logits rows padded up a ladder,
a promised query length: 1, γ+1, or a power of two for chunks; a context bound: see
`dspark.engine.graphed_target`) plus what the rest of the step depends on: the sampling summaries
(top-k bucketed to a power of two, any top-p, any greedy row), whether the step drafts (then every
row drafts and the rows that do not need it are dropped), the synthetic-acceptance flag, and a
power-of-two bound of what the drafter's attention gathers (context plus committed positions).
Sequences B .. S_pad are padding rows (no drafts verified, context 0, an all -1 block table: their K/V
writes land in the null page) whose outputs are sliced off.

Outputs are views of the graph's static tensors, valid until the next replay; the proposal's draft
distributions (kept per request until its next verify step) are copied out. ``replay_eagerly`` (tests
on the CPU) pads into the same buffers and runs `speculative_step` on them instead of a graph.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dspark.drafters.base import Drafter, FlatAbsorber, Proposal
from dspark.engine.batch import FlatBatch
from dspark.engine.graphed_target import MIN_CONTEXT_BUCKET, GraphedDenseTarget, GraphKey
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import ScheduledSeq
from dspark.engine.step import StepPlan, StepResult, speculative_step
from dspark.engine.target import TargetOutput
from dspark.sampling import RowParams

MAX_UPDATE_POSITIONS = 131072  # S_pad x W_pad bound of the per-row update of drafters that are not a FlatAbsorber (eager does the same work)


@dataclass(frozen=True)
class StepKey:
    target: GraphKey
    top_k_bound: int  # 0: no row uses top-k; else a power of two >= every row's top_k
    any_top_p: bool
    any_greedy: bool
    draft: bool  # every sequence drafts after the step (else none does)
    forced: bool  # synthetic acceptance (benchmarks only)
    draft_context: int  # bound of what the drafter's attention gathers (0 without a drafter)
    update_width: int  # W of the per-row update (0: the drafter absorbs the flat tokens, or no drafter)


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

    def __init__(self, max_seqs: int, max_tokens: int, gamma: int, vocab: int, max_width: int,
                 device: torch.device) -> None:
        long = dict(dtype=torch.long, device=device)
        s, k1 = max_seqs, gamma + 1
        self.temperature = torch.ones(s, dtype=torch.float32, device=device)
        self.top_k = torch.zeros(s, **long)
        self.top_p = torch.ones(s, dtype=torch.float32, device=device)
        self.seeds = torch.zeros(s, **long)
        self.counters = torch.zeros(s, **long)
        self.logit_rows = torch.zeros(max_tokens, **long)
        self.verify_logits = torch.zeros(s, k1, **long)
        self.draft_ids = torch.zeros(s, gamma, **long)
        self.draft_probs = torch.zeros(s, gamma, vocab, dtype=torch.float32, device=device)
        self.num_verify = torch.zeros(s, **long)
        self.num_new = torch.zeros(s, **long)
        self.update_index = torch.zeros(s, max_width, **long)
        self.next_known = torch.full((s, max_width), -1, **long)
        self.known_anchor = torch.full((s,), -1, **long)
        self.forced = torch.zeros(s, **long)
        self.index = torch.arange(s, **long)
        self.gamma = gamma

    def _rows(self) -> list[tuple[torch.Tensor, str, float]]:
        """(buffer, plan field, padding value) of every per-row tensor."""
        return [(self.temperature, "temperature", 1.0), (self.top_k, "top_k", 0), (self.top_p, "top_p", 1.0),
                (self.seeds, "seeds", 0), (self.counters, "counters", 0), (self.verify_logits, "verify_logits", 0),
                (self.num_verify, "num_verify", 0), (self.num_new, "num_new_host", 0),
                (self.known_anchor, "known_anchor", -1), (self.draft_ids, "draft_ids", 0),
                (self.draft_probs, "draft_probs", 0.0), (self.forced, "forced_accepted", 0),
                (self.update_index, "update_index", 0), (self.next_known, "next_known", -1)]

    def plan(self, key: StepKey, batch: FlatBatch) -> StepPlan:
        s, m, w = key.target.num_seqs, key.target.logits_rows, key.update_width
        rows = list(range(s))
        params = RowParams(self.temperature[:s], self.top_k[:s], self.top_p[:s], key.top_k_bound, key.any_top_p,
                           key.any_greedy)
        empty = self.index[:0]
        return StepPlan(batch, [], params, self.seeds[:s], self.counters[:s], self.logit_rows[:m],
                        self.verify_logits[:s], self.draft_ids[:s], self.draft_probs[:s], self.num_verify[:s],
                        self.num_new[:s], self.update_index[:s, :w], self.next_known[:s, :w], self.known_anchor[:s],
                        rows, rows if key.draft else [], self.index[:s] if key.draft else empty, self.gamma,
                        key.draft_context, key.draft_context, self.forced[:s] if key.forced else None)

    def fill(self, key: StepKey, plan: StepPlan) -> None:
        """Copy a step's plan in, padding rows B .. S_pad and update columns W .. W_pad (device-to-device only)."""
        b, s, m = len(plan.seqs), key.target.num_seqs, int(plan.logit_rows.shape[0])
        src = {"temperature": plan.params.temperature, "top_k": plan.params.top_k, "top_p": plan.params.top_p}
        dst, vals, pads = [], [], []
        for buf, name, pad in self._rows():
            val = src[name] if name in src else getattr(plan, name)
            if val is None or buf.dim() > 1 and buf.shape[1] == 0:
                continue
            dst.append(buf[tuple(slice(0, d) for d in val.shape)])
            vals.append(val)
            pads.append((buf, pad, val.shape))
        dst.append(self.logit_rows[:m])
        vals.append(plan.logit_rows)
        torch._foreach_copy_(dst, vals)  # one launch
        for buf, pad, shape in pads:
            if b < s:
                buf[b:s].fill_(pad)
            if (buf is self.update_index or buf is self.next_known) and shape[1] < key.update_width:
                buf[:b, shape[1]: key.update_width].fill_(pad)
        if m < key.target.logits_rows:
            self.logit_rows[m: key.target.logits_rows].zero_()

    def fill_idle(self, key: StepKey) -> None:
        """Every row padding (warm-up and capture)."""
        s = key.target.num_seqs
        for buf, _, pad in self._rows():
            buf[:s].fill_(pad)
        self.logit_rows[: key.target.logits_rows].zero_()


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
        self.per_row_update = drafter is not None and not isinstance(drafter, FlatAbsorber)
        sizes = target.sizes
        need = max_seqs + 1  # + the dummy sequence of padding tokens
        self.max_seqs = next((x for x in sizes if x >= need), sizes[-1])
        self.replay_eagerly = target.replay_eagerly
        self.graphs: dict[StepKey, _Captured] = {}
        self._sibling_families: set[tuple[StepKey, int]] = set()  # (key without its shape, rows): siblings captured
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
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.capture(key)
        self.capture_siblings(key, len(plan.seqs))
        self.target.static_buffers().fill(key.target, plan.batch)
        self._buffers.fill(key, plan)
        if entry.graph is not None:
            entry.graph.replay()
            result = entry.result
        else:
            result = speculative_step(entry.plan, self._raw, self.drafter, self.draft_kv)
        self.num_graph_steps += 1
        return self._slice(result, plan)

    def key(self, plan: StepPlan) -> StepKey | None:
        """The graph that serves this plan, or None (an eager step)."""
        if not self.enabled:
            return None
        batch = plan.batch
        max_q, max_ctx = self.target.host_bounds(batch, plan.seqs)
        tkey = self.target.graph_key(batch.num_tokens, batch.num_seqs, max_q, max_ctx, batch.block_tables.shape[1],
                                     self.layer_ids, int(plan.logit_rows.shape[0]))
        if tkey is None or tkey.num_seqs > self.max_seqs:
            return None
        width = 0
        if self.per_row_update:
            width = max(tkey.max_query_len, self.gamma + 1)
            if width * tkey.num_seqs > MAX_UPDATE_POSITIONS or width > self.target.sizes[-1]:
                return None
        p = plan.params
        top_k = 0 if p.max_top_k == 0 else (self.target.vocab_size if p.max_top_k < 0 else
                                            min(_pow2_at_least(p.max_top_k, 1), self.target.vocab_size))
        draft_ctx = 0
        if self.drafter is not None:  # the proposal gathers this many positions: within the block tables
            draft_ctx = min(_pow2_at_least(plan.draft_length, MIN_CONTEXT_BUCKET), self.target.max_model_len)
        return StepKey(tkey, top_k, p.any_top_p, p.any_greedy, bool(plan.draft_rows), plan.forced_accepted is not None,
                       draft_ctx, width)

    @torch.no_grad()
    def capture(self, key: StepKey) -> _Captured:
        """Capture (or, in `replay_eagerly` mode, only prepare) the graph of `key`."""
        if self._buffers is None:
            width = self.target.sizes[-1] if self.per_row_update else 0
            self._buffers = _PlanBuffers(self.max_seqs, self.target.sizes[-1], self.gamma, self.target.vocab_size,
                                         width, self.target.device)
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

    def siblings(self, key: StepKey, num_rows: int) -> list[StepKey]:
        """Every key a verify step of `num_rows` rows can take when its rows verify 0 .. γ drafts each: the
        token count varies, and with it whether a padding sequence is added (a count off the ladder is
        padded up, with the dummy sequence; one on it is not), so both sequence paddings are listed.
        Captured with the first such step, so that a policy choosing varying lengths (`dspark-async`)
        does not capture graphs mid-run."""
        t = key.target
        if t.max_query_len != self.gamma + 1 or self.gamma == 0 or num_rows < 1:
            return []
        out: dict[GraphKey, None] = {}
        for n in self.target.sizes:
            for tokens in (n, n - 1):  # exactly on the ladder size, or padded up to it
                if not num_rows <= tokens <= num_rows * (self.gamma + 1):
                    continue
                sib = self.target.graph_key(tokens, num_rows, t.max_query_len, t.max_context_len, 1, self.layer_ids)
                if sib is not None and sib.num_tokens == n and sib.num_seqs <= self.max_seqs and sib != t:
                    out[sib] = None
        return [dataclasses.replace(key, target=sib) for sib in out]

    def capture_siblings(self, key: StepKey, num_rows: int) -> None:
        """Capture `key`'s siblings for `num_rows` rows, once per such family."""
        if key.target.max_query_len != self.gamma + 1:
            return
        family = (dataclasses.replace(key, target=dataclasses.replace(key.target, num_tokens=0, num_seqs=0, num_logits=0)),
                  num_rows)
        if family in self._sibling_families:
            return
        self._sibling_families.add(family)
        for sib in self.siblings(key, num_rows):
            if sib not in self.graphs:
                self.capture(sib)

    def _slice(self, result: StepResult, plan: StepPlan) -> StepResult:
        b = len(plan.seqs)
        prop = result.proposal
        if prop is not None:
            if len(plan.draft_rows) == b:
                ids, probs, conf = prop.draft_ids[:b], prop.draft_probs[:b].clone(), prop.confidence
                conf = None if conf is None else conf[:b]
            else:  # every row drafted: keep those that decode next step
                rows = plan.draft_index
                ids, probs = prop.draft_ids[rows], prop.draft_probs[rows]
                conf = None if prop.confidence is None else prop.confidence[rows]
            prop = Proposal(ids, probs, conf)
        return StepResult(result.out_ids[:b], result.num_accepted[:b], prop)

    def clear_graphs(self) -> None:
        self.graphs.clear()
        self._sibling_families.clear()
        self.target.clear_graphs()
