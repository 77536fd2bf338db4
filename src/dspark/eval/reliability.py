"""Calibration metrics of the confidence head: reliability bins, ECE and ROC-AUC (SPEC §4, Fig. 6).

What is scored: the PREDICTED prefix survival a_k = Π_{i<=k} c_i of slot k against the OBSERVED prefix
survival y_k = [slots 1..k all accepted], over the rounds where slot k was verified (see
`dspark.eval.metrics.slot_outcomes`). Pure numpy functions.

* reliability bins: `num_bins` equal-width bins over [0, 1] (bin b holds b/B <= a < (b+1)/B, the last
  bin also holds 1.0); per bin the count, the mean prediction and the observed frequency.
* ECE = Σ_b (n_b / n) · |mean prediction_b − observed frequency_b| (empty bins contribute nothing).
* ROC-AUC of a_k as a score for y_k: the probability that a random surviving round scores higher than
  a random failing one, ties counting one half (Mann–Whitney with average ranks); NaN with one class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dspark.eval.metrics import nan_to_none, prefix_survival, slot_outcomes

DEFAULT_NUM_BINS = 10


@dataclass(frozen=True)
class ReliabilityBins:
    edges: np.ndarray  # [B + 1]
    count: np.ndarray  # [B] samples per bin
    mean_pred: np.ndarray  # [B] mean prediction (NaN for empty bins)
    observed: np.ndarray  # [B] observed positive frequency (NaN for empty bins)

    def to_dict(self) -> dict[str, list]:
        return {"edges": self.edges.tolist(), "count": self.count.tolist(),
                "mean_pred": nan_to_none(self.mean_pred), "observed": nan_to_none(self.observed)}


def bin_index(pred: np.ndarray, num_bins: int = DEFAULT_NUM_BINS) -> np.ndarray:
    """Equal-width bin of every prediction in [0, 1]: [...] -> [...] int in 0..num_bins-1."""
    return np.clip(np.floor(np.asarray(pred, dtype=np.float64) * num_bins), 0, num_bins - 1).astype(np.int64)


def reliability_bins(pred: np.ndarray, outcome: np.ndarray, num_bins: int = DEFAULT_NUM_BINS) -> ReliabilityBins:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)  # [n]
    outcome = np.asarray(outcome, dtype=np.float64).reshape(-1)  # [n]
    idx = bin_index(pred, num_bins)
    count = np.bincount(idx, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_pred = np.bincount(idx, weights=pred, minlength=num_bins) / count
        observed = np.bincount(idx, weights=outcome, minlength=num_bins) / count
    return ReliabilityBins(np.linspace(0.0, 1.0, num_bins + 1), count, mean_pred, observed)


def expected_calibration_error(pred: np.ndarray, outcome: np.ndarray, num_bins: int = DEFAULT_NUM_BINS) -> float:
    """ECE of predictions in [0, 1] against 0/1 outcomes; NaN for no samples."""
    pred = np.asarray(pred, dtype=np.float64).reshape(1, -1)
    return float(ece_grid(pred, outcome, num_bins)[0])


def ece_grid(pred: np.ndarray, outcome: np.ndarray, num_bins: int = DEFAULT_NUM_BINS) -> np.ndarray:
    """ECE of G candidate prediction vectors against one outcome vector: pred [G, n], outcome [n] -> [G]."""
    pred = np.asarray(pred, dtype=np.float64)  # [G, n]
    outcome = np.asarray(outcome, dtype=np.float64).reshape(-1)  # [n]
    g, n = pred.shape
    if n == 0:
        return np.full(g, np.nan)
    flat = (bin_index(pred, num_bins) + num_bins * np.arange(g)[:, None]).reshape(-1)  # [G·n] bin per (g, sample)
    size = g * num_bins
    pred_sum = np.bincount(flat, weights=pred.reshape(-1), minlength=size)  # [G·B]
    obs_sum = np.bincount(flat, weights=np.broadcast_to(outcome, (g, n)).reshape(-1), minlength=size)
    # Σ_b n_b/n · |Σpred_b/n_b − Σobs_b/n_b| = Σ_b |Σpred_b − Σobs_b| / n
    return np.abs(pred_sum - obs_sum).reshape(g, num_bins).sum(1) / n


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count 1/2); NaN unless both classes are present."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    avg_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of every distinct score
    ranks = avg_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def calibration_report(confidences: np.ndarray, accepted: np.ndarray, verified: np.ndarray,
                       num_bins: int = DEFAULT_NUM_BINS) -> dict[str, object]:
    """Per-slot and pooled ECE / ROC-AUC / reliability bins of a_k against observed prefix survival.

    confidences [N, γ] are conditional c_k; the report is JSON-ready (NaN -> None) except for the
    `ReliabilityBins` objects under "bins" (per slot) and "bins_pooled".
    """
    conf = np.asarray(confidences, dtype=np.float64)
    num_slots = conf.shape[1]
    observed, survived = slot_outcomes(accepted, verified, num_slots)  # [N, γ]
    a = prefix_survival(conf)  # [N, γ]
    per_slot, bins = [], []
    for k in range(num_slots):
        m = observed[:, k]
        pred, y = a[m, k], survived[m, k]
        bins.append(reliability_bins(pred, y, num_bins))
        per_slot.append({
            "slot": k + 1, "count": int(m.sum()),
            "mean_predicted": float(pred.mean()) if pred.size else math.nan,
            "observed": float(y.mean()) if y.size else math.nan,
            "ece": expected_calibration_error(pred, y, num_bins), "auc": roc_auc(pred, y),
        })
    pred_all, y_all = a[observed], survived[observed]
    return {
        "ece": nan_to_none(expected_calibration_error(pred_all, y_all, num_bins)),
        "auc": nan_to_none(roc_auc(pred_all, y_all)),
        "ece_mean_over_slots": nan_to_none(_nanmean([s["ece"] for s in per_slot])),
        "auc_mean_over_slots": nan_to_none(_nanmean([s["auc"] for s in per_slot])),
        "num_bins": num_bins,
        "per_slot": nan_to_none(per_slot),
        "bins": bins,
        "bins_pooled": reliability_bins(pred_all, y_all, num_bins),
    }


def _nanmean(values: list[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(arr)) if np.isfinite(arr).any() else math.nan
