"""`block_attention`: a draft block's queries over [paged context ; the block's own K/V], in one Triton kernel.

Where it sits: the fused inference path of the DSpark / DFlash drafter (`dspark.drafters.fused`) calls
it in every draft layer instead of gathering the paged context into a dense tensor, concatenating the
block's own K/V and running a masked SDPA (`DSparkDrafter.block_hidden`, the plain reference). Shapes:
q ``[R·γ, H, D]`` (row r's γ slots at ``r·γ .. r·γ+γ-1``), the block's own k, v ``[R·γ, Hkv, D]``,
context caches ``[num_pages, page_size, Hkv, D]`` read through ``block_tables [R, P]`` for positions
``< context_lens[r]``. Every slot sees all of its row's context and, bidirectionally, all γ slots of its
own block (the mask of `block_hidden`); GQA reads each K/V tile once for the ``H / Hkv`` query heads
that share it.

The launch shape comes from `dspark.kernels.paged_attention.plan_attention` (tiles of ``(slot, head in
group)`` rows, split-K over the context for small grids, merged by `combine_splits`); the own block is
attended by the first split only. ``max_context_len`` is a host upper bound, so a call never reads the
device and can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dspark.kernels.attention_triton import (attend_paged_range, load_q_tile, online_softmax_step, softmax_start,
                                            store_rows, tile_rows)
from dspark.kernels.paged_attention import LOG2E, _INTERPRETED, _num_sms, combine_splits, plan_attention, split_outputs
from dspark.kernels.pdl import use_pdl, wait_inputs


@triton.jit
def _block_attn_kernel(
    q_ptr, k_own_ptr, v_own_ptr, k_cache_ptr, v_cache_ptr, out_ptr, lse_ptr, context_lens_ptr, block_tables_ptr,
    scale_log2e,
    stride_qn, stride_qh, stride_kon, stride_koh, stride_von, stride_voh,
    stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
    stride_on, stride_oh, stride_os, stride_ln, stride_lh, stride_bt,
    num_q_tiles, split_len,
    BLOCK: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_J: tl.constexpr,
    BLOCK_D: tl.constexpr, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    wait_inputs(USE_PDL)
    pid = tl.program_id(0)
    row = pid // num_q_tiles
    t0 = (pid % num_q_tiles) * BLOCK_M
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    ctx = tl.load(context_lens_ptr + row).to(tl.int32)

    tok, head, row_valid = tile_rows(t0, kv_head, BLOCK, GROUP, BLOCK_M, BLOCK_G)  # (slot, head) rows
    flat_tok = row.to(tl.int64) * BLOCK + tok
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    q = load_q_tile(q_ptr, flat_tok, head, row_valid, offs_d, d_valid, stride_qn, stride_qh, DOT_UPCAST)  # [M, D]

    m_i, l_i, acc = softmax_start(BLOCK_M * BLOCK_G, BLOCK_D)
    # the context: positions lo .. hi-1 of this split, through the row's block table, all visible
    lo = split * split_len
    hi = tl.minimum(lo + split_len, ctx)
    m_i, l_i, acc = attend_paged_range(
        q, tok, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, block_tables_ptr + row.to(tl.int64) * stride_bt, lo, hi,
        kv_head, offs_d, d_valid, scale_log2e, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
        PAGE_SIZE, BLOCK_N, False, DOT_PRECISION, DOT_UPCAST)

    # the block's own γ keys (first split only), visible to every slot of the block
    if split == 0:
        own = tl.arange(0, BLOCK_J)
        own_valid = own < BLOCK
        own_tok = row.to(tl.int64) * BLOCK + own
        k = tl.load(k_own_ptr + own_tok[None, :] * stride_kon + kv_head * stride_koh + offs_d[:, None],
                    mask=own_valid[None, :] & d_valid[:, None], other=0.0)  # [D, J]
        v = tl.load(v_own_ptr + own_tok[:, None] * stride_von + kv_head * stride_voh + offs_d[None, :],
                    mask=own_valid[:, None] & d_valid[None, :], other=0.0)  # [J, D]
        if DOT_UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        m_i, l_i, acc = online_softmax_step(q, k, v, own_valid[None, :], m_i, l_i, acc, scale_log2e, DOT_PRECISION)

    store_rows(out_ptr, lse_ptr, acc, m_i, l_i, flat_tok, head, row_valid, offs_d, d_valid, split,
               stride_on, stride_oh, stride_os, stride_ln, stride_lh, SPLIT)


def block_attention(q: torch.Tensor, k_own: torch.Tensor, v_own: torch.Tensor, k_cache: torch.Tensor,
                    v_cache: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor, scale: float,
                    max_context_len: int, num_splits: int | None = None) -> torch.Tensor:
    """q [R·γ, H, D] over each row's paged context (< context_lens[r]) and its block's own k/v [R·γ, Hkv, D].

    `max_context_len` bounds ``context_lens`` on the host; `num_splits` overrides the split-K heuristic.
    Returns [R·γ, H, D] in q's dtype. Caches are ``[num_pages, page_size, Hkv, D]`` (any page size; a
    private ``[R, capacity, Hkv, D]`` cache is the same with page size = capacity and table ``r -> r``).
    """
    rows = context_lens.shape[0]
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_cache.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if rows == 0 or num_tokens == 0:
        return out
    block = num_tokens // rows
    if block * rows != num_tokens or k_own.shape != (num_tokens, num_kv_heads, head_dim) or v_own.shape != k_own.shape:
        raise ValueError(f"q {tuple(q.shape)}, own k {tuple(k_own.shape)}, v {tuple(v_own.shape)} do not fit {rows} rows")
    if num_heads % num_kv_heads or v_cache.shape != k_cache.shape or k_cache.shape[3] != head_dim:
        raise ValueError(f"caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} do not fit q {tuple(q.shape)}")
    if not q.dtype == k_own.dtype == v_own.dtype == k_cache.dtype == v_cache.dtype:
        raise ValueError(f"dtypes differ: q {q.dtype}, own k/v {k_own.dtype}/{v_own.dtype}, cache {k_cache.dtype}")
    if any(t.stride(-1) != 1 for t in (q, k_own, v_own, k_cache, v_cache)):
        raise ValueError("q, the own k/v and the caches need a contiguous head dim")
    plan = plan_attention(rows, num_kv_heads, num_heads // num_kv_heads, head_dim, block, max(max_context_len, 1),
                          _num_sms(q.device), q.element_size(), num_splits)
    dst, lse, o_strides, l_strides = split_outputs(out, plan.num_splits)
    upcast = q.dtype == torch.bfloat16 and _INTERPRETED
    pdl = use_pdl(q.device, num_tokens)
    _block_attn_kernel[(rows * plan.num_q_tiles, num_kv_heads, plan.num_splits)](
        q, k_own, v_own, k_cache, v_cache, dst, lse, context_lens, block_tables, scale * LOG2E,
        q.stride(0), q.stride(1), k_own.stride(0), k_own.stride(1), v_own.stride(0), v_own.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        *o_strides, *l_strides, block_tables.stride(0), plan.num_q_tiles, plan.split_len,
        BLOCK=block, GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim, PAGE_SIZE=page_size,
        BLOCK_M=plan.block_m, BLOCK_G=plan.block_g, BLOCK_N=plan.block_n, BLOCK_J=max(16, triton.next_power_of_2(block)),
        BLOCK_D=plan.block_d, SPLIT=plan.num_splits > 1,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 or upcast else "tf32", DOT_UPCAST=upcast,
        USE_PDL=pdl, num_warps=plan.num_warps, num_stages=plan.num_stages, launch_pdl=pdl,
    )
    if plan.num_splits > 1:
        combine_splits(dst, lse, out, plan.block_d)
    return out
