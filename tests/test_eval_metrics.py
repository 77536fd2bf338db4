"""Evaluation metrics on a hand-made trace, computed exactly: τ, conditional / unconditional acceptance,
the threshold sweep, reliability bins, ECE and ROC-AUC; trace JSONL round trip and simulator replay.

The trace (γ = 3; round 4 was cut by the budget after two verified drafts):

    round  verified  accepted  c_1   c_2   c_3
      1       3         3      0.90  0.80  0.70
      2       3         0      0.80  0.40  0.90
      3       3         1      0.30  0.90  0.90
      4       2         2      0.95  0.60  0.20
      5       3         2      0.70  0.70  0.05
"""

import math

import numpy as np
import pytest

from dspark.eval.metrics import summarize
from dspark.engine.results import GenerationResult, RoundRecord
from dspark.eval.metrics import (acceptance_summary, conditional_acceptance, macro_mean, prefix_survival, tau,
                                 threshold_lengths, threshold_sweep, unconditional_acceptance)
from dspark.eval.reliability import calibration_report, expected_calibration_error, reliability_bins, roc_auc
from dspark.eval.traces import Trace, concat_traces, read_trace_jsonl, trace_from_results, write_trace_jsonl

VERIFIED = np.array([3, 3, 3, 2, 3])
ACCEPTED = np.array([3, 0, 1, 2, 2])
CONF = np.array([[0.90, 0.80, 0.70], [0.80, 0.40, 0.90], [0.30, 0.90, 0.90], [0.95, 0.60, 0.20], [0.70, 0.70, 0.05]])


def test_tau_and_acceptance_by_hand():
    assert tau(ACCEPTED) == pytest.approx(13 / 5)
    # slot 1: all 5 reached, 4 accepted; slot 2: reached by the 4 rounds with a >= 1, 3 accepted;
    # slot 3: verified in rounds 1, 2, 3, 5, reached by rounds 1 and 5, accepted in round 1.
    np.testing.assert_allclose(conditional_acceptance(ACCEPTED, VERIFIED, 3), [4 / 5, 3 / 4, 1 / 2])
    np.testing.assert_allclose(unconditional_acceptance(ACCEPTED, VERIFIED, 3), [4 / 5, 3 / 5, 1 / 4])
    assert math.isnan(tau(np.array([], dtype=int)))


def test_unreached_slot_is_nan_and_json_none():
    acc, ver = np.array([0, 0]), np.array([2, 2])
    cond = conditional_acceptance(acc, ver, 3)
    assert cond[0] == 0 and math.isnan(cond[1]) and math.isnan(cond[2])
    summary = acceptance_summary(acc, ver, 3)
    assert summary["accept_rate_conditional"] == [0.0, None, None]
    assert summary["accept_rate_unconditional"] == [0.0, 0.0, None]
    assert macro_mean([1.0, None, float("nan"), 3.0]) == 2.0 and macro_mean([None]) is None


def test_metrics_agree_with_decoder_summarize():
    rounds = [RoundRecord(3, int(v), int(a), int(a) + 1, [0, 0, 0], list(c)) for v, a, c in zip(VERIFIED, ACCEPTED, CONF)]
    res = GenerationResult([0] * 14, rounds, "length")
    ref = summarize([res], 3)
    trace = trace_from_results([res], 3, "hand", "test", [0])
    assert tau(trace.accepted) == pytest.approx(ref["tau"]) == pytest.approx(res.tau)
    np.testing.assert_allclose(conditional_acceptance(trace.accepted, trace.verified, 3), ref["accept_rate_conditional"])
    np.testing.assert_allclose(unconditional_acceptance(trace.accepted, trace.verified, 3), ref["accept_rate_unconditional"])
    np.testing.assert_allclose(trace.raw_confidences, CONF)


def test_threshold_sweep_by_hand():
    np.testing.assert_array_equal(threshold_lengths(CONF, 0.5), [3, 1, 0, 2, 2])
    rows = {r["threshold"]: r for r in threshold_sweep(CONF, ACCEPTED, VERIFIED, [0.0, 0.5, 0.75, 0.99])}
    assert rows[0.0] == {"threshold": 0.0, "tokens_per_step": 13 / 5, "verify_len": 14 / 5, "accepted_tokens": 8,
                         "rejected_tokens": 6, "accepted_per_step": 8 / 5, "rejected_per_step": 6 / 5,
                         "acceptance_rate": 8 / 14}
    # t = 0.5: ℓ = 3, 1, 0, 2, 2; replayed accepted = 3, 0, 0, 2, 2
    assert rows[0.5]["tokens_per_step"] == pytest.approx(12 / 5)
    assert (rows[0.5]["accepted_tokens"], rows[0.5]["rejected_tokens"]) == (7, 1)
    assert rows[0.5]["acceptance_rate"] == pytest.approx(7 / 8)
    # t = 0.75: ℓ = 2, 1, 0, 1, 0; replayed accepted = 2, 0, 0, 1, 0
    assert rows[0.75]["tokens_per_step"] == pytest.approx(8 / 5) and rows[0.75]["verify_len"] == pytest.approx(4 / 5)
    assert (rows[0.75]["accepted_tokens"], rows[0.75]["rejected_tokens"]) == (3, 1)
    assert rows[0.99]["tokens_per_step"] == 1.0 and math.isnan(rows[0.99]["acceptance_rate"])


