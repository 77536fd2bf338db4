"""Step-cost terms the SPS table leaves out, measured on a live engine: a prefill chunk beside decoding rows, a
longer context per decoding row.

Where it sits: `dspark.eval.sim_check.engine_terms` calls both and hands the results to the simulator's
`dspark.sim.cost.StepCost`. Each times real engine steps (`dspark.engine.profile.median_seconds`: a step
that captured a CUDA graph is not counted) on requests it starts and releases itself; the engine must be
idle. On a shared CPU the numbers are noise; they mean something on the GPU.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dspark.errors import ConfigError
from dspark.sim.cost import PrefillCost, RequestCurve

if TYPE_CHECKING:
    from dspark.engine.llm import LLM

log = logging.getLogger(__name__)

PREFILL_REQUESTS = (0, 1, 4, 16, 64)  # decoding rows beside the measured prefill (0: a step of prefill alone)


def _start_decoding(llm: LLM, num: int, context: int, max_tokens: int, rng: np.random.Generator, tag: str) -> list[str]:
    """`num` requests of random `context`-token prompts, stepped until every one decodes (as `profile_engine`)."""
    from dspark.engine.options import SamplingOptions
    from dspark.scheduling.planner import VerifyPlanner

    ids = [llm.add_request(rng.integers(0, llm.target.vocab_size, context).tolist(),
                           SamplingOptions(max_tokens, temperature=1.0, seed=i, ignore_eos=True), request_id=f"{tag}-{i}")
           for i in range(num)]
    llm.scheduler.planner = VerifyPlanner(f"fixed:{llm.num_drafts}") if llm.num_drafts else VerifyPlanner("none")
    while any(llm.request(i).in_prefill or not llm.request(i).output_ids for i in ids):
        llm.step()
    return ids


def _drop(llm: LLM, ids: Sequence[str]) -> None:
    for rid in ids:
        llm.abort(rid)
        llm.release(rid)
    llm.step()  # hand the released state to the runner


def _fit_prefill(rows: list[dict[str, float]]) -> PrefillCost:
    """One mode's `PrefillCost` from its rows: per-token and per-chunk slopes (medians over R), then the
    fixed part per R as the mean residual of its three measurements. Negative values (noise) become 0."""
    token_s = max(0.0, float(np.median([(r["long"] - r["one"]) / r["prompt_len"] for r in rows])))
    row_s = max(0.0, float(np.median([r["two"] - r["long"] for r in rows])))
    fixed = []
    for r in rows:
        resid = [r["one"] - token_s * r["prompt_len"], r["long"] - 2 * token_s * r["prompt_len"],
                 r["two"] - row_s - 2 * token_s * r["prompt_len"]]
        fixed.append(max(0.0, float(np.mean(resid)) - r["base"]))
    return PrefillCost(RequestCurve(tuple(int(r["requests"]) for r in rows), tuple(fixed)), row_s, token_s)


def pages_fit(llm: LLM, num: int, tokens: int, extra_tokens: int = 0) -> bool:
    """Do `num` sequences of `tokens` tokens (and `extra_tokens` more in one sequence) fit the KV pool?"""
    per = llm.blocks.pages_for(tokens + llm.num_drafts + 1)
    return num * per + llm.blocks.pages_for(extra_tokens + llm.num_drafts + 1) <= llm.blocks.num_pages - 2


def measure_prefill_cost(llm: LLM, prompt_len: int, requests: Sequence[int] = PREFILL_REQUESTS, repeats: int = 3,
                         warmup: int = 1, seed: int = 0) -> tuple[dict[str, PrefillCost], list[dict[str, float]]]:
    """What a prefill chunk adds to an engine step, for steps that draft and steps that do not.

    For each R in `requests` (those that fit max_num_seqs and the KV pool), R requests decode (as in
    `profile_engine`, as long as max_model_len lets them last every timed step: `repeats` shrinks to fit);
    then, under policy ``none`` (plain steps) and ``fixed:γ`` (drafted steps), the median step with
    nothing else (`base`; 0 for R = 0), with one new request of L prompt tokens (`one`), of 2L (`long`)
    and with two of L (`two`) is timed; every new request asks for one token, so it finishes in that
    step (its first token sampled, its first proposal drafted in a drafted step) and is released.
    L = `prompt_len`, capped so that R verify blocks and 2L prompt tokens fit one step. The fit:
    `one` − base = step(R) + token_s·L, `long` adds token_s·L more, `two` adds row_s (`_fit_prefill`).
    Returns {"plain": ..., "drafted": ...} (only "plain" without a drafter) and the raw rows.
    """
    import torch

    from dspark.engine.options import SamplingOptions
    from dspark.engine.profile import MAX_CAPTURE_RETRIES, graph_count, median_seconds
    from dspark.scheduling.planner import VerifyPlanner

    if llm.has_unfinished():
        raise ConfigError("measure the prefill cost on an idle engine (requests are running)")
    gamma, cfg = llm.num_drafts, llm.config
    width = gamma + 1
    modes = {"plain": "none", **({"drafted": f"fixed:{gamma}"} if gamma else {})}
    while True:  # the decoding rows must last every timed step: fewer repeats where max_model_len is short
        decode_tokens = (len(modes) * (4 * (warmup + repeats + MAX_CAPTURE_RETRIES) + 2) + 2) * width + 8
        context = min(64, llm.max_model_len - decode_tokens - 2)
        if context >= 1 or repeats + warmup <= 1:
            break
        repeats, warmup = max(1, repeats - 1), max(0, warmup - (repeats == 1))
    if context < 1:
        log.info("measure_prefill_cost: max_model_len %d is too short for decoding rows beside a prefill: "
                 "steps of prefill alone only", llm.max_model_len)
        requests = [0]
    rng = np.random.default_rng(seed)
    probe = itertools.count()
    device = llm.runner.device
    captures = functools.partial(graph_count, llm)  # a step that captured a graph is not timed
    saved = llm.scheduler.planner
    preempted = llm.scheduler.num_preemptions
    raw: dict[str, list[dict[str, float]]] = {m: [] for m in modes}

    def with_prefill(lengths: tuple[int, ...]) -> None:
        rids = [llm.add_request(rng.integers(0, llm.target.vocab_size, n).tolist(),
                                SamplingOptions(1, temperature=1.0, seed=0, ignore_eos=True),
                                request_id=f"prefill-probe-{next(probe)}") for n in lengths]
        llm.step()
        for rid in rids:
            llm.abort(rid)  # a no-op once it finished (it asked for one token)
            llm.release(rid)

    try:
        with torch.no_grad():
            for r in sorted({int(x) for x in requests if 0 <= int(x) <= cfg.max_num_seqs - 2}):
                length = min(int(prompt_len), (cfg.max_num_batched_tokens - r * width) // 2, llm.max_model_len // 2 - 1)
                if length < 1 or not pages_fit(llm, r, context + decode_tokens, 4 * length):
                    log.info("measure_prefill_cost: %d rows beside a prefill do not fit; skipped", r)
                    continue
                ids = _start_decoding(llm, r, context, decode_tokens, rng, f"prefill-rows-{r}") if r else []
                for mode, policy in modes.items():
                    llm.scheduler.planner = VerifyPlanner(policy)
                    if r:
                        llm.step()  # the right kind of drafts are waiting now
                    row = {"requests": r, "prompt_len": length, "verify_tokens": r * (width if policy != "none" else 1),
                           "base": median_seconds(llm.step, device, repeats, warmup, captures) if r else 0.0}
                    for key, lengths in (("one", (length,)), ("long", (2 * length,)), ("two", (length, length))):
                        row[key] = median_seconds(lambda: with_prefill(lengths), device, repeats, warmup, captures)
                    raw[mode].append(row)
                _drop(llm, ids)
    finally:
        llm.scheduler.planner = saved
        for rid in [rid for rid in llm.scheduler.requests if rid.startswith(("prefill-rows-", "prefill-probe-"))]:
            llm.abort(rid)
            llm.release(rid)
    if llm.scheduler.num_preemptions != preempted:
        log.warning("measure_prefill_cost: %d preemptions (KV pool too small): the prefill costs are off",
                    llm.scheduler.num_preemptions - preempted)
    if not any(raw.values()):
        raise ConfigError("measure_prefill_cost: no request count fits max_num_seqs / max_num_batched_tokens")
    costs = {mode: _fit_prefill(rows) for mode, rows in raw.items() if rows}
    return costs, [{"mode": mode, **row} for mode, rows in raw.items() for row in rows]


def measure_context_cost(llm: LLM, requests: int, contexts: tuple[int, int], repeats: int = 3, warmup: int = 1,
                         seed: int = 0) -> tuple[float, float, list[dict]]:
    """Seconds per decoding row per context token: (every step, extra in a drafted step) and the raw rows.

    `profile_engine` at `requests` rows and the two `contexts`: plain steps give the first slope, drafted
    steps' excess over plain the second (the drafter's attention over its context). Negative slopes
    (noise) become 0.
    """
    from dspark.engine.profile import profile_engine

    lo, hi = sorted(int(c) for c in contexts)
    if lo < 1 or hi <= lo:
        raise ConfigError(f"context cost needs two contexts 1 <= lo < hi, got {contexts}")
    rows, steps = [], {}
    for c in (lo, hi):
        _, got = profile_engine(llm, requests=(requests,), widths=(1,), context=c, repeats=repeats, warmup=warmup,
                                seed=seed, monotone=False)
        summary = next(r for r in got if "plain_step_seconds" in r)
        steps[c] = (summary["plain_step_seconds"], summary.get("drafted_step_seconds", summary["plain_step_seconds"]))
        rows += [{"context": c, **r} for r in got]
    scale = requests * (hi - lo)
    plain = max(0.0, (steps[hi][0] - steps[lo][0]) / scale)
    drafted = max(0.0, (steps[hi][1] - steps[lo][1]) / scale - plain)
    return plain, drafted, rows
