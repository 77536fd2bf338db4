"""`RaggedKV`: per-row, append-only key/value storage for a drafter's layers.

Rows of a batch advance by different amounts each round (partial acceptance), so each row has its own
length. Storage is `[R, capacity, Hkv, D]` per layer, grown by doubling; `valid_mask()` says which
positions exist. Drafters keep context K/V here and throw away the block's own K/V after each round.
"""

from __future__ import annotations

import torch


class RaggedKV:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, capacity: int = 64) -> None:
        shape = (batch, capacity, kv_heads, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = torch.zeros(batch, dtype=torch.long, device=device)  # [R]

    @property
    def max_length(self) -> int:
        return int(self.length.max()) if self.length.numel() else 0

    def _reserve(self, needed: int) -> None:
        cap = self.k[0].shape[1]
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap)
        for store in (self.k, self.v):
            for i, t in enumerate(store):
                grown = t.new_zeros((t.shape[0], new_cap) + t.shape[2:])
                grown[:, :cap] = t
                store[i] = grown

    def write_positions(self, num_new: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute positions `[R, width]` of the next entries and which of them are real."""
        offsets = torch.arange(width, device=self.length.device).unsqueeze(0)
        return self.length.unsqueeze(1) + offsets, offsets < num_new.unsqueeze(1)

    def append(self, ks: list[torch.Tensor], vs: list[torch.Tensor], num_new: torch.Tensor) -> None:
        """Write layer entries `[R, T, Hkv, D]` (first num_new[r] of row r are real) and advance."""
        width = ks[0].shape[1]
        pos, real = self.write_positions(num_new, width)
        self._reserve(int((self.length + num_new).max()) if num_new.numel() else 0)
        rows = torch.arange(pos.shape[0], device=pos.device).unsqueeze(1).expand_as(pos)
        r_idx, p_idx = rows[real], pos[real]
        for layer, (k, v) in enumerate(zip(ks, vs)):
            self.k[layer][r_idx, p_idx] = k[real].to(self.k[layer].dtype)
            self.v[layer][r_idx, p_idx] = v[real].to(self.v[layer].dtype)
        self.length = self.length + num_new

    def view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stored entries up to the longest row: k, v `[R, Lmax, Hkv, D]`."""
        n = self.max_length
        return self.k[layer][:, :n], self.v[layer][:, :n]

    def pages(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The storage seen as a paged cache (`dspark.kernels.block_attention`): row r is page r of
        `capacity` slots, so k, v `[R, capacity, Hkv, D]` and block tables `[R, 1]` = r."""
        rows = torch.arange(self.length.shape[0], device=self.length.device, dtype=torch.int32)
        return self.k[layer], self.v[layer], rows.unsqueeze(1)

    def valid_mask(self) -> torch.Tensor:
        """[R, Lmax] True where a row has an entry."""
        return torch.arange(self.max_length, device=self.length.device).unsqueeze(0) < self.length.unsqueeze(1)
