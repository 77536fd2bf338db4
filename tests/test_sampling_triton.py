"""Fused Triton sampling kernels (`dspark.kernels.sampling_triton`) == the PyTorch sampling path.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before Triton is
first imported) at small vocabularies; the module is skipped where Triton is not installed. Checked:
probs against `processed_probs_rows` (rtol 1e-5), greedy rows' one-hot exactly (ties, NaN, -inf),
draws identical to `sample_from` for the same uniforms (random ones, and exact CDF boundaries over
dyadic probabilities whose sums are exact in both), zero-probability tokens never drawn, and the
`RowSampler` dispatch. Rows are split over several blocks (small `block`s, block counts that are not
powers of two, whole blocks of zero mass or of -inf, rounding that leaves a block's scan short of its
mass) and at V = 151,936 with the default blocks at one row. `-m gpu` repeats the comparisons on CUDA
at V = 151,936 (20 rows and one row), adds a χ² test of the draws and a CUDA-graph capture without host
synchronisation, counts the kernels per drafted slot and times a one-row call.
"""

from __future__ import annotations

import math
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
@pytest.mark.parametrize("vocab,block", [(1000, 256), (3001, None), (1100, 64), (777, 32)])  # 4, 6, 18, 25 blocks
def test_probs_match_reference(dtype, vocab, block):
    check_probs(random_logits(len(TEMPS), vocab, dtype), row_params(TEMPS), block)


