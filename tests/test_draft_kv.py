"""`PagedContextKV`: the drafter's context K/V through the engine's block tables.

Regression (found on the H200, 2026-12-02): slots a row does not own (past its length, the null page that
padding writes land in) may hold NaN; a masked NaN key or value still turned the drafter's whole block into
NaN (drafts clamped to the last token id, confidences NaN): every row at 32 and more rows under CUDA
graphs with a trained drafter (16 rows were clean), which `dspark calibrate` and the SPS profile refused.
"""

from __future__ import annotations

import torch

from dspark.engine.draft_kv import PagedContextKV
from dspark.engine.kv_cache import PagedKVCache

from conftest import tiny_drafter

PAGE = 4


def _context(drafter, lengths: list[int], poison: bool) -> PagedContextKV:
    c = drafter.config
    cache = PagedKVCache(drafter.context_layers, 16, PAGE, c.num_key_value_heads, c.head_dim, torch.float32, "cpu")
    if poison:  # every slot NaN first: what a row does not write stays NaN
        for t in cache.k + cache.v:
            t.fill_(float("nan"))
    pages_per_row = -(-max(lengths) // PAGE)
    tables = torch.full((len(lengths), pages_per_row), -1, dtype=torch.int32)
    gen = torch.Generator().manual_seed(0)
    next_page = 1  # page 0 is the null page
    for r, n in enumerate(lengths):
        for p in range(-(-n // PAGE)):
            tables[r, p] = next_page
            next_page += 1
        pos = torch.arange(n)
        slots = tables[r].long()[pos // PAGE] * PAGE + pos % PAGE
        for layer in range(drafter.context_layers):
            k = torch.randn(n, c.num_key_value_heads, c.head_dim, generator=gen)
            v = torch.randn(n, c.num_key_value_heads, c.head_dim, generator=gen)
            cache.write(layer, slots, k, v)
    return PagedContextKV(cache, tables, torch.tensor(lengths), max(lengths))


def test_nan_in_slots_a_row_does_not_own_never_reaches_the_block(qwen3_target):
    drafter = tiny_drafter(qwen3_target, "dspark")
    lengths = [3, 11, 6]  # rows shorter than the longest read the null page and unwritten slots
    anchors = torch.tensor([5, 9, 2])
    clean = drafter.block_hidden(drafter.state_for(_context(drafter, lengths, poison=False)), anchors)
    dirty_kv = _context(drafter, lengths, poison=True)
    k, _ = dirty_kv.cache.gather(0, dirty_kv.block_tables, dirty_kv.max_length)
    assert torch.isnan(k).any()  # the poison is there to be read
    dirty = drafter.block_hidden(drafter.state_for(dirty_kv), anchors)
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(dirty, clean)
