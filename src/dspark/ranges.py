"""What a user-given number or device may be: declared ranges, checked with a one-line error.

Used at the boundaries where values come in: the command line (`dspark.cli.validation` declares a
`Range` for every numeric flag) and the training config (`dspark.train.config`). A value outside its
range raises `ConfigError` naming the flag or key, the range and the value, before any work starts.
NaN and infinities are outside every range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dspark.errors import ConfigError

# Sampling at a temperature this small divides logits by ~1e4 or more: it is greedy decoding in effect,
# and far smaller values overflow to inf/NaN. 0 is the explicit way to ask for greedy.
MIN_TEMPERATURE = 1e-4
MAX_TOKENS = 1 << 24  # token counts (lengths, budgets) above this are a typo, not a request


@dataclass(frozen=True)
class Range:
    """An interval of valid numbers (None = unbounded); `open_low` / `open_high` exclude the bound itself."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    note: str = ""  # what a special value means, e.g. "0: all"

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"
        elif self.low is not None:
            text = f"{'>' if self.open_low else '>='} {self.low:g}"
        elif self.high is not None:
            text = f"{'<' if self.open_high else '<='} {self.high:g}"
        else:
            text = "a finite number"
        return f"{text} ({self.note})" if self.note else text

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.open_high and value == self.high)))

    def check(self, what: str, value: Any) -> None:
        """Raise `ConfigError` unless every number in `value` (a number, a list of them, or None) is in range."""
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, (int, float)) and not isinstance(item, bool) and not self.contains(item):
                raise ConfigError(f"{what} must be {self.describe()}, got {item!r}")


ANY = Range()
POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1)


def check_temperature(what: str, value: float | None) -> None:
    """0 (greedy) or a finite temperature >= MIN_TEMPERATURE."""
    if value is None:
        return
    NON_NEGATIVE.check(what, value)
    if 0 < value < MIN_TEMPERATURE:
        raise ConfigError(f"{what} {value!r} is too small to sample with: use 0 for greedy decoding or a "
                          f"temperature >= {MIN_TEMPERATURE:g}")


def check_device(what: str, text: str | None, allow_auto: bool = True) -> None:
    """A torch device this machine has (`cpu`, `cuda`, `cuda:N`, `mps`; `auto` where allowed)."""
    if text is None or (allow_auto and text == "auto"):
        return
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{what} {text!r} is not a device; use cpu, cuda, cuda:N"
                          f"{' or auto' if allow_auto else ''}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {text!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{what} {text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{what} {text!r}: MPS is not available on this machine (use cpu)")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{what} {text!r}: only cpu, cuda and mps devices are supported")
