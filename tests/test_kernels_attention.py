"""Triton paged-attention kernels (`dspark.kernels`) == a dense PyTorch reference.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before Triton is
first imported); the module is skipped where Triton is not installed. `-m gpu` repeats the comparisons
on CUDA at Qwen3-8B sizes and checks that a call captures in a CUDA graph.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from dspark.engine.batch import FlatBatch, slots_for  # noqa: E402
from dspark.engine.kv_cache import PagedKVCache  # noqa: E402
from dspark.kernels import (paged_attention, paged_decode_attention, paged_extend_attention,  # noqa: E402
                            plan_attention, store_kv)

TOL = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}
MIXED = ([1, 4, 8, 17], [300, 0, 37, 129])  # (q lens, contexts)
DECODE = ([1, 1, 1, 1], [0, 1, 63, 300])


def make_batch(q_lens: list[int], contexts: list[int], page_size: int, kv_heads: int, head_dim: int,
               dtype: torch.dtype, device: str, pad_seqs: int = 0, pad_tokens: int = 0, seed: int = 0):
    """A random cache whose pages are shuffled across sequences, the batch's K/V already stored, and q.

    `pad_seqs` appends CUDA-graph filler sequences (one token, context 0, table all -1, slot -1);
    `pad_tokens` appends filler tokens past query_start[-1].
    """
    g = torch.Generator().manual_seed(seed)
    lens = [c + q for q, c in zip(q_lens, contexts)]
    pages_needed = [-(-n // page_size) for n in lens]
    num_pages = sum(pages_needed) + 4
    max_pages = max(pages_needed) + 2
    perm = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()  # page 0 is the engine's null page
    tables, positions, slots = [], [], []
    for q_len, ctx, need in zip(q_lens, contexts, pages_needed):
        table, perm = perm[:need], perm[need:]
        tables.append(table + [-1] * (max_pages - need))
        positions += range(ctx, ctx + q_len)
        slots += slots_for(table, ctx, q_len, page_size)
    q_lens = q_lens + [1] * pad_seqs
    tables += [[-1] * max_pages] * pad_seqs
    positions += [0] * (pad_seqs + pad_tokens)
    slots += [-1] * (pad_seqs + pad_tokens)
    n = len(slots)
    batch = FlatBatch(
        input_ids=torch.zeros(n, dtype=torch.long), positions=torch.tensor(positions),
        slot_mapping=torch.tensor(slots), query_start=torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist()),
        context_lens=torch.tensor(contexts + [0] * pad_seqs), block_tables=torch.tensor(tables, dtype=torch.int32),
        logits_indices=torch.zeros(0, dtype=torch.long)).to(device)
    cache = PagedKVCache(1, num_pages, page_size, kv_heads, head_dim, dtype, device)
    for t in (cache.k[0], cache.v[0]):  # the prefix: random everywhere, then the new tokens stored on top
        t.copy_(torch.randn(t.shape, generator=g).to(dtype))
    k_new = torch.randn(n, kv_heads, head_dim, generator=g).to(device, dtype)
    v_new = torch.randn(n, kv_heads, head_dim, generator=g).to(device, dtype)
    return batch, cache, k_new, v_new


def reference_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, batch: FlatBatch,
                        scale: float) -> torch.Tensor:
    """Dense oracle in fp32: gather each sequence's pages, SDPA with the prefix-plus-causal mask."""
    num_heads = q.shape[1]
    page_size, kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    starts, contexts = batch.query_start.tolist(), batch.context_lens.tolist()
    for b, ctx in enumerate(contexts):
        s, e = starts[b], starts[b + 1]
        total = ctx + e - s
        table = batch.block_tables[b, :-(-total // page_size)].clamp_min(0).long()
        k, v = (c[table].reshape(-1, kv_heads, c.shape[-1])[:total].float().repeat_interleave(num_heads // kv_heads, 1)
                for c in (k_cache, v_cache))
        mask = torch.arange(total, device=q.device)[None, :] <= torch.arange(ctx, total, device=q.device)[:, None]
        out[s:e] = torch.nn.functional.scaled_dot_product_attention(
            q[s:e].float().transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask, scale=scale
        ).transpose(0, 1)
    return out


def other_references():
    """The engine's own PyTorch reference path, once it exists."""
    try:
        from dspark.models.paged_attention import paged_attention as models_reference
    except ImportError:
        return []
    return [models_reference]


def check_case(q_lens, contexts, page_size, kv_heads, group, head_dim, dtype, device, num_splits=None,
               pad_seqs=0, pad_tokens=0, seed=0, short_query_len=None):
    batch, cache, k_new, v_new = make_batch(q_lens, contexts, page_size, kv_heads, head_dim, dtype, device,
                                            pad_seqs, pad_tokens, seed)
    store_kv(k_new, v_new, cache.k[0], cache.v[0], batch.slot_mapping)
    heads = kv_heads * group
    q_gen = torch.Generator().manual_seed(seed + 1)
    q = torch.randn(batch.num_tokens, heads, head_dim, generator=q_gen).to(device, dtype)
    scale = head_dim ** -0.5
    real = sum(q_lens)  # graph filler tokens/sequences come after the real ones; their output is unspecified
    out = paged_attention(q, cache.k[0], cache.v[0], batch, scale, max_query_len=max(q_lens),
                          max_context_len=max(contexts), short_query_len=short_query_len, num_splits=num_splits)
    assert out.shape == q.shape and out.dtype == dtype
    ref = reference_attention(q, cache.k[0], cache.v[0], batch, scale)
    torch.testing.assert_close(out[:real].float(), ref[:real], atol=TOL[dtype], rtol=TOL[dtype])
    for other in other_references():  # given only the tokens of sequences (it has no notion of filler tokens)
        theirs = other(q[:real + pad_seqs], cache.k[0], cache.v[0], batch, scale)
        torch.testing.assert_close(out[:real].float(), theirs[:real].float(), atol=TOL[dtype], rtol=TOL[dtype])
    return out, batch, cache, q


@pytest.mark.parametrize("page_size, num_splits", [(4, 1), (16, 3)])  # every (lens, group) meets both
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("lens", [MIXED, DECODE], ids=["mixed", "decode"])
def test_fp32_matches_reference(lens, group, page_size, num_splits):
    check_case(*lens, page_size, kv_heads=2, group=group, head_dim=16, dtype=torch.float32, device="cpu",
               num_splits=num_splits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("lens", [MIXED, DECODE], ids=["mixed", "decode"])
def test_half_precision_matches_reference(lens, dtype):
    check_case(*lens, page_size=16, kv_heads=2, group=4, head_dim=16, dtype=dtype, device="cpu", num_splits=2)


def test_heuristic_splits_head_dim_8_and_graph_padding():
    """Default split plan, a head dim below tl.dot's 16 (padded), filler sequences and tokens."""
    check_case([1, 4, 8, 17], [2, 19, 0, 45], 4, kv_heads=1, group=4, head_dim=8, dtype=torch.float32, device="cpu",
               pad_seqs=2, pad_tokens=3)


CHUNKED = ([1, 1, 8, 3, 40, 1, 23], [300, 0, 37, 129, 0, 64, 5])  # decode / verify rows beside prefill chunks


@pytest.mark.parametrize("dtype,group,page_size", [(torch.float32, 4, 16), (torch.float32, 1, 4), (torch.bfloat16, 4, 16)])
def test_mixed_step_attends_short_rows_and_chunks_apart(dtype, group, page_size):
    """`short_query_len`: decode / verify rows (<= 8 tokens) in one launch, chunks in another, one output =
    the reference (graph filler included), and the same numbers as one launch for everything."""
    split, batch, cache, q = check_case(*CHUNKED, page_size, kv_heads=2, group=group, head_dim=16, dtype=dtype,
                                        device="cpu", pad_seqs=1, pad_tokens=2, short_query_len=8)
    whole = paged_attention(q, cache.k[0], cache.v[0], batch, 0.25, max_query_len=40, max_context_len=300)
    real = sum(CHUNKED[0])
    torch.testing.assert_close(split[:real].float(), whole[:real].float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_mixed_step_whose_chunk_launch_would_split():
    """Few programs: the chunks' launch must not split (its combine pass would overwrite every row)."""
    check_case([1, 1, 12], [300, 5, 200], 16, kv_heads=1, group=1, head_dim=16, dtype=torch.float32, device="cpu",
               short_query_len=8)


def test_mixed_step_with_only_one_kind_of_sequence():
    """Every sequence short, or every one long: one of the two launches has nothing to do."""
    check_case([1, 4, 8], [3, 50, 9], 16, kv_heads=2, group=2, head_dim=16, dtype=torch.float32, device="cpu",
               short_query_len=8)
    check_case([12, 30], [3, 50], 16, kv_heads=2, group=2, head_dim=16, dtype=torch.float32, device="cpu",
               short_query_len=8)


def test_decode_and_extend_entry_points_agree():
    """A decode batch through either kernel entry point gives the same numbers."""
    batch, cache, _, _ = make_batch(*DECODE, 16, 2, 16, torch.float32, "cpu")
    q = torch.randn(batch.num_tokens, 4, 16)
    args = (q, cache.k[0], cache.v[0], batch.query_start, batch.context_lens, batch.block_tables, 0.25)
    dec = paged_decode_attention(*args, max_context_len=300, num_splits=2)
    ext = paged_extend_attention(*args, max_query_len=1, max_context_len=300, num_splits=2)
    torch.testing.assert_close(dec, ext, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(dec, reference_attention(q, cache.k[0], cache.v[0], batch, 0.25), atol=1e-4, rtol=1e-4)


def test_store_kv_matches_cache_write_and_skips_padding():
    """== `PagedKVCache.write` on every real page; padding slots (< 0) are skipped, the null page 0 untouched."""
    batch, cache, k_new, v_new = make_batch([3, 5], [6, 0], 4, 2, 16, torch.float32, "cpu", pad_seqs=1, pad_tokens=2)
    expected = PagedKVCache(1, cache.num_pages, 4, 2, 16, torch.float16, "cpu")
    expected.k[0].copy_(cache.k[0]), expected.v[0].copy_(cache.v[0])
    got_k, got_v = expected.k[0].clone(), expected.v[0].clone()
    before = got_k.clone()
    expected.write(0, batch.slot_mapping, k_new, v_new)
    fused = torch.randn(k_new.shape[0], 2, 2, 16)  # a strided view, as a fused projection would give
    fused[:, 0], fused[:, 1] = k_new, v_new
    store_kv(fused[:, 0], fused[:, 1], got_k, got_v, batch.slot_mapping)  # fp32 -> fp16 cache
    assert torch.equal(got_k[1:], expected.k[0][1:]) and torch.equal(got_v[1:], expected.v[0][1:])
    assert torch.equal(got_k[0], before[0]) and not torch.equal(got_k, before)


def test_plan_fills_the_gpu_and_covers_the_context():
    b1 = plan_attention(1, 8, 4, 128, 1, 4097, num_sms=132)
    b8 = plan_attention(8, 8, 4, 128, 1, 4097, num_sms=132)
    b32 = plan_attention(32, 8, 4, 128, 1, 4097, num_sms=132)
    verify = plan_attention(1, 8, 4, 128, 8, 4104, num_sms=132)
    prefill = plan_attention(1, 8, 4, 128, 2048, 2048, num_sms=132)
    assert b1.num_splits >= 16 and 4 <= b8.num_splits <= 16 and verify.num_splits >= 16  # small batches split
    assert b32.num_splits == 1 and prefill.num_splits == 1  # full grids do not
    assert verify.num_q_tiles == 1 and verify.block_m * verify.block_g == 32
    for plan, kv in ((b1, 4097), (b8, 4097), (b32, 4097), (verify, 4104), (prefill, 2048)):
        assert plan.block_m * plan.block_g >= 16 and plan.split_len % plan.block_n == 0
        assert plan.num_splits * plan.split_len >= kv > (plan.num_splits - 1) * plan.split_len


# ---- on the device: Qwen3-8B attention shapes (H=32, Hkv=8, D=128, page 16), bf16 ---------------------------------

GPU_CASES = [([1] * b, [ctx - 1] * b) for b in (1, 8, 32, 128) for ctx in (1024, 4096)] + [
    ([8] * b, [ctx - 8] * b) for b in (1, 32) for ctx in (1024, 4096)] + [
    ([512, 1, 8, 300], [1024, 4095, 2000, 0]),  # chunked prefill mixed with decode and verify
    ([2048], [0]),  # a whole prefill chunk
]


@pytest.mark.gpu
@pytest.mark.parametrize("lens", GPU_CASES, ids=lambda c: f"q{max(c[0])}xb{len(c[0])}c{max(c[1])}")
def test_gpu_qwen3_8b_shapes(lens):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    check_case(*lens, 16, kv_heads=8, group=4, head_dim=128, dtype=torch.bfloat16, device="cuda", pad_seqs=1)


@pytest.mark.gpu
def test_gpu_mixed_step_at_qwen3_8b_shapes():
    """254 decode rows beside one 192-token chunk (the C = 256 frontier's steps), split launches == reference."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    lens = ([1] * 254 + [192], [320] * 254 + [0])
    check_case(*lens, 16, kv_heads=8, group=4, head_dim=128, dtype=torch.bfloat16, device="cuda", pad_seqs=1,
               short_query_len=8)
    check_case([512, 1, 8, 300], [1024, 4095, 2000, 0], 16, kv_heads=8, group=4, head_dim=128, dtype=torch.bfloat16,
               device="cuda", pad_seqs=1, short_query_len=8)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_other_dtypes(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    check_case(*MIXED, 16, kv_heads=8, group=4, head_dim=128, dtype=dtype, device="cuda")
    check_case(*DECODE, 16, kv_heads=8, group=1, head_dim=64, dtype=dtype, device="cuda")


@pytest.mark.gpu
def test_gpu_graph_capture_without_host_sync():
    """store_kv + attention capture in a CUDA graph; replay with new contents == eager."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    batch, cache, k_new, v_new = make_batch([8, 8, 1], [1000, 37, 4000], 16, 8, 128, torch.bfloat16, "cuda")
    q = torch.randn(batch.num_tokens, 32, 128, device="cuda", dtype=torch.bfloat16)
    kc, vc = cache.k[0], cache.v[0]

    def step():
        store_kv(k_new, v_new, kc, vc, batch.slot_mapping)
        return paged_attention(q, kc, vc, batch, 128 ** -0.5, max_query_len=8, max_context_len=4096)

    step()  # compile outside the capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    q.copy_(torch.randn_like(q))
    k_new.copy_(torch.randn_like(k_new))
    batch.context_lens.copy_(torch.tensor([990, 30, 3999], device="cuda"))  # shorter contexts, same table
    graph.replay()
    torch.testing.assert_close(out.float(), step().float(), atol=0, rtol=0)
    torch.testing.assert_close(out.float(), reference_attention(q, kc, vc, batch, 128 ** -0.5), atol=2e-2, rtol=2e-2)
