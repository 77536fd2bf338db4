"""The evaluation report: per-dataset and per-domain τ and acceptance, threshold sweep, calibration.

    PromptSetRun[] (traces with RAW confidences) ─ build_report ─► JSON-ready dict (+ reliability bins)

τ is pooled over the rounds of one dataset; a domain's τ is the macro-average of its datasets' τ and
the overall `macro_tau` the macro-average over domains (SPEC §4). Acceptance curves of a domain pool
its rounds. Calibration compares the raw confidences with calibrated ones: the checkpoint's stored
STS temperatures when it has them (held-out by construction), else temperatures cross-fitted on this
run (two folds split by request, each fold calibrated by the other's fit), so "after" is never scored
on the rounds it was fitted on. The threshold sweep replays the calibrated confidences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dspark.eval.calibration import apply_temperatures, confidence_logits, cross_fit_confidences
from dspark.eval.metrics import DEFAULT_THRESHOLDS, acceptance_summary, macro_mean, nan_to_none, threshold_sweep
from dspark.eval.reliability import DEFAULT_NUM_BINS, ReliabilityBins, calibration_report
from dspark.eval.runner import PromptSetRun, combined_trace
from dspark.eval.traces import Trace


@dataclass
class EvalReport:
    summary: dict[str, Any]  # JSON-ready
    trace: Trace  # all rounds, `confidences` set to the calibrated values
    bins_before: list[ReliabilityBins] | None = None  # per slot
    bins_after: list[ReliabilityBins] | None = None


def calibrate_trace(trace: Trace, stored: Sequence[float] | None, num_bins: int = DEFAULT_NUM_BINS
                    ) -> tuple[Trace, dict[str, Any], list[ReliabilityBins], list[ReliabilityBins]]:
    """Calibrated confidences for `trace` and the before/after report (see the module docstring)."""
    raw = trace.raw_confidences
    logits = confidence_logits(raw)  # [N, γ]
    if stored is not None:
        after = apply_temperatures(logits, stored)
        temps, source = list(stored), "checkpoint"
    else:
        after, fitted = cross_fit_confidences(logits, trace.accepted, trace.verified, trace.request, folds=2,
                                              num_bins=num_bins)
        temps, source = fitted.tolist(), "cross-fit (2 folds by request)"
    before_rep = calibration_report(raw, trace.accepted, trace.verified, num_bins)
    after_rep = calibration_report(after, trace.accepted, trace.verified, num_bins)
    bins_before, bins_after = before_rep.pop("bins"), after_rep.pop("bins")
    for rep in (before_rep, after_rep):
        rep["bins_pooled"] = rep["bins_pooled"].to_dict()
    summary = {"source": source, "temperatures": temps, "before": before_rep, "after": after_rep}
    return trace.with_confidences(after), summary, bins_before, bins_after


def build_report(runs: Sequence[PromptSetRun], stored_temperatures: Sequence[float] | None = None,
                 thresholds: Sequence[float] = DEFAULT_THRESHOLDS, num_bins: int = DEFAULT_NUM_BINS) -> EvalReport:
    trace = combined_trace(runs)
    num_slots = trace.num_slots
    datasets: dict[str, dict[str, Any]] = {}
    for run in runs:
        t = run.trace
        entry = {"domain": run.prompt_set.domain, "num_prompts": run.num_prompts, "num_skipped": run.num_skipped,
                 "generated_tokens": run.num_generated, "wall_s": round(run.wall_s, 3)}
        entry.update(acceptance_summary(t.accepted, t.verified, num_slots, t.committed, t.stopped))
        datasets[run.prompt_set.name] = entry
    domains: dict[str, dict[str, Any]] = {}
    for name in sorted({e["domain"] for e in datasets.values()}):
        members = [d for d, e in datasets.items() if e["domain"] == name]
        mask = np.isin(trace.domain, [name])
        pooled = acceptance_summary(trace.accepted[mask], trace.verified[mask], num_slots, trace.committed[mask],
                                    None if trace.stopped is None else trace.stopped[mask])
        domains[name] = {"datasets": members, "tau": macro_mean([datasets[d]["tau"] for d in members]),
                         "num_rounds": pooled["num_rounds"],
                         "accept_rate_conditional": pooled["accept_rate_conditional"],
                         "accept_rate_unconditional": pooled["accept_rate_unconditional"]}
    overall = acceptance_summary(trace.accepted, trace.verified, num_slots, trace.committed, trace.stopped)
    summary: dict[str, Any] = {
        "num_slots": num_slots,
        "macro_tau": macro_mean([d["tau"] for d in domains.values()]),
        "tau_all_rounds": overall["tau"],
        "num_rounds": overall["num_rounds"],
        "accept_rate_conditional": overall["accept_rate_conditional"],
        "accept_rate_unconditional": overall["accept_rate_unconditional"],
        "datasets": datasets,
        "domains": domains,
        "threshold_sweep": None,
        "calibration": None,
    }
    report = EvalReport(summary, trace)
    if trace.has_confidence:
        trace, calib, report.bins_before, report.bins_after = calibrate_trace(trace, stored_temperatures, num_bins)
        report.trace = trace
        summary["calibration"] = calib
        summary["threshold_sweep"] = nan_to_none(
            threshold_sweep(trace.scheduler_confidences, trace.accepted, trace.verified, thresholds))
    return report
