"""Bridge from the decoder to the scheduling policies: per round, survival -> verification lengths.

The decoder hands each round's `Proposal` to a `PolicyPlanner`; it forms the prefix survival
a_{r,j} = Π_{i<=j} c_{r,i} from the calibrated confidences and calls `plan_verify_lengths` with the
named policy and SPS table. For `dspark-async` it keeps the survival of the last two rounds and passes
the one from two rounds earlier as the stale input (SPEC §5.3). For ``POLICY+gate`` the decoder first asks
`should_draft(active)` (a `DraftGate` over the recent drafted rounds' survival of the active rows).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import torch

from dspark.drafters.base import Proposal
from dspark.errors import ConfigError
from dspark.scheduling import DraftGate, SPSTable, parse_policy, plan_verify_lengths

NEEDS_SPS = ("dspark", "dspark-async", "global")
NEEDS_CONFIDENCE = ("threshold", "dspark", "dspark-async", "global")


class PolicyPlanner:
    def __init__(self, policy: str, sps: SPSTable | None = None) -> None:
        self.policy = policy
        parsed = parse_policy(policy)
        self.kind = parsed.kind
        if (self.kind in NEEDS_SPS or parsed.gate) and sps is None:
            raise ConfigError(f"policy {policy!r} needs an SPS table (--sps FILE)")
        self.needs_confidence = self.kind in NEEDS_CONFIDENCE or parsed.gate
        self.sps = sps if sps is not None else SPSTable([1, 2], [1.0, 1.0])
        self.history: deque[torch.Tensor] = deque(maxlen=2)
        self.gate = DraftGate(self.sps, policy) if parsed.gate else None
        self.active: torch.Tensor | None = None  # [R] bool, rows still generating (set by should_draft)

    def should_draft(self, active: torch.Tensor) -> bool:
        """Run the drafter this round? Always, unless the policy has the draft gate."""
        if self.gate is None:
            return True
        self.active = active.cpu()
        return self.gate.decide(int(self.active.sum()))

    def __call__(self, proposal: Proposal) -> torch.Tensor:
        conf = proposal.confidence
        if conf is None:
            if self.needs_confidence:
                raise ConfigError(f"policy {self.policy!r} needs a drafter with a confidence head")
            conf = torch.zeros(proposal.draft_ids.shape, device=proposal.draft_ids.device)
        survival = conf.float().cumprod(dim=1).cpu()  # [R, K]
        stale = self.history[0] if len(self.history) == 2 else None
        lengths = plan_verify_lengths(survival, self.sps, self.policy, stale_survival=stale, confidence=conf.float().cpu())
        self.history.append(survival)
        if self.gate is not None:
            self.gate.observe(survival if self.active is None else survival[self.active])
        return lengths.to(proposal.draft_ids.device)


def planner_from_args(policy: str, sps_path: str | None) -> PolicyPlanner:
    sps = None
    if sps_path is not None:
        if not Path(sps_path).is_file():
            raise ConfigError(f"SPS table {sps_path!r} not found")
        sps = SPSTable.load(sps_path)
    return PolicyPlanner(policy, sps)
