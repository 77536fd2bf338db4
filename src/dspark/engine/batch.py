"""`FlatBatch`: the tokens of one engine step, back to back across requests, and where their K/V go.

Every request contributes a contiguous run of query tokens (a prefill chunk, or a verify block
``[anchor, drafts...]`` of any length); there is no padding between requests. Sequence ``b`` owns flat
tokens ``query_start[b] : query_start[b+1]`` at absolute positions ``context_lens[b] ...``; those
positions attend to the ``context_lens[b]`` cached positions before them (read through
``block_tables[b]``) and causally to each other. Their K/V are written to ``slot_mapping`` first.

Optional host-side bounds (Python ints, None = unknown): ``max_query_len`` >= every query run and
``max_context_len`` >= every ``context_lens[b]``. Kernels that size their launch from them (Triton
paged attention, CUDA graphs) then never read the device; without them they read the maxima (a sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FlatBatch:
    input_ids: torch.Tensor  # [N] long
    positions: torch.Tensor  # [N] long, absolute position of each token in its sequence
    slot_mapping: torch.Tensor  # [N] long, page * page_size + offset (< 0: do not store)
    query_start: torch.Tensor  # [B+1] long, cumulative query lengths (query_start[0] = 0)
    context_lens: torch.Tensor  # [B] long, positions already cached before this step's tokens
    block_tables: torch.Tensor  # [B, max_pages] int32, page ids (-1 = unused)
    logits_indices: torch.Tensor  # [M] long, flat tokens whose next-token logits are needed
    max_query_len: int | None = None  # host upper bound of query_lens().max() (None: read it off the device)
    max_context_len: int | None = None  # host upper bound of context_lens.max()
    # a mixed step (prefill chunks beside decode / verify rows): the decode rows' host bound on their query
    # length, below max_query_len (attention sizes its tiles for each kind); None: one kind of sequence
    short_query_len: int | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.context_lens.shape[0])

    def query_lens(self) -> torch.Tensor:
        return self.query_start[1:] - self.query_start[:-1]  # [B]

    def seq_ids(self) -> torch.Tensor:
        """[N] index of the sequence each flat token belongs to."""
        return torch.repeat_interleave(torch.arange(self.num_seqs, device=self.input_ids.device), self.query_lens())

    def to(self, device: torch.device | str) -> "FlatBatch":
        return FlatBatch(*(t.to(device) for t in (self.input_ids, self.positions, self.slot_mapping, self.query_start,
                                                   self.context_lens, self.block_tables, self.logits_indices)),
                         max_query_len=self.max_query_len, max_context_len=self.max_context_len,
                         short_query_len=self.short_query_len)

    def host_bounds(self) -> tuple[int, int]:
        """(max query length, max context length): the host fields when set, else read off the device (syncs)."""
        q = self.max_query_len
        if q is None:
            q = int(self.query_lens().max()) if self.num_seqs else 0
        c = self.max_context_len
        if c is None:
            c = int(self.context_lens.max()) if self.num_seqs else 0
        return q, c


def slots_for(block_table: list[int], start: int, count: int, page_size: int) -> list[int]:
    """Flat slot ids of positions start..start+count-1 through one request's block table."""
    return [block_table[p // page_size] * page_size + p % page_size for p in range(start, start + count)]
