"""Paged attention on the engine's KV cache in Triton: decode, extend (verify, chunked prefill), one dispatcher.

Where it sits: the fast runner's attention layers call `paged_attention` after `store_kv` has written
the step's K/V; `dspark.models.paged_attention` is the plain PyTorch reference with the same signature
(CPU and eager fallback, and the oracle the tests compare with). Layout as in `dspark.engine.kv_cache`
and `dspark.engine.batch`: q ``[N, H, D]`` flat over the batch's tokens, caches
``[num_pages, page_size, Hkv, D]``, sequence ``b``'s tokens ``query_start[b]:query_start[b+1]`` sit at
positions ``context_lens[b] + i`` and see every cached position up to their own.

Nothing here reads a device tensor on the host: the launch shape comes from the Python ints
``max_query_len`` and ``max_context_len``, so a call can be captured in a CUDA graph. They are upper
bounds (a graph captures with its promised maxima); positions beyond ``max_context_len +
max_query_len`` are not read. Left as ``None`` they are read off the batch, which synchronises.
Outputs of tokens past ``query_start[-1]`` (graph padding) are unspecified.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import triton

from dspark.engine.batch import FlatBatch
from dspark.kernels.attention_triton import _combine_kernel, _paged_attn_kernel
from dspark.kernels.pdl import use_pdl
from dspark.kernels.store_kv import _last_dim_contiguous

LOG2E = math.log2(math.e)
_INTERPRETED = type(_paged_attn_kernel).__name__ == "InterpretedFunction"  # TRITON_INTERPRET=1 at import
# Split-K (decode and one-tile verify only): a grid of fewer programs than multiprocessors is split until it
# holds about PROGRAMS_PER_SM per multiprocessor, in ranges of at least MIN_SPLIT_TOKENS positions. Measured
# on an H200 (2026-12-01, Qwen3-8B heads, bf16): batch 1 at context 4096 best with 33 splits of 128; batch 8
# with 7-15; batch 32 (256 programs) fastest unsplit, 20% slower with 3 splits.
PROGRAMS_PER_SM = 4
MIN_SPLIT_TOKENS = 128
MAX_QUERY_LEN = 1 << 30  # no upper limit on a launch's query lengths
COMBINE_TILE = 8192  # partial-output elements one combine program holds (64 fp32 registers a thread at 4 warps)


@dataclass(frozen=True)
class AttentionPlan:
    """Launch shape of one paged attention call (all Python ints: fixed for a captured graph)."""

    block_m: int  # query tokens per tile
    block_g: int  # query heads per kv head, padded
    block_n: int  # kv positions per inner step
    block_d: int  # head dim, padded
    num_q_tiles: int  # tiles per sequence (grid axis 0 is num_seqs * num_q_tiles)
    num_splits: int  # kv ranges per (tile, kv head), merged by the combine pass when > 1
    split_len: int  # positions per kv range, a multiple of block_n
    num_warps: int
    num_stages: int


def plan_attention(num_seqs: int, num_kv_heads: int, group: int, head_dim: int, max_query_len: int,
                   max_kv_len: int, num_sms: int, elem_bytes: int = 2, num_splits: int | None = None) -> AttentionPlan:
    """Choose tiles and the split-K factor for a batch with these maxima (pure; see module docstring)."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_g = triton.next_power_of_2(group)
    if max_query_len <= 1:  # decode: one token, the GQA group padded to the 16 rows tl.dot needs
        block_m, block_g = 1, max(16, block_g)
    else:  # verify blocks fit one 64-row tile; long chunks take 128-row tiles
        rows_cap = 64 if max_query_len * block_g <= 64 else 128
        block_m = min(triton.next_power_of_2(max_query_len), max(1, rows_cap // block_g))
        block_m = max(block_m, 16 // min(block_g, 16))
    rows = block_m * block_g
    # H200 sweep: 128-position kv steps beat 64 and 32 everywhere in 16-bit (decode 10-15%, prefill 9%);
    # fp32 and head dim 256 halve it to stay inside shared memory at 2-3 stages
    block_n = 128 if block_d * elem_bytes <= 256 else 64
    num_warps = 4 if rows <= 64 else 8
    num_stages = 3 if rows <= 64 and elem_bytes <= 2 else 2
    num_q_tiles = triton.cdiv(max(max_query_len, 1), block_m)
    max_kv_len = max(max_kv_len, 1)
    programs = max(num_seqs * num_q_tiles * num_kv_heads, 1)
    if num_splits is None and (num_q_tiles > 1 or programs >= num_sms):
        num_splits = 1  # the grid fills the GPU already (prefill chunks always do); partials would cost traffic
    elif num_splits is None:
        num_splits = min(triton.cdiv(PROGRAMS_PER_SM * num_sms, programs), triton.cdiv(max_kv_len, MIN_SPLIT_TOKENS))
    num_splits = max(1, num_splits)
    split_len = triton.cdiv(triton.cdiv(max_kv_len, num_splits), block_n) * block_n
    num_splits = triton.cdiv(max_kv_len, split_len)
    return AttentionPlan(block_m, block_g, block_n, block_d, num_q_tiles, num_splits, split_len, num_warps, num_stages)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: FlatBatch, scale: float, *,
                    max_query_len: int | None = None, max_context_len: int | None = None,
                    short_query_len: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """Attention of q `[N, H, D]` over the paged cache for every sequence of `batch` -> `[N, H, D]`.

    Dispatches to `paged_decode_attention` when ``max_query_len == 1`` and `paged_extend_attention`
    otherwise. `short_query_len` (a mixed step: decode / verify rows of at most that many tokens beside
    prefill chunks up to ``max_query_len``): `paged_mixed_attention`, tiles sized for each kind.
    `num_splits` overrides the split-K heuristic (tests, tuning).
    """
    if max_query_len is None:
        max_query_len = int(batch.query_lens().max()) if batch.num_seqs else 0
    args = (q, k_cache, v_cache, batch.query_start, batch.context_lens, batch.block_tables, scale)
    if short_query_len is not None and 0 < short_query_len < max_query_len:
        return paged_mixed_attention(*args, short_query_len=short_query_len, max_query_len=max_query_len,
                                     max_context_len=max_context_len)
    if max_query_len <= 1:
        return paged_decode_attention(*args, max_context_len=max_context_len, num_splits=num_splits)
    return paged_extend_attention(*args, max_query_len=max_query_len, max_context_len=max_context_len,
                                  num_splits=num_splits)


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start: torch.Tensor,
                           context_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, *,
                           max_context_len: int | None = None, num_splits: int | None = None) -> torch.Tensor:
    """One query token per sequence (q `[B, H, D]`): split-K over the pages, then a combine pass."""
    return _launch(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, 1, max_context_len, num_splits)


def paged_extend_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start: torch.Tensor,
                           context_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, *,
                           max_query_len: int | None = None, max_context_len: int | None = None,
                           num_splits: int | None = None) -> torch.Tensor:
    """Several query tokens per sequence (verify blocks, prefill chunks): cached prefix plus causal."""
    if max_query_len is None:
        max_query_len = int((query_start[1:] - query_start[:-1]).max()) if context_lens.numel() else 0
    return _launch(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, max_query_len,
                   max_context_len, num_splits)


def paged_mixed_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start: torch.Tensor,
                          context_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, *, short_query_len: int,
                          max_query_len: int, max_context_len: int | None = None) -> torch.Tensor:
    """A step of decode / verify rows (<= `short_query_len` tokens) and prefill chunks (up to `max_query_len`).

    One launch sized for the chunks gives every sequence ``max_query_len / BLOCK_M`` tiles of up to 128 rows,
    so a decode row (one token) spends a 128-row tile on every cached position. Here two launches write
    one output: the short sequences with tiles for `short_query_len` tokens (and their split-K combine, which
    also writes rows of the long ones: the second launch, after it, overwrites those), then the long ones,
    never split (a combine pass of theirs would overwrite the short rows).
    """
    if max_context_len is None:
        max_context_len = int(context_lens.max()) if context_lens.numel() else 0
    out = _launch(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, short_query_len,
                  max_context_len, None, q_range=(0, short_query_len))
    return _launch(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, max_query_len,
                   max_context_len, 1, out=out, q_range=(short_query_len, MAX_QUERY_LEN))


