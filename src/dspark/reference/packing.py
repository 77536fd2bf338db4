"""Packed token streams for pretraining: a corpus split encoded into one flat array, then windows.

Between the tokenizer and the training loop of `dspark.reference.pretrain`. Every document becomes
`<|bos|> text <|endoftext|>` and the documents are concatenated (no padding, nothing wasted);
training batches are random windows of `seq_len + 1` tokens (inputs and shifted labels), evaluation
reads consecutive non-overlapping windows. For the train split, the chat documents of the corpus
(`chat_train.jsonl.gz`, rendered with the chat template) are appended, so the target learns the
format its prompts come in. Encoded streams can be cached as `.npy` keyed by the hashes of the
tokenizer and the split file.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from dspark.errors import DataError
from dspark.reference.corpus import read_documents
from dspark.reference.prompts import CHAT_FILE, read_chat_documents
from dspark.reference.tokenizer import BOS, EOS, render_chat

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenStream:
    """One split as a flat uint16 array, with what it was made of (for bits-per-byte)."""

    tokens: np.ndarray  # [N] uint16
    num_documents: int
    num_bytes: int


def _batched(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def encode_documents(tokenizer: Tokenizer, texts: Iterable[str], batch_size: int = 512) -> TokenStream:
    """`<|bos|> text <|endoftext|>` for every text, concatenated. Texts may contain special tokens."""
    bos, eos = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    pieces: list[np.ndarray] = []
    num_docs = num_bytes = 0
    for chunk in _batched(texts, batch_size):
        for encoding in encode(chunk, add_special_tokens=False):
            pieces.append(np.asarray([bos, *encoding.ids, eos], dtype=np.uint16))
        num_docs += len(chunk)
        num_bytes += sum(len(text.encode("utf-8")) for text in chunk)
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.uint16)
    return TokenStream(tokens=tokens, num_documents=num_docs, num_bytes=num_bytes)


def _chat_texts(corpus_dir: Path) -> Iterator[str]:
    """Rendered chat documents without the leading bos (encode_documents adds it)."""
    for messages in read_chat_documents(Path(corpus_dir) / CHAT_FILE):
        yield render_chat(messages)[len(BOS) :]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def load_split(
    corpus_dir: Path, tokenizer_dir: Path, split: str, with_chat: bool | None = None, cache_dir: Path | None = None
) -> TokenStream:
    """Encode one corpus split (train: plus chat documents unless with_chat=False), using the cache."""
    from dspark.reference.tokenizer import load_tokenizer

    corpus_dir, tokenizer_dir = Path(corpus_dir), Path(tokenizer_dir)
    with_chat = (split == "train") if with_chat is None else with_chat
    chat_path = corpus_dir / CHAT_FILE
    key_parts = [_file_digest(tokenizer_dir / "tokenizer.json"), _file_digest(corpus_dir / f"{split}.jsonl.gz")]
    if with_chat and chat_path.is_file():
        key_parts.append(_file_digest(chat_path))
    cache_path = Path(cache_dir) / f"{split}-{'-'.join(key_parts)}.npz" if cache_dir else None
    if cache_path is not None and cache_path.is_file():
        with np.load(cache_path) as saved:
            logger.info("token cache hit: %s", cache_path)
            return TokenStream(saved["tokens"], int(saved["num_documents"]), int(saved["num_bytes"]))
    tokenizer = load_tokenizer(tokenizer_dir)
    stream = encode_documents(tokenizer, (doc.text for doc in read_documents(corpus_dir, split)))
    if with_chat:
        chat = encode_documents(tokenizer, _chat_texts(corpus_dir))
        stream = TokenStream(
            np.concatenate([stream.tokens, chat.tokens]),
            stream.num_documents + chat.num_documents,
            stream.num_bytes + chat.num_bytes,
        )
    if stream.tokens.size == 0:
        raise DataError(f"split {split!r} of {corpus_dir} is empty")
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp.npz")
        np.savez(tmp, tokens=stream.tokens, num_documents=stream.num_documents, num_bytes=stream.num_bytes)
        tmp.replace(cache_path)
    logger.info("%s: %d documents, %d bytes, %d tokens", split, stream.num_documents, stream.num_bytes, stream.tokens.size)
    return stream


def random_windows(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """`batch_size` windows of `seq_len + 1` tokens at uniformly random offsets. -> [B, T+1] int64"""
    if tokens.numel() <= seq_len + 1:
        raise DataError(f"a token stream of {tokens.numel()} tokens is too short for seq_len {seq_len}")
    high = tokens.numel() - seq_len - 1
    starts = torch.randint(0, high + 1, (batch_size,), generator=generator, device=generator.device)
    offsets = torch.arange(seq_len + 1, device=tokens.device)
    return tokens[starts.to(tokens.device)[:, None] + offsets[None, :]].long()


def eval_windows(tokens: torch.Tensor, seq_len: int, max_tokens: int) -> torch.Tensor:
    """Consecutive non-overlapping windows covering up to max_tokens (at least one). -> [W, T+1]"""
    available = (tokens.numel() - 1) // seq_len
    if available < 1:
        raise DataError(f"a token stream of {tokens.numel()} tokens is too short for seq_len {seq_len}")
    count = max(1, min(available, max_tokens // seq_len))
    starts = torch.arange(count, device=tokens.device) * seq_len
    offsets = torch.arange(seq_len + 1, device=tokens.device)
    return tokens[starts[:, None] + offsets[None, :]].long()
