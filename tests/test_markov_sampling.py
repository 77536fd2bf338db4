"""The fused Markov-head slot loop (`dspark.kernels.markov_sampling`) == the drafter's PyTorch loop.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before Triton is first
imported); the module is skipped where Triton is not installed. Checked, slot by slot: the logits and
probs equal the PyTorch path's (``base + W2 W1[prev]``, `processed_probs_rows`) given the same previous
tokens, every draw equals `sample_from` on the kernel's own probs with the same uniform (so the ids of
the whole block equal the loop's), greedy rows the exact one-hot, rows over two row groups, vocabularies
and ranks that are not multiples of the tiles, float32 and bfloat16; the drafter's proposal through a
`RowSampler` equals the unfused loop; a χ² test of the draws; bad input. `-m gpu`: the same at
V = 151,936, rank 256, and CUDA-graph capture.
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
from stats import chi_square_pvalue  # noqa: E402

from dspark.engine import row_sampler  # noqa: E402
from dspark.engine.row_sampler import RowSampler  # noqa: E402
from dspark.kernels import markov_sampling  # noqa: E402
from dspark.kernels.markov_sampling import markov_draft  # noqa: E402
from dspark.sampling import MarkovSampler, RowParams, SamplingParams, processed_probs_rows, sample_from  # noqa: E402

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def inputs(rows: int, gamma: int, vocab: int, rank: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = (torch.randn(rows, gamma, vocab, generator=g) * 3).to(device, dtype)
    w1 = (torch.randn(vocab, rank, generator=g)).to(device, dtype)
    w2 = (torch.randn(vocab, rank, generator=g) / rank ** 0.5).to(device, dtype)
    anchor = torch.randint(0, vocab, (rows,), generator=g).to(device)
    uniforms = torch.rand(rows, gamma, generator=g, dtype=torch.float64).to(device)
    return base, anchor, w1, w2, uniforms


def check_against_loop(base, anchor, w1, w2, temps, uniforms, block=None, config=None):
    """Slot by slot, teacher-forced on the kernel's own previous ids: logits/probs == the PyTorch path's,
    and each draw == `sample_from` on the kernel's probs with that slot's uniform."""
    params = RowParams.from_list([SamplingParams(t) for t in temps], base.device)
    ids, probs = markov_draft(base, anchor, w1, w2, params.temperature, params.any_greedy, uniforms, block=block,
                              config=config)
    prev = anchor
    greedy = params.temperature == 0
    for k in range(base.shape[1]):
        logits = base[:, k] + F.linear(F.embedding(prev, w1), w2)  # the drafter's MarkovHead.step
        want = processed_probs_rows(logits, params)
        torch.testing.assert_close(probs[~greedy, k], want[~greedy], rtol=TOL[base.dtype], atol=1e-6)
        if greedy.any():
            # bf16: a summation-order ulp can move a near-tie; the kernel's one-hot is on its own argmax
            assert torch.equal(probs[greedy, k].sum(-1), torch.ones(int(greedy.sum()), device=base.device))
            if base.dtype == torch.float32:
                assert torch.equal(probs[greedy, k], want[greedy])
        assert torch.equal(ids[:, k], sample_from(probs[:, k], uniforms=uniforms[:, k]))
        prev = ids[:, k]
    return ids, probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,vocab,rank,block", [(3, 700, 24, 128), (1, 256, 16, 64), (18, 333, 40, 128)])
def test_slots_match_the_pytorch_loop(dtype, rows, vocab, rank, block):
    base, anchor, w1, w2, u = inputs(rows, 4, vocab, rank, dtype, seed=rows)
    temps = ([0.7, 1.0, 0.0, 1.6] * 5)[:rows]
    check_against_loop(base, anchor, w1, w2, temps, u, block=block)


@pytest.mark.parametrize("config", ["128,16,4,1", "256,32,8,3", "64,64,4,2"])
def test_every_launch_config_keeps_the_semantics(config, monkeypatch):
    base, anchor, w1, w2, u = inputs(5, 3, 500, 32, torch.bfloat16, seed=8)
    monkeypatch.setenv("DSPARK_MARKOV_CONFIG", config)
    assert str(markov_sampling.default_config()) == config
    check_against_loop(base, anchor, w1, w2, [1.0, 0.0, 0.5, 1.3, 0.0], u)


def test_launch_config_parsing():
    assert markov_sampling.Config.parse("512,64,8,3") == markov_sampling.Config(512, 64, 8, 3)
    for bad in ("256,64,4", "256,48,4,2", "32,64,4,2", "a,b,c,d", "256,8,4,2"):
        with pytest.raises(ValueError, match="markov config"):
            markov_sampling.Config.parse(bad)


def test_greedy_rows_follow_the_argmax_chain_exactly():
    base, anchor, w1, w2, u = inputs(2, 5, 300, 16, torch.float32, seed=3)
    params = RowParams.from_list([SamplingParams(0.0)] * 2, "cpu")
    ids, probs = markov_draft(base, anchor, w1, w2, params.temperature, True, u, block=128)
    prev = anchor
    for k in range(5):
        logits = base[:, k] + F.linear(F.embedding(prev, w1), w2)
        prev = logits.argmax(-1)
        assert torch.equal(ids[:, k], prev)
        assert torch.equal(probs[:, k], F.one_hot(prev, 300).float())


def test_serpentine_slots_keep_the_first_argmax_and_the_draws(monkeypatch):
    # odd slots stream their W2 tiles last to first (`serpentine`): a tie between two tiles of one program must
    # still go to the smaller index, and the draws must not depend on the order
    base = torch.full((2, 4, 256), -5.0)
    base[:, :, 10] = base[:, :, 100] = 7.0  # tiles 0 and 3 of block 0 (block 128, sub 32)
    w1, w2 = torch.zeros(256, 16), torch.zeros(256, 16)
    u = torch.rand(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    temps = torch.tensor([0.0, 0.0])
    for flag in ("1", "0"):
        monkeypatch.setenv("DSPARK_MARKOV_SERPENTINE", flag)
        ids, probs = markov_draft(base, torch.tensor([3, 4]), w1, w2, temps, True, u, block=128)
        assert torch.equal(ids, torch.full((2, 4), 10)) and torch.equal(probs[:, :, 10], torch.ones(2, 4))
    b, anchor, w1, w2, u = inputs(3, 5, 700, 24, torch.float32, seed=5)
    got = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("DSPARK_MARKOV_SERPENTINE", flag)
        got[flag] = check_against_loop(b, anchor, w1, w2, [1.0, 0.0, 0.6], u, block=256)
    assert torch.equal(got["1"][0], got["0"][0])
    torch.testing.assert_close(got["1"][1], got["0"][1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_one_row_without_tl_dot_matches_the_loop(dtype, monkeypatch):
    # DSPARK_MARKOV_ROWVEC=1: a one-row loop sums float32 products along the rank instead of a 16-row tl.dot
    monkeypatch.setenv("DSPARK_MARKOV_ROWVEC", "1")
    assert markov_sampling.row_vector()
    for temp in (1.0, 0.0):
        base, anchor, w1, w2, u = inputs(1, 5, 700, 40, dtype, seed=11)
        check_against_loop(base, anchor, w1, w2, [temp], u, block=128)


def test_writes_into_the_callers_buffer_and_checks_its_input():
    base, anchor, w1, w2, u = inputs(2, 3, 200, 16, torch.float32, seed=4)
    temp = torch.ones(2)
    out = torch.full((4, 3, 200), -1.0)
    ids, probs = markov_draft(base, anchor, w1, w2, temp, False, u, out=out[:2], block=64)
    assert probs.data_ptr() == out.data_ptr() and torch.all(out[2:] == -1)
    torch.testing.assert_close(out[:2].sum(-1), torch.ones(2, 3, dtype=torch.float32))
    bad = [
        dict(base=base[:, :, :100]),  # vocabulary mismatch with the weights
        dict(w2=w2[:, :8]),  # ranks differ
        dict(anchor=anchor[:1]),
        dict(u=u[:, :2]),
    ]
    for change in bad:
        args = dict(base=base, anchor=anchor, w1=w1, w2=w2, u=u) | change
        with pytest.raises(ValueError, match="markov_draft"):
            markov_draft(args["base"], args["anchor"], args["w1"], args["w2"], temp, False, args["u"])
    with pytest.raises(ValueError, match="block"):
        markov_draft(base, anchor, w1, w2, temp, False, u, block=96)
    with pytest.raises(ValueError, match="out"):
        markov_draft(base, anchor, w1, w2, temp, False, u, out=torch.empty(2, 3, 200, dtype=torch.float64))
    empty_ids, empty_probs = markov_draft(base[:0], anchor[:0], w1, w2, temp[:0], False, u[:0])
    assert empty_ids.shape == (0, 3) and empty_probs.shape == (0, 3, 200)


def test_draws_follow_the_slot_distribution_chi_square():
    """Slot 0 of many rows with one anchor and one base row: the draws' histogram against its probs."""
    rows, vocab = 600, 48
    base, _, w1, w2, _ = inputs(1, 1, vocab, 16, torch.float32, seed=6)
    base = base.expand(rows, 1, vocab).contiguous()
    anchor = torch.full((rows,), 5, dtype=torch.long)
    u = torch.rand(rows, 1, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    ids, probs = markov_draft(base, anchor, w1, w2, torch.ones(rows), False, u, block=64)
    want = processed_probs_rows(base[0, 0] + F.linear(w1[5], w2), RowParams.from_list([SamplingParams(1.0)], "cpu"))
    counts = torch.bincount(ids[:, 0], minlength=vocab).double()
    assert chi_square_pvalue(counts, want.double().reshape(-1)) > 1e-3


@pytest.mark.parametrize("temps", [[1.0, 0.7, 0.0], [0.0, 0.0, 0.0]])
def test_drafter_proposal_through_the_fused_loop_equals_the_plain_loop(qwen3_target, monkeypatch, temps):
    """`DSparkDrafter.draft` with the engine's `RowSampler`: kernels routed to the CPU (interpreter) vs the loop."""
    from test_drafter_fused import _update

    calls = []

    class Spy:
        @staticmethod
        def markov_draft(*args, **kwargs):
            calls.append(tuple(args[0].shape))
            return markov_draft(*args, **kwargs)

    route: dict[str, type | None] = {}
    monkeypatch.setattr(row_sampler, "markov_kernels", lambda device: route["kernels"])
    drafter = tiny_drafter(qwen3_target, "dspark")
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(3))
    update = _update(qwen3_target, ids, drafter.config.target_layer_ids, [11, 8, 3])
    anchor = ids[:, 11]
    params = RowParams.from_list([SamplingParams(t) for t in temps], "cpu")
    out = {}
    for fused in (False, True):
        route["kernels"] = Spy if fused else None
        state = drafter.new_state(3, torch.device("cpu"))
        sampler = RowSampler(params, torch.arange(3) + 5, torch.arange(3) * 100)
        assert isinstance(sampler, MarkovSampler)
        out[fused] = (drafter.propose(state, update, anchor, sampler), sampler.counters)
    (plain, c_p), (fused, c_f) = out[False], out[True]
    assert calls == [(3, drafter.config.block_size, drafter.config.vocab_size)]
    assert torch.equal(fused.draft_ids, plain.draft_ids)
    torch.testing.assert_close(fused.draft_probs, plain.draft_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(fused.confidence, plain.confidence, atol=1e-6, rtol=0)
    assert torch.equal(c_f, c_p)  # the same uniforms consumed


def test_samplers_without_the_fused_loop_keep_the_plain_one(qwen3_target):
    from dspark.sampling import as_sampler

    assert not isinstance(as_sampler(SamplingParams(1.0)), MarkovSampler)
    params = RowParams.from_list([SamplingParams(1.0, top_k=5)], "cpu")
    sampler = RowSampler(params, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))
    base, anchor, w1, w2, _ = inputs(1, 2, 64, 16, torch.float32)
    assert sampler.markov_slots(base, anchor, w1, w2) is None  # CPU tensors: the loop runs


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 4])
def test_gpu_qwen_vocab_rank_256_matches_and_captures(rows):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    base, anchor, w1, w2, u = inputs(rows, 7, 151_936, 256, torch.bfloat16, "cuda", seed=rows)
    temps = [1.0, 0.0, 0.8, 1.0][:rows]
    ids, probs = check_against_loop(base, anchor, w1, w2, temps, u)
    params = RowParams.from_list([SamplingParams(t) for t in temps], "cuda")
    out = torch.empty_like(probs)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_ids, _ = markov_draft(base, anchor, w1, w2, params.temperature, params.any_greedy, u, out=out)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(g_ids, ids) and torch.equal(out, probs)


@pytest.mark.gpu
def test_gpu_three_kernels_per_drafted_slot():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    base, anchor, w1, w2, u = inputs(1, 7, 151_936, 256, torch.bfloat16, "cuda", seed=9)
    temp = torch.ones(1, device="cuda")
    markov_draft(base, anchor, w1, w2, temp, False, u)  # compile first
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        markov_draft(base, anchor, w1, w2, temp, False, u)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    print("markov block kernels (µs):", [(e.name[:30], round(e.time_range.elapsed_us(), 1)) for e in kernels])
    assert len(kernels) == 3 * 7
