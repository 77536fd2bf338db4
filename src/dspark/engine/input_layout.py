"""`InputLayout`: where every input of a graphed step sits in ONE packed byte buffer, for one graph shape.

Where it sits: `dspark.engine.graphed_step.GraphedStep` captures each graph over typed views of one
device byte buffer laid out by its shape's `InputLayout`, and each step the host writes the same
layout, padding included, into a pinned host buffer (`dspark.engine.step_inputs.StepInputs`), so one
host-to-device copy of ``layout.nbytes`` bytes is the step's whole input upload (no device fills).

A layout is a list of named `Field`s (dtype, padded shape, byte offset, padding value), each aligned to
``ALIGN`` bytes, described once in `input_layout`. The padding rules are the graphs' (see
`dspark.engine.graphed_target` and `dspark.engine.graphed_step`): tokens N .. N_pad have position 0 and
slot -1 and form one dummy sequence (its ``query_start`` entries are N_pad), rows B .. S_pad are empty
(context 0, an all -1 block table, no drafts verified), logits rows M .. M_pad read row 0, update
columns W .. W_pad are padding, temperature and top_p pad with 1. `template` is a layout's all-padding
contents (a step with no rows: also what a graph is warmed up and captured on); `write` puts a
`HostPlan` over it. Layouts of different shapes alias the same buffers: every step writes its whole
layout, and a graph only reads its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dspark.engine.host_plan import HostPlan

ALIGN = 256  # byte alignment of every field (the CUDA caching allocator's, so kernels see aligned pointers)


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str  # numpy / torch dtype name: int64, int32 or float32
    shape: tuple[int, ...]
    offset: int  # bytes from the buffer's start
    pad: float  # value of every padding entry

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class InputLayout:
    fields: tuple[Field, ...]
    nbytes: int  # the packed size (what one step copies)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)


# (field, HostPlan attribute it holds): written by `write`; every other field only holds padding
SOURCES = (("input_ids", "input_ids"), ("positions", "positions"), ("slot_mapping", "slots"),
           ("query_start", "query_start"), ("context_lens", "context_lens"), ("block_tables", "tables"),
           ("logits_indices", "logits_indices"), ("seeds", "seeds"), ("counters", "counters"),
           ("logit_rows", "logit_rows"), ("verify_logits", "verify_logits"), ("draft_ids", "draft_ids"),
           ("num_verify", "num_verify"), ("num_new", "num_new"), ("update_index", "update_index"),
           ("next_known", "next_known"), ("known_anchor", "known_anchor"), ("top_k", "top_k"),
           ("temperature", "temperature"), ("top_p", "top_p"), ("forced", "forced"), ("draft_index", "draft_index"))


def input_layout(num_tokens: int, num_seqs: int, logits_rows: int, gamma: int, width: int, max_pages: int,
                 forced: bool) -> InputLayout:
    """The layout of a graph of `num_tokens` tokens, `num_seqs` sequences (the dummy one included),
    `logits_rows` logits rows, γ = `gamma`, `width` update columns and block tables `max_pages` wide;
    `forced`: synthetic acceptance has a field. ``draft_index`` [S] is read by the output slices only."""
    n, s, m = num_tokens, num_seqs, logits_rows
    specs: list[tuple[str, str, tuple[int, ...], float]] = [
        ("input_ids", "int64", (n,), 0), ("positions", "int64", (n,), 0), ("slot_mapping", "int64", (n,), -1),
        ("logits_indices", "int64", (m,), 0), ("query_start", "int64", (s + 1,), n), ("context_lens", "int64", (s,), 0),
        ("seeds", "int64", (s,), 0), ("counters", "int64", (s,), 0), ("top_k", "int64", (s,), 0),
        ("logit_rows", "int64", (m,), 0), ("verify_logits", "int64", (s, gamma + 1), 0),
        ("draft_ids", "int64", (s, gamma), 0), ("num_verify", "int64", (s,), 0), ("num_new", "int64", (s,), 0),
        ("known_anchor", "int64", (s,), -1), ("update_index", "int64", (s, width), 0),
        ("next_known", "int64", (s, width), -1), ("draft_index", "int64", (s,), 0),
        ("block_tables", "int32", (s, max_pages), -1), ("temperature", "float32", (s,), 1.0),
        ("top_p", "float32", (s,), 1.0)]
    if forced:
        specs.append(("forced", "int64", (s,), 0))
    fields, offset = [], 0
    for name, dtype, shape, pad in specs:
        field = Field(name, dtype, shape, offset, pad)
        fields.append(field)
        offset += -(-field.nbytes // ALIGN) * ALIGN
    return InputLayout(tuple(fields), offset)


def host_views(layout: InputLayout, buffer: np.ndarray) -> dict[str, np.ndarray]:
    """Typed numpy views of every field over a uint8 `buffer` of at least ``layout.nbytes`` bytes."""
    return {f.name: buffer[f.offset: f.offset + f.nbytes].view(f.dtype).reshape(f.shape) for f in layout.fields}


def template(layout: InputLayout) -> np.ndarray:
    """The layout's all-padding contents (uint8 [nbytes]): a step without rows (``query_start[0]`` = 0)."""
    out = np.zeros(layout.nbytes, dtype=np.uint8)
    views = host_views(layout, out)
    for f in layout.fields:
        views[f.name][...] = f.pad
    views["query_start"][0] = 0
    return out


def write(views: dict[str, np.ndarray], host: HostPlan) -> None:
    """Put `host`'s values over views that hold the layout's `template` (their leading rows / columns)."""
    for name, attr in SOURCES:
        src = getattr(host, attr)
        if src is None or name not in views:
            continue
        dst = views[name]
        if src.ndim == 1:
            dst[: src.shape[0]] = src
        elif src.shape[1]:
            dst[: src.shape[0], : src.shape[1]] = src
