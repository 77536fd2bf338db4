"""`GraphedDenseTarget`: the dense target forward replayed from CUDA graphs (a `TargetForward` backend).

Where it sits: `dspark.engine.runner.ModelRunner` uses it instead of `DenseTarget` when the model is
on CUDA (``cuda_graphs=True``); the step (`dspark.engine.step`) calls `forward` once per step.

How a step runs. Graphs are captured lazily, one per `GraphKey`: the step's token count N padded up
a ladder (``sizes``, 1 ... 512), its sequence count padded up the same ladder, a promised maximum
query length per sequence (1 for pure decode steps, ``max_query_len`` = γ+1 for verify steps, so one
graph serves any mix of verify lengths), the attention's context bound, and the feature layer ids.
The step's tensors are copied into static buffers (device-to-device, no host sync); padding tokens
(N .. N_pad) have slot -1 (their K/V are never stored) and form one dummy sequence with context 0 and
an all -1 block table (it reads the null page); further padded sequences are empty. Outputs of padding
rows are unspecified and sliced off. Steps with query runs longer than the promise (prefill chunks) get
graphs of their own: a power-of-two query promise and a ladder size of logits rows (a 2,048-token
chunk does not run the LM head 2,048 times). Steps past the ladder run the same forward eagerly.

The context bound: the split-K attention plan of small grids depends on the longest context, so a
graph whose plan splits is captured for a power-of-two context bucket (>= the step's longest context);
plans that do not split (enough sequences to fill the GPU) use ``max_model_len``.

Returned tensors are views of the graph's static outputs: valid until the next `forward` (the step
consumes them before that). ``enforce_eager=True`` (or a CPU model) turns graphs off: every step runs
eagerly, unpadded, exactly as `DenseTarget`.
"""

from __future__ import annotations

import bisect
import os
import dataclasses
from dataclasses import dataclass

import torch

from dspark.kernels import HAS_TRITON
from dspark.engine.batch import FlatBatch
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.messages import ScheduledSeq
from dspark.engine.target import TargetOutput
from dspark.models import DenseLM, DenseOutput

DEFAULT_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MIN_CONTEXT_BUCKET = 256
MIN_CHUNK_BOUND = 16  # smallest query promise of a graph with prefill chunks


def _pow2_at_least(x: int, floor: int) -> int:
    b = floor
    while b < x:
        b *= 2
    return b


