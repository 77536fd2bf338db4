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
* **trace replay** from a JSONL file of recorded rounds (format in `TraceAcceptance`; `trace_records`
  turns an engine's round records into it).

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
from collections.abc import Iterable
from typing import Any, Protocol

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


CENSORED = ("reject", "confidence", "drop")


class TraceAcceptance:
    """Replay of recorded rounds. Each round of the simulator samples records uniformly with replacement.

    JSONL, one object per recorded round of ONE request (as `dspark eval` and `trace_records` write them)::

        {"confidences": [0.93, 0.88, 0.91, 0.72, 0.80, 0.85, 0.60], "accepted": 3}

    * ``confidences``: the drafter's CONDITIONAL confidences c_1..c_γ for that round (after calibration,
      as the scheduler would see them); every record must have the same γ >= 1; each value in [0, 1].
    * ``accepted``: accepted drafts in that round, 0..γ, recorded with all γ drafts verified.
    * ``verified`` (optional, default γ): drafts verified when recorded (an engine verifies what its
      policy chose). A record with ``accepted < verified`` is exact: the first rejection was seen. One
      with ``accepted == verified < γ`` is CENSORED: the slots past ``verified`` were never tested.
      `censored` says how the replay treats them: ``"reject"`` (default, conservative) as rejected;
      ``"confidence"`` continues slot by slot, accepting slot k with the record's own c_k (right for a
      calibrated drafter, exact for synthetic acceptance, whose confidences are the true probabilities);
      ``"drop"`` leaves censored records out (biased low: it drops the rounds that went well).
    Other keys (``request``, ``round``, ``domain``, ...) are ignored. Blank lines are skipped.
    """

    def __init__(self, confidences: np.ndarray, accepted: np.ndarray, name: str = "trace",
                 verified: np.ndarray | None = None, censored: str = "reject") -> None:
        if censored not in CENSORED:
            raise ConfigError(f"censored must be one of {', '.join(CENSORED)}, got {censored!r}")
        gamma = confidences.shape[1]
        verified = np.full(accepted.shape, gamma, dtype=np.int64) if verified is None else np.asarray(verified, dtype=np.int64)
        cut = (accepted == verified) & (verified < gamma)  # [N] censored records
        if censored == "drop":
            if cut.all():
                raise DataError(f"{name}: every record is censored (accepted == verified < γ): nothing left to replay")
            confidences, accepted, verified, cut = confidences[~cut], accepted[~cut], verified[~cut], cut[~cut]
        self.confidences = confidences  # [N, γ]
        self.accepted = accepted  # [N]
        self.verified = verified  # [N]
        self.gamma = gamma
        self.censored = censored
        self._cut = cut
        self.name = name if censored == "reject" else f"{name} censored:{censored}"

    @classmethod
    def load(cls, path: str | Path, censored: str = "reject") -> TraceAcceptance:
        path = Path(path)
        rows: list[list[float]] = []
        accepted: list[int] = []
        verified: list[int] = []
        with path.open() as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
                conf, acc, ver = cls._check_record(rec, where, len(rows[0]) if rows else None)
                rows.append(conf)
                accepted.append(acc)
                verified.append(ver)
        if not rows:
            raise DataError(f"{path}: no trace records")
        return cls(np.asarray(rows, dtype=np.float64), np.asarray(accepted, dtype=np.int64), name=f"trace:{path.name}",
                   verified=np.asarray(verified, dtype=np.int64), censored=censored)

    @staticmethod
    def _check_record(rec: object, where: str, gamma: int | None) -> tuple[list[float], int, int]:
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
        return [float(c) for c in conf], acc, verified

    @property
    def censored_fraction(self) -> float:
        """Share of the kept records that are censored (accepted == verified < γ)."""
        return float(np.mean(self._cut)) if self._cut.size else 0.0

    def draw(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.integers(0, self.accepted.size, size=num_requests)  # [R]
        accepted = self.accepted[idx]
        if self.censored == "confidence":
            cut = self._cut[idx]
            if cut.any():
                conf = self.confidences[idx[cut]]  # [n, γ]
                tested = np.arange(self.gamma)[None, :] < accepted[cut][:, None]  # slots seen accepted
                accepted = accepted.copy()
                accepted[cut] = _leading_ones(tested | (rng.random(conf.shape) < conf))
        return self.confidences[idx], accepted

    def conditional_acceptance(self) -> np.ndarray:
        """Measured per-slot conditional acceptance of the trace -> [γ] (NaN where no round tested slot k).

        Censoring-aware (Kaplan-Meier): slot k counts among the rounds that tested it (verified > k)."""
        slots = np.arange(self.gamma)[None, :]
        reached = (self.accepted[:, None] >= slots) & (self.verified[:, None] > slots)  # [N, γ]
        passed = self.accepted[:, None] > slots
        with np.errstate(invalid="ignore", divide="ignore"):
            return passed.sum(0) / reached.sum(0)


def trace_records(rounds: Iterable[Any]) -> list[dict[str, Any]]:
    """JSONL records (the `TraceAcceptance` format) from an engine's round records.

    `rounds`: objects with ``drafted``, ``verified``, ``accepted`` and ``confidences`` (the engine's
    `RoundRecord`: the conditional confidences of the drafts that round verified, and how many of the
    VERIFIED ones were accepted). Rounds without drafts (plain rounds, a closed draft gate) are left
    out. Rounds of a drafter without confidences get the trace's censoring-aware per-slot acceptance
    as their confidences (the only thing a replay can use for them). Rounds with fewer verified than
    drafted keep ``verified``: they are censored when all of those were accepted (see `TraceAcceptance`).
    """
    rows = [r for r in rounds if r.drafted > 0]
    gamma = max((r.drafted for r in rows), default=0)
    rows = [r for r in rows if r.drafted == gamma]
    records = [{"confidences": None if r.confidences is None else [min(1.0, max(0.0, float(c))) for c in r.confidences],
                "accepted": int(r.accepted), "verified": int(r.verified)} for r in rows]
    if any(rec["confidences"] is None for rec in records):
        probe = TraceAcceptance(np.full((len(records), gamma), 0.5), np.array([rec["accepted"] for rec in records]),
                                verified=np.array([rec["verified"] for rec in records]))
        fill = [0.0 if not np.isfinite(x) else float(x) for x in probe.conditional_acceptance()]
        for rec in records:
            if rec["confidences"] is None:
                rec["confidences"] = fill
    return records


def preset_names() -> list[str]:
    return [f"{drafter}/{domain}" for drafter, domain in (*PRESETS, *MTP_PRESETS)]


def make_acceptance(
    spec: str,
    *,
    confidence: str = "calibrated",
    sharpness: float = DEFAULT_SHARPNESS,
    gamma: int | None = None,
    censored: str = "reject",
) -> AcceptanceModel:
    """Build a model from `spec`: a preset ``DRAFTER/DOMAIN``, ``curve:a1,a2,...`` or a ``.jsonl`` trace path.

    `confidence` is ``calibrated`` or ``overconfident[:δ]`` (curves only); `gamma` truncates a curve
    (γ <= its length); `censored` is how a trace replays its censored rounds (`TraceAcceptance`).
    Raises ConfigError naming the problem.
    """
    if spec.endswith(".jsonl"):
        if not Path(spec).is_file():
            raise ConfigError(f"acceptance trace {spec} does not exist")
        model = TraceAcceptance.load(spec, censored=censored)
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
