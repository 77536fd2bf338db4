"""`dspark calibrate` end to end: temperatures stored in the checkpoint (copy or in place) and reloaded,
weights untouched in place, lean checkpoints stay lean, clear errors for drafters without a confidence head."""

import inspect
import json
import shutil

import pytest
import torch

from conftest import tiny_drafter
from dspark.cli import main
from dspark.formats import load_drafter, read_drafter_config, save_drafter
from dspark.formats.io import load_weights


@pytest.fixture(scope="module")
def setup(qwen3_target, tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    data = root / "heldout.jsonl"
    data.write_text("".join(json.dumps({"input_ids": [i, i + 1, i + 2]}) + "\n" for i in range(1, 6)))
    draft = save_drafter(tiny_drafter(qwen3_target, "dspark", seed=3), root / "dspark")
    return root, data, draft


def _calibrate(target, draft, data, *extra):
    return main(["calibrate", "--target", target.path, "--draft", str(draft), "--data", str(data),
                 "--max-new-tokens", "10", "--batch-size", "5", *extra])


def test_calibrate_to_a_new_checkpoint(qwen3_target, setup, tmp_path, capsys):
    _, data, draft = setup
    out = tmp_path / "calibrated"
    assert _calibrate(qwen3_target, draft, data, "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "ECE raw" in text and "ECE STS" in text
    res = json.loads(text.strip().splitlines()[-1])
    temps = res["temperatures"]
    assert len(temps) == 4 and all(t > 0 for t in temps) and res["num_prompts"] == 5
    before, after = res["before"]["per_slot"], res["after"]["per_slot"]
    assert len(before) == 4 and after[0]["ece"] <= before[0]["ece"] + 1e-12  # T = 1 is on the grid
    assert (out / "calibration_reliability.png").is_file() and (out / "calibration.json").is_file()
    config, _ = read_drafter_config(out)
    assert config.calibration_temperatures == pytest.approx(temps)
    reloaded = load_drafter(out, target=qwen3_target)
    assert reloaded.config.calibration_temperatures == pytest.approx(temps)
    assert torch.allclose(reloaded.calibration_temperatures, torch.tensor(temps))
    original = load_drafter(draft, target=qwen3_target)
    assert original.config.calibration_temperatures is None  # the source is untouched
    for key, value in original.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key
    # an existing --out is refused without --overwrite
    assert _calibrate(qwen3_target, draft, data, "--out", str(out), "--no-plots") == 2
    assert "already exists" in capsys.readouterr().err


def test_calibrate_in_place_rewrites_only_the_config(qwen3_target, setup, tmp_path, capsys):
    _, data, draft = setup
    local = shutil.copytree(draft, tmp_path / "inplace")
    (local / "notes.txt").write_text("keep me")
    weights = (local / "model.safetensors").read_bytes()
    assert _calibrate(qwen3_target, local, data, "--no-plots") == 0
    temps = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["temperatures"]
    assert json.loads((local / "config.json").read_text())["dspark_calibration_temperatures"] == pytest.approx(temps)
    assert (local / "model.safetensors").read_bytes() == weights and (local / "notes.txt").read_text() == "keep me"
    assert load_drafter(local, target=qwen3_target).config.calibration_temperatures == pytest.approx(temps)
    # `dspark eval` now scores the stored temperatures
    assert main(["eval", "--target", qwen3_target.path, "--draft", str(local), "--datasets", str(data),
                 "--max-new-tokens", "6", "--max-prompts", "2"]) == 0
    cal = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["calibration"]
    assert cal["source"] == "checkpoint" and cal["temperatures"] == pytest.approx(temps)


def test_calibrate_keeps_a_lean_checkpoint_lean(qwen3_target, setup, tmp_path, capsys):
    if "include_frozen" not in inspect.signature(save_drafter).parameters:
        pytest.skip("save_drafter cannot write lean checkpoints yet")
    _, data, _ = setup
    lean = save_drafter(tiny_drafter(qwen3_target, "dspark", seed=4), tmp_path / "lean", include_frozen=False)
    out = tmp_path / "lean_cal"
    assert _calibrate(qwen3_target, lean, data, "--out", str(out), "--no-plots", "--max-prompts", "2") == 0
    assert "embed_tokens.weight" not in load_weights(out)
    assert load_drafter(out, target=qwen3_target).config.calibration_temperatures is not None


def test_calibrate_refuses_drafters_without_a_confidence_head(qwen3_target, setup, tmp_path, capsys):
    _, data, _ = setup
    dflash = save_drafter(tiny_drafter(qwen3_target, "dflash"), tmp_path / "dflash")
    assert _calibrate(qwen3_target, dflash, data, "--no-plots") == 2
    assert "no confidence head" in capsys.readouterr().err
    config = json.loads((dflash / "config.json").read_text())
    assert "dspark_calibration_temperatures" not in config


def test_calibrate_needs_data_and_a_draft(qwen3_target, setup, tmp_path, capsys):
    _, _, draft = setup
    assert _calibrate(qwen3_target, draft, tmp_path / "missing.jsonl", "--no-plots") == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["calibrate", "--target", qwen3_target.path, "--data", str(setup[1])]) == 2
    assert "--draft" in capsys.readouterr().err
