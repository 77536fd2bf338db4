"""Fused per-row sampling for the drafter's γ-step loop: processed probabilities and inverse-CDF draws.

The PyTorch path (`dspark.sampling.processed_probs_rows` then `sample_from`) costs about a dozen small
kernels per drafted slot (casts, the greedy mask, division, softmax, argmax / one-hot / where, the
float64 cast, cumsum, scaling, searchsorted, clamp). Inside a captured decode step those launches, not
the arithmetic, dominate. Here each of the two stages is two Triton kernels, and both stages split a row
over ``NB = ceil(V / BLOCK)`` blocks (V = 151,936: 149 blocks of 1,024), so that one row (the drafter's
γ-step loop at batch 1) keeps every SM busy instead of one SM streaming the whole row (on an H200 the
former one-program-per-row kernels cost ~110 µs and ~45 µs a call at one row):

* `processed_probs` — logits ``[R, V]`` (any float dtype) and a per-row temperature -> float32 probs
  ``[R, V]``: ``softmax(logits / T)``, or for greedy rows (``T == 0``) the one-hot of the argmax (the
  first maximum; NaN counts as the largest value, as in `torch.argmax`; a row of -inf gives index 0).
  Kernel A, grid ``(R, NB)``: each block's max and sum of ``exp(x / T - max)`` (greedy rows: the block's
  first argmax, value and index) into ``[R, NB]`` buffers. Kernel B, grid ``(R, NB)``: every block
  reduces its row's NB partials (one vector load) to the row's max and sum (or argmax) and writes its
  block of probs. Only temperature: rows with top-k / top-p stay on the PyTorch path.
* `inverse_cdf` — probs ``[R, V]`` and uniforms ``[R]`` -> token ids ``[R]`` (int64), the semantics of
  `sample_from`: the uniform is scaled by the row's total mass (float64) and the first index whose
  cumulative mass exceeds it is drawn. Kernel A, grid ``(R, NB)``: float64 block masses. Kernel B, one
  program per row: the running sum over the block masses (their prefix ends at the total the uniform is
  scaled by), the first block of positive mass whose end passes the target, then a float64 scan inside
  that block only, from the prefix before it. Zero-probability tokens are never drawn (the scan only
  accepts indices of positive mass; where rounding puts the target past the block's own scan, its last
  index of positive mass is drawn), and ``target >= total`` (NaN, an all-zero row, u·total rounding up
  to the total) clamps to ``V - 1`` as `sample_from` does.

No host synchronisation and no data-dependent shapes (the partial buffers are ``[R, NB]``, fixed by the
shapes; under CUDA-graph capture the graph's pool serves them), so both capture in a CUDA graph. BLOCK
depends only on V, never on R: a row's probs and draw do not depend on the batch it is in. On the CPU
the kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` before Triton is first imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dspark.kernels.pdl import use_pdl, wait_inputs

MIN_BLOCK, MAX_BLOCK = 512, 4096  # elements of a row per program
TARGET_BLOCKS = 128  # blocks per row to aim for: one row alone fills an H200's 132 SMs


# ----------------------------------------------------------------------------------- processed probs
@triton.jit
def _first_max(x, idx, valid, none):
    """(maximum, its first `idx`) over the `valid` lanes, NaN above everything as in `torch.argmax` (the
    maximum is then NaN); -inf lanes count, so all -inf gives the first valid lane (`none` if no lane)."""
    nan = valid & (x != x)
    any_nan = tl.max(nan.to(tl.int32), 0) > 0
    top = tl.max(tl.where(valid & ~nan, x, float("-inf")), 0)
    winner = valid & tl.where(any_nan, nan, x == top)
    return tl.where(any_nan, float("nan"), top), tl.min(tl.where(winner, idx, none), 0)


@triton.jit
def _probs_partials_kernel(logits_ptr, temp_ptr, m_ptr, s_ptr, i_ptr, V, NB, stride_l, rows_per_param,
                           ANY_GREEDY: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    """Block (row, b): softmax rows -> m = max(x / t), s = sum(exp(x / t - m)); greedy rows -> the block's
    maximum (NaN if it holds one) in m and the first index of it in i."""
    wait_inputs(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    t = tl.load(temp_ptr + row // rows_per_param).to(tl.float32)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    valid = idx < V
    x = tl.load(logits_ptr + row * stride_l + idx, mask=valid, other=float("-inf")).to(tl.float32)
    part = row * NB + blk
    greedy = False
    if ANY_GREEDY:
        greedy = t == 0.0
    if greedy:
        top, first = _first_max(x, idx, valid, V)
        tl.store(m_ptr + part, top)
        tl.store(i_ptr + part, first)
    else:  # temperature 0 without a greedy row promised divides by 1, as `processed_probs_rows` does
        # IEEE divisions (`div_rn`, as torch divides): Triton's `/` is the 2-ulp approximate one on CUDA
        x = tl.math.div_rn(x, tl.where(t == 0.0, 1.0, t))
        m = tl.max(x, 0)
        m_ref = tl.where(m == float("-inf"), 0.0, m)  # -inf - -inf would be NaN; exp(-inf) = 0 sums to 0
        tl.store(m_ptr + part, m)
        tl.store(s_ptr + part, tl.sum(tl.exp(x - m_ref), 0))


@triton.jit
def _probs_write_kernel(logits_ptr, temp_ptr, m_ptr, s_ptr, i_ptr, out_ptr, mass_ptr, V, NB, stride_l, stride_o,
                        rows_per_param, ANY_GREEDY: tl.constexpr, BLOCK: tl.constexpr, NB_PAD: tl.constexpr,
                        MASS: tl.constexpr, USE_PDL: tl.constexpr):
    """Block (row, b): the row's max / sum (or argmax) from its NB partials, then this block's probs (in place
    when `out_ptr` is `logits_ptr`: each block reads its logits before it writes). MASS: also the float64
    sum of the probs it wrote into ``mass[row, b]`` (what `_block_mass_kernel` computes from them)."""
    wait_inputs(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    t = tl.load(temp_ptr + row // rows_per_param).to(tl.float32)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    valid = idx < V
    nb = tl.arange(0, NB_PAD)
    nb_valid = nb < NB
    parts = row * NB + nb
    pm = tl.load(m_ptr + parts, mask=nb_valid, other=float("-inf"))
    out = out_ptr + row * stride_o + idx
    greedy = False
    if ANY_GREEDY:
        greedy = t == 0.0
    if greedy:  # blocks in order, each with its first maximum: the first block that wins holds the first
        _, hot = _first_max(pm, tl.load(i_ptr + parts, mask=nb_valid, other=V), nb_valid, V)
        p = tl.where(idx == hot, 1.0, 0.0)
    else:
        ps = tl.load(s_ptr + parts, mask=nb_valid, other=0.0)
        m = tl.max(pm, 0)  # -inf only for a row of -inf, whose probs are NaN as in torch.softmax
        s = tl.sum(tl.where(nb_valid, ps * tl.exp(pm - m), 0.0), 0)
        x = tl.load(logits_ptr + row * stride_l + idx, mask=valid, other=float("-inf")).to(tl.float32)
        x = tl.math.div_rn(x, tl.where(t == 0.0, 1.0, t))
        p = tl.math.div_rn(tl.exp(x - m), s)
    tl.store(out, p, mask=valid)
    if MASS:
        tl.store(mass_ptr + row * NB + blk, tl.sum(tl.where(valid, p, 0.0).to(tl.float64), 0))


# --------------------------------------------------------------------------------------- inverse CDF
@triton.jit
def _block_mass_kernel(probs_ptr, mass_ptr, V, NB, stride_p, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    wait_inputs(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    p = tl.load(probs_ptr + row * stride_p + idx, mask=idx < V, other=0.0).to(tl.float64)
    tl.store(mass_ptr + row * NB + blk, tl.sum(p, 0))


@triton.jit
def _inverse_cdf_kernel(probs_ptr, mass_ptr, u_ptr, out_ptr, V, NB, stride_p, stride_u, stride_out,
                        BLOCK: tl.constexpr, NB_PAD: tl.constexpr, USE_PDL: tl.constexpr):
    """One row: locate the block from the prefix over its block masses, then scan inside it only.

    `ends` (the running sum of the block masses) ends at `total`, the mass the uniform is scaled by, so
    when ``target < total`` the last block's end passes the target. The first block of positive mass
    whose end passes it is taken (a zero-mass block whose end passes it by rounding is skipped: its
    tokens have no mass; if rounding leaves no such block, the last block of positive mass). In it, the
    first index of positive mass with ``ends[b - 1] + cumsum > target`` is drawn; if rounding leaves the
    in-block scan short of the target, the block's last index of positive mass (it has one). With exact
    sums (dyadic probabilities) this is exactly `sample_from`'s draw.
    """
    wait_inputs(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    nb = tl.arange(0, NB_PAD)
    nb_valid = nb < NB
    mass = tl.load(mass_ptr + row * NB + nb, mask=nb_valid, other=0.0)
    ends = tl.cumsum(mass, 0)
    total = tl.sum(tl.where(nb == NB - 1, ends, 0.0), 0)
    target = tl.load(u_ptr + row * stride_u).to(tl.float64) * total
    in_range = target < total  # false for NaN, an all-zero row, or u·total rounding up to the total
    has_mass = nb_valid & (mass > 0)
    blk = tl.min(tl.where(has_mass & (ends > target), nb, NB), 0)
    blk = tl.where(blk < NB, blk, tl.max(tl.where(has_mass, nb, -1), 0))  # past every end: the last with mass
    start = tl.sum(tl.where(nb == blk - 1, ends, 0.0), 0)  # the prefix before the block (0 for block 0)
    idx = blk * BLOCK + tl.arange(0, BLOCK)
    end = tl.where(in_range, V, 0)  # out of range: load nothing (blk may be -1 then)
    p = tl.load(probs_ptr + row * stride_p + idx, mask=(idx >= 0) & (idx < end), other=0.0).to(tl.float64)
    cdf = start + tl.cumsum(p, 0)
    first = tl.min(tl.where((cdf > target) & (p > 0), idx, V), 0)
    last = tl.max(tl.where(p > 0, idx, -1), 0)
    drawn = tl.where(first < V, first, last)
    drawn = tl.where(in_range & (drawn >= 0), drawn, V - 1)  # target >= total: clamp like `sample_from`
    tl.store(out_ptr + row * stride_out, drawn.to(tl.int64))


# ------------------------------------------------------------------------------------------ wrappers
def _block(vocab: int, block: int | None) -> int:
    """Elements per program: a power of two, about V / TARGET_BLOCKS within [MIN_BLOCK, MAX_BLOCK]
    (never above V's own power of two). V = 151,936 -> 1,024 (149 blocks)."""
    if block is not None:
        if block < 16 or block & (block - 1):
            raise ValueError(f"block {block} is not a power of two >= 16")
        return block
    per_block = triton.next_power_of_2(triton.cdiv(vocab, TARGET_BLOCKS) + 1) // 2  # largest power of 2 <= it
    return min(triton.next_power_of_2(max(vocab, 16)), max(MIN_BLOCK, min(MAX_BLOCK, per_block)))


def _warps(block: int) -> int:
    return 8 if block >= 2048 else 4


def _rows(t: torch.Tensor) -> torch.Tensor:
    """`t [..., V]` as `[N, V]` with unit stride along V (a view when possible)."""
    flat = t.reshape(-1, t.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def processed_probs(logits: torch.Tensor, temperature: torch.Tensor, any_greedy: bool = True,
                    block: int | None = None) -> torch.Tensor:
    """logits `[N, V]` -> float32 probs `[N, V]`; row n uses `temperature[n // (N // len(temperature))]`.

    Equals `processed_probs_rows` for rows without top-k / top-p (up to float32 rounding of the
    softmax; greedy rows exactly). `any_greedy=False` treats temperature 0 as 1, as that function does.
    Two kernels over a ``(N, ceil(V / block))`` grid (`block`: a power of two, for tests).
    """
    flat = _rows(logits)
    rows, vocab = flat.shape
    out = torch.empty(rows, vocab, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return out
    params = temperature.numel()
    if params == 0 or rows % params:
        raise ValueError(f"{rows} rows do not split evenly over {params} temperatures")
    bs = _block(vocab, block)
    nb = triton.cdiv(vocab, bs)
    partials = torch.empty(3, rows, nb, dtype=torch.float32, device=logits.device)  # max, sum, argmax
    m, s, i = partials[0], partials[1], partials[2].view(torch.int32)
    temp, per = temperature.reshape(-1), rows // params
    pdl = use_pdl(logits.device, rows)
    _probs_partials_kernel[(rows, nb)](flat, temp, m, s, i, vocab, nb, flat.stride(0), per,
                                       ANY_GREEDY=any_greedy, BLOCK=bs, USE_PDL=pdl, num_warps=_warps(bs),
                                       launch_pdl=pdl)
    _probs_write_kernel[(rows, nb)](flat, temp, m, s, i, out, m, vocab, nb, flat.stride(0), out.stride(0), per,
                                    ANY_GREEDY=any_greedy, BLOCK=bs, NB_PAD=triton.next_power_of_2(nb), MASS=False,
                                    USE_PDL=pdl, num_warps=_warps(bs), launch_pdl=pdl)
    return out


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """probs `[..., V]` and uniforms `[...]` in [0, 1) -> token ids `[...]` (int64), as `sample_from`.

    Block masses over a ``(N, ceil(V / block))`` grid, then one program per row (`block`: for tests).
    """
    flat = _rows(probs)
    rows, vocab = flat.shape
    out = torch.empty(rows, dtype=torch.long, device=probs.device)
    if rows == 0:
        return out.reshape(probs.shape[:-1])
    u = uniforms.reshape(-1)
    if u.numel() != rows:
        raise ValueError(f"{u.numel()} uniforms for {rows} rows")
    bs = _block(vocab, block)
    nb = triton.cdiv(vocab, bs)
    mass = torch.empty(rows, nb, dtype=torch.float64, device=probs.device)
    pdl = use_pdl(probs.device, rows)
    _block_mass_kernel[(rows, nb)](flat, mass, vocab, nb, flat.stride(0), BLOCK=bs, USE_PDL=pdl,
                                   num_warps=_warps(bs), launch_pdl=pdl)
    _inverse_cdf_kernel[(rows,)](flat, mass, u, out, vocab, nb, flat.stride(0), u.stride(0), 1, BLOCK=bs,
                                 NB_PAD=triton.next_power_of_2(nb), USE_PDL=pdl, num_warps=_warps(bs),
                                 launch_pdl=pdl)
    return out.reshape(probs.shape[:-1])
