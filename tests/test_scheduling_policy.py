"""plan_verify_lengths: hand-computed Algorithm-1 cases on a jagged curve, every policy, bad input, and
hypothesis properties (prefix-closed admission, agreement with a literal Algorithm 1, monotonicity in
load and in confidence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dspark.errors import ConfigError, DataError, DSparkError
from dspark.scheduling import SPSTable, async_capacity, parse_policy, plan_verify_lengths

# Jagged: flat up to 4 tokens, then a cliff at 5 that is flat again up to 8.
JAGGED = SPSTable([2, 3, 4, 5, 6, 7, 8], [1 / 1.0, 1 / 1.0, 1 / 1.05, 1 / 1.3, 1 / 1.3, 1 / 1.3, 1 / 1.3])
SURVIVAL = np.array([[0.9, 0.6, 0.3], [0.8, 0.5, 0.1]])


def test_algorithm1_stops_at_the_cliff_by_hand():
    # Ranked: .9 (r0) .8 (r1) .6 .5 .3 .1. Θ0 = 2/1 = 2; admit .9 -> 2.9/1.0 = 2.9; admit .8 -> 3.7/1.05 = 3.52;
    # admit .6 -> 4.3/1.3 = 3.31 < 3.52: stop. Lengths [1, 1].
    assert plan_verify_lengths(SURVIVAL, JAGGED, "dspark").tolist() == [1, 1]


def test_global_search_crosses_the_cliff_by_hand():
    # Past the cliff: 4.8/1.3 = 3.69, 5.1/1.3 = 3.92, 5.2/1.3 = 4.0 (the maximum): all six candidates.
    assert plan_verify_lengths(SURVIVAL, JAGGED, "global").tolist() == [3, 3]


def test_async_capacity_from_stale_values_by_hand():
    stale = np.array([[0.5, 0.2, 0.1], [0.4, 0.1, 0.0]])
    # Stale ranked .5 .4 .2 .1(j=2) .1(j=3): Θ = 2, 2.5, 2.90/1.05 = 2.76, 3.1/1.3, 3.2/1.3, 3.3/1.3 -> K = 2.
    assert async_capacity(stale, JAGGED, 2) == 2
    assert plan_verify_lengths(SURVIVAL, JAGGED, "dspark-async", stale_survival=stale).tolist() == [1, 1]
    # Fresh values as the stale ones: K = 6, the top six current candidates.
    assert plan_verify_lengths(SURVIVAL, JAGGED, "dspark-async", stale_survival=SURVIVAL).tolist() == [3, 3]
    # A precomputed capacity wins; top-3 = .9, .8, .6.
    assert plan_verify_lengths(SURVIVAL, JAGGED, "dspark-async", capacity=3).tolist() == [2, 1]
    # No stale values yet: falls back to Algorithm 1.
    assert plan_verify_lengths(SURVIVAL, JAGGED, "dspark-async").tolist() == [1, 1]


def test_async_never_admits_zero_survival_and_ties_prefer_smaller_slots():
    survival = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.0]])
    assert plan_verify_lengths(survival, JAGGED, "dspark-async", capacity=2).tolist() == [1, 1]
    assert plan_verify_lengths(survival, JAGGED, "dspark-async", capacity=10).tolist() == [2, 1]


def test_draft_cost_enters_the_objective():
    # Verify time 1 + B: for one request, a 0.5-survival draft gives Θ = 1.5/3 = 1/2 = Θ0, a tie, so it is
    # not admitted; a draft cost of 10 s per round makes the extra token relatively cheap: 1.5/13 > 1/12.
    table = SPSTable([1, 2], [1 / 2.0, 1 / 3.0])
    survival = np.array([[0.5]])
    assert plan_verify_lengths(survival, table, "dspark").tolist() == [0]
    costly = SPSTable([1, 2], [1 / 2.0, 1 / 3.0], {1: 10.0})
    assert plan_verify_lengths(survival, costly, "dspark").tolist() == [1]


def test_simple_policies():
    surv = np.array([[0.9, 0.8, 0.2], [0.5, 0.4, 0.35]])
    assert plan_verify_lengths(surv, JAGGED, "none").tolist() == [0, 0]
    assert plan_verify_lengths(surv, JAGGED, "mtp1").tolist() == [1, 1]
    assert plan_verify_lengths(surv, JAGGED, "fixed:2").tolist() == [2, 2]
    assert plan_verify_lengths(surv, JAGGED, "fixed:9").tolist() == [3, 3]  # clamped to γ
    # conditional c: row 0 = .9, .889, .25; row 1 = .5, .8, .875
    assert plan_verify_lengths(surv, JAGGED, "threshold:0.6").tolist() == [2, 0]
    assert plan_verify_lengths(surv, JAGGED, "threshold:0").tolist() == [3, 3]
    conf = np.array([[0.1, 1.0, 1.0], [0.9, 0.9, 0.2]])  # explicit confidences win over the derived ones
    assert plan_verify_lengths(surv, JAGGED, "threshold:0.6", confidence=conf).tolist() == [0, 2]


def test_threshold_derivation_handles_zero_prefixes():
    surv = np.array([[0.0, 0.0], [0.7, 0.0]])
    assert plan_verify_lengths(surv, JAGGED, "threshold:0").tolist() == [2, 2]
    assert plan_verify_lengths(surv, JAGGED, "threshold:0.01").tolist() == [0, 1]


def test_array_types_round_trip():
    out = plan_verify_lengths(SURVIVAL, JAGGED, "dspark")
    assert isinstance(out, np.ndarray) and out.dtype == np.int64
    t = plan_verify_lengths(torch.tensor(SURVIVAL, dtype=torch.float32), JAGGED, "global")
    assert isinstance(t, torch.Tensor) and t.dtype == torch.int64 and t.tolist() == [3, 3]
    assert plan_verify_lengths(np.zeros((0, 7)), JAGGED, "dspark").shape == (0,)
    assert plan_verify_lengths(np.zeros((3, 0)), JAGGED, "dspark").tolist() == [0, 0, 0]


def test_parse_policy():
    assert str(parse_policy("fixed:3")) == "fixed:3"
    assert parse_policy("mtp1") == parse_policy("fixed:1")
    assert parse_policy(" DSpark ").kind == "dspark"
    assert not parse_policy("global").lossless and parse_policy("dspark-async").lossless
    assert parse_policy("threshold:0.25").param == 0.25


@pytest.mark.parametrize(
    "name, match",
    [("greedy", "unknown policy"), ("fixed:x", "integer"), ("fixed:-1", ">= 0"), ("threshold:2", r"\[0, 1\]"), ("threshold:a", "number")],
)
def test_bad_policy_names(name, match):
    with pytest.raises(ConfigError, match=match) as info:
        plan_verify_lengths(SURVIVAL, JAGGED, name)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DSparkError)


@pytest.mark.parametrize(
    "survival, match",
    [
        (np.array([[0.5, 0.6]]), "non-increasing.*row 0 rises"),
        (np.array([[1.2, 0.5]]), r"\[0, 1\]"),
        (np.array([[-0.1, -0.2]]), r"\[0, 1\]"),
        (np.array([[np.nan, 0.5]]), r"\[0, 1\]"),
        (np.array([0.5, 0.4]), "2-D"),
        ([["a"]], "numeric"),
    ],
)
def test_bad_survival(survival, match):
    with pytest.raises(DataError, match=match) as info:
        plan_verify_lengths(survival, JAGGED, "dspark")
    assert isinstance(info.value, ValueError)


def test_bad_side_inputs():
    with pytest.raises(DataError, match="stale_survival"):
        plan_verify_lengths(SURVIVAL, JAGGED, "dspark-async", stale_survival=np.array([[0.1, 0.9]]))
    with pytest.raises(DataError, match="shape"):
        plan_verify_lengths(SURVIVAL, JAGGED, "threshold:0.5", confidence=np.ones((1, 3)))
    with pytest.raises(DataError, match="confidence"):
        plan_verify_lengths(SURVIVAL, JAGGED, "threshold:0.5", confidence=np.full((2, 3), 1.5))
    with pytest.raises(ConfigError, match="capacity"):
        plan_verify_lengths(SURVIVAL, JAGGED, "dspark-async", capacity=-1)
    with pytest.raises(ConfigError, match="SPSTable"):
        plan_verify_lengths(SURVIVAL, {1: 1.0}, "dspark")


def test_float_noise_within_tolerance_is_accepted():
    surv = np.array([[0.5, 0.5 + 1e-9, 0.2]])
    assert plan_verify_lengths(surv, JAGGED, "fixed:3").tolist() == [3]


# ------------------------------------------------------------------------------------------ properties
def _literal_algorithm1(survival: np.ndarray, sps: SPSTable, early_stop: bool) -> list[int]:
    """Algorithm 1 as a plain loop (the paper's pseudo-code, same tie rule), as an oracle."""
    num_rows, gamma = survival.shape
    cands = sorted(((survival[r, j], j, r) for j in range(gamma) for r in range(num_rows) if survival[r, j] > 0), key=lambda c: (-c[0], c[1], c[2]))
    lengths, best, partial = [0] * num_rows, [0] * num_rows, 0.0
    theta_best = num_rows / sps.round_time(num_rows, num_rows)
    for k, (value, j, r) in enumerate(cands, start=1):
        lengths[r] = j + 1
        partial += value
        theta = (partial + num_rows) / sps.round_time(num_rows + k, num_rows)
        if theta > theta_best:
            theta_best, best = theta, list(lengths)
        elif early_stop:
            break
    return best


def _confidences(max_rows: int = 6, max_gamma: int = 5):
    conf = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0]))
    shapes = st.tuples(st.integers(1, max_rows), st.integers(1, max_gamma))
    return shapes.flatmap(lambda s: arrays(np.float64, s, elements=conf))


