"""Random-weight targets and drafters of real shapes, made on the device directly (no downloads).

For speed benchmarks only (`scripts/bench_frontier.py`; the same Qwen3 shapes as `scripts/bench_engine.py`):
timings of a random-weight Qwen3-8B are those of Qwen3-8B, its outputs are noise, so acceptance on such a
pair must come from a synthetic model (`dspark.engine.synthetic`). ``tiny`` is a CPU-sized shape for tests.

    target = random_target("qwen3-8b", device="cuda", dtype="bfloat16")      # a `TargetModel`, no tokenizer
    drafter = random_drafter(target, "dspark", num_layers=5)                 # embedding / LM head shared
    mtp = random_drafter(target, "mtp")                                      # an MTP-1 module (one layer)
"""

from __future__ import annotations

import torch

from dspark.drafters import build_drafter, config_from_target
from dspark.drafters.base import Drafter
from dspark.errors import ConfigError
from dspark.targets.adapter import TargetModel, resolve_dtype

_QWEN3 = dict(model_type="qwen3", num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
              max_position_embeddings=40960, rope_theta=1_000_000.0, hidden_act="silu", vocab_size=151936,
              num_hidden_layers=36)
SHAPES: dict[str, dict[str, object]] = {
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False),
    "tiny": dict(_QWEN3, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=2048,
                 tie_word_embeddings=False),
}


class _DefaultDtype:
    """Parameters made in `dtype` on `device` directly (an 8B model never exists in float32 on the host)."""

    def __init__(self, dtype: torch.dtype, device: str | torch.device) -> None:
        self.dtype, self.device = dtype, torch.device(device)

    def __enter__(self) -> None:
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        self.ctx = torch.device(self.device)
        self.ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.ctx.__exit__(*exc)
        torch.set_default_dtype(self.saved)


def random_target(shape: str, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                  seed: int = 0) -> TargetModel:
    """A `TargetModel` of `shape` (a `SHAPES` key) with random weights; `path` is ``random:SHAPE``."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    if shape not in SHAPES:
        raise ConfigError(f"unknown random target shape {shape!r}; known: {', '.join(SHAPES)}")
    cfg = dict(SHAPES[shape])
    cfg.pop("model_type")
    config = Qwen3Config(**cfg, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch_dtype = resolve_dtype(dtype)
    torch.manual_seed(seed)
    with _DefaultDtype(torch_dtype, device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype, attn_implementation="sdpa")
    return TargetModel(model.to(device=device, dtype=torch_dtype), None, path=f"random:{shape}")


def random_drafter(target: TargetModel, method: str = "dspark", num_layers: int | None = None, seed: int = 1,
                   **overrides: object) -> Drafter:
    """A random drafter fitted to `target` (its embedding and LM head copied), in the target's dtype and device."""
    if num_layers is not None:
        if num_layers < 1:
            raise ConfigError(f"a random drafter needs >= 1 layer, got {num_layers}")
        overrides["num_hidden_layers"] = num_layers
    config = config_from_target(target, method, **overrides)
    torch.manual_seed(seed)
    with _DefaultDtype(target.dtype, target.device):
        drafter = build_drafter(config)
    drafter.init_from_target(target)
    return drafter.to(device=target.device, dtype=target.dtype).eval().requires_grad_(False)
