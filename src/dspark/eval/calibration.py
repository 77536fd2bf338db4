"""Sequential Temperature Scaling (STS, SPEC §2.4): per-slot temperatures for the confidence head.

    calibrated c_k = σ(logit_k / T_k),  a_k = Π_{i<=k} c_i

Fitting runs left to right over the slots. For slot k the temperatures of slots < k are already fixed,
so a_{k-1} is known for every round; T_k is the grid value that minimises the ECE of
a_k = a_{k-1} · σ(logit_k / T) against the observed prefix survival y_k (slots 1..k all accepted), over
the rounds where slot k was verified. Ties go to the temperature closest to 1. A slot with fewer than
`min_events` survivals or failures keeps T = 1: with a handful of events (deep slots of a weak
drafter) the grid would chase noise, e.g. a tiny T that saturates every confidence. A positive temperature
keeps the order of every slot's confidences (order-preserving), so per-slot ROC-AUC of c_k does not move.

Where it sits: `dspark calibrate` (fit on held-out rounds, store in the checkpoint) and `dspark eval`
(cross-fitted when the checkpoint has no temperatures). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dspark.eval.metrics import slot_outcomes
from dspark.eval.reliability import DEFAULT_NUM_BINS, ece_grid

LOGIT_EPS = 1e-6  # confidences are stored as float32 probabilities; clamp before taking the logit
MIN_EVENTS = 10  # survivals and failures a slot needs before its temperature is fitted


def default_grid() -> np.ndarray:
    """Candidate temperatures: 321 log-spaced values in [1/20, 20], with 1.0 exactly among them."""
    return np.unique(np.concatenate([np.geomspace(0.05, 20.0, 321), [1.0]]))


def confidence_logits(confidences: np.ndarray, eps: float = LOGIT_EPS) -> np.ndarray:
    """logit(c) with c clamped to [eps, 1 - eps]: [..., γ] -> [..., γ]."""
    c = np.clip(np.asarray(confidences, dtype=np.float64), eps, 1.0 - eps)
    return np.log(c) - np.log1p(-c)


def apply_temperatures(logits: np.ndarray, temperatures: np.ndarray | list[float] | None) -> np.ndarray:
    """σ(logit_k / T_k) per slot: logits [N, γ], temperatures [γ] (None: plain σ) -> [N, γ]."""
    z = np.asarray(logits, dtype=np.float64)
    if temperatures is not None:
        temps = np.asarray(temperatures, dtype=np.float64)[: z.shape[-1]]
        if np.any(temps <= 0):
            raise ValueError(f"temperatures must be positive, got {temps.tolist()}")
        z = z / temps
    return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True)
class STSFit:
    temperatures: np.ndarray  # [γ]
    ece_before: np.ndarray  # [γ] ECE of the raw a_k on the fitting rounds (NaN for unobserved slots)
    ece_after: np.ndarray  # [γ] ECE of the calibrated a_k on the fitting rounds
    count: np.ndarray  # [γ] rounds where the slot was verified


def fit_sts(logits: np.ndarray, accepted: np.ndarray, verified: np.ndarray, grid: np.ndarray | None = None,
            num_bins: int = DEFAULT_NUM_BINS, min_events: int = MIN_EVENTS) -> STSFit:
    """Fit one temperature per slot, left to right (see the module docstring).

    logits [N, γ] are the RAW confidence logits; accepted / verified [N] the round outcomes. A slot with
    fewer than `min_events` observed survivals or failures keeps T = 1.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be [N, γ], got shape {z.shape}")
    grid = default_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    if grid.size == 0 or np.any(grid <= 0):
        raise ValueError("the temperature grid must hold positive values")
    num_slots = z.shape[1]
    observed, survived = slot_outcomes(accepted, verified, num_slots)  # [N, γ]
    raw = 1.0 / (1.0 + np.exp(-z))  # [N, γ]
    raw_prefix = np.ones(z.shape[0])
    prefix = np.ones(z.shape[0])  # calibrated a_{k-1} for every round
    closeness = np.abs(np.log(grid))  # tie-break towards T = 1
    temps, before, after = np.ones(num_slots), np.full(num_slots, np.nan), np.full(num_slots, np.nan)
    for k in range(num_slots):
        m = observed[:, k]
        y = survived[m, k]
        raw_prefix = raw_prefix * raw[:, k]
        if m.any():
            before[k] = ece_grid(raw_prefix[m][None, :], y, num_bins)[0]
            cand = prefix[m][None, :] / (1.0 + np.exp(-z[m, k][None, :] / grid[:, None]))  # [G, n]
            eces = ece_grid(cand, y, num_bins)  # [G]
            if min(int(y.sum()), int((~y).sum())) >= min_events:
                best = np.flatnonzero(eces <= eces.min() + 1e-12)
                choice = best[np.argmin(closeness[best])]
            else:
                choice = int(np.argmin(closeness))  # T = 1
            temps[k], after[k] = grid[choice], eces[choice]
        prefix = prefix / (1.0 + np.exp(-z[:, k] / temps[k]))
    return STSFit(temps, before, after, observed.sum(0))


def cross_fit_confidences(logits: np.ndarray, accepted: np.ndarray, verified: np.ndarray, groups: np.ndarray,
                          folds: int = 2, grid: np.ndarray | None = None, num_bins: int = DEFAULT_NUM_BINS,
                          min_events: int = MIN_EVENTS) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold calibrated confidences: rounds are split by `groups` (e.g. request id) into `folds`
    parts; each part is calibrated with temperatures fitted on the others. Returns (confidences [N, γ],
    temperatures fitted on all rounds [γ]) so a report can show held-out numbers and the final fit.
    """
    z = np.asarray(logits, dtype=np.float64)
    accepted, verified = np.asarray(accepted), np.asarray(verified)
    groups = np.asarray(groups)
    _, group_idx = np.unique(groups, return_inverse=True)
    fold = group_idx % folds  # [N] fold of every round (whole requests stay together)
    out = np.empty_like(z)
    for f in range(folds):
        test = fold == f
        if not test.any():
            continue
        train = ~test
        temps = fit_sts(z[train], accepted[train], verified[train], grid, num_bins, min_events).temperatures \
            if train.any() else np.ones(z.shape[1])
        out[test] = apply_temperatures(z[test], temps)
    return out, fit_sts(z, accepted, verified, grid, num_bins, min_events).temperatures
