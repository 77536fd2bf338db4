"""SPS profiling of the engine itself: what one step costs, by verified tokens and by request count.

Where it sits: `profile_engine(llm) ─► SPSTable` — run by `dspark profile`, and by `LLM` at start when
its policy needs a table and none is given (`table_for(llm)` keeps it in a JSON cache keyed by target,
drafter, device, dtype and runner, and reuses it on the next start unless its per-request
curves hold a slow outlier: `cached_outliers`).

For each request count R, R requests with random prompts of `context` tokens decode in the engine
(nothing else runs). Then, for each width w (1 + drafts verified per request), the target forward of a
real verify step over B = R·w tokens is timed on its own (the same `FlatBatch` replayed: it rewrites
the same K/V), and whole engine steps are timed with no drafting (policy ``none``) and with drafting
(``fixed:γ``). The verify curve is the fastest time per B; ``request_cost(R)`` is a plain step's excess
over its verify forward (scheduling, sampling, bookkeeping, the drafter's absorb), and
``draft_cost(R)`` a drafted step's further excess over the verify forward of R·(γ+1) tokens (the
drafter's proposal and rejection sampling). Times are medians of `repeats` after `warmup` calls,
synchronised on CUDA, a call that captured a CUDA graph not counted (another is made in its place: a
step of a new shape, e.g. its drafter's context crossing a power of two, pays a capture of ~0.1-1 s); the first request count profiled gets `FIRST_WARMUP` more warm-up calls (it pays
the process's first calls: allocator growth, kernel selection, lazily built state).

Robustness (`fill_unmeasured`, `lower_envelope`): timing noise on a shared machine only ever makes a
call slower, so every measured curve (the verify times by B, ``request_cost`` and ``draft_cost`` by R) is replaced by
its lower monotone envelope, each point lowered to the fastest one at any larger key: a point slower
than a larger batch is an outlier (logged with its factor when more than `OUTLIER_FACTOR`), never a
floor that every larger batch inherits (the running-maximum envelope `SPSTable(monotone=True)` would
make of it). A per-request cost is a difference of two medians, so noise can also push it to <= 0
(stored as `MIN_COST`): such a point measured nothing and takes its neighbour's value first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from dspark.engine.options import SamplingOptions
from dspark.errors import ConfigError
from dspark.scheduling.planner import VerifyPlanner
from dspark.scheduling.sps_table import SPSTable

if TYPE_CHECKING:
    from dspark.engine.llm import LLM

log = logging.getLogger(__name__)

FIRST_WARMUP = 2  # extra warm-up calls of the first request count profiled (the first calls of the process)
OUTLIER_FACTOR = 2.0  # a point lowered by more than this factor is logged as an outlier
MIN_COST = 1e-6  # what a per-request cost that came out <= 0 is stored as
MAX_CAPTURE_RETRIES = 3  # calls a timing may add in place of calls that captured a CUDA graph


def lower_envelope(curve: Mapping[int, float], what: str = "curve") -> tuple[dict[int, float], list[str]]:
    """`curve` (seconds by a key: tokens or requests) made non-decreasing from below: each value becomes
    the smallest at its key or any larger one. Returns the envelope and one reason per point lowered by
    more than `OUTLIER_FACTOR` (a slow outlier). Raises ConfigError on a non-finite or negative value."""
    keys = sorted(int(k) for k in curve)
    values = [float(curve[k]) for k in keys]
    if any(not np.isfinite(v) or v < 0 for v in values):
        raise ConfigError(f"{what}: every time must be a finite number >= 0, got {dict(zip(keys, values))}")
    out: dict[int, float] = {}
    reasons = []
    low = float("inf")
    for k, v in zip(reversed(keys), reversed(values)):
        low = min(low, v)
        out[k] = low
        if v > OUTLIER_FACTOR * low:
            reasons.append(f"{what} at {k}: {v:.3g} s is {v / max(low, 1e-12):.1f}x the {low:.3g} s of a larger "
                           f"count (an outlier: lowered to it)")
    return dict(sorted(out.items())), reasons[::-1]


def fill_unmeasured(curve: Mapping[int, float], floor: float = MIN_COST, what: str = "curve"
                    ) -> tuple[dict[int, float], list[str]]:
    """A difference of two medians at or below `floor` (it came out <= 0: noise) measured nothing: such a
    point takes the value of the next larger key that measured something (else the previous one), so
    that `lower_envelope` does not pull every smaller key down to it. Returns the curve and one reason
    per point filled; a curve with nothing above the floor is returned as it is."""
    keys = sorted(int(k) for k in curve)
    measured = [k for k in keys if curve[k] > floor]
    out = {k: float(curve[k]) for k in keys}
    if not measured:
        return out, []
    reasons = []
    for k in keys:
        if curve[k] <= floor:
            src = next((m for m in measured if m > k), measured[-1])
            out[k] = float(curve[src])
            reasons.append(f"{what} at {k}: {curve[k]:.3g} s (the difference came out <= 0: noise) takes "
                           f"the {curve[src]:.3g} s measured at {src}")
    return out, reasons


def _sane(curve: Mapping[int, float], what: str, outliers: list[str]) -> dict[int, float]:
    filled, reasons = fill_unmeasured(curve, what=what)
    out, more = lower_envelope(filled, what)
    reasons += more
    for reason in reasons:
        log.warning("profile: %s", reason)
    outliers += reasons
    return out


def output_budget(gamma: int, num_widths: int, repeats: int, warmup: int) -> int:
    """Output tokens a profiled request may need (every timed step commits up to γ+1; the first request
    count's `FIRST_WARMUP` extra warm-up calls and `MAX_CAPTURE_RETRIES` included)."""
    return (warmup + FIRST_WARMUP + repeats + MAX_CAPTURE_RETRIES + 2) * (num_widths + 2) * (gamma + 1) + 8


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int,
                    captures: Callable[[], int] = lambda: 0) -> float:
    """Median seconds of `repeats` calls of `fn` after `warmup`. A call during which `captures()` (the CUDA
    graphs held so far) grew paid a capture, not a step: it is not timed and another call is made, up to
    `MAX_CAPTURE_RETRIES` times (then the capturing calls' times are kept, the envelope lowers them)."""
    times: list[float] = []
    capturing: list[float] = []
    for i in range(warmup + repeats + MAX_CAPTURE_RETRIES):
        if len(times) >= repeats:
            break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        held = captures()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        if i < warmup:
            continue
        (capturing if captures() != held else times).append(seconds)
    times += sorted(capturing)[: repeats - len(times)]
    return statistics.median(times)


