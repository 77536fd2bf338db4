"""Workloads for the serving simulator: prompt/output length distributions and request arrivals.

Where it sits: `dspark.sim.engine` draws every request's prompt and output length from a `LengthDist`
and learns when requests arrive from an `Arrivals` process (a fixed concurrency, i.e. a closed loop in
which every finished request is replaced at once, or an open Poisson stream at a given rate).

Length specs (CLI strings): ``N`` or ``fixed:N``; ``uniform:LO:HI`` (integers, inclusive);
``lognormal:MEDIAN:SIGMA`` (rounded, at least 1). A `LengthSequence` replays given lengths in request
order (a benchmark's prompt list).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dspark.errors import ConfigError


@dataclass(frozen=True)
class LengthDist:
    """A distribution of token counts (>= 1)."""

    kind: str  # fixed | uniform | lognormal
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str | int, what: str = "length") -> LengthDist:
        spec = str(text).strip().lower()
        parts = spec.split(":")
        try:
            if len(parts) == 1 or (parts[0] == "fixed" and len(parts) == 2):
                dist = cls("fixed", float(int(parts[-1])))
            elif parts[0] == "uniform" and len(parts) == 3:
                dist = cls("uniform", float(int(parts[1])), float(int(parts[2])))
            elif parts[0] == "lognormal" and len(parts) == 3:
                dist = cls("lognormal", float(parts[1]), float(parts[2]))
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(f"{what} {text!r}: expected N, fixed:N, uniform:LO:HI or lognormal:MEDIAN:SIGMA") from None
        dist._check(what)
        return dist

    def _check(self, what: str) -> None:
        ok = {
            "fixed": self.a >= 1,
            "uniform": 1 <= self.a <= self.b,
            "lognormal": self.a >= 1 and math.isfinite(self.b) and self.b >= 0,
        }[self.kind]
        if not ok or not math.isfinite(self.a):
            raise ConfigError(f"{what} {self}: lengths must be >= 1 (and LO <= HI, SIGMA >= 0)")

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, int(self.a), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(self.a), int(self.b) + 1, size=n)
        return np.maximum(1, np.round(self.a * np.exp(self.b * rng.standard_normal(n)))).astype(np.int64)

    def mean(self) -> float:
        if self.kind == "fixed":
            return self.a
        if self.kind == "uniform":
            return (self.a + self.b) / 2
        return self.a * math.exp(self.b**2 / 2)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{int(self.a)}"
        if self.kind == "uniform":
            return f"uniform:{int(self.a)}:{int(self.b)}"
        return f"lognormal:{self.a:g}:{self.b:g}"


@dataclass(frozen=True)
class LengthSequence:
    """Given lengths replayed in order: request i (in arrival order) gets ``values[i % len(values)]``.

    This is how a benchmark's closed loop cycles through its prompt list (`dspark.eval.closed_loop`), so a
    simulation of it sees the same prompt length at the same request. `sample` draws uniformly instead.
    """

    values: tuple[int, ...]

    def __post_init__(self) -> None:
        values = tuple(int(v) for v in self.values)
        if not values or min(values) < 1:
            raise ConfigError(f"a length sequence needs lengths >= 1, got {list(self.values)[:8]}")
        object.__setattr__(self, "values", values)

    def at(self, index: int) -> int:
        return self.values[index % len(self.values)]

    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        return np.asarray(self.values, dtype=np.int64)[rng.integers(0, len(self.values), size=n)]

    def mean(self) -> float:
        return float(np.mean(self.values))

    def __str__(self) -> str:
        return f"sequence of {len(self.values)} (mean {self.mean():.1f})"


class Arrivals:
    """Arrival times of requests: a closed loop at fixed concurrency, or a Poisson stream.

    Closed loop (`concurrency=C`): C requests arrive at t = 0 and each finished request is replaced by a
    new one at the moment it finishes. Open loop (`rate=λ` requests/s): exponential gaps, seeded.
    """

    def __init__(self, *, concurrency: int | None = None, rate: float | None = None) -> None:
        if (concurrency is None) == (rate is None):
            raise ConfigError("give exactly one of concurrency or rate")
        if concurrency is not None and (not isinstance(concurrency, (int, np.integer)) or concurrency < 1):
            raise ConfigError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ConfigError(f"rate must be > 0 requests/s, got {rate!r}")
        self.concurrency = None if concurrency is None else int(concurrency)
        self.rate = rate
        self._next_poisson = 0.0

    @property
    def closed_loop(self) -> bool:
        return self.concurrency is not None

    def initial(self) -> list[float]:
        """Arrival times known at t = 0."""
        return [0.0] * self.concurrency if self.concurrency is not None else []

    def next_open(self, rng: np.random.Generator) -> float:
        """The next Poisson arrival time (open loop only)."""
        assert self.rate is not None
        self._next_poisson += rng.exponential(1.0 / self.rate)
        return self._next_poisson

    def label(self) -> str:
        return f"concurrency={self.concurrency}" if self.concurrency is not None else f"rate={self.rate:g}/s"
