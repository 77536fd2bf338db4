"""Every verification-length policy through the decoder stays lossless (greedy and statistical)."""

import pytest

from conftest import tiny_drafter
from dspark import SpeculativeDecoder
from dspark.scheduling.planner import VerifyPlanner
from dspark.errors import ConfigError
from dspark.sampling import SamplingParams
from dspark.scheduling import SPSTable
from stats import chi_square_pvalue
from test_decoder_greedy import PROMPTS, _drafter, bigram  # noqa: F401  (fixture)
from test_decoder_stats import PROMPT, ROWS, empirical, exact_laws, target  # noqa: F401  (fixture)

LOSSLESS = ["none", "fixed:2", "mtp1", "threshold:0.4", "dspark", "dspark-async"]


def jagged_sps(rows: int) -> SPSTable:
    """Steps/s falling with batch tokens, with a jag: requests end up with different lengths."""
    tokens = [1, rows, 2 * rows, 2 * rows + 1, 3 * rows, 5 * rows, 9 * rows]
    return SPSTable(tokens, [1.0 / (1 + t / (2.0 * rows)) * (0.9 if i == 3 else 1.0) for i, t in enumerate(tokens)])


@pytest.mark.parametrize("policy", LOSSLESS)
def test_policies_keep_greedy_output(bigram, policy):  # noqa: F811
    tgt, f = bigram
    dec = SpeculativeDecoder(tgt, _drafter(tgt, f, "dspark", {"markov_head_type": "vanilla"}))
    base = dec.generate(PROMPTS, 40, temperature=0, speculative=False)
    spec = dec.generate(PROMPTS, 40, temperature=0, planner=VerifyPlanner(policy, jagged_sps(len(PROMPTS))))
    assert [s.token_ids for s in spec] == [b.token_ids for b in base]
    if policy == "none":
        assert all(r.verified == 0 for s in spec for r in s.rounds)


@pytest.mark.parametrize("policy", ["dspark", "dspark-async", "threshold:0.5"])
def test_policies_are_statistically_lossless(target, policy):  # noqa: F811
    drafter = tiny_drafter(target, "dspark", seed=11, scale=3.0)
    results = SpeculativeDecoder(target, drafter).generate(
        [PROMPT] * ROWS, 4, seed=321, temperature=1.0, planner=VerifyPlanner(policy, jagged_sps(ROWS)))
    lengths = {r.rounds[0].verified for r in results}
    assert len(lengths) > 1, "requests must get different verification lengths"
    joint12, joint23 = exact_laws(target, SamplingParams())
    c12, c23 = empirical(results, target.vocab_size)
    assert chi_square_pvalue(c12, joint12) > 1e-4 and chi_square_pvalue(c23, joint23) > 1e-4


def test_policy_errors(target):  # noqa: F811
    with pytest.raises(ConfigError, match="SPS"):
        VerifyPlanner("dspark")
    with pytest.raises(ConfigError):
        VerifyPlanner("bogus")
    planner = VerifyPlanner("threshold:0.5")
    dflash = tiny_drafter(target, "dflash")
    with pytest.raises(ConfigError, match="confidence head"):
        SpeculativeDecoder(target, dflash).generate([PROMPT], 4, planner=planner)
