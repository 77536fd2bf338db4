"""The fused GPU forward of `DenseLM` and `GraphedDenseTarget` (padding, graph keys, replay) against eager.

On the CPU the fused Triton kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before
Triton is first imported; skipped where Triton is not installed), in float32: the interpreter rounds
float32 -> bf16 by truncation, so bf16 agreement is checked on the GPU only. `GraphedDenseTarget` is
checked on the CPU in its `replay_eagerly` mode (every padding rule of a graph, the model run eagerly on
the padded static batch); `-m gpu` tests capture real graphs and compare replay with eager.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from test_models_dense import FEATURE_IDS, PagedSim, build_hf, tokens  # noqa: E402

from dspark.engine.dense_target import DenseTarget  # noqa: E402
from dspark.engine.graphed_target import GraphedDenseTarget, GraphKey  # noqa: E402
from dspark.kernels import paged_attention as triton_attention  # noqa: E402
from dspark.models import DenseLM  # noqa: E402

STEPS = [
    [(0, tokens(5, 1)), (1, tokens(2, 2)), (2, tokens(6, 3))],  # prefill
    [(0, tokens(1, 4)), (1, tokens(4, 5)), (2, tokens(1, 6))],  # decode + verify mixed
    [(0, tokens(3, 7)), (1, tokens(1, 8)), (2, tokens(2, 9))],  # verify of other lengths
    [(0, tokens(1, 10)), (1, tokens(1, 11)), (2, tokens(1, 12))],  # pure decode
]


def outputs_close(a, b, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=0)
    torch.testing.assert_close(a.last_hidden, b.last_hidden, atol=atol, rtol=0)
    if a.features is None or b.features is None:
        assert a.features is None and b.features is None
    else:
        torch.testing.assert_close(a.features, b.features, atol=atol, rtol=0)


@pytest.mark.parametrize("arch,attention", [("qwen3", "triton"), ("llama", "reference")])
def test_fused_path_matches_reference_path(arch, attention):
    """Fused kernels (+ Triton attention) == the module-by-module path, and both stores land the same K/V."""
    hf = build_hf(arch, seed=3, **({} if arch == "qwen3" else dict(attention_bias=True, mlp_bias=True)))
    ref = DenseLM.from_hf_model(hf)
    fused = DenseLM.from_hf_model(hf, attention=triton_attention if attention == "triton" else None, fused=True)
    assert fused.uses_fused_path() and not ref.uses_fused_path()
    sim_ref, sim_fused = PagedSim(ref, seed=1), PagedSim(fused, seed=1)
    for steps in STEPS[:2]:
        with torch.no_grad():
            a = ref(sim_ref.batch(steps), sim_ref.kv, FEATURE_IDS)
            b = fused(sim_fused.batch(steps), sim_fused.kv, FEATURE_IDS)
        outputs_close(a, b)
    for layer in range(ref.config.num_layers):
        torch.testing.assert_close(sim_ref.kv.k[layer], sim_fused.kv.k[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(sim_ref.kv.v[layer], sim_fused.kv.v[layer], atol=1e-5, rtol=0)


def graphed_pair(max_query_len: int = 4, sizes=(1, 2, 4, 8, 16)):
    """(eager reference-path DenseTarget, GraphedDenseTarget of the fused model in replay_eagerly mode), same pages.

    The reference attention keeps the interpreter run short; the Triton kernel's tolerance of graph padding
    (dummy sequence, tokens past query_start[-1]) is tested in test_kernels_attention.
    """
    hf = build_hf("qwen3", seed=4)
    model = DenseLM.from_hf_model(hf, fused=True)
    sim = PagedSim(model, seed=2)
    eager = DenseTarget(DenseLM.from_hf_model(hf), sim.kv.num_pages, sim.kv.page_size)  # the reference path
    eager.kv = sim.kv
    graphed = GraphedDenseTarget(model, sim.kv.num_pages, sim.kv.page_size, max_query_len=max_query_len, sizes=sizes,
                                 max_model_len=64, kv=sim.kv)
    assert not graphed.use_graphs  # a CPU model never captures
    graphed.replay_eagerly = True
    return sim, eager, graphed


def test_padded_static_batches_equal_the_unpadded_forward():
    """Every step through the padded static buffers (dummy sequence, -1 slots) == the eager unpadded step."""
    sim, eager, graphed = graphed_pair()
    for i, steps in enumerate(STEPS + [[(0, tokens(5, 13)), (1, tokens(1, 14))]]):  # last: a prefill chunk > the promise
        batch = sim.batch(steps)
        if i == 2:
            batch.logits_indices = torch.tensor([2, 5])  # logits of a subset only
        got = graphed.forward(batch, None, FEATURE_IDS)  # both runs store the same K/V at the same slots
        want = eager.forward(batch, None, FEATURE_IDS)
        assert got.logits.shape == want.logits.shape and got.features.shape == want.features.shape
        outputs_close(got, want)
    assert (graphed.num_graph_steps, graphed.num_eager_steps) == (5, 0)  # prefill chunks get graphs of their own
    ids = tuple(FEATURE_IDS)
    assert {GraphKey(8, 4, 4, 60, ids), GraphKey(4, 4, 1, 63, ids)} <= set(graphed.graphs)  # verify, decode graphs
    assert any(key.max_query_len > 4 for key in graphed.graphs)  # a chunk's promise


def test_graph_keys_pad_tokens_and_sequences():
    _, _, graphed = graphed_pair(max_query_len=8, sizes=(1, 2, 4, 8, 16, 32))
    key = graphed.graph_key(num_tokens=5, num_seqs=5, max_query_len=1, max_context_len=10, block_table_width=3,
                            layer_ids=None)
    assert (key.num_tokens, key.num_seqs, key.max_query_len, key.layer_ids) == (8, 8, 1, None)
    key = graphed.graph_key(8, 8, 1, 10, 3, [1, 0])  # exactly a size: no dummy sequence needed
    assert (key.num_tokens, key.num_seqs, key.layer_ids) == (8, 8, (1, 0))
    key = graphed.graph_key(24, 3, 8, 10, 3, None)  # 3 verify blocks of 8
    assert (key.num_tokens, key.num_seqs, key.max_query_len) == (32, 4, 8)
    assert graphed.graph_key(33, 4, 8, 10, 3, None) is None  # beyond the ladder
    key = graphed.graph_key(9, 1, 9, 10, 3, None, num_logits=1)  # longer than the promise: a prefill chunk
    assert (key.num_tokens, key.num_seqs, key.max_query_len, key.logits_rows) == (16, 2, 16, 1)
    key = graphed.graph_key(30, 3, 20, 10, 3, None, num_logits=9)  # a chunk beside two verify blocks
    assert (key.num_tokens, key.max_query_len, key.num_logits) == (32, 32, 16)
    assert key.short_query_len == 8  # its verify rows keep the promise: attended apart from the chunk
    assert graphed.graph_key(24, 3, 8, 10, 3, None).short_query_len == 0  # no chunk: one kind of sequence
    assert graphed.static_buffers().batch(key).short_query_len == 8
    graphed.split_mixed = False  # DSPARK_SPLIT_MIXED=0
    assert graphed.graph_key(30, 3, 20, 10, 3, None, num_logits=9).short_query_len == 0
    assert graphed.graph_key(4, 4, 1, 64, 3, None) is None  # past max_model_len
    assert graphed.graph_key(4, 4, 1, 10, 99, None) is None  # wider block table than the buffers


def test_context_bound_buckets_only_split_plans():
    """Few programs -> split-K plan, whose coverage depends on the context: a power-of-two bucket; else the maximum."""
    model = DenseLM.from_hf_model(build_hf("qwen3", seed=4), fused=True)
    target = GraphedDenseTarget(model, 1024, 4, max_model_len=4096, kv=model.new_kv_cache(2, 4))
    assert target.context_bound(1, 1, 300) == 512  # 2 programs on the 4 "SMs" of the CPU stand-in: split
    assert target.context_bound(1, 1, 10) == 256
    assert target.context_bound(1, 1, 5000) == 4095
    assert target.context_bound(8, 1, 300) == 4095  # 16 programs fill them: one split covers everything


def test_enforce_eager_runs_the_model_directly():
    model = DenseLM.from_hf_model(build_hf("qwen3", seed=5))
    sim = PagedSim(model, seed=3)
    target = GraphedDenseTarget(model, sim.kv.num_pages, sim.kv.page_size, enforce_eager=True, kv=sim.kv)
    out = target.forward(sim.batch(STEPS[0]), None, None)
    assert out.features is None and target.num_eager_steps == 1 and not target.graphs


# ------------------------------------------------------------------------------------------------ GPU
def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def cuda_model(dtype: torch.dtype) -> DenseLM:
    torch.manual_seed(0)
    hf = build_hf("qwen3", seed=6, hidden_size=256, intermediate_size=512, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64, vocab_size=512, max_position_embeddings=4096)
    return DenseLM.from_hf_model(hf).to(device="cuda", dtype=dtype)


class GPUSim(PagedSim):
    def __init__(self, model: DenseLM, num_pages: int = 4096, seed: int = 0) -> None:
        super().__init__(model, num_pages=num_pages, seed=seed)
        self.free = [p for p in self.free if p != 0]  # page 0 is the engine's null page

    def batch(self, steps):
        return super().batch(steps).to("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_graph_replay_equals_eager(dtype, monkeypatch):
    """Every captured size, decode and mixed verify lengths, contexts crossing a bucket: replay == eager.

    The replay launches its Triton kernels with programmatic dependent launch (on Hopper); the bit-for-bit
    eager check runs without it (``DSPARK_PDL=0``), so an early read or write before a kernel's wait shows."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = cuda_model(dtype)
    assert model.uses_fused_path()
    sim = GPUSim(model)
    graphed = GraphedDenseTarget(model, sim.kv.num_pages, sim.kv.page_size, max_query_len=8, kv=sim.kv,
                                 sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    eager = DenseTarget(model, sim.kv.num_pages, sim.kv.page_size)
    eager.kv = sim.kv
    gen = torch.Generator().manual_seed(0)
    num_seqs = 24
    lens = torch.randint(1, 300, (num_seqs,), generator=gen).tolist()
    with torch.no_grad():
        for s, n in enumerate(lens):  # prefill (eager: longer than the promise)
            graphed.forward(sim.batch([(s, tokens(n, s))]), None, FEATURE_IDS)
    assert graphed.num_eager_steps + graphed.num_graph_steps == num_seqs  # short prefills get graphs of their own
    prefill_graph_steps = graphed.num_graph_steps
    rounds = [[1] * b for b in (1, 2, 3, 5, 8, 13, 24)]  # decode at many sizes
    rounds += [torch.randint(1, 9, (b,), generator=gen).tolist() for b in (1, 4, 7, 24)]  # mixed verify lengths
    for r, q_lens in enumerate(rounds):
        steps = [(s, tokens(q, 100 + 31 * r + s)) for s, q in enumerate(q_lens)]
        batch = sim.batch(steps)
        contexts = batch.context_lens.tolist()
        batch.max_query_len, batch.max_context_len = max(q_lens), max(contexts)  # host bounds, as the engine knows
        key = graphed.graph_key(batch.num_tokens, batch.num_seqs, max(q_lens), max(contexts),
                                batch.block_tables.shape[1], FEATURE_IDS)
        assert key is not None
        if key not in graphed.graphs:
            graphed.capture(key)  # capturing synchronises; the step itself must not
        snapshot = [(k.clone(), v.clone()) for k, v in zip(sim.kv.k, sim.kv.v)]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            got = graphed.forward(batch, None, FEATURE_IDS)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        got = type(got)(got.logits.clone(), got.features.clone(), got.last_hidden.clone())
        graph_kv = [(k.clone(), v.clone()) for k, v in zip(sim.kv.k, sim.kv.v)]
        entry = graphed.graphs[key]
        for (k, v), (k0, v0) in zip(zip(sim.kv.k, sim.kv.v), snapshot):
            k.copy_(k0)
            v.copy_(v0)
        with torch.no_grad(), monkeypatch.context() as env:
            env.setenv("DSPARK_PDL", "0")
            padded = model(entry.batch, sim.kv, FEATURE_IDS)  # the same padded batch, eagerly: bit for bit
        n, m = batch.num_tokens, batch.logits_indices.shape[0]
        torch.testing.assert_close(got.logits, padded.logits[:m], atol=0, rtol=0)
        torch.testing.assert_close(got.features, padded.features[:n], atol=0, rtol=0)
        for (k, v), (gk, gv) in zip(zip(sim.kv.k, sim.kv.v), graph_kv):
            torch.testing.assert_close(k, gk, atol=0, rtol=0)
            torch.testing.assert_close(v, gv, atol=0, rtol=0)
        for (k, v), (k0, v0) in zip(zip(sim.kv.k, sim.kv.v), snapshot):
            k.copy_(k0)
            v.copy_(v0)
        want = eager.forward(batch, None, FEATURE_IDS)  # unpadded eager step (other GEMM shapes: rounding)
        if dtype == torch.float32:  # features reach |x| ~ 100 here: relative, not absolute, fp32 noise
            for a, b in ((got.logits, want.logits), (got.features, want.features), (got.last_hidden, want.last_hidden)):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        else:
            assert rel_err(got.logits, want.logits) < 2e-2 and rel_err(got.features, want.features) < 2e-2
    assert graphed.num_graph_steps - prefill_graph_steps == len(rounds)
    assert len({k.num_tokens for k in graphed.graphs}) >= 5


@pytest.mark.gpu
def test_gpu_fused_bf16_matches_reference_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = cuda_model(torch.bfloat16)
    ref = DenseLM(model.config, fused=False).to(device="cuda", dtype=torch.bfloat16)
    ref.load_state_dict(model.state_dict())
    from dspark.models import paged_attention

    ref.attention = paged_attention
    sim_a, sim_b = GPUSim(model, seed=1), GPUSim(ref, seed=1)
    for steps in ([(0, tokens(40, 1)), (1, tokens(7, 2))], [(0, tokens(1, 3)), (1, tokens(8, 4))]):
        with torch.no_grad():
            a = model(sim_a.batch(steps), sim_a.kv, FEATURE_IDS)
            b = ref(sim_b.batch(steps), sim_b.kv, FEATURE_IDS)
        assert rel_err(a.logits, b.logits) < 2e-2 and rel_err(a.features, b.features) < 2e-2
