"""Distributed training on CPU (torchrun, Gloo): DDP and FSDP2 give the loss curve of one process.

The trainer normalises every micro-batch by the global weight of supervised slots and draws each
sample's anchors from its slot in the global batch, so 2 ranks × 2 micro-batches must reproduce one
process at the same global batch up to float summation order. A random tiny target and random token
data are enough for that (learnability is tested in test_trainer.py) and keep the launch short.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, save_tiny_target
from dspark import load_drafter
from dspark.train.config import load_train_config
from dspark.train.trainer import Trainer

STEPS = 4


def _write_data(path: Path, num: int = 24) -> Path:
    """Random token sequences of uneven lengths (so micro-batches pad differently), prompt then response."""
    g = torch.Generator().manual_seed(0)
    with path.open("w") as f:
        for i in range(num):
            n, p = int(torch.randint(18, 40, (1,), generator=g)), int(torch.randint(3, 8, (1,), generator=g))
            ids = torch.randint(0, 64, (n,), generator=g).tolist()
            f.write(json.dumps({"id": i, "input_ids": ids, "loss_mask": [0] * p + [1] * (n - p)}) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    tdir = save_tiny_target(root / "target", vocab=64, hidden=32, layers=4, seed=3, init_range=0.3)
    data = _write_data(root / "data.jsonl")
    config = dict(target=str(tdir), data=[str(data)], method="dspark", num_draft_layers=1, block_size=4,
                  num_anchors=8, markov_rank=16, global_batch=8, micro_batch=2, max_steps=STEPS, lr=3e-3,
                  eval_every=2, save_every=2, eval_fraction=0.25, max_eval_samples=5, tensorboard=False,
                  device="cpu", log_every=1)
    (root / "config.json").write_text(json.dumps(config))
    return root


def _torchrun(root: Path, out: Path, *overrides: str, resume: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           # FSDP2 + torch.distributed.checkpoint: no deprecated API on the way (FSDP1's set_state_dict_type warned)
           "PYTHONWARNINGS": "error::FutureWarning,error::DeprecationWarning"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "dspark", "train",
           "--config", str(root / "config.json"), "--set", f"output_dir={out}", *[a for o in overrides for a in ("--set", o)],
           *(["--resume"] if resume else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _single(root: Path, name: str, **overrides: object) -> Path:
    """One process, micro_batch 3 (8 = 3 + 3 + 2: uneven accumulation) unless overridden."""
    out = root / name
    if not (out / "final").is_dir():
        sets = [f"output_dir={out}", "micro_batch=3"] + [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
        torch.set_num_threads(1)
        Trainer(load_train_config(str(root / "config.json"), sets)).fit()
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert [m["step"] for m in ma] == [m["step"] for m in mb] == list(range(1, STEPS + 1))
    for x, y in zip(ma, mb):
        for key in ("loss", "grad_norm", "eval_loss", "tau_estimate"):
            if key in y:
                assert x[key] == pytest.approx(y[key], rel=1e-5), (key, x, y)
    wa, wb = load_drafter(a / "final").state_dict(), load_drafter(b / "final").state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:  # AdamW magnifies summation-order noise on near-zero gradients: compare by norm
        assert float((wa[k] - wb[k]).norm()) <= 1e-5 * float(wb[k].norm()) + 1e-7, k


def test_ddp_two_ranks_match_one_process(setup):
    root = setup
    single = _single(root, "single")
    _torchrun(root, root / "ddp")
    _assert_same_run(root / "ddp", single)
    assert sorted(p.name for p in (root / "ddp" / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]


def _fsdp_run(root: Path) -> Path:
    fsdp = root / "fsdp"
    if not (fsdp / "final").is_dir():
        _torchrun(root, fsdp, "fsdp=true")
    return fsdp


def test_fsdp_two_ranks_match_one_process_and_save_full_state(setup):
    root = setup
    fsdp = _fsdp_run(root)
    _assert_same_run(fsdp, _single(root, "single"))  # final/ holds full (unsharded) weights
    state = torch.load(fsdp / "checkpoints" / "step-00000004" / "trainer_state.pt", weights_only=False)
    assert state["fsdp"] is True and state["step"] == STEPS
    exp_avg = state["optimizer"]["state"]["drafter.fc.weight"]  # gathered, not a shard
    assert exp_avg["exp_avg"].shape == load_drafter(fsdp / "final").fc.weight.shape
    assert not torch.equal(exp_avg["exp_avg"], exp_avg["exp_avg_sq"])


@pytest.mark.slow
def test_fsdp_resume_under_torchrun(setup):
    """A run resumed from its step-2 checkpoint (later checkpoint and final deleted, as after a kill)
    ends exactly like the uninterrupted FSDP run."""
    root = setup
    fsdp = _fsdp_run(root)
    killed = root / "fsdp-killed"
    shutil.copytree(fsdp, killed)
    shutil.rmtree(killed / "checkpoints" / "step-00000004")
    shutil.rmtree(killed / "final")
    _torchrun(root, killed, "fsdp=true", resume=True)
    _assert_same_run(killed, fsdp)
