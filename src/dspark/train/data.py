"""Training data: JSONL records -> token ids + loss masks, filtered, truncated and split.

Accepted record shapes (one JSON object per line; an optional `"id"` names the sample, otherwise the
1-based line number does):
* chat:      `{"conversations": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`
             (`"messages"` is accepted as an alias; ShareGPT `{"from": "human"|"gpt", "value": ...}` too);
* prompts:   `{"turns": [str, ...]}` (user turns only, e.g. `/work/shared/datasets/*.jsonl`); they carry
             no answers, so they are input to `dspark data regenerate`, not training data;
* documents: `{"text": str}` (pretrained, non-chat targets): every token is a loss token;
* tokens:    `{"input_ids": [int, ...], "loss_mask": [0|1, ...]}` (pre-tokenized; the mask defaults to
             all ones) for targets without a tokenizer.

Chat records are rendered by `templates.ChatFormatter` (the tokenizer's chat template, else the
documented plain template) with the loss on assistant spans; samples are truncated to `max_length`
tokens and dropped when fewer than `min_loss_tokens` loss tokens remain. `split_by_id` is a seeded,
order-independent train/eval split on sample ids, shared by the cached and the online trainer.

Data flow: conversations.jsonl -> load_records -> tokenize_records -> (cache.build_cache | trainer).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dspark.errors import DataError
from dspark.train.jsonl import iter_jsonl
from dspark.train.templates import ChatFormatter, Message

log = logging.getLogger(__name__)

RecordKind = Literal["chat", "prompt", "text", "tokens"]
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bing": "assistant"}


@dataclass(frozen=True)
class DataConfig:
    """How records become training samples (defaults follow the DeepSpec recipe, SPEC §2.5)."""

    max_length: int = 4096
    min_loss_tokens: int = 2  # an anchor needs itself and the next token to be loss tokens
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    eval_fraction: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Record:
    """One parsed JSONL line."""

    sample_id: str
    kind: RecordKind
    source: str  # "file:line", for error messages
    messages: tuple[Message, ...] = ()
    text: str = ""
    input_ids: tuple[int, ...] = ()
    loss_mask: tuple[int, ...] = ()

    def user_turns(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]


@dataclass(frozen=True)
class TokenizedSample:
    """Token ids and the loss mask of one training sample."""

    sample_id: str
    input_ids: np.ndarray  # [S] int64
    loss_mask: np.ndarray  # [S] uint8, 1 on tokens the drafter is trained to predict

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        return int(self.loss_mask.sum())


# -- parsing ---------------------------------------------------------------------------------------
def _messages(raw: Any, where: str) -> tuple[Message, ...]:
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{where}: 'conversations' must be a non-empty list of messages")
    out = []
    for k, msg in enumerate(raw):
        if not isinstance(msg, dict):
            raise DataError(f"{where}: message {k} is not an object")
        role = msg.get("role", msg.get("from"))
        content = msg.get("content", msg.get("value"))
        role = _SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: message {k} has role {role!r}; expected system, user or assistant")
        if not isinstance(content, str):
            raise DataError(f"{where}: message {k} has no string 'content'")
        out.append({"role": role, "content": content})
    return tuple(out)


def parse_record(obj: Any, where: str, default_id: str) -> Record:
    """One JSON object -> `Record`; `where` ("file:line") prefixes every error message."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    sample_id = str(obj["id"]) if obj.get("id") is not None else default_id
    common = {"sample_id": sample_id, "source": where}
    if "conversations" in obj or "messages" in obj:
        return Record(kind="chat", messages=_messages(obj.get("conversations", obj.get("messages")), where), **common)
    if "turns" in obj:
        turns = obj["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise DataError(f"{where}: 'turns' must be a non-empty list of strings")
        return Record(kind="prompt", messages=tuple({"role": "user", "content": t} for t in turns), **common)
    if "text" in obj:
        if not isinstance(obj["text"], str):
            raise DataError(f"{where}: 'text' must be a string")
        return Record(kind="text", text=obj["text"], **common)
    if "input_ids" in obj:
        ids = obj["input_ids"]
        mask = obj.get("loss_mask", [1] * len(ids) if isinstance(ids, list) else None)
        if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise DataError(f"{where}: 'input_ids' must be a list of non-negative integers")
        if not isinstance(mask, list) or len(mask) != len(ids) or not all(m in (0, 1) for m in mask):
            raise DataError(f"{where}: 'loss_mask' must be a list of 0/1 as long as 'input_ids'")
        return Record(kind="tokens", input_ids=tuple(ids), loss_mask=tuple(int(m) for m in mask), **common)
    raise DataError(f"{where}: record has none of 'conversations', 'messages', 'turns', 'text', 'input_ids' "
                    f"(keys: {sorted(obj)[:8]})")


def iter_records(paths: str | Path | Sequence[str | Path]) -> Iterator[Record]:
    """Stream records from one or more JSONL files; ids are prefixed with the file name when several."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    seen: dict[str, str] = {}
    for path in paths:
        for line_number, obj in iter_jsonl(path):
            record = parse_record(obj, f"{path}:{line_number}", str(line_number))
            if len(paths) > 1:
                record = Record(**{**record.__dict__, "sample_id": f"{path.name}:{record.sample_id}"})
            if record.sample_id in seen:
                raise DataError(f"{record.source}: duplicate sample id {record.sample_id!r} "
                                f"(first at {seen[record.sample_id]})")
            seen[record.sample_id] = record.source
            yield record


def load_records(paths: str | Path | Sequence[str | Path]) -> list[Record]:
    return list(iter_records(paths))


# -- tokenization ------------------------------------------------------------------------------------
def encode_record(record: Record, formatter: ChatFormatter | None) -> tuple[list[int], list[int]]:
    """Record -> `(input_ids, loss_mask)`, untruncated (prompt records get no loss tokens)."""
    if record.kind == "tokens":
        return list(record.input_ids), list(record.loss_mask)
    if formatter is None:
        raise DataError(f"{record.source}: a {record.kind} record needs a tokenizer; this target has none")
    if record.kind == "text":
        ids = formatter.encode_document(record.text)
        return ids, [1] * len(ids)
    try:
        return formatter.encode_conversation(list(record.messages))
    except DataError as exc:
        raise DataError(f"{record.source}: {exc}") from exc


def tokenize_record(record: Record, formatter: ChatFormatter | None, max_length: int) -> TokenizedSample:
    """Record -> `TokenizedSample` truncated to `max_length` tokens."""
    ids, mask = encode_record(record, formatter)
    return _truncated(record.sample_id, ids, mask, max_length)


def _truncated(sample_id: str, ids: list[int], mask: list[int], max_length: int) -> TokenizedSample:
    return TokenizedSample(sample_id, np.asarray(ids[:max_length], dtype=np.int64),
                           np.asarray(mask[:max_length], dtype=np.uint8))


@dataclass
class TokenizeStats:
    """What `tokenize_records` kept and why it dropped the rest."""

    seen: int = 0
    kept: int = 0
    dropped_few_loss_tokens: int = 0
    truncated: int = 0
    prompts_only: int = 0
    tokens: int = 0
    loss_tokens: int = 0


def tokenize_records(records: Iterable[Record], formatter: ChatFormatter | None, config: DataConfig,
                     stats: TokenizeStats | None = None) -> Iterator[tuple[int, TokenizedSample | None]]:
    """Yield `(position, sample or None when dropped)` for each record, in input order.

    The position (0-based index in the record stream) lets a resumable consumer skip what it has done.
    """
    stats = stats if stats is not None else TokenizeStats()
    for position, record in enumerate(records):
        stats.seen += 1
        ids, mask = encode_record(record, formatter)
        stats.truncated += len(ids) > config.max_length
        sample = _truncated(record.sample_id, ids, mask, config.max_length)
        if record.kind == "prompt":
            stats.prompts_only += 1
        if sample.num_loss_tokens < config.min_loss_tokens:
            stats.dropped_few_loss_tokens += 1
            yield position, None
            continue
        stats.kept += 1
        stats.tokens += sample.num_tokens
        stats.loss_tokens += sample.num_loss_tokens
        yield position, sample


def load_samples(paths: str | Path | Sequence[str | Path], tokenizer: Any, config: DataConfig | None = None
                 ) -> tuple[list[TokenizedSample], TokenizeStats]:
    """Read, tokenize and filter a dataset; raise when nothing usable is left."""
    config = config or DataConfig()
    formatter = ChatFormatter(tokenizer, config.chat_template_kwargs) if tokenizer is not None else None
    stats = TokenizeStats()
    samples = [s for _, s in tokenize_records(iter_records(paths), formatter, config, stats) if s is not None]
    log.info("data %s: %d/%d samples kept (%d with < %d loss tokens dropped, %d truncated to %d), %d tokens",
             paths, stats.kept, stats.seen, stats.dropped_few_loss_tokens, config.min_loss_tokens,
             stats.truncated, config.max_length, stats.tokens)
    if not samples:
        hint = (" — these are prompts without answers; run `dspark data regenerate` first"
                if stats.prompts_only == stats.seen and stats.seen else "")
        raise DataError(f"{paths}: no sample has at least {config.min_loss_tokens} loss tokens{hint}")
    return samples, stats


# -- splits -------------------------------------------------------------------------------------------
def _split_key(sample_id: str, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\x00{sample_id}".encode()).digest()


def split_by_id(sample_ids: Sequence[str], eval_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded train/eval split of positions; depends only on the set of ids, not their order.

    The `ceil(eval_fraction · n)` ids with the smallest `sha256(seed, id)` go to eval (at least one when
    the fraction is positive and n > 1). Returns sorted position lists `(train, eval)`.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    n = len(sample_ids)
    num_eval = 0 if eval_fraction == 0 or n < 2 else min(n - 1, max(1, math.ceil(eval_fraction * n)))
    order = sorted(range(n), key=lambda i: _split_key(sample_ids[i], seed))
    eval_set = set(order[:num_eval])
    return [i for i in range(n) if i not in eval_set], sorted(eval_set)


# -- torch side ----------------------------------------------------------------------------------------
class TokenDataset(torch.utils.data.Dataset):
    """Tokenized samples as a torch `Dataset` (the online trainer's input; the cache reader's twin)."""

    def __init__(self, samples: Sequence[TokenizedSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.samples[index]
        ids = torch.from_numpy(s.input_ids.astype(np.int64))
        return {"input_ids": ids,  # [S] long
                "loss_mask": torch.from_numpy(s.loss_mask.astype(np.int64)),  # [S] long 0/1
                "attention_mask": torch.ones_like(ids)}  # [S] long


def collate_padded(items: Sequence[dict[str, torch.Tensor]], pad_token_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a list of per-sample dicts along dim 0 into a batch (`[B, S_max, ...]`).

    `input_ids` are padded with `pad_token_id`, everything else with zeros (so masks are 0 on padding).
    """
    if not items:
        raise ValueError("collate_padded got an empty batch")
    max_len = max(int(item["input_ids"].shape[0]) for item in items)
    batch: dict[str, torch.Tensor] = {}
    for key in items[0]:
        first = items[0][key]
        out = torch.full((len(items), max_len, *first.shape[1:]), pad_token_id if key == "input_ids" else 0,
                         dtype=first.dtype)
        for b, item in enumerate(items):
            out[b, : item[key].shape[0]] = item[key]
        batch[key] = out
    return batch