def test_reliability_bins_ece_auc_by_hand():
    a1, y1 = CONF[:, 0], ACCEPTED >= 1  # slot 1: a_1 = c_1
    bins = reliability_bins(a1, y1, 10)
    np.testing.assert_array_equal(bins.count, [0, 0, 0, 1, 0, 0, 0, 1, 1, 2])
    assert bins.mean_pred[9] == pytest.approx(0.925) and bins.observed[9] == 1.0 and bins.observed[8] == 0.0
    assert np.isnan(bins.mean_pred[0])
    # bins 3, 7, 8, 9: |0.3-1| + |0.7-1| + |0.8-0| + 2·|0.925-1|, over 5 rounds
    assert expected_calibration_error(a1, y1, 10) == pytest.approx((0.7 + 0.3 + 0.8 + 0.15) / 5)
    assert roc_auc(a1, y1) == pytest.approx(0.5)  # 0.9 and 0.95 beat the failure at 0.8; 0.3 and 0.7 do not
    a2 = prefix_survival(CONF)[:, 1]  # 0.72, 0.32, 0.27, 0.57, 0.49
    np.testing.assert_allclose(a2, [0.72, 0.32, 0.27, 0.57, 0.49])
    assert roc_auc(a2, ACCEPTED >= 2) == 1.0
    assert expected_calibration_error(a2, ACCEPTED >= 2) == pytest.approx((0.28 + 0.32 + 0.27 + 0.43 + 0.51) / 5)


def test_auc_ties_and_degenerate_cases():
    assert roc_auc([0.5, 0.5, 0.2, 0.8], [1, 0, 0, 1]) == pytest.approx(3.5 / 4)
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1])) and math.isnan(expected_calibration_error([], []))
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0  # 1.0 falls in the last bin


def test_calibration_report_per_slot_uses_verified_rounds_only():
    rep = calibration_report(CONF, ACCEPTED, VERIFIED, 10)
    counts = [s["count"] for s in rep["per_slot"]]
    assert counts == [5, 5, 4]
    assert rep["per_slot"][0]["ece"] == pytest.approx(1.95 / 5) and rep["per_slot"][0]["auc"] == pytest.approx(0.5)
    assert rep["per_slot"][1]["auc"] == 1.0 and rep["per_slot"][2]["observed"] == pytest.approx(0.25)
    assert len(rep["bins"]) == 3 and int(rep["bins_pooled"].count.sum()) == 14


def _trace() -> Trace:
    n = len(ACCEPTED)
    return Trace(3, ACCEPTED, VERIFIED, ACCEPTED + 1, np.arange(n), np.zeros(n, int), np.zeros(n, int),
                 np.full(n, "hand", dtype=object), np.full(n, "test", dtype=object), raw_confidences=CONF)


def test_trace_jsonl_round_trip_and_simulator_replay(tmp_path):
    from dspark.sim import TraceAcceptance

    trace = _trace().with_confidences(np.clip(CONF * 0.9, 0, 1))
    path = write_trace_jsonl(trace, tmp_path / "t.jsonl")
    back = read_trace_jsonl(path)
    np.testing.assert_array_equal(back.accepted, ACCEPTED)
    np.testing.assert_array_equal(back.verified, VERIFIED)
    np.testing.assert_allclose(back.raw_confidences, CONF, atol=1e-6)
    np.testing.assert_allclose(back.confidences, CONF * 0.9, atol=1e-6)
    sim = TraceAcceptance.load(path)  # the simulator reads the calibrated confidences
    np.testing.assert_allclose(sim.confidences, CONF * 0.9, atol=1e-6)
    np.testing.assert_array_equal(sim.accepted, ACCEPTED)


def test_concat_drops_confidences_when_a_part_has_none():
    t = _trace()
    no_conf = Trace(3, ACCEPTED, VERIFIED, ACCEPTED + 1, np.arange(5), np.zeros(5, int), np.zeros(5, int),
                    np.full(5, "x", dtype=object), np.full(5, "y", dtype=object))
    both = concat_traces([t, t])
    assert len(both) == 10 and both.raw_confidences.shape == (10, 3) and both.confidences is None
    assert concat_traces([t, no_conf]).raw_confidences is None
    assert len(t.select(t.accepted > 1)) == 3
