"""The DSpark / DFlash drafter's fused inference path: the same math as the plain modules in far fewer kernels.

Where it sits: `DSparkDrafter` runs its proposal (`block_hidden`) and its absorb (`absorb`,
`absorb_flat`) through here on CUDA with Triton (or when forced with ``fused=True``, for interpreter
tests); training and teacher-forced scoring (`score_block`, `context_kv`, `backbone`) stay on the plain
modules of `dspark.drafters.layers`, which remain the reference.

Per draft layer the block (R rows × γ slots, flat N = R·γ) runs: residual add + RMSNorm (one kernel),
one fused QKV GEMM (every GEMM of the block through `dspark.kernels.skinny_gemm.linear`: a
weight-streaming kernel for few rows where it measured faster than cuBLAS), q/k RMSNorm + rotary (one kernel, `fused_ops.qk_norm_rope`), attention over the
paged context plus the block's own K/V (one kernel, `dspark.kernels.block_attention`, no gather and no
mask), o_proj, add + RMSNorm, one fused gate/up GEMM, SiLU·up (one kernel), down_proj. The absorb
projects the context features once (fc, RMSNorm) and then every layer's k/v in ONE GEMM, and writes
each layer's normed, rotated k and its v straight into the pages (`fused_ops.qk_norm_rope_store`).

The fused weights (`FusedWeights`) are concatenated copies of the trained ones (about the size of the
layers' projections again), kept outside the module's state dict (checkpoints are unchanged);
`fused_weights` rebuilds them whenever a source tensor changed (another tensor, or an in-place
update), so eager calls never see stale copies (a captured CUDA graph replays the copies it was
captured with: recapture after changing weights). Nothing here reads the device on the host: the
launch shapes come from tensor shapes and the context's host bound `max_length`, so the path captures
in a CUDA graph. Triton is imported here, so this module loads only on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol

import torch
from torch import nn

from dspark.drafters.base import ContextKV
from dspark.drafters.layers import DecoderLayer, RMSNorm, Rotary
from dspark.kernels.block_attention import block_attention
from dspark.kernels.skinny_gemm import linear
from dspark.models.fused_ops import add_rms_norm, qk_norm_rope, qk_norm_rope_store, silu_mul


class DraftNetwork(Protocol):
    """The parts of `DSparkDrafter` the fused path reads."""

    layers: Iterable[DecoderLayer]
    embed_tokens: nn.Embedding
    fc: nn.Linear
    hidden_norm: RMSNorm
    norm: RMSNorm
    rotary: Rotary


@dataclass(frozen=True)
class FusedLayer:
    qkv: torch.Tensor  # [(H + 2·Hkv)·D, in] = cat(q_proj, k_proj, v_proj)
    qkv_bias: torch.Tensor | None
    gate_up: torch.Tensor  # [2·I, d] = cat(gate_proj, up_proj)


@dataclass(frozen=True)
class FusedWeights:
    layers: tuple[FusedLayer, ...]
    context_kv: torch.Tensor  # [layers · 2·Hkv·D, d]: layer 0's k_proj, v_proj, then layer 1's, ...
    context_kv_bias: torch.Tensor | None
    source: tuple[tuple[int, int, int], ...]  # (id, data_ptr, version) of every tensor copied


def _sources(net: DraftNetwork) -> Iterator[torch.Tensor]:
    for layer in net.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            yield lin.weight
            if lin.bias is not None:
                yield lin.bias


def _source_key(net: DraftNetwork) -> tuple[tuple[int, int, int], ...]:
    return tuple((id(t), t.data_ptr(), t._version) for t in _sources(net))


def _cat(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(t is None for t in tensors) else torch.cat(tensors)


@torch.no_grad()
def build_fused_weights(net: DraftNetwork) -> FusedWeights:
    """Concatenate the trained projections: per layer QKV and gate/up, and every layer's k/v for the absorb."""
    layers = []
    kv_w: list[torch.Tensor] = []
    kv_b: list[torch.Tensor | None] = []
    for layer in net.layers:
        a, m = layer.self_attn, layer.mlp
        layers.append(FusedLayer(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                                 _cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]),
                                 torch.cat([m.gate_proj.weight, m.up_proj.weight])))
        kv_w += [a.k_proj.weight, a.v_proj.weight]
        kv_b += [a.k_proj.bias, a.v_proj.bias]
    return FusedWeights(tuple(layers), torch.cat(kv_w), _cat(kv_b), _source_key(net))


