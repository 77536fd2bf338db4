"""`LiveOverhead`: the per-step time the profiled SPS table does not see, measured while serving.

Where it sits: `dspark.engine.llm.LLM.step` times each step (start to the next step's start) and hands
it to `VerifyPlanner.observe_step`, which subtracts what the table predicts (verify forward + request
cost + draft cost when it drafted) and feeds the residual here. The planner's table then charges every
round that residual on top of its request cost (`SPSTable.with_live`), so the gate and the verify-length
policies weigh drafting against the step time the engine really pays at this load: prefill chunks mixed
into decode steps, the serving loop's own host work, anything the start-up profile left out. A large
fixed cost per step makes more tokens per step worth more, which is what the static table cannot know.

Residuals are kept per power-of-two bucket of the request count, as an exponential moving average; a
bucket counts once it has `min_samples` observations, and a request count with no counted bucket takes
the nearest counted one (none: 0). Negative averages (the table too pessimistic) count as 0. `version`
changes whenever a published value does, so callers may cache what they derive from it.
"""

from __future__ import annotations

from dspark.errors import ConfigError

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SAMPLES = 8
REPUBLISH_EVERY = 16  # observations of a bucket between two published values


def bucket_of(num_requests: int) -> int:
    """The power of two <= num_requests (>= 1)."""
    return 1 << (max(int(num_requests), 1).bit_length() - 1)


class LiveOverhead:
    def __init__(self, alpha: float = DEFAULT_ALPHA, min_samples: int = DEFAULT_MIN_SAMPLES) -> None:
        if not 0.0 < alpha <= 1.0 or min_samples < 1:
            raise ConfigError(f"alpha must be in (0, 1] and min_samples >= 1, got {alpha}, {min_samples}")
        self.alpha, self.min_samples = alpha, min_samples
        self._ema: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._published: dict[int, float] = {}  # bucket -> seconds, what `at` answers
        self.version = 0

    def observe(self, num_requests: int, residual_s: float) -> None:
        """One step's measured time minus the table's prediction, at `num_requests` requests."""
        b = bucket_of(num_requests)
        n = self._count.get(b, 0) + 1
        self._count[b] = n
        prev = self._ema.get(b)
        self._ema[b] = residual_s if prev is None else prev + self.alpha * (residual_s - prev)
        if n >= self.min_samples and (b not in self._published or n % REPUBLISH_EVERY == 0):
            value = max(self._ema[b], 0.0)
            if self._published.get(b) != value:
                self._published[b] = value
                self.version += 1

    def at(self, num_requests: int) -> float:
        """Seconds per round to add at `num_requests` requests (0 until a bucket has enough samples)."""
        if not self._published:
            return 0.0
        b = bucket_of(num_requests)
        if b in self._published:
            return self._published[b]
        nearest = min(self._published, key=lambda k: (abs(k.bit_length() - b.bit_length()), k))
        return self._published[nearest]

    def to_dict(self) -> dict[str, dict[int, float]]:
        return {"seconds": dict(sorted(self._published.items())), "samples": dict(sorted(self._count.items()))}
