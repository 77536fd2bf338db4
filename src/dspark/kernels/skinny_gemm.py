"""A weight-streaming GEMM for a few rows: ``y = x Wᵀ (+ b)`` when x has at most `MAX_ROWS` rows.

Why: a decode step at batch 1 (and the drafter's block of γ rows at batch 1) multiplies a handful of
rows by every weight matrix once, so its GEMMs should run at the copy bandwidth. cuBLAS's kernels for
such skinny shapes reach ~73% of it on an H200 (the 4B shape's GEMMs alone at 1.36x the weight floor,
`docs/benchmarks/engine.md`). Here every program streams a ``[BLOCK_N, K]`` slab of W (split over
``SPLIT`` programs along K when N alone gives too few programs to fill the GPU) and multiplies it by
the rows of x padded to ``BLOCK_M`` (16, 32 or 64) with `tl.dot`; with ``SPLIT > 1`` the float32 partial
sums go to a ``[SPLIT, M, N]`` workspace and a second kernel adds them in a fixed order (no atomics:
the result is deterministic, so a CUDA-graph replay equals the eager call bit for bit).

`linear(x, weight, bias)` is what the fused paths call: on CUDA with 16-bit weights and few rows it
uses the kernel configuration measured fastest for that (rows padded to BLOCK_M, N, K) the first time
the shape is seen
(`Config` candidates against `torch.nn.functional.linear` itself, both timed inside CUDA graphs over
weight copies that defeat the L2, `dspark.kernels.gpu_timing`: cuBLAS keeps the shape unless a
candidate beats it by `MIN_GAIN`; a candidate whose result is off F.linear's by more than `MAX_ERROR`
is never chosen); everything else, and a shape first seen while a CUDA graph is being
captured (timing is impossible there), goes to `F.linear`. The choice is kept per process, so eager
calls and graph captures of one shape run the same kernel. ``DSPARK_SKINNY_GEMM=0`` turns it off.
On the CPU the kernels run only under Triton's interpreter (tests call `skinny_linear` directly).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from dspark.kernels.gpu_timing import copies_needed, rotating_graph_us
from dspark.kernels.pdl import use_pdl, wait_inputs

MAX_ROWS = 64  # more rows than this: the GEMM is no longer bound by streaming W once
MIN_GAIN = 0.03  # a candidate must beat F.linear by this share to be used
MAX_ERROR = 1e-2  # relative L2 distance to F.linear's result above which a candidate is refused


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, k_per_split, stride_xm, stride_wn, stride_os, stride_om,
                   HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_PDL: tl.constexpr):
    """Program (n, s): rows 0..M-1 times W[n·BLOCK_N : +BLOCK_N, s·k_per_split : +k_per_split]ᵀ; DIRECT writes
    the output (bias added, cast), else the float32 partial sum of split s."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rm = tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rm < M
    col_ok = rn < N
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)  # the last split may hold fewer chunks than the others
    x_rows = x_ptr + rm[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + rn[:, None].to(tl.int64) * stride_wn
    # the first K chunk is peeled: its weight tile (which no kernel writes) streams in before the wait
    # for the previous kernel (programmatic dependent launch), its x after
    rk = k_start + tl.arange(0, BLOCK_K)
    k_ok = rk < k_end
    w = tl.load(w_rows + rk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
    wait_inputs(USE_PDL)
    x = tl.load(x_rows + rk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
    acc = tl.dot(x, tl.trans(w), tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32))
    for k0 in range(k_start + BLOCK_K, k_end, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            x = tl.load(x_rows + rk[None, :], mask=row_ok[:, None], other=0.0)
            w = tl.load(w_rows + rk[None, :], mask=col_ok[:, None], other=0.0)
        else:
            k_ok = rk < K
            x = tl.load(x_rows + rk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_rows + rk[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    mask = row_ok[:, None] & col_ok[None, :]
    if DIRECT:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(out_ptr + pid_s * stride_os + rm[:, None] * stride_om + rn[None, :], acc, mask=mask)


@triton.jit
def _reduce_kernel(part_ptr, b_ptr, y_ptr, M, N, SPLIT, stride_ps, stride_ym, HAS_BIAS: tl.constexpr,
                   BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    """y[m, n] = sum over s = 0..SPLIT-1 (in order) of part[s, m, n] (+ b[n]), cast to y's dtype."""
    wait_inputs(USE_PDL)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < M * N
    m = offs // N
    n = offs % N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT):
        acc += tl.load(part_ptr + s * stride_ps + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + m * stride_ym + n, acc.to(y_ptr.dtype.element_ty), mask=ok)


@dataclass(frozen=True)
class Config:
    """One launch configuration: W slab width, K chunk, K split count, warps and pipeline stages."""

    block_n: int
    block_k: int
    split: int = 1
    num_warps: int = 4
    num_stages: int = 4


def block_m(rows: int) -> int:
    """Rows padded for `tl.dot`: 16, 32 or 64."""
    return 16 if rows <= 16 else 32 if rows <= 32 else 64


def split_for(n: int, k: int, block_n: int, block_k: int, programs: int) -> int:
    """K splits so that about `programs` programs run (at least 1, at most one K chunk per split)."""
    tiles = -(-n // block_n)
    return max(1, min(-(-programs // tiles), k // block_k))


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[int, int, int]:
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"skinny_linear: x [M, K] and weight [N, K] expected, got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if x.shape[0] > MAX_ROWS:
        raise ValueError(f"skinny_linear: at most {MAX_ROWS} rows, got {x.shape[0]}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("skinny_linear: x and weight need unit stride along K")
    if bias is not None and (bias.shape != (weight.shape[0],) or not bias.is_contiguous()):
        raise ValueError(f"skinny_linear: bias [{weight.shape[0]}] expected, got {tuple(bias.shape)}")
    return x.shape[0], weight.shape[0], weight.shape[1]


def skinny_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, config: Config,
                  out: torch.Tensor | None = None, pdl: bool | None = None) -> torch.Tensor:
    """x [M, K] (M <= MAX_ROWS), weight [N, K], bias [N] or None -> [M, N] in x's dtype, with `config`.

    `pdl`: launch with programmatic dependent launch (None: `use_pdl` decides; the tuning times without)."""
    m, n, k = _check(x, weight, bias)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return y
    bm = block_m(m)
    split = max(1, min(config.split, -(-k // config.block_k)))
    k_per_split = -(-(-(-k // split)) // config.block_k) * config.block_k  # a multiple of BLOCK_K
    split = -(-k // k_per_split)
    even_k = k % config.block_k == 0
    tiles = triton.cdiv(n, config.block_n)
    b = bias if bias is not None else y  # never read when HAS_BIAS is False
    pdl = use_pdl(x.device, m) if pdl is None else pdl
    if split == 1:
        _skinny_kernel[(tiles, 1)](x, weight, b, y, m, n, k, k_per_split, x.stride(0), weight.stride(0), 0,
                                   y.stride(0), HAS_BIAS=bias is not None, DIRECT=True, EVEN_K=even_k, BLOCK_M=bm,
                                   BLOCK_N=config.block_n, BLOCK_K=config.block_k, USE_PDL=pdl,
                                   num_warps=config.num_warps, num_stages=config.num_stages, launch_pdl=pdl)
        return y
    part = torch.empty(split, m, n, dtype=torch.float32, device=x.device)
    _skinny_kernel[(tiles, split)](x, weight, b, part, m, n, k, k_per_split, x.stride(0), weight.stride(0),
                                   part.stride(0), part.stride(1), HAS_BIAS=False, DIRECT=False, EVEN_K=even_k,
                                   BLOCK_M=bm, BLOCK_N=config.block_n, BLOCK_K=config.block_k, USE_PDL=pdl,
                                   num_warps=config.num_warps, num_stages=config.num_stages, launch_pdl=pdl)
    block = 1024
    _reduce_kernel[(triton.cdiv(m * n, block),)](part, b, y, m, n, split, part.stride(0), y.stride(0),
                                                 HAS_BIAS=bias is not None, BLOCK=block, USE_PDL=pdl, num_warps=4,
                                                 launch_pdl=pdl)
    return y


def candidates(n: int, k: int, sms: int) -> list[Config]:
    """The configurations tried for an [N, K] weight on a GPU with `sms` multiprocessors."""
    base = [(16, 256, 4, 4), (32, 256, 4, 4), (64, 128, 4, 4), (32, 128, 5, 4), (64, 256, 3, 8), (16, 512, 3, 4),
            (128, 128, 3, 8)]
    out = []
    for bn, bk, warps, stages in base:
        if bk > max(16, k):
            continue
        out.append(Config(bn, bk, 1, warps, stages))
        split = split_for(n, k, bn, bk, 2 * sms)
        if split > 1:
            out.append(Config(bn, bk, split, warps, stages))
    return out


_CHOICE: dict[tuple, Config | None] = {}  # (padded rows, N, K, dtype, bias, device) -> config, None = F.linear


def _timed_calls(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], object], x: torch.Tensor,
                 weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> list[Callable[[], object]]:
    return [lambda w=w, b=b: fn(x, w, b) for w, b in zip(weights, biases)]


def _copies(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """The weight (and bias) plus enough clones to defeat the L2; fewer where the device is out of memory
    (the engine may have given it to the KV cache), the timing then partly from the L2."""
    weights, biases = [weight], [bias]
    for _ in range(copies_needed(weight.numel() * weight.element_size()) - 1):
        try:
            weights.append(weight.clone())
            biases.append(None if bias is None else bias.clone())
        except torch.cuda.OutOfMemoryError:
            weights = weights[:len(biases)]
            break
    return weights, biases


def choose(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> Config | None:
    """The fastest candidate for this shape, or None where `F.linear` is as fast (measured on the device,
    inside CUDA graphs over copies of the weight that defeat the L2, as a decode step reads it)."""
    m, n, k = _check(x, weight, bias)
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    want = F.linear(x, weight, bias).float()
    scale = want.norm().item() or 1.0
    weights, biases = _copies(weight, bias)
    best = None
    best_us = rotating_graph_us(_timed_calls(F.linear, x, weights, biases)) * (1.0 - MIN_GAIN)
    out = torch.empty(m, n, dtype=x.dtype, device=x.device)
    for config in candidates(n, k, sms):
        try:
            if (skinny_linear(x, weight, bias, config, out).float() - want).norm().item() > MAX_ERROR * scale:
                continue  # a wrong result (a compiler or hardware problem) is never chosen
            # without PDL, as F.linear runs: chained launches of one kernel would overlap as no step's do
            us = rotating_graph_us(_timed_calls(lambda a, w, b: skinny_linear(a, w, b, config, pdl=False), x, weights,
                                                biases))
        except Exception:  # a configuration this GPU / Triton cannot run (resources): not a candidate
            continue
        if us < best_us:
            best, best_us = config, us
    return best


def enabled() -> bool:
    return os.environ.get("DSPARK_SKINNY_GEMM", "1") != "0"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, through the skinny kernel where it measured faster (see the module docstring)."""
    if (x.device.type != "cuda" or not enabled() or x.dtype not in (torch.bfloat16, torch.float16)
            or weight.dtype != x.dtype or weight.dim() != 2 or weight.stride(1) != 1):
        return F.linear(x, weight, bias)
    lead = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    rows = flat.shape[0]
    if rows == 0 or rows > MAX_ROWS or flat.stride(1) != 1 or (bias is not None and not bias.is_contiguous()):
        return F.linear(x, weight, bias)
    key = (block_m(rows), weight.shape[0], weight.shape[1], x.dtype, bias is not None, x.device)
    if key not in _CHOICE:
        _CHOICE[key] = None if torch.cuda.is_current_stream_capturing() else choose(flat, weight, bias)
    config = _CHOICE[key]
    if config is None:
        return F.linear(x, weight, bias)
    return skinny_linear(flat, weight, bias, config).view(*lead, weight.shape[0])
