"""`dspark.engine.layout` (the plan's numpy layout) against the per-token Python rules it replaced, and the
scheduler's whole-round commit against the token-by-token one (stop tokens, the length limit, both at once)."""

from __future__ import annotations

import numpy as np
import pytest

from dspark.engine.batch import slots_for
from dspark.engine.block_manager import BlockManager
from dspark.engine.layout import flat_layout, ragged_to_padded
from dspark.engine.options import EngineConfig, SamplingOptions
from dspark.engine.request import Request, Status
from dspark.engine.scheduler import Scheduler, survival_of
from dspark.scheduling.planner import VerifyPlanner


def reference_layout(rows: list[tuple[int, int, bool, bool, list[int]]], page_size: int, k: int) -> dict:
    """The runner's former loop: rows of (start, query length, decode, sample_first, block table)."""
    pos, slots, logit_rows, logits_indices, verify = [], [], [], [], []
    base = 0
    for b, (start, n, decode, sample_first, table) in enumerate(rows):
        pos += range(start, start + n)
        slots += slots_for(table, start, n, page_size)
        if not decode:
            row = len(logit_rows) if sample_first else 0
            if sample_first:
                logit_rows.append(b)
                logits_indices.append(base + n - 1)
            verify.append([row] * (k + 1))
        else:
            first = len(logit_rows)
            verify.append([first + min(j, n - 1) for j in range(k + 1)])
            logit_rows += [b] * n
            logits_indices += range(base, base + n)
        base += n
    if not logit_rows:
        logit_rows, logits_indices = [0], [0]
    return dict(positions=pos, slots=slots, logit_rows=logit_rows, logits_indices=logits_indices, verify_logits=verify)


@pytest.mark.parametrize("seed", range(6))
def test_flat_layout_matches_the_per_token_rules(seed):
    rng = np.random.default_rng(seed)
    page_size, k = 4, 3
    rows = []
    for _ in range(int(rng.integers(1, 7))):
        decode = bool(rng.random() < 0.6)
        n = int(rng.integers(1, k + 2)) if decode else int(rng.integers(1, 9))
        start = int(rng.integers(0, 20))
        table = rng.permutation(40)[: -(-(start + n) // page_size) + int(rng.integers(0, 2))].tolist()
        rows.append((start, n, decode, (not decode) and bool(rng.random() < 0.5), table))
    width = max(len(r[4]) for r in rows)
    tables = ragged_to_padded([r[4] for r in rows], width, -1)
    assert tables.tolist() == [r[4] + [-1] * (width - len(r[4])) for r in rows]
    lay = flat_layout(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.array([r[2] for r in rows]),
                      np.array([r[3] for r in rows]), tables, page_size, k)
    want = reference_layout(rows, page_size, k)
    for name, value in want.items():
        assert getattr(lay, name).tolist() == value, name
    assert lay.query_start.tolist() == np.concatenate([[0], np.cumsum([r[1] for r in rows])]).tolist()


def test_ragged_to_padded_of_empty_rows():
    assert ragged_to_padded([[], []], 3, 0).tolist() == [[0, 0, 0], [0, 0, 0]]
    assert ragged_to_padded([], 2, -1).shape == (0, 2)


def append_one_by_one(sched: Scheduler, req: Request, tokens: list[int]) -> tuple[list[int], int, str | None]:
    """The former token-by-token rule, on a copy of the request's bookkeeping."""
    out, stops = list(req.output_ids), set(req.options.stop_token_ids) | (set() if req.options.ignore_eos else sched.eos)
    for i, tok in enumerate(tokens):
        out.append(tok)
        if tok in stops:
            return out, i + 1, "stop" if tok in req.options.stop_token_ids else "eos"
        if min(req.options.max_tokens - len(out), sched.max_model_len - len(req.prompt_ids) - len(out)) <= 0:
            return out, i + 1, "length"
    return out, len(tokens), None


@pytest.mark.parametrize("tokens,max_tokens,stop,ignore_eos", [
    ([5, 6, 7], 10, (), False), ([5, 9, 7], 10, (), False), ([5, 6, 7], 2, (), False), ([5, 6, 9], 3, (), False),
    ([5, 6, 8], 3, (8,), False), ([9, 9], 10, (), True), ([8, 1, 2], 1, (8,), False), ([], 4, (), False),
    ([1, 2, 3, 4], 5, (3,), False)])
def test_whole_round_commit_matches_token_by_token(tokens, max_tokens, stop, ignore_eos):
    cfg = EngineConfig(page_size=4, num_pages=16, max_num_seqs=2, max_num_batched_tokens=16)
    sched = Scheduler(cfg, BlockManager(16, 4), VerifyPlanner("none"), 0, {9}, max_model_len=64)
    req = Request("r", [1, 2], SamplingOptions(max_tokens, stop_token_ids=stop, ignore_eos=ignore_eos), 0,
                  output_ids=[4], status=Status.RUNNING)
    sched.running["r"] = req
    want_ids, want_kept, want_reason = append_one_by_one(sched, req, tokens)
    assert sched._append(req, tokens) == want_kept
    assert req.output_ids == want_ids and req.finish_reason == want_reason


def test_survival_of_equals_numpy_cumprod():
    conf = [0.9, 0.73, 0.5, 1.0, 0.3333333333333333, 0.0, 0.7]
    assert survival_of(conf) == np.cumprod(np.asarray(conf, dtype=np.float64)).tolist()
