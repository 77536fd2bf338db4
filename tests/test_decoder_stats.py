"""Statistical losslessness through the whole decoder, for every drafter and sampling setting.

20,000 rows share one prompt; the empirical law of the first generated tokens is compared (χ²) with the
exact law computed from the target alone. The first token comes from the prefill, the second and third
from the first speculative round (slot 1, slot 2 / bonus / recovered), so the joint laws of (x1, x2) and
(x2, x3) cover verification of two slots including the Markov head's dependence on sampled tokens.
A deliberately biased acceptance rule must fail the same test.
"""

import pytest
import torch

import dspark.engine.step as decoder_module
from conftest import save_tiny_target, tiny_drafter
from dspark import SpeculativeDecoder, load_target
from dspark.sampling import SamplingParams, processed_probs
from stats import chi_square_pvalue
from test_sampling_verify import biased_rejection_sample

ROWS = 20000
PROMPT = [3, 1, 4, 1, 5]


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_target(save_tiny_target(tmp_path_factory.mktemp("stat"), vocab=16, hidden=32, layers=4,
                                        seed=7, init_range=0.3))


def exact_laws(target, params: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """P(x1, x2) and P(x2, x3) as [V, V] tensors, from target forwards over all continuations."""
    v = target.vocab_size
    prompt = torch.tensor(PROMPT)
    with torch.no_grad():
        p1 = processed_probs(target.model(prompt[None]).logits[0, -1], params)  # [V]
        seq2 = torch.cat([prompt.expand(v, -1), torch.arange(v)[:, None]], 1)
        p2 = processed_probs(target.model(seq2).logits[:, -1], params)  # [V(x1), V(x2)]
        x1, x2 = torch.meshgrid(torch.arange(v), torch.arange(v), indexing="ij")
        seq3 = torch.cat([prompt.expand(v * v, -1), x1.reshape(-1, 1), x2.reshape(-1, 1)], 1)
        p3 = processed_probs(target.model(seq3).logits[:, -1], params).view(v, v, v)
    joint12 = p1[:, None] * p2
    joint23 = (joint12[:, :, None] * p3).sum(0)
    return joint12, joint23


def empirical(results, v: int) -> tuple[torch.Tensor, torch.Tensor]:
    toks = torch.tensor([r.token_ids[:3] for r in results])
    c12 = torch.bincount(toks[:, 0] * v + toks[:, 1], minlength=v * v).float()
    c23 = torch.bincount(toks[:, 1] * v + toks[:, 2], minlength=v * v).float()
    return c12, c23


CASES = [
    ("dspark", {}, dict(temperature=1.0), {}),
    ("dspark", {}, dict(temperature=0.7, top_k=5), {}),
    ("dspark", {}, dict(temperature=1.0, top_p=0.8), {}),
    ("dspark", {}, dict(temperature=1.0), {"threshold": 0.5}),
    ("dspark", {"markov_head_type": "rnn"}, dict(temperature=1.0, top_p=0.9), {}),
    ("dspark", {"markov_head_type": "gated"}, dict(temperature=1.0), {"verify_len": 1}),
    ("dflash", {}, dict(temperature=0.8, top_k=4), {}),
    ("eagle3", {}, dict(temperature=1.0, top_p=0.7), {}),
    ("mtp", {}, dict(temperature=0.9, top_k=6), {}),
]


@pytest.mark.parametrize("method, dkw, sampling, extra", CASES,
                         ids=[f"{m}-{d.get('markov_head_type', '')}-{'-'.join(f'{k}{v}' for k, v in s.items())}-{''.join(e)}"
                              for m, d, s, e in CASES])
def test_first_tokens_follow_the_target_exactly(target, method, dkw, sampling, extra):
    drafter = tiny_drafter(target, method, seed=11, scale=3.0, **dkw)
    dec = SpeculativeDecoder(target, drafter)
    results = dec.generate([PROMPT] * ROWS, 4, seed=123, **sampling, **extra)
    joint12, joint23 = exact_laws(target, SamplingParams(**sampling))
    c12, c23 = empirical(results, target.vocab_size)
    rounds = [r.rounds[0] for r in results]
    assert any(r.accepted == 0 for r in rounds) and any(r.accepted >= 1 for r in rounds)  # both paths taken
    assert chi_square_pvalue(c12, joint12) > 1e-4
    assert chi_square_pvalue(c23, joint23) > 1e-4


def test_biased_acceptance_rule_is_detected(target, monkeypatch):
    monkeypatch.setattr(decoder_module, "rejection_sample", biased_rejection_sample)
    drafter = tiny_drafter(target, "dspark", seed=11, scale=3.0)
    results = SpeculativeDecoder(target, drafter).generate([PROMPT] * ROWS, 4, seed=123, temperature=1.0)
    joint12, joint23 = exact_laws(target, SamplingParams())
    c12, c23 = empirical(results, target.vocab_size)
    assert min(chi_square_pvalue(c12, joint12), chi_square_pvalue(c23, joint23)) < 1e-6


def test_plain_decoding_matches_too(target):
    results = SpeculativeDecoder(target, None).generate([PROMPT] * ROWS, 3, seed=5, temperature=1.0)
    joint12, joint23 = exact_laws(target, SamplingParams())
    c12, c23 = empirical(results, target.vocab_size)
    assert chi_square_pvalue(c12, joint12) > 1e-4 and chi_square_pvalue(c23, joint23) > 1e-4
