"""The simulator's price of one engine step: the SPS table's terms plus the ones the table leaves out.

Where it sits: `dspark.sim.engine` asks `StepCost.step_seconds(...)` for the duration of every step it
simulates; the verification planner inside the simulator still reads the SPS table alone, as the
engine's planner does. `StepCost(table)` (no extra terms) prices a step exactly as the table does, so
simulations that give no cost model are unchanged. The extra terms are measured on the engine
(`dspark.eval.sim_check`) and checked against it by ``scripts/bench_frontier.py --simulate``. Pure:
numbers in, seconds out.

One engine step holds R decoding rows verifying Σℓ drafts (B = R + Σℓ tokens) and, in the same
forward (the engine's chunked prefill), n prefill chunks of P prompt tokens in all. It lasts

    verify(pad(B)) + request(pad(R)) + [draft(pad(R)) if it drafts]           the table: round_time
  + context_s · Σ_r (ctx_r − ctx_0)  [+ draft_context_s · Σ_r (...) if it drafts]     longer contexts
  + [plan(R) if it drafts]                                                        the policy's own host time
  + prefill.step(R) + prefill.row_s · (n − 1) + prefill.token_s · P'  if n > 0     a prefill chunk
  + host(R)                                                                       the serving loop's excess

* **pad** (`ladder`): on the GPU every engine step, prefill chunks included, replays a CUDA graph
  captured for its shape padded up a ladder (`dspark.engine.graphed_target.ladder_for`: 1, 2, 3, 4,
  6, 8, ... tokens and sequences, up to the step's token budget), so a step costs what the padded one
  costs: the decoding rows' B tokens are priced at pad(B), the prompt tokens at P' = pad(B + P) −
  pad(B) (what the padded step holds beyond them). Steps whose B + P is above the ladder's top run
  eagerly, unpadded (P' = P). ``ladder=None`` (the CPU, an eager engine): nothing is padded.
* **context** (`context_s`, `draft_context_s`, `context_0`): seconds per decoding row per context
  token beyond the context the table was profiled at (attention reads each row's K/V once per step:
  the target's in every step, the drafter's in the steps that draft). ``ctx_r`` = prompt + output so
  far. 0 unless measured; the sum may be negative (contexts shorter than the profile's).
* **plan** (`plan`, seconds by R): the host time the engine's planner spends per drafted round (the
  gate's decision and the policy's verify lengths) beyond what the table's profile already paid
  (`profile_engine` times its steps under ``fixed:γ``, whose planning costs next to nothing, while
  ``dspark-async+gate`` sorts R·γ candidates and evaluates Θ along them). None: not modelled.
* **prefill** (`prefill`, one `PrefillCost` for steps that draft and one for steps that do not): the
  measured excess of a step carrying prefill chunks over the same step without them. On the GPU it
  includes running the whole step eagerly instead of replaying a graph; the new rows' first-token
  sampling and (in a drafting step) their first proposal are in it too, so they are not charged to
  `draft`. Without a measured term, prompt tokens go through the verify curve instead:
  ``verify(pad(B + P))`` (this is how ``prefill="inline"`` has always priced a prefill step).
* **host** (`host`, seconds by R): what a decoding step of the serving loop costs beyond every term
  above, measured on the engine (`dspark.eval.host_cost`: a short calibration closed loop, each step's
  measured duration less its price here). The profile's steady steps miss the host work of serving:
  requests finishing, released and admitted, outputs handed back, the loop between two steps, the
  planner's bookkeeping. It is negative where the table prices a serving step above what it took (a
  profile taken under other conditions: session 13's drafted steps at R = 1 were priced 5 ms over), so it
  corrects the table both ways. Added to every step with R > 0 decoding rows. None: not modelled.

The context and host terms may be negative; a step's total never drops below `MIN_PRICE_FACTOR` times
its price from the table alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dspark.errors import ConfigError
from dspark.scheduling import SPSTable
from dspark.scheduling.sps_table import pad_to_ladder

MIN_PRICE_FACTOR = 0.25  # negative context / host terms never take a step below this share of its table price


def _finite(x: float, what: str, low: float = 0.0) -> float:
    x = float(x)
    if not np.isfinite(x) or x < low:
        raise ConfigError(f"{what} must be a finite number >= {low:g}, got {x}")
    return x


@dataclass(frozen=True)
class RequestCurve:
    """Seconds keyed by a request count >= 0: linear between points, constant beyond both ends. `signed`:
    the seconds may be negative (a correction, as the host term), else they must be >= 0."""

    requests: tuple[int, ...]
    seconds: tuple[float, ...]
    signed: bool = False

    def __post_init__(self) -> None:
        req = tuple(int(r) for r in self.requests)
        sec = tuple(_finite(s, "seconds", -np.inf if self.signed else 0.0) for s in self.seconds)
        if not req or len(req) != len(sec) or min(req) < 0 or len(set(req)) != len(req):
            raise ConfigError(f"a request curve needs as many distinct request counts >= 0 as seconds, got {req} / {sec}")
        order = np.argsort(req)
        object.__setattr__(self, "requests", tuple(req[i] for i in order))
        object.__setattr__(self, "seconds", tuple(sec[i] for i in order))

    def at(self, num_requests: float) -> float:
        return float(np.interp(num_requests, self.requests, self.seconds))

    def to_dict(self) -> dict[str, Any]:
        return {"requests": list(self.requests), "seconds": list(self.seconds), **({"signed": True} if self.signed else {})}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestCurve:
        return cls(tuple(data["requests"]), tuple(data["seconds"]), bool(data.get("signed", False)))


@dataclass(frozen=True)
class PrefillCost:
    """What prefill chunks add to a step with R decoding rows: `step.at(R) + row_s·(n−1) + token_s·P` seconds.

    `step`: the fixed part by R. At R = 0 (a step of prefill alone) the excess is the whole step.
    """

    step: RequestCurve
    row_s: float = 0.0
    token_s: float = 0.0

    def __post_init__(self) -> None:
        if self.step.signed:
            raise ConfigError("a prefill cost's fixed part must be >= 0 (not a signed curve)")
        object.__setattr__(self, "row_s", _finite(self.row_s, "prefill row seconds"))
        object.__setattr__(self, "token_s", _finite(self.token_s, "prefill token seconds"))

    def seconds(self, decode_rows: int, chunks: int, tokens: int) -> float:
        """The excess of a step with `chunks` prefill chunks of `tokens` prompt tokens beside `decode_rows` rows."""
        if chunks <= 0:
            return 0.0
        return self.step.at(decode_rows) + self.row_s * (chunks - 1) + self.token_s * tokens

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step.to_dict(), "row_s": self.row_s, "token_s": self.token_s}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrefillCost:
        return cls(RequestCurve.from_dict(data["step"]), data.get("row_s", 0.0), data.get("token_s", 0.0))


def pad_up(x: int, ladder: Sequence[int] | None) -> int:
    """`x` padded up to the next ladder size (`x` itself above the top, or without a ladder)."""
    return int(pad_to_ladder(np.asarray(float(x)), tuple(ladder) if ladder else None))


@dataclass(frozen=True)
class StepCost:
    """The table plus the terms of the module docstring (all default to "not modelled": the table alone)."""

    table: SPSTable
    prefill: Mapping[str, PrefillCost] = field(default_factory=dict)  # "drafted" / "plain"
    ladder: tuple[int, ...] | None = None
    context_s: float = 0.0
    draft_context_s: float = 0.0
    context_0: float = 0.0
    plan: RequestCurve | None = None
    host: RequestCurve | None = None

    def __post_init__(self) -> None:
        unknown = set(self.prefill) - {"drafted", "plain"}
        if unknown:
            raise ConfigError(f"prefill costs are keyed 'drafted' / 'plain', got {sorted(unknown)}")
        if self.ladder is not None:
            ladder = tuple(sorted({int(x) for x in self.ladder}))
            if not ladder or ladder[0] < 1:
                raise ConfigError(f"a padding ladder needs sizes >= 1, got {self.ladder}")
            object.__setattr__(self, "ladder", ladder)
        if self.host is not None and not self.host.signed:  # a correction by nature: either sign
            object.__setattr__(self, "host", RequestCurve(self.host.requests, self.host.seconds, signed=True))
        for name in ("context_s", "draft_context_s", "context_0"):
            object.__setattr__(self, name, _finite(getattr(self, name), name))

    def step_seconds(self, decode_rows: int, verify_tokens: int, drafting: bool, *, prefill_chunks: int = 0,
                     prefill_tokens: int = 0, context_tokens: float | None = None) -> float:
        """Seconds of one step (module docstring). `verify_tokens` = B = R + Σℓ; `context_tokens` = Σ_r ctx_r
        over the decoding rows (None: every row at the profiled context, no context term)."""
        prompt = prefill_tokens if prefill_chunks > 0 else 0
        eager = self.ladder is not None and verify_tokens + prompt > self.ladder[-1]
        ladder = None if eager else self.ladder
        tokens, rows = pad_up(verify_tokens, ladder), pad_up(decode_rows, ladder)
        prompt = max(0, pad_up(verify_tokens + prompt, ladder) - tokens) if prompt else 0  # P'
        prefill = self.prefill.get("drafted" if drafting else "plain") if prefill_chunks > 0 else None
        if prefill is None and prefill_chunks > 0:
            tokens += prompt  # no measured term: prompt tokens through the verify curve
        t = float(self.table.step_time(tokens)) if tokens > 0 else 0.0
        extra = 0.0  # the signed terms (context, host), floored below as a whole
        if decode_rows > 0:
            t += float(self.table.request_time(rows)) + (float(self.table.draft_time(rows)) if drafting else 0.0)
            if context_tokens is not None:
                excess = float(context_tokens) - self.context_0 * decode_rows
                extra += excess * (self.context_s + (self.draft_context_s if drafting else 0.0))
            if self.host is not None:
                extra += self.host.at(decode_rows)
        t = max(t + extra, MIN_PRICE_FACTOR * t)
        if drafting and decode_rows > 0 and self.plan is not None:
            t += self.plan.at(decode_rows)
        if prefill is not None:
            t += prefill.seconds(decode_rows, prefill_chunks, prompt)
        return t

    @property
    def models_prefill(self) -> bool:
        return bool(self.prefill)

    def to_dict(self) -> dict[str, Any]:
        """The extra terms (the table is saved on its own: `SPSTable.save`)."""
        return {"prefill": {k: v.to_dict() for k, v in self.prefill.items()}, "ladder": list(self.ladder or []) or None,
                "context_s": self.context_s, "draft_context_s": self.draft_context_s, "context_0": self.context_0,
                "plan": None if self.plan is None else self.plan.to_dict(),
                "host": None if self.host is None else self.host.to_dict()}

    @classmethod
    def from_dict(cls, table: SPSTable, data: Mapping[str, Any]) -> StepCost:
        prefill = {k: PrefillCost.from_dict(v) for k, v in (data.get("prefill") or {}).items()}
        ladder = data.get("ladder")
        plan, host = data.get("plan"), data.get("host")
        return cls(table, prefill, tuple(ladder) if ladder else None, data.get("context_s", 0.0),
                   data.get("draft_context_s", 0.0), data.get("context_0", 0.0),
                   None if plan is None else RequestCurve.from_dict(plan),
                   None if host is None else RequestCurve.from_dict(host))
