"""How big a target cache will be, without loading weights or writing anything (pure arithmetic).

Standard (DeepSpec v2): `4 + 1 + 1 + 2·n·d + 2·d` bytes/token + 56 bytes per sample
(30,726 B/token for Qwen3-4B, d = 2560, n = 5). Compact: `6 + n·d + 4·n + f·(d + 4)` with `f` the
fraction of rows whose final hidden state a loss can use (measured from `--data`; 1 = worst case).

`read_target_shape` accepts a model directory or a `config.json` (multimodal configs: `text_config`).
`count_tokens` tokenizes a dataset exactly as `cache build` would and counts samples, tokens and kept
final-hidden rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark.errors import ConfigError
from dspark.train.cache_codec import last_hidden_rows
from dspark.train.cache_format import COMPACT_DTYPE, INDEX_RECORD_SIZE, STANDARD_DTYPE, bytes_per_token
from dspark.train.data import DataConfig, iter_records, tokenize_record
from dspark.train.templates import ChatFormatter


@dataclass(frozen=True)
class TargetShape:
    """What the size of a cache depends on, read from a target's config."""

    path: Path
    hidden_size: int
    num_layers: int
    model_type: str = ""


def read_target_shape(target: str | Path) -> TargetShape:
    """Hidden size and layer count from `DIR/config.json` or a config file; `ConfigError` if absent."""
    path = Path(target)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise ConfigError(f"{target}: neither a model directory with config.json nor a config file")
    try:
        config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config_path}: not valid JSON ({exc})") from exc
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    missing = [k for k in ("hidden_size", "num_hidden_layers") if not isinstance(text.get(k), int)]
    if missing:
        raise ConfigError(f"{config_path}: config has no integer {missing}")
    return TargetShape(config_path, int(text["hidden_size"]), int(text["num_hidden_layers"]),
                       str(config.get("model_type", "")))


@dataclass(frozen=True)
class TokenCount:
    """Samples and tokens a dataset yields after truncation and filtering."""

    num_samples: int
    num_tokens: int
    num_last_rows: int  # rows whose final hidden state the compact format keeps

    @property
    def last_fraction(self) -> float:
        return self.num_last_rows / self.num_tokens if self.num_tokens else 1.0


def count_tokens(paths: str | Path | Sequence[str | Path], tokenizer: Any, config: DataConfig) -> TokenCount:
    """Tokenize like `build_cache` and count what would be cached."""
    formatter = ChatFormatter(tokenizer, config.chat_template_kwargs) if tokenizer is not None else None
    samples = tokens = rows = 0
    for record in iter_records(paths):
        sample = tokenize_record(record, formatter, config.max_length)
        if sample.num_loss_tokens < config.min_loss_tokens:
            continue
        samples += 1
        tokens += sample.num_tokens
        rows += int(last_hidden_rows(sample.loss_mask).sum())
    return TokenCount(samples, tokens, rows)


def estimate(hidden_size: int, num_layers: int, num_tokens: int, num_samples: int | None = None,
             last_fraction: float = 1.0) -> dict[str, Any]:
    """Bytes/token and totals for both formats (`num_samples` adds the 56-byte index records)."""
    index_bytes = INDEX_RECORD_SIZE * (num_samples or 0)
    out: dict[str, Any] = {"hidden_size": hidden_size, "num_layers": num_layers, "num_tokens": num_tokens,
                           "num_samples": num_samples, "index_bytes": index_bytes}
    standard = bytes_per_token(STANDARD_DTYPE, hidden_size, num_layers)
    compact = bytes_per_token(COMPACT_DTYPE, hidden_size, num_layers, last_fraction)
    compact_worst = bytes_per_token(COMPACT_DTYPE, hidden_size, num_layers, 1.0)
    out["standard"] = {"bytes_per_token": int(standard), "total_bytes": int(standard * num_tokens) + index_bytes}
    out["compact"] = {"bytes_per_token": round(compact, 1), "bytes_per_token_worst_case": int(compact_worst),
                      "last_hidden_fraction": round(last_fraction, 4),
                      "total_bytes": int(round(compact * num_tokens)) + index_bytes,
                      "ratio_to_standard": round(compact / standard, 4)}
    return out


def format_bytes(num_bytes: float) -> str:
    """Decimal units (kB, MB, GB, TB, PB), as disks are sold."""
    value = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} PB"
