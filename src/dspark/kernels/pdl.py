"""Programmatic dependent launch (PDL, Hopper and newer): a kernel starts while the one before it drains.

Why: a batch-1 decode step is ~350 small kernels in a CUDA graph, and each kernel boundary costs a few
microseconds (the next kernel's launch, its first memory latency, the previous kernel's tail on idle
SMs): ~0.65 ms of a 3.2 ms 4B-shape step (`docs/benchmarks/engine.md`, session 10). With PDL the next
kernel's programs become resident as soon as every program of the current one has started; they run
their prologue (the skinny GEMM streams its first weight tile, which no kernel writes) and then wait in
`wait_inputs` until the previous grid has finished and its writes are visible.

The contract every kernel launched with ``launch_pdl=True`` keeps: no load of anything a previous
kernel may write, and no store at all (the caching allocator may hand it memory a previous kernel is
still reading), before `wait_inputs`. Kernels that do not use PDL (cuBLAS, PyTorch ops) are ordered as
usual; a PDL kernel after one of them simply starts when it ends. Transitively safe: a grid completes
only after its own wait returned, so waiting on the previous grid also waits on every grid before it.

`use_pdl(device, rows)` is True on CUDA devices of compute capability 9.0 and up for launches over at most
`MAX_ROWS` rows (tokens), unless ``DSPARK_PDL=0``; never under Triton's interpreter (which has no
grid-dependency instructions).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

# Measured on one H200 (docs/benchmarks/engine.md, session 11): PDL made 4B-shape steps of 1-8 rows 5-7% faster
# and steps of 32 and 256 rows 2-3% slower, so only small launches use it.
MAX_ROWS = 16


@triton.jit
def wait_inputs(USE_PDL: tl.constexpr):
    """Block until the previous grid's writes are visible, then let the next grid start launching."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def interpreted() -> bool:
    """Whether Triton kernels run under its CPU interpreter (``TRITON_INTERPRET`` set)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _capable(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def max_rows() -> int:
    """Launches over more rows (tokens) than this run without PDL (``DSPARK_PDL_MAX_ROWS`` overrides)."""
    return int(os.environ.get("DSPARK_PDL_MAX_ROWS", MAX_ROWS))


def use_pdl(device: torch.device, rows: int) -> bool:
    """Whether a kernel over `rows` rows (tokens) on `device` is launched with programmatic dependent launch."""
    if device.type != "cuda" or rows > max_rows() or interpreted() or os.environ.get("DSPARK_PDL", "1") == "0":
        return False
    return _capable(device.index if device.index is not None else torch.cuda.current_device())
