"""`DenseConfig`: what the engine's own dense forward needs to know about a Hugging Face target.

Read straight from a HF ``config.json`` dict (no `transformers` classes), for the families whose decoder
layer is "pre-norm GQA attention with rotary + SiLU-gated MLP": ``qwen3`` (per-head q/k RMSNorm),
``qwen2`` (q/k/v bias), ``llama`` (optional ``attention_bias`` / ``mlp_bias``) and ``mistral``.
Defaults for missing keys are those of the family's transformers config class, so a config the
library would load means the same model here. Both layouts of the rotary parameters are accepted:
transformers 5 writes ``rope_parameters: {rope_type, rope_theta, ...}``; older configs have top-level
``rope_theta`` plus an optional ``rope_scaling`` dict. Anything the forward would compute differently
from transformers (sliding-window attention, dynamic / YaRN / LongRoPE rotary, partial rotary, an
activation other than SiLU) is refused with `UnsupportedModelError` rather than run approximately.

Flow: config.json -> DenseConfig -> `dspark.models.dense.DenseLM` (layer shapes, rotary frequencies).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dspark.drafters.layers import rope_inv_freq
from dspark.errors import CheckpointError, ConfigError, UnsupportedModelError


@dataclass(frozen=True)
class _Family:
    """Per-model_type quirks: defaults of its transformers config class and where biases sit."""

    qk_norm: bool
    default_head_dim: int | None  # None: hidden_size // num_attention_heads
    default_max_positions: int
    fixed_qkv_bias: bool | None  # None: read `attention_bias` (which then also biases o_proj)
    has_mlp_bias_key: bool


FAMILIES: dict[str, _Family] = {
    "qwen3": _Family(qk_norm=True, default_head_dim=128, default_max_positions=32768, fixed_qkv_bias=None,
                     has_mlp_bias_key=False),
    "qwen2": _Family(qk_norm=False, default_head_dim=None, default_max_positions=32768, fixed_qkv_bias=True,
                     has_mlp_bias_key=False),
    "llama": _Family(qk_norm=False, default_head_dim=None, default_max_positions=2048, fixed_qkv_bias=None,
                     has_mlp_bias_key=True),
    "mistral": _Family(qk_norm=False, default_head_dim=None, default_max_positions=4096 * 32, fixed_qkv_bias=False,
                       has_mlp_bias_key=False),
}

SUPPORTED_ROPE = ("default", "linear", "llama3")


@dataclass(frozen=True)
class DenseConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None  # None: plain rotary; else a `rope_inv_freq` scaling dict
    qk_norm: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    tie_word_embeddings: bool
    max_position_embeddings: int
    dtype: str | None  # the checkpoint's stored dtype, e.g. "bfloat16" (None: not recorded)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def inv_freq(self) -> torch.Tensor:
        """Rotary inverse frequencies `[head_dim / 2]`, float32, computed as transformers does."""
        return rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "DenseConfig":
        model_type = raw.get("model_type")
        if model_type not in FAMILIES:
            raise UnsupportedModelError(
                f"model_type {model_type!r} is not supported by the engine's dense forward "
                f"(supported: {', '.join(sorted(FAMILIES))})")
        fam = FAMILIES[model_type]
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise UnsupportedModelError(f"{model_type} config has hidden_act={act!r}; the dense forward implements silu only")
        if int(raw.get("pretraining_tp", 1) or 1) != 1:
            raise UnsupportedModelError("pretraining_tp > 1 is not supported by the dense forward")
        hidden, heads = _required(raw, "hidden_size"), _required(raw, "num_attention_heads")
        head_dim = raw.get("head_dim") or fam.default_head_dim or hidden // heads
        max_positions = int(raw.get("max_position_embeddings") or fam.default_max_positions)
        _check_full_attention(raw, model_type, max_positions)
        theta, scaling = _rope(raw, max_positions)
        attention_bias = bool(raw.get("attention_bias", False))
        qkv_bias = attention_bias if fam.fixed_qkv_bias is None else fam.fixed_qkv_bias
        return cls(
            model_type=model_type,
            vocab_size=_required(raw, "vocab_size"),
            hidden_size=hidden,
            num_layers=_required(raw, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=_required(raw, "intermediate_size"),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=scaling,
            qk_norm=fam.qk_norm,
            qkv_bias=qkv_bias,
            o_bias=attention_bias if fam.fixed_qkv_bias is None else False,
            mlp_bias=bool(raw.get("mlp_bias", False)) if fam.has_mlp_bias_key else False,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=max_positions,
            dtype=raw.get("dtype") or raw.get("torch_dtype"),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "DenseConfig":
        """Read `config.json` (a file, or the model directory holding it)."""
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise CheckpointError(f"no config.json at {path}")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise CheckpointError(f"{path} does not hold a JSON object")
        return cls.from_dict(raw)


def _required(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(f"{raw.get('model_type')} config needs a positive integer {key!r}, got {value!r}")
    return value


def _check_full_attention(raw: dict[str, Any], model_type: str, max_positions: int) -> None:
    """Refuse sliding-window attention: the paged attention here is full causal attention."""
    window = raw.get("sliding_window")
    if model_type == "mistral":  # mistral applies `sliding_window` to every layer whenever it is set
        active = window is not None and int(window) < max_positions
    else:  # qwen2/qwen3: `layer_types` says which layers slide (derived from use_sliding_window if absent)
        types = raw.get("layer_types") or [
            "sliding_attention" if raw.get("use_sliding_window") and window is not None
            and i >= int(raw.get("max_window_layers", 28)) else "full_attention"
            for i in range(int(raw.get("num_hidden_layers") or 0))]
        active = any(t != "full_attention" for t in types)
    if active:
        raise UnsupportedModelError(
            f"{model_type} config uses sliding-window attention (sliding_window={window!r}); "
            "the dense forward implements full causal attention only")


def _rope(raw: dict[str, Any], max_positions: int) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling dict or None) from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    if any(isinstance(v, dict) for v in params.values()):
        raise UnsupportedModelError("per-layer-type rotary parameters are not supported by the dense forward")
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    partial = float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0)) or 1.0)
    if partial != 1.0:
        raise UnsupportedModelError(f"partial_rotary_factor={partial} is not supported by the dense forward")
    if kind not in SUPPORTED_ROPE:
        raise UnsupportedModelError(
            f"rotary scaling {kind!r} is not supported by the dense forward (supported: {', '.join(SUPPORTED_ROPE)})")
    if kind == "default":
        return theta, None
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "type")}
    scaling["rope_type"] = kind
    if kind == "llama3":
        scaling.setdefault("original_max_position_embeddings", max_positions)
    missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor")[: 1 if kind == "linear" else 3]
               if k not in scaling]
    if missing:
        raise ConfigError(f"{kind} rotary scaling needs {missing} in the config's rope parameters")
    return theta, scaling
