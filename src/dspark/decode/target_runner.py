"""`TargetRunner`: the target model stepping a batch whose rows advance by different amounts.

Each round the target verifies `[anchor, drafts...]` for every row in one forward. Rows accept
different numbers of drafts, so rejected positions are left in the HF KV cache but masked out forever
by a per-row validity mask (`kv_mask`), and positions are passed explicitly. When the cache holds too
many dead entries it is compacted (valid entries moved left, per row, order kept). This keeps target
and drafter caches consistent after partial acceptance without recomputing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dspark.targets.adapter import TargetModel


@dataclass
class TargetStep:
    logits: torch.Tensor  # [R, T, V]
    features: torch.Tensor  # [R, T, n·d]
    last_hidden: torch.Tensor  # [R, T, d]


def _cache_tensors(cache: Any) -> list[tuple[Any, str, str]] | None:
    """(holder, key attr, value attr) per layer for DynamicCache layouts we know, else None."""
    if hasattr(cache, "layers") and all(hasattr(l, "keys") and hasattr(l, "values") for l in cache.layers):
        return [(layer, "keys", "values") for layer in cache.layers]
    return None


class TargetRunner:
    def __init__(self, target: TargetModel, layer_ids: list[int] | None) -> None:
        self.target = target
        self.layer_ids = layer_ids
        self.device = target.device
        self.cache: Any = None
        self.kv_mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # [R, S_physical]
        self.lengths = torch.zeros(0, dtype=torch.long, device=self.device)  # [R] next position per row

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor, new_mask: torch.Tensor) -> TargetStep:
        mask = torch.cat([self.kv_mask, new_mask.long()], dim=1)
        out = self.target.forward(tokens, self.layer_ids, attention_mask=mask, position_ids=positions,
                                  past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.kv_mask = mask
        return TargetStep(out.logits, out.context_features, out.last_hidden)

    def prefill(self, prompts: list[list[int]]) -> TargetStep:
        """Run the prompts (right-padded); all prompt positions become committed."""
        from transformers import DynamicCache

        rows, width = len(prompts), max(len(p) for p in prompts)
        tokens = torch.zeros(rows, width, dtype=torch.long, device=self.device)
        lengths = torch.tensor([len(p) for p in prompts], device=self.device)
        for r, p in enumerate(prompts):
            tokens[r, : len(p)] = torch.tensor(p, device=self.device)
        real = torch.arange(width, device=self.device).unsqueeze(0) < lengths.unsqueeze(1)
        self.cache = DynamicCache()
        self.kv_mask = torch.zeros(rows, 0, dtype=torch.long, device=self.device)
        positions = torch.arange(width, device=self.device).unsqueeze(0).expand(rows, -1)
        step = self._forward(tokens, positions, real)
        self.lengths = lengths
        return step

    def verify(self, tokens: torch.Tensor, num_tokens: torch.Tensor) -> TargetStep:
        """tokens [R, T] at each row's next positions; the first num_tokens[r] are real."""
        width = tokens.shape[1]
        offsets = torch.arange(width, device=self.device).unsqueeze(0)
        return self._forward(tokens, self.lengths.unsqueeze(1) + offsets, offsets < num_tokens.unsqueeze(1))

    def commit(self, num_committed: torch.Tensor, width: int) -> None:
        """Keep the first num_committed[r] entries of the last verified block (width entries)."""
        keep = torch.arange(width, device=self.device).unsqueeze(0) < num_committed.unsqueeze(1)
        self.kv_mask[:, -width:] = self.kv_mask[:, -width:] * keep.long()
        self.lengths = self.lengths + num_committed
        if self.kv_mask.shape[1] > 2 * int(self.kv_mask.sum(1).max()) + 64:
            self.compact()

    def compact(self) -> None:
        """Drop dead cache entries: move each row's valid entries left, in order."""
        layers = _cache_tensors(self.cache)
        if layers is None:
            return
        valid = self.kv_mask.bool()
        counts = valid.sum(1)
        width = int(counts.max())
        # stable order: valid entries first (by original index), dead ones after
        order = torch.argsort((~valid).long() * valid.shape[1] + torch.arange(valid.shape[1], device=self.device), dim=1)
        order = order[:, :width]
        for holder, k_attr, v_attr in layers:
            for attr in (k_attr, v_attr):
                t = getattr(holder, attr)  # [R, H, S, D]
                idx = order[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])
                setattr(holder, attr, t.gather(2, idx))
        self.kv_mask = (torch.arange(width, device=self.device).unsqueeze(0) < counts.unsqueeze(1)).long()
