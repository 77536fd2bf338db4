"""Analytic SPS tables from a roofline model, for capacity planning before any engine has run.

Where it sits: it produces an `SPSTable` (the same object a profiled engine fills) for the scheduler and
for `dspark simulate --roofline`. Real tables from a running engine should replace it when available.

The model (every kernel on its own roofline, kernels run one after another):

* linear layers + LM head over B tokens: ``max(2·P·B_tiled / F, P·bytes_per_param / BW)`` where P counts
  the parameters read per forward (input embeddings excluded: only B rows are gathered) and ``B_tiled``
  rounds B up to a multiple of ``token_tile`` (GEMM tile quantisation, which makes the curve jagged);
* attention: each request reads its KV cache once per forward, however many of its tokens are verified:
  ``R · context_len · kv_bytes_per_token / BW``. Attention FLOPs are ignored: with at most γ+1 query
  tokens per request its arithmetic intensity is a few FLOP/byte, far below a GPU's ridge point;
* a fixed ``overhead_s`` per forward (launch, sampling, scheduling);
* F and BW are the peak figures times ``compute_efficiency`` and ``bandwidth_efficiency``.

The B-dependent part fills the table's verify curve, the target's KV reads its request cost, and the
drafter's own forward (modelled the same way over ``R · draft_slots`` tokens, with its own KV reads and
overhead) its draft cost; `SPSTable.round_time(B, R)` adds them. All numbers are estimates.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling.sps_table import SPSTable


@dataclass(frozen=True)
class Hardware:
    """Peak figures of one accelerator and the fractions of them a real engine reaches."""

    name: str
    bandwidth: float  # bytes/s of HBM
    flops: float  # dense bf16 FLOP/s
    bandwidth_efficiency: float = 0.8
    compute_efficiency: float = 0.6


@dataclass(frozen=True)
class ModelShape:
    """What one forward of a model reads and computes."""

    name: str
    num_params: float  # parameters read per forward (linear layers + LM head)
    num_layers: int  # recorded for reference; the model needs only params and KV bytes
    kv_bytes_per_token: float  # K and V of every layer, per context token
    bytes_per_param: float = 2.0

    @classmethod
    def from_dims(
        cls,
        name: str,
        *,
        hidden: int,
        layers: int,
        heads: int,
        kv_heads: int,
        head_dim: int,
        intermediate: int,
        vocab: int,
        extra_params: float = 0.0,
        kv_bytes: int = 2,
    ) -> ModelShape:
        """Parameter count of Qwen3-style layers (GQA attention + SiLU-gated MLP) plus an LM head."""
        attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2  # q, o + k, v
        mlp = 3 * hidden * intermediate
        params = layers * (attn + mlp) + vocab * hidden + extra_params
        return cls(name, float(params), layers, float(2 * layers * kv_heads * head_dim * kv_bytes))


# Peak numbers measured on the lent H200 (SPEC §6); efficiencies are planning assumptions.
HARDWARE: dict[str, Hardware] = {
    "h200": Hardware("h200", bandwidth=4.3e12, flops=790e12),
}

# Qwen3 dense configurations (public HF config values); shared attention/vocabulary settings in _QWEN3.
_QWEN3 = dict(heads=32, kv_heads=8, head_dim=128, vocab=151936)
_DIMS: dict[str, dict[str, int]] = {
    "qwen3-8b": dict(hidden=4096, layers=36, intermediate=12288),
    "qwen3-4b": dict(hidden=2560, layers=36, intermediate=9728),
}
MODELS: dict[str, ModelShape] = {name: ModelShape.from_dims(name, **dims, **_QWEN3) for name, dims in _DIMS.items()}


def _layer_dims(target: str) -> dict[str, int]:
    if target not in _DIMS:
        raise ConfigError(f"unknown roofline model {target!r}; known: {sorted(_DIMS)}")
    return {k: v for k, v in _DIMS[target].items() if k != "layers"}


def dspark_drafter_shape(target: str, num_layers: int = 5, num_target_features: int = 5, markov_rank: int = 256) -> ModelShape:
    """A DSpark/DFlash drafter for a `MODELS` target: `num_layers` target-width layers, fc, Markov head, LM head."""
    dims = _layer_dims(target)
    extra = num_target_features * dims["hidden"] ** 2 + 2 * _QWEN3["vocab"] * markov_rank  # fc + Markov W1, W2
    return ModelShape.from_dims(f"dspark-{num_layers}L-for-{target}", layers=num_layers, extra_params=extra, **dims, **_QWEN3)


def mtp1_shape(target: str) -> ModelShape:
    """An MTP-1 module for a `MODELS` target: one target-width layer, the 2d->d projection, the LM head."""
    dims = _layer_dims(target)
    return ModelShape.from_dims(f"mtp1-for-{target}", layers=1, extra_params=2 * dims["hidden"] ** 2, **dims, **_QWEN3)


def _linear_time(hw: Hardware, model: ModelShape, tokens: np.ndarray, token_tile: int) -> np.ndarray:
    tiled = np.ceil(tokens / token_tile) * token_tile
    compute = 2.0 * model.num_params * tiled / (hw.flops * hw.compute_efficiency)
    weights = model.num_params * model.bytes_per_param / (hw.bandwidth * hw.bandwidth_efficiency)
    return np.maximum(compute, weights)


def _kv_time(hw: Hardware, model: ModelShape, requests: np.ndarray, context_len: float) -> np.ndarray:
    return requests * context_len * model.kv_bytes_per_token / (hw.bandwidth * hw.bandwidth_efficiency)


def roofline_table(
    hardware: Hardware | str,
    target: ModelShape | str,
    *,
    context_len: int,
    drafter: ModelShape | str | None = None,
    draft_slots: int = 7,
    max_tokens: int = 4096,
    max_requests: int = 1024,
    token_tile: int = 1,
    overhead_s: float = 0.0,
) -> SPSTable:
    """Build an `SPSTable` for `target` on `hardware` at a mean context of `context_len` tokens.

    The verify curve covers every token count 1..`max_tokens` (beyond it the table extrapolates
    linearly); the request cost (target KV reads) and, when `drafter` is given, the draft cost (one
    drafter forward over `R · draft_slots` tokens with its own KV reads) cover 1..`max_requests`.
    `drafter` may be "dspark" or "mtp1" (built for the target by name) or a `ModelShape`.
    `table_from_numbers` is the same builder taking plain numbers.
    """
    hw = HARDWARE.get(hardware) if isinstance(hardware, str) else hardware
    if hw is None:
        raise ConfigError(f"unknown hardware {hardware!r}; known: {sorted(HARDWARE)}")
    model = MODELS.get(target) if isinstance(target, str) else target
    if model is None:
        raise ConfigError(f"unknown roofline model {target!r}; known: {sorted(MODELS)}")
    if isinstance(drafter, str):
        if not isinstance(target, str):
            raise ConfigError("a drafter given by name needs the target given by name")
        builders = {"dspark": dspark_drafter_shape, "mtp1": mtp1_shape}
        if drafter not in builders:
            raise ConfigError(f"unknown drafter {drafter!r}; known: {sorted(builders)}")
        drafter = builders[drafter](target)
        draft_slots = 1 if drafter.name.startswith("mtp1") else draft_slots
    for label, value in (("context_len", context_len), ("max_tokens", max_tokens), ("max_requests", max_requests),
                         ("token_tile", token_tile), ("draft_slots", draft_slots)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"roofline: {label} must be an integer >= 1, got {value!r}")
    if not (math.isfinite(overhead_s) and overhead_s >= 0):
        raise ConfigError(f"roofline: overhead_s must be >= 0, got {overhead_s!r}")

    tokens = np.arange(1, max_tokens + 1, dtype=np.float64)  # [max_tokens]
    verify = _linear_time(hw, model, tokens, token_tile) + overhead_s
    requests = np.arange(1, max_requests + 1, dtype=np.float64)  # [max_requests]
    kv_reads = _kv_time(hw, model, requests, context_len)
    draft = None
    if drafter is not None:
        draft = _linear_time(hw, drafter, requests * draft_slots, token_tile) + _kv_time(hw, drafter, requests, context_len) + overhead_s
    meta = {
        "source": "roofline (analytic estimate, not a measurement)",
        "hardware": asdict(hw),
        "target": asdict(model),
        "drafter": asdict(drafter) if drafter is not None else None,
        "draft_slots": draft_slots,
        "context_len": context_len,
        "token_tile": token_tile,
        "overhead_s": overhead_s,
    }
    req_keys = requests.astype(int).tolist()
    return SPSTable(
        tokens.astype(int).tolist(),
        (1.0 / verify).tolist(),
        None if draft is None else (req_keys, draft.tolist()),
        request_cost=(req_keys, kv_reads.tolist()),
        meta=meta,
    )


def table_from_numbers(*, bandwidth: float, flops: float, num_params: float, num_layers: int, kv_bytes_per_token: float,
                       context_len: int, **kwargs: Any) -> SPSTable:
    """Analytic table from plain numbers (bytes/s, FLOP/s, parameters read per forward, layers, KV bytes
    per context token, mean context); see `roofline_table` for the model and the keyword options
    (efficiencies go in `bandwidth_efficiency` / `compute_efficiency`)."""
    hw_keys = ("bandwidth_efficiency", "compute_efficiency")
    hw = Hardware("custom", bandwidth, flops, **{k: kwargs.pop(k) for k in hw_keys if k in kwargs})
    model = ModelShape("custom", num_params, num_layers, kv_bytes_per_token)
    return roofline_table(hw, model, context_len=context_len, **kwargs)
