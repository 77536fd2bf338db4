"""`store_kv`: a Triton kernel writing one step's new K/V into the engine's paged KV cache.

Runs before attention in every layer of the fast runner (`dspark.engine.runner`): token ``n``'s
``k[n], v[n]`` (``[Hkv, D]``) go to flat slot ``slot_mapping[n]`` = ``page * page_size + offset`` of
``k_cache, v_cache`` (``[num_pages, page_size, Hkv, D]``, the `PagedKVCache` layout). Slots < 0 are
padding (CUDA-graph filler tokens) and are skipped. Same result as `PagedKVCache.write`, without the
host synchronisation its boolean mask needs, so it can live inside a captured graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dspark.kernels.pdl import use_pdl, wait_inputs


@triton.jit
def _store_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
    stride_kn, stride_kh, stride_vn, stride_vh,
    stride_kcp, stride_kcs, stride_kch, stride_vcp, stride_vcs, stride_vch,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE_SIZE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr,
):
    wait_inputs(USE_PDL)
    n = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + n).to(tl.int64)
    if slot < 0:
        return
    page = slot // PAGE_SIZE
    offset = slot % PAGE_SIZE
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < NUM_HEADS) & (offs_d[None, :] < HEAD_DIM)
    hd_k = offs_h[:, None] * stride_kh + offs_d[None, :]
    hd_v = offs_h[:, None] * stride_vh + offs_d[None, :]
    k = tl.load(k_ptr + n * stride_kn + hd_k, mask=mask)
    v = tl.load(v_ptr + n * stride_vn + hd_v, mask=mask)
    kc = k_cache_ptr + page * stride_kcp + offset * stride_kcs + offs_h[:, None] * stride_kch + offs_d[None, :]
    vc = v_cache_ptr + page * stride_vcp + offset * stride_vcs + offs_h[:, None] * stride_vch + offs_d[None, :]
    tl.store(kc, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write k, v `[N, Hkv, D]` into k_cache, v_cache `[num_pages, page_size, Hkv, D]` at slots `[N]` (< 0 skipped).

    k and v may be strided views (e.g. slices of a fused QKV projection) as long as their last dim is
    contiguous; they are cast to the cache dtype.
    """
    num_tokens, num_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    if v.shape != k.shape or k_cache.shape[2:] != (num_heads, head_dim) or v_cache.shape != k_cache.shape:
        raise ValueError(f"shape mismatch: k {tuple(k.shape)}, v {tuple(v.shape)}, cache {tuple(k_cache.shape)}")
    k, v = _last_dim_contiguous(k), _last_dim_contiguous(v)
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("the KV cache's head dim must be contiguous")
    pdl = use_pdl(k.device, num_tokens)
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim, PAGE_SIZE=k_cache.shape[1],
        BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        USE_PDL=pdl, num_warps=4 if num_heads * head_dim >= 1024 else 1, launch_pdl=pdl,
    )


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()
