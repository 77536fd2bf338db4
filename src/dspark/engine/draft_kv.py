"""`PagedContextKV`: a drafter's context K/V seen through the engine's block tables.

Drafters read and extend their context caches through these members (`length`, `max_length`,
`write_positions`, `append`, `view`, `pages`, `valid_mask`), which `dspark.drafters.kv_cache.RaggedKV` provides
for a private per-row cache. This class provides the same members over the rows of one engine step,
stored in the drafter's `PagedKVCache` at the slots of each request's pages (the target's pages), so
preemption, abort and prefix reuse keep drafter and target consistent by construction.
`max_length` is a host-side upper bound (the step's plan knows it) so reading never syncs the device.
"""

from __future__ import annotations

import torch

from dspark.engine.kv_cache import PagedKVCache


class PagedContextKV:
    def __init__(self, cache: PagedKVCache, block_tables: torch.Tensor, lengths: torch.Tensor, max_length: int) -> None:
        self.cache = cache
        self.block_tables = block_tables  # [R, P] page ids of each row's request
        self.length = lengths  # [R] long: context positions cached so far
        self.max_length = max_length  # host upper bound of length.max()

    def write_positions(self, num_new: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute positions `[R, width]` of the next entries and which of them are real."""
        offsets = torch.arange(width, device=self.length.device).unsqueeze(0)
        return self.length.unsqueeze(1) + offsets, offsets < num_new.unsqueeze(1)

    def slots(self, positions: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Flat slot ids [R, W] of positions through each row's table (-1 where not real)."""
        ps = self.cache.page_size
        page_idx = (positions // ps).clamp(max=self.block_tables.shape[1] - 1)
        pages = self.block_tables.long().gather(1, page_idx)
        return torch.where(real & (pages >= 0), pages * ps + positions % ps, torch.full_like(positions, -1))

    def append(self, ks: list[torch.Tensor], vs: list[torch.Tensor], num_new: torch.Tensor) -> None:
        """Write layer entries `[R, T, Hkv, D]` (the first num_new[r] of row r are real) and advance."""
        width = ks[0].shape[1]
        slots = self.slots(*self.write_positions(num_new, width)).reshape(-1)  # [R·T]
        for layer, (k, v) in enumerate(zip(ks, vs)):
            self.cache.write(layer, slots, k.reshape(-1, *k.shape[2:]), v.reshape(-1, *v.shape[2:]))
        self.length = self.length + num_new
        self.max_length += width

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Entries up to `max_length`: k, v `[R, max_length, Hkv, D]` (mask with `valid_mask`).

        Entries past a row's own length are zeroed: those slots hold whatever their page has (the null
        page takes the padding writes, which may be NaN), and a masked NaN key or value still makes the
        row NaN (an additive -inf mask on a NaN score, a zero weight times a NaN value).
        """
        k, v = self.cache.gather(layer, self.block_tables, self.max_length)
        invalid = ~self.valid_mask()[:, :, None, None]
        return k.masked_fill(invalid, 0), v.masked_fill(invalid, 0)

    def pages(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer's pages and the rows' block tables: k, v `[num_pages, page_size, Hkv, D]`, tables `[R, P]`."""
        return self.cache.k[layer], self.cache.v[layer], self.block_tables

    def valid_mask(self) -> torch.Tensor:
        """[R, max_length] True where a row has an entry."""
        return torch.arange(self.max_length, device=self.length.device).unsqueeze(0) < self.length.unsqueeze(1)
