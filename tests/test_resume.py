"""Issue 15, items 3 and 6: training resumes only when asked (`--resume`) and only the run it belongs to;
killed checkpoint writes leave nothing behind and every saved step keeps its metrics line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import save_tiny_target
from dspark.cli import main
from dspark.errors import ConfigError
from dspark.train.config import TrainConfig
from dspark.train.trainer import Trainer

_one_thread = pytest.fixture(scope="module", autouse=True)(
    __import__("helpers_train").single_thread)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two targets of the same shapes, token data, and one finished 2-step run (checkpoint at step 2)."""
    root = tmp_path_factory.mktemp("resume")
    target_a = save_tiny_target(root / "a", seed=0)
    target_b = save_tiny_target(root / "b", seed=1)
    g = torch.Generator().manual_seed(0)
    with (root / "data.jsonl").open("w") as f:
        for i in range(12):
            ids = torch.randint(0, 64, (16,), generator=g).tolist()
            f.write(json.dumps({"id": i, "input_ids": ids, "loss_mask": [0] * 4 + [1] * 12}) + "\n")
    Trainer(_config(root, target_a, root / "done")).fit()
    return root, target_a, target_b


def _config(root: Path, target: Path, out: Path, **kw) -> TrainConfig:
    base = dict(target=str(target), data=[str(root / "data.jsonl")], output_dir=str(out), num_draft_layers=1,
                block_size=4, num_anchors=4, markov_rank=8, global_batch=4, micro_batch=4, max_steps=2, lr=3e-3,
                eval_every=1000, save_every=2, eval_fraction=0.2, max_eval_samples=2, tensorboard=False,
                device="cpu", log_every=1)
    return TrainConfig(**{**base, **kw})


def _copy(root: Path, name: str) -> Path:
    return Path(shutil.copytree(root / "done", root / name))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_checkpoint_is_never_resumed_without_resume(run, capsys):
    root, target_a, _ = run
    with pytest.raises(ConfigError, match="holds a checkpoint.*pass --resume"):
        Trainer(_config(root, target_a, root / "done"))
    argv = ["train", "--set", f"target={target_a}", "--set", f"data={root / 'data.jsonl'}", "--set",
            f"output_dir={root / 'done'}", "--set", "device=cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err


def test_resume_refuses_a_foreign_target_of_the_same_shapes(run):
    root, target_a, target_b = run
    with pytest.raises(ConfigError, match="target: the checkpoint was trained for .*this run's target is") as info:
        Trainer(_config(root, target_b, root / "done"), resume=True)
    assert str(target_a) in str(info.value) and str(target_b) in str(info.value)  # both named


@pytest.mark.parametrize("change, named", [
    ({"lr": 1e-3}, "lr: 0.003 in the checkpoint, 0.001 now"),
    ({"seed": 5}, "seed: 0 in the checkpoint, 5 now"),
    ({"num_anchors": 8}, "num_anchors"),
    ({"num_draft_layers": 2}, "drafter shape"),
    ({"method": "dflash"}, "method: 'dspark' in the checkpoint, 'dflash' now"),
])
def test_resume_refuses_a_changed_setting_naming_it(run, change, named):
    root, target_a, _ = run
    with pytest.raises(ConfigError, match=named.replace("(", r"\(").replace(")", r"\)")):
        Trainer(_config(root, target_a, root / "done", **change), resume=True)


def test_resume_refuses_other_training_data(run, tmp_path):
    root, target_a, _ = run
    lines = (root / "data.jsonl").read_text().splitlines()
    (tmp_path / "data.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(ConfigError, match="data fingerprint"):
        Trainer(_config(root, target_a, root / "done", data=[str(tmp_path / "data.jsonl")]), resume=True)


def test_resume_applies_a_new_step_budget(run):
    root, target_a, _ = run
    out = _copy(root, "longer")
    trainer = Trainer(_config(root, target_a, out, max_steps=4, log_every=2), resume=True)
    assert (trainer.step, trainer.total_steps) == (2, 4)
    trainer.fit()
    assert trainer.step == 4 and (out / "checkpoints" / "step-00000004").is_dir()
    assert [m["step"] for m in _metrics(out)] == [1, 2, 4]
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == 4
    with pytest.raises(ConfigError, match="past this run's 3 steps"):
        Trainer(_config(root, target_a, out, max_steps=3), resume=True)


def test_killed_checkpoint_writes_are_cleaned_on_the_next_start(run):
    root, target_a, _ = run
    out = _copy(root, "killed")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    for name in (f".step-00000004.tmp-{proc.pid}-abcd", ".step-00000004.tmp-k2j3h4g5"):
        (out / "checkpoints" / name).mkdir()
        (out / "checkpoints" / name / "model.safetensors").write_bytes(b"half written")
    Trainer(_config(root, target_a, out, max_steps=4), resume=True)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]


class _Killed(Exception):
    pass


def test_the_metrics_line_of_a_saved_step_is_never_lost(run, monkeypatch):
    """Written before the checkpoint, and kept in it: a resume restores a line the file lost."""
    import dspark.train.trainer as trainer_module

    root, target_a, _ = run
    out = root / "metrics-run"
    save = trainer_module.save_checkpoint

    def killed_after_saving(output_dir, step, *args, **kwargs):
        path = save(output_dir, step, *args, **kwargs)
        if step == 2:
            assert [m["step"] for m in _metrics(out)] == [1, 2]  # the line is already durable
            raise _Killed
        return path

    monkeypatch.setattr(trainer_module, "save_checkpoint", killed_after_saving)
    with pytest.raises(_Killed):
        Trainer(_config(root, target_a, out, max_steps=4)).fit()
    monkeypatch.undo()
    (out / "metrics.jsonl").write_text(json.dumps(_metrics(out)[0]) + "\n{torn")  # lost step 2, torn tail
    trainer = Trainer(_config(root, target_a, out, max_steps=4), resume=True)
    assert [m["step"] for m in _metrics(out)] == [1, 2]
    trainer.fit()
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]


def test_a_run_that_saved_no_checkpoint_starts_again(run):
    root, target_a, _ = run
    out = root / "no-checkpoint"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    (out / "train_config.json").write_text("{}")
    trainer = Trainer(_config(root, target_a, out, max_steps=1, save_every=5))
    assert trainer.step == 0 and not (out / "metrics.jsonl").exists()
