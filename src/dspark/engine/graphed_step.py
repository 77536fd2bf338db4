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

Inputs. The runner hands `upload` the step's `HostPlan` (numpy); the host writes every integer and
float input straight into the key's padded layout (`dspark.engine.input_layout`, padding values
included) in one reusable pinned buffer, and ONE non-blocking copy moves it into the device buffer
whose typed slices ARE the tensors the graph was captured on (`dspark.engine.step_inputs`): no
device-side copies or fills. Only the waiting drafts' distributions [B, γ, V], which live on the
device, are stacked into their static buffer there (one launch, skipped when no row verifies).

Outputs are views of the graph's static tensors, valid until the next replay; the proposal's draft
distributions (kept per request until its next verify step) are copied out. ``replay_eagerly`` (tests
on the CPU) sends into the same buffers and runs `speculative_step` on them instead of a graph.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from dspark.drafters.base import Drafter, Proposal, absorbs_flat
from dspark.engine.batch import FlatBatch
from dspark.engine.graphed_target import MIN_CONTEXT_BUCKET, GraphedDenseTarget, GraphKey
from dspark.engine.host_plan import HostPlan, upload_plan
from dspark.engine.input_layout import InputLayout, input_layout
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import ScheduledSeq
from dspark.engine.step import StepPlan, StepResult, speculative_step
from dspark.engine.step_inputs import Staged, StepInputs
from dspark.engine.target import TargetOutput
from dspark.sampling import RowParams

MAX_ROW_VIEWS = 64  # step shapes whose views a graph keeps (`upload`)
MAX_UPDATE_POSITIONS = 131072  # S_pad x W_pad bound of the per-row update of drafters that absorb per row (eager does the same work)


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


def _padded_plan(key: StepKey, v: dict[str, torch.Tensor], probs: torch.Tensor, index: torch.Tensor,
                 gamma: int) -> StepPlan:
    """The plan a graph of `key` is captured on: every tensor a view of the staged inputs `v` (or of the
    static draft distributions `probs` [S, γ, V] and the row `index` [S]), every row drafting when any does."""
    s = key.target.num_seqs
    rows = list(range(s))
    batch = FlatBatch(v["input_ids"], v["positions"], v["slot_mapping"], v["query_start"], v["context_lens"],
                      v["block_tables"], v["logits_indices"], max_query_len=key.target.max_query_len,
                      max_context_len=key.target.max_context_len, short_query_len=key.target.short_query_len or None)
    params = RowParams(v["temperature"], v["top_k"], v["top_p"], key.top_k_bound, key.any_top_p, key.any_greedy)
    return StepPlan(batch, [], params, v["seeds"], v["counters"], v["logit_rows"], v["verify_logits"], v["draft_ids"],
                    probs[:s], v["num_verify"], v["num_new"], v["update_index"], v["next_known"], v["known_anchor"],
                    rows, rows if key.draft else [], index[:s] if key.draft else index[:0], gamma, key.draft_context,
                    key.draft_context, v["forced"] if key.forced else None)


RowViews = tuple[torch.Tensor, ...]


def _row_views(v: dict[str, torch.Tensor], probs: torch.Tensor, shape: tuple[int, ...]) -> RowViews:
    """The leading views a step of `shape` = (B, N, M, pages, W, Rd, forced) reads, in `_rows_plan`'s order."""
    b, n, m, pages, w, rd, forced = shape
    return (v["input_ids"][:n], v["positions"][:n], v["slot_mapping"][:n], v["query_start"][: b + 1],
            v["context_lens"][:b], v["block_tables"][:b, :pages], v["logits_indices"][:m], v["temperature"][:b],
            v["top_k"][:b], v["top_p"][:b], v["seeds"][:b], v["counters"][:b], v["logit_rows"][:m],
            v["verify_logits"][:b], v["draft_ids"][:b], probs[:b], v["num_verify"][:b], v["num_new"][:b],
            v["update_index"][:b, :w], v["next_known"][:b, :w], v["known_anchor"][:b], v["draft_index"][:rd],
            v["forced"][:b] if forced else None)


