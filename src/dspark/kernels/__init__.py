"""Triton kernels for the fast GPU runner: KV stores, paged attention over the engine's block tables, and the
drafter's block attention (paged context plus the block's own K/V). Imported on demand by their callers:
the few-row GEMM (`skinny_gemm`), the fused sampling kernels (`sampling_triton`) and the Markov head's
slot loop (`markov_sampling`).

Triton is optional (the ``[gpu]`` extra): without it this package imports, ``HAS_TRITON`` is False and
the names below are absent, so callers fall back to the plain PyTorch path
(`dspark.models.paged_attention`, `PagedKVCache.write`). On the CPU the kernels run only under
Triton's interpreter (``TRITON_INTERPRET=1`` set before the first import), which the tests use.
On Hopper GPUs every kernel of a small step is launched with programmatic dependent launch
(`dspark.kernels.pdl`: the next kernel starts while the previous one drains; ``DSPARK_PDL=0`` turns it off).
"""

from __future__ import annotations

try:
    import triton  # noqa: F401
except ImportError:  # CPU-only installs
    HAS_TRITON = False
else:
    HAS_TRITON = True
    from dspark.kernels.block_attention import block_attention
    from dspark.kernels.paged_attention import (AttentionPlan, paged_attention, paged_attention_with_plan,
                                                paged_decode_attention, paged_extend_attention, paged_mixed_attention,
                                                plan_attention)
    from dspark.kernels.store_kv import store_kv

__all__ = ["HAS_TRITON", "AttentionPlan", "block_attention", "paged_attention", "paged_attention_with_plan",
           "paged_decode_attention", "paged_extend_attention", "paged_mixed_attention", "plan_attention", "store_kv"]
