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
    """τ over all rounds of all rows, per-slot conditional and unconditional acceptance (SPEC §4).

    The definitions live in `dspark.eval.metrics` (pure, tested on hand-made traces); τ is None
    without rounds.
    """
    from dspark.eval.metrics import acceptance_summary

    rounds = [r for res in results for r in res.rounds]
    return acceptance_summary([r.accepted for r in rounds], [r.verified for r in rounds], num_slots)
