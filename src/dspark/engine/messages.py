"""The only things that cross between the CPU scheduler and a runner: small plain dataclasses.

Per step the scheduler sends a `SchedulerOutput`: which sequences run, each either a prefill chunk
(token ids given) or a verify block (the anchor plus the first `num_verify` drafts the runner holds
for that request), with its pages; whether the runner should draft for the next round; which
requests' runner-side state to drop. The runner answers with a `RunnerOutput`: per sequence the
committed token ids and the accepted count, and for new drafts their ids and calibrated confidences
(what the verification policy needs next step). No tensors, so either side can be replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NewRequest:
    """Sent once, when a request is first scheduled (and again after a preemption)."""

    req_id: str
    temperature: float
    top_p: float
    top_k: int
    seed: int


@dataclass
class ScheduledSeq:
    req_id: str
    start: int  # position of the first query token (= num_computed)
    token_ids: list[int]  # prefill: the chunk; verify: [anchor] (the drafts stay on the runner)
    block_table: list[int]
    rng_counter: int  # first draw of this step in the request's random stream
    prefill: bool = False
    final_chunk: bool = False  # prefill: the chunk that reaches prefill_end
    sample_first: bool = False  # final chunk of a fresh request: sample the first output token
    next_token: int | None = None  # prefill: the token after the chunk (the drafter's context needs it)
    num_verify: int = 0  # verify: ℓ drafts checked after the anchor

    @property
    def num_query(self) -> int:
        return len(self.token_ids) + self.num_verify


@dataclass
class SchedulerOutput:
    seqs: list[ScheduledSeq]
    new_requests: list[NewRequest] = field(default_factory=list)
    draft: bool = False  # propose drafts after this step (for the next round's verification)
    released: list[str] = field(default_factory=list)  # finished, aborted or preempted: drop runner state

    @property
    def num_tokens(self) -> int:
        return sum(s.num_query for s in self.seqs)


@dataclass
class SeqResult:
    req_id: str
    committed: list[int]  # new output tokens (verify: accepted drafts + recovered/bonus; prefill: sampled first)
    num_accepted: int = 0
    draft_ids: list[int] = field(default_factory=list)  # drafts proposed for the next round ([] if none)
    confidences: list[float] | None = None  # their calibrated conditional confidences c_k (None: no head)


@dataclass
class RunnerOutput:
    results: list[SeqResult]
