"""`Request`: the scheduler's record of one generation (CPU only, no tensors).

Token bookkeeping: ``all_ids = prompt_ids + output_ids``. ``num_computed`` positions have their K/V
(target and drafter) in the request's pages. A decoding request always has exactly one token without
K/V, the last one (the anchor of the next round): ``num_computed == len(all_ids) - 1``. A request in
prefill computes positions up to ``prefill_end``: the whole prompt for a fresh request (its final chunk
samples the first output token), everything but the anchor for one resumed after preemption.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dspark.engine.options import SamplingOptions
from dspark.engine.results import RoundRecord


class Status(enum.Enum):
    WAITING = "waiting"  # queued (fresh or preempted): needs prefill from num_computed
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    req_id: str
    prompt_ids: list[int]
    options: SamplingOptions
    seed: int
    arrival: int = 0  # engine step at which it was added
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    num_computed: int = 0
    num_cached: int = 0  # prompt tokens served by the prefix cache at the last admission
    pages: list[int] = field(default_factory=list)
    num_hashed_pages: int = 0  # leading pages registered in the prefix cache
    survival: list[float] | None = None  # prefix survival of the drafts waiting for verification
    conditional: list[float] | None = None  # their conditional confidences c_k
    draft_ids: list[int] = field(default_factory=list)  # the waiting drafts (for the round records)
    rounds: list[RoundRecord] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    num_preemptions: int = 0
    rng_counter: int = 0  # next free draw of this request's random stream

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def last_token(self) -> int:
        """all_ids[-1] without building all_ids."""
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def prefill_end(self) -> int:
        """Positions whose K/V a prefill must produce (see the module docstring)."""
        return self.num_tokens - 1 if self.output_ids else self.num_tokens

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.prefill_end

    @property
    def remaining(self) -> int:
        return self.options.max_tokens - len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED
