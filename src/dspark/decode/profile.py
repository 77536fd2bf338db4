"""Profile an SPS table for the reference decoder: target verify-forward times and the drafter's cost.

Where it sits: `profile_sps(target, drafter) ─► SPSTable` (saved by `dspark profile`), read by the
scheduling policies and the draft gate (`--policy dspark+gate --sps FILE`) and by `dspark simulate --sps`.

For each request count R it prefills R random prompts of `context` tokens, then times rounds exactly as
the decoder runs them: one `TargetRunner.verify` over [R, w] tokens followed by a commit that keeps
nothing (so the context stays fixed), for each width w. Batch tokens B = R·w; where several (R, w) give
the same B the fastest time is kept. The drafter's cost at R is the time of one `propose` that absorbs
two new positions per row and drafts a block (a typical round). Times are medians of `repeats` calls
after `warmup` calls, synchronised on CUDA. The reference decoder is eager PyTorch, and so is this
table: it describes that decoder on that machine, not an optimised engine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dspark.decode.target_runner import TargetRunner
from dspark.drafters.base import ContextUpdate
from dspark.errors import ConfigError
from dspark.sampling import SamplingParams
from dspark.scheduling import SPSTable


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def profile_sps(target: Any, drafter: Any = None, requests: Sequence[int] = (1, 8, 32, 128), widths: Sequence[int] = (1, 2, 4, 8),
                context: int = 128, repeats: int = 5, warmup: int = 2, seed: int = 0) -> tuple[SPSTable, list[dict]]:
    """Measure the table; returns it and the raw rows ({requests, width, tokens, seconds} and draft rows)."""
    if not requests or min(requests) < 1 or not widths or min(widths) < 1:
        raise ConfigError(f"requests and widths must be non-empty lists of integers >= 1, got {requests} / {widths}")
    if context < 1 or repeats < 1 or warmup < 0:
        raise ConfigError("context and repeats must be >= 1 and warmup >= 0")
    device = target.device
    gen = torch.Generator().manual_seed(seed)
    layer_ids = drafter.config.target_layer_ids if drafter is not None else None
    rows: list[dict] = []
    best: dict[int, float] = {}
    draft_cost: dict[int, float] = {}
    for r in sorted(set(int(x) for x in requests)):
        prompts = torch.randint(0, target.vocab_size, (r, context), generator=gen).tolist()
        runner = TargetRunner(target, layer_ids)
        runner.prefill(prompts)
        for w in sorted(set(int(x) for x in widths)):
            tokens = torch.randint(0, target.vocab_size, (r, w), generator=gen).to(device)
            full = torch.full((r,), w, device=device)
            none = torch.zeros(r, dtype=torch.long, device=device)

            def verify_round() -> None:
                runner.verify(tokens, full)
                runner.commit(none, w)

            seconds = _median_seconds(verify_round, device, repeats, warmup)
            rows.append({"requests": r, "width": w, "tokens": r * w, "seconds": seconds})
            best[r * w] = min(seconds, best.get(r * w, float("inf")))
        if drafter is not None:
            draft_cost[r] = _draft_seconds(drafter, runner, r, gen, repeats, warmup)
            rows.append({"requests": r, "draft_seconds": draft_cost[r]})
    tokens = sorted(best)
    meta = {"source": "dspark profile (reference decoder, eager PyTorch)", "device": str(device), "context": context,
            "widths": list(widths), "repeats": repeats}
    table = SPSTable(tokens, [1.0 / best[b] for b in tokens], draft_cost or None, meta=meta)
    return table, rows


def _draft_seconds(drafter: Any, runner: TargetRunner, rows: int, gen: torch.Generator, repeats: int, warmup: int) -> float:
    """Median seconds of one `propose` absorbing two positions per row, after the prompt was absorbed."""
    device = runner.device
    first = runner.verify(torch.randint(0, runner.target.vocab_size, (rows, 2), generator=gen).to(device),
                          torch.full((rows,), 2, device=device))
    runner.commit(torch.zeros(rows, dtype=torch.long, device=device), 2)
    ids = torch.randint(0, runner.target.vocab_size, (rows, 2), generator=gen).to(device)
    two = ContextUpdate(first.features, first.last_hidden, ids, torch.full((rows,), 2, device=device))
    state = drafter.new_state(rows, device)
    anchors = ids[:, -1]
    params = SamplingParams()
    draft_gen = torch.Generator(device=device).manual_seed(0)
    return _median_seconds(lambda: drafter.propose(state, two, anchors, params, draft_gen), device, repeats, warmup)
