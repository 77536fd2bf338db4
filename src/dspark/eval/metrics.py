"""Acceptance metrics of speculative decoding, as pure functions of per-round arrays (SPEC §4).

Every function takes the columns of a round trace (`dspark.eval.traces.Trace`):

* `accepted [N]`: accepted drafts in the round (accept_len, 0..verified);
* `verified [N]`: drafts the target checked in the round (a fixed verification length, or fewer when
  the generation budget cut the last round);
* `confidences [N, γ]`: the drafter's conditional survival estimates c_1..c_γ (optional).

Slots are numbered 1..γ in the docs and 0..γ-1 in arrays. A slot k is OBSERVED in a round when it was
verified (k <= verified); the verification length never depends on the outcome (fixed length, budget),
so restricting to observed slots leaves the rates unbiased.

* τ: mean tokens per round including the recovered/bonus token: accepted + 1, or, in the round that
  ends a request at a stop token, the tokens up to and including it (DeepSpec's accept_len; a round
  whose commit the token budget cut still counts accepted + 1, as DeepSpec's does).
* conditional acceptance of slot k (the paper's Fig. 2): among rounds where slot k was verified and
  slots 1..k-1 were all accepted, the fraction where slot k was accepted.
* unconditional acceptance of slot k (DeepSpec's accept_rate@k, "prefix survival"): among rounds where
  slot k was verified, the fraction where slots 1..k were all accepted.
* threshold sweep (Fig. 5): replay every round with the verification length cut at the first slot
  whose confidence is below t; a slot's accept decision does not depend on how many slots are
  verified, so the replayed round accepts min(accepted, ℓ_t) drafts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dspark.scheduling.policy import threshold_lengths

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))  # 0.0, 0.1, ..., 0.9


def _as_int(a: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.int64).reshape(-1)


def slot_outcomes(accepted: np.ndarray, verified: np.ndarray, num_slots: int) -> tuple[np.ndarray, np.ndarray]:
    """(observed, survived), both [N, γ] bool: slot k verified; slots 1..k all accepted (and observed)."""
    accepted, verified = _as_int(accepted), _as_int(verified)
    k = np.arange(1, num_slots + 1)[None, :]  # [1, γ]
    observed = k <= verified[:, None]  # [N, γ]
    survived = (accepted[:, None] >= k) & observed  # [N, γ]
    return observed, survived


def round_tokens(accepted: np.ndarray, committed: np.ndarray | None = None, stopped: np.ndarray | None = None) -> np.ndarray:
    """What each round counts for τ: accepted + 1, or its committed tokens where it ended at a stop token."""
    accepted = _as_int(accepted)
    tokens = accepted + 1
    if committed is not None and stopped is not None:
        tokens = np.where(np.asarray(stopped, dtype=bool), _as_int(committed), tokens)
    return tokens


def tau(accepted: np.ndarray, committed: np.ndarray | None = None, stopped: np.ndarray | None = None) -> float:
    """Mean `round_tokens` per round (the one definition of τ); NaN without rounds."""
    tokens = round_tokens(accepted, committed, stopped)
    return float(np.mean(tokens)) if tokens.size else math.nan


def conditional_acceptance(accepted: np.ndarray, verified: np.ndarray, num_slots: int) -> np.ndarray:
    """Per slot: P(slot k accepted | slot k verified, slots < k accepted) -> [γ] (NaN where never reached)."""
    accepted = _as_int(accepted)
    observed, survived = slot_outcomes(accepted, verified, num_slots)
    k = np.arange(1, num_slots + 1)[None, :]
    reached = observed & (accepted[:, None] >= k - 1)  # [N, γ]
    return _ratio(survived.sum(0), reached.sum(0))


def unconditional_acceptance(accepted: np.ndarray, verified: np.ndarray, num_slots: int) -> np.ndarray:
    """Per slot: P(slots 1..k all accepted | slot k verified) (accept_rate@k) -> [γ] (NaN where never verified)."""
    observed, survived = slot_outcomes(accepted, verified, num_slots)
    return _ratio(survived.sum(0), observed.sum(0))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def prefix_survival(confidences: np.ndarray) -> np.ndarray:
    """a_k = Π_{i<=k} c_i along the last axis: [..., γ] -> [..., γ]."""
    return np.cumprod(np.asarray(confidences, dtype=np.float64), axis=-1)


def expected_accepted_length(confidences: np.ndarray, verify_len: int | None = None) -> np.ndarray:
    """Expected committed tokens 1 + Σ_{j<=ℓ} a_j per round (ℓ = verify_len, default γ): [N, γ] -> [N]."""
    a = prefix_survival(confidences)
    if verify_len is not None:
        a = a[..., :verify_len]
    return 1.0 + a.sum(-1)


def threshold_sweep(confidences: np.ndarray, accepted: np.ndarray, verified: np.ndarray,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict[str, float]]:
    """Replay the rounds under each confidence threshold t (SPEC §4, Fig. 5).

    For every t: ℓ = min(threshold length, recorded verified), replayed accepted = min(accepted, ℓ).
    Returns one dict per threshold: `tokens_per_step` (mean replayed accepted + 1), `verify_len` (mean ℓ),
    `accepted_tokens` / `rejected_tokens` (totals of accepted and of verified-but-rejected drafts),
    `accepted_per_step` / `rejected_per_step` (their means) and `acceptance_rate`
    (accepted / verified drafts, NaN when nothing is verified).
    """
    conf = np.asarray(confidences, dtype=np.float64)
    accepted, verified = _as_int(accepted), _as_int(verified)
    if conf.ndim != 2 or conf.shape[0] != accepted.size or accepted.size != verified.size:
        raise ValueError(f"shapes disagree: confidences {conf.shape}, accepted {accepted.shape}, verified {verified.shape}")
    rows = max(1, accepted.size)
    out = []
    for t in thresholds:
        ell = np.minimum(threshold_lengths(conf, float(t)), verified)  # [N]
        acc = np.minimum(accepted, ell)  # [N]
        rej = ell - acc
        total = int(ell.sum())
        out.append({
            "threshold": float(t),
            "tokens_per_step": float((acc + 1).sum() / rows),
            "verify_len": float(ell.sum() / rows),
            "accepted_tokens": int(acc.sum()),
            "rejected_tokens": int(rej.sum()),
            "accepted_per_step": float(acc.sum() / rows),
            "rejected_per_step": float(rej.sum() / rows),
            "acceptance_rate": float(acc.sum() / total) if total else math.nan,
        })
    return out


def acceptance_summary(accepted: np.ndarray, verified: np.ndarray, num_slots: int, committed: np.ndarray | None = None,
                       stopped: np.ndarray | None = None) -> dict[str, object]:
    """τ, round count, and both per-slot acceptance curves (JSON-ready: NaN becomes None)."""
    accepted = _as_int(accepted)
    return {
        "tau": nan_to_none(tau(accepted, committed, stopped)),
        "num_rounds": int(accepted.size),
        "accept_rate_conditional": nan_to_none(conditional_acceptance(accepted, verified, num_slots)),
        "accept_rate_unconditional": nan_to_none(unconditional_acceptance(accepted, verified, num_slots)),
    }


def macro_mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are defined (None / NaN skipped); None when none are."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else None


def nan_to_none(x):
    """Floats, arrays and nested lists/dicts with NaN replaced by None (for JSON)."""
    if isinstance(x, np.ndarray):
        return nan_to_none(x.tolist())
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def summarize(results: Sequence, num_slots: int) -> dict[str, object]:
    """τ over all rounds of all results (`GenerationResult`s), per-slot conditional and unconditional acceptance.

    τ is None without rounds.
    """
    rounds = [r for res in results for r in res.rounds]
    return acceptance_summary(np.array([r.accepted for r in rounds], dtype=np.int64),
                              np.array([r.verified for r in rounds], dtype=np.int64), num_slots,
                              np.array([r.committed for r in rounds], dtype=np.int64),
                              np.array([getattr(r, "stopped", False) for r in rounds], dtype=bool))