def _rows_plan(host: HostPlan, views: RowViews) -> StepPlan:
    """The step's own plan (B rows, N tokens, M logits rows) over `_row_views` of the staged inputs just sent
    (the eager plan's fields, for the step's bookkeeping: the graph replays its padded plan)."""
    (ids, pos, slots, qstart, ctx, tables, logits_indices, temperature, top_k, top_p, seeds, counters, logit_rows,
     verify_logits, draft_ids, probs, num_verify, num_new, update_index, next_known, known_anchor, draft_index,
     forced) = views
    batch = FlatBatch(ids, pos, slots, qstart, ctx, tables, logits_indices, max_query_len=host.max_query_len,
                      max_context_len=host.max_context)
    params = RowParams(temperature, top_k, top_p, host.max_top_k, host.any_top_p, host.any_greedy)
    return StepPlan(batch, host.seqs, params, seeds, counters, logit_rows, verify_logits, draft_ids, probs, num_verify,
                    num_new, update_index, next_known, known_anchor, host.sampled_rows, host.draft_rows, draft_index,
                    host.num_drafts, host.max_context, host.draft_length, forced)


@dataclass
class _Captured:
    plan: StepPlan  # over the staged inputs
    result: StepResult | None  # the graph's static outputs (None: replayed eagerly)
    graph: torch.cuda.CUDAGraph | None
    inputs: Staged  # the key's input layout over the shared buffers
    row_views: dict[tuple[int, ...], RowViews] = dataclasses.field(default_factory=dict)  # by step shape (bounded)


