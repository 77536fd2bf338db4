"""`SpeculativeDecoder`: the batch-of-prompts Python API, as a thin wrapper over the engine.

    SpeculativeDecoder(target, drafter).generate(prompts, 64, temperature=1.0, seed=0, policy="dspark", sps=table)

Each `generate` call runs a fresh `LLM` sized to hold every prompt at once, so the results are those
of the engine (one decoding core): same scheduler, same step function, same runners. Request i uses
seed `seed + i`. `eos_token_id=None` means "no end-of-sequence token" (every row runs to its budget).
"""

from __future__ import annotations

from dspark.drafters.base import Drafter
from dspark.engine.llm import LLM
from dspark.engine.results import GenerationResult
from dspark.errors import ConfigError, DSparkError
from dspark.scheduling.planner import Planner
from dspark.scheduling.sps_table import SPSTable
from dspark.targets.adapter import TargetModel


def policy_for(drafter: Drafter | None, speculative: bool, verify_len: int | None, threshold: float,
               policy: str | None) -> str:
    """The policy string the old keyword arguments stand for."""
    if not speculative or drafter is None:
        return "none"
    if policy is not None:
        return policy
    if verify_len is not None and verify_len < 0:
        raise ConfigError(f"verify_len must be >= 0, got {verify_len}")
    if threshold > 0:
        if verify_len is not None:
            raise ConfigError("give verify_len or threshold, not both (use policy='threshold:T' or 'fixed:K')")
        return f"threshold:{threshold:g}"
    return f"fixed:{drafter.config.num_drafts if verify_len is None else verify_len}"


class SpeculativeDecoder:
    def __init__(self, target: TargetModel, drafter: Drafter | None = None, runner: str = "auto") -> None:
        self.target, self.drafter, self.runner = target, drafter, runner
        if drafter is not None:
            from dspark.formats import check_compatible

            check_compatible(drafter.config, target)
            drafter.to(target.device).eval()

    def generate(self, prompts: list[list[int]], max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, seed: int | None = None, eos_token_id: int | list[int] | None = None,
                 verify_len: int | None = None, threshold: float = 0.0, speculative: bool = True,
                 planner: Planner | None = None, policy: str | None = None, sps: SPSTable | None = None
                 ) -> list[GenerationResult]:
        if not prompts:
            raise DSparkError("no prompts given")
        name: str | Planner = policy_for(self.drafter, speculative, verify_len, threshold, policy)
        if planner is not None and speculative and self.drafter is not None:
            name = planner  # used as given (its state, e.g. the gate's counters, stays observable)
        eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        gamma = self.drafter.config.num_drafts if self.drafter is not None else 0
        longest = max(len(p) for p in prompts) + int(max_new_tokens) + gamma + 2
        page_size = 16
        llm = LLM(self.target, self.drafter, policy=name, sps=sps, runner=self.runner, page_size=page_size,
                  max_num_seqs=len(prompts), max_num_batched_tokens=max(2048, len(prompts) * (gamma + 1)),
                  num_pages=len(prompts) * -(-longest // page_size) + 1, eos_token_ids=tuple(eos) or (-1,))
        return llm.generate(prompts, max_new_tokens, temperature, top_p, top_k, seed, ignore_eos=not eos)
