"""What a user asks of one request (`SamplingOptions`) and of the engine (`EngineConfig`).

Both are plain dataclasses checked at construction, so a bad value fails with one line naming it
before any work is queued. No torch here: the scheduler and the server use them too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from dspark.errors import ConfigError

MIN_TEMPERATURE = 1e-4  # below this (but > 0) a softmax over float32 logits is not a distribution any more


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None  # None: a random seed per request
    stop_token_ids: tuple[int, ...] = ()  # in addition to the model's EOS ids (unless ignore_eos)
    stop: tuple[str, ...] = ()  # stop strings (checked on the detokenised text by `LLM`)
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, value: object, rule: str) -> ConfigError:
            return ConfigError(f"{name} must be {rule}, got {value!r}")

        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise bad("max_tokens", self.max_tokens, "an integer >= 1")
        t = self.temperature
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0 or 0 < t < MIN_TEMPERATURE:
            raise bad("temperature", t, f"0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", self.top_p, "in (0, 1]")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise bad("top_k", self.top_k, "an integer >= 0 (0 = off)")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**63):
            raise bad("seed", self.seed, "an integer in [0, 2^63)")
        if any(not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", self.stop_token_ids, "non-negative integers")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", self.stop, "non-empty strings")


@dataclass
class EngineConfig:
    """Capacity and behaviour of one engine instance."""

    page_size: int = 16
    num_pages: int | None = None  # KV pages (None: enough for max_num_seqs full-length sequences)
    max_num_seqs: int = 64  # requests decoding at once
    max_num_batched_tokens: int = 2048  # tokens of one step (prefill chunks + verify blocks)
    max_model_len: int | None = None  # None: the target's max_position_embeddings
    enable_prefix_caching: bool = True
    policy: str = "fixed:7"  # verification-length policy (dspark.scheduling); "none" = plain decoding
    sps_path: str | None = None  # SPS table JSON for dspark / dspark-async / +gate (None: profile or roofline)
    profile_context: int | None = None  # context of the start-up SPS profile (None: 64; give the workload's)
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    enforce_eager: bool = False  # no CUDA graphs (the same results, every step launched op by op)
    # benchmark only, NOT lossless: acceptance drawn from a preset / curve:... / JSONL trace (dspark.engine.synthetic)
    synthetic_acceptance: str | None = None
    synthetic_seed: int = 0  # seed of the synthetic acceptance draws

    def check(self, num_drafts: int) -> None:
        for name in ("page_size", "max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_pages is not None and (not isinstance(self.num_pages, int) or self.num_pages < 2):
            raise ConfigError(f"num_pages must be an integer >= 2 (page 0 is reserved), got {self.num_pages!r}")
        if self.synthetic_acceptance is not None and (not isinstance(self.synthetic_acceptance, str)
                                                      or not self.synthetic_acceptance.strip()):
            raise ConfigError(f"synthetic_acceptance must be a preset, curve:... or a JSONL trace path, "
                              f"got {self.synthetic_acceptance!r}")
        if not isinstance(self.synthetic_seed, int) or isinstance(self.synthetic_seed, bool) or self.synthetic_seed < 0:
            raise ConfigError(f"synthetic_seed must be an integer >= 0, got {self.synthetic_seed!r}")
        if self.profile_context is not None and (not isinstance(self.profile_context, int) or self.profile_context < 1):
            raise ConfigError(f"profile_context must be an integer >= 1, got {self.profile_context!r}")
        if self.max_num_batched_tokens < self.max_num_seqs * (num_drafts + 1):
            raise ConfigError(f"max_num_batched_tokens ({self.max_num_batched_tokens}) must hold a verify block of "
                              f"every request: >= max_num_seqs x (γ+1) = {self.max_num_seqs * (num_drafts + 1)}")