def graph_count(llm: LLM) -> int:
    """CUDA graphs the engine's runner holds (whole steps and target forwards; 0 without graphs)."""
    return sum(len(getattr(part, "graphs", ())) for part in (llm.runner.step, llm.runner.target))


def _time_verify_forward(llm: LLM, width: int, repeats: int, warmup: int) -> float:
    """Median seconds of the target forward of one real step verifying width-1 drafts per request."""
    llm.scheduler.planner = VerifyPlanner(f"fixed:{width - 1}") if width > 1 else VerifyPlanner("none")
    llm.step()  # drafts of the right kind are waiting now
    out = llm.scheduler.schedule()
    plan = llm.runner._plan(out)
    layer_ids = llm.drafter.config.target_layer_ids if llm.drafter is not None else None
    seconds = median_seconds(lambda: llm.runner.target.forward(plan.batch, plan.seqs, layer_ids), llm.runner.device,
                              repeats, warmup, lambda: graph_count(llm))
    llm.scheduler.update(out, llm.runner.execute(out))
    return seconds


def _time_steps(llm: LLM, policy: str, repeats: int, warmup: int) -> float:
    llm.scheduler.planner = VerifyPlanner(policy)
    llm.step()
    return median_seconds(llm.step, llm.runner.device, repeats, warmup, lambda: graph_count(llm))


