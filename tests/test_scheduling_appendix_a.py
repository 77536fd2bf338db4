"""The paper's Appendix-A counterexample end to end: scheduler -> `rejection_sample` -> first output token.

Vocabulary {A, B}; target p = (0.7, 0.3) and draft q = (0.5, 0.5) at every slot, so the first draft
survives with probability a_1 = Σ min(p, q) = 0.8. The confidence of slot 2 depends on the sampled x_1
(a Markov feature): c_2 = 0.9 after A, 0 after B. SPS(1) = 1, SPS(2) = 0.5, SPS(3) = 0.45.

An unconstrained search (`global`) verifies both drafts after A and none after B, so the first output
token becomes A with probability 0.5·1 + 0.5·0.7 = 0.85. Algorithm 1 (`dspark`) stops at Θ_1 = 0.9 < 1,
and `dspark-async` takes its capacity from an independent earlier round: both keep (0.7, 0.3) exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from dspark.scheduling import SPSTable, plan_verify_lengths
from dspark.verify import rejection_sample

A, B = 0, 1
SPS = SPSTable([1, 2, 3], [1.0, 0.5, 0.45])
NUM_SAMPLES = 20_000


def _survival(first_draft: int) -> np.ndarray:
    c2 = 0.9 if first_draft == A else 0.0
    return np.array([[0.8, 0.8 * c2]])  # [1, γ=2]


def _first_output_token_a_count(policy: str, seed: int) -> int:
    gen = torch.Generator().manual_seed(seed)
    draft_ids = torch.multinomial(torch.tensor([0.5, 0.5]), NUM_SAMPLES * 2, replacement=True, generator=gen).view(NUM_SAMPLES, 2)
    # dspark-async: the stale survival comes from an earlier round whose own first draft is independent.
    stale_first = torch.multinomial(torch.tensor([0.5, 0.5]), NUM_SAMPLES, replacement=True, generator=gen)
    # One request per round, exactly as in the example. The policy is a pure function of its inputs, so it
    # is evaluated once per distinct input (x_1, stale x_1) and looked up per sample.
    planned = torch.tensor(
        [
            [int(plan_verify_lengths(_survival(x1), SPS, policy, stale_survival=_survival(old) if policy == "dspark-async" else None)[0]) for old in (A, B)]
            for x1 in (A, B)
        ]
    )  # [2, 2]
    num_verify = planned[draft_ids[:, 0], stale_first]  # [N]
    draft_probs = torch.full((NUM_SAMPLES, 2, 2), 0.5)
    target_probs = torch.tensor([0.7, 0.3]).expand(NUM_SAMPLES, 3, 2).contiguous()
    output_ids, _ = rejection_sample(draft_ids, draft_probs, target_probs, num_verify, generator=gen)
    return int((output_ids[:, 0] == A).sum())


def test_hand_computed_lengths():
    assert plan_verify_lengths(_survival(A), SPS, "global").tolist() == [2]  # Θ2 = 2.52·0.45 = 1.134 > 1
    assert plan_verify_lengths(_survival(B), SPS, "global").tolist() == [0]  # Θ2 = 1.8·0.45 = 0.81 < 1
    assert plan_verify_lengths(_survival(A), SPS, "dspark").tolist() == [0]  # stops at Θ1 = 0.9 < 1
    assert plan_verify_lengths(_survival(B), SPS, "dspark").tolist() == [0]


def test_global_search_biases_the_output():
    count = _first_output_token_a_count("global", seed=1)
    assert binomtest(count, NUM_SAMPLES, 0.85).pvalue > 1e-3
    assert binomtest(count, NUM_SAMPLES, 0.70).pvalue < 1e-12  # the bias is detected


@pytest.mark.parametrize("policy", ["dspark", "dspark-async"])
def test_lossless_policies_keep_the_target_distribution(policy):
    count = _first_output_token_a_count(policy, seed=2)
    assert binomtest(count, NUM_SAMPLES, 0.70).pvalue > 1e-3
    assert binomtest(count, NUM_SAMPLES, 0.85).pvalue < 1e-12  # the test has the power to see the bias
