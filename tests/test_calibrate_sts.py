"""Sequential Temperature Scaling on synthetic traces: it fixes an over-confident head, leaves a
calibrated one nearly alone, preserves every slot's order, and its cross-fitted variant holds out."""

import numpy as np
import pytest

from dspark.eval.calibration import (apply_temperatures, confidence_logits, cross_fit_confidences, default_grid,
                                     fit_sts)
from dspark.eval.reliability import calibration_report, roc_auc


def synthetic(n: int = 4000, gamma: int = 4, sharpen: float = 3.0, seed: int = 0):
    """True conditional survival σ(z); the head reports σ(sharpen · z). Returns (raw logits, accepted, verified)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(1.0, 1.2, size=(n, gamma))  # [N, γ]
    survive = rng.random((n, gamma)) < 1 / (1 + np.exp(-z))
    accepted = np.cumprod(survive, axis=1).sum(1)  # first rejection ends the round
    verified = np.full(n, gamma)
    verified[: n // 10] = rng.integers(1, gamma + 1, size=n // 10)  # some budget-cut rounds
    accepted = np.minimum(accepted, verified)
    return sharpen * z, accepted, verified


def test_sts_fixes_overconfidence():
    logits, acc, ver = synthetic(sharpen=3.0)
    fit = fit_sts(logits, acc, ver)
    assert np.all((fit.temperatures > 2.0) & (fit.temperatures < 4.5)), fit.temperatures
    before = calibration_report(apply_temperatures(logits, None), acc, ver)
    after = calibration_report(apply_temperatures(logits, fit.temperatures), acc, ver)
    assert after["ece"] < 0.3 * before["ece"] and after["ece"] < 0.03
    for b, a in zip(before["per_slot"], after["per_slot"]):
        assert a["ece"] < 0.5 * b["ece"]
    np.testing.assert_allclose(fit.ece_after, [s["ece"] for s in after["per_slot"]])
    np.testing.assert_allclose(fit.ece_before, [s["ece"] for s in before["per_slot"]])


def test_sts_is_order_preserving_per_slot():
    logits, acc, ver = synthetic(n=1500, sharpen=2.0, seed=1)
    raw = apply_temperatures(logits, None)
    cal = apply_temperatures(logits, fit_sts(logits, acc, ver).temperatures)
    survived = acc[:, None] >= np.arange(1, logits.shape[1] + 1)
    for k in range(logits.shape[1]):
        order = np.argsort(raw[:, k], kind="stable")
        assert np.all(np.diff(cal[order, k]) >= 0)  # monotone map: same ranking
        assert roc_auc(cal[:, k], survived[:, k]) == pytest.approx(roc_auc(raw[:, k], survived[:, k]))


def test_sts_leaves_a_calibrated_head_near_one():
    logits, acc, ver = synthetic(sharpen=1.0, seed=2)
    temps = fit_sts(logits, acc, ver).temperatures
    assert np.all((temps > 0.7) & (temps < 1.45)), temps


def test_grid_edges_and_unverified_slot():
    grid = default_grid()
    assert 1.0 in grid and grid.min() == pytest.approx(0.05) and grid.max() == pytest.approx(20.0)
    logits, acc, ver = synthetic(n=200, gamma=3)
    fit = fit_sts(logits, acc, np.minimum(ver, 2))  # slot 3 never verified
    assert fit.temperatures[2] == 1.0 and fit.count[2] == 0 and np.isnan(fit.ece_after[2])
    with pytest.raises(ValueError):
        apply_temperatures(logits, [1.0, 0.0, 1.0])


def test_slots_with_too_few_events_keep_temperature_one():
    logits, acc, ver = synthetic(n=400, gamma=3, sharpen=3.0, seed=5)
    acc = np.minimum(acc, 2)
    acc[:395] = np.minimum(acc[:395], 1)  # slot 3 survives in at most 5 rounds
    fit = fit_sts(logits, acc, ver, min_events=10)
    assert fit.temperatures[2] == 1.0 and fit.temperatures[0] > 1.5
    assert fit_sts(logits, acc, ver, min_events=0).temperatures[2] != 1.0


def test_logits_round_trip_through_probabilities():
    z = np.array([[-5.0, 0.0, 3.0, 12.0]])
    np.testing.assert_allclose(confidence_logits(apply_temperatures(z, None)), z, atol=1e-6)
    assert np.isfinite(confidence_logits(np.array([[0.0, 1.0]]))).all()  # clamped, not ±inf


def test_cross_fit_is_out_of_fold_and_still_helps():
    logits, acc, ver = synthetic(n=3000, sharpen=3.0, seed=3)
    requests = np.arange(3000) // 7  # rounds grouped in requests of 7
    conf, temps = cross_fit_confidences(logits, acc, ver, requests, folds=2)
    assert conf.shape == logits.shape and temps.shape == (4,)
    before = calibration_report(apply_temperatures(logits, None), acc, ver)["ece"]
    assert calibration_report(conf, acc, ver)["ece"] < 0.4 * before
    # every round of a request got the same fold's temperatures: its calibrated logits scale by one T per slot
    ratio = confidence_logits(conf) / logits
    for r in (0, 1, 2):
        rows = requests == r
        np.testing.assert_allclose(ratio[rows], np.broadcast_to(ratio[rows][0], ratio[rows].shape), rtol=1e-4)
