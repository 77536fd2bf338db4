"""The Triton programs behind `dspark.kernels.paged_attention`: one split-K paged attention kernel and its combine pass.

`_paged_attn_kernel` handles a tile of ``BLOCK_M`` query tokens of one sequence times the ``GROUP``
query heads that share one kv head (GQA), so those heads read each K/V tile once; the tile's rows are
``(token, head-in-group)`` pairs, padded to a power of two and to at least 16 rows for `tl.dot`.
Decode is the same program with ``BLOCK_M = 1``. Keys are read through the block table token by token
(``page = block_table[pos // PAGE_SIZE]``), so any page size works and pages need not be contiguous.
Each query at absolute position ``context_len + i`` sees every position ``<= context_len + i``
(cached prefix plus causal over the new tokens, whose K/V are already in the cache).

The kv axis can be cut into ``num_splits`` ranges of ``split_len`` positions (flash-decoding): each
program then writes a normalised partial output and its log2-sum-exp, and `_combine_kernel` merges
the splits. With one split the program writes the final output directly.

Its pieces (`tile_rows`, `load_q_tile`, `softmax_start`, `attend_paged_range`, `online_softmax_step`,
`store_rows`) also serve the drafter's block attention (`dspark.kernels.block_attention`).
``DOT_UPCAST`` exists for Triton's CPU interpreter only, whose `tl.dot` gives garbage for bf16
operands (Triton 3.9); the wrapper sets it there, never on a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl

from dspark.kernels.pdl import wait_inputs


@triton.jit
def _paged_attn_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr, lse_ptr,
    query_start_ptr, context_lens_ptr, block_tables_ptr,
    scale_log2e,
    stride_qn, stride_qh,
    stride_kp, stride_ks, stride_kh,
    stride_vp, stride_vs, stride_vh,
    stride_on, stride_oh, stride_os,
    stride_ln, stride_lh,
    stride_bt,
    num_q_tiles, split_len, q_len_above, q_len_upto,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr, USE_PDL: tl.constexpr,
):
    """Sequences whose query length lies in (q_len_above, q_len_upto] only (a mixed step's two launches)."""
    wait_inputs(USE_PDL)
    pid = tl.program_id(0)
    seq = pid // num_q_tiles
    tile = pid % num_q_tiles
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    q_start = tl.load(query_start_ptr + seq).to(tl.int32)
    q_len = tl.load(query_start_ptr + seq + 1).to(tl.int32) - q_start
    t0 = tile * BLOCK_M
    if (t0 >= q_len) | (q_len <= q_len_above) | (q_len > q_len_upto):
        return
    ctx = tl.load(context_lens_ptr + seq).to(tl.int32)

    tok, head, row_valid = tile_rows(t0, kv_head, q_len, GROUP, BLOCK_M, BLOCK_G)
    q_pos = ctx + tok
    flat_tok = (q_start + tok).to(tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    d_valid = offs_d < HEAD_DIM
    q = load_q_tile(q_ptr, flat_tok, head, row_valid, offs_d, d_valid, stride_qn, stride_qh, DOT_UPCAST)  # [M, D]

    # kv range of this split, cut at the tile's last query position (causal)
    last_pos = ctx + tl.minimum(t0 + BLOCK_M, q_len) - 1
    lo = split * split_len
    hi = tl.minimum(lo + split_len, last_pos + 1)

    m_i, l_i, acc = softmax_start(BLOCK_M * BLOCK_G, BLOCK_D)
    m_i, l_i, acc = attend_paged_range(
        q, q_pos, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, block_tables_ptr + seq.to(tl.int64) * stride_bt, lo, hi,
        kv_head, offs_d, d_valid, scale_log2e, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
        PAGE_SIZE, BLOCK_N, True, DOT_PRECISION, DOT_UPCAST)

    store_rows(out_ptr, lse_ptr, acc, m_i, l_i, flat_tok, head, row_valid, offs_d, d_valid, split,
               stride_on, stride_oh, stride_os, stride_ln, stride_lh, SPLIT)


@triton.jit
def attend_paged_range(q, q_pos, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, lo, hi, kv_head, offs_d, d_valid,
                       scale_log2e, stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
                       PAGE_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                       DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """Fold the paged keys lo .. hi-1 (through block-table row `bt_row`) into the running softmax; with
    CAUSAL a row sees only positions <= its q_pos, else every one of them."""
    for start in range(lo, hi, BLOCK_N):
        kv_pos = start + tl.arange(0, BLOCK_N)
        kv_valid = kv_pos < hi
        k, v = paged_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, kv_pos, kv_valid, kv_head, offs_d, d_valid,
                             stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh, PAGE_SIZE, DOT_UPCAST)
        visible = kv_valid[None, :]
        if CAUSAL:
            visible = visible & (kv_pos[None, :] <= q_pos[:, None])
        m_i, l_i, acc = online_softmax_step(q, k, v, visible, m_i, l_i, acc, scale_log2e, DOT_PRECISION)
    return m_i, l_i, acc


@triton.jit
def tile_rows(t0, kv_head, q_len, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """The tile's rows (token t0 + r // BLOCK_G, head kv_head·GROUP + r % BLOCK_G): (token, head, valid)."""
    offs_r = tl.arange(0, BLOCK_M * BLOCK_G)
    tok = t0 + offs_r // BLOCK_G
    g = offs_r % BLOCK_G
    return tok, kv_head * GROUP + g, (tok < q_len) & (g < GROUP)


@triton.jit
def load_q_tile(q_ptr, flat_tok, head, row_valid, offs_d, d_valid, stride_qn, stride_qh, DOT_UPCAST: tl.constexpr):
    """The tile's query rows [M, D] (zeros where not valid)."""
    q = tl.load(q_ptr + flat_tok[:, None] * stride_qn + head[:, None] * stride_qh + offs_d[None, :],
                mask=row_valid[:, None] & d_valid[None, :], other=0.0)
    if DOT_UPCAST:
        q = q.to(tl.float32)
    return q


@triton.jit
def paged_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, kv_pos, kv_valid, kv_head, offs_d, d_valid,
                  stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh,
                  PAGE_SIZE: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """K [D, N] and V [N, D] of one kv head at positions kv_pos, read through a block-table row."""
    page = tl.load(bt_row + kv_pos // PAGE_SIZE, mask=kv_valid, other=0)
    page = tl.maximum(page, 0).to(tl.int64)  # padded table entries (-1) read page 0, never out of bounds
    in_page = kv_pos % PAGE_SIZE
    k_off = page * stride_kp + in_page * stride_ks + kv_head * stride_kh
    v_off = page * stride_vp + in_page * stride_vs + kv_head * stride_vh
    k = tl.load(k_cache_ptr + k_off[None, :] + offs_d[:, None], mask=kv_valid[None, :] & d_valid[:, None], other=0.0)
    v = tl.load(v_cache_ptr + v_off[:, None] + offs_d[None, :], mask=kv_valid[:, None] & d_valid[None, :], other=0.0)
    if DOT_UPCAST:
        k, v = k.to(tl.float32), v.to(tl.float32)
    return k, v


@triton.jit
def softmax_start(ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """The running (max, sum, output) of ROWS rows before any key."""
    # finite floor instead of -inf keeps alpha = exp2(m_i - m_new) NaN-free for rows that see no key
    m_i = tl.full([ROWS], -1.0e30, dtype=tl.float32)
    return m_i, tl.zeros([ROWS], dtype=tl.float32), tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)


@triton.jit
def online_softmax_step(q, k, v, visible, m_i, l_i, acc, scale_log2e, DOT_PRECISION: tl.constexpr):
    """Fold keys k [D, N] and values v [N, D] (where `visible` [M, N]) into the running max, sum and output."""
    qk = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2e  # [M, N], log2 domain
    qk = tl.where(visible, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def store_rows(out_ptr, lse_ptr, acc, m_i, l_i, flat_tok, head, row_valid, offs_d, d_valid, split,
               stride_on, stride_oh, stride_os, stride_ln, stride_lh, SPLIT: tl.constexpr):
    """Write the tile's normalised output rows: final (one split) or a partial plus its log2-sum-exp."""
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    o_ptrs = out_ptr + flat_tok[:, None] * stride_on + head[:, None] * stride_oh + offs_d[None, :]
    o_mask = row_valid[:, None] & d_valid[None, :]
    if SPLIT:
        tl.store(o_ptrs + split * stride_os, out, mask=o_mask)
        lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + flat_tok * stride_ln + head * stride_lh + split, lse, mask=row_valid)
    else:
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _combine_kernel(
    part_ptr, lse_ptr, out_ptr,
    stride_pn, stride_ph, stride_ps,
    stride_ln, stride_lh,
    stride_on, stride_oh,
    num_heads, num_splits,
    HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_PDL: tl.constexpr,
):
    """Merge the splits of BLOCK_H heads of one token: out = sum_s 2^lse_s o_s / sum_s 2^lse_s."""
    wait_inputs(USE_PDL)
    n = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    hs_valid = (offs_h[:, None] < num_heads) & (offs_s[None, :] < num_splits)  # [H, S]
    lse = tl.load(lse_ptr + n * stride_ln + offs_h[:, None] * stride_lh + offs_s[None, :], mask=hs_valid,
                  other=float("-inf"))
    m = tl.max(lse, 1)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m[:, None])  # [H, S]; 0 for empty splits
    denom = tl.sum(w, 1)
    d_valid = offs_d < HEAD_DIM
    parts = tl.load(part_ptr + n * stride_pn + offs_h[:, None, None] * stride_ph + offs_s[None, :, None] * stride_ps
                    + offs_d[None, None, :], mask=hs_valid[:, :, None] & d_valid[None, None, :], other=0.0)  # [H, S, D]
    out = tl.sum(w[:, :, None] * parts, 1) / tl.where(denom > 0, denom, 1.0)[:, None]  # [H, D]
    tl.store(out_ptr + n * stride_on + offs_h[:, None] * stride_oh + offs_d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(offs_h[:, None] < num_heads) & d_valid[None, :])
