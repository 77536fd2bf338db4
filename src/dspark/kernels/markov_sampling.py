"""The DSpark drafter's γ-step Markov loop on the GPU: three kernels per drafted slot.

What it replaces: per slot, `DSparkDrafter._sample_sequential` gathers the previous token's Markov
embedding ``z = W1[prev]``, projects it ``bias = z W2ᵀ`` (152k-wide), adds the slot's LM-head logits,
turns them into the slot's exact draft distribution (`RowSampler.probs`) and draws the next token from it
(`RowSampler.draw`), then stacks the distributions into the proposal's ``[R, γ, V]`` buffer: eight to ten
launches per slot, seventy a block, each paying a kernel boundary in a batch-1 decode step. Here a slot is

* **logits** (`_markov_logits_kernel`, grid ``(NB, ceil(R / 16))``): each program streams a
  ``[BLOCK, r]`` slab of W2 in ``[SUB, r]`` tiles (odd slots last to first: `serpentine`), the next one
  loading while the current one's softmax runs (the first before the programmatic-dependent-launch wait: the weights are never written by a
  kernel), gathers W1 rows of its rows' previous tokens, multiplies
  (`tl.dot`, float32 sums; the bias rounded to W2's dtype, the sum with the base logits to the dtype
  torch's ``base + bias`` has, so the logits equal the PyTorch path's up to the GEMV's summation order),
  writes the logits into the slot's row of the output buffer and the block's softmax partials (max of
  ``x / T`` and the sum of ``exp(x / T - max)``, the two combined online over its SUB tiles; for greedy
  rows the first maximum and its index), all in `sampling_triton`'s partial layout;
* **probs** (`sampling_triton._probs_write_kernel`, in place, with each block's float64 mass);
* **draw** (`sampling_triton._inverse_cdf_kernel`, the uniform of this slot, the token id written
  straight into column k of the ``[R, γ]`` ids and read by the next slot's logits kernel as its prev).

Same semantics as the PyTorch loop with temperature-only rows (no top-k / top-p: those stay on the
PyTorch path): softmax(x / T), greedy rows the one-hot of the first argmax, inverse-CDF draws from the
caller's uniforms. No host synchronisation and fixed shapes, so it captures in a CUDA graph. On the
CPU it runs only under Triton's interpreter (tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from dspark.kernels.pdl import interpreted, use_pdl, wait_inputs
from dspark.kernels.sampling_triton import _inverse_cdf_kernel, _probs_write_kernel, _warps

BLOCK_R = 16  # rows per program (tl.dot's smallest M)


@dataclass(frozen=True)
class Config:
    """Launch configuration: vocabulary entries per program (also the probs / draw kernels' block), W2 rows
    per `tl.dot`, and the logits kernel's warps and pipeline stages."""

    block: int = 256  # V = 151,936: 594 programs per slot, ~4.5 per H200 SM
    sub: int = 32  # the fastest of scripts/bench_markov.py's grid on an H200 at 1 and 8 rows (session 12)
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def parse(cls, text: str) -> Config:
        """"BLOCK,SUB,WARPS,STAGES" (the form `DSPARK_MARKOV_CONFIG` and `scripts/bench_markov.py` use)."""
        try:
            block, sub, warps, stages = (int(x) for x in text.split(","))
        except ValueError:
            raise ValueError(f"markov config {text!r}: expected BLOCK,SUB,WARPS,STAGES (four integers)") from None
        cfg = cls(block, sub, warps, stages)
        if sub < 16 or sub & (sub - 1) or block < sub or block % sub or block & (block - 1) or warps < 1 or stages < 1:
            raise ValueError(f"markov config {text!r}: BLOCK and SUB powers of two, SUB >= 16 dividing BLOCK")
        return cfg

    def __str__(self) -> str:
        return f"{self.block},{self.sub},{self.num_warps},{self.num_stages}"


def serpentine() -> bool:
    """Whether odd slots stream their W2 tiles last to first (default; ``DSPARK_MARKOV_SERPENTINE=0``: every slot
    first to last). W2 (V x rank: 78 MB at V = 151,936, rank 256) does not fit an H200's 50 MB L2, but each
    program's tiles read last in one slot are read first in the next, while they may still be in L2 (measured on an
    H200, session 14: the loop 5.6% faster at one row, 5.0% at 8, docs/benchmarks/engine.md)."""
    return os.environ.get("DSPARK_MARKOV_SERPENTINE", "1") != "0"


def row_vector() -> bool:
    """Whether a one-row loop runs one row a program without `tl.dot` (``DSPARK_MARKOV_ROWVEC=1``; default off:
    measured 22% slower than the `tl.dot` loop at batch 1 on an H200, session 14, docs/benchmarks/engine.md)."""
    return os.environ.get("DSPARK_MARKOV_ROWVEC", "0") == "1"


def default_config() -> Config:
    """`Config()`, or ``DSPARK_MARKOV_CONFIG`` when set."""
    text = os.environ.get("DSPARK_MARKOV_CONFIG")
    return Config.parse(text) if text else Config()
ROUND = {torch.bfloat16: 1, torch.float16: 2}  # 16-bit results are rounded as torch rounds them


@triton.jit
def _round(x, MODE: tl.constexpr):
    """x (float32) rounded to bfloat16 (1) / float16 (2) and back, or unchanged (0). bfloat16: round to
    nearest even on the bits (as torch rounds; Triton's interpreter would truncate); NaN stays NaN."""
    if MODE == 1:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + (((u >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
        return tl.where(x != x, x, u.to(tl.float32, bitcast=True))
    elif MODE == 2:
        return x.to(tl.float16).to(tl.float32)
    else:
        return x


@triton.jit
def _tile_logits(z, w, base_ptr, out_ptr, rows, r_ok, cols, stride_b, stride_o, V,
                 BIAS_ROUND: tl.constexpr, SUM_ROUND: tl.constexpr, IEEE: tl.constexpr, SUB: tl.constexpr,
                 ROWVEC: tl.constexpr):
    """One [BLOCK_R, SUB] tile: base + round(z Wᵀ), rounded as torch's sum; stored; returned (-inf off V).
    ROWVEC (one row a program): float32 products summed along the rank, no `tl.dot` (whose smallest M is 16)."""
    c_ok = cols < V
    if ROWVEC:
        bias = tl.reshape(tl.sum(w.to(tl.float32) * z.to(tl.float32), 1), (1, SUB))
    elif IEEE:  # float32 weights (exact products), or bfloat16 under the interpreter, whose bf16 dot is broken
        bias = tl.dot(z.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
    else:
        bias = tl.dot(z, tl.trans(w))
    mask = r_ok[:, None] & c_ok[None, :]
    base = tl.load(base_ptr + rows[:, None] * stride_b + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    x = _round(base + _round(bias, BIAS_ROUND), SUM_ROUND)
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], x, mask=mask)
    return tl.where(c_ok[None, :], x, float("-inf"))


@triton.jit
def _markov_logits_kernel(base_ptr, prev_ptr, w1_ptr, w2_ptr, temp_ptr, out_ptr, m_ptr, s_ptr, i_ptr, R, V, NB, RANK,
                          stride_b, stride_o, stride_prev, stride_w1, stride_w2, REVERSE, ANY_GREEDY: tl.constexpr,
                          BIAS_ROUND: tl.constexpr, SUM_ROUND: tl.constexpr, IEEE: tl.constexpr, RANK_PAD: tl.constexpr,
                          BLOCK: tl.constexpr, SUB: tl.constexpr, BLOCK_R: tl.constexpr, USE_PDL: tl.constexpr):
    """Program (b, g): vocabulary block b for rows g·BLOCK_R ..: logits into out, softmax partials into m, s, i.
    Its SUB tiles run first to last, or last to first when REVERSE (1): see `serpentine`."""
    blk = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rows < R
    rk = tl.arange(0, RANK_PAD)
    k_ok = rk < RANK
    step = SUB - 2 * SUB * REVERSE  # +SUB forwards, -SUB backwards
    cols = blk * BLOCK + REVERSE * (BLOCK - SUB) + tl.arange(0, SUB)
    w = tl.load(w2_ptr + cols[:, None].to(tl.int64) * stride_w2 + rk[None, :],
                mask=(cols < V)[:, None] & k_ok[None, :], other=0.0)  # the first W2 tile, before the wait
    wait_inputs(USE_PDL)
    prev = tl.load(prev_ptr + rows * stride_prev, mask=r_ok, other=0)
    z = tl.load(w1_ptr + prev[:, None].to(tl.int64) * stride_w1 + rk[None, :], mask=r_ok[:, None] & k_ok[None, :],
                other=0.0)
    t = tl.load(temp_ptr + rows, mask=r_ok, other=1.0).to(tl.float32)
    greedy = r_ok & False
    if ANY_GREEDY:
        greedy = t == 0.0
    inv_t = tl.where(t == 0.0, 1.0, t)
    m = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    s = tl.zeros((BLOCK_R,), dtype=tl.float32)
    top = tl.full((BLOCK_R,), float("-inf"), tl.float32)
    first = tl.full((BLOCK_R,), V, tl.int32)
    for j in range(BLOCK // SUB):
        x = _tile_logits(z, w, base_ptr, out_ptr, rows, r_ok, cols, stride_b, stride_o, V, BIAS_ROUND, SUM_ROUND, IEEE,
                         SUB, BLOCK_R == 1)
        nxt = cols + step  # the next tile streams in while this one's softmax runs (none after the block's last)
        w = tl.load(w2_ptr + nxt[:, None].to(tl.int64) * stride_w2 + rk[None, :],
                    mask=((nxt < V) & (j + 1 < BLOCK // SUB))[:, None] & k_ok[None, :], other=0.0)
        # greedy: the tile's first maximum (NaN above everything), kept when it beats the running one or ties it
        # at a smaller index (tiles may come in either order)
        valid = (cols < V)[None, :]
        nan = valid & (x != x)
        any_nan = tl.max(nan.to(tl.int32), 1) > 0
        t_top = tl.max(tl.where(valid & ~nan, x, float("-inf")), 1)
        winner = valid & tl.where(any_nan[:, None], nan, x == t_top[:, None])
        t_first = tl.min(tl.where(winner, cols[None, :], V), 1)
        t_top = tl.where(any_nan, float("nan"), t_top)
        r_nan = top != top
        better = (any_nan & ~r_nan) | (~any_nan & ~r_nan & (t_top > top))
        tie = (any_nan & r_nan) | (t_top == top)
        take = (first == V) | better | (tie & (t_first < first))
        top = tl.where(take, t_top, top)
        first = tl.where(take, t_first, first)
        # softmax: the running max and sum of exp(x / T - max), rescaled when the max moves
        xs = tl.math.div_rn(x, inv_t[:, None])
        m_new = tl.maximum(m, tl.max(xs, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_ref) + tl.sum(tl.exp(xs - m_ref[:, None]), 1)
        m = m_new
        cols = nxt
    part = rows * NB + blk
    tl.store(m_ptr + part, tl.where(greedy, top, m), mask=r_ok)
    tl.store(s_ptr + part, s, mask=r_ok)
    tl.store(i_ptr + part, first, mask=r_ok)


def _check(base: torch.Tensor, anchor_ids: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
           temperature: torch.Tensor, uniforms: torch.Tensor, out: torch.Tensor | None) -> None:
    if base.dim() != 3 or base.stride(-1) != 1:
        raise ValueError(f"markov_draft: base logits [R, γ, V] with unit stride along V expected, got {tuple(base.shape)}")
    r, g, v = base.shape
    if w1.dim() != 2 or w2.dim() != 2 or w1.shape != w2.shape or w1.shape[0] != v:
        raise ValueError(f"markov_draft: W1 and W2 [V={v}, rank] expected, got {tuple(w1.shape)} and {tuple(w2.shape)}")
    if w1.stride(1) != 1 or w2.stride(1) != 1:
        raise ValueError("markov_draft: W1 and W2 need unit stride along the rank")
    if anchor_ids.shape != (r,) or temperature.shape != (r,):
        raise ValueError(f"markov_draft: anchor ids and temperatures [{r}] expected, got {tuple(anchor_ids.shape)} "
                         f"and {tuple(temperature.shape)}")
    if uniforms.shape != (r, g):
        raise ValueError(f"markov_draft: uniforms [{r}, {g}] expected, got {tuple(uniforms.shape)}")
    if out is not None and (out.shape != (r, g, v) or out.dtype != torch.float32 or out.stride(-1) != 1
                            or out.stride(1) != v):
        raise ValueError(f"markov_draft: out must be float32 [{r}, {g}, {v}] with rows of V, got {tuple(out.shape)}")


def markov_draft(base: torch.Tensor, anchor_ids: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                 temperature: torch.Tensor, any_greedy: bool, uniforms: torch.Tensor, out: torch.Tensor | None = None,
                 block: int | None = None, config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Markov head's γ sequential slots, sampled.

    base [R, γ, V]: the slots' LM-head logits; anchor_ids [R]: the token before slot 0; w1, w2 [V, rank]: the
    head's embedding and projection weights; temperature [R] (0 = greedy when `any_greedy`); uniforms [R, γ]
    in [0, 1): slot k of row r draws with ``uniforms[r, k]``. Returns (ids [R, γ] int64, probs [R, γ, V]
    float32: the exact distribution every slot was drawn from, written into `out` when given). `config`: the
    launch (default `default_config()`); `block` overrides its block (tests: several blocks at a small V).
    """
    _check(base, anchor_ids, w1, w2, temperature, uniforms, out)
    cfg = config or default_config()
    if block is not None:
        if block < 16 or block & (block - 1):
            raise ValueError(f"markov_draft: block must be a power of two >= 16, got {block}")
        cfg = Config(block, min(cfg.sub, block), cfg.num_warps, cfg.num_stages)
    block = cfg.block
    r, g, v = base.shape
    probs = torch.empty(r, g, v, dtype=torch.float32, device=base.device) if out is None else out
    ids = torch.empty(r, g, dtype=torch.long, device=base.device)
    if r == 0 or g == 0:
        return ids, probs
    nb = triton.cdiv(v, block)
    partials = torch.empty(3, r, nb, dtype=torch.float32, device=base.device)
    m, s, i = partials[0], partials[1], partials[2].view(torch.int32)
    mass = torch.empty(r, nb, dtype=torch.float64, device=base.device)
    temp = temperature.to(torch.float32).contiguous()
    prev, stride_prev = anchor_ids.contiguous(), 1
    rank = w1.shape[1]
    bias_round = ROUND.get(w2.dtype, 0)
    sum_round = ROUND.get(torch.promote_types(base.dtype, w2.dtype), 0)
    ieee = w2.dtype == torch.float32 or (w2.dtype == torch.bfloat16 and interpreted())
    pdl = use_pdl(base.device, r)
    warps = _warps(block)
    turn = serpentine()
    block_r = 1 if r == 1 and row_vector() else BLOCK_R
    for k in range(g):
        logits = probs[:, k]  # [R, V] view: the logits, then (in place) the slot's probs
        _markov_logits_kernel[(nb, triton.cdiv(r, block_r))](
            base[:, k], prev, w1, w2, temp, logits, m, s, i, r, v, nb, rank, base.stride(0), probs.stride(0),
            stride_prev, w1.stride(0), w2.stride(0), int(turn and k % 2 == 1), ANY_GREEDY=any_greedy, BIAS_ROUND=bias_round,
            SUM_ROUND=sum_round, IEEE=ieee, RANK_PAD=max(16, triton.next_power_of_2(rank)), BLOCK=block, SUB=cfg.sub,
            BLOCK_R=block_r, USE_PDL=pdl, num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=pdl)
        _probs_write_kernel[(r, nb)](logits, temp, m, s, i, logits, mass, v, nb, probs.stride(0), probs.stride(0), 1,
                                     ANY_GREEDY=any_greedy, BLOCK=block, NB_PAD=triton.next_power_of_2(nb), MASS=True,
                                     USE_PDL=pdl, num_warps=warps, launch_pdl=pdl)
        u = uniforms[:, k]
        _inverse_cdf_kernel[(r,)](logits, mass, u, ids[:, k], v, nb, probs.stride(0), u.stride(0), ids.stride(0),
                                  BLOCK=block, NB_PAD=triton.next_power_of_2(nb), USE_PDL=pdl, num_warps=warps,
                                  launch_pdl=pdl)
        prev, stride_prev = ids[:, k], ids.stride(0)
    return ids, probs
