"""`dspark eval` end to end on a tiny random target: table + one JSON line, traces, plots, clear errors."""

import json

import numpy as np
import pytest

from conftest import tiny_drafter
from dspark.cli import main
from dspark.eval.runner import Conversation, DecodeSettings, PromptSet, run_prompt_set, resolve_prompt_sets
from dspark.formats import save_drafter

PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9], [10, 11]]


@pytest.fixture(scope="module")
def drafts(qwen3_target, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_drafts")
    return {m: save_drafter(tiny_drafter(qwen3_target, m), root / m) for m in ("dspark", "dflash")}


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("eval_data") / "ids.jsonl"
    path.write_text("".join(json.dumps({"input_ids": p}) + "\n" for p in PROMPTS))
    return path


def _eval(target, draft, data, *extra):
    return main(["eval", "--target", target.path, "--draft", str(draft), "--datasets", str(data),
                 "--max-new-tokens", "8", "--batch-size", "2", "--seed", "1", *extra])


def _json_line(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_eval_end_to_end_with_confidence_head(qwen3_target, drafts, prompts_file, tmp_path, capsys):
    from dspark.sim import TraceAcceptance

    out = tmp_path / "out"
    assert _eval(qwen3_target, drafts["dspark"], prompts_file, "--out", str(out), "--thresholds", "0", "0.5") == 0
    text = capsys.readouterr().out
    assert "conditional acceptance per slot" in text and "ECE raw" in text
    res = json.loads(text.strip().splitlines()[-1])
    ds = res["datasets"]["ids"]
    assert ds["num_prompts"] == 3 and ds["domain"] == "custom" and ds["tau"] >= 1.0
    assert len(ds["accept_rate_conditional"]) == 4 and res["macro_tau"] == pytest.approx(ds["tau"])
    assert [r["threshold"] for r in res["threshold_sweep"]] == [0.0, 0.5]
    assert res["threshold_sweep"][0]["tokens_per_step"] == pytest.approx(ds["tau"])  # t = 0 verifies everything
    cal = res["calibration"]
    assert cal["source"].startswith("cross-fit") and len(cal["temperatures"]) == 4
    assert len(cal["before"]["per_slot"]) == 4 and "bins_pooled" not in cal["before"]
    for name in ("results.json", "traces.jsonl", "reliability.png", "threshold_sweep.png", "acceptance_conditional.png"):
        assert (out / name).is_file(), name
    lines = (out / "traces.jsonl").read_text().splitlines()
    assert len(lines) == ds["num_rounds"]
    replay = TraceAcceptance.load(out / "traces.jsonl")
    assert replay.gamma == 4
    np.testing.assert_allclose(1 + replay.accepted.mean(), ds["tau"])
    assert "bins_pooled" in json.loads((out / "results.json").read_text())["calibration"]["after"]


def test_eval_drafter_without_confidence_head(qwen3_target, drafts, prompts_file, tmp_path, capsys):
    out = tmp_path / "o"
    assert _eval(qwen3_target, drafts["dflash"], prompts_file, "--out", str(out), "--no-plots", "--verify-len", "2",
                 "--temperature", "0") == 0
    res = _json_line(capsys)
    assert res["calibration"] is None and res["threshold_sweep"] is None and res["verify_len"] == 2
    cond = res["datasets"]["ids"]["accept_rate_conditional"]
    assert cond[2:] == [None, None]  # slots past --verify-len are never verified
    rec = json.loads((out / "traces.jsonl").read_text().splitlines()[0])
    assert rec["confidences"] is None and rec["verified"] <= 2
    assert not (out / "reliability.png").exists()


def test_eval_uses_stored_temperatures(qwen3_target, prompts_file, tmp_path, capsys):
    drafter = tiny_drafter(qwen3_target, "dspark")
    drafter.set_calibration([2.0, 2.0, 2.0, 2.0])
    path = save_drafter(drafter, tmp_path / "cal")
    assert _eval(qwen3_target, path, prompts_file) == 0
    cal = _json_line(capsys)["calibration"]
    assert cal["source"] == "checkpoint" and cal["temperatures"] == [2.0] * 4


@pytest.mark.parametrize("content, message", [("", "no prompts"), ('{"turns": ["hi"]}\n', "tokenizer"),
                                              ('{"nope": 1}\n', "none of")])
def test_eval_bad_prompt_files(qwen3_target, drafts, tmp_path, capsys, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert _eval(qwen3_target, drafts["dspark"], path) == 2
    assert message in capsys.readouterr().err


def test_eval_unknown_dataset_and_bad_flags(qwen3_target, drafts, capsys):
    assert _eval(qwen3_target, drafts["dspark"], "no-such-set-xyz") == 2
    assert "no-such-set-xyz" in capsys.readouterr().err
    assert _eval(qwen3_target, drafts["dspark"], "x", "--verify-len", "0") == 2
    assert "--verify-len" in capsys.readouterr().err


def test_shared_prompt_sets_resolve_with_domains():
    from dspark.reference.prompts import shared_datasets_dir

    if shared_datasets_dir() is None:
        pytest.skip("shared prompt sets not present")
    sets = {p.name: p.domain for p in resolve_prompt_sets(["gsm8k", "humaneval", "mt-bench"])}
    assert sets == {"gsm8k": "math", "humaneval": "code", "mt-bench": "chat"}


def test_rounds_numbered_and_long_prompts_skipped(qwen3_target):
    from dspark import SpeculativeDecoder

    dec = SpeculativeDecoder(qwen3_target, tiny_drafter(qwen3_target, "dspark"))
    convs = [Conversation("a", prompt_ids=(1, 2, 3)), Conversation("b", prompt_ids=(4, 5)),
             Conversation("long", prompt_ids=tuple([7] * 510))]  # the target has 512 positions
    run = run_prompt_set(dec, PromptSet("ids", "custom", None), convs, DecodeSettings(max_new_tokens=6, batch_size=1),
                         request_offset=10)
    tr = run.trace
    assert (run.num_prompts, run.num_skipped, run.num_generated) == (2, 1, 12) and run.notes
    assert set(tr.request.tolist()) == {10, 11}
    for req in (10, 11):
        np.testing.assert_array_equal(tr.round_index[tr.request == req], np.arange((tr.request == req).sum()))


def test_multi_turn_history_on_the_embedded_target():
    """Turn 2 is prompted with turn 1 and its generated answer in the chat history; rounds keep counting."""
    from dspark import SpeculativeDecoder, load_target
    from dspark.cli.common import DEFAULT_TARGET

    target = load_target(DEFAULT_TARGET)
    dec = SpeculativeDecoder(target, tiny_drafter(target, "dspark", num_hidden_layers=1))
    seen = []
    generate = dec.generate

    def spy(prompts, **kw):
        seen.append([list(p) for p in prompts])
        return generate(prompts, **kw)

    dec.generate = spy
    conv = Conversation("m", turns=("Write a Python function that adds two numbers.", "Now make it subtract."))
    run = run_prompt_set(dec, PromptSet("chat", "chat", None), [conv], DecodeSettings(max_new_tokens=5))
    assert len(seen) == 2
    first, second = seen[0][0], seen[1][0]
    assert second[: len(first)] == first and len(second) > len(first) + 5
    tr = run.trace
    assert sorted(set(tr.turn.tolist())) == [0, 1]
    np.testing.assert_array_equal(tr.round_index, np.arange(len(tr)))


def test_eval_with_a_scheduling_policy(qwen3_target, drafts, prompts_file, tmp_path, capsys):
    from dspark.scheduling import SPSTable

    SPSTable([1, 2, 4, 8, 16, 32], [1.0, 0.9, 0.8, 0.6, 0.4, 0.2]).save(tmp_path / "sps.json")
    assert _eval(qwen3_target, drafts["dspark"], prompts_file, "--policy", "dspark", "--sps", str(tmp_path / "sps.json")) == 0
    out = _json_line(capsys)
    assert out["policy"] == "dspark" and out["macro_tau"] >= 1.0
    assert _eval(qwen3_target, drafts["dspark"], prompts_file, "--policy", "dspark") == 2  # no SPS table
    assert "SPS" in capsys.readouterr().err