def ladder_for(max_tokens: int, max_seqs: int | None = None) -> tuple[int, ...]:
    """The engine's ladder: powers of two and their halfway points (1, 2, 3, 4, 6, 8, 12, ...) up to
    `max_tokens` (a step's token budget), plus ``max_seqs + 1`` (a full batch and its dummy sequence)."""
    out = {1, 2}
    b = 2
    while b < max_tokens:
        out.update((b + b // 2, 2 * b))
        b *= 2
    if max_seqs is not None:
        out.add(max_seqs + 1)
    return tuple(sorted(out))


@dataclass(frozen=True)
class GraphKey:
    num_tokens: int  # padded N
    num_seqs: int  # padded number of sequences (the dummy one included)
    max_query_len: int  # promised per sequence
    max_context_len: int  # promised bound of every context_lens[b]
    layer_ids: tuple[int, ...] | None
    num_logits: int = 0  # padded logits rows (0: num_tokens)
    short_query_len: int = 0  # a chunk graph: the decode / verify rows' promise, attended apart (0: none)

    @property
    def logits_rows(self) -> int:
        return self.num_logits or self.num_tokens


@dataclass
class _Captured:
    batch: FlatBatch  # views of the static buffers
    out: DenseOutput  # the graph's static outputs
    graph: torch.cuda.CUDAGraph | None  # None: replayed eagerly (tests on the CPU)


class _StaticBuffers:
    """One set of input buffers shared by every graph (each graph sees a prefix of them)."""

    def __init__(self, max_tokens: int, max_pages: int, device: torch.device) -> None:
        long = dict(dtype=torch.long, device=device)
        self.input_ids = torch.zeros(max_tokens, **long)
        self.positions = torch.zeros(max_tokens, **long)
        self.slot_mapping = torch.full((max_tokens,), -1, **long)
        self.logits_indices = torch.zeros(max_tokens, **long)
        self.query_start = torch.zeros(max_tokens + 1, **long)
        self.context_lens = torch.zeros(max_tokens, **long)
        self.block_tables = torch.full((max_tokens, max_pages), -1, dtype=torch.int32, device=device)

    def batch(self, key: GraphKey) -> FlatBatch:
        n, s = key.num_tokens, key.num_seqs
        return FlatBatch(self.input_ids[:n], self.positions[:n], self.slot_mapping[:n], self.query_start[: s + 1],
                         self.context_lens[:s], self.block_tables[:s], self.logits_indices[: key.logits_rows],
                         max_query_len=key.max_query_len, max_context_len=key.max_context_len,
                         short_query_len=key.short_query_len or None)

    def fill(self, key: GraphKey, src: FlatBatch) -> None:
        """Copy a step's tensors in and pad (see the module docstring); device-to-device only."""
        n, s, m = src.num_tokens, src.num_seqs, int(src.logits_indices.shape[0])
        n_pad, s_pad = key.num_tokens, key.num_seqs
        pages = src.block_tables.shape[1]
        torch._foreach_copy_([self.input_ids[:n], self.positions[:n], self.slot_mapping[:n], self.logits_indices[:m],
                              self.query_start[: s + 1], self.context_lens[:s]],
                             [src.input_ids, src.positions, src.slot_mapping, src.logits_indices, src.query_start,
                              src.context_lens])  # one launch
        self.block_tables[:s, :pages].copy_(src.block_tables)  # columns past `pages` are never read for these rows
        if n < n_pad:
            for buf, pad in ((self.input_ids, 0), (self.positions, 0), (self.slot_mapping, -1)):
                buf[n:n_pad].fill_(pad)
        if m < key.logits_rows:
            self.logits_indices[m: key.logits_rows].zero_()
        if s < s_pad:
            self.query_start[s + 1: s_pad + 1].fill_(n_pad)  # the dummy sequence takes every padding token
            self.context_lens[s:s_pad].zero_()
            self.block_tables[s:s_pad].fill_(-1)

    def fill_idle(self, key: GraphKey) -> None:
        """Harmless contents for warm-up and capture: every token in one empty-context sequence, no KV stores."""
        n, s = key.num_tokens, key.num_seqs
        self.input_ids[:n].zero_()
        self.positions[:n].zero_()
        self.slot_mapping[:n].fill_(-1)
        self.logits_indices[:n].zero_()
        self.query_start[0] = 0
        self.query_start[1: s + 1].fill_(n)
        self.context_lens[:s].zero_()
        self.block_tables[:s].fill_(-1)


class GraphedDenseTarget:
    supports_prefix_caching = True

    def __init__(self, model: DenseLM, num_pages: int, page_size: int, *, max_query_len: int = 8,
                 sizes: tuple[int, ...] = DEFAULT_SIZES, max_model_len: int | None = None,
                 enforce_eager: bool = False, kv: PagedKVCache | None = None) -> None:
        """`max_query_len`: the promised query tokens per sequence of verify graphs (γ+1)."""
        if max_query_len < 1 or not sizes or min(sizes) < 1:
            raise ValueError(f"max_query_len and sizes must be >= 1, got {max_query_len}, {sizes}")
        self.model = model
        self.vocab_size = model.config.vocab_size
        self.device = model.device
        self.kv: PagedKVCache = kv if kv is not None else model.new_kv_cache(num_pages, page_size)
        self.page_size = page_size
        self.max_query_len = max_query_len
        self.sizes = tuple(sorted(set(int(s) for s in sizes)))
        cap = num_pages * page_size
        self.max_model_len = min(max_model_len or model.config.max_position_embeddings, cap)
        self.max_pages = -(-self.max_model_len // page_size)
        # graphs need the fused path (Triton attention sized by host bounds: no sync inside the capture)
        self.use_graphs = self.device.type == "cuda" and not enforce_eager and model.uses_fused_path()
        self.replay_eagerly = False  # tests: pad into the static buffers but run the model instead of a graph
        # mixed steps attend decode rows and prefill chunks in two launches (DSPARK_SPLIT_MIXED=0: one)
        self.split_mixed = os.environ.get("DSPARK_SPLIT_MIXED", "1") != "0"
        self.graphs: dict[GraphKey, _Captured] = {}
        self._splits: dict[tuple[int, int], bool] = {}  # (seqs, query len) -> does the attention plan split
        self._static: _StaticBuffers | None = None
        self._pool = None
        self.num_graph_steps = self.num_eager_steps = 0

    def release(self, req_id: str) -> None:
        pass

    # ------------------------------------------------------------------------------ keys
    def host_bounds(self, batch: FlatBatch, seqs: list[ScheduledSeq] | None) -> tuple[int, int]:
        """(max query length, max context length) from the batch's host fields, else the scheduled seqs."""
        if batch.max_query_len is not None and batch.max_context_len is not None:
            return batch.max_query_len, batch.max_context_len
        if seqs and len(seqs) == batch.num_seqs:
            return max(s.num_query for s in seqs), max(s.start for s in seqs)
        return batch.host_bounds()  # reads the device: only callers that give neither

    def graph_key(self, num_tokens: int, num_seqs: int, max_query_len: int, max_context_len: int,
                  block_table_width: int, layer_ids: list[int] | None, num_logits: int | None = None) -> GraphKey | None:
        """The graph that serves a step of this shape, or None (run eagerly).

        Query runs longer than the promise (prefill chunks) get a power-of-two promise of their own
        (>= ``MIN_CHUNK_BOUND``), and their logits rows (`num_logits`, default every token) a ladder size.
        """
        if not (self.use_graphs or self.replay_eagerly) or num_tokens == 0 or num_tokens > self.sizes[-1]:
            return None
        if block_table_width > self.max_pages:
            return None
        n_pad = self.sizes[bisect.bisect_left(self.sizes, num_tokens)]
        if max_query_len <= self.max_query_len:
            q_bound = 1 if max_query_len <= 1 else self.max_query_len
            if max_context_len + q_bound > self.max_model_len:
                return None
        else:  # a chunk: the kernel reads bound + promise >= every row's kv length (see context_bound)
            q_bound = min(_pow2_at_least(max_query_len, MIN_CHUNK_BOUND), n_pad, self.max_model_len)
        m = num_tokens if num_logits is None else num_logits
        m_pad = min(self.sizes[bisect.bisect_left(self.sizes, max(m, 1))], n_pad)
        need = num_seqs + (1 if n_pad > num_tokens else 0)
        i = bisect.bisect_left(self.sizes, need)
        if i == len(self.sizes):
            return None
        s_pad = self.sizes[i]
        bound = self.context_bound(s_pad, q_bound, max_context_len)
        ids = None if layer_ids is None else tuple(int(x) for x in layer_ids)
        return GraphKey(n_pad, s_pad, q_bound, bound, ids, 0 if m_pad == n_pad else m_pad, self.short_for(q_bound))

    def short_for(self, max_query_len: int) -> int:
        """A step whose queries run past the verify promise (prefill chunks): that promise, to which its decode /
        verify rows keep and which attention sizes their tiles by (0: not a mixed step, or ``DSPARK_SPLIT_MIXED=0``)."""
        return self.max_query_len if self.split_mixed and self.max_query_len < max_query_len else 0

    def context_bound(self, num_seqs: int, max_query_len: int, max_context_len: int) -> int:
        full = self.max_model_len - max_query_len
        if (num_seqs, max_query_len) not in self._splits and not HAS_TRITON:  # the eager reference: no split-K
            self._splits[num_seqs, max_query_len] = False
        if (num_seqs, max_query_len) not in self._splits:
            from dspark.kernels import plan_attention

            cfg = self.model.config
            plan = plan_attention(num_seqs, cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.head_dim,
                                  max_query_len, self.max_model_len, self._num_sms(), self.model.dtype.itemsize)
            self._splits[num_seqs, max_query_len] = plan.num_splits > 1
        if not self._splits[num_seqs, max_query_len]:
            return full
        bucket = MIN_CONTEXT_BUCKET
        while bucket < max_context_len:
            bucket *= 2
        return min(bucket, full)

    def _num_sms(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).multi_processor_count
        return 4

    # ------------------------------------------------------------------------------ forward
    @torch.no_grad()
    def forward(self, batch: FlatBatch, seqs: list[ScheduledSeq] | None, layer_ids: list[int] | None) -> TargetOutput:
        max_q, max_ctx = self.host_bounds(batch, seqs)
        key = self.graph_key(batch.num_tokens, batch.num_seqs, max_q, max_ctx, batch.block_tables.shape[1], layer_ids,
                             int(batch.logits_indices.shape[0]))
        if key is None:
            self.num_eager_steps += 1
            out = self.model(dataclasses.replace(batch, max_query_len=max_q, max_context_len=max_ctx,
                                                 short_query_len=self.short_for(max_q) or None), self.kv, layer_ids)
            return TargetOutput(out.logits, out.features, out.last_hidden)
        entry = self.graphs.get(key) or self.capture(key)
        self._static.fill(key, batch)
        if entry.graph is not None:
            entry.graph.replay()
            out = entry.out
        else:
            out = self.model(entry.batch, self.kv, None if key.layer_ids is None else list(key.layer_ids))
        self.num_graph_steps += 1
        n, m = batch.num_tokens, int(batch.logits_indices.shape[0])
        return TargetOutput(out.logits[:m], None if out.features is None else out.features[:n], out.last_hidden[:n])

    def static_buffers(self) -> _StaticBuffers:
        """The input buffers every graph of this target reads (`dspark.engine.graphed_step` has its own)."""
        if self._static is None:
            self._static = _StaticBuffers(self.sizes[-1], self.max_pages, self.device)
        return self._static

    def graph_pool(self):
        """The memory pool shared by every graph captured over this target (None before the first)."""
        return self._pool

    def keep_pool(self, pool) -> None:
        if self._pool is None:
            self._pool = pool

    @torch.no_grad()
    def capture(self, key: GraphKey) -> _Captured:
        """Capture (or, in `replay_eagerly` mode, only prepare) the graph of `key`."""
        batch = self.static_buffers().batch(key)
        ids = None if key.layer_ids is None else list(key.layer_ids)
        if not self.use_graphs:
            entry = _Captured(batch, DenseOutput(torch.empty(0), torch.empty(0), None), None)
            self.graphs[key] = entry
            return entry
        self._static.fill_idle(key)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # compile the Triton kernels and pick cuBLAS algorithms outside the capture
            for _ in range(2):
                self.model(batch, self.kv, ids)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.model(batch, self.kv, ids)
        self.keep_pool(graph.pool())
        entry = _Captured(batch, out, graph)
        self.graphs[key] = entry
        return entry

    def clear_graphs(self) -> None:
        """Drop every captured graph and its memory (e.g. before a different workload)."""
        self.graphs.clear()
        self._pool = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