def _launch(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, query_start: torch.Tensor,
            context_lens: torch.Tensor, block_tables: torch.Tensor, scale: float, max_query_len: int,
            max_context_len: int | None, num_splits: int | None, out: torch.Tensor | None = None,
            q_range: tuple[int, int] = (0, MAX_QUERY_LEN)) -> torch.Tensor:
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads, num_seqs = k_cache.shape[2], context_lens.shape[0]
    if num_tokens == 0 or num_seqs == 0:
        return q.new_empty(q.shape) if out is None else out
    if max_context_len is None:
        max_context_len = int(context_lens.max())
    plan = plan_attention(num_seqs, num_kv_heads, num_heads // max(num_kv_heads, 1), head_dim, max_query_len,
                          max_context_len + max_query_len, _num_sms(q.device), q.element_size(), num_splits)
    return paged_attention_with_plan(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, plan,
                                     out=out, q_range=q_range)


def paged_attention_with_plan(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                              query_start: torch.Tensor, context_lens: torch.Tensor, block_tables: torch.Tensor,
                              scale: float, plan: AttentionPlan, out: torch.Tensor | None = None,
                              q_range: tuple[int, int] = (0, MAX_QUERY_LEN)) -> torch.Tensor:
    """The launch itself, with an explicit plan (tuning sweeps); the entry points above choose the plan.

    Only sequences whose query length lies in ``(q_range[0], q_range[1]]`` are attended (their rows of
    `out`, allocated when None, are written; with split-K the combine pass writes every row)."""
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    _check(q, k_cache, v_cache, num_heads, num_kv_heads, head_dim)
    q = _last_dim_contiguous(q)
    if out is None:
        out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    elif out.shape != q.shape or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {q.dtype} tensor of q's shape {tuple(q.shape)}, got {tuple(out.shape)}")
    num_seqs = context_lens.shape[0]
    group = num_heads // num_kv_heads
    split = plan.num_splits > 1
    dst, lse, o_strides, l_strides = split_outputs(out, plan.num_splits)
    grid = (num_seqs * plan.num_q_tiles, num_kv_heads, plan.num_splits)
    upcast = q.dtype == torch.bfloat16 and _INTERPRETED
    pdl = use_pdl(q.device, num_tokens)
    _paged_attn_kernel[grid](
        q, k_cache, v_cache, dst, lse, query_start, context_lens, block_tables,
        scale * LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        *o_strides, *l_strides, block_tables.stride(0),
        plan.num_q_tiles, plan.split_len, q_range[0], q_range[1],
        GROUP=group, HEAD_DIM=head_dim, PAGE_SIZE=page_size,
        BLOCK_M=plan.block_m, BLOCK_G=plan.block_g, BLOCK_N=plan.block_n, BLOCK_D=plan.block_d,
        SPLIT=split, DOT_PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32", DOT_UPCAST=upcast,
        USE_PDL=pdl, num_warps=plan.num_warps, num_stages=plan.num_stages, launch_pdl=pdl,
    )
    if split:
        combine_splits(dst, lse, out, plan.block_d)
    return out


