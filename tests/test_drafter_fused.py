"""The DSpark / DFlash drafter's fused inference path (`dspark.drafters.fused`) == its plain modules.

On the CPU the Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before
Triton is first imported); the module is skipped where Triton is not installed. Covered: the block
attention kernel against a dense masked SDPA over [gathered context ; own block], `qk_norm_rope`
against the plain RMSNorm + rotary, and whole drafters (absorb into a private `RaggedKV` or into the
engine's pages, then draft) fused against plain: float32 near-exact, identical greedy drafts, and the
engine's greedy output with a fused drafter == transformers, with the plain drafter's acceptances.
`-m gpu` repeats the drafter comparison in bf16 at Qwen3-4B width and checks CUDA-graph capture.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from conftest import tiny_drafter  # noqa: E402
from engine_helpers import hf_greedy, taught_drafter, weak_bigram_target  # noqa: E402
from dspark.drafters import DSparkDrafter  # noqa: E402
from dspark.drafters.base import ContextUpdate  # noqa: E402
from dspark.drafters.config import DrafterConfig  # noqa: E402
from dspark.drafters.layers import RMSNorm, Rotary, apply_rotary  # noqa: E402
from dspark.engine.draft_kv import PagedContextKV  # noqa: E402
from dspark.engine.kv_cache import PagedKVCache  # noqa: E402
from dspark.engine.llm import LLM  # noqa: E402
from dspark.engine.options import SamplingOptions  # noqa: E402
from dspark.engine.row_sampler import RowSampler  # noqa: E402
from dspark.kernels import block_attention  # noqa: E402
from dspark.models.fused_ops import qk_norm_rope  # noqa: E402
from dspark.sampling import RowParams, SamplingParams, as_sampler  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def paged_context(contexts: list[int], page_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                  device: str, layers: int = 1, seed: int = 0) -> tuple[PagedKVCache, torch.Tensor]:
    """A random cache whose pages are shuffled across rows (page 0 is the null page) and the rows' tables."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-(n + 8) // page_size) for n in contexts]
    num_pages, width = sum(need) + 3, max(need) + 1
    perm = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()
    tables = []
    for n in need:
        table, perm = perm[:n], perm[n:]
        tables.append(table + [-1] * (width - n))
    cache = PagedKVCache(layers, num_pages, page_size, kv_heads, head_dim, dtype, device)
    for t in cache.k + cache.v:
        t.copy_(torch.randn(t.shape, generator=g).to(dtype))
    return cache, torch.tensor(tables, dtype=torch.int32, device=device)


def reference_block_attention(q, k_own, v_own, cache, tables, lengths, max_len):
    """The plain path: gather the context densely, append the block's own K/V, masked SDPA."""
    rows = lengths.shape[0]
    g = q.shape[0] // rows
    ck, cv = cache.gather(0, tables, max_len)
    keys = torch.cat([ck, k_own.view(rows, g, *k_own.shape[1:])], dim=1).transpose(1, 2)
    values = torch.cat([cv, v_own.view(rows, g, *v_own.shape[1:])], dim=1).transpose(1, 2)
    valid = torch.arange(max_len, device=q.device)[None, :] < lengths[:, None]
    mask = torch.cat([valid, valid.new_ones(rows, g)], dim=1)[:, None, None, :]
    qr = q.view(rows, g, *q.shape[1:]).transpose(1, 2)
    out = F.scaled_dot_product_attention(qr.float(), keys.float(), values.float(), attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2).reshape(q.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gamma,heads,num_splits", [(4, 4, None), (7, 8, 3), (1, 4, None)])
def test_block_attention_matches_dense_reference(dtype, gamma, heads, num_splits):
    kv_heads, head_dim, page_size = 2, 16, 16
    contexts = [0, 1, 37, 300]
    cache, tables = paged_context(contexts, page_size, kv_heads, head_dim, dtype, "cpu")
    lengths = torch.tensor(contexts)
    n = len(contexts) * gamma
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(n, h, head_dim, generator=g).to(dtype) for h in (heads, kv_heads, kv_heads))
    out = block_attention(q, k, v, cache.k[0], cache.v[0], tables, lengths, head_dim ** -0.5, 320,
                          num_splits=num_splits)
    ref = reference_block_attention(q, k, v, cache, tables, lengths, max(contexts))
    torch.testing.assert_close(out.float(), ref, atol=TOL[dtype], rtol=0)


