"""`PagedKVCache`: the engine's key/value storage, cut into fixed-size pages shared by target and drafter.

Layout (one tensor pair per attention layer): ``k[layer], v[layer]: [num_pages, page_size, Hkv, D]``.
Token position p of a request lives in page ``block_table[p // page_size]`` at offset ``p % page_size``;
its flat slot index is ``page * page_size + offset`` (the `slot_mapping` of a `FlatBatch`). The target's
layers and the drafter's context layers are separate `PagedKVCache` objects indexed by the SAME block
tables, so preemption, abort and prefix reuse move both together (`dspark.engine.block_manager` owns
the pages; this module only holds the tensors). Page 0 is the NULL page: never handed to a request,
it absorbs the writes of padding slots (slot < 0), so a write never needs a data-dependent filter.
"""

from __future__ import annotations

import torch


class PagedKVCache:
    def __init__(self, num_layers: int, num_pages: int, page_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"num_pages and page_size must be >= 1, got {num_pages}, {page_size}")
        shape = (num_pages, page_size, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_pages, self.page_size = num_pages, page_size
        self.kv_heads, self.head_dim = kv_heads, head_dim

    @property
    def num_layers(self) -> int:
        return len(self.k)

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k, v `[N, Hkv, D]` at flat slots `[N]` (slots < 0 are padding: they land in the null page)."""
        slot_mapping = slot_mapping.clamp_min(0)
        self.k[layer].view(-1, self.kv_heads, self.head_dim)[slot_mapping] = k.to(self.k[layer].dtype)
        self.v[layer].view(-1, self.kv_heads, self.head_dim)[slot_mapping] = v.to(self.v[layer].dtype)

    def gather(self, layer: int, block_tables: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense views of the first `length` positions of each row: block_tables [B, P] -> k, v [B, length, Hkv, D].

        Entries past a row's own length hold whatever the page has (mask them); padded table entries
        (< 0) read page 0.
        """
        pages = -(-length // self.page_size)
        table = block_tables[:, :pages].clamp_min(0).long()  # [B, pages]
        b = table.shape[0]
        k = self.k[layer][table].reshape(b, pages * self.page_size, self.kv_heads, self.head_dim)[:, :length]
        v = self.v[layer][table].reshape(b, pages * self.page_size, self.kv_heads, self.head_dim)[:, :length]
        return k, v

    def copy_pages(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Copy whole pages src[i] -> dst[i] in every layer (copy-on-write of a shared page)."""
        for store in (self.k, self.v):
            for t in store:
                t[dst] = t[src]
