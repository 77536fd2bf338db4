"""Verification-length policies: how many drafted tokens of each request the target verifies (SPEC §5).

Where it sits: `survival a[r, j] + SPSTable ─ plan_verify_lengths ─► verify lengths ℓ[r]`, called once
per decoding round by the decoder (and by `dspark.sim`, which uses exactly this function).

`survival[r, j]` is the prefix survival a_{r,j+1} = c_{r,1} ··· c_{r,j+1}: the calibrated probability
that drafts 1..j+1 of request r are all accepted. Rows must be non-increasing and lie in [0, 1].
A round verifying ℓ_r drafts of each request runs one target forward over B = Σ_r (1 + ℓ_r) tokens and
is expected to commit τ = Σ_r (1 + Σ_{j<=ℓ_r} a_{r,j}) tokens; throughput Θ = τ / round_time(B, R)
(= τ · SPS(B) without a draft cost).

Policies (the string names accepted by `plan_verify_lengths`):

* ``none``         ℓ = 0 (no speculation: the drafts are not verified).
* ``fixed:K``      ℓ = min(K, γ) for every request.  ``mtp1`` = ``fixed:1`` (DeepSeek's MTP-1 baseline).
* ``threshold:T``  verify up to (excluding) the first slot whose CONDITIONAL confidence c_j is below T.
                   c_j is taken from ``confidence=`` when given, else derived as a_j / a_{j-1}
                   (a_0 = 1; c_j = 0 once a_{j-1} = 0).
* ``dspark``       Algorithm 1: rank all candidates (r, j) with a_{r,j} > 0 by a_{r,j} descending (ties:
                   smaller j first, then smaller r) and admit them one by one while Θ strictly improves;
                   STOP at the first candidate that does not improve Θ. Lossless on fresh survival values:
                   whether draft j of request r is admitted depends only on candidates ranked at or above
                   it, never on values that draft j itself determines.
* ``dspark-async`` The production variant (SPEC §5.3): the capacity K (total extra tokens) is the argmax
                   of Θ along the ranked path of ``stale_survival`` (the values from two rounds earlier),
                   searched WITHOUT early stop; then the top-K candidates ranked by the CURRENT survival
                   are admitted. K never depends on the current drafts and ranking is prefix-closed, so it
                   stays lossless. Without ``stale_survival`` (the first rounds) it falls back to ``dspark``.
                   The stale rows need not match the current requests; Θ uses the current R as its base.
                   An engine may compute K off the critical path with `async_capacity` and pass
                   ``capacity=K`` instead (then only one sort runs per call).
* ``POLICY+gate``  Any speculative policy above with the draft gate (`dspark.scheduling.gate`): before
                   each round the engine decides from the last drafted round's survival whether drafting
                   pays for its cost at the current load, and runs a plain round when it does not. The
                   verify lengths of a drafted round are the base policy's; this module only parses it.
* ``global``       Unconstrained argmax of Θ along the ranked path of the FRESH values. NOT LOSSLESS:
                   admitting draft j can depend on a_{r,j+1}, which depends on draft j itself (the paper's
                   Appendix A shows the output distribution shift). Kept only to demonstrate that bias.

Every policy returns prefixes: request r verifies drafts 1..ℓ_r, never skipping a slot.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from dspark.errors import ConfigError, DataError
from dspark.scheduling.sps_table import SPSTable

if TYPE_CHECKING:
    import torch

    Array = np.ndarray | torch.Tensor

POLICY_NAMES = ("none", "fixed:K", "mtp1", "threshold:T", "dspark", "dspark-async", "global", "POLICY+gate")
LOSSLESS = {"none": True, "fixed": True, "threshold": True, "dspark": True, "dspark-async": True, "global": False}
_TOL = 1e-6  # slack for float noise in survival products before we call a row "increasing"


@dataclass(frozen=True)
class Policy:
    """A parsed policy name: `kind` in LOSSLESS's keys, `param` = K for fixed, T for threshold, `gate`."""

    kind: str
    param: float = 0.0
    gate: bool = False  # "+gate": skip drafting in rounds where it does not pay (dspark.scheduling.gate)

    @property
    def lossless(self) -> bool:
        return LOSSLESS[self.kind]

    def __str__(self) -> str:
        suffix = "+gate" if self.gate else ""
        if self.kind == "fixed":
            return f"fixed:{int(self.param)}{suffix}"
        if self.kind == "threshold":
            return f"threshold:{self.param:g}{suffix}"
        return self.kind + suffix


