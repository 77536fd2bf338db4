"""SPSTable: interpolation/extrapolation rules, monotone envelope, per-request costs, JSON, bad input;
and the analytic roofline builder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dspark.errors import ConfigError, DSparkError
from dspark.scheduling import HARDWARE, MODELS, SPSTable, roofline_table


def test_interpolates_time_linearly_between_points():
    table = SPSTable([1, 3], [1.0, 0.5])  # times 1 s and 2 s
    assert table.step_time(2) == pytest.approx(1.5)
    assert table.sps(2) == pytest.approx(1 / 1.5)
    assert table.step_time(np.array([1, 2, 3])) == pytest.approx([1.0, 1.5, 2.0])


def test_clamps_below_and_extrapolates_above_on_the_last_segment():
    table = SPSTable([4, 8], [1.0, 0.5])  # times 1, 2: slope 0.25 s/token
    assert table.step_time(1) == pytest.approx(1.0)
    assert table.step_time(12) == pytest.approx(3.0)
    falling = SPSTable([4, 8], [0.5, 1.0])  # a larger batch measured faster: slope clamped at 0 above
    assert falling.step_time(100) == pytest.approx(1.0)
    single = SPSTable([16], [2.0])
    assert single.step_time(1) == single.step_time(1000) == pytest.approx(0.5)


def test_unsorted_points_are_sorted():
    assert SPSTable([3, 1], [0.5, 1.0]).tokens == [1, 3]


def test_monotone_envelope_fills_dips_and_keeps_cliffs():
    raw = SPSTable([1, 2, 3, 4], [1.0, 1.25, 0.5, 0.6])  # a dip at 2 and at 4, a cliff at 3
    env = SPSTable([1, 2, 3, 4], [1.0, 1.25, 0.5, 0.6], monotone=True)
    assert raw.sps(2) == pytest.approx(1.25)
    assert env.sps([1, 2, 3, 4]) == pytest.approx([1.0, 1.0, 0.5, 0.5])
    assert env.steps_per_second == [1.0, 1.25, 0.5, 0.6]  # stored as given


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 100.0), min_size=1, max_size=12), st.integers(1, 64))
def test_monotone_envelope_never_rises(rates, query_max):
    table = SPSTable(list(range(1, len(rates) + 1)), rates, monotone=True)
    sps = table.sps(np.arange(1, query_max + len(rates) + 1))
    assert np.all(np.diff(sps) <= 1e-12)


def test_request_and_draft_costs_add_to_the_round():
    table = SPSTable([1, 10], [10.0, 5.0], {1: 0.01, 5: 0.05}, request_cost=([1, 2], [0.001, 0.002]))
    assert table.draft_time(3) == pytest.approx(0.03)
    assert table.request_time(4) == pytest.approx(0.004)  # extrapolated on the last segment
    assert table.round_time(10, 3) == pytest.approx(0.2 + 0.003 + 0.03)
    assert table.per_request_overhead(3) == pytest.approx(0.033)
    assert SPSTable([1], [1.0]).draft_time(7) == 0.0


def test_dense_step_times_match_step_time():
    table = SPSTable([1, 7, 20], [3.0, 2.0, 0.5])
    dense = table.dense_step_times(40)
    assert dense[1:41] == pytest.approx(table.step_time(np.arange(1, 41)))
    assert dense[0] == dense[1]


def test_json_round_trip(tmp_path):
    table = SPSTable([1, 2, 8], [5.0, 4.0, 4.5], ([1, 4], [0.01, 0.02]), request_cost={1: 0.001}, meta={"gpu": "test"})
    path = tmp_path / "sps.json"
    table.save(path)
    again = SPSTable.load(path)
    assert again == table
    assert again.meta == {"gpu": "test"}
    assert json.loads(path.read_text())["format"] == "dspark-sps"
    assert SPSTable.load(path, monotone=True).sps(8) == pytest.approx(4.0)


@pytest.mark.parametrize(
    "tokens, sps, match",
    [
        ([], [], "empty"),
        ([1, 2], [1.0], "2 keys but 1"),
        ([1, 2], [1.0, 0.0], "> 0"),
        ([1, 2], [1.0, float("nan")], "> 0"),
        ([0, 2], [1.0, 1.0], "integers >= 1"),
        ([1.5, 2], [1.0, 1.0], "integers >= 1"),
        ([2, 2], [1.0, 1.0], "duplicate"),
        (["a"], [1.0], "numbers"),
    ],
)
def test_bad_tables_raise_clear_errors(tokens, sps, match):
    with pytest.raises(ConfigError, match=match) as info:
        SPSTable(tokens, sps)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DSparkError)


def test_bad_json_files(tmp_path):
    path = tmp_path / "sps.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SPSTable.load(path)
    path.write_text(json.dumps({"tokens": [1]}))
    with pytest.raises(ConfigError, match="missing key"):
        SPSTable.load(path)
    path.write_text(json.dumps({"format": "other", "tokens": [1], "steps_per_second": [1]}))
    with pytest.raises(ConfigError, match="format"):
        SPSTable.load(path)
    path.write_text(json.dumps({"tokens": [1], "steps_per_second": [1], "draft_cost": [1, 2]}))
    with pytest.raises(ConfigError, match="draft_cost"):
        SPSTable.load(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="JSON object"):
        SPSTable.load(path)


# ------------------------------------------------------------------------------------------ roofline
def test_roofline_is_flat_until_the_ridge_then_linear():
    hw, model = HARDWARE["h200"], MODELS["qwen3-8b"]
    table = roofline_table(hw, model, context_len=1024, max_tokens=512)
    weights = model.num_params * 2 / (hw.bandwidth * hw.bandwidth_efficiency)
    assert table.step_time(1) == pytest.approx(weights)
    assert table.step_time(8) == pytest.approx(weights)
    per_token = 2 * model.num_params / (hw.flops * hw.compute_efficiency)
    assert table.step_time(400) == pytest.approx(400 * per_token)
    assert table.step_time(1000) == pytest.approx(1000 * per_token)  # extrapolated on the same line
    kv = 1024 * model.kv_bytes_per_token / (hw.bandwidth * hw.bandwidth_efficiency)
    assert table.request_time(10) == pytest.approx(10 * kv)
    assert not table.has_draft_cost


def test_roofline_token_tile_makes_cliffs_and_drafter_costs_more_than_mtp1():
    tiled = roofline_table("h200", "qwen3-8b", context_len=512, token_tile=64, max_tokens=1024)
    t = tiled.step_time(np.array([256, 257, 320, 321]))
    assert t[0] < t[1] and t[1] == pytest.approx(t[2]) and t[2] < t[3]
    dspark = roofline_table("h200", "qwen3-8b", context_len=512, drafter="dspark")
    mtp = roofline_table("h200", "qwen3-8b", context_len=512, drafter="mtp1")
    assert dspark.draft_time(64) > mtp.draft_time(64) > 0
    assert dspark.meta["draft_slots"] == 7 and mtp.meta["draft_slots"] == 1


def test_roofline_qwen3_8b_parameter_count():
    # 36 layers x (attention 41.9M + MLP 151.0M) + LM head 622.3M: the public Qwen3-8B shape minus embeddings.
    assert MODELS["qwen3-8b"].num_params == pytest.approx(7.568e9, rel=1e-3)
    assert MODELS["qwen3-8b"].kv_bytes_per_token == 2 * 36 * 8 * 128 * 2


def test_table_from_numbers_takes_plain_numbers():
    from dspark.scheduling.roofline import table_from_numbers

    model = MODELS["qwen3-8b"]
    plain = table_from_numbers(
        bandwidth=4.3e12, flops=790e12, num_params=model.num_params, num_layers=36,
        kv_bytes_per_token=model.kv_bytes_per_token, context_len=1024, max_tokens=512, compute_efficiency=0.6,
    )
    named = roofline_table("h200", "qwen3-8b", context_len=1024, max_tokens=512)
    tokens = np.arange(1, 600)
    assert plain.step_time(tokens) == pytest.approx(named.step_time(tokens))
    assert plain.request_time(37) == pytest.approx(named.request_time(37))
    assert plain.meta["hardware"]["name"] == "custom"


def test_roofline_bad_input():
    with pytest.raises(ConfigError, match="unknown hardware"):
        roofline_table("tpu", "qwen3-8b", context_len=10)
    with pytest.raises(ConfigError, match="unknown roofline model"):
        roofline_table("h200", "llama", context_len=10)
    with pytest.raises(ConfigError, match="context_len"):
        roofline_table("h200", "qwen3-8b", context_len=0)
    with pytest.raises(ConfigError, match="unknown drafter"):
        roofline_table("h200", "qwen3-8b", context_len=10, drafter="medusa")


def test_ladder_prices_a_forward_at_its_padded_size():
    plain = SPSTable([1, 8, 16], [1 / 1.0, 1 / 2.0, 1 / 4.0])  # times 1, 2, 4 s
    table = plain.with_ladder([1, 2, 4, 6, 8, 12, 16])
    assert plain.ladder is None and table.ladder == (1, 2, 4, 6, 8, 12, 16)
    for b, padded in ((3, 4), (5, 6), (7, 8), (9, 12), (13, 16), (16, 16)):
        assert table.step_time(b) == pytest.approx(plain.step_time(padded))  # scalar (cached) path
    assert table.step_time(np.array([5.0, 7.0, 20.0])) == pytest.approx(
        [plain.step_time(6), plain.step_time(8), plain.step_time(20)])  # array path; above the top: unpadded
    assert table.step_time(np.array([9, 10, 11])) == pytest.approx([plain.step_time(12)] * 3)  # one rung: one price
    assert table.dense_step_times(20)[9:13] == pytest.approx([plain.step_time(12)] * 4)
    assert table.with_ladder(None).step_time(9) == pytest.approx(plain.step_time(9))


def test_ladder_survives_json_and_bad_ladders_are_refused(tmp_path):
    table = SPSTable([1, 8], [1.0, 0.5], ladder=[8, 2, 1, 4, 4])
    assert table.ladder == (1, 2, 4, 8)
    table.save(tmp_path / "t.json")
    back = SPSTable.load(tmp_path / "t.json")
    assert back.ladder == (1, 2, 4, 8) and back.step_time(3) == pytest.approx(table.step_time(4))
    assert "ladder" not in SPSTable([1, 8], [1.0, 0.5]).to_dict()  # tables without one are written as before
    for bad in ([0, 2], [1.5], ["x"], 7):
        with pytest.raises(ConfigError, match="ladder"):
            SPSTable([1, 8], [1.0, 0.5], ladder=bad)
    data = table.to_dict() | {"ladder": [2, -1]}
    with pytest.raises(ConfigError, match="ladder"):
        SPSTable.from_dict(data)