def test_block_choice():
    """BLOCK depends on V only; V = 151,936 splits into 149 blocks (one row fills a 132-SM GPU)."""
    assert sampling_triton._block(QWEN_VOCAB, None) == 1024 and -(-QWEN_VOCAB // 1024) == 149
    assert sampling_triton._block(10, None) == 16 and sampling_triton._block(3001, None) == 512
    for vocab in (128_256, 151_936, 262_144):  # large vocabularies: at least 128 blocks a row
        assert -(-vocab // sampling_triton._block(vocab, None)) >= 128
    assert sampling_triton._block(32_000, None) == 512  # smaller ones: blocks of at least 512
    assert sampling_triton._block(1000, 64) == 64
    for bad in (8, 96):
        with pytest.raises(ValueError):
            sampling_triton._block(1000, bad)


def test_probs_with_blocks_of_minus_inf():
    """Softmax rows whose whole blocks (the first, middle ones, the ragged last) are -inf: probs 0 there."""
    vocab, block = 1100, 64  # 18 blocks, the last of 12
    logits = random_logits(3, vocab, torch.float32, seed=20)
    logits[0, :640] = float("-inf")
    logits[1, 64:1000] = float("-inf")
    logits[2, 1088:] = float("-inf")
    logits[2, :64] = float("-inf")
    probs = check_probs(logits, row_params([0.9, 1.0, 0.4]), block)
    assert bool((probs[logits == float("-inf")] == 0).all())


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


def test_greedy_ties_over_many_blocks():
    """The first argmax across 18 blocks of 64 (not a power of two), NaN and -inf in late blocks."""
    vocab = 1100
    logits = torch.randn(9, vocab, generator=torch.Generator().manual_seed(21))
    logits[0, [1099, 70, 1000]] = 50.0  # three blocks tie: the earliest block's index
    logits[1, [63, 64]] = 50.0  # the last lane of block 0 and the first of block 1
    logits[2, 1099] = 50.0  # the very last index
    logits[3, [1090, 200]] = float("nan")  # NaN in the ragged last block and block 3
    logits[3, 5] = float("inf")  # NaN still beats +inf
    logits[4, :1088] = float("-inf")  # only the ragged last block is finite
    logits[5] = float("-inf")
    logits[5, 1099] = float("nan")
    logits[6, :] = 3.0  # all equal: index 0
    logits[7, [640, 641]] = float("inf")
    logits[8] = float("-inf")  # nothing finite over many blocks: index 0
    probs = check_probs(logits, row_params([0.0] * 9), block=64)
    assert probs.argmax(-1).tolist() == [70, 63, 1099, 200, int(logits[4].argmax()), 1099, 0, 640, 0]
    mixed = row_params([0.0, 0.8, 0.0, 1.2, 0.0, 0.7, 0.0, 1.0, 0.0])  # greedy and sampled rows together
    check_probs(torch.where(logits.isnan(), 1.0, logits.clamp(-30, 30)), mixed, block=64)


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


def dyadic_with_empty_blocks(vocab: int, block: int, total_log2: int, seed: int) -> torch.Tensor:
    """`dyadic_probs` with whole blocks of zero mass (the first, runs in the middle, the ragged last)."""
    probs = dyadic_probs(vocab, total_log2, seed).double()
    nb = -(-vocab // block)
    empty = [0, 2, 3, 4, nb // 2, nb - 1]
    for b in empty:
        probs[b * block:(b + 1) * block] = 0.0
    keep = [b for b in range(nb) if b not in empty]
    probs[keep[len(keep) // 2] * block] += 1.0 - probs.sum()  # exact: all terms are multiples of 2^-total_log2
    assert probs.sum() == 1.0
    return probs.float()


@pytest.mark.parametrize("vocab,block", [(1000, 64), (1100, 64), (777, 32)])  # 16, 18, 25 blocks
def test_draws_over_many_blocks_at_exact_boundaries(vocab, block):
    """Exact CDF boundaries at every block end (zero-mass blocks after them): draws == `sample_from`."""
    probs = dyadic_with_empty_blocks(vocab, block, 12, seed=vocab)
    cdf = probs.double().cumsum(0)
    ends = cdf[block - 1::block]
    ends = ends[(ends > 0) & (ends < 1)]
    edges = torch.cat([ends, torch.nextafter(ends, torch.zeros_like(ends)),
                       torch.nextafter(ends, torch.ones_like(ends))])
    random = torch.rand(8, generator=torch.Generator().manual_seed(vocab), dtype=torch.float64)
    uniforms = torch.cat([boundary_uniforms(probs, 10, seed=vocab), edges, random])
    ids = check_draws(probs.expand(uniforms.numel(), -1), uniforms, block=block)
    assert bool((probs[ids] > 0).all())


def test_draws_with_zero_rows_and_zero_blocks():
    """All-zero rows clamp to V - 1 (as `sample_from`); mass only in the first / the last block."""
    vocab, block = 900, 64  # 15 blocks
    probs = torch.zeros(4, vocab)
    probs[1, 3] = 0.25  # mass only in block 0
    probs[2, [897, 899]] = 0.5  # mass only in the ragged last block
    probs[3, 448:512] = 1 / 64  # one full block in the middle
    uniforms = torch.tensor([0.0, 0.3, 0.5, 1.0 - 2.0 ** -53], dtype=torch.float64)
    rows = probs.unsqueeze(1).expand(-1, 4, -1)
    u = uniforms.expand(4, -1)
    got = inverse_cdf(rows, u, block=block)
    assert torch.equal(got, sample_from(rows, uniforms=u))
    assert got[0].tolist() == [vocab - 1] * 4 and got[1].tolist() == [3] * 4
    assert got[2].tolist() == [897, 897, 899, 899] and got[3].tolist() == [448, 467, 480, 511]


def test_draws_under_rounding_stay_on_positive_mass():
    """Tiny masses beside a huge one (block sums and in-block scans round differently): every draw has
    positive mass and sits, up to float64 rounding, where the exact CDF puts the scaled uniform."""
    vocab, block = 1000, 64
    g = torch.Generator().manual_seed(22)
    probs = torch.zeros(4, vocab, dtype=torch.float64)
    probs[0, ::3] = 1e-17  # 1 + 1e-17 rounds to 1: a running sum never sees them, a tree sum does
    probs[0, 130] = 1.0
    probs[1, 64:128] = 1.0
    probs[1, 128:] = 3e-17
    probs[1, 500:564] = 0.0  # a zero block among the tiny ones
    probs[2] = torch.rand(vocab, generator=g).pow(8) * (torch.rand(vocab, generator=g) > 0.5)
    probs[3, :64] = 2.0 ** -7
    probs[3, 896] = 1.0  # the last block with mass: its sum passes the in-block running sum, so u near 1
    probs[3, 897:960] = 1e-17  # lands past the block's scan and draws its last token of positive mass
    probs = probs.float()
    uniforms = torch.cat([torch.rand(30, generator=g, dtype=torch.float64),
                          1.0 - torch.logspace(-16, -12, 20, dtype=torch.float64)])
    for r in range(4):
        p = probs[r].double().tolist()
        prefix = [math.fsum(p[:i]) for i in range(vocab + 1)]  # correctly rounded prefixes
        ids = inverse_cdf(probs[r].expand(uniforms.numel(), -1), uniforms, block=block)
        for u, i in zip(uniforms.tolist(), ids.tolist()):
            assert p[i] > 0, (r, u, i)
            target, tol = u * prefix[-1], 1e-14 * prefix[-1]
            assert prefix[i] - tol <= target <= prefix[i + 1] + tol, (r, u, i)


def test_one_row_at_qwen_vocab_default_blocks():
    """One row of V = 151,936 (the drafter at batch 1) with the default 149 blocks of 1,024."""
    logits = random_logits(2, QWEN_VOCAB, torch.bfloat16, seed=23)
    logits[1, [7, 151_000]] = logits[1].max() + 1  # a greedy tie 151k tokens apart
    greedy = check_probs(logits[1:], row_params([0.0]))
    assert greedy.argmax().item() == 7
    # against float64: torch's float32 CPU softmax itself is off by ~2e-5 relative over 151,936 terms
    probs = processed_probs(logits[:1], torch.tensor([0.8]))
    torch.testing.assert_close(probs.double(), torch.softmax(logits[:1].double() / 0.8, -1), rtol=1e-5, atol=1e-10)
    probs[0, 1024:4096] = 0.0  # whole blocks without mass
    uniforms = torch.rand(1, generator=torch.Generator().manual_seed(24), dtype=torch.float64)
    check_draws(probs, uniforms)


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
@pytest.mark.parametrize("temp", [0.7, 0.0])
def test_gpu_one_row_at_qwen_vocab(temp):
    """One row per call (the drafter's γ-step loop at batch 1): 149 blocks over the row, same results."""
    needs_cuda()
    logits = random_logits(1, QWEN_VOCAB, torch.bfloat16, "cuda", seed=15)
    logits[0, [17, 150_000]] = logits[0].max() + 1  # a greedy tie 150k tokens apart
    probs = check_probs(logits, row_params([temp], "cuda"))
    if temp == 0.0:
        assert probs.argmax().item() == 17
    probs[0, 2048:8192] = 0.0  # whole blocks without mass
    for u in torch.rand(32, device="cuda", dtype=torch.float64).tolist() + [0.0, 1.0 - 2.0 ** -53]:
        uniform = torch.tensor([u], device="cuda", dtype=torch.float64)
        got, want = inverse_cdf(probs, uniform), sample_from(probs, uniforms=uniform)
        if not torch.equal(got, want):  # only where the scaled uniform is within rounding of a boundary
            cdf = probs[0].double().cumsum(0)
            assert abs(cdf[min(int(got), int(want))].item() - u * cdf[-1].item()) < 1e-12
        assert probs[0, got].item() > 0


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


def device_kernels(run) -> list[tuple[str, float]]:
    """(name, µs) of every CUDA kernel one call of `run` launches (after a warm-up call)."""
    from torch.profiler import ProfilerActivity, profile

    run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    return [(e.name, e.time_range.elapsed_us()) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.gpu
def test_gpu_kernels_per_drafted_slot():
    """The fused slot is 4 kernel launches (two per stage); the PyTorch path it replaces is many more."""
    needs_cuda()
    slot = GpuSlot(seed=14)
    fused, reference = len(device_kernels(slot.fused)), len(device_kernels(slot.torch_path))
    print(f"kernels per drafted slot: fused {fused}, torch {reference}")
    assert fused <= 4 < reference


@pytest.mark.gpu
def test_gpu_one_row_call_is_parallel_over_the_vocabulary():
    """At one row the work is four kernels whose grids spread the row over the GPU (their times are printed
    for the log, never asserted: a test does not assert timings; the benchmarks measure them)."""
    needs_cuda()
    logits = random_logits(1, QWEN_VOCAB, torch.bfloat16, "cuda", seed=16)
    temperature = torch.tensor([0.8], device="cuda")
    probs = processed_probs(logits, temperature)
    uniform = torch.rand(1, device="cuda", dtype=torch.float64)
    times = device_kernels(lambda: processed_probs(logits, temperature))
    times += device_kernels(lambda: inverse_cdf(probs, uniform))
    print("one-row kernels (µs):", [(name, round(us, 1)) for name, us in times])
    assert len(times) == 4
