"""Fused Triton sampling kernels (`dspark.kernels.sampling_triton`) == the PyTorch sampling path.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before Triton is
first imported) at small vocabularies; the module is skipped where Triton is not installed. Checked:
probs against `processed_probs_rows` (rtol 1e-5), greedy rows' one-hot exactly (ties, NaN, -inf),
draws identical to `sample_from` for the same uniforms (random ones, and exact CDF boundaries over
dyadic probabilities whose sums are exact in both), zero-probability tokens never drawn, and the
`RowSampler` dispatch. `-m gpu` repeats the comparisons on CUDA at V = 151,936, adds a χ² test of the
draws and a CUDA-graph capture without host synchronisation, and counts the kernels per drafted slot.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from stats import chi_square_pvalue  # noqa: E402

from dspark.engine import row_sampler  # noqa: E402
from dspark.engine.row_sampler import RowSampler, sampling_kernels  # noqa: E402
from dspark.kernels import sampling_triton  # noqa: E402
from dspark.kernels.sampling_triton import inverse_cdf, processed_probs  # noqa: E402
from dspark.sampling import RowParams, SamplingParams, processed_probs_rows, sample_from  # noqa: E402

QWEN_VOCAB = 151_936
TEMPS = [0.7, 1.0, 1.7, 0.3, 0.0]  # the last row greedy


def row_params(temps: list[float], device: str = "cpu", **kw) -> RowParams:
    return RowParams.from_list([SamplingParams(t, **kw) for t in temps], device)


def random_logits(rows: int, vocab: int, dtype: torch.dtype, device: str = "cpu", seed: int = 0) -> torch.Tensor:
    """Logits with a spread like an LM's, a few masked (-inf) tokens, cast to `dtype`."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 4
    logits[0, torch.randperm(vocab, generator=g)[: vocab // 3]] = float("-inf")
    return logits.to(device, dtype)


def check_probs(logits: torch.Tensor, params: RowParams, block: int | None = None) -> torch.Tensor:
    """Kernel probs == `processed_probs_rows`: allclose for sampled rows, exactly for greedy ones."""
    got = processed_probs(logits, params.temperature, params.any_greedy, block=block)
    want = processed_probs_rows(logits, params)
    assert got.dtype == torch.float32 and got.shape == want.shape
    greedy = (params.temperature == 0) & params.any_greedy
    torch.testing.assert_close(got[~greedy], want[~greedy], rtol=1e-5, atol=1e-8)
    assert torch.equal(got[greedy], want[greedy])
    return got


def dyadic_probs(vocab: int, total_log2: int, seed: int = 0) -> torch.Tensor:
    """Probabilities k / 2^total_log2 (k small integers, ~40% zeros) summing to exactly 1.

    Every partial sum is exact in float64 whatever the summation order, so the kernel's blocked scan
    and `sample_from`'s cumsum agree bit for bit and a uniform can sit exactly on a CDF boundary.
    """
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 4, (vocab,), generator=g) * (torch.rand(vocab, generator=g) > 0.4)
    free = (1 << total_log2) - int(counts.sum())
    assert free > 0, "vocabulary too large for 2^total_log2"
    counts[int(torch.randint(0, vocab, (1,), generator=g))] += free
    return counts.double().div(1 << total_log2).float()


def boundary_uniforms(probs: torch.Tensor, num: int, seed: int = 0) -> torch.Tensor:
    """Uniforms on CDF boundaries (many followed by zero-probability tokens), one ulp either side, 0, max."""
    cdf = probs.double().cumsum(0)
    g = torch.Generator().manual_seed(seed)
    at = cdf[torch.randint(0, probs.numel() - 1, (num,), generator=g)]
    at = at[at < 1.0]
    below, above = torch.nextafter(at, torch.zeros_like(at)), torch.nextafter(at, torch.ones_like(at))
    ends = torch.tensor([0.0, 1.0 - 2.0 ** -53, 2.0 ** -53], dtype=torch.float64)
    return torch.cat([at, below, above, ends])


def check_draws(probs: torch.Tensor, uniforms: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """Kernel draws == `sample_from` for the same uniforms, and never a zero-probability token."""
    got = inverse_cdf(probs, uniforms, block=block)
    want = sample_from(probs, uniforms=uniforms)
    assert got.dtype == torch.long and torch.equal(got, want)
    flat = probs.reshape(-1, probs.shape[-1])
    assert bool((flat.gather(1, got.reshape(-1, 1)) > 0).all())
    return got


# ------------------------------------------------------------------------------ interpreter, small V
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab,block", [(1000, 256), (3001, None)])
def test_probs_match_reference(dtype, vocab, block):
    check_probs(random_logits(len(TEMPS), vocab, dtype), row_params(TEMPS), block)


def test_greedy_rows_are_the_exact_one_hot_of_the_first_argmax():
    vocab = 1000
    logits = torch.randn(6, vocab, generator=torch.Generator().manual_seed(1))
    logits[0, [5, 700]] = 50.0  # tie across blocks and lanes: the first wins
    logits[1, [44, 300]] = 50.0  # tie in the same lane of two blocks (300 = 256 + 44)
    logits[2, [999, 998]] = 50.0  # tie in the ragged last block
    logits[3, [100, 900]] = float("nan")  # NaN is the largest value for torch.argmax
    logits[4] = float("-inf")  # nothing finite: index 0
    logits[5, 17] = float("inf")
    probs = check_probs(logits.to(torch.bfloat16), row_params([0.0] * 6), block=256)
    assert probs.argmax(-1).tolist() == [5, 44, 998, 100, 0, 17]


def test_temperature_zero_without_greedy_summary_divides_by_one():
    """`any_greedy=False` (no greedy row promised): temperature 0 falls back to T = 1 like the torch path."""
    logits = random_logits(2, 700, torch.float32, seed=2)
    params = RowParams(torch.tensor([0.0, 0.5]), torch.zeros(2, dtype=torch.long), torch.ones(2), 0, False, False)
    check_probs(logits, params, block=256)


def test_probs_with_several_positions_per_row():
    """[R·k, V] rows over R temperatures (row n uses temperature n // k) == the torch path's `repeat(k)`."""
    params, k = row_params([0.5, 0.0, 1.3]), 4
    logits = random_logits(3 * k, 900, torch.bfloat16, seed=3)
    got = processed_probs(logits, params.temperature, block=256)
    want = processed_probs_rows(logits, params.repeat(k))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError):
        processed_probs(logits[:5], params.temperature)


def test_draws_match_sample_from():
    vocab, g = 1000, torch.Generator().manual_seed(4)
    probs = processed_probs_rows(random_logits(5, vocab, torch.float32, seed=4), row_params(TEMPS))  # row 4 one-hot
    probs = torch.cat([probs, probs[:2] * 0.37])  # rows whose mass is not 1
    probs[1, torch.randperm(vocab, generator=g)[:300]] = 0.0
    uniforms = torch.rand(probs.shape[0], 8, generator=g, dtype=torch.float64)
    uniforms[:, 0], uniforms[:, 1] = 0.0, 1.0 - 2.0 ** -53
    rows = probs.unsqueeze(1).expand(-1, 8, -1)  # [R, 8, V], rows of stride 0
    ids = check_draws(rows, uniforms, block=256)
    assert (ids[4] == probs[4].argmax()).all()  # greedy rows: the argmax, whatever the uniform
    check_draws(probs, uniforms[:, 2])  # one block covering the row, strided uniforms


@pytest.mark.parametrize("total_log2,block", [(12, 256), (13, None)])
def test_draws_at_exact_cdf_boundaries(total_log2, block):
    """Dyadic probs (exact sums): u on a boundary draws the next token of positive mass, u - 1ulp this one."""
    probs = dyadic_probs(1000, total_log2)
    if total_log2 == 13:  # mass 1/2: the scaled uniform u·total stays exact
        probs = probs / 2
    uniforms = boundary_uniforms(probs, 40)
    ids = check_draws(probs.expand(uniforms.numel(), -1), uniforms, block=block)
    assert bool((probs[ids] > 0).all())


def test_empty_batch_and_argument_checks():
    assert inverse_cdf(torch.zeros(0, 3, 50), torch.zeros(0, 3, dtype=torch.float64)).shape == (0, 3)
    assert processed_probs(torch.zeros(0, 50), torch.zeros(0)).shape == (0, 50)
    with pytest.raises(ValueError):
        inverse_cdf(torch.full((2, 50), 0.02), torch.zeros(3, dtype=torch.float64))


def test_draws_follow_probs_chi_square():
    """χ² of kernel draws with fresh uniforms against the probs (few draws: the interpreter is slow)."""
    probs = torch.softmax(torch.randn(10, generator=torch.Generator().manual_seed(5)), 0)
    n = 400
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ids = inverse_cdf(probs.expand(n, -1), uniforms)
    assert chi_square_pvalue(torch.bincount(ids, minlength=10), probs) > 1e-4


# ------------------------------------------------------------------------------------------ dispatch
def test_cpu_tensors_keep_the_torch_path():
    assert sampling_kernels(torch.device("cpu")) is None
    assert row_sampler._triton_sampling() is sampling_triton


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """Route CPU tensors to the kernels (interpreter), counting the fused calls."""
    calls = {"probs": 0, "draw": 0}

    class Spy:
        @staticmethod
        def processed_probs(*args, **kwargs):
            calls["probs"] += 1
            return processed_probs(*args, **kwargs)

        @staticmethod
        def inverse_cdf(*args, **kwargs):
            calls["draw"] += 1
            return inverse_cdf(*args, **kwargs)

    monkeypatch.setattr(row_sampler, "sampling_kernels", lambda device: Spy)
    return calls


def make_sampler(params: RowParams, seed: int = 7) -> tuple[RowSampler, torch.Tensor]:
    """A sampler with 3 ready uniforms per row, and its initial counters."""
    rows = params.temperature.numel()
    seeds, counters = torch.arange(rows) + seed, torch.arange(rows) * 1000
    ready = torch.rand(rows, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return RowSampler(params, seeds, counters, ready), counters


def test_row_sampler_uses_the_kernels_for_temperature_only_rows(kernels_on_cpu):
    params = row_params(TEMPS)
    fused, counters = make_sampler(params)
    logits = random_logits(len(TEMPS), 800, torch.bfloat16, seed=8)
    torch.testing.assert_close(fused.probs(logits), processed_probs_rows(logits, params), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(fused.probs(logits.view(len(TEMPS), 2, 400)).view(-1, 400),
                               processed_probs_rows(logits.view(-1, 400), params.repeat(2)), rtol=1e-5, atol=1e-8)
    probs = processed_probs_rows(logits, params)
    reference = RowSampler(params, fused.seeds, counters, fused._ready)
    for step in range(5):  # past the 3 ready uniforms: the counter-based streams take over
        ids = fused.draw(probs)
        u = reference.uniforms(1).reshape(-1)
        assert torch.equal(ids, sample_from(probs, uniforms=u)), step
    assert torch.equal(fused.counters, counters + 5)
    assert kernels_on_cpu == {"probs": 2, "draw": 5}


def test_row_sampler_keeps_torch_for_top_k_and_top_p(kernels_on_cpu):
    logits = random_logits(3, 600, torch.float32, seed=9)
    for kw in ({"top_k": 20}, {"top_p": 0.9}):
        params = row_params([0.8, 0.0, 1.2], **kw)
        fused, _ = make_sampler(params)
        assert torch.equal(fused.probs(logits), processed_probs_rows(logits, params))
    assert kernels_on_cpu["probs"] == 0
    unknown = RowParams(torch.ones(3), torch.zeros(3, dtype=torch.long), torch.ones(3), -1, False, False)
    assert not row_sampler.temperature_only(unknown)  # max_top_k unknown: the general path


def test_row_sampler_counters_advance_as_before():
    """Lazy counters: the same values as adding every draw's count, and the same fallback streams."""
    params = row_params([1.0, 0.5])
    seeds, counters = torch.tensor([3, 4]), torch.tensor([10, 20])
    ready = torch.rand(2, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = RowSampler(params, seeds, counters, ready)
    assert sampler.counters is counters
    assert torch.equal(sampler.uniforms(3), ready[:, :3])
    assert torch.equal(sampler.counters, counters + 3)
    from dspark.counter_rng import counter_uniforms
    assert torch.equal(sampler.uniforms(2), counter_uniforms(seeds, counters + 3, 2))  # 4 ready: not enough
    assert torch.equal(sampler.counters, counters + 5)


# ------------------------------------------------------------------------------------------------ GPU
def needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_qwen_vocab_probs_and_draws(dtype):
    needs_cuda()
    temps = TEMPS * 4  # 20 rows, 4 greedy
    params = row_params(temps, "cuda")
    logits = random_logits(len(temps), QWEN_VOCAB, dtype, "cuda", seed=10)
    logits[4, [17, 150_000]] = logits[4].max() + 1  # a greedy tie 150k tokens apart
    probs = check_probs(logits, params)
    assert probs[4].argmax().item() == 17
    uniforms = torch.rand(len(temps), 64, device="cuda", dtype=torch.float64)
    rows = probs.unsqueeze(1).expand(-1, 64, -1)
    got, want = inverse_cdf(rows, uniforms), sample_from(rows, uniforms=uniforms)
    # torch's CUDA cumsum rounds in another order than the kernel's blocks: a draw may differ only where
    # the scaled uniform sits within float64 rounding of a boundary (none expected among 1,280 draws)
    differ = got != want
    if bool(differ.any()):
        cdf = probs.double().cumsum(-1)
        scaled = uniforms * cdf[:, -1:]
        gap = (cdf.gather(1, torch.minimum(got, want)) - scaled).abs()
        assert bool((gap[differ] < 1e-12).all()), "draws differ away from a CDF boundary"
    assert int(differ.sum()) <= 2
    assert bool((probs.unsqueeze(1).expand(-1, 64, -1).gather(2, got.unsqueeze(-1)) > 0).all())


@pytest.mark.gpu
def test_gpu_exact_boundaries_at_qwen_vocab():
    needs_cuda()
    probs = dyadic_probs(QWEN_VOCAB, 19).cuda()
    uniforms = boundary_uniforms(probs.cpu(), 500).cuda()
    check_draws(probs.expand(uniforms.numel(), -1), uniforms)


@pytest.mark.gpu
def test_gpu_draws_follow_probs_chi_square():
    needs_cuda()
    logits = (torch.randn(1, QWEN_VOCAB, generator=torch.Generator().manual_seed(11)) * 3).to("cuda", torch.bfloat16)
    probs = processed_probs(logits, torch.tensor([0.8], device="cuda"))[0]
    n = 200_000
    ids = inverse_cdf(probs.expand(n, -1), torch.rand(n, device="cuda", dtype=torch.float64))
    assert chi_square_pvalue(torch.bincount(ids, minlength=QWEN_VOCAB).cpu(), probs.cpu()) > 1e-4


class GpuSlot:
    """One drafted slot's inputs on CUDA (Qwen vocabulary) and the sampling the drafter runs on them."""

    def __init__(self, seed: int) -> None:
        rows = len(TEMPS)
        self.params = row_params(TEMPS, "cuda")
        self.logits = random_logits(rows, QWEN_VOCAB, torch.bfloat16, "cuda", seed=seed)
        self.ready = torch.rand(rows, 4, device="cuda", dtype=torch.float64)
        self.seeds = torch.arange(rows, device="cuda")
        self.counters = torch.zeros(rows, dtype=torch.long, device="cuda")

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """RowSampler.probs then draw (the kernels on CUDA)."""
        sampler = RowSampler(self.params, self.seeds, self.counters, self.ready)
        probs = sampler.probs(self.logits)
        return probs, sampler.draw(probs)

    def torch_path(self) -> tuple[torch.Tensor, torch.Tensor]:
        probs = processed_probs_rows(self.logits, self.params)
        return probs, sample_from(probs, uniforms=self.ready[:, 0])


@pytest.mark.gpu
def test_gpu_graph_capture_without_host_sync():
    """A drafted slot's sampling (RowSampler.probs + draw) captures; replay with new inputs == eager."""
    needs_cuda()
    slot = GpuSlot(seed=12)
    eager = slot.fused()  # compile outside the capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = slot.fused()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    slot.logits.copy_(random_logits(len(TEMPS), QWEN_VOCAB, torch.bfloat16, "cuda", seed=13))
    slot.ready.copy_(torch.rand_like(slot.ready))
    graph.replay()
    fresh = slot.fused()
    assert not torch.equal(fresh[0], eager[0])
    assert torch.equal(captured[0], fresh[0]) and torch.equal(captured[1], fresh[1])


@pytest.mark.gpu
def test_gpu_kernels_per_drafted_slot():
    """The fused slot is 2 kernel launches; the PyTorch path it replaces is many more."""
    needs_cuda()
    from torch.profiler import ProfilerActivity, profile

    slot = GpuSlot(seed=14)

    def kernels(run) -> int:
        run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)

    fused, reference = kernels(slot.fused), kernels(slot.torch_path)
    print(f"kernels per drafted slot: fused {fused}, torch {reference}")
    assert fused <= 2 < reference
