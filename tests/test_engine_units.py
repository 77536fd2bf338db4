"""Unit tests of the engine's pure pieces: per-row sampling, counter-based streams, the block manager."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dspark.counter_rng import counter_uniforms, mix64
from dspark.engine.block_manager import BlockManager
from dspark.sampling import RowParams, SamplingParams, processed_probs, processed_probs_rows


def test_row_processing_equals_scalar_processing_row_by_row():
    torch.manual_seed(0)
    logits = torch.randn(7, 50) * 3
    params = [SamplingParams(1.0), SamplingParams(0.0), SamplingParams(0.7, top_k=5), SamplingParams(1.2, top_p=0.8),
              SamplingParams(0.9, top_k=10, top_p=0.5), SamplingParams(1.0, top_k=50), SamplingParams(0.5, top_k=1)]
    rows = processed_probs_rows(logits, RowParams.from_list(params, "cpu"))
    for r, p in enumerate(params):
        torch.testing.assert_close(rows[r], processed_probs(logits[r], p), atol=1e-6, rtol=1e-5)


def test_mix64_is_splitmix64():
    mask = (1 << 64) - 1

    def reference(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    for v in (0, 1, 2**62, -5, 123456789, -(2**63)):
        assert (int(mix64(torch.tensor([v]))) & mask) == reference(v & mask)


def test_counter_uniforms_depend_only_on_seed_and_counter():
    a = counter_uniforms(torch.tensor([7, 8]), torch.tensor([3, 0]), 5)
    b = counter_uniforms(torch.tensor([7]), torch.tensor([5]), 3)
    assert torch.equal(a[0, 2:], b[0])
    u = counter_uniforms(torch.arange(4), torch.zeros(4, dtype=torch.long), 50000)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    assert abs(float(torch.corrcoef(u[:2])[0, 1])) < 0.02  # neighbouring seeds are independent streams


class Model:
    """What the block manager must preserve: every page either free or referenced by exactly its owners."""

    def __init__(self, bm: BlockManager) -> None:
        self.bm, self.reqs = bm, {}

    def check(self) -> None:
        owners: dict[int, int] = {}
        for pages in self.reqs.values():
            for p in pages:
                owners[p] = owners.get(p, 0) + 1
        for page in range(1, self.bm.num_pages):
            assert self.bm.ref[page] == owners.get(page, 0)
            assert (page in self.bm.free) == (owners.get(page, 0) == 0)
        assert 0 not in self.bm.free and self.bm.num_used == len(owners)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "grow", "release", "register"]), st.integers(0, 5),
                          st.integers(1, 40)), min_size=1, max_size=60))
def test_block_manager_never_leaks_or_double_frees(ops):
    bm = BlockManager(num_pages=24, page_size=4)
    model = Model(bm)
    prompts = {i: [i % 3] * 12 + list(range(i, i + 20)) for i in range(6)}
    computed: dict[int, int] = {}
    for op, rid, n in ops:
        if op == "add" and rid not in model.reqs:
            model.reqs[rid] = bm.match_prefix(prompts[rid], len(prompts[rid]))
            computed[rid] = len(model.reqs[rid]) * 4
        elif op == "grow" and rid in model.reqs:
            if bm.grow(model.reqs[rid], min(computed[rid] + n, len(prompts[rid]))):
                computed[rid] = min(computed[rid] + n, len(prompts[rid]) - 1)
        elif op == "register" and rid in model.reqs:
            bm.register(model.reqs[rid], prompts[rid], min(computed[rid], len(model.reqs[rid]) * 4), 0)
        elif op == "release" and rid in model.reqs:
            bm.release(model.reqs.pop(rid))
        model.check()
    for rid in list(model.reqs):
        bm.release(model.reqs.pop(rid))
    model.check()
    assert bm.num_free == bm.num_pages - 1


def test_prefix_hits_need_the_following_token_and_leave_one_to_compute():
    bm = BlockManager(num_pages=10, page_size=4)
    tokens = list(range(12))
    pages: list[int] = []
    assert bm.grow(pages, 11)
    bm.register(pages, tokens, num_computed=11, num_registered=0)
    bm.release(pages)
    assert len(bm.match_prefix(tokens, limit=12)) == 2  # page 3 would leave nothing to compute
    assert bm.match_prefix(tokens[:4] + [99] + tokens[5:], limit=12) == []  # a different token inside page 1
    other = bm.match_prefix(tokens[:4] + [77], limit=5)  # same page, different following token: no hit
    assert other == []
    with pytest.raises(RuntimeError, match="twice"):
        p = []
        bm.grow(p, 4)
        q = list(p)
        bm.release(p)
        bm.release(q)
    assert np.isfinite(bm.num_free)
