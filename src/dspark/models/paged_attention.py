"""Reference attention over the paged KV cache, in plain PyTorch (the oracle faster kernels must match).

`paged_attention(q, k_cache, v_cache, batch, scale)` is the seam: a Triton/CUDA kernel with the same
signature (`PagedAttentionFn`) can replace it in `DenseLM` without touching the model. Two optional
keyword arguments, ``max_query_len`` and ``max_context_len`` (host ints, upper bounds), let a kernel size
its launch without reading the device (and ``short_query_len``, a mixed step's bound on its decode rows,
lets it size their tiles apart from the prefill chunks') (`dspark.kernels.paged_attention` needs them inside CUDA graphs);
a function that does not accept them is called without them. Semantics, per
sequence ``b`` of the `FlatBatch`: its ``q_len`` query tokens sit at positions
``context_lens[b] .. context_lens[b] + q_len - 1``; query ``j`` attends to cached positions
``0 .. context_lens[b] + j`` (the prefix plus itself and the earlier queries: causal). The caller has
already written this step's K/V into the pages, so all keys are read from the cache.

This version pads the batch to its longest query run and its longest key run, gathers every sequence's
pages into a dense ``[B, S, Hkv, D]`` block and runs one masked SDPA (GQA through ``enable_gqa``).
It reads two host scalars (the maxima), so it is for exactness and CPU runs, not for CUDA graphs.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from dspark.engine.batch import FlatBatch


class PagedAttentionFn(Protocol):
    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: FlatBatch,
                 scale: float, *, max_query_len: int | None = None, max_context_len: int | None = None,
                 short_query_len: int | None = None) -> torch.Tensor:
        """q [N, H, D], k/v_cache [P, page_size, Hkv, D] -> out [N, H, D] (dtype of q)."""
        ...


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: FlatBatch,
                    scale: float, *, max_query_len: int | None = None, max_context_len: int | None = None,
                    short_query_len: int | None = None) -> torch.Tensor:
    """Prefix-plus-causal attention of every flat query token over its sequence's cached K/V (bounds unused)."""
    num_tokens, heads, head_dim = q.shape
    if num_tokens == 0:
        return torch.empty_like(q)
    page_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    q_lens = batch.query_lens()  # [B]
    kv_lens = batch.context_lens + q_lens  # [B] keys per sequence, this step's included
    max_q, max_kv = int(q_lens.max()), int(kv_lens.max())  # host sync: reference only
    num_seqs = q_lens.shape[0]

    pages = -(-max_kv // page_size)
    table = batch.block_tables[:, :pages].clamp_min(0).long()  # [B, pages]; -1 (unused) reads page 0, masked
    keys = k_cache[table].reshape(num_seqs, pages * page_size, kv_heads, head_dim)[:, :max_kv]
    values = v_cache[table].reshape(num_seqs, pages * page_size, kv_heads, head_dim)[:, :max_kv]

    seq = batch.seq_ids()  # [N]
    local = torch.arange(num_tokens, device=q.device) - batch.query_start[seq]  # [N] index within its run
    q_pad = q.new_zeros(num_seqs, max_q, heads, head_dim)
    q_pad[seq, local] = q

    # key t is visible to query j of sequence b iff t <= context_lens[b] + j (and t exists: t < kv_lens[b]);
    # padded query rows keep key 0 so no row is empty (an empty row would give NaN; those rows are dropped)
    t = torch.arange(max_kv, device=q.device)
    last = batch.context_lens[:, None] + torch.arange(max_q, device=q.device)[None, :]  # [B, max_q]
    last = torch.minimum(last, kv_lens[:, None] - 1).clamp_min(0)
    mask = t[None, None, :] <= last[:, :, None]  # [B, max_q, max_kv]

    out = F.scaled_dot_product_attention(
        q_pad.transpose(1, 2), keys.transpose(1, 2).to(q.dtype), values.transpose(1, 2).to(q.dtype),
        attn_mask=mask[:, None], scale=scale, enable_gqa=heads != kv_heads)  # [B, H, max_q, D]
    return out.transpose(1, 2)[seq, local]  # [N, H, D]