def split_outputs(out: torch.Tensor, num_splits: int
                  ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int], tuple[int, int]]:
    """Where a split-K kernel writes for `out` [N, H, D]: (outputs, lse, output strides (n, h, split), lse strides).

    One split: `out` itself (the lse argument is unused). Several: float32 partials [N, H, S, D] and
    their log2-sum-exp [N, H, S], merged into `out` afterwards by `combine_splits`.
    """
    if num_splits == 1:
        return out, out, (*out.stride()[:2], 0), (0, 0)
    n, h, d = out.shape
    part = torch.empty((n, h, num_splits, d), dtype=torch.float32, device=out.device)
    lse = torch.empty((n, h, num_splits), dtype=torch.float32, device=out.device)
    return part, lse, part.stride()[:3], lse.stride()[:2]


def combine_splits(part: torch.Tensor, lse: torch.Tensor, out: torch.Tensor, block_d: int) -> None:
    """Merge split-K partials [N, H, S, D] (with their lse [N, H, S]) into out [N, H, D]."""
    num_tokens, num_heads, num_splits, head_dim = part.shape
    block_s = triton.next_power_of_2(num_splits)
    block_h = min(triton.next_power_of_2(num_heads), max(1, COMBINE_TILE // (block_s * block_d)))
    pdl = use_pdl(out.device, num_tokens)
    _combine_kernel[(num_tokens, triton.cdiv(num_heads, block_h))](
        part, lse, out, *part.stride()[:3], *lse.stride()[:2], *out.stride()[:2], num_heads, num_splits,
        HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_S=block_s, BLOCK_D=block_d, USE_PDL=pdl,
        num_warps=4, launch_pdl=pdl,
    )


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int, num_kv_heads: int,
           head_dim: int) -> None:
    if k_cache.shape != v_cache.shape or k_cache.shape[3] != head_dim:
        raise ValueError(f"cache shapes {tuple(k_cache.shape)}, {tuple(v_cache.shape)} do not fit q {tuple(q.shape)}")
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} kv heads")
    if not q.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"q and cache dtypes differ: {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the KV cache's head dim must be contiguous")


@functools.lru_cache(maxsize=None)
def _num_sms_of(device_type: str, index: int | None) -> int:
    if device_type == "cuda":
        return torch.cuda.get_device_properties(index if index is not None else torch.cuda.current_device()) \
            .multi_processor_count
    return 4  # the CPU interpreter: any small number


def _num_sms(device: torch.device) -> int:
    return _num_sms_of(device.type, device.index)
