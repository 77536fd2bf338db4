"""`DenseLM`: the engine's own forward for dense Qwen3 / Qwen2 / Llama / Mistral targets over paged KV.

One step runs every token of a `FlatBatch` (prefill chunks, decode tokens and verify blocks of all
requests, back to back) through the decoder: embedding -> L x [RMSNorm -> fused QKV -> (q/k RMSNorm)
-> rotary -> write K/V to the pages -> paged attention -> o_proj -> residual -> RMSNorm -> fused
gate/up -> SiLU -> down -> residual] -> final RMSNorm -> LM head at `logits_indices` only. The same
pass returns the drafter's features: raw outputs of the decoder layers in `feature_layer_ids`
concatenated in list order (id -1 = embedding output), i.e. HF ``hidden_states[i + 1]``, and the
final-normed hidden (HF ``hidden_states[-1]``). The math follows transformers (RMSNorm in float32,
rotate-half rotary from float32 frequencies, SDPA with scale D^-0.5), so in float32 it matches it to
rounding. Attention is pluggable (`PagedAttentionFn`); by default the plain-PyTorch reference on the
CPU and the Triton kernels (`dspark.kernels`) on CUDA.

Two code paths, the same math: the reference path (module by module, what the CPU runs, exact) and
the fused path (on CUDA with Triton, or forced with ``fused=True`` for interpreter tests): residual
add + RMSNorm, q/k norm + rotary + KV store and SiLU·up are one Triton kernel each
(`dspark.models.fused_ops`), so a layer is 4 GEMMs + 4 small kernels + attention, with no host sync
when the batch carries its host bounds (`FlatBatch.max_query_len` / `max_context_len`) — what CUDA
graphs capture (`dspark.engine.graphed_target`).

Flow: engine scheduler -> FlatBatch -> DenseLM.forward (+ PagedKVCache) -> logits / features -> verify, drafter.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dspark.drafters.layers import RMSNorm, apply_rotary
from dspark.engine.batch import FlatBatch
from dspark.engine.kv_cache import PagedKVCache
from dspark.errors import IncompatibleModelsError
from dspark.models.config import DenseConfig
from dspark.models.paged_attention import PagedAttentionFn, paged_attention
from dspark.models.weights import StateDictSource, WeightSource, dense_state_dict


@dataclass
class DenseOutput:
    logits: torch.Tensor  # [M, V] at batch.logits_indices, model dtype
    last_hidden: torch.Tensor  # [N, d] final-normed hidden of every token
    features: torch.Tensor | None  # [N, n·d] raw layer outputs at feature_layer_ids (None: not asked)


class HFConfigLike(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class HFModelLike(Protocol):
    """What `from_hf_model` reads from a loaded `transformers` causal LM."""

    config: HFConfigLike

    def state_dict(self) -> Mapping[str, torch.Tensor]: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [N] -> cos, sin [N, 1, D] (computed in float32, cast like transformers)."""
    freqs = positions.float()[:, None] * inv_freq.float()[None, :]  # [N, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None, :]
    return emb.cos().to(dtype), emb.sin().to(dtype)


