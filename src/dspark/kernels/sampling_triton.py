"""Fused per-row sampling for the drafter's γ-step loop: processed probabilities and inverse-CDF draws.

The PyTorch path (`dspark.sampling.processed_probs_rows` then `sample_from`) costs about a dozen small
kernels per drafted slot (casts, the greedy mask, division, softmax, argmax / one-hot / where, the
float64 cast, cumsum, scaling, searchsorted, clamp). Inside a captured decode step those launches, not
the arithmetic, dominate. Here each of the two stages is one Triton program per row:

* `processed_probs` — logits ``[R, V]`` (any float dtype) and a per-row temperature -> float32 probs
  ``[R, V]``: ``softmax(logits / T)`` with an online max / sum over ``V`` in blocks (two passes over the
  row), or for greedy rows (``T == 0``) the one-hot of the argmax (the first maximum; NaN counts as the
  largest value, as in `torch.argmax`). Only temperature: rows with top-k / top-p stay on the PyTorch path.
* `inverse_cdf` — probs ``[R, V]`` and uniforms ``[R]`` -> token ids ``[R]`` (int64), the semantics of
  `sample_from`: the uniform is scaled by the row's total mass (float64) and the first index whose
  cumulative mass exceeds it is drawn. Pass 1 sums the blocks, pass 2 walks the same running prefix to
  the block that holds the target and scans inside it. Zero-probability tokens are never drawn (the scan
  only accepts indices of positive mass), and ids are clamped to ``V - 1``.

No host synchronisation and no data-dependent shapes, so both capture in a CUDA graph. On the CPU the
kernels run only under Triton's interpreter (``TRITON_INTERPRET=1`` before Triton is first imported).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 4096  # elements of a row per loop iteration (V = 151,936 takes 38 iterations)


@triton.jit
def _argmax_row(row_ptr, V, offs, BLOCK: tl.constexpr):
    """First index of the row's maximum (NaN above everything, like `torch.argmax`)."""
    best = tl.full([BLOCK], float("-inf"), tl.float32)  # per lane: best value so far
    best_nan = offs < 0  # per lane: a NaN was seen (it wins)
    best_idx = tl.full([BLOCK], -1, tl.int32)  # per lane: index of the best (-1: no element yet)
    for start in range(0, V, BLOCK):
        idx = start + offs
        valid = idx < V
        x = tl.load(row_ptr + idx, mask=valid, other=float("-inf")).to(tl.float32)
        nan = x != x
        better = (best_idx < 0) | (nan & ~best_nan) | (~nan & ~best_nan & (x > best))
        better = valid & better
        best = tl.where(better, x, best)
        best_nan = best_nan | (better & nan)
        best_idx = tl.where(better, idx, best_idx)
    filled = best_idx >= 0
    any_nan = tl.max(best_nan.to(tl.int32), 0) > 0
    top = tl.max(tl.where(filled & ~best_nan, best, float("-inf")), 0)
    winner = tl.where(any_nan, best_nan, filled & ~best_nan & (best == top))
    return tl.min(tl.where(winner, best_idx, V), 0)


@triton.jit
def _one_hot_row(in_row, out_row, V, offs, BLOCK: tl.constexpr):
    hot = _argmax_row(in_row, V, offs, BLOCK)
    for start in range(0, V, BLOCK):
        idx = start + offs
        tl.store(out_row + idx, tl.where(idx == hot, 1.0, 0.0), mask=idx < V)


@triton.jit
def _softmax_row(in_row, out_row, V, t, offs, BLOCK: tl.constexpr):
    """softmax(x / t) in float32: online per-lane max / sum over the blocks, then a pass that writes.

    IEEE divisions (`div_rn`, as torch divides): Triton's `/` is the 2-ulp approximate one on CUDA.
    """
    m_vec = tl.full([BLOCK], float("-inf"), tl.float32)  # per-lane running max ...
    s_vec = tl.zeros([BLOCK], tl.float32)  # ... and sum of exp(x - m_vec)
    for start in range(0, V, BLOCK):
        idx = start + offs
        x = tl.math.div_rn(tl.load(in_row + idx, mask=idx < V, other=float("-inf")).to(tl.float32), t)
        m_vec_new = tl.maximum(m_vec, x)
        m_ref = tl.where(m_vec_new == float("-inf"), 0.0, m_vec_new)  # -inf - -inf would be NaN
        s_vec = s_vec * tl.exp(m_vec - m_ref) + tl.exp(x - m_ref)
        m_vec = m_vec_new
    m = tl.max(m_vec, 0)  # -inf only for a row of -inf, whose probs are NaN as in torch.softmax
    s = tl.sum(s_vec * tl.exp(m_vec - m), 0)
    for start in range(0, V, BLOCK):
        idx = start + offs
        valid = idx < V
        x = tl.math.div_rn(tl.load(in_row + idx, mask=valid, other=float("-inf")).to(tl.float32), t)
        tl.store(out_row + idx, tl.math.div_rn(tl.exp(x - m), s), mask=valid)


