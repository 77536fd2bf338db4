"""The few-row GEMM (`dspark.kernels.skinny_gemm`) == a float64 matmul, and its dispatch `linear` == F.linear.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set here before Triton is
first imported) at small shapes: rows 1..64 (every BLOCK_M), N and K that are not multiples of the
blocks, bias or none, one K split and several (the reduce kernel), float32 and float16; bad shapes
are refused with a ValueError naming them; `linear` on CPU tensors is F.linear exactly. The module is
skipped where Triton is not installed. `-m gpu` checks the tuned dispatch at the 4B shape's GEMMs
(against F.linear), that a call is deterministic and that a CUDA-graph replay equals the eager call
bit for bit, and that a shape first seen inside a capture falls back to F.linear.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from dspark.kernels import skinny_gemm  # noqa: E402
from dspark.kernels.skinny_gemm import Config, candidates, linear, skinny_linear, split_for  # noqa: E402


def reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    y = x.double() @ w.double().T
    return y if b is None else y + b.double()


def operands(m: int, n: int, k: int, dtype: torch.dtype, bias: bool, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    return x, w, b


@pytest.mark.parametrize("m", [1, 7, 16, 17, 40, 64])
@pytest.mark.parametrize("config", [Config(16, 32), Config(32, 64, split=3), Config(16, 16, split=5)])
def test_kernel_matches_float64_matmul(m, config):
    # float16 stands in for bfloat16 here: Triton 3.9's interpreter mis-reads bf16 operands of tl.dot
    # (the bf16 path is checked on the GPU, `-m gpu`)
    for dtype, bias, tol in ((torch.float32, True, 1e-5), (torch.float16, False, 2e-3)):
        x, w, b = operands(m, 50, 150, dtype, bias, seed=m)  # N and K off every block size
        got = skinny_linear(x, w, b, config)
        assert got.shape == (m, 50) and got.dtype == dtype
        want = reference(x, w, b)
        err = (got.double() - want).norm() / want.norm()
        assert err < tol, (m, config, dtype, float(err))


def test_even_k_and_strided_rows():
    x_big, w, b = operands(5, 48, 128, torch.float32, True)
    x = torch.cat([x_big, x_big], dim=1)[:, :128]  # row stride 256, unit stride along K
    got = skinny_linear(x, w, b, Config(16, 64, split=2))
    torch.testing.assert_close(got.double(), reference(x, w, b), rtol=1e-5, atol=1e-5)


def test_last_split_stops_at_k():
    """K = 160 in chunks of 16 over 3 splits: 64 + 64 + 32 columns; the last split must not read past K
    (here NaN padding beyond column 160 of x and W would poison the result)."""
    m, n, k = 5, 24, 160
    x_pad = torch.full((m, k + 64), float("nan"))
    w_pad = torch.full((n, k + 64), float("nan"))
    x, w, _ = operands(m, n, k, torch.float32, False)
    x_pad[:, :k], w_pad[:, :k] = x, w
    got = skinny_linear(x_pad[:, :k], w_pad[:, :k], None, Config(16, 16, split=3))
    torch.testing.assert_close(got.double(), reference(x, w, None), rtol=1e-5, atol=1e-5)


def test_out_argument_and_empty_rows():
    x, w, _ = operands(3, 20, 40, torch.float32, False)
    out = torch.full((3, 20), float("nan"))
    assert skinny_linear(x, w, None, Config(16, 16), out) is out
    torch.testing.assert_close(out.double(), reference(x, w, None), rtol=1e-5, atol=1e-5)
    assert skinny_linear(x[:0], w, None, Config(16, 16)).shape == (0, 20)


def test_bad_shapes_are_refused():
    x, w, b = operands(4, 20, 40, torch.float32, True)
    with pytest.raises(ValueError, match="weight"):
        skinny_linear(x, w[:, :30], None, Config(16, 16))
    with pytest.raises(ValueError, match="at most 64 rows"):
        skinny_linear(torch.randn(65, 40), w, None, Config(16, 16))
    with pytest.raises(ValueError, match="bias"):
        skinny_linear(x, w, b[:5], Config(16, 16))
    with pytest.raises(ValueError, match="unit stride"):
        skinny_linear(x.T.contiguous().T, w, None, Config(16, 16))


def test_split_and_candidates():
    assert split_for(2560, 9728, 16, 256, 264) == 2  # 160 tiles: two splits fill 264 programs
    assert split_for(151936, 2560, 64, 128, 264) == 1
    assert split_for(64, 256, 16, 256, 264) == 1  # never more splits than K chunks
    configs = candidates(2560, 9728, 132)
    assert any(c.split > 1 for c in configs) and any(c.split == 1 for c in configs)
    assert all(c.block_k <= 256 for c in candidates(1000, 256, 132))


def test_linear_on_cpu_is_f_linear():
    x, w, b = operands(4, 20, 40, torch.float32, True)
    assert torch.equal(linear(x, w, b), F.linear(x, w, b))
    assert torch.equal(linear(x.bfloat16(), w.bfloat16()), F.linear(x.bfloat16(), w.bfloat16()))


# ------------------------------------------------------------------------------------------------ GPU
SHAPES_4B = [(6144, 2560), (2560, 4096), (19456, 2560), (2560, 9728), (151936, 2560), (151936, 256)]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 7, 32, 64])
def test_gpu_dispatch_matches_f_linear(m):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for n, k in SHAPES_4B:
        x, w, b = operands(m, n, k, torch.bfloat16, n == 6144, device="cuda", seed=n)
        got = linear(x, w, b)
        again = linear(x, w, b)
        assert torch.equal(got, again)  # deterministic (no atomics)
        want = F.linear(x, w, b).double()
        assert ((got.double() - want).norm() / want.norm()) < 1e-2, (m, n, k)
        config = skinny_gemm._CHOICE[(skinny_gemm.block_m(m), n, k, torch.bfloat16, b is not None, x.device)]
        print(f"rows {m:3d} [{n}, {k}]: {config}")


@pytest.mark.gpu
def test_gpu_graph_replay_equals_eager_and_capture_first_falls_back():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    x, w, _ = operands(7, 2560, 9728, torch.bfloat16, False, device="cuda")
    eager = linear(x, w)  # tunes here
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        linear(x, w)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = linear(x, w)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static, eager)
    x2, w2, _ = operands(3, 1000, 328, torch.bfloat16, False, device="cuda")  # a shape never seen
    graph2 = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph2):
        static2 = linear(x2, w2)
    graph2.replay()
    torch.cuda.synchronize()
    assert skinny_gemm._CHOICE[(16, 1000, 328, torch.bfloat16, False, x2.device)] is None
    assert torch.equal(static2, F.linear(x2, w2))
