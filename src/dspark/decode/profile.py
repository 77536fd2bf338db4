"""Profile an SPS table for the reference decoder: target verify-forward times and the drafter's cost.

Where it sits: `profile_sps(target, drafter) ─► SPSTable` (saved by `dspark profile`), read by the
scheduling policies and the draft gate (`--policy dspark+gate --sps FILE`) and by `dspark simulate --sps`.

For each request count R it prefills R random prompts of `context` tokens, then times rounds exactly as
the decoder runs them: one `TargetRunner.verify` over [R, w] tokens followed by a commit that keeps
nothing (so the context stays fixed), for each width w. Batch tokens B = R·w; where several (R, w) give
the same B the fastest time is kept. Times are medians of `repeats` calls after `warmup` calls,
synchronised on CUDA.

A round of the decoder costs more than its verify forward: sampling, acceptance and bookkeeping, and
in a drafted round the drafter plus rejection sampling. So with a drafter, whole decoder rounds are
timed too (`SpeculativeDecoder.generate`, the difference between a long and a short run over the
difference in rounds, which cancels the prefill): a plain round and a round verifying every draft.
Their excess over the matching verify forward becomes the table's `request_cost(R)` (paid by every
round) and `draft_cost(R)` (paid by drafted rounds only). The reference decoder is eager PyTorch, and
so is this table: it describes that decoder on that machine, not an optimised engine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dspark.decode.target_runner import TargetRunner
from dspark.errors import ConfigError
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
                context: int = 128, repeats: int = 5, warmup: int = 2, seed: int = 0, round_tokens: int = 64,
                monotone: bool = True) -> tuple[SPSTable, list[dict]]:
    """Measure the table; returns it and the raw rows ({requests, width, tokens, seconds} and round rows).

    `round_tokens`: new tokens of the long decoder run that times whole rounds (the short one makes a
    quarter); per-round costs grow with the generation (caches, bookkeeping), so use what you serve.
    `monotone`: store the table with the monotone envelope (launch-bound timings are noisy, and a dip
    would stop `dspark`'s early-stopping rule).
    """
    if not requests or min(requests) < 1 or not widths or min(widths) < 1:
        raise ConfigError(f"requests and widths must be non-empty lists of integers >= 1, got {requests} / {widths}")
    if context < 1 or repeats < 1 or warmup < 0 or round_tokens < 8:
        raise ConfigError("context and repeats must be >= 1, warmup >= 0 and round_tokens >= 8")
    device = target.device
    gen = torch.Generator().manual_seed(seed)
    layer_ids = drafter.config.target_layer_ids if drafter is not None else None
    rows: list[dict] = []
    best: dict[int, float] = {}
    verify_at: dict[tuple[int, int], float] = {}
    request_cost: dict[int, float] = {}
    draft_cost: dict[int, float] = {}
    for r in sorted(set(int(x) for x in requests)):
        prompts = torch.randint(0, target.vocab_size, (r, context), generator=gen).tolist()
        runner = TargetRunner(target, layer_ids)
        runner.prefill(prompts)
        for w in sorted(set(int(x) for x in widths)):
            seconds = _time_verify(runner, w, repeats, warmup, gen)
            rows.append({"requests": r, "width": w, "tokens": r * w, "seconds": seconds})
            best[r * w] = min(seconds, best.get(r * w, float("inf")))
            verify_at[r, w] = seconds
        if drafter is not None:
            del runner

            def verify_time(w: int) -> float:  # a drafted round's width may not be among --widths
                if (r, w) not in verify_at:
                    fresh = TargetRunner(target, layer_ids)
                    fresh.prefill(prompts)
                    verify_at[r, w] = _time_verify(fresh, w, repeats, warmup, gen)
                return verify_at[r, w]

            plain, drafted = _round_seconds(target, drafter, prompts, repeats, round_tokens // 4, round_tokens)
            request_cost[r] = max(plain - verify_time(1), 1e-6)
            draft_cost[r] = max(drafted - verify_time(drafter.config.num_drafts + 1) - request_cost[r], 1e-6)
            rows.append({"requests": r, "plain_round_seconds": plain, "drafted_round_seconds": drafted,
                         "request_seconds": request_cost[r], "draft_seconds": draft_cost[r]})
    tokens = sorted(best)
    meta = {"source": "dspark profile (reference decoder, eager PyTorch)", "device": str(device), "context": context,
            "widths": list(widths), "repeats": repeats, "round_tokens": round_tokens}
    table = SPSTable(tokens, [1.0 / best[b] for b in tokens], draft_cost or None, request_cost=request_cost or None,
                     monotone=monotone, meta=meta)
    return table, rows


def _time_verify(runner: TargetRunner, width: int, repeats: int, warmup: int, gen: torch.Generator) -> float:
    """Median seconds of one verify forward over [R, width] plus a commit that keeps nothing."""
    rows, device = runner.lengths.shape[0], runner.device
    tokens = torch.randint(0, runner.target.vocab_size, (rows, width), generator=gen).to(device)
    full, none = torch.full((rows,), width, device=device), torch.zeros(rows, dtype=torch.long, device=device)

    def verify_round() -> None:
        runner.verify(tokens, full)
        runner.commit(none, width)

    return _median_seconds(verify_round, device, repeats, warmup)


def _round_seconds(target: Any, drafter: Any, prompts: list[list[int]], repeats: int, short: int, long: int
                   ) -> tuple[float, float]:
    """Median seconds of one whole decoder round: plain, and drafted with every draft verified."""
    from dspark.decode.decoder import SpeculativeDecoder

    dec, device = SpeculativeDecoder(target, drafter), target.device

    def per_round(speculative: bool) -> float:
        def timed(tokens: int) -> tuple[float, int]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            out = dec.generate(prompts, tokens, temperature=1.0, seed=0, speculative=speculative)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - t0, max(len(res.rounds) for res in out)

        timed(short)  # warm-up
        samples = []
        for _ in range(repeats):
            (t_short, n_short), (t_long, n_long) = timed(short), timed(long)
            samples.append((t_long - t_short) / max(n_long - n_short, 1))
        return max(statistics.median(samples), 1e-6)

    return per_round(False), per_round(True)
