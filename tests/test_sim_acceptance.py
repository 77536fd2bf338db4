"""Acceptance models of the simulator: Fig.-2 presets, Beta curves (calibrated and over-confident), traces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dspark.errors import ConfigError, DataError
from dspark.sim.acceptance import PRESETS, CurveAcceptance, TraceAcceptance, make_acceptance


def test_presets_cover_every_drafter_and_domain_and_match_the_quoted_anchors():
    assert {(d, m) for d in ("dflash", "eagle3", "dspark") for m in ("math", "code", "chat")} == set(PRESETS)
    assert all(len(c) == 7 and all(0 < x < 1 for x in c) for c in PRESETS.values())
    # Values the paper's text quotes (SPEC §4), within the ±0.01 reading error of the figure.
    assert PRESETS["dflash", "math"][0] == pytest.approx(0.88, abs=0.011)
    assert PRESETS["eagle3", "math"][0] == pytest.approx(0.81, abs=0.011)
    assert PRESETS["dflash", "chat"][0] == pytest.approx(0.72, abs=0.011)
    assert PRESETS["eagle3", "chat"][0] == pytest.approx(0.53, abs=0.011)
    assert PRESETS["dflash", "code"][0] == pytest.approx(0.87, abs=0.011)
    assert PRESETS["dflash", "code"][-1] == pytest.approx(0.78, abs=0.011)
    assert PRESETS["eagle3", "chat"][-1] == pytest.approx(0.74, abs=0.011)
    # DSpark is above DFlash at every slot and domain.
    for domain in ("math", "code", "chat"):
        assert all(s > f for s, f in zip(PRESETS["dspark", domain], PRESETS["dflash", domain]))


@pytest.mark.parametrize("confidence", ["calibrated", "overconfident:0.5"])
def test_curve_draws_reproduce_the_conditional_curve(confidence):
    model = make_acceptance("dspark/chat", confidence=confidence)
    conf, accepted = model.draw(40_000, np.random.default_rng(0))
    assert conf.shape == (40_000, 7) and accepted.shape == (40_000,)
    slots = np.arange(7)
    reached = (accepted[:, None] >= slots).sum(0)
    passed = (accepted[:, None] > slots).sum(0)
    assert passed / reached == pytest.approx(PRESETS["dspark", "chat"], abs=0.02)
    assert accepted.mean() + 1 == pytest.approx(model.expected_tau(), abs=0.05)


def test_calibrated_confidence_is_calibrated_and_overconfidence_is_not():
    rng = np.random.default_rng(1)
    for delta in (0.0, 0.5):
        model = CurveAcceptance(PRESETS["dflash", "code"], overconfidence=delta)
        conf, accepted = model.draw(50_000, rng)
        survival = np.cumprod(conf, axis=1)  # [N, γ] what the scheduler sees
        gap = survival.mean(0) - (accepted[:, None] > np.arange(7)).mean(0)  # predicted - observed survival
        if delta:
            assert np.all(gap[1:] > 0.05)  # over-confident, by about the paper's raw ECE
        else:
            assert np.all(np.abs(gap) < 0.01)
            high = conf[:, 0] > 0.9
            assert (accepted[high] > 0).mean() == pytest.approx(conf[high, 0].mean(), abs=0.02)


def test_gamma_truncates_and_bad_specs_fail():
    assert make_acceptance("eagle3-math", gamma=5).gamma == 5
    assert make_acceptance("curve:0.9,0.8").gamma == 2
    with pytest.raises(ConfigError, match="unknown acceptance preset"):
        make_acceptance("medusa/math")
    with pytest.raises(ConfigError, match="strictly between"):
        make_acceptance("curve:0.9,1.2")
    with pytest.raises(ConfigError, match="numbers"):
        make_acceptance("curve:0.9,x")
    with pytest.raises(ConfigError, match="--gamma 9"):
        make_acceptance("dspark/math", gamma=9)
    with pytest.raises(ConfigError, match="unknown confidence"):
        make_acceptance("dspark/math", confidence="sharp")
    with pytest.raises(ConfigError, match="does not exist"):
        make_acceptance("missing.jsonl")


def _write(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_trace_replay(tmp_path):
    path = _write(
        tmp_path / "t.jsonl",
        [{"confidences": [0.9, 0.8, 0.7], "accepted": 3, "request": 4}, "", {"confidences": [0.5, 0.5, 0.1], "accepted": 0}],
    )
    model = make_acceptance(str(path))
    assert isinstance(model, TraceAcceptance) and model.gamma == 3
    conf, accepted = model.draw(1000, np.random.default_rng(0))
    assert set(accepted.tolist()) == {0, 3}
    assert np.all(conf[accepted == 3] == [0.9, 0.8, 0.7])
    assert model.conditional_acceptance()[0] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="γ = 3"):
        make_acceptance(str(path), gamma=4)


@pytest.mark.parametrize(
    "line, match",
    [
        ("{not json", "not valid JSON"),
        ({"confidences": [0.5]}, "needs 'confidences'"),
        ({"confidences": [], "accepted": 0}, "non-empty"),
        ({"confidences": [0.5, 1.5], "accepted": 0}, r"\[0, 1\]"),
        ({"confidences": [0.5, 0.5], "accepted": 3}, "0..2"),
        ({"confidences": [0.5, 0.5], "accepted": 2, "verified": 1}, "0..1"),
        ({"confidences": [0.5], "accepted": 0}, "earlier records have 2"),
    ],
)
def test_bad_traces_name_the_line(tmp_path, line, match):
    path = _write(tmp_path / "bad.jsonl", [{"confidences": [0.5, 0.5], "accepted": 1}, line])
    with pytest.raises(DataError, match=match) as info:
        TraceAcceptance.load(path)
    assert "bad.jsonl:2" in str(info.value) and isinstance(info.value, ValueError)


def test_empty_trace(tmp_path):
    with pytest.raises(DataError, match="no trace records"):
        TraceAcceptance.load(_write(tmp_path / "e.jsonl", [""]))