class DenseLayer(nn.Module):
    """One pre-norm decoder layer with fused QKV and fused gate/up projections."""

    def __init__(self, cfg: DenseConfig) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.splits = [cfg.q_size, cfg.kv_size, cfg.kv_size]
        self.scale = cfg.head_dim ** -0.5
        self.input_layernorm = RMSNorm(d, eps)
        self.qkv_proj = nn.Linear(d, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
        self.q_norm = RMSNorm(cfg.head_dim, eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, eps) if cfg.qk_norm else None
        self.o_proj = nn.Linear(cfg.q_size, d, bias=cfg.o_bias)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.gate_up_proj = nn.Linear(d, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, d, bias=cfg.mlp_bias)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: FlatBatch, kv: PagedKVCache,
                layer: int, attention: PagedAttentionFn) -> torch.Tensor:
        """h [N, d] -> [N, d]; writes this step's K/V of `layer` to `batch.slot_mapping` first."""
        n = h.shape[0]
        q, k, v = self.qkv_proj(self.input_layernorm(h)).split(self.splits, dim=-1)
        q = q.view(n, self.num_heads, self.head_dim)
        k = k.view(n, self.num_kv_heads, self.head_dim)
        v = v.view(n, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        kv.write(layer, batch.slot_mapping, k, v)
        out = attention(q, kv.k[layer], kv.v[layer], batch, self.scale)  # [N, H, D]
        h = h + self.o_proj(out.reshape(n, -1))
        gate, up = self.gate_up_proj(self.post_attention_layernorm(h)).chunk(2, dim=-1)
        return h + self.down_proj(F.silu(gate) * up)


@functools.lru_cache(maxsize=64)
def _accepts(fn: Any, name: str) -> bool:
    """Whether `fn` accepts the keyword argument `name` (or any keyword)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _takes_bounds(fn: Any) -> bool:
    """Whether an attention function accepts the optional host bounds (older ones take 5 arguments)."""
    return _accepts(fn, "max_query_len")


def _takes_short_bound(fn: Any) -> bool:
    """Whether an attention function accepts a mixed step's `short_query_len`."""
    return _accepts(fn, "short_query_len")


def fused_available(device: torch.device) -> bool:
    """The fused path runs by default on CUDA devices where Triton is installed."""
    if device.type != "cuda":
        return False
    from dspark.kernels import HAS_TRITON

    return HAS_TRITON


class DenseLM(nn.Module):
    def __init__(self, config: DenseConfig, attention: PagedAttentionFn | None = None, fused: bool | None = None) -> None:
        """`attention` None: the reference on the CPU, Triton on CUDA; `fused` None: the fused path on CUDA only."""
        super().__init__()
        self.config = config
        self.attention = attention
        self.fused = fused
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DenseLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.register_buffer("inv_freq", config.inv_freq(), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> "DenseLM":
        # `.to(bfloat16)` would round the rotary frequencies too; transformers keeps them in float32
        super()._apply(fn, recurse)
        self.inv_freq = self.config.inv_freq().to(self.inv_freq.device)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def new_kv_cache(self, num_pages: int, page_size: int) -> PagedKVCache:
        """An empty paged cache shaped for this model (its dtype and device)."""
        cfg = self.config
        return PagedKVCache(cfg.num_layers, num_pages, page_size, cfg.num_kv_heads, cfg.head_dim, self.dtype, self.device)

    def uses_fused_path(self) -> bool:
        return fused_available(self.device) if self.fused is None else self.fused

    def attention_fn(self) -> PagedAttentionFn:
        """The attention actually called: the given one, else Triton on CUDA and the reference elsewhere."""
        if self.attention is not None:
            return self.attention
        if fused_available(self.device):
            from dspark.kernels import paged_attention as triton_attention

            return triton_attention
        return paged_attention

    def forward(self, batch: FlatBatch, kv: PagedKVCache, feature_layer_ids: list[int] | None = None) -> DenseOutput:
        """One engine step over every token of `batch`; K/V of its tokens land in `kv`."""
        ids = self._check_feature_ids(feature_layer_ids)
        h = self.embed(batch.input_ids)  # [N, d]
        cos, sin = rope_cos_sin(batch.positions, self.inv_freq, h.dtype)
        if self.uses_fused_path():
            saved, last = self._fused_layers(h, cos, sin, batch, kv, ids)
        else:
            attention = self.attention_fn()
            saved = {-1: h} if -1 in ids else {}
            for i, layer in enumerate(self.layers):
                h = layer(h, cos, sin, batch, kv, i, attention)
                if i in ids:
                    saved[i] = h
            last = self.norm(h)
        if self.uses_fused_path():
            from dspark.kernels.skinny_gemm import linear

            logits = linear(last[batch.logits_indices], self.lm_head.weight)  # [M, V]
        else:
            logits = self.lm_head(last[batch.logits_indices])
        if feature_layer_ids is None:
            features = None
        else:
            features = torch.cat([saved[i] for i in ids], dim=-1) if ids else last[:, :0]
        return DenseOutput(logits=logits, last_hidden=last, features=features)

    def _fused_layers(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: FlatBatch, kv: PagedKVCache,
                      ids: list[int]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """The decoder stack on the fused kernels: (raw outputs of the layers in `ids`, final-normed hidden).

        The residual stream is carried un-normed between layers and each residual add is fused with the
        next RMSNorm, so layer i's raw output appears as the residual of layer i+1's first add (no extra pass).
        """
        from dspark.kernels.skinny_gemm import linear
        from dspark.models.fused_ops import add_rms_norm, qk_norm_rope_store, silu_mul

        attention = self.attention_fn()
        bounds: dict[str, int] = {}
        if _takes_bounds(attention):
            max_q, max_ctx = batch.host_bounds()
            bounds = dict(max_query_len=max_q, max_context_len=max_ctx)
            if batch.short_query_len is not None and _takes_short_bound(attention):
                bounds["short_query_len"] = batch.short_query_len
        n = h.shape[0]
        cos2, sin2 = cos.view(n, -1), sin.view(n, -1)
        saved: dict[int, torch.Tensor] = {-1: h} if -1 in ids else {}
        residual, delta = h, None
        for i, layer in enumerate(self.layers):
            norm = layer.input_layernorm
            residual, x = add_rms_norm(delta, residual, norm.weight, norm.eps)
            if i - 1 in ids:
                saved[i - 1] = residual
            qkv = linear(x, layer.qkv_proj.weight, layer.qkv_proj.bias)
            qn, kn = layer.q_norm, layer.k_norm
            q = qk_norm_rope_store(qkv, cos2, sin2, qn.weight if qn is not None else None,
                                   kn.weight if kn is not None else None, qn.eps if qn is not None else 0.0,
                                   layer.num_heads, layer.num_kv_heads, layer.head_dim, kv.k[i], kv.v[i],
                                   batch.slot_mapping)
            out = attention(q, kv.k[i], kv.v[i], batch, layer.scale, **bounds)  # [N, H, D]
            norm = layer.post_attention_layernorm
            o = linear(out.reshape(n, -1), layer.o_proj.weight, layer.o_proj.bias)
            residual, x = add_rms_norm(o, residual, norm.weight, norm.eps)
            gate_up = linear(x, layer.gate_up_proj.weight, layer.gate_up_proj.bias)
            delta = linear(silu_mul(gate_up), layer.down_proj.weight, layer.down_proj.bias)
        residual, last = add_rms_norm(delta, residual, self.norm.weight, self.norm.eps)
        return saved, last

    def _check_feature_ids(self, feature_layer_ids: list[int] | None) -> list[int]:
        ids = [int(i) for i in feature_layer_ids or []]
        last = self.config.num_layers - 1
        bad = [i for i in ids if not -1 <= i < last]
        if bad:
            raise IncompatibleModelsError(
                f"feature layer id(s) {bad} out of range: allowed are -1 (embeddings) and 0..{last - 1} (the last "
                "layer is excluded: HF returns it after the final norm; use last_hidden)")
        return ids

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_weights(cls, config: DenseConfig, source: WeightSource, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", attention: PagedAttentionFn | None = None,
                     fused: bool | None = None) -> "DenseLM":
        """Build the model with its weights from `source` (HF names), without a random init first."""
        with torch.device("meta"):
            model = cls(config, attention, fused)
        expected = {name: t.shape for name, t in model.state_dict().items()}
        if config.tie_word_embeddings:
            expected.pop("lm_head.weight")
        model.load_state_dict(dense_state_dict(expected, source, dtype, device), strict=False, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.embed.weight
        model.inv_freq = config.inv_freq().to(device)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_hf_model(cls, model: HFModelLike, attention: PagedAttentionFn | None = None,
                      fused: bool | None = None) -> "DenseLM":
        """The same weights as an already-loaded `transformers` causal LM (same dtype and device)."""
        first = next(iter(model.parameters()))
        return cls.from_weights(DenseConfig.from_dict(model.config.to_dict()), StateDictSource(model.state_dict()),
                                dtype=first.dtype, device=first.device, attention=attention, fused=fused)