@functools.lru_cache(maxsize=256)
def parse_policy(name: str) -> Policy:
    """Parse a policy string (see the module docstring); raises ConfigError naming the problem."""
    if not isinstance(name, str):
        raise ConfigError(f"policy must be a string, got {type(name).__name__}")
    text = name.strip().lower()
    if text.endswith("+gate"):
        base = parse_policy(text[: -len("+gate")])
        if base.kind == "none" or (base.kind == "fixed" and base.param == 0):
            raise ConfigError(f"policy {name!r}: +gate needs a speculative policy ({base} drafts nothing to gate)")
        return Policy(base.kind, base.param, gate=True)
    if text in ("none", "dspark", "dspark-async", "global"):
        return Policy(text)
    if text == "mtp1":
        return Policy("fixed", 1)
    head, sep, arg = text.partition(":")
    if sep and head == "fixed":
        try:
            k = int(arg)
        except ValueError:
            raise ConfigError(f"policy {name!r}: K must be an integer, as in fixed:3") from None
        if k < 0:
            raise ConfigError(f"policy {name!r}: K must be >= 0")
        return Policy("fixed", k)
    if sep and head == "threshold":
        try:
            t = float(arg)
        except ValueError:
            raise ConfigError(f"policy {name!r}: T must be a number, as in threshold:0.5") from None
        if not 0.0 <= t <= 1.0:
            raise ConfigError(f"policy {name!r}: T must lie in [0, 1]")
        return Policy("threshold", t)
    raise ConfigError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")


# ---------------------------------------------------------------------------------------------- checks
def _to_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a numeric array ({exc})") from None
    if arr.ndim != 2:
        raise DataError(f"{what} must be 2-D [R, γ], got shape {arr.shape}")
    return arr


def _check_probabilities(arr: np.ndarray, what: str) -> tuple[float, float]:
    """Raise unless every value lies in [0, 1] (NaN fails); return (min, max)."""
    if arr.size == 0:
        return 0.0, 0.0
    lo, hi = float(arr.min()), float(arr.max())  # NaN propagates and fails both tests below
    if not (lo >= -_TOL and hi <= 1 + _TOL):
        bad = arr[~((arr >= -_TOL) & (arr <= 1 + _TOL))]
        raise DataError(f"{what} must lie in [0, 1]; got {bad[:4].tolist()}")
    return lo, hi


def check_survival(arr: np.ndarray, what: str = "survival") -> np.ndarray:
    """Validate [R, γ] prefix survival (in [0, 1], rows non-increasing).

    Returns a clean SLOT-MAJOR copy [γ, R] (float64, clipped to [0, 1], exactly non-increasing along
    slots), the layout the ranking wants: a stable sort of its ravel breaks ties by smaller j, then r.
    """
    slots = np.array(arr.T, dtype=np.float64, order="C")  # [γ, R]
    lo, hi = _check_probabilities(slots, what)
    if lo < 0 or hi > 1:
        np.clip(slots, 0.0, 1.0, out=slots)
    if slots.shape[0] > 1 and slots.shape[1] > 0:
        steps = slots[1:] - slots[:-1]  # [γ-1, R]
        rise = steps.max()
        if rise > _TOL:
            j, r = np.argwhere(steps > _TOL)[0]
            raise DataError(
                f"{what} rows must be non-increasing (prefix survival a_j = c_1···c_j); row {r} rises from "
                f"{arr[r, j]:.6g} at slot {j + 1} to {arr[r, j + 1]:.6g} at slot {j + 2}"
            )
        if rise > 0:  # float noise within tolerance: flatten it so ranking stays exactly prefix-closed
            for j in range(1, slots.shape[0]):
                np.minimum(slots[j], slots[j - 1], out=slots[j])
    return slots


def conditional_from_survival(survival: np.ndarray) -> np.ndarray:
    """c_j = a_j / a_{j-1} with a_0 = 1, and c_j = 0 once a_{j-1} = 0 -> [R, γ]."""
    prev = np.concatenate([np.ones((survival.shape[0], 1)), survival[:, :-1]], axis=1)  # [R, γ]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prev > 0, survival / np.where(prev > 0, prev, 1.0), 0.0)


def threshold_lengths(conditional: np.ndarray, threshold: float) -> np.ndarray:
    """The threshold rule, the one place it is written: verify up to (excluding) the first slot whose
    conditional confidence is below `threshold`: [N, γ] -> [N] int64."""
    keep = np.asarray(conditional, dtype=np.float64) >= threshold
    return np.cumprod(keep, axis=-1).sum(axis=-1).astype(np.int64)