@torch.no_grad()
def profile_engine(llm: LLM, requests: Sequence[int] = (1, 8, 32), widths: Sequence[int] = (1, 2, 4, 8),
                   context: int = 64, repeats: int = 5, warmup: int = 2, seed: int = 0, monotone: bool = True
                   ) -> tuple[SPSTable, list[dict]]:
    """Measure the engine's table (see the module docstring); returns it and the raw rows."""
    if not requests or min(requests) < 1 or not widths or min(widths) < 1:
        raise ConfigError(f"requests and widths must be non-empty lists of integers >= 1, got {requests} / {widths}")
    if context < 1 or repeats < 1 or warmup < 0:
        raise ConfigError("context and repeats must be >= 1 and warmup >= 0")
    if llm.scheduler.has_unfinished():
        raise ConfigError("profile an idle engine (requests are running)")
    gamma = llm.num_drafts
    widths = sorted({int(w) for w in widths if w - 1 <= gamma} | ({gamma + 1} if gamma else set()) | {1})
    budget = output_budget(gamma, len(widths), repeats, warmup)
    rng = np.random.default_rng(seed)
    saved = llm.scheduler.planner
    rows: list[dict] = []
    best: dict[int, float] = {}
    request_cost: dict[int, float] = {}
    draft_cost: dict[int, float] = {}
    try:
        for n, r in enumerate(sorted({int(x) for x in requests})):
            warm = warmup + (FIRST_WARMUP if n == 0 else 0)
            if r > llm.config.max_num_seqs:
                raise ConfigError(f"cannot profile {r} requests with max_num_seqs={llm.config.max_num_seqs}")
            ids = [llm.add_request(rng.integers(0, llm.target.vocab_size, context).tolist(),
                                   SamplingOptions(budget, temperature=1.0, seed=seed + i, ignore_eos=True),
                                   request_id=f"profile-{r}-{i}") for i in range(r)]
            llm.scheduler.planner = VerifyPlanner(f"fixed:{gamma}") if gamma else VerifyPlanner("none")
            while any(llm.request(i).in_prefill or not llm.request(i).output_ids for i in ids):
                llm.step()
            verify = {}
            for w in widths:
                verify[w] = _time_verify_forward(llm, w, repeats, warm)
                rows.append({"requests": r, "width": w, "tokens": r * w, "seconds": verify[w]})
                best[r * w] = min(verify[w], best.get(r * w, float("inf")))
            plain = _time_steps(llm, "none", repeats, warm)
            request_cost[r] = max(plain - verify[1], MIN_COST)
            row = {"requests": r, "plain_step_seconds": plain, "request_seconds": request_cost[r]}
            if gamma:
                drafted = _time_steps(llm, f"fixed:{gamma}", repeats, warm)
                draft_cost[r] = max(drafted - verify[gamma + 1] - request_cost[r], MIN_COST)
                row.update(drafted_step_seconds=drafted, draft_seconds=draft_cost[r])
            rows.append(row)
            for i in ids:
                llm.abort(i)
            llm.step()  # hand the released state to the runner
    finally:
        llm.scheduler.planner = saved
        for req in list(llm.scheduler.requests):
            if req.startswith("profile-"):
                llm.abort(req)
                del llm.scheduler.requests[req]
    outliers: list[str] = []
    best = _sane(best, "verify forward by tokens", outliers)
    request_cost = _sane(request_cost, "request cost by requests", outliers)
    draft_cost = _sane(draft_cost, "draft cost by requests", outliers) if draft_cost else draft_cost
    tokens = sorted(best)
    meta = {"source": "dspark profile (engine)", "device": str(llm.runner.device), "runner": type(llm.runner.target).__name__,
            "context": context, "widths": widths, "repeats": repeats, "dtype": str(llm.target.dtype),
            **({"outliers": outliers} if outliers else {})}
    table = SPSTable(tokens, [1.0 / best[b] for b in tokens], draft_cost or None, request_cost=request_cost,
                     monotone=monotone, meta=meta)
    return table, rows