class GraphedStep:
    def __init__(self, target: GraphedDenseTarget, drafter: Drafter | None, draft_kv: PagedKVCache | None,
                 max_seqs: int) -> None:
        """`max_seqs`: the most sequences a step schedules (the engine's max_num_seqs)."""
        self.target, self.drafter, self.draft_kv = target, drafter, draft_kv
        self.gamma = drafter.config.num_drafts if drafter is not None else 0
        self.layer_ids = None if drafter is None else list(drafter.config.target_layer_ids)
        self.per_row_update = drafter is not None and not absorbs_flat(drafter)
        sizes = target.sizes
        need = max_seqs + 1  # + the dummy sequence of padding tokens
        self.max_seqs = next((x for x in sizes if x >= need), sizes[-1])
        self.replay_eagerly = target.replay_eagerly
        self.graphs: dict[StepKey, _Captured] = {}
        self._sibling_families: set[tuple[StepKey, int]] = set()  # (key without its shape, rows): siblings captured
        self._siblings_done: set[tuple[StepKey, int]] = set()  # (key, rows) whose family is captured
        self._inputs: StepInputs | None = None  # every integer / float input, one layout per key
        self._probs: torch.Tensor | None = None  # [S, γ, V] the waiting drafts' distributions (stay on the device)
        self._proposal_out: torch.Tensor | None = None  # [S, γ, V] what every graph's proposal writes
        self._index: torch.Tensor | None = None  # [S] 0 .. S-1: the draft rows of a graph (every row drafts)
        self._no_probs: torch.Tensor | None = None  # [γ, V] zeros: a row verifying no drafts
        self._staged: tuple[StepPlan, _Captured] | None = None  # the plan `upload` sent last, and its graph
        self._raw = _RawForward(target)
        self.num_graph_steps = self.num_eager_steps = 0

    @property
    def enabled(self) -> bool:
        return self.target.use_graphs or self.replay_eagerly

    def upload(self, host: HostPlan) -> StepPlan:
        """The step's inputs on the device: for a graphed step written in its graph's padded layout and sent
        in one copy into the buffers the graph reads (the plan returned is B-row views of them, valid until
        the next `upload`); else `upload_plan`'s eager plan. Captures the step's graph (and its siblings)
        first when new, since a capture writes padding into the same buffers."""
        key = self.key(host)
        if key is None:
            return upload_plan(host, self.target.device)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.capture(key)
        self.capture_siblings(key, host.num_seqs)
        self._inputs.send(entry.inputs, host)
        self._gather_probs(host)
        shape = (host.num_seqs, int(host.input_ids.shape[0]), int(host.logit_rows.shape[0]), int(host.tables.shape[1]),
                 int(host.update_index.shape[1]), len(host.draft_rows), int(host.forced is not None))
        views = entry.row_views.get(shape)
        if views is None:  # a steady workload repeats a handful of shapes: keep their views
            if len(entry.row_views) >= MAX_ROW_VIEWS:
                entry.row_views.clear()
            views = entry.row_views[shape] = _row_views(entry.inputs.device, self._probs, shape)
        plan = _rows_plan(host, views)
        self._staged = (plan, entry)
        return plan

    def _gather_probs(self, host: HostPlan) -> None:
        """The waiting drafts' distributions into the static [S, γ, V] buffer (one device-side stack; rows
        verifying none get zeros). Skipped when no row verifies: then nothing reads them."""
        if self.gamma == 0 or not host.num_verify.any():
            return
        probs = [self._no_probs if p is None else p[: self.gamma] for p in host.waiting_probs]
        torch.stack(probs, out=self._probs[: host.num_seqs])

    def __call__(self, plan: StepPlan) -> StepResult:
        staged, self._staged = self._staged, None
        if staged is None or staged[0] is not plan:  # not sent by `upload` (no graph serves it): eager
            self.num_eager_steps += 1
            return speculative_step(plan, self.target, self.drafter, self.draft_kv)
        entry = staged[1]
        if entry.graph is not None:
            entry.graph.replay()
            result = entry.result
        else:
            result = speculative_step(entry.plan, self._raw, self.drafter, self.draft_kv)
        self.num_graph_steps += 1
        return self._slice(result, plan)

    def key(self, host: HostPlan) -> StepKey | None:
        """The graph that serves this step, or None (an eager step)."""
        if not self.enabled:
            return None
        tkey = self.target.graph_key(int(host.input_ids.shape[0]), host.num_seqs, host.max_query_len, host.max_context,
                                     int(host.tables.shape[1]), self.layer_ids, int(host.logit_rows.shape[0]))
        if tkey is None or tkey.num_seqs > self.max_seqs:
            return None
        width = 0
        if self.per_row_update:
            width = max(tkey.max_query_len, self.gamma + 1)
            if width * tkey.num_seqs > MAX_UPDATE_POSITIONS or width > self.target.sizes[-1]:
                return None
        top_k = 0 if host.max_top_k == 0 else (self.target.vocab_size if host.max_top_k < 0 else
                                               min(_pow2_at_least(host.max_top_k, 1), self.target.vocab_size))
        draft_ctx = 0
        if self.drafter is not None:  # the proposal gathers this many positions: within the block tables
            draft_ctx = min(_pow2_at_least(host.draft_length, MIN_CONTEXT_BUCKET), self.target.max_model_len)
        return StepKey(tkey, top_k, host.any_top_p, host.any_greedy, bool(host.draft_rows), host.forced is not None,
                       draft_ctx, width)

    def _layout(self, key: StepKey) -> InputLayout:
        t = key.target
        return input_layout(t.num_tokens, t.num_seqs, t.logits_rows, self.gamma, key.update_width,
                            self.target.max_pages, key.forced)

    def _allocate(self) -> None:
        """The shared buffers, sized for the largest key."""
        sizes, device = self.target.sizes, self.target.device
        largest = input_layout(sizes[-1], self.max_seqs, sizes[-1], self.gamma,
                               sizes[-1] if self.per_row_update else 0, self.target.max_pages, True)
        self._inputs = StepInputs(largest.nbytes, device)
        self._probs = torch.zeros(self.max_seqs, self.gamma, self.target.vocab_size, dtype=torch.float32, device=device)
        self._index = torch.arange(self.max_seqs, dtype=torch.long, device=device)
        self._no_probs = torch.zeros(self.gamma, self.target.vocab_size, dtype=torch.float32, device=device)
        # the proposal's [S, γ, V] distributions of every graph: one buffer, not one per graph (1 GiB at S = 256
        # for a 150k vocabulary, and a family of sibling graphs per row count ran an H200 out of memory)
        self._proposal_out = torch.zeros_like(self._probs) if self.drafter is not None else None

    @torch.no_grad()
    def capture(self, key: StepKey) -> _Captured:
        """Capture (or, in `replay_eagerly` mode, only prepare) the graph of `key`."""
        if self._inputs is None:
            self._allocate()
        inputs = self._inputs.stage(self._layout(key))
        plan = _padded_plan(key, inputs.device, self._probs, self._index, self.gamma)
        plan.proposal_out = self._proposal_out  # every graph's proposal in one buffer: `_slice` copies it out
        if not self.target.use_graphs:
            entry = _Captured(plan, None, None, inputs)
            self.graphs[key] = entry
            return entry
        device = self.target.device
        self._inputs.send(inputs, None)  # every row padding
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
        entry = _Captured(plan, result, graph, inputs)
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
        if key.target.max_query_len != self.gamma + 1 or (key, num_rows) in self._siblings_done:
            return
        self._siblings_done.add((key, num_rows))
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
        self._siblings_done.clear()
        self.target.clear_graphs()
