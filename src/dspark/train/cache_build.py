"""`build_cache`: run the target over a dataset and store its features as a target cache.

Records are read in file order, tokenized (`data.tokenize_record`), filtered (`min_loss_tokens`),
batched (right padding + attention mask), passed through `target.features` at `target_layer_ids`, and
appended by a `CacheWriter` that commits after every batch. Rerunning the same command after a kill
resumes after the last committed batch; a different target (by fingerprint), layer list, format or
data file is refused. A build that fails on its input (a malformed record) removes what it wrote, so
the rerun with the fixed file starts clean. The result is byte-compatible with DeepSpec (format "standard") or our compact
fp8 variant (format "compact"); see `cache_format`.

Data flow: conversations.jsonl + target -> build_cache -> cache dir -> cache.TargetCache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dspark import __version__
from dspark.errors import ConfigError, DSparkError
from dspark.train.cache_codec import encode_sample
from dspark.train.cache_format import COMPACT_DTYPE, FORMATS
from dspark.train.cache_writer import CacheWriter, file_sha256
from dspark.train.data import DataConfig, TokenizedSample, iter_records, tokenize_record
from dspark.train.templates import ChatFormatter

log = logging.getLogger(__name__)


def _write_batch(target: Any, layer_ids: list[int], hidden_dtype: str, batch: list[TokenizedSample],
                 writer: CacheWriter) -> None:
    max_len = max(s.num_tokens for s in batch)
    ids = torch.zeros(len(batch), max_len, dtype=torch.long)  # [B, S]
    attention = torch.zeros(len(batch), max_len, dtype=torch.long)  # [B, S]
    for b, s in enumerate(batch):
        ids[b, : s.num_tokens] = torch.from_numpy(s.input_ids)
        attention[b, : s.num_tokens] = 1
    feats = target.features(ids.to(target.device), layer_ids, attention_mask=attention.to(target.device))
    context, last = feats.context_features, feats.last_hidden  # [B, S, n·d], [B, S, d] on the target's device
    for b, s in enumerate(batch):
        n = s.num_tokens
        fields = encode_sample(hidden_dtype, ids[b, :n], torch.from_numpy(s.loss_mask), context[b, :n], last[b, :n],
                               len(layer_ids))
        writer.add(s.sample_id, fields, n)


def build_cache(target: Any, data_paths: str | Path | Sequence[str | Path], cache_dir: str | Path, *,
                layer_ids: list[int] | None = None, data_config: DataConfig | None = None,
                cache_format: str = "standard", batch_size: int = 8, max_shard_bytes: int = 1 << 30,
                limit: int | None = None, on_batch: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Build (or resume) a target cache in `cache_dir`; return its manifest.

    `target` is a `dspark.targets.TargetModel`; `layer_ids` default to `target.default_layer_ids(5)`;
    `limit` caps the number of cached samples; `on_batch(num_samples, records_consumed)` reports progress.
    """
    if cache_format not in FORMATS:
        raise ConfigError(f"cache format {cache_format!r} is not one of {sorted(FORMATS)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    config = data_config or DataConfig()
    paths = [Path(data_paths)] if isinstance(data_paths, (str, Path)) else [Path(p) for p in data_paths]
    layer_ids = target.validate_layer_ids(layer_ids if layer_ids is not None else target.default_layer_ids(5))
    hidden_dtype = FORMATS[cache_format]
    fingerprint = target.fingerprint()
    data_sha = [file_sha256(p) for p in paths]
    build_key = {"target_fingerprint": fingerprint, "target_layer_ids": layer_ids, "hidden_dtype": hidden_dtype,
                 "data_sha256": data_sha, "max_length": config.max_length,
                 "min_loss_tokens": config.min_loss_tokens, "chat_template_kwargs": config.chat_template_kwargs}
    writer = CacheWriter(cache_dir, hidden_dtype=hidden_dtype, hidden_size=target.hidden_size,
                         target_layer_ids=layer_ids, build_key=build_key, max_shard_bytes=max_shard_bytes)
    formatter = ChatFormatter(target.tokenizer, config.chat_template_kwargs) if target.tokenizer is not None else None
    consumed, dropped, batch = writer.consumed, 0, []
    try:
        if not writer.finalizing:
            for position, record in enumerate(iter_records(paths)):
                if position < writer.consumed:
                    continue
                if limit is not None and writer.num_samples + len(batch) >= limit:
                    break
                consumed = position + 1
                sample = tokenize_record(record, formatter, config.max_length)
                if sample.num_loss_tokens < config.min_loss_tokens:
                    dropped += 1
                else:
                    batch.append(sample)
                if len(batch) >= batch_size:
                    _write_batch(target, layer_ids, hidden_dtype, batch, writer)
                    writer.commit(consumed)
                    batch = []
                    if on_batch is not None:
                        on_batch(writer.num_samples, consumed)
            if batch:
                _write_batch(target, layer_ids, hidden_dtype, batch, writer)
        extra = {"target_model_name_or_path": str(target.path), "source_jsonl_paths": [str(p) for p in paths],
                 "chat_template": "tokenizer" if formatter is not None and formatter.has_template else "plain",
                 "max_length": config.max_length, "min_loss_tokens": config.min_loss_tokens}
        ours = {"created_by": f"dspark {__version__}", "format": cache_format, "target_fingerprint": fingerprint,
                "num_target_layers": int(target.num_layers), "vocab_size": int(target.vocab_size),
                "data_sha256": data_sha, "data_config": asdict(config)}
        if hidden_dtype == COMPACT_DTYPE:
            ours.update(scale_dtype="float32", scale_rows="one per token and layer",
                        last_hidden_rows="loss_mask[t] or loss_mask[t+1]")
        manifest = writer.finish(consumed, extra, ours)
    except DSparkError:  # bad input: what was built from it must not block the rerun with the fixed file
        writer.discard()
        raise
    except BaseException:
        writer.close()
        raise
    log.info("cache %s: %d samples in %d shards (%d records dropped this run)", cache_dir,
             manifest["num_samples"], manifest["num_shards"], dropped)
    return manifest
