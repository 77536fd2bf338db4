"""The skinny GEMM with SiLU·up as prologue and reduce + residual add + RMSNorm as epilogue
(`dspark.kernels.skinny_fused`) == the unfused kernels, bit for bit, on the same configuration.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before Triton's first import)
at small shapes: one K split (the GEMM writes y, then `add_rms_norm`) and several (one epilogue kernel), N and
K off the block sizes, bias or none, float32 and float16, gated or not; a gated x of the wrong width is
refused; on CPU tensors the dispatchers are the plain chain. Skipped where Triton is not installed. `-m gpu`:
the tuned dispatch at the 4B shape's o_proj and down projection equals the unfused chain in bf16.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from dspark.kernels.skinny_fused import linear_add_rms_norm, linear_silu, skinny_add_rms_norm  # noqa: E402
from dspark.kernels.skinny_gemm import Config, linear, skinny_linear  # noqa: E402
from dspark.models.fused_ops import add_rms_norm, silu_mul  # noqa: E402


def operands(m: int, n: int, k: int, dtype: torch.dtype, bias: bool, gated: bool, device: str = "cpu", seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 2 * k if gated else k, generator=g).to(device, dtype)
    w = (torch.randn(n, k, generator=g) / k ** 0.5).to(device, dtype)
    b = torch.randn(n, generator=g).to(device, dtype) if bias else None
    residual = torch.randn(m, n, generator=g).to(device, dtype)
    norm_w = (1 + 0.1 * torch.randn(n, generator=g)).to(device, dtype)
    return x, w, b, residual, norm_w


CASES = [(torch.float32, True), (torch.float16, False)]  # fp16 stands in for bf16 (the interpreter's tl.dot)


@pytest.mark.parametrize("m", [1, 7, 19])
@pytest.mark.parametrize("config", [Config(16, 32), Config(32, 64, split=3), Config(16, 16, split=5)])
def test_gated_gemm_equals_silu_mul_then_gemm(m, config):
    for dtype, bias in CASES:
        x, w, b, _, _ = operands(m, 50, 150, dtype, bias, gated=True, seed=m)
        got = skinny_linear(x, w, b, config, gated=True)
        torch.testing.assert_close(got, skinny_linear(silu_mul(x), w, b, config), atol=0, rtol=0)


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("config", [Config(16, 32), Config(32, 64, split=3), Config(16, 16, split=5)])
def test_epilogue_equals_gemm_then_add_rms_norm(gated, config):
    for dtype, bias in CASES:
        for m in (1, 6, 17):
            x, w, b, residual, norm_w = operands(m, 50, 150, dtype, bias, gated, seed=m)
            got_res, got = skinny_add_rms_norm(x, w, b, residual, norm_w, 1e-6, config, gated)
            y = skinny_linear(x, w, b, config, gated=gated)
            want_res, want = add_rms_norm(y, residual, norm_w, 1e-6)
            torch.testing.assert_close(got_res, want_res, atol=0, rtol=0)
            torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_bad_gated_width_is_refused():
    x, w, b, residual, norm_w = operands(3, 20, 40, torch.float32, False, gated=False)
    with pytest.raises(ValueError, match="2K"):
        skinny_linear(x, w, b, Config(16, 16), gated=True)
    with pytest.raises(ValueError, match="2K"):
        skinny_add_rms_norm(x, w, b, residual, norm_w, 1e-6, Config(16, 16, split=2), gated=True)


def test_cpu_tensors_take_the_plain_chain():
    x, w, b, residual, norm_w = operands(4, 24, 32, torch.float32, True, gated=True)
    torch.testing.assert_close(linear_silu(x, w, b), linear(silu_mul(x), w, b), atol=0, rtol=0)
    got = linear_add_rms_norm(x, w, b, residual, norm_w, 1e-5, gated=True)
    want = add_rms_norm(linear(silu_mul(x), w, b), residual, norm_w, 1e-5)
    for a, c in zip(got, want):
        torch.testing.assert_close(a, c, atol=0, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 7, 16])
def test_gpu_dispatch_equals_unfused_chain(rows):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for n, k, gated in ((2560, 4096, False), (2560, 9728, True)):  # the 4B shape's o_proj and down projection
        x, w, b, residual, norm_w = operands(rows, n, k, torch.bfloat16, False, gated, device="cuda", seed=rows)
        got = linear_add_rms_norm(x, w, b, residual, norm_w, 1e-6, gated)
        y = linear_silu(x, w, b) if gated else linear(x, w, b)
        want = add_rms_norm(y, residual, norm_w, 1e-6)
        for a, c in zip(got, want):
            torch.testing.assert_close(a, c, atol=0, rtol=0)
        plain = add_rms_norm(torch.nn.functional.linear(silu_mul(x) if gated else x, w, b), residual, norm_w, 1e-6)
        err = (got[1].float() - plain[1].float()).norm() / plain[1].float().norm()
        assert err < 1e-2, float(err)