def _jagged_tables():
    times = st.lists(st.floats(0.05, 5.0), min_size=1, max_size=40)
    return times.map(lambda t: SPSTable(list(range(1, len(t) + 1)), [1 / x for x in t]))


def _convex_tables():
    """Roofline-like: fixed overhead + max(flat, linear): the shape the monotonicity properties need."""

    def build(args):
        overhead, flat, slope = args
        tokens = np.arange(1, 80)
        return SPSTable(tokens.tolist(), (1 / (overhead + np.maximum(flat, slope * tokens))).tolist())

    return st.tuples(st.floats(0.01, 1.0), st.floats(0.0, 2.0), st.floats(0.001, 1.0)).map(build)


@settings(max_examples=150, deadline=None)
@given(_confidences(), _jagged_tables(), st.sampled_from(["dspark", "global"]))
def test_matches_literal_algorithm1(conf, table, policy):
    survival = np.cumprod(conf, axis=1)
    expected = _literal_algorithm1(survival, table, early_stop=policy == "dspark")
    assert plan_verify_lengths(survival, table, policy).tolist() == expected


@settings(max_examples=150, deadline=None)
@given(_confidences(), _jagged_tables(), st.sampled_from(["dspark", "global", "dspark-async", "threshold:0.5", "fixed:2"]), st.integers(0, 40))
def test_lengths_are_prefixes_of_the_ranking(conf, table, policy, capacity):
    survival = np.cumprod(conf, axis=1)
    num_rows, gamma = survival.shape
    kwargs = {"capacity": capacity} if policy == "dspark-async" else {}
    lengths = plan_verify_lengths(survival, table, policy, **kwargs)
    assert lengths.shape == (num_rows,) and np.all((0 <= lengths) & (lengths <= gamma))
    if policy in ("dspark", "global", "dspark-async"):
        admitted = np.arange(gamma)[None, :] < lengths[:, None]  # [R, γ]
        assert np.all(survival[admitted] > 0), "a zero-survival draft was verified"
        if admitted.any() and (~admitted).any():
            assert survival[admitted].min() >= survival[~admitted].max(), "admission skipped a better candidate"
    if policy == "dspark-async":
        assert lengths.sum() == min(capacity, int(np.count_nonzero(survival)))