def fused_weights(net: DraftNetwork, cached: FusedWeights | None) -> FusedWeights:
    """`cached` while every source tensor is the same and unmodified, else freshly built."""
    if cached is not None and cached.source == _source_key(net):
        return cached
    return build_fused_weights(net)


def _rows_cos_sin(net: DraftNetwork, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [...] -> cos, sin [N, D] (the reference's rotary tables, flat)."""
    cos, sin = net.rotary(positions.reshape(1, -1), dtype)
    return cos.view(positions.numel(), -1), sin.view(positions.numel(), -1)


def block_hidden(net: DraftNetwork, weights: FusedWeights, block_ids: torch.Tensor, positions: torch.Tensor,
                 kv: ContextKV) -> torch.Tensor:
    """block_ids / positions [R, γ] after each row's cached context `kv` -> final-normed hidden [R, γ, d]."""
    r, g = block_ids.shape
    n = r * g
    h = net.embed_tokens(block_ids).view(n, -1)
    cos, sin = _rows_cos_sin(net, positions, h.dtype)
    rows = torch.arange(n, device=h.device)
    residual, delta = h, None
    for i, (layer, w) in enumerate(zip(net.layers, weights.layers)):
        attn = layer.self_attn
        residual, x = add_rms_norm(delta, residual, layer.input_layernorm.weight, layer.input_layernorm.eps)
        q, k, v = qk_norm_rope(linear(x, w.qkv, w.qkv_bias), cos, sin, attn.q_norm.weight, attn.k_norm.weight,
                               attn.q_norm.eps, attn.heads, attn.kv_heads, attn.head_dim, rows)
        k_cache, v_cache, tables = kv.pages(i)
        out = block_attention(q, k, v, k_cache, v_cache, tables, kv.length, attn.head_dim ** -0.5, kv.max_length)
        norm = layer.post_attention_layernorm
        o = linear(out.view(n, -1), attn.o_proj.weight, attn.o_proj.bias)
        residual, x = add_rms_norm(o, residual, norm.weight, norm.eps)
        down = layer.mlp.down_proj
        delta = linear(silu_mul(linear(x, w.gate_up)), down.weight, down.bias)
    _, last = add_rms_norm(delta, residual, net.norm.weight, net.norm.eps)
    return last.view(r, g, -1)


def _context_kv_rows(net: DraftNetwork, weights: FusedWeights, features: torch.Tensor, positions: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """features [..., n·d] at positions [...] -> (every layer's raw k|v [N, layers·2·Hkv·D], cos, sin [N, D])."""
    x = features.reshape(-1, features.shape[-1]).to(net.fc.weight.dtype)
    _, c = add_rms_norm(None, linear(x, net.fc.weight, net.fc.bias), net.hidden_norm.weight, net.hidden_norm.eps)
    cos, sin = _rows_cos_sin(net, positions, c.dtype)
    return linear(c, weights.context_kv, weights.context_kv_bias), cos, sin


def context_kv(net: DraftNetwork, weights: FusedWeights, features: torch.Tensor, positions: torch.Tensor
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`DSparkDrafter.context_kv` fused: features [B, L, n·d] at positions [B, L] -> per layer (k, v) [B, L, Hkv, D]."""
    b, length = positions.shape
    kv, cos, sin = _context_kv_rows(net, weights, features, positions)
    out = []
    for i, layer in enumerate(net.layers):
        attn = layer.self_attn
        width = 2 * attn.kv_heads * attn.head_dim
        _, k, v = qk_norm_rope(kv[:, i * width:(i + 1) * width], cos, sin, attn.k_norm.weight, attn.k_norm.weight,
                               attn.k_norm.eps, 0, attn.kv_heads, attn.head_dim)
        out.append((k.view(b, length, *k.shape[1:]), v.view(b, length, *v.shape[1:])))
    return out


def absorb_flat(net: DraftNetwork, weights: FusedWeights, k_caches: list[torch.Tensor], v_caches: list[torch.Tensor],
                features: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor) -> None:
    """`DSparkDrafter.absorb_flat` fused: features [N, n·d] at positions [N] -> k, v of every layer at slots [N] (< 0 skipped)."""
    kv, cos, sin = _context_kv_rows(net, weights, features, positions)
    for i, layer in enumerate(net.layers):
        attn = layer.self_attn
        width = 2 * attn.kv_heads * attn.head_dim
        qk_norm_rope_store(kv[:, i * width:(i + 1) * width], cos, sin, attn.k_norm.weight, attn.k_norm.weight,
                           attn.k_norm.eps, 0, attn.kv_heads, attn.head_dim, k_caches[i], v_caches[i], slot_mapping)
