"""What a generation returns: per-row tokens and per-round records, plus aggregate statistics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RoundRecord:
    drafted: int  # tokens the drafter proposed
    verified: int  # of those, how many the target checked
    accepted: int  # accepted drafts (accept_len)
    committed: int  # tokens actually appended (accepted + 1, fewer if EOS or the budget cut it)
    draft_ids: list[int] = field(default_factory=list)
    confidences: list[float] | None = None


@dataclass
class GenerationResult:
    token_ids: list[int]
    rounds: list[RoundRecord]
    finish_reason: str  # "eos" | "length"

    @property
    def tau(self) -> float:
        """Mean tokens per round including the recovered/bonus token (SPEC §1)."""
        return sum(r.accepted + 1 for r in self.rounds) / max(1, len(self.rounds))

    def to_dict(self) -> dict:
        return {"token_ids": self.token_ids, "finish_reason": self.finish_reason, "tau": self.tau,
                "rounds": [asdict(r) for r in self.rounds]}


def summarize(results: list[GenerationResult], num_slots: int) -> dict:
    """τ over all rounds of all rows; per-slot unconditional and conditional acceptance."""
    rounds = [r for res in results for r in res.rounds]
    tau = sum(r.accepted + 1 for r in rounds) / max(1, len(rounds))
    survived = [0] * num_slots  # rounds where slot k (0-based) was verified and accepted
    reached = [0] * num_slots  # rounds where slot k was verified and all before it accepted
    for r in rounds:
        for k in range(min(r.verified, num_slots)):
            reached[k] += int(k <= r.accepted)
            survived[k] += int(k < r.accepted)
    verified_rounds = [sum(1 for r in rounds if r.verified > k) for k in range(num_slots)]
    return {
        "tau": tau,
        "num_rounds": len(rounds),
        "accept_rate_unconditional": [survived[k] / verified_rounds[k] if verified_rounds[k] else None for k in range(num_slots)],
        "accept_rate_conditional": [survived[k] / reached[k] if reached[k] else None for k in range(num_slots)],
    }
