"""Greedy equivalence: speculative output == target-only greedy output, token for token, every drafter."""

import pytest
import torch

from conftest import save_tiny_target, tiny_drafter
from dspark import SpeculativeDecoder, load_target
from models_surgery import make_bigram_target, teach_dspark, teach_mtp

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11, 12, 13], [20, 21]]
DRAFTERS = [("dspark", {"markov_head_type": "vanilla"}), ("dspark", {"markov_head_type": "gated"}),
            ("dspark", {"markov_head_type": "rnn"}), ("dflash", {}), ("eagle3", {}), ("mtp", {})]


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def bigram(request, tmp_path_factory):
    target = load_target(save_tiny_target(tmp_path_factory.mktemp(request.param), arch=request.param, seed=3))
    return target, make_bigram_target(target)


def _drafter(target, f, method, kw):
    if method == "dspark":
        d = tiny_drafter(target, "dspark", markov_rank=target.vocab_size, block_size=5, **kw)
        teach_dspark(d, f, wrong=0.25) if kw["markov_head_type"] != "rnn" else None
        return d
    d = tiny_drafter(target, method, **({"block_size": 5} if method == "dflash" else {}))
    if method == "mtp":
        teach_mtp(d, target, wrong_scale=0.3)
    return d


@pytest.mark.parametrize("method, kw", DRAFTERS, ids=[m + "-" + kw.get("markov_head_type", "") for m, kw in DRAFTERS])
def test_greedy_equivalence(bigram, method, kw):
    target, f = bigram
    dec = SpeculativeDecoder(target, _drafter(target, f, method, kw))
    base = dec.generate(PROMPTS, 64, temperature=0, speculative=False)
    spec = dec.generate(PROMPTS, 64, temperature=0)
    for b, s in zip(base, spec):
        assert s.token_ids == b.token_ids and len(s.token_ids) == 64
        assert sum(r.committed for r in s.rounds) + 1 == 64
    if method == "dspark" and kw["markov_head_type"] != "rnn":
        taus = [s.tau for s in spec]
        assert max(taus) > 1.5 and min(r.accepted for s in spec for r in s.rounds) == 0  # partial acceptance exercised
    if method == "mtp":
        assert {r.accepted for s in spec for r in s.rounds} == {0, 1}


def test_greedy_rows_stop_at_eos_at_different_times(bigram):
    target, f = bigram
    drafter = _drafter(target, f, "dspark", {"markov_head_type": "vanilla"})
    dec = SpeculativeDecoder(target, drafter)
    base = dec.generate(PROMPTS, 64, temperature=0, speculative=False)
    # an EOS that row 0 emits late: rows then finish at different steps (or run to the budget)
    eos = base[0].token_ids[min(20, len(base[0].token_ids) - 1)]
    ref = dec.generate(PROMPTS, 64, temperature=0, speculative=False, eos_token_id=eos)
    spec = dec.generate(PROMPTS, 64, temperature=0, eos_token_id=eos)
    assert [s.token_ids for s in spec] == [r.token_ids for r in ref]
    assert ref[0].finish_reason == "eos" and ref[0].token_ids[-1] == eos
    for r in ref:
        cut = r.token_ids.index(eos) + 1 if eos in r.token_ids else 64
        assert len(r.token_ids) == cut
    assert len({len(r.token_ids) for r in ref}) > 1


def test_verify_len_and_threshold_keep_greedy_output(bigram):
    target, f = bigram
    drafter = _drafter(target, f, "dspark", {"markov_head_type": "vanilla"})
    dec = SpeculativeDecoder(target, drafter)
    base = dec.generate(PROMPTS, 40, temperature=0, speculative=False)
    for kw in ({"verify_len": 2}, {"verify_len": 0}, {"threshold": 0.5}):
        spec = dec.generate(PROMPTS, 40, temperature=0, **kw)
        assert [s.token_ids for s in spec] == [b.token_ids for b in base]
        if "verify_len" in kw:
            assert all(r.verified <= kw["verify_len"] for s in spec for r in s.rounds)
