"""The draft gate (POLICY+gate): parsing, the pay-off rule on hand-computed tables, skipped rounds in the
decoder (greedy equivalence, statistical losslessness, context carried to the next proposal) and the
simulator."""

import numpy as np
import pytest
import torch

from conftest import tiny_drafter
from dspark import SpeculativeDecoder
from dspark.scheduling.planner import VerifyPlanner
from dspark.drafters.base import ContextUpdate, concat_updates
from dspark.errors import ConfigError
from dspark.sampling import SamplingParams
from dspark.scheduling import DraftGate, SPSTable, drafting_pays, parse_policy, plan_verify_lengths
from dspark.sim.acceptance import make_acceptance
from dspark.sim.engine import SimConfig, simulate
from dspark.sim.workload import Arrivals
from stats import chi_square_pvalue
from test_decoder_greedy import PROMPTS, _drafter, bigram  # noqa: F401  (fixture)
from test_decoder_stats import PROMPT, ROWS, empirical, exact_laws, target  # noqa: F401  (fixture)

FLAT = dict(tokens=[1, 1000], steps_per_second=[100.0, 100.0])  # 10 ms per forward at any batch size


def flat_table(draft_s: float | None) -> SPSTable:
    return SPSTable(FLAT["tokens"], FLAT["steps_per_second"], None if draft_s is None else {1: draft_s, 1000: draft_s})


def test_parse_gate_suffix():
    assert parse_policy("dspark+gate").gate and parse_policy("dspark+gate").kind == "dspark"
    assert str(parse_policy("DSpark-Async+gate")) == "dspark-async+gate"
    assert str(parse_policy("mtp1+gate")) == "fixed:1+gate"
    assert str(parse_policy("threshold:0.4+gate")) == "threshold:0.4+gate"
    assert not parse_policy("dspark").gate
    for bad in ("none+gate", "fixed:0+gate"):
        with pytest.raises(ConfigError, match="drafts nothing"):
            parse_policy(bad)
    survival = np.array([[0.9, 0.5, 0.1], [0.6, 0.3, 0.2]])
    sps = flat_table(0.005)
    assert (plan_verify_lengths(survival, sps, "dspark+gate") == plan_verify_lengths(survival, sps, "dspark")).all()


def test_drafting_pays_by_hand():
    # plain: 1 token / 10 ms = 100 tok/s. Drafted round: 15 ms.
    sps = flat_table(0.005)
    assert drafting_pays([[0.9, 0.8]], sps, 1)  # k=2: 2.7 / 0.015 = 180
    assert not drafting_pays([[0.3, 0.1]], sps, 1)  # best k=2: 1.4 / 0.015 = 93.3 < 100
    assert drafting_pays([[0.3, 0.1]], flat_table(None), 1)  # no draft cost: never worse than plain
    # rows are repeated to the current request count: 4 requests of [0.4, 0.3]: τ = 4 + 2.8 = 6.8 / 15 ms
    # = 453 > 4 / 10 ms = 400
    assert drafting_pays([[0.4, 0.3]], sps, 4)
    with pytest.raises(ConfigError):
        drafting_pays([[0.5]], sps, 0)


def test_gate_predicts_the_policy_it_gates():
    """A dip in the table stops `dspark` (early stop) at ℓ = 0, so drafting cannot pay; `dspark-async` goes on."""
    jag = SPSTable([1, 2, 3], [100.0, 25.0, 100.0], {1: 0.005})  # 10 ms, 40 ms, 10 ms; 5 ms drafting
    assert not drafting_pays([[0.9, 0.8]], jag, 1, "dspark")  # ℓ = 0: 1 / 15 ms < 1 / 10 ms
    assert drafting_pays([[0.9, 0.8]], jag, 1, "dspark-async")  # ℓ = 2: 2.7 / 15 ms
    assert drafting_pays([[0.9, 0.8]], jag, 1, "fixed:2") and not drafting_pays([[0.9, 0.8]], jag, 1, "fixed:1")
    assert DraftGate(jag, "dspark+gate").policy == "dspark"