def test_qk_norm_rope_matches_plain_norm_and_rotary():
    n, heads, kv_heads, head_dim = 6, 4, 2, 8
    g = torch.Generator().manual_seed(2)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * head_dim, generator=g)
    qn, kn = RMSNorm(head_dim), RMSNorm(head_dim)
    with torch.no_grad():
        qn.weight.copy_(torch.rand(head_dim, generator=g) + 0.5)
        kn.weight.copy_(torch.rand(head_dim, generator=g) + 0.5)
    cos, sin = Rotary(head_dim, 10000.0)(torch.arange(3, 3 + n).view(1, n), torch.float32)
    q, k, v = qk_norm_rope(qkv, cos.view(n, -1), sin.view(n, -1), qn.weight, kn.weight, qn.eps, heads, kv_heads,
                           head_dim)
    rq, rk, rv = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    c, s = cos.view(n, 1, head_dim), sin.view(n, 1, head_dim)
    torch.testing.assert_close(q, apply_rotary(qn(rq.view(n, heads, head_dim)), c, s), atol=1e-6, rtol=0)
    torch.testing.assert_close(k, apply_rotary(kn(rk.view(n, kv_heads, head_dim)), c, s), atol=1e-6, rtol=0)
    torch.testing.assert_close(v, rv.view(n, kv_heads, head_dim), atol=0, rtol=0)


def _update(target, ids, layer_ids, num_new):
    feats = target.features(ids, layer_ids)
    width = ids.shape[1] - 1
    return ContextUpdate(feats.context_features[:, :width], feats.last_hidden[:, :width], ids[:, 1:],
                         torch.tensor(num_new))


@pytest.mark.parametrize("method,overrides", [("dspark", {}), ("dspark", dict(markov_head_type="rnn")),
                                              ("dflash", {})])