# ---------------------------------------------------------------------------------------------- core
def _ranked(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates with a > 0 by a descending (ties: smaller j, then smaller r) -> (values [N], rows [N]).

    `slots` is slot-major [γ, R], so a stable sort of its ravel breaks ties by slot, then request.
    """
    num_rows = slots.shape[1]
    flat = slots.ravel()  # [γ·R]
    order = np.argsort(-flat, kind="stable")
    values = flat[order]
    n = int(np.count_nonzero(values))  # values are >= 0, and the zeros sort last
    return values[:n], order[:n] % num_rows


def _throughput_path(values: np.ndarray, num_rows: int, sps: SPSTable) -> np.ndarray:
    """Θ_k = τ_k / round_time(R + k, R) after admitting the first k ranked candidates, k = 0..N -> [N+1]."""
    n = values.size
    times = sps.dense_step_times(num_rows + n)[num_rows : num_rows + n + 1] + sps.per_request_overhead(num_rows)  # [N+1]
    tau = np.empty(n + 1)
    tau[0] = 0.0
    np.cumsum(values, out=tau[1:])
    tau += num_rows
    return np.divide(tau, times, out=tau)


def _first_non_improvement(theta: np.ndarray) -> int:
    """Number of candidates Algorithm 1 admits: it stops at the first Θ_k <= Θ_{k-1}."""
    stops = theta[1:] <= theta[:-1]  # [N]
    return int(stops.argmax()) if stops.any() else theta.size - 1


def _lengths_from_top(rows: np.ndarray, k: int, num_rows: int) -> np.ndarray:
    return np.bincount(rows[:k], minlength=num_rows)


def _plan(
    slots: np.ndarray, sps: SPSTable, policy: Policy, stale: np.ndarray | None, confidence: np.ndarray | None, capacity: int | None
) -> np.ndarray:
    """The policies on validated slot-major arrays: `slots` [γ, R], `stale` [γ', R'], `confidence` [R, γ]."""
    gamma, num_rows = slots.shape
    if policy.kind == "none" or gamma == 0:
        return np.zeros(num_rows, dtype=np.int64)
    if policy.kind == "fixed":
        return np.full(num_rows, min(int(policy.param), gamma), dtype=np.int64)
    if policy.kind == "threshold":
        cond = conditional_from_survival(slots.T) if confidence is None else confidence  # [R, γ]
        return threshold_lengths(cond, policy.param)
    values, rows = _ranked(slots)
    if policy.kind == "dspark" or (policy.kind == "dspark-async" and stale is None and capacity is None):
        k = _first_non_improvement(_throughput_path(values, num_rows, sps))
    elif policy.kind == "global":
        k = int(_throughput_path(values, num_rows, sps).argmax())
    else:  # dspark-async: capacity from the stale values (or given), ranking from the current ones
        if capacity is None:  # stale may be `slots` itself (the gate's prediction): ranked once then
            capacity = _capacity_of_ranked(values if stale is slots else _ranked(stale)[0], num_rows, sps)
        k = min(capacity, values.size)
    return _lengths_from_top(rows, k, num_rows)


def _capacity_of_ranked(stale_values: np.ndarray, num_rows: int, sps: SPSTable) -> int:
    return int(_throughput_path(stale_values, num_rows, sps).argmax())


def _capacity(stale_slots: np.ndarray, num_rows: int, sps: SPSTable) -> int:
    return _capacity_of_ranked(_ranked(stale_slots)[0], num_rows, sps)


def async_capacity(stale_survival: Array, sps: SPSTable, num_requests: int) -> int:
    """Capacity K of `dspark-async`: extra tokens maximising Θ along the ranked stale values (no early stop).

    `stale_survival` [R', γ'] is the survival of two rounds earlier; Θ uses `num_requests` (the current R)
    as its base. An engine computes this off the critical path and passes it as `capacity=`.
    """
    return _capacity(check_survival(_to_numpy(stale_survival, "stale_survival"), "stale_survival"), int(num_requests), sps)


def plan_verify_lengths(
    survival: Array,  # [R, γ] prefix survival a_{r, j+1}
    sps: SPSTable,
    policy: str,
    stale_survival: Array | None = None,  # [R', γ'] survival from two rounds earlier (dspark-async only)
    *,
    confidence: Array | None = None,  # [R, γ] conditional confidences c (threshold only; else derived)
    capacity: int | None = None,  # dspark-async: a precomputed `async_capacity` (wins over stale_survival)
) -> Array:
    """Verify lengths ℓ [R] (int, same array type and device as `survival`) under `policy`.

    See the module docstring for every policy and which ones are lossless. Raises `DataError` for
    survival or confidence values outside [0, 1] or rows that rise, `ConfigError` for an unknown policy.
    """
    parsed = parse_policy(policy)
    arr = _to_numpy(survival, "survival")  # [R, γ]
    slots = check_survival(arr)  # [γ, R]
    stale = None
    if capacity is not None and (not isinstance(capacity, (int, np.integer)) or capacity < 0):
        raise ConfigError(f"capacity must be an integer >= 0, got {capacity!r}")
    if parsed.kind == "dspark-async" and stale_survival is not None and capacity is None:
        stale = check_survival(_to_numpy(stale_survival, "stale_survival"), "stale_survival")
    cond = None
    if parsed.kind == "threshold" and confidence is not None:
        cond = _to_numpy(confidence, "confidence")
        if cond.shape != arr.shape:
            raise DataError(f"confidence must have the shape of survival {arr.shape}, got {cond.shape}")
        _check_probabilities(cond, "confidence")
    if not isinstance(sps, SPSTable):
        raise ConfigError(f"sps must be an SPSTable, got {type(sps).__name__}")
    lengths = _plan(slots, sps, parsed, stale, cond, None if capacity is None else int(capacity))  # [R] int64
    if hasattr(survival, "detach"):
        import torch

        return torch.from_numpy(lengths).to(survival.device)
    return lengths

