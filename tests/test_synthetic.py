"""Synthetic acceptance (benchmark only, NOT lossless): the draws, the spec parsing, and the engine run with it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dspark.engine.synthetic import CHUNK, NOT_LOSSLESS, SyntheticAcceptance, synthetic_from_spec
from dspark.errors import ConfigError
from dspark.sim.acceptance import MTP_PRESETS, PRESETS, CurveAcceptance, make_acceptance


class CountingModel:
    """A fixed acceptance model that counts its draw calls."""

    gamma, name = 3, "counting"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def draw(self, num_requests: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(num_requests)
        return np.full((num_requests, 3), 0.5), np.full(num_requests, len(self.calls) % 4)  # call k: k % 4 accepted


def test_each_request_draws_its_own_rounds_and_accepted_is_capped():
    model = CountingModel()
    syn = SyntheticAcceptance(model, gamma=3)
    assert syn.label == "synthetic-acceptance:counting (NOT lossless)"
    conf = syn.propose(["a", "b", "c", "d"])
    assert model.calls == [CHUNK] * 4 and conf == [[0.5] * 3] * 4  # one stream per request
    assert [syn.accepted(r, 3) for r in "abcd"] == [1, 2, 3, 0]
    assert [syn.accepted(r, 1) for r in "abcd"] == [1, 1, 1, 0]  # never more than verified
    assert syn.accepted("d", 0) == 0 and syn.accepted("unknown", 3) == 0
    syn.propose(["a"])  # its next round comes from its own stream: no new draw
    assert model.calls == [CHUNK] * 4
    syn.release("d")
    assert syn.accepted("d", 3) == 0
    assert syn.propose([]) == [] and model.calls == [CHUNK] * 4


def test_common_random_numbers_whatever_else_runs():
    """A request's k-th round does not depend on which other requests propose, or in which order."""
    a, b = synthetic_from_spec("dspark/math", 7, seed=5), synthetic_from_spec("dspark/math", 7, seed=5)
    first = a.propose(["x", "y"]) + a.propose(["y"]) + a.propose(["x", "y"])
    b.propose(["y"])
    second = b.propose(["z", "y", "x"]) + b.propose(["y"])
    assert first[1] == synthetic_from_spec("dspark/math", 7, seed=5).propose(["y"])[0]  # y's first round
    assert first[2] == second[1]  # y's second round
    assert first[0] == second[2]  # x's first round
    assert first[3] == b.propose(["x"])[0]  # x's second round


def test_accepted_matches_the_models_expected_tau():
    syn = synthetic_from_spec("dspark/chat", gamma=7, seed=3)
    model = syn.model
    assert isinstance(model, CurveAcceptance)
    n = 40_000
    ids = [str(i) for i in range(n)]
    conf = np.asarray(syn.propose(ids))  # [n, γ]
    for verify in (7, 3, 1):
        got = np.array([syn.accepted(r, verify) for r in ids], dtype=np.float64)
        want = model.expected_tau(verify) - 1.0
        assert got.max() <= verify
        assert abs(got.mean() - want) < 4 * got.std() / np.sqrt(n) + 1e-3, (verify, got.mean(), want)
    # calibrated: the mean confidence of slot k is its conditional acceptance α_k
    np.testing.assert_allclose(conf.mean(0), PRESETS["dspark", "chat"], atol=0.01)


def test_same_seed_same_draws():
    a, b = synthetic_from_spec("dspark/math", 7, seed=5), synthetic_from_spec("dspark/math", 7, seed=5)
    assert a.propose(["x", "y"]) == b.propose(["x", "y"])
    assert a.accepted("x", 7) == b.accepted("x", 7)


def test_specs(tmp_path):
    assert synthetic_from_spec("mtp/chat", gamma=1).model.curve == MTP_PRESETS["mtp", "chat"]
    assert make_acceptance("mtp/math").gamma == 1
    truncated = synthetic_from_spec("dspark/math", gamma=5)
    assert truncated.gamma == 5 and truncated.model.curve == PRESETS["dspark", "math"][:5]
    curve = synthetic_from_spec("curve:0.9,0.8,0.7", gamma=3)
    assert "curve:0.9,0.8,0.7" in curve.label and "NOT lossless" in curve.label
    trace = tmp_path / "trace.jsonl"
    trace.write_text("\n".join(json.dumps({"confidences": [0.9, 0.5], "accepted": a}) for a in (0, 1, 2)) + "\n")
    syn = synthetic_from_spec(str(trace), gamma=2)
    assert syn.expected_accepted() == pytest.approx(1.0)
    assert NOT_LOSSLESS == "synthetic acceptance (NOT lossless)"


@pytest.mark.parametrize("spec, gamma, message", [
    ("nonsense", 3, "'nonsense' is neither a preset"),
    ("dspark/poetry", 3, "'dspark/poetry' is neither a preset"),
    ("curve:0.9,x", 2, "'curve:0.9,x' is neither"),
    ("missing.jsonl", 2, "trace 'missing.jsonl' does not exist"),
    ("mtp/chat", 7, "'mtp/chat' has 1 slot(s), but the drafter proposes 7"),
    ("", 2, "must be a preset"),
])
def test_bad_specs_name_the_spec(spec, gamma, message):
    with pytest.raises(ConfigError) as err:
        synthetic_from_spec(spec, gamma)
    assert message in str(err.value)


def test_trace_gamma_mismatch_and_bad_trace(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text(json.dumps({"confidences": [0.9, 0.5], "accepted": 1}) + "\n")
    with pytest.raises(ConfigError, match="γ = 2 slots, but the drafter proposes 3"):
        synthetic_from_spec(str(trace), gamma=3)
    trace.write_text("{not json\n")
    with pytest.raises(ConfigError, match="t.jsonl"):
        synthetic_from_spec(str(trace), gamma=2)
    with pytest.raises(ConfigError, match="γ = 3 slots"):
        SyntheticAcceptance(CountingModel(), gamma=4)
