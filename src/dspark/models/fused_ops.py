"""Fused element-wise Triton kernels of the dense forward's GPU path: residual+RMSNorm, q/k norm+rotary+KV store, SiLU·up.

Where it sits: `dspark.models.dense.DenseLM` and the drafter's fused path (`dspark.drafters.fused`) call
these between their GEMMs (on CUDA, or forced for interpreter tests); each replaces several PyTorch
launches by one:

* `add_rms_norm(delta, residual, weight, eps)` -> (residual + delta, RMSNorm(residual + delta)), out of place
  (`delta=None`: the plain RMSNorm of the first layer);
* `qk_norm_rope_store(qkv, cos, sin, ...)` splits a fused QKV row, applies the per-head q/k RMSNorm
  (Qwen3), rotate-half rotary, writes q to a new ``[N, H, D]`` tensor and k, v straight into the paged
  cache at ``slot_mapping`` (slots < 0 are graph padding: skipped, like `dspark.kernels.store_kv`);
  `qk_norm_rope(qkv, ...)` is the same kernel returning k, v as new ``[N, Hkv, D]`` tensors instead
  (the drafter's block, whose own K/V are never stored);
* `silu_mul(gate_up)` -> ``silu(gate) * up`` of a fused gate/up projection.

Rounding follows the PyTorch reference op by op (every intermediate that the reference stores in the
model dtype is rounded to it here too), so in float32 the fused path matches the reference to
reduction order, and in bf16 nearly bit for bit. Triton is imported here only, so CPU-only installs
never load this module.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dspark.kernels.pdl import use_pdl, wait_inputs


@triton.jit
def _rnd(x, DTYPE: tl.constexpr):
    """Round a float32 value to the model dtype and back (what storing an intermediate does)."""
    return x.to(DTYPE).to(tl.float32)


@triton.jit
def _add_rms_norm_kernel(delta_ptr, res_ptr, w_ptr, res_out_ptr, out_ptr, stride_delta, stride_res, stride_res_out,
                         stride_out, dim, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    wait_inputs(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < dim
    dtype = out_ptr.dtype.element_ty
    x = tl.load(res_ptr + row * stride_res + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        d = tl.load(delta_ptr + row * stride_delta + offs, mask=mask, other=0.0).to(tl.float32)
        x = _rnd(x + d, dtype)
        tl.store(res_out_ptr + row * stride_res_out + offs, x.to(dtype), mask=mask)
    inv = tl.rsqrt(tl.sum(x * x, 0) / dim + eps)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, (w * _rnd(x * inv, dtype)).to(dtype), mask=mask)


def add_rms_norm(delta: torch.Tensor | None, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(new residual, its RMSNorm) for rows [N, d]: new residual = residual + delta (or residual when delta is None)."""
    n, dim = residual.shape
    out = torch.empty_like(residual)
    res_out = residual if delta is None else torch.empty_like(residual)
    if n == 0:
        return res_out, out
    block = triton.next_power_of_2(dim)
    src = residual if delta is None else delta
    pdl = use_pdl(residual.device, n)
    _add_rms_norm_kernel[(n,)](src, residual, weight, res_out, out, src.stride(0), residual.stride(0),
                               res_out.stride(0), out.stride(0), dim, eps, HAS_DELTA=delta is not None, BLOCK=block,
                               USE_PDL=pdl, num_warps=min(16, max(1, block // 256)), launch_pdl=pdl)
    return res_out, out


@triton.jit
def _qk_norm_rope_store_kernel(qkv_ptr, cos_ptr, sin_ptr, qw_ptr, kw_ptr, q_out_ptr, k_cache_ptr, v_cache_ptr,
                               slot_ptr, stride_qkv, stride_cs, stride_qn, stride_qh,
                               stride_kp, stride_ks, stride_kh, stride_vp, stride_vs, stride_vh, eps,
                               NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                               HALF: tl.constexpr, BLOCK_HALF: tl.constexpr, PAGE_SIZE: tl.constexpr,
                               QK_NORM: tl.constexpr, USE_PDL: tl.constexpr):
    wait_inputs(USE_PDL)
    n = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    dtype = q_out_ptr.dtype.element_ty
    offs = tl.arange(0, BLOCK_HALF)
    mask = offs < HALF
    is_q = head < NUM_HEADS
    col = tl.where(is_q, head * HEAD_DIM, NUM_HEADS * HEAD_DIM + (head - NUM_HEADS) * HEAD_DIM)
    row = qkv_ptr + n * stride_qkv + col
    x1 = tl.load(row + offs, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(row + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    if QK_NORM:
        inv = tl.rsqrt((tl.sum(x1 * x1, 0) + tl.sum(x2 * x2, 0)) / HEAD_DIM + eps)
        if is_q:
            w1 = tl.load(qw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            w2 = tl.load(qw_ptr + HALF + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            w1 = tl.load(kw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            w2 = tl.load(kw_ptr + HALF + offs, mask=mask, other=0.0).to(tl.float32)
        x1 = _rnd(w1 * _rnd(x1 * inv, dtype), dtype)
        x2 = _rnd(w2 * _rnd(x2 * inv, dtype), dtype)
    c1 = tl.load(cos_ptr + n * stride_cs + offs, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + n * stride_cs + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + n * stride_cs + offs, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + n * stride_cs + HALF + offs, mask=mask, other=0.0).to(tl.float32)
    # x * cos + rotate_half(x) * sin with rotate_half(x) = [-x2, x1], each product rounded like the reference
    o1 = _rnd(x1 * c1, dtype) + _rnd(-x2 * s1, dtype)
    o2 = _rnd(x2 * c2, dtype) + _rnd(x1 * s2, dtype)
    if is_q:
        dst = q_out_ptr + n * stride_qn + head * stride_qh
        tl.store(dst + offs, o1.to(dtype), mask=mask)
        tl.store(dst + HALF + offs, o2.to(dtype), mask=mask)
    else:
        slot = tl.load(slot_ptr + n).to(tl.int64)
        if slot >= 0:
            kv_head = head - NUM_HEADS
            page = slot // PAGE_SIZE
            off = slot % PAGE_SIZE
            cache_ty = k_cache_ptr.dtype.element_ty
            kdst = k_cache_ptr + page * stride_kp + off * stride_ks + kv_head * stride_kh
            tl.store(kdst + offs, o1.to(dtype).to(cache_ty), mask=mask)
            tl.store(kdst + HALF + offs, o2.to(dtype).to(cache_ty), mask=mask)
            vsrc = qkv_ptr + n * stride_qkv + (NUM_HEADS + NUM_KV_HEADS) * HEAD_DIM + kv_head * HEAD_DIM
            vdst = v_cache_ptr + page * stride_vp + off * stride_vs + kv_head * stride_vh
            tl.store(vdst + offs, tl.load(vsrc + offs, mask=mask).to(cache_ty), mask=mask)
            tl.store(vdst + HALF + offs, tl.load(vsrc + HALF + offs, mask=mask).to(cache_ty), mask=mask)


def qk_norm_rope_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, q_weight: torch.Tensor | None,
                       k_weight: torch.Tensor | None, eps: float, num_heads: int, num_kv_heads: int, head_dim: int,
                       k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """qkv [N, (H + 2·Hkv)·D], cos/sin [N, D] -> rotated q [N, H, D]; k (normed, rotated) and v land in the cache.

    `q_weight`/`k_weight` None: no per-head norm (Qwen2, Llama, Mistral). Caches are
    ``[num_pages, page_size, Hkv, D]`` with a contiguous head dim; slots < 0 are not stored.
    """
    n = qkv.shape[0]
    q = torch.empty((n, num_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if n == 0:
        return q
    if head_dim % 2 or qkv.stride(1) != 1 or cos.stride(1) != 1 or sin.stride(0) != cos.stride(0):
        raise ValueError("qk_norm_rope_store needs an even head dim and contiguous qkv / cos / sin rows")
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the KV cache's head dim must be contiguous")
    norm = q_weight is not None and k_weight is not None
    half = head_dim // 2
    pdl = use_pdl(qkv.device, n)
    _qk_norm_rope_store_kernel[(n, num_heads + num_kv_heads)](
        qkv, cos, sin, q_weight if norm else qkv, k_weight if norm else qkv, q, k_cache, v_cache, slot_mapping,
        qkv.stride(0), cos.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        eps, NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, HALF=half,
        BLOCK_HALF=triton.next_power_of_2(half), PAGE_SIZE=k_cache.shape[1], QK_NORM=norm, USE_PDL=pdl,
        num_warps=1, launch_pdl=pdl)
    return q


def qk_norm_rope(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, q_weight: torch.Tensor | None,
                 k_weight: torch.Tensor | None, eps: float, num_heads: int, num_kv_heads: int, head_dim: int,
                 rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`qk_norm_rope_store` into fresh tensors: qkv [N, (H + 2·Hkv)·D] -> q [N, H, D], k, v [N, Hkv, D].

    The output k / v are a "cache" of N pages of one slot each, written at slots `rows` = arange(N)
    (pass it to reuse one across calls; None makes it here).
    """
    n = qkv.shape[0]
    k = torch.empty((n, 1, num_kv_heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    v = torch.empty_like(k)
    slots = torch.arange(n, device=qkv.device) if rows is None else rows
    q = qk_norm_rope_store(qkv, cos, sin, q_weight, k_weight, eps, num_heads, num_kv_heads, head_dim, k, v, slots)
    return q, k.view(n, num_kv_heads, head_dim), v.view(n, num_kv_heads, head_dim)


@triton.jit
def _silu_mul_kernel(gu_ptr, out_ptr, stride_gu, stride_out, inter, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    wait_inputs(USE_PDL)
    n = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < inter
    dtype = out_ptr.dtype.element_ty
    g = tl.load(gu_ptr + n * stride_gu + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gu_ptr + n * stride_gu + inter + offs, mask=mask, other=0.0).to(tl.float32)
    act = _rnd(g / (1.0 + tl.exp(-g)), dtype)
    tl.store(out_ptr + n * stride_out + offs, (act * u).to(dtype), mask=mask)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [N, 2·I] (gate first, as `DenseLayer.gate_up_proj` is fused) -> silu(gate) * up [N, I]."""
    n, width = gate_up.shape
    inter = width // 2
    out = torch.empty((n, inter), dtype=gate_up.dtype, device=gate_up.device)
    if n == 0:
        return out
    if gate_up.stride(1) != 1:
        gate_up = gate_up.contiguous()
    block = min(1024, triton.next_power_of_2(inter))
    pdl = use_pdl(out.device, n)
    _silu_mul_kernel[(n, triton.cdiv(inter, block))](gate_up, out, gate_up.stride(0), out.stride(0), inter,
                                                     BLOCK=block, USE_PDL=pdl, num_warps=4 if block >= 512 else 1,
                                                     launch_pdl=pdl)
    return out
