"""Tensors <-> the bytes of one cached sample (see `cache_format` for the layout), as pure functions.

`encode_sample` turns one sample's tensors into the five field byte strings in shard order;
`decode_sample` reads them back from a shard buffer given its `IndexRecord`, always returning float
tensors (the compact format is dequantised; its final hidden state is zero at rows it did not keep,
and `last_hidden_mask` says which rows are real). Sanity checks on the way in and out turn corrupt
bytes into a `DataError` that names the shard and the sample.
"""

from __future__ import annotations

import numpy as np
import torch

from dspark.errors import DataError
from dspark.train.cache_format import COMPACT_DTYPE, FIELDS, STANDARD_DTYPE, IndexRecord, field_nbytes

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_FP8_TORCH = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2, COMPACT_DTYPE: torch.float8_e4m3fn}


def last_hidden_rows(loss_mask: np.ndarray) -> np.ndarray:
    """Rows whose final hidden state a loss can use: `loss_mask[t] or loss_mask[t+1]` -> `[S]` bool."""
    mask = np.asarray(loss_mask).astype(bool)
    following = np.zeros_like(mask)
    following[:-1] = mask[1:]
    return mask | following


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[R, d]` floats -> (`[R, d]` float8_e4m3fn, `[R]` float32 scales) on the CPU, `x ≈ q · scale`.

    The arithmetic runs on `x`'s device (the GPU during a build); only the packed result moves.
    """
    x = x.detach().float()
    amax = x.abs().amax(dim=-1)  # [R]
    scales = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (x / scales[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q.cpu(), scales.cpu()


def dequantize_rows(q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize_rows`: `[R, d]` fp8 and `[R]` scales -> `[R, d]` float32."""
    return q.to(torch.float32) * scales[:, None]


def _bf16_bytes(x: torch.Tensor) -> bytes:
    return x.detach().to(torch.bfloat16).cpu().contiguous().view(torch.uint16).numpy().tobytes()


def _fp8_bytes(q: torch.Tensor, scales: torch.Tensor) -> bytes:
    return q.contiguous().view(torch.uint8).numpy().tobytes() + scales.to(torch.float32).numpy().tobytes()


def encode_sample(hidden_dtype: str, input_ids: torch.Tensor, loss_mask: torch.Tensor,
                  context_features: torch.Tensor, last_hidden: torch.Tensor, num_layers: int) -> list[bytes]:
    """Bytes of the five fields of one sample, in `FIELDS` order.

    input_ids `[S]`, loss_mask `[S]` (CPU), context_features `[S, n·d]`, last_hidden `[S, d]` (any device).
    """
    seq_len = int(input_ids.shape[0])
    hidden_size = int(last_hidden.shape[-1])
    if context_features.shape != (seq_len, num_layers * hidden_size) or last_hidden.shape != (seq_len, hidden_size):
        raise DataError(f"feature shapes {tuple(context_features.shape)} / {tuple(last_hidden.shape)} do not match "
                        f"seq_len {seq_len}, {num_layers} layers of width {hidden_size}")
    if not (torch.isfinite(context_features).all() and torch.isfinite(last_hidden).all()):
        raise DataError("the target produced non-finite hidden states; refusing to cache them")
    mask_np = loss_mask.detach().cpu().numpy().astype(np.uint8)
    head = [input_ids.detach().cpu().numpy().astype("<i4").tobytes(), np.ones(seq_len, np.uint8).tobytes(),
            mask_np.tobytes()]
    if hidden_dtype == STANDARD_DTYPE:
        return head + [_bf16_bytes(context_features), _bf16_bytes(last_hidden)]
    if hidden_dtype != COMPACT_DTYPE:
        raise DataError(f"cannot write hidden_dtype {hidden_dtype!r}")
    feats = context_features.detach().reshape(seq_len * num_layers, hidden_size)  # one row per (token, layer)
    keep = torch.from_numpy(last_hidden_rows(mask_np)).to(last_hidden.device)
    return head + [_fp8_bytes(*quantize_rows(feats)), _fp8_bytes(*quantize_rows(last_hidden.detach()[keep]))]


def _array(buffer: memoryview, offset: int, nbytes: int, dtype: str, shard_size: int, where: str) -> np.ndarray:
    if offset + nbytes > shard_size:
        raise DataError(f"{where}: field runs past the end of the shard (offset {offset} + {nbytes} bytes > "
                        f"{shard_size}); the shard is truncated or the index is corrupt")
    return np.frombuffer(buffer, dtype=dtype, count=nbytes // np.dtype(dtype).itemsize, offset=offset).copy()


def decode_sample(buffer: memoryview, record: IndexRecord, hidden_dtype: str, hidden_size: int, num_layers: int,
                  where: str, out_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Read one sample from a shard buffer -> float tensors (see module docstring)."""
    seq_len, size = record.seq_len, len(buffer)
    if seq_len <= 0:
        raise DataError(f"{where}: index record has seq_len {seq_len}")
    off = dict(zip(FIELDS, record.offsets))
    nbytes = field_nbytes(hidden_dtype, seq_len, hidden_size, num_layers)
    ids = _array(buffer, off["input_ids"], nbytes["input_ids"], "<i4", size, where)
    attention = _array(buffer, off["attention_mask"], seq_len, "u1", size, where)
    loss = _array(buffer, off["loss_mask"], seq_len, "u1", size, where)
    if ids.min() < 0 or loss.max() > 1 or attention.max() > 1:
        raise DataError(f"{where}: token ids or masks hold impossible values; the shard is corrupt")
    feat_shape, width = (seq_len, num_layers * hidden_size), num_layers * hidden_size
    last_mask = np.ones(seq_len, dtype=bool)
    if hidden_dtype == STANDARD_DTYPE:
        feats = torch.from_numpy(_array(buffer, off["target_hidden_states"], nbytes["target_hidden_states"], "<u2",
                                        size, where)).view(torch.bfloat16).reshape(feat_shape)
        last = torch.from_numpy(_array(buffer, off["target_last_hidden_states"], nbytes["target_last_hidden_states"],
                                       "<u2", size, where)).view(torch.bfloat16).reshape(seq_len, hidden_size)
    elif hidden_dtype == COMPACT_DTYPE:
        rows = seq_len * num_layers
        raw = _array(buffer, off["target_hidden_states"], nbytes["target_hidden_states"], "u1", size, where)
        feats = _dequantize_bytes(raw, rows, hidden_size).reshape(feat_shape)
        last_mask = last_hidden_rows(loss)
        kept = int(last_mask.sum())
        raw = _array(buffer, off["target_last_hidden_states"], kept * (hidden_size + 4), "u1", size, where)
        last = torch.zeros(seq_len, hidden_size)
        last[torch.from_numpy(last_mask)] = _dequantize_bytes(raw, kept, hidden_size)
    else:  # DeepSpec's plain fp8 casts
        fp8 = _FP8_TORCH[hidden_dtype]
        feats = torch.from_numpy(_array(buffer, off["target_hidden_states"], seq_len * width, "u1", size, where)
                                 ).view(fp8).reshape(feat_shape)
        last = torch.from_numpy(_array(buffer, off["target_last_hidden_states"], seq_len * hidden_size, "u1", size,
                                       where)).view(fp8).reshape(seq_len, hidden_size)
    return {
        "input_ids": torch.from_numpy(ids.astype(np.int64)),  # [S] long
        "loss_mask": torch.from_numpy(loss.astype(np.int64)),  # [S] long 0/1
        "attention_mask": torch.from_numpy(attention.astype(np.int64)),  # [S] long 0/1
        "context_features": feats.to(out_dtype),  # [S, n·d]
        "last_hidden": last.to(out_dtype),  # [S, d]
        "last_hidden_mask": torch.from_numpy(last_mask),  # [S] bool, rows of last_hidden that are real
    }


def _dequantize_bytes(raw: np.ndarray, rows: int, width: int) -> torch.Tensor:
    """`rows·width` fp8 bytes followed by `rows` float32 scales -> `[rows, width]` float32."""
    q = torch.from_numpy(raw[: rows * width].copy()).view(torch.float8_e4m3fn).reshape(rows, width)
    scales = torch.from_numpy(raw[rows * width:].copy().view("<f4"))
    return dequantize_rows(q, scales)
