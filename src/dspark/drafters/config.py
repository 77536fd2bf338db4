"""`DrafterConfig`: one typed source of truth for every drafter's hyper-parameters.

Field names follow the DeepSpec checkpoint config (SPEC §3.1) so that reading and writing that format is
a plain mapping. `target_config` keeps the rest of the target's HF config, because a DeepSpec drafter
config is the target's config deep-copied with a few keys changed; we write it back unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from dspark.errors import ConfigError
from dspark.targets.layer_ids import default_layer_ids, validate_layer_ids

METHODS = ("dspark", "dflash", "eagle3", "mtp")
MARKOV_HEAD_TYPES = ("vanilla", "gated", "rnn")


@dataclass
class DrafterConfig:
    method: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_target_layers: int
    target_layer_ids: list[int]
    mask_token_id: int
    block_size: int = 7
    num_anchors: int = 512
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "llama3"|"linear", ...} or None
    max_position_embeddings: int = 40960
    attention_bias: bool = False
    hidden_act: str = "silu"
    markov_rank: int = 0
    markov_head_type: str = "vanilla"
    enable_confidence_head: bool = False
    confidence_head_with_markov: bool = False
    calibration_temperatures: list[float] | None = None  # per slot, on the confidence logit (STS)
    ttt_length: int = 7
    step_loss_decay: float = 0.8
    target_config: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown drafter method {self.method!r}; choose one of {METHODS}")
        if self.markov_rank > 0 and self.markov_head_type not in MARKOV_HEAD_TYPES:
            raise ConfigError(f"unknown markov_head_type {self.markov_head_type!r}; choose one of {MARKOV_HEAD_TYPES}")
        if self.confidence_head_with_markov and self.enable_confidence_head and self.markov_rank <= 0:
            raise ConfigError("confidence_head_with_markov needs a Markov head (markov_rank > 0)")
        if self.hidden_act != "silu":
            raise ConfigError(f"draft layers support hidden_act='silu' only, got {self.hidden_act!r}")
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise ConfigError(f"mask_token_id {self.mask_token_id} is outside the vocabulary [0, {self.vocab_size})")
        if self.block_size < 1:
            raise ConfigError(f"block_size must be >= 1, got {self.block_size}")
        self.target_layer_ids = validate_layer_ids(self.target_layer_ids, self.num_target_layers)
        if self.calibration_temperatures is not None and len(self.calibration_temperatures) != self.block_size:
            raise ConfigError(f"calibration_temperatures has {len(self.calibration_temperatures)} entries, block_size is {self.block_size}")

    @property
    def has_markov(self) -> bool:
        return self.method == "dspark" and self.markov_rank > 0

    @property
    def has_confidence(self) -> bool:
        return self.method == "dspark" and self.enable_confidence_head

    @property
    def num_drafts(self) -> int:
        """Tokens drafted per round: γ for block drafters and Eagle3's chain, 1 for MTP-1."""
        return 1 if self.method == "mtp" else (self.ttt_length if self.method == "eagle3" else self.block_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "DrafterConfig":
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def pick_mask_token_id(vocab_size: int, tokenizer: Any = None) -> int:
    """A mask id that exists in the target's embedding table.

    Preference: the tokenizer's mask token; else the first embedding row the tokenizer never emits
    (Qwen3: 151669); else the last row.
    """
    if tokenizer is not None:
        mask_id = getattr(tokenizer, "mask_token_id", None)
        if mask_id is None:
            for name in ("<|mask|>", "<mask>", "[MASK]"):
                tok_id = tokenizer.convert_tokens_to_ids(name) if name in tokenizer.get_vocab() else None
                if tok_id is not None:
                    mask_id = tok_id
                    break
        if mask_id is not None and 0 <= int(mask_id) < vocab_size:
            return int(mask_id)
        if len(tokenizer) < vocab_size:
            return len(tokenizer)
    return vocab_size - 1


def config_from_target(target: Any, method: str = "dspark", **overrides: Any) -> DrafterConfig:
    """Default drafter config derived from a `TargetModel` (dims, vocab, layer ids, mask id)."""
    tc = target.text_config
    raw = tc.to_dict()
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    rope = rope_from_hf(raw)
    base: dict[str, Any] = dict(
        method=method,
        vocab_size=int(tc.vocab_size),
        hidden_size=int(tc.hidden_size),
        intermediate_size=int(tc.intermediate_size),
        num_hidden_layers=1 if method in ("eagle3", "mtp") else 5,
        num_attention_heads=int(tc.num_attention_heads),
        num_key_value_heads=int(getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads),
        head_dim=int(head_dim),
        num_target_layers=int(tc.num_hidden_layers),
        target_layer_ids=default_layer_ids(int(tc.num_hidden_layers), 5 if method != "mtp" else 1),
        mask_token_id=pick_mask_token_id(int(tc.vocab_size), target.tokenizer),
        rms_norm_eps=float(getattr(tc, "rms_norm_eps", 1e-6)),
        max_position_embeddings=int(getattr(tc, "max_position_embeddings", 40960)),
        target_config=raw,
        **rope,
    )
    if method == "dspark":
        base.update(markov_rank=256, markov_head_type="vanilla", enable_confidence_head=True,
                    confidence_head_with_markov=True)
    if method == "mtp":
        base["target_layer_ids"] = [int(tc.num_hidden_layers) - 2]  # unused: MTP reads the last hidden state
    base.update(overrides)
    if method == "dspark" and base["markov_rank"] > 0:
        base["markov_rank"] = min(int(base["markov_rank"]), int(tc.vocab_size))
    return DrafterConfig(**base)


def rope_from_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    """Read rope settings from an HF config dict (4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
    params = cfg.get("rope_parameters") or {}
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if params and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return {"rope_theta": float(theta), "rope_scaling": scaling}
