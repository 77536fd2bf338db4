"""The engine cost table: steps per second as a function of tokens verified per forward (SPEC §5.1).

Where it sits: `survival a[r, j] + SPSTable ─ policy ─► verify lengths ℓ[r]`. The serving engine profiles
one forward of the target at several batch sizes (tokens per forward, summed over requests) once at start-up
and stores the result here; the scheduler asks `round_time(B, R)` for every candidate batch size `B`.
`dspark.scheduling.roofline` builds a table analytically for capacity planning; the simulator reads one.

Three curves, the last two optional and keyed by the number of active requests ``R``:

* **verify curve** ``tokens -> steps_per_second``: one target forward over ``B`` tokens.
* **request cost** ``requests -> seconds``: the part of the verify forward that scales with requests
  rather than tokens (attention's KV-cache reads: each request reads its cache once however many of
  its tokens are verified). A profiled table usually folds this into the verify curve and leaves it out.
* **draft cost** ``requests -> seconds``: the drafter's forward for one round. Not paid when nothing is
  drafted (policy ``none``).

One round at ``B`` verified tokens and ``R`` requests takes
``round_time(B, R) = 1 / SPS(B) + request_time(R) + draft_time(R)``.

Interpolation and extrapolation (the same rule for every curve, applied to TIME, not to rate):

* between two profiled points, time is linear in the key (a roofline is piecewise linear in time);
* below the first point, the first point's time is used (never cheaper than the smallest profiled batch);
* above the last point, time continues on the straight line through the last two points, with the slope
  clamped at >= 0 (a larger batch is never cheaper); a one-point curve is constant everywhere.

**Padding ladder** (optional, `with_ladder`): an engine that replays CUDA graphs runs a step of ``B``
tokens as the graph captured for the next size of its ladder (`dspark.engine.graphed_target.ladder_for`:
1, 2, 3, 4, 6, 8, 12, ... tokens), so ``B`` costs what ``pad(B)`` costs, and verifying fewer drafts
saves nothing until the batch drops below the rung beneath. A table with a ladder prices every verify
forward at ``pad(B)`` (``B`` itself above the top rung: those steps run eagerly, unpadded); the planner
then fills each rung it pays for instead of trimming drafts that cost nothing.

``monotone=True`` replaces the verify times by their running maximum over increasing ``B`` (so SPS never
rises with the batch size): a measured dip is treated as noise. Cliffs (sudden slow-downs at tile or
CUDA-graph boundaries) are kept; only the dips after them are filled.

JSON format (``save`` / ``load``)::

    {"format": "dspark-sps", "version": 1,
     "tokens": [1, 2, 4, ...], "steps_per_second": [95.1, 94.8, ...],
     "request_cost": {"requests": [1, 8, ...], "seconds": [0.0001, 0.0007, ...]}, # optional
     "draft_cost": {"requests": [1, 8, ...], "seconds": [0.0011, 0.0012, ...]},   # optional
     "monotone": false, "ladder": [1, 2, 3, 4, 6, ...], "meta": {...}}              # optional
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling.live_overhead import LiveOverhead

FORMAT = "dspark-sps"
VERSION = 1

RequestCurve = Mapping[int, float] | tuple[Sequence[int], Sequence[float]]


def _as_points(keys: Sequence[Any], values: Sequence[Any], what: str, value_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one curve: non-empty, integer keys >= 1 without duplicates, finite positive values; sorted."""
    try:
        k = np.asarray(list(keys), dtype=np.float64)
        v = np.asarray(list(values), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: keys and {value_name} must be lists of numbers ({exc})") from None
    if k.ndim != 1 or v.ndim != 1:
        raise ConfigError(f"{what}: keys and {value_name} must be flat lists")
    if k.size == 0:
        raise ConfigError(f"{what} is empty: it needs at least one (key, {value_name}) point")
    if k.size != v.size:
        raise ConfigError(f"{what}: {k.size} keys but {v.size} {value_name} values")
    if not np.all(np.isfinite(k)) or np.any(k != np.round(k)) or np.any(k < 1):
        raise ConfigError(f"{what}: keys must be integers >= 1, got {k.tolist()}")
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ConfigError(f"{what}: {value_name} must be finite and > 0, got {v.tolist()}")
    order = np.argsort(k, kind="stable")
    k, v = k[order], v[order]
    if np.any(np.diff(k) == 0):
        dup = k[1:][np.diff(k) == 0]
        raise ConfigError(f"{what}: duplicate keys {sorted(set(int(x) for x in dup))}")
    return k, v


def _interp_time(keys: np.ndarray, times: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Piecewise-linear time with the clamp-below / straight-line-above rule of the module docstring."""
    out = np.interp(x, keys, times)  # clamps at both ends
    if keys.size >= 2:
        slope = max(0.0, (times[-1] - times[-2]) / (keys[-1] - keys[-2]))
        above = x > keys[-1]
        out = np.where(above, times[-1] + slope * (x - keys[-1]), out)
    return out


def _ladder(sizes: Sequence[Any] | None, what: str = "padding ladder") -> tuple[int, ...] | None:
    """Validate a ladder: integer sizes >= 1 (sorted, duplicates dropped); None or empty = no ladder."""
    if sizes is None:
        return None
    try:
        values = [float(x) for x in sizes]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a list of integers >= 1, got {sizes!r}") from None
    if any(not np.isfinite(x) or x != round(x) or x < 1 for x in values):
        raise ConfigError(f"{what} must hold integers >= 1, got {list(sizes)}")
    return tuple(sorted({int(x) for x in values})) or None


def pad_to_ladder(x: np.ndarray, ladder: tuple[int, ...] | None) -> np.ndarray:
    """Each of `x` padded up to the next ladder size (unchanged above the top rung, at <= 0, or without a ladder)."""
    if not ladder:
        return x
    rungs = np.asarray(ladder, dtype=np.float64)
    idx = np.searchsorted(rungs, x)  # first rung >= x
    inside = (x > 0) & (x <= rungs[-1])
    return np.where(inside, rungs[np.minimum(idx, rungs.size - 1)], x)


class _RequestCurve:
    """Seconds keyed by request count, with a dense per-integer cache for the scheduler's hot path."""

    def __init__(self, curve: RequestCurve, what: str) -> None:
        if isinstance(curve, Mapping):
            req, sec = list(curve.keys()), list(curve.values())
        else:
            try:
                req, sec = curve
            except (TypeError, ValueError):
                raise ConfigError(f"{what} must be a {{requests: seconds}} mapping or a (requests, seconds) pair") from None
        self.keys, self.seconds = _as_points(req, sec, what, "seconds")
        self._dense = np.empty(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return _interp_time(self.keys, self.seconds, x)

    def at(self, num_requests: int) -> float:
        if self._dense.size <= num_requests:
            n = max(int(num_requests) + 1, 2 * self._dense.size, 1024)
            self._dense = self(np.maximum(np.arange(n, dtype=np.float64), 1.0))
        return float(self._dense[num_requests])

    def to_dict(self) -> dict[str, list]:
        return {"requests": [int(x) for x in self.keys], "seconds": [float(x) for x in self.seconds]}


class SPSTable:
    """Steps/second of the target forward keyed by verified tokens, plus optional per-request costs.

    `tokens[i]` tokens per forward run at `steps_per_second[i]` forwards per second. `request_cost` and
    `draft_cost` map a request count to seconds per round (a dict, or a pair `(requests, seconds)`).
    See the module docstring for the interpolation and extrapolation rules and the monotone envelope.
    """

    def __init__(
        self,
        tokens: Sequence[int],
        steps_per_second: Sequence[float],
        draft_cost: RequestCurve | None = None,
        *,
        request_cost: RequestCurve | None = None,
        monotone: bool = False,
        meta: Mapping[str, Any] | None = None,
        ladder: Sequence[int] | None = None,
    ) -> None:
        self._tokens, sps = _as_points(tokens, steps_per_second, "SPS table", "steps_per_second")
        self._raw_sps = sps  # [P] as given (saved as is)
        times = 1.0 / sps
        self._times = np.maximum.accumulate(times) if monotone else times  # [P] seconds per verify forward
        self.monotone = bool(monotone)
        self.meta: dict[str, Any] = dict(meta or {})
        self._draft = None if draft_cost is None else _RequestCurve(draft_cost, "draft cost")
        self._request = None if request_cost is None else _RequestCurve(request_cost, "request cost")
        self._dense = np.empty(0)  # step time at every integer token count, grown on demand
        self.live: LiveOverhead | None = None  # measured per-round time the profile missed (`with_live`)
        self.ladder = _ladder(ladder)  # the CUDA-graph sizes a verify forward is padded up to (None: unpadded)

    def with_live(self, live: LiveOverhead) -> SPSTable:
        """The same table (curves shared) whose request cost also counts `live`'s measured per-round time."""
        out = copy.copy(self)
        out.live = live
        return out

    def with_ladder(self, ladder: Sequence[int] | None) -> SPSTable:
        """The same table (curves shared) pricing every verify forward at its padded size (None: unpadded)."""
        out = copy.copy(self)
        out.ladder = _ladder(ladder)
        out._dense = np.empty(0)
        return out

    def without_live(self) -> SPSTable:
        """The same table (curves shared) without a live overhead: the profile's curves alone."""
        if self.live is None:
            return self
        out = copy.copy(self)
        out.live = None
        return out

    # ------------------------------------------------------------------ lookups
    @property
    def tokens(self) -> list[int]:
        return [int(x) for x in self._tokens]

    @property
    def steps_per_second(self) -> list[float]:
        """The verify curve as given (before the monotone envelope; `sps()` applies it)."""
        return [float(x) for x in self._raw_sps]

    @property
    def has_draft_cost(self) -> bool:
        return self._draft is not None

    def step_time(self, batch_tokens: float | np.ndarray) -> float | np.ndarray:
        """Seconds of one target forward over `batch_tokens` tokens (scalar or array), padded up the ladder."""
        if isinstance(batch_tokens, (int, np.integer)) and batch_tokens >= 1:  # the hot path: a cached lookup
            return float(self.dense_step_times(int(batch_tokens))[batch_tokens])
        x = pad_to_ladder(np.asarray(batch_tokens, dtype=np.float64), self.ladder)
        out = _interp_time(self._tokens, self._times, x)
        return float(out) if out.ndim == 0 else out

    def sps(self, batch_tokens: float | np.ndarray) -> float | np.ndarray:
        """Target forwards per second at `batch_tokens` tokens per forward (verify curve only)."""
        return 1.0 / self.step_time(batch_tokens)

    def request_time(self, num_requests: float | np.ndarray) -> float | np.ndarray:
        """Seconds per round that scale with requests, not tokens (0 when no request cost is set), plus the
        live overhead when one is attached."""
        out = self._curve_time(self._request, num_requests)
        if self.live is None:
            return out
        if isinstance(out, float):
            return out + self.live.at(int(num_requests))
        return out + np.vectorize(lambda r: self.live.at(int(r)), otypes=[float])(num_requests)

    def draft_time(self, num_requests: float | np.ndarray) -> float | np.ndarray:
        """Seconds of drafting per round for `num_requests` requests (0 when no draft cost is set)."""
        return self._curve_time(self._draft, num_requests)

    @staticmethod
    def _curve_time(curve: _RequestCurve | None, num_requests: float | np.ndarray) -> float | np.ndarray:
        if isinstance(num_requests, (int, np.integer)) and num_requests >= 1:  # the hot path: a cached lookup
            return 0.0 if curve is None else curve.at(int(num_requests))
        x = np.asarray(num_requests, dtype=np.float64)
        out = np.zeros_like(x) if curve is None else curve(x)
        return float(out) if out.ndim == 0 else out

    def round_time(self, batch_tokens: float | np.ndarray, num_requests: float | np.ndarray) -> float | np.ndarray:
        """Seconds of one speculative round: verify forward, request cost and draft cost."""
        return self.step_time(batch_tokens) + self.request_time(num_requests) + self.draft_time(num_requests)

    def per_request_overhead(self, num_requests: int) -> float:
        """`request_time(R) + draft_time(R)` for an integer R, from a cache (the scheduler's hot path)."""
        out = 0.0 if self.live is None else self.live.at(num_requests)
        if self._request is not None:
            out += self._request.at(num_requests)
        if self._draft is not None:
            out += self._draft.at(num_requests)
        return out

    def dense_step_times(self, max_tokens: int) -> np.ndarray:
        """`t[b]` = step time at `b` tokens for `b = 0..max_tokens` (`t[0]` = `t[1]`); cached, read-only.

        The scheduler slices this instead of interpolating on every call (the hot path).
        """
        if self._dense.size <= max_tokens:
            n = max(int(max_tokens) + 1, 2 * self._dense.size, 1024)
            x = pad_to_ladder(np.maximum(np.arange(n, dtype=np.float64), 1.0), self.ladder)
            dense = _interp_time(self._tokens, self._times, x)
            dense.setflags(write=False)
            self._dense = dense
        return self._dense

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "tokens": self.tokens,
            "steps_per_second": self.steps_per_second,
            "monotone": self.monotone,
        }
        if self._request is not None:
            out["request_cost"] = self._request.to_dict()
        if self._draft is not None:
            out["draft_cost"] = self._draft.to_dict()
        if self.ladder:
            out["ladder"] = list(self.ladder)
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "SPS table") -> SPSTable:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format", FORMAT) != FORMAT:
            raise ConfigError(f"{source}: format {data.get('format')!r} is not {FORMAT!r}")
        if not isinstance(data.get("version", VERSION), int) or data.get("version", VERSION) > VERSION:
            raise ConfigError(f"{source}: version {data.get('version')!r} is not one this reader knows ({VERSION})")
        missing = [k for k in ("tokens", "steps_per_second") if k not in data]
        if missing:
            raise ConfigError(f"{source}: missing key(s) {missing}")
        curves = {}
        for key in ("draft_cost", "request_cost"):
            curve = data.get(key)
            if curve is not None:
                if not isinstance(curve, Mapping) or "requests" not in curve or "seconds" not in curve:
                    raise ConfigError(f"{source}: {key} must be an object with 'requests' and 'seconds' lists")
                curves[key] = (curve["requests"], curve["seconds"])
        return cls(
            data["tokens"],
            data["steps_per_second"],
            curves.get("draft_cost"),
            request_cost=curves.get("request_cost"),
            monotone=bool(data.get("monotone", False)),
            meta=data.get("meta"),
            ladder=_ladder(data.get("ladder"), f"{source}: ladder"),
        )

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically (a temporary file beside it, then a rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, *, monotone: bool | None = None) -> SPSTable:
        """Read a table written by `save` (or by hand); `monotone` overrides the stored flag."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"SPS table {path}: not valid JSON ({exc})") from None
        if monotone is not None and isinstance(data, dict):
            data["monotone"] = monotone
        return cls.from_dict(data, source=f"SPS table {path}")

    def __repr__(self) -> str:
        lo, hi = int(self._tokens[0]), int(self._tokens[-1])
        return (
            f"SPSTable({self._tokens.size} points, tokens {lo}..{hi}, sps {1 / self._times[0]:.4g}..{1 / self._times[-1]:.4g}, "
            f"request_cost={'yes' if self._request else 'no'}, draft_cost={'yes' if self._draft else 'no'}"
            f"{f', ladder of {len(self.ladder)}' if self.ladder else ''})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SPSTable):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]
