"""Building blocks of every draft network: RMSNorm, rotary embedding, attention over given K/V, MLP.

The draft backbone is our own small Qwen3-style layer (pre-norm, GQA with per-head q/k RMSNorm, rotary,
SiLU-gated MLP), the same whatever the target family. Attention takes keys/values that the caller
assembled (injected context, a cache, the block itself) plus an explicit boolean mask, so one layer
serves teacher-forced training, block scoring and cached inference.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dspark.errors import ConfigError


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Inverse frequencies for default, linear and llama3 rotary scaling."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor, low, high = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        smooth = (old_ctx / wavelen - low) / (high - low)
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        mid = (wavelen <= old_ctx / low) & (wavelen >= old_ctx / high)
        return torch.where(mid, (1 - smooth) * inv_freq / factor + smooth * inv_freq, scaled)
    raise ConfigError(f"rotary scaling {kind!r} is not supported by the draft layers (default, linear, llama3 are)")


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling), persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] -> cos, sin [B, T, 1, D] (broadcast over heads)."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.float()  # [B, T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1).unsqueeze(2)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D] rotated by position."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    """GQA attention with q/k norm. Keys/values are projected by `kv()` and attended by `attend()`."""

    def __init__(self, in_dim: int, hidden: int, heads: int, kv_heads: int, head_dim: int, eps: float, bias: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(in_dim, heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(in_dim, kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(in_dim, kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=bias)
        self.q_norm = RMSNorm(head_dim, eps)
        self.k_norm = RMSNorm(head_dim, eps)

    def q(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return apply_rotary(self.q_norm(self.q_proj(x).view(b, t, self.heads, self.head_dim)), cos, sin)

    def kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, in] -> k, v [B, T, Hkv, D] (k normed and rotated)."""
        b, t, _ = x.shape
        k = apply_rotary(self.k_norm(self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)), cos, sin)
        return k, self.v_proj(x).view(b, t, self.kv_heads, self.head_dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q [B, T, H, D], k/v [B, S, Hkv, D], mask [B, T, S] bool (True = attend) -> [B, T, hidden].

        Grouped-query attention without copying K/V per query head: the `rep` query heads of one K/V
        head are folded into its query axis (rows [B, Hkv, rep·T]), the mask repeated to match.
        """
        b, t = q.shape[:2]
        rep, hkv, d = self.heads // self.kv_heads, self.kv_heads, self.head_dim
        qg = q.view(b, t, hkv, rep, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, rep * t, d)
        m = mask.unsqueeze(1).expand(b, rep, t, mask.shape[-1]).reshape(b, 1, rep * t, mask.shape[-1])
        out = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2), attn_mask=m)  # [B, Hkv, rep·T, D]
        out = out.view(b, hkv, rep, t, d).permute(0, 3, 1, 2, 4)  # [B, T, Hkv, rep, D] = head h at (h // rep, h % rep)
        return self.o_proj(out.reshape(b, t, self.heads * d))


class MLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm layer: h + attn(norm(h)) then + mlp(norm(h)); attention input width may exceed d."""

    def __init__(self, cfg: Any, attn_in_dim: int | None = None) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.self_attn = Attention(attn_in_dim or d, d, cfg.num_attention_heads, cfg.num_key_value_heads,
                                   cfg.head_dim, cfg.rms_norm_eps, cfg.attention_bias)
        self.mlp = MLP(d, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(d, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(d, cfg.rms_norm_eps)

    def attn_block(self, residual: torch.Tensor, attn_in: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                   past_k: torch.Tensor | None, past_v: torch.Tensor | None, mask: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend `attn_in`'s queries over [past ; own] keys; return (new hidden, own k, own v)."""
        q = self.self_attn.q(attn_in, cos, sin)
        k, v = self.self_attn.kv(attn_in, cos, sin)
        keys = k if past_k is None else torch.cat([past_k, k], dim=1)
        values = v if past_v is None else torch.cat([past_v, v], dim=1)
        h = residual + self.self_attn.attend(q, keys, values, mask)
        return h + self.mlp(self.post_attention_layernorm(h)), k, v
