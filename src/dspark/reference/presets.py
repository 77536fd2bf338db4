"""Sizes and training budgets of the reference targets (`tiny`, `small`), and their Qwen3 configs.

Read by `dspark.reference.pretrain`. `tiny` is the embedded default: about 6.8M parameters with an
8192-token vocabulary, 13.7 MB in bf16, trained on one H200 in about four minutes. `small` (about
61M parameters) is the headline-benchmark target, rebuilt by `recipes/reference_target.sh small`.
Both have enough layers that a drafter can read features from several of them (the last layer is
never used as a feature, so at least four are needed). Token budgets are bounded twice: by `steps`
and by `time_budget_s` (wall clock of the training loop); whichever runs out first ends the cosine
schedule, so a run always finishes on time with the learning rate decayed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from dspark.errors import ConfigError

if TYPE_CHECKING:
    from transformers import Qwen3Config


@dataclass(frozen=True)
class TargetPreset:
    """Architecture and optimisation settings of one reference target."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    seq_len: int = 1024
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    batch_size: int = 128  # sequences per optimiser step
    steps: int = 2000
    time_budget_s: float = 0.0  # 0 = no wall-clock bound
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_tokens: int = 2_000_000  # per periodic evaluation; the final one uses up to 4x this

    def __post_init__(self) -> None:
        if self.num_layers < 4:
            raise ConfigError("a reference target needs at least 4 layers (drafters read several)")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("num_heads must be a multiple of num_kv_heads")
        if self.seq_len > self.max_position_embeddings:
            raise ConfigError("seq_len exceeds max_position_embeddings")
        if self.batch_size < 1 or self.steps < 1 or self.seq_len < 8:
            raise ConfigError("batch_size, steps and seq_len must be positive (seq_len >= 8)")

    def with_overrides(self, **overrides: object) -> TargetPreset:
        """A copy with the non-None overrides applied (CLI flags)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


PRESETS: dict[str, TargetPreset] = {
    "tiny": TargetPreset(
        name="tiny", hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, head_dim=64,
        intermediate_size=768, batch_size=128, steps=4000, time_budget_s=240.0, lr=3e-3, warmup_steps=150,
    ),
    "small": TargetPreset(
        name="small", hidden_size=640, num_layers=12, num_heads=10, num_kv_heads=5, head_dim=64,
        intermediate_size=1792, batch_size=96, steps=8000, time_budget_s=780.0, lr=1.5e-3, warmup_steps=300,
    ),
}  # fmt: skip


def get_preset(name: str) -> TargetPreset:
    """The named preset (ConfigError for an unknown name)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def qwen3_config(preset: TargetPreset, vocab_size: int, bos_id: int, eos_id: int, pad_id: int) -> Qwen3Config:
    """The `transformers.Qwen3Config` of a preset (tied embeddings keep the tiny target small)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size,
        num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads,
        num_key_value_heads=preset.num_kv_heads,
        head_dim=preset.head_dim,
        max_position_embeddings=preset.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": preset.rope_theta},
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        use_sliding_window=False,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
