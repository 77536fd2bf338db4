"""Pure sampling and verification math: processing, hand cases, and the rejection rule's exactness."""

import pytest
import torch

from dspark.sampling import SamplingParams, processed_probs, sample_from
from dspark.verify import greedy_verify, rejection_sample
from stats import chi_square_pvalue


def test_processed_probs_top_k_top_p_temperature():
    logits = torch.log(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    assert torch.allclose(processed_probs(logits, SamplingParams()), torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]))
    top2 = processed_probs(logits, SamplingParams(top_k=2))
    assert torch.allclose(top2, torch.tensor([0.5, 0.2, 0, 0, 0]) / 0.7)
    # top-p 0.7: 0.5 (mass before 0) and 0.2 (mass before 0.5) kept, 0.15 (mass before 0.7) dropped
    assert torch.allclose(processed_probs(logits, SamplingParams(top_p=0.7)), top2)
    assert torch.allclose(processed_probs(logits, SamplingParams(top_p=0.71)),
                          torch.tensor([0.5, 0.2, 0.15, 0, 0]) / 0.85)
    greedy = processed_probs(logits, SamplingParams(temperature=0))
    assert greedy.tolist() == [1, 0, 0, 0, 0]
    hot = processed_probs(logits, SamplingParams(temperature=2.0))
    assert torch.allclose(hot, torch.softmax(logits / 2, -1))


def test_sampling_params_reject_bad_values():
    for kw in ({"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            SamplingParams(**kw)


def test_rejection_sample_hand_cases():
    v = 3
    p = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])  # [1, 3, V]
    q = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])
    out, n = rejection_sample(torch.tensor([[1, 2]]), q, p, torch.tensor([2]))
    assert out.tolist() == [[1, 2, 0]] and n.tolist() == [2]  # both accepted, bonus from p_3
    out, n = rejection_sample(torch.tensor([[1, 2]]), q, p, torch.tensor([1]))
    assert out.tolist() == [[1, 2, -1]] and n.tolist() == [1]  # only one verified: bonus from p_2
    out, n = rejection_sample(torch.tensor([[1, 2]]), q, p, torch.tensor([0]))
    assert out.tolist() == [[1, -1, -1]] and n.tolist() == [0]  # nothing verified: p_1's token
    q_bad = torch.tensor([[[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]])
    out, n = rejection_sample(torch.tensor([[2, 2]]), q_bad, p, torch.tensor([2]))
    assert out.tolist() == [[1, -1, -1]] and n.tolist() == [0]  # p(2)=0: rejected, residual = p_1
    assert v == p.shape[-1]


def test_greedy_verify_cases():
    drafts = torch.tensor([[4, 5, 6], [4, 5, 6], [1, 1, 1]])
    target = torch.tensor([[4, 5, 6, 7], [4, 9, 6, 7], [2, 2, 2, 2]])
    out, n = greedy_verify(drafts, target, torch.tensor([3, 3, 2]))
    assert n.tolist() == [3, 1, 0]
    assert out.tolist() == [[4, 5, 6, 7], [4, 9, -1, -1], [2, -1, -1, -1]]


def test_shape_and_range_errors():
    with pytest.raises(ValueError, match="num_verify"):
        rejection_sample(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, 3) / 3, torch.ones(1, 3, 3) / 3,
                         torch.tensor([3]))
    with pytest.raises(ValueError, match="target_probs"):
        rejection_sample(torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2, 3) / 3, torch.ones(1, 2, 3) / 3,
                         torch.tensor([1]))


def biased_rejection_sample(draft_ids, draft_probs, target_probs, num_verify, generator=None, uniforms=None):
    """A plausible-looking bug: after a rejection, resample from p instead of the residual."""
    out, n = rejection_sample(draft_ids, draft_probs, target_probs, num_verify, generator, uniforms=uniforms)
    rows = torch.arange(out.shape[0])
    rejected = n < num_verify
    fresh = sample_from(target_probs[rows, n], generator, None if uniforms is None else uniforms[:, -1])
    out[rows[rejected], n[rejected]] = fresh[rejected]
    return out, n


@pytest.mark.parametrize("rule, should_pass", [(rejection_sample, True), (biased_rejection_sample, False)])
def test_rejection_rule_is_exact_and_test_catches_bias(rule, should_pass):
    """With K=2 verified drafts from q, the first committed token must follow p_1 exactly."""
    torch.manual_seed(0)
    rows, v = 40000, 6
    p = torch.softmax(torch.randn(v) * 1.5, -1)
    q = torch.softmax(torch.randn(v) * 1.5, -1)
    gen = torch.Generator().manual_seed(1)
    draft_ids = torch.multinomial(q.expand(rows, v), 2, replacement=True, generator=gen)
    out, _ = rule(draft_ids, q.expand(rows, 2, v).contiguous(), p.expand(rows, 3, v).contiguous(),
                  torch.full((rows,), 2), gen)
    counts = torch.bincount(out[:, 0], minlength=v).float()
    pvalue = chi_square_pvalue(counts, p)
    assert (pvalue > 1e-3) == should_pass, pvalue


def test_sample_from_matches_the_distribution_exactly():
    """χ² of 200,000 draws per row against the given law, zero-probability tokens never drawn."""
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.6, 0.0, 0.2]])
    generator = torch.Generator().manual_seed(5)
    draws = sample_from(probs.unsqueeze(1).expand(-1, 200_000, -1), generator)  # [3, N]
    for row in range(3):
        counts = torch.bincount(draws[row], minlength=5).float()
        assert counts[probs[row] == 0].sum() == 0
        support = probs[row] > 0
        if support.sum() > 1:
            assert chi_square_pvalue(counts[support], probs[row][support]) > 1e-4
    skewed = torch.tensor([0.9, 0.1, 0.0, 0.0, 0.0])
    assert chi_square_pvalue(torch.bincount(draws[0], minlength=5).float()[:2], skewed[:2] / skewed[:2].sum()) < 1e-6