# verify widths of the start-up profile: with its request counts they land on the CUDA-graph ladder's
# powers of two and its halfway rungs (R·3, R·6: 48, 96, 192, 384, 768, 1536), which a padded table prices
PROFILE_WIDTHS = (1, 2, 3, 4, 6, 8)


def startup_profile(llm: LLM) -> tuple[list[int], int]:
    """Request counts and context of the start-up profile: 1, 4, 16, 64, 256 up to max_num_seqs (and it),
    at `EngineConfig.profile_context` (default 64, at most an eighth of max_model_len)."""
    limit = llm.config.max_num_seqs
    requests = sorted({r for r in (1, 4, 16, 64, 256) if r <= limit} | {limit})
    context = llm.config.profile_context or min(64, max(8, llm.max_model_len // 8))
    room = llm.max_model_len - output_budget(llm.num_drafts, len(PROFILE_WIDTHS) + 1, 3, 1)
    return requests, max(8, min(context, room))


def cache_key(llm: LLM) -> str:
    """Target, drafter, device, dtype, runner and the profile's shape: what the table depends on."""
    requests, context = startup_profile(llm)
    parts = {"target": llm.target.fingerprint(), "runner": type(llm.runner.target).__name__,
             "device": torch.cuda.get_device_name(llm.runner.device) if llm.runner.device.type == "cuda" else "cpu",
             "dtype": str(llm.target.dtype), "page_size": llm.config.page_size, "requests": requests,
             "context": context, "widths": PROFILE_WIDTHS,
             "timing": "captures excluded"}  # tables timed with captures inside are profiled again
    if llm.drafter is not None:
        weights = hashlib.sha256()
        for name, p in sorted(llm.drafter.state_dict().items()):
            weights.update(name.encode())
            weights.update(p.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
        parts["drafter"] = json.dumps(llm.drafter.config.to_dict(), sort_keys=True, default=str) + weights.hexdigest()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def cached_outliers(table: SPSTable) -> list[str]:
    """The slow outliers (`lower_envelope`) of a table's per-request curves: a cached table profiled before
    the envelope existed (or written by hand) may hold a first-call or a noisy point; it is re-profiled."""
    data = table.to_dict()
    reasons: list[str] = []
    for key in ("request_cost", "draft_cost"):
        if key in data:
            curve = dict(zip(data[key]["requests"], data[key]["seconds"]))
            filled, gaps = fill_unmeasured(curve, what=key.replace("_", " "))
            reasons += gaps + lower_envelope(filled, key.replace("_", " "))[1]
    return reasons


def cache_dir() -> Path:
    return Path(os.environ.get("DSPARK_CACHE", Path.home() / ".cache" / "dspark")) / "sps"


def table_for(llm: LLM) -> SPSTable:
    """The engine's SPS table: from the cache if this exact setup was profiled before, else measured now."""
    path = cache_dir() / f"{cache_key(llm)}.json"
    if path.is_file():
        try:
            cached = SPSTable.load(path)
            reasons = cached_outliers(cached)
            if not reasons:
                log.info("SPS table from %s", path)
                return cached
            log.warning("re-profiling: the cached SPS table %s has outliers (%s)", path, "; ".join(reasons))
        except Exception as exc:  # a corrupt cache entry is re-measured, never fatal
            log.warning("ignoring unreadable SPS cache %s (%s)", path, exc)
    requests, context = startup_profile(llm)
    log.info("profiling the engine's SPS table (requests %s, context %d); cached at %s", requests, context, path)
    table, _ = profile_engine(llm, requests=requests, widths=PROFILE_WIDTHS, context=context, repeats=3, warmup=1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.save(path)
    except OSError as exc:
        log.warning("could not cache the SPS table at %s (%s)", path, exc)
    return table