@triton.jit
def _processed_probs_kernel(logits_ptr, temp_ptr, out_ptr, V, stride_l, stride_o, rows_per_param,
                            ANY_GREEDY: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    t = tl.load(temp_ptr + row // rows_per_param).to(tl.float32)
    in_row = logits_ptr + row * stride_l
    out_row = out_ptr + row * stride_o
    offs = tl.arange(0, BLOCK)
    if ANY_GREEDY:
        if t == 0.0:
            _one_hot_row(in_row, out_row, V, offs, BLOCK)
        else:
            _softmax_row(in_row, out_row, V, t, offs, BLOCK)
    else:  # no row promised greedy: temperature 0 divides by 1, as `processed_probs_rows` does
        _softmax_row(in_row, out_row, V, tl.where(t == 0.0, 1.0, t), offs, BLOCK)


@triton.jit
def _inverse_cdf_kernel(probs_ptr, u_ptr, out_ptr, V, stride_p, stride_u, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    p_row = probs_ptr + row * stride_p
    offs = tl.arange(0, BLOCK)
    total = tl.zeros([], tl.float64)
    for start in range(0, V, BLOCK):  # pass 1: the row's mass, block by block
        idx = start + offs
        total += tl.sum(tl.load(p_row + idx, mask=idx < V, other=0.0).to(tl.float64), 0)
    target = tl.load(u_ptr + row * stride_u).to(tl.float64) * total
    prefix = tl.zeros([], tl.float64)  # the same running sum as pass 1, so it ends at `total`
    drawn = tl.full([], -1, tl.int32)
    for start in range(0, V, BLOCK):  # pass 2: the first block whose end passes the target, then inside it
        idx = start + offs
        p = tl.load(p_row + idx, mask=idx < V, other=0.0).to(tl.float64)
        block_mass = tl.sum(p, 0)
        if (drawn < 0) & (prefix + block_mass > target):
            cdf = prefix + tl.cumsum(p, 0)
            first = tl.min(tl.where((cdf > target) & (p > 0), idx, V), 0)
            last = tl.max(tl.where(p > 0, idx, -1), 0)  # the block has mass: rounding inside it lands here
            drawn = tl.where(first < V, first, last)
        prefix += block_mass
    drawn = tl.where(drawn < 0, V - 1, drawn)  # target >= total (NaN or rounding at u -> 1): clamp
    tl.store(out_ptr + row, drawn.to(tl.int64))


def _block(vocab: int, block: int | None) -> int:
    return block if block is not None else min(MAX_BLOCK, triton.next_power_of_2(max(vocab, 16)))


def _rows(t: torch.Tensor) -> torch.Tensor:
    """`t [..., V]` as `[N, V]` with unit stride along V (a view when possible)."""
    flat = t.reshape(-1, t.shape[-1])
    return flat if flat.stride(-1) == 1 else flat.contiguous()


def processed_probs(logits: torch.Tensor, temperature: torch.Tensor, any_greedy: bool = True,
                    block: int | None = None) -> torch.Tensor:
    """logits `[N, V]` -> float32 probs `[N, V]`; row n uses `temperature[n // (N // len(temperature))]`.

    Equals `processed_probs_rows` for rows without top-k / top-p (up to float32 rounding of the
    softmax; greedy rows exactly). `any_greedy=False` treats temperature 0 as 1, as that function does.
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
    _processed_probs_kernel[(rows,)](flat, temperature.reshape(-1), out, vocab, flat.stride(0), out.stride(0),
                                     rows // params, ANY_GREEDY=any_greedy, BLOCK=bs, num_warps=8 if bs >= 2048 else 4)
    return out


def inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """probs `[..., V]` and uniforms `[...]` in [0, 1) -> token ids `[...]` (int64), as `sample_from`."""
    flat = _rows(probs)
    rows, vocab = flat.shape
    out = torch.empty(rows, dtype=torch.long, device=probs.device)
    if rows == 0:
        return out.reshape(probs.shape[:-1])
    u = uniforms.reshape(-1)
    if u.numel() != rows:
        raise ValueError(f"{u.numel()} uniforms for {rows} rows")
    bs = _block(vocab, block)
    _inverse_cdf_kernel[(rows,)](flat, u, out, vocab, flat.stride(0), u.stride(0), BLOCK=bs,
                                 num_warps=8 if bs >= 2048 else 4)
    return out.reshape(probs.shape[:-1])