def test_fused_drafter_matches_plain_on_a_private_cache(qwen3_target, method, overrides):
    drafter = tiny_drafter(qwen3_target, method, **overrides)
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(3))
    update = _update(qwen3_target, ids, drafter.config.target_layer_ids, [11, 8, 3])
    anchor = ids[:, 11]
    out = {}
    for fused in (False, True):
        drafter.fused = fused
        state = drafter.new_state(3, torch.device("cpu"))
        prop = drafter.propose(state, update, anchor, SamplingParams(temperature=0))
        with torch.no_grad():
            out[fused] = (state.kv, drafter.block_hidden(state, anchor), prop)
    (kv_p, h_p, p_p), (kv_f, h_f, p_f) = out[False], out[True]
    for layer in range(drafter.config.num_hidden_layers):
        torch.testing.assert_close(kv_f.k[layer], kv_p.k[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(kv_f.v[layer], kv_p.v[layer], atol=1e-5, rtol=0)
    torch.testing.assert_close(h_f, h_p, atol=1e-5, rtol=0)
    assert torch.equal(p_f.draft_ids, p_p.draft_ids)
    torch.testing.assert_close(p_f.draft_probs, p_p.draft_probs, atol=1e-5, rtol=0)
    if p_p.confidence is not None:
        torch.testing.assert_close(p_f.confidence, p_p.confidence, atol=1e-5, rtol=0)


def draft_through_pages(drafter: DSparkDrafter, features: torch.Tensor, lengths: list[int], anchor: torch.Tensor,
                        cache: PagedKVCache, tables: torch.Tensor, sampler_params: SamplingParams):
    """The engine's order: `absorb_flat` of every row's context (flat tokens, target slots), then `draft`."""
    rows = len(lengths)
    length = torch.tensor(lengths, device=anchor.device)
    kv = PagedContextKV(cache, tables, torch.zeros_like(length), 0)
    pos, real = kv.write_positions(length, features.shape[1])
    slots = kv.slots(pos, real)
    drafter.absorb_flat(cache, features.reshape(rows * features.shape[1], -1), pos.reshape(-1), slots.reshape(-1))
    state = drafter.state_for(PagedContextKV(cache, tables, length, max(lengths) + 5))  # a loose host bound
    with torch.no_grad():
        return drafter.block_hidden(state, anchor), drafter.draft(state, None, anchor, as_sampler(sampler_params))


@pytest.mark.parametrize("method", ["dspark", "dflash"])
def test_fused_drafter_matches_plain_through_pages(qwen3_target, method):
    drafter = tiny_drafter(qwen3_target, method)
    c = drafter.config
    ids = torch.randint(0, 64, (2, 14), generator=torch.Generator().manual_seed(4))
    features = qwen3_target.features(ids, c.target_layer_ids).context_features
    out = {}
    for fused in (False, True):
        drafter.fused = fused
        cache, tables = paged_context([14, 14], 4, c.num_key_value_heads, c.head_dim, torch.float32, "cpu",
                                      layers=c.num_hidden_layers, seed=5)
        out[fused] = (cache, *draft_through_pages(drafter, features, [14, 9], ids[:, -1], cache, tables,
                                                  SamplingParams(temperature=0)))
    (cache_p, h_p, p_p), (cache_f, h_f, p_f) = out[False], out[True]
    for layer in range(c.num_hidden_layers):  # the null page 0 takes the plain path's padding writes: skip it
        torch.testing.assert_close(cache_f.k[layer][1:], cache_p.k[layer][1:], atol=1e-5, rtol=0)
        torch.testing.assert_close(cache_f.v[layer][1:], cache_p.v[layer][1:], atol=1e-5, rtol=0)
    torch.testing.assert_close(h_f, h_p, atol=1e-5, rtol=0)
    assert torch.equal(p_f.draft_ids, p_p.draft_ids)
    torch.testing.assert_close(p_f.draft_probs, p_p.draft_probs, atol=1e-5, rtol=0)


def test_fused_weights_stay_out_of_the_state_dict_and_follow_weight_updates(qwen3_target):
    drafter = tiny_drafter(qwen3_target, "dspark")
    keys = set(drafter.state_dict())
    drafter.fused = True
    first = drafter.prepare_inference()
    assert set(drafter.state_dict()) == keys
    assert drafter._fused()[1] is first  # unchanged weights: reused
    other = tiny_drafter(qwen3_target, "dspark", seed=7)
    drafter.load_state_dict(other.state_dict())  # in-place copies: rebuilt on next use
    rebuilt = drafter._fused()[1]
    assert rebuilt is not first
    torch.testing.assert_close(rebuilt.layers[0].qkv[: first.layers[0].qkv.shape[0] // 2],
                               other.layers[0].self_attn.q_proj.weight[: first.layers[0].qkv.shape[0] // 2])


@pytest.mark.parametrize("method, kw", [("dspark", {"markov_head_type": "vanilla"}), ("dflash", {})])
def test_engine_greedy_with_a_fused_drafter_matches_transformers(tmp_path, method, kw):
    target, f = weak_bigram_target(tmp_path)
    drafter = taught_drafter(target, f, method, kw)
    prompts, budget = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [4, 5, 6]], 14
    oracle = [hf_greedy(target, p, budget) for p in prompts]
    committed = {}
    for fused in (False, True):
        drafter.fused = fused
        llm = LLM(target, drafter, page_size=4, max_num_seqs=2, max_num_batched_tokens=32)
        ids = [llm.add_request(p, SamplingOptions(budget, temperature=0.0, ignore_eos=True)) for p in prompts]
        while llm.has_unfinished():
            llm.step()
        results = [llm.result(i) for i in ids]
        assert [r.token_ids for r in results] == oracle
        committed[fused] = [[r.committed for r in res.rounds] for res in results]
    assert committed[True] == committed[False]


# -- GPU: bf16 at Qwen3-4B width, CUDA graphs ------------------------------------------------------
def gpu_drafter(layers: int = 2) -> DSparkDrafter:
    cfg = DrafterConfig(method="dspark", vocab_size=4096, hidden_size=2560, intermediate_size=9728,
                        num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                        num_target_layers=36, target_layer_ids=[1, 9, 17, 25, 33], mask_token_id=4095, block_size=7,
                        rope_theta=1e6, markov_rank=256, markov_head_type="vanilla", enable_confidence_head=True,
                        confidence_head_with_markov=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        drafter = DSparkDrafter(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for p in drafter.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    return drafter.eval().requires_grad_(False)


@pytest.mark.gpu
def test_gpu_fused_bf16_matches_plain_and_captures():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    drafter = gpu_drafter()
    c = drafter.config
    rows, ctx = 4, [1000, 700, 64, 1]
    features = torch.randn(rows, max(ctx), 5 * c.hidden_size, device="cuda", dtype=torch.bfloat16)
    anchor = torch.randint(0, c.vocab_size, (rows,), device="cuda")
    out = {}
    for fused in (False, True):
        drafter.fused = fused
        cache, tables = paged_context([max(ctx)] * rows, 16, c.num_key_value_heads, c.head_dim, torch.bfloat16,
                                      "cuda", layers=c.num_hidden_layers)
        out[fused] = (cache, tables, *draft_through_pages(drafter, features, ctx, anchor, cache, tables,
                                                          SamplingParams(temperature=0)))
    (_, _, h_p, p_p), (cache, tables, h_f, p_f) = out[False], out[True]
    assert (h_f.float() - h_p.float()).abs().max() < 0.05 * h_p.float().abs().max()
    assert (p_f.draft_ids == p_p.draft_ids).float().mean() > 0.9  # bf16: a near-tie may flip
    state = drafter.state_for(PagedContextKV(cache, tables, torch.tensor(ctx, device="cuda"), 1024))
    params = RowParams.from_list([SamplingParams(1.0, 0, 1.0)] * rows, "cuda")  # the engine's sampler, T = 1

    def draft():
        sampler = RowSampler(params, torch.arange(rows, device="cuda"), torch.zeros(rows, dtype=torch.long, device="cuda"))
        return drafter.draft(state, None, anchor, sampler)

    with torch.no_grad():
        eager = draft()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static = draft()
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static.draft_ids, eager.draft_ids)
    torch.testing.assert_close(static.draft_probs, eager.draft_probs, atol=1e-6, rtol=0)
