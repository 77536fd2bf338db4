"""`flat_layout`: where one step's flat tokens sit and which logits rows each sequence reads, in numpy.

The runner's plan (`dspark.engine.runner.Runner._plan`) needs, for B sequences of ``qlens[b]`` query
tokens starting at position ``starts[b]``: every token's position and KV slot, the cumulative query
starts, the block tables padded to one width, and the logits rows (a decode row reads the logits of
all its tokens, a prefill row drawing its first token only its last one, other prefill rows none).
Built with a handful of whole-array numpy calls instead of per-token Python loops (the host time of a
step grows with the batch). `ragged_to_padded` packs lists of unequal length into one padded array.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass
class FlatLayout:
    positions: np.ndarray  # [N] absolute position of each flat token
    slots: np.ndarray  # [N] page * page_size + offset
    query_start: np.ndarray  # [B+1] cumulative query lengths
    tables: np.ndarray  # [B, max_pages] page ids, -1 padded
    logit_rows: np.ndarray  # [M] sequence of each logits row (M >= 1: [0] when no row reads any)
    logits_indices: np.ndarray  # [M] flat token of each logits row
    verify_logits: np.ndarray  # [B, K+1] logits row of slot j of seq b (clamped; prefill: its last, or 0)


def ragged_to_padded(rows: list[list[int]], width: int, pad: int) -> np.ndarray:
    """[len(rows), width] int64: row b holds rows[b] (len <= width), then `pad`."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    out = np.full((len(rows), width), pad, dtype=np.int64)
    total = int(lengths.sum())
    if total:
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=total)
        row = np.repeat(np.arange(len(rows)), lengths)
        col = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[row, col] = flat
    return out


def flat_layout(starts: np.ndarray, qlens: np.ndarray, decode: np.ndarray, sample_first: np.ndarray,
                tables: np.ndarray, page_size: int, num_drafts: int) -> FlatLayout:
    """The layout of B sequences (see the module docstring); `decode`, `sample_first`: [B] bool."""
    num_seqs = qlens.size
    ends = np.cumsum(qlens)
    query_start = np.concatenate([[0], ends]).astype(np.int64)
    total = int(ends[-1]) if num_seqs else 0
    row_of = np.repeat(np.arange(num_seqs), qlens)  # [N]
    positions = np.arange(total, dtype=np.int64) + np.repeat(starts - query_start[:-1], qlens)
    slots = tables[row_of, positions // page_size] * page_size + positions % page_size

    reads = np.where(decode, qlens, sample_first.astype(np.int64))  # logits rows per sequence
    first = np.cumsum(reads) - reads  # [B] its first logits row
    num_rows = int(reads.sum())
    logit_rows = np.repeat(np.arange(num_seqs, dtype=np.int64), reads)
    logits_indices = np.repeat(ends - reads, reads) + np.arange(num_rows) - np.repeat(first, reads)
    if num_rows == 0:  # only mid-prompt chunks: one logits row keeps every shape non-empty
        logit_rows = logits_indices = np.zeros(1, dtype=np.int64)
    slot = np.arange(num_drafts + 1)[None, :]  # [1, K+1]
    verify = first[:, None] + np.minimum(slot, (qlens - 1)[:, None])
    prefill_row = np.where(sample_first, first, 0)[:, None]
    verify_logits = np.where(decode[:, None], verify, prefill_row)
    return FlatLayout(positions, slots, query_start, tables, logit_rows, logits_indices.astype(np.int64),
                      verify_logits.astype(np.int64))
