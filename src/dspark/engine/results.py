"""What a generation returns: per-request tokens and per-round records (`GenerationResult`, `RoundRecord`).

τ (SPEC §1) is the mean of committed tokens per round INCLUDING the recovered/bonus token; the
aggregate definitions (τ over many results, per-slot acceptance) live in `dspark.eval.metrics`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RoundRecord:
    drafted: int  # tokens the drafter proposed
    verified: int  # of those, how many the target checked
    accepted: int  # accepted drafts (accept_len)
    committed: int  # tokens actually appended (accepted + 1, fewer if a stop token or the budget cut it)
    draft_ids: list[int] = field(default_factory=list)
    confidences: list[float] | None = None
    stopped: bool = False  # the round ended the request at a stop token (EOS, stop_token_ids)


@dataclass
class GenerationResult:
    token_ids: list[int]
    rounds: list[RoundRecord]
    finish_reason: str  # "eos" | "length" | "stop" | "abort"
    request_id: str = ""
    text: str | None = None
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache
    num_preemptions: int = 0
    synthetic_acceptance: str | None = None  # the label when acceptance was synthetic (benchmark only, NOT lossless)

    @property
    def tau(self) -> float:
        """Mean tokens per round including the recovered/bonus token (SPEC §1; `dspark.eval.metrics.round_tokens`)."""
        return sum(r.committed if r.stopped else r.accepted + 1 for r in self.rounds) / max(1, len(self.rounds))

    def to_dict(self) -> dict:
        out = {"token_ids": self.token_ids, "finish_reason": self.finish_reason, "tau": self.tau,
               "rounds": [asdict(r) for r in self.rounds]}
        if self.synthetic_acceptance is not None:
            out["synthetic_acceptance"] = self.synthetic_acceptance
        return out


@dataclass
class RequestOutput:
    """What one `LLM.step()` reports for a request that got tokens or finished."""

    request_id: str
    new_token_ids: list[int]
    token_ids: list[int]  # every output token so far
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    text: str | None = None  # the decoded output so far (stop strings cut), when the target has a tokenizer
