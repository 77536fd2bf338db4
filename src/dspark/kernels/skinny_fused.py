"""The skinny GEMM with its neighbours folded in: SiLU·up as the down projection's prologue, and the split-K
reduce, residual add and next RMSNorm as one epilogue kernel.

Why: at batch 1 every kernel boundary costs a few microseconds whatever the kernel does
(`docs/benchmarks/engine.md`); a dense layer ends ``o_proj -> add+RMSNorm`` and ``SiLU·up -> down ->
add+RMSNorm``. Where the skinny kernel runs these GEMMs with several K splits, the kernel that adds the
splits is one program per row anyway, so it also adds the bias and the residual and norms the row:

* `linear_silu(gate_up, w, b)` = ``linear(silu_mul(gate_up), w, b)``: the GEMM's x loads compute
  ``silu(gate) * up`` on the fly (`skinny_gemm._load_x`), no [M, I] intermediate;
* `linear_add_rms_norm(x, w, b, residual, norm_w, eps, gated)` = ``add_rms_norm(linear(x, w, b), residual,
  norm_w, eps)`` -> (new residual, its RMSNorm), ``gated`` taking x as a fused gate/up projection.

Rounding is op by op that of the unfused chain (the GEMM's output is rounded to the model dtype before
the residual add, as storing it would), so the results equal the unfused kernels' bit for bit on the same
configuration. Where the skinny kernel is not used (cuBLAS measured as fast, too many rows, CPU), the
unfused chain runs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from dspark.kernels.pdl import use_pdl, wait_inputs
from dspark.kernels.skinny_gemm import Config, config_for, linear, skinny_linear, skinny_partials
from dspark.models.fused_ops import add_rms_norm, silu_mul


@triton.jit
def _reduce_add_norm_kernel(part_ptr, b_ptr, res_ptr, w_ptr, res_out_ptr, out_ptr, N, SPLIT, stride_ps, stride_pm,
                            stride_res, stride_res_out, stride_out, eps, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                            USE_PDL: tl.constexpr):
    """Row m: y = sum_s part[s, m] (+ b) rounded to the model dtype; r = residual[m] + y; out = RMSNorm(r)."""
    wait_inputs(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    ok = offs < N
    dtype = out_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in range(SPLIT):
        acc += tl.load(part_ptr + s * stride_ps + row * stride_pm + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    y = acc.to(dtype).to(tl.float32)
    x = (tl.load(res_ptr + row * stride_res + offs, mask=ok, other=0.0).to(tl.float32) + y).to(dtype).to(tl.float32)
    tl.store(res_out_ptr + row * stride_res_out + offs, x.to(dtype), mask=ok)
    inv = tl.rsqrt(tl.sum(x * x, 0) / N + eps)
    w = tl.load(w_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_out + offs, (w * (x * inv).to(dtype).to(tl.float32)).to(dtype), mask=ok)


def fused(kind: str) -> bool:
    """Whether fusion `kind` ("silu", "norm") is on: ``DSPARK_SKINNY_FUSE`` lists them (default both; "none")."""
    return kind in os.environ.get("DSPARK_SKINNY_FUSE", "silu,norm").split(",")


def _gemm_x(x: torch.Tensor, weight: torch.Tensor, gated: bool) -> torch.Tensor | None:
    """The [M, K] operand the tuning keys on (the gate half of a gated x), or None where x does not fit."""
    k = weight.shape[-1]
    if x.dim() != 2 or x.shape[-1] != (2 * k if gated else k) or x.stride(-1) != 1:
        return None
    return x[:, :k] if gated else x


def linear_silu(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``linear(silu(gate) * up, weight, bias)`` for gate_up [M, 2K] (gate first), weight [N, K] -> [M, N]."""
    view = _gemm_x(gate_up, weight, gated=True) if fused("silu") else None
    config = None if view is None else config_for(view, weight, bias)
    if config is None:
        return linear(silu_mul(gate_up), weight, bias)
    return skinny_linear(gate_up, weight, bias, config, gated=True)


def linear_add_rms_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                        norm_weight: torch.Tensor, eps: float, gated: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(residual + linear(x, weight, bias), RMSNorm of it) for x [M, K] (gated: gate/up [M, 2K]), residual [M, N]."""
    view = _gemm_x(x, weight, gated) if fused("norm") and (fused("silu") or not gated) else None
    config = None if view is None else config_for(view, weight, bias)
    if config is None or residual.shape != (x.shape[0], weight.shape[0]) or residual.stride(-1) != 1:
        y = linear_silu(x, weight, bias) if gated else linear(x, weight, bias)
        return add_rms_norm(y, residual, norm_weight, eps)
    return skinny_add_rms_norm(x, weight, bias, residual, norm_weight, eps, config, gated)


def skinny_add_rms_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor,
                        norm_weight: torch.Tensor, eps: float, config: Config, gated: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """`linear_add_rms_norm` on the skinny kernel with `config` (several K splits: one epilogue kernel)."""
    m, n = x.shape[0], weight.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y, torch.empty_like(y)
    if gated and x.shape[-1] != 2 * weight.shape[-1]:
        raise ValueError(f"gated: x [M, 2K] expected for weight [N, K], got {tuple(x.shape)}, {tuple(weight.shape)}")
    part = skinny_partials(x, weight, bias, config, y, gated)
    if part is None:  # one K split: the GEMM wrote y itself
        return add_rms_norm(y, residual, norm_weight, eps)
    res_out, out = torch.empty_like(y), torch.empty_like(y)
    block = triton.next_power_of_2(n)
    pdl = use_pdl(x.device, m)
    _reduce_add_norm_kernel[(m,)](part, bias if bias is not None else y, residual, norm_weight, res_out, out, n,
                                  part.shape[0], part.stride(0), part.stride(1), residual.stride(0), res_out.stride(0),
                                  out.stride(0), eps, HAS_BIAS=bias is not None, BLOCK=block, USE_PDL=pdl,
                                  num_warps=min(16, max(1, block // 256)), launch_pdl=pdl)
    return res_out, out