def test_gate_probes_while_closed_and_averages_rounds():
    gate = DraftGate(flat_table(0.005), probe_every=3, window=2, max_probe_every=6)
    assert gate.decide(1)  # no history yet: draft
    gate.observe([[0.3, 0.1]])
    decisions = [gate.decide(1) for _ in range(18)]
    # probes after 3 skipped rounds, then 6, then 6 again (the interval doubles up to max_probe_every)
    assert [i for i, d in enumerate(decisions) if d] == [3, 10, 17]
    assert gate.rounds_skipped == 15
    gate.observe([[0.9, 0.8]])  # window mean: (93.3 + 180) / 2 = 136.7 > 100
    assert gate.expected_gain(1) == pytest.approx((1.4 + 2.7) / 2 / 0.015 / 100)
    assert gate.decide(1) and gate.interval == 3  # opening resets the probe interval
    with pytest.raises(ConfigError):
        DraftGate(flat_table(0.005), probe_every=0)


def test_concat_updates_by_hand():
    a = ContextUpdate(torch.arange(6.0).view(2, 3, 1), torch.arange(6.0).view(2, 3, 1) + 100,
                      torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([2, 0]))
    b = ContextUpdate(torch.arange(4.0).view(2, 2, 1) + 10, torch.arange(4.0).view(2, 2, 1) + 110,
                      torch.tensor([[7, 8], [9, 10]]), torch.tensor([1, 2]))
    c = concat_updates(a, b)
    assert c.num_new.tolist() == [3, 2]
    assert c.features[..., 0].tolist() == [[0.0, 1.0, 10.0], [12.0, 13.0, 0.0]]
    assert c.last_hidden[..., 0].tolist() == [[100.0, 101.0, 110.0], [112.0, 113.0, 0.0]]
    assert c.next_ids.tolist() == [[1, 2, 7], [9, 10, 0]]
    assert concat_updates(None, b) is b


@pytest.mark.parametrize("method", ["dspark", "dflash", "eagle3", "mtp"])
def test_skipped_round_context_reaches_the_drafter(qwen3_target, method):
    """Absorbing two updates one round apart == absorbing their concatenation once (what a skip does)."""
    drafter = tiny_drafter(qwen3_target, method, seed=5)
    cfg = drafter.config
    gen = torch.Generator().manual_seed(0)
    feat = len(cfg.target_layer_ids) * qwen3_target.hidden_size

    def update(width, num_new):
        return ContextUpdate(torch.randn(2, width, feat, generator=gen), torch.randn(2, width, qwen3_target.hidden_size, generator=gen),
                             torch.randint(0, qwen3_target.vocab_size, (2, width), generator=gen), torch.tensor(num_new))

    first, second, third = update(5, [5, 3]), update(3, [1, 3]), update(2, [2, 1])
    anchors, params = torch.tensor([3, 7]), SamplingParams(0.0)
    step = drafter.new_state(2, torch.device("cpu"))
    drafter.propose(step, first, anchors, params)
    drafter.propose(step, second, anchors, params)
    expected = drafter.propose(step, third, anchors, params)
    skip = drafter.new_state(2, torch.device("cpu"))
    drafter.propose(skip, first, anchors, params)
    got = drafter.propose(skip, concat_updates(second, third), anchors, params)
    assert torch.equal(got.draft_ids, expected.draft_ids)
    torch.testing.assert_close(got.draft_probs, expected.draft_probs, atol=1e-5, rtol=1e-4)


class Alternating:
    """A planner that skips drafting in the given rounds (0-based) and verifies every draft otherwise.

    The engine asks `should_draft` after each step for the NEXT round; the prefill step counts as
    round 0's decision, so skipping round 0 means the first decoding round verifies nothing."""

    policy, drafting, needs_confidence = "scripted", True, False

    def __init__(self, skip: set[int]) -> None:
        self.skip, self.round = skip, 0

    def should_draft(self, num_requests: int) -> bool:
        self.round += 1
        return self.round - 1 not in self.skip

    def plan(self, survival, confidence=None):
        return np.full(survival.shape[0], survival.shape[1], dtype=np.int64)


