"""Acceptance models for the serving simulator: per round, what the scheduler sees and what survives.

Where it sits: `dspark.sim.engine` asks the model, every decoding round, for the R×γ conditional
confidences the drafter would report and for the number of leading drafts the target WOULD accept if all
γ were verified; the engine then verifies ℓ_r drafts (from `plan_verify_lengths`) and accepts
min(accepted_if_all, ℓ_r) of them. (Verification is left to right, so verifying fewer drafts never
changes the outcome of the ones verified.)

Three sources:

* **curve presets** ``DRAFTER/DOMAIN`` (``dspark/math``, ``eagle3/chat``, ...) or an explicit
  ``curve:0.9,0.85,...`` of per-slot CONDITIONAL acceptance α_k (for instance measured by
  ``dspark eval``). Per round and slot, the true conditional acceptance probability is drawn as
  p ~ Beta(α_k·κ, (1−α_k)·κ) (mean α_k; smaller κ = sharper, more informative confidences), the slot
  is accepted with probability p, and the confidence reported is c = p (``calibrated``) or
  c = sigmoid(logit(p) + δ) (``overconfident:δ``; the default δ = 0.5 puts the expected calibration
  error of the prefix survival a_k at about 7-9%, the raw, uncalibrated end of what the paper reports).
* **trace replay** from a JSONL file of recorded rounds (format in `TraceAcceptance`).

The presets are per-slot conditional acceptance read from the paper's Fig. 2 (γ = 7, Qwen3-4B target,
averaged over the benchmarks of each domain): the numbers below were taken off the plotted curves and
rounded to 0.01, so they carry about ±0.01 of reading error. The text of the paper quotes 0.93 for
DSpark's first math slot where its curve reads about 0.91.

The ``mtp/DOMAIN`` presets (`MTP_PRESETS`) are one-slot curves for an MTP-1 drafter, which drafts ONE
token per round (γ = 1): the DeepSeek-V3 technical report gives 85-90% acceptance of the second predicted
token across generation topics; we put math at the top of that range, chat at the bottom, code between
(the spread over domains is our assumption). Compare MTP-1 as its own drafter with its own curve (one
layer, one slot, its own draft cost), not as ``fixed:1`` on a γ-slot drafter, which pays that drafter's
full cost and accepts with its first slot's rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dspark.errors import ConfigError, DataError

# (drafter, domain) -> conditional acceptance at slots 1..7, read from the paper's Fig. 2 (see above).
PRESETS: dict[tuple[str, str], tuple[float, ...]] = {
    ("dflash", "math"): (0.89, 0.83, 0.82, 0.83, 0.84, 0.84, 0.83),
    ("dflash", "code"): (0.87, 0.81, 0.80, 0.80, 0.81, 0.80, 0.78),
    ("dflash", "chat"): (0.72, 0.65, 0.64, 0.66, 0.68, 0.69, 0.69),
    ("eagle3", "math"): (0.81, 0.82, 0.84, 0.84, 0.85, 0.86, 0.85),
    ("eagle3", "code"): (0.77, 0.77, 0.78, 0.79, 0.79, 0.79, 0.78),
    ("eagle3", "chat"): (0.53, 0.59, 0.64, 0.68, 0.71, 0.73, 0.73),
    ("dspark", "math"): (0.91, 0.89, 0.89, 0.89, 0.89, 0.89, 0.88),
    ("dspark", "code"): (0.89, 0.87, 0.86, 0.86, 0.86, 0.86, 0.85),
    ("dspark", "chat"): (0.74, 0.74, 0.74, 0.74, 0.76, 0.77, 0.76),
}
# MTP-1 (one drafted token), from the 85-90% range of the DeepSeek-V3 report (see above).
MTP_PRESETS: dict[tuple[str, str], tuple[float, ...]] = {
    ("mtp", "math"): (0.90,),
    ("mtp", "code"): (0.88,),
    ("mtp", "chat"): (0.85,),
}
DEFAULT_SHARPNESS = 1.5  # κ: gives a confidence ROC-AUC of roughly 0.8-0.9, the range the paper reports
DEFAULT_OVERCONFIDENCE = 0.5  # δ in logit units


class AcceptanceModel(Protocol):
    """Per-round draws for R requests; `gamma` slots per round."""

    gamma: int
    name: str

    def draw(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """-> (confidence [R, γ] conditional c in [0, 1], accepted_if_all [R] int in 0..γ)."""
        ...


def _leading_ones(accept: np.ndarray) -> np.ndarray:
    """Number of leading True values per row -> [R]."""
    return np.cumprod(accept, axis=1).sum(axis=1).astype(np.int64)


@dataclass
class CurveAcceptance:
    """Beta-distributed per-slot acceptance around a conditional curve; confidences calibrated or not."""

    curve: tuple[float, ...]
    sharpness: float = DEFAULT_SHARPNESS
    overconfidence: float = 0.0  # δ added to the logit of the true probability; 0 = calibrated
    name: str = "curve"

    def __post_init__(self) -> None:
        alpha = np.asarray(self.curve, dtype=np.float64)
        if alpha.ndim != 1 or alpha.size == 0:
            raise ConfigError("an acceptance curve needs at least one slot")
        if not np.all((alpha > 0) & (alpha < 1)):
            raise ConfigError(f"acceptance curve values must lie strictly between 0 and 1, got {alpha.tolist()}")
        if not (math.isfinite(self.sharpness) and self.sharpness > 0):
            raise ConfigError(f"sharpness must be > 0, got {self.sharpness}")
        if not math.isfinite(self.overconfidence):
            raise ConfigError(f"overconfidence must be finite, got {self.overconfidence}")
        self._a = alpha * self.sharpness  # [γ] Beta parameters
        self._b = (1 - alpha) * self.sharpness
        self.gamma = alpha.size

    def draw(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        shape = (num_requests, self.gamma)
        p = rng.beta(self._a, self._b, size=shape)  # [R, γ] true conditional acceptance
        accepted = _leading_ones(rng.random(shape) < p)  # [R]
        if self.overconfidence == 0.0:
            return p, accepted
        q = np.clip(p, 1e-9, 1 - 1e-9)
        return 1.0 / (1.0 + np.exp(-(np.log(q / (1 - q)) + self.overconfidence))), accepted

    def expected_tau(self, verify: int | None = None) -> float:
        """Mean committed tokens per round when `verify` (default γ) drafts are always verified."""
        k = self.gamma if verify is None else min(verify, self.gamma)
        return 1.0 + float(np.cumprod(np.asarray(self.curve[:k])).sum())


class TraceAcceptance:
    """Replay of recorded rounds. Each round of the simulator samples records uniformly with replacement.

    JSONL, one object per recorded round of ONE request (as `dspark eval` writes them)::

        {"confidences": [0.93, 0.88, 0.91, 0.72, 0.80, 0.85, 0.60], "accepted": 3}

    * ``confidences``: the drafter's CONDITIONAL confidences c_1..c_γ for that round (after calibration,
      as the scheduler would see them); every record must have the same γ >= 1; each value in [0, 1].
    * ``accepted``: accepted drafts in that round, 0..γ, recorded with all γ drafts verified.
    * ``verified`` (optional, default γ): drafts verified when recorded. If smaller than γ, slots past it
      were never tested; the replay treats them as rejected (a conservative choice), so ``accepted`` must
      not exceed it.
    Other keys (``request``, ``round``, ``domain``, ...) are ignored. Blank lines are skipped.
    """

    def __init__(self, confidences: np.ndarray, accepted: np.ndarray, name: str = "trace") -> None:
        self.confidences = confidences  # [N, γ]
        self.accepted = accepted  # [N]
        self.gamma = confidences.shape[1]
        self.name = name

    @classmethod
    def load(cls, path: str | Path) -> TraceAcceptance:
        path = Path(path)
        rows: list[list[float]] = []
        accepted: list[int] = []
        with path.open() as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                conf, acc = cls._check_record(rec, where, len(rows[0]) if rows else None)
                rows.append(conf)
                accepted.append(acc)
        if not rows:
            raise DataError(f"{path}: no trace records")
        return cls(np.asarray(rows, dtype=np.float64), np.asarray(accepted, dtype=np.int64), name=f"trace:{path.name}")

    @staticmethod
    def _check_record(rec: object, where: str, gamma: int | None) -> tuple[list[float], int]:
        if not isinstance(rec, dict) or "confidences" not in rec or "accepted" not in rec:
            raise DataError(f"{where}: a record needs 'confidences' (list) and 'accepted' (int)")
        conf = rec["confidences"]
        if not isinstance(conf, list) or not conf or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in conf):
            raise DataError(f"{where}: 'confidences' must be a non-empty list of numbers")
        if not all(0.0 <= c <= 1.0 for c in conf):
            raise DataError(f"{where}: confidences must lie in [0, 1], got {conf}")
        if gamma is not None and len(conf) != gamma:
            raise DataError(f"{where}: {len(conf)} confidences, but earlier records have {gamma}")
        verified = rec.get("verified", len(conf))
        acc = rec["accepted"]
        if not isinstance(verified, int) or not 0 <= verified <= len(conf):
            raise DataError(f"{where}: 'verified' must be an integer in 0..{len(conf)}")
        if not isinstance(acc, int) or isinstance(acc, bool) or not 0 <= acc <= verified:
            raise DataError(f"{where}: 'accepted' must be an integer in 0..{verified}, got {acc!r}")
        return [float(c) for c in conf], acc

    def draw(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.accepted.size, size=num_requests)  # [R]
        return self.confidences[idx], self.accepted[idx]

    def conditional_acceptance(self) -> np.ndarray:
        """Measured per-slot conditional acceptance of the trace -> [γ] (NaN where no round reached k)."""
        reached = self.accepted[:, None] >= np.arange(self.gamma)[None, :]  # [N, γ]
        passed = self.accepted[:, None] > np.arange(self.gamma)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            return passed.sum(0) / reached.sum(0)


def preset_names() -> list[str]:
    return [f"{drafter}/{domain}" for drafter, domain in (*PRESETS, *MTP_PRESETS)]


def make_acceptance(
    spec: str,
    *,
    confidence: str = "calibrated",
    sharpness: float = DEFAULT_SHARPNESS,
    gamma: int | None = None,
) -> AcceptanceModel:
    """Build a model from `spec`: a preset ``DRAFTER/DOMAIN``, ``curve:a1,a2,...`` or a ``.jsonl`` trace path.

    `confidence` is ``calibrated`` or ``overconfident[:δ]`` (curves only); `gamma` truncates a curve
    (γ <= its length). Raises ConfigError naming the problem.
    """
    if spec.endswith(".jsonl"):
        if not Path(spec).is_file():
            raise ConfigError(f"acceptance trace {spec} does not exist")
        model = TraceAcceptance.load(spec)
        if gamma is not None and gamma != model.gamma:
            raise ConfigError(f"the trace has γ = {model.gamma}; --gamma {gamma} does not match")
        return model
    if spec.startswith("curve:"):
        try:
            curve = tuple(float(x) for x in spec[len("curve:") :].split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"acceptance {spec!r}: curve values must be numbers, as in curve:0.9,0.8,0.8") from None
        name = "curve"
    else:
        drafter, _, domain = spec.lower().replace("-", "/").partition("/")
        presets = {**PRESETS, **MTP_PRESETS}
        if (drafter, domain) not in presets:
            raise ConfigError(f"unknown acceptance preset {spec!r}; known: {', '.join(preset_names())}, curve:..., or a .jsonl trace")
        curve, name = presets[(drafter, domain)], f"{drafter}/{domain}"
    if gamma is not None:
        if not 1 <= gamma <= len(curve):
            raise ConfigError(f"--gamma {gamma}: the curve {name} has {len(curve)} slots")
        curve = curve[:gamma]
    overconfidence = _parse_confidence(confidence)
    label = name if overconfidence == 0 else f"{name} overconfident:{overconfidence:g}"
    return CurveAcceptance(curve, sharpness=sharpness, overconfidence=overconfidence, name=label)


def _parse_confidence(text: str) -> float:
    head, sep, arg = text.strip().lower().partition(":")
    if head == "calibrated" and not sep:
        return 0.0
    if head == "overconfident":
        if not sep:
            return DEFAULT_OVERCONFIDENCE
        try:
            return float(arg)
        except ValueError:
            raise ConfigError(f"confidence {text!r}: δ must be a number, as in overconfident:0.5") from None
    raise ConfigError(f"unknown confidence model {text!r}; known: calibrated, overconfident[:δ]")
