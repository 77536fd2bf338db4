"""Drafters by hub id (issue 14, item 5), against a Hugging Face cache laid out by the test (no network).

The cache has the layout `huggingface_hub` writes: `models--ORG--NAME/{refs/main, snapshots/<commit>/,
blobs/<hash>}` with the snapshot's files linked to the blobs. `HF_HUB_OFFLINE=1` makes every lookup
local (`local_files_only`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from dspark.cli import main
from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET
from dspark.formats import load_drafter, read_drafter_config
from dspark.formats.hub import looks_like_hub_id

REPO_ID = "dspark-test/tiny-dspark"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_hub_cache(cache: Path, repo_id: str = REPO_ID, source: Path = DEFAULT_DRAFT) -> Path:
    """A hub cache holding `source`'s files as snapshot COMMIT of `repo_id`; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for path in source.iterdir():
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    snapshot = build_hub_cache(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return snapshot


def test_hub_ids_are_told_from_paths():
    assert looks_like_hub_id("deepseek-ai/DSpark-Qwen3-8B") and looks_like_hub_id("org/name@v1.0")
    assert not any(looks_like_hub_id(p) for p in ("./org/name", "/abs/path", "~/x/y", "a/b/c", "plain"))


def test_drafter_by_hub_id_from_the_local_cache(offline_cache):
    from dspark import load_target

    config, fmt = read_drafter_config(REPO_ID)
    assert fmt == "deepspec" and config.method == "dspark"
    target = load_target(DEFAULT_TARGET)
    by_id = load_drafter(REPO_ID, target=target)
    by_dir = load_drafter(DEFAULT_DRAFT, target=target)
    assert all((by_id.state_dict()[k] == v).all() for k, v in by_dir.state_dict().items())


def test_a_drafter_missing_from_the_offline_cache_is_one_line(offline_cache, tmp_path, capsys):
    assert main(["export", "--draft", "dspark-test/not-cached", "--lean", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not in the local Hugging Face cache" in err and "HF_HUB_OFFLINE" in err


def test_export_by_hub_id_in_a_fresh_process(tmp_path):
    """What a user runs: HF_HOME points at the cache, no network, the drafter named by its id."""
    build_hub_cache(tmp_path / "hf" / "hub")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("HF_HUB_CACHE", None)
    out = tmp_path / "served"
    proc = subprocess.run([sys.executable, "-m", "dspark", "export", "--draft", REPO_ID, "--target", str(DEFAULT_TARGET),
                           "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and "vllm serve" in proc.stdout