@settings(max_examples=150, deadline=None)
@given(_confidences(), _convex_tables(), st.sampled_from(["dspark", "global"]), st.data())
def test_more_load_never_lengthens_anyone(conf, table, policy, data):
    survival = np.cumprod(conf, axis=1)
    extra = np.cumprod(data.draw(arrays(np.float64, (1, conf.shape[1]), elements=st.floats(0.0, 1.0))), axis=1)
    before = plan_verify_lengths(survival, table, policy)
    after = plan_verify_lengths(np.vstack([survival, extra]), table, policy)[:-1]
    assert np.all(after <= before)


@settings(max_examples=150, deadline=None)
@given(_confidences(), _convex_tables(), st.sampled_from(["dspark", "global", "threshold:0.6"]), st.data())
def test_more_confidence_never_shortens_that_request(conf, table, policy, data):
    r = data.draw(st.integers(0, conf.shape[0] - 1))
    k = data.draw(st.integers(0, conf.shape[1] - 1))
    raised = conf.copy()
    raised[r, k] = data.draw(st.floats(conf[r, k], 1.0))
    assume(raised[r, k] > conf[r, k])
    before = plan_verify_lengths(np.cumprod(conf, axis=1), table, policy)
    after = plan_verify_lengths(np.cumprod(raised, axis=1), table, policy)
    assert after[r] >= before[r]


@settings(max_examples=60, deadline=None)
@given(_confidences(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_threshold_is_monotone_in_t(conf, t1, t2):
    survival = np.cumprod(conf, axis=1)
    lo, hi = sorted((t1, t2))
    assert np.all(plan_verify_lengths(survival, JAGGED, f"threshold:{hi!r}") <= plan_verify_lengths(survival, JAGGED, f"threshold:{lo!r}"))


def test_a_padded_table_fills_the_rung_it_pays_for():
    # Forwards run padded to 8 or 16 tokens (CUDA-graph sizes). Unpadded, Θ of dspark-async's capacity
    # search peaks at 14 tokens (6 drafts a row); padded, 9..16 tokens cost one price, so it takes all 16.
    # Algorithm 1's early stop meets the rung's cliff at 9 tokens and stops at 8 (3 drafts a row), as at
    # JAGGED's cliff above: the price it sees is the one the engine pays.
    linear = SPSTable([1, 8, 16], [1 / 1.0, 1 / 1.2, 1 / 2.0])
    padded = linear.with_ladder([1, 2, 4, 8, 16])
    survival = np.array([[0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65]] * 2)
    assert plan_verify_lengths(survival, linear, "dspark-async", stale_survival=survival).tolist() == [6, 6]
    assert plan_verify_lengths(survival, padded, "dspark-async", stale_survival=survival).tolist() == [7, 7]
    assert async_capacity(survival, padded, 2) == 14
    assert plan_verify_lengths(survival, padded, "dspark").tolist() == [3, 3]