@pytest.mark.parametrize("method, kw", [("dspark", {"markov_head_type": "vanilla"}), ("eagle3", {}), ("mtp", {})])
def test_skipped_rounds_keep_greedy_output(bigram, method, kw):  # noqa: F811
    tgt, f = bigram
    dec = SpeculativeDecoder(tgt, _drafter(tgt, f, method, kw))
    base = dec.generate(PROMPTS, 48, temperature=0, speculative=False)
    spec = dec.generate(PROMPTS, 48, temperature=0, planner=Alternating({0, 2, 3, 7, 8, 9}))
    assert [s.token_ids for s in spec] == [b.token_ids for b in base]
    verified = [r.verified for r in spec[0].rounds]
    assert verified[0] == 0 and verified[2] == 0 and max(verified) > 0


def test_gated_policy_keeps_greedy_output_and_skips(bigram):  # noqa: F811
    tgt, f = bigram
    dec = SpeculativeDecoder(tgt, _drafter(tgt, f, "dspark", {"markov_head_type": "vanilla"}))
    base = dec.generate(PROMPTS, 40, temperature=0, speculative=False)
    costly = VerifyPlanner("dspark+gate", SPSTable([1, 100], [100.0, 100.0], {1: 1.0, 100: 1.0}))
    spec = dec.generate(PROMPTS, 40, temperature=0, planner=costly)
    assert [s.token_ids for s in spec] == [b.token_ids for b in base]
    assert costly.gate.rounds_skipped > 0
    free = VerifyPlanner("dspark+gate", SPSTable([1, 100], [100.0, 100.0]))
    dec.generate(PROMPTS, 40, temperature=0, planner=free)
    assert free.gate.rounds_skipped == 0
    with pytest.raises(ConfigError, match="SPS"):
        VerifyPlanner("fixed:2+gate")


def test_skipped_round_is_statistically_lossless(target):  # noqa: F811
    """x2 from a plain (skipped) round, x3 from the first drafted round with the carried context."""
    drafter = tiny_drafter(target, "dspark", seed=11, scale=3.0)
    results = SpeculativeDecoder(target, drafter).generate([PROMPT] * ROWS, 4, seed=99, temperature=1.0,
                                                          planner=Alternating({0}))
    assert all(r.rounds[0].verified == 0 for r in results[:10])
    joint12, joint23 = exact_laws(target, SamplingParams())
    c12, c23 = empirical(results, target.vocab_size)
    assert chi_square_pvalue(c12, joint12) > 1e-4 and chi_square_pvalue(c23, joint23) > 1e-4


def test_simulator_gate_turns_drafting_off_only_when_it_does_not_pay():
    acc = make_acceptance("dspark/chat")
    arrivals = lambda: Arrivals(concurrency=4)  # noqa: E731
    cheap, costly = flat_table(0.0001), flat_table(0.05)
    base = simulate(SimConfig(policy="dspark", num_requests=32), arrivals(), cheap, acc)
    gated = simulate(SimConfig(policy="dspark+gate", num_requests=32), arrivals(), cheap, acc)
    assert gated.drafted_rounds == gated.rounds and gated.throughput == pytest.approx(base.throughput)
    off = simulate(SimConfig(policy="dspark+gate", num_requests=32), arrivals(), costly, acc)
    plain = simulate(SimConfig(policy="none", num_requests=32), arrivals(), costly, acc)
    always = simulate(SimConfig(policy="dspark", num_requests=32), arrivals(), costly, acc)
    assert 0 < off.drafted_rounds < off.rounds / 4  # probes only
    assert always.throughput < off.throughput <= plain.throughput * 1.001
