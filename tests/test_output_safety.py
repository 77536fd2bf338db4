"""Issue 15, items 1, 2, 5 and 6: no command deletes or overwrites a file it did not write.

The output-directory policy (`dspark.output_dir`) on its own, then every command that writes a directory
run against one holding an unrelated file, then the outputs checked before the work, then leftovers of
failed or killed writes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_drafter
from test_reference_corpus import write_source_tree

from dspark.cli import main
from dspark.cli.common import DEFAULT_DRAFT
from dspark.errors import DSparkError
from dspark.formats import save_drafter
from dspark.output_dir import MARKER, OutputKind, check_output_dir, clean_leftovers, write_output_dir

KIND = OutputKind("test output", frozenset({"a.txt", "b.txt", "sub"}))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _foreign_dir(path: Path) -> Path:
    """`path/sub/important.txt`, the issue's reproduction."""
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "important.txt").write_text("keep me")
    return path


def _write(out: Path, **files: str) -> Path:
    def fill(tmp: Path) -> None:
        for name, text in files.items():
            (tmp / name).write_text(text)

    return write_output_dir(out, KIND, fill, overwrite=True)


# -- the policy --------------------------------------------------------------------------------------
def test_new_empty_and_marker_only_directories_are_written(tmp_path):
    out = write_output_dir(tmp_path / "new", KIND, lambda d: (d / "a.txt").write_text("1"))
    assert (out / "a.txt").read_text() == "1"
    assert json.loads((out / MARKER).read_text())["entries"] == ["a.txt"]
    (tmp_path / "empty").mkdir()
    write_output_dir(tmp_path / "empty", KIND, lambda d: (d / "a.txt").write_text("2"))
    (tmp_path / "claimed").mkdir()
    (tmp_path / "claimed" / MARKER).write_text(json.dumps({"kind": KIND.name, "entries": ["a.txt"]}))
    write_output_dir(tmp_path / "claimed", KIND, lambda d: (d / "a.txt").write_text("3"))  # a failed run's claim
    assert not list(tmp_path.glob(".*"))  # no temporary sibling left


def test_foreign_directory_or_file_is_refused_even_with_overwrite(tmp_path):
    foreign = _foreign_dir(tmp_path / "d")
    with pytest.raises(DSparkError, match="not empty.*'sub'"):
        _write(foreign, **{"a.txt": "x"})
    (tmp_path / "file").write_text("a regular file")
    with pytest.raises(DSparkError, match="is a file"):
        _write(tmp_path / "file", **{"a.txt": "x"})
    assert (foreign / "sub" / "important.txt").read_text() == "keep me"
    assert (tmp_path / "file").read_text() == "a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "file"]


def test_overwrite_replaces_only_our_entries(tmp_path):
    out = _write(tmp_path / "o", **{"a.txt": "old", "b.txt": "old"})
    with pytest.raises(DSparkError, match="already exists.*--overwrite"):
        write_output_dir(out, KIND, lambda d: None)
    (out / "notes.txt").write_text("mine")  # the user adds a file to our output
    _write(out, **{"a.txt": "new"})
    assert (out / "a.txt").read_text() == "new" and not (out / "b.txt").exists()  # ours: replaced / removed
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / MARKER).read_text())["entries"] == ["a.txt"]
    (out / "b.txt").write_text("theirs")  # a foreign file under a name we write
    with pytest.raises(DSparkError, match="'b.txt', which dspark did not write"):
        _write(out, **{"b.txt": "new"})
    assert (out / "b.txt").read_text() == "theirs"


def test_directories_from_before_markers_are_recognised_by_name(tmp_path):
    (tmp_path / "legacy").mkdir()
    (tmp_path / "legacy" / "a.txt").write_text("old")
    with pytest.raises(DSparkError, match="already exists"):
        check_output_dir(tmp_path / "legacy", KIND)
    _write(tmp_path / "legacy", **{"a.txt": "new"})
    assert (tmp_path / "legacy" / "a.txt").read_text() == "new"
    # a directory of the user's that happens to share the name of one of ours is not taken for ours
    with pytest.raises(DSparkError, match="not empty"):
        check_output_dir(_foreign_dir(tmp_path / "d"), KIND, overwrite=True)


def test_leftovers_of_killed_writes_are_cleaned_and_an_interrupted_swap_is_undone(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".o.tmp-{dead}-abcd").mkdir()
    (tmp_path / ".o.tmp-k2j3h4g5").mkdir()  # tempfile.mkdtemp's name, from before pids were recorded
    (tmp_path / f".o.old-{dead}-beef").mkdir()  # killed between moving the old output aside and the new in
    (tmp_path / f".o.old-{dead}-beef" / "a.txt").write_text("previous")
    live = tmp_path / ".o.tmp-1-live"  # pid 1 is alive: someone else's write in progress
    live.mkdir()
    check_output_dir(tmp_path / "o", KIND, overwrite=True)
    assert (tmp_path / "o" / "a.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "o"]
    assert clean_leftovers(tmp_path) == []


# -- every command that writes a directory ------------------------------------------------------------
def _write_commands(d: Path, tmp: Path) -> dict[str, list[str]]:
    """argv of every writing command, aimed at `d` (with --overwrite where the command has it)."""
    x = str(tmp / "x.jsonl")
    return {
        "export": ["export", "--draft", str(DEFAULT_DRAFT), "--format", "specforge", "--out", str(d), "--overwrite"],
        "calibrate": ["calibrate", "--draft", str(DEFAULT_DRAFT), "--data", x, "--out", str(d), "--overwrite"],
        "tokenizer": ["tokenizer", "--corpus", str(tmp), "--out", str(d), "--overwrite"],
        "pretrain": ["pretrain", "--corpus", str(tmp), "--tokenizer", str(tmp), "--out", str(d), "--overwrite"],
        "data corpus": ["data", "corpus", "--roots", str(tmp), "--out", str(d), "--overwrite"],
        "cache build": ["cache", "build", "--target", str(tmp), "--data", x, "--output", str(d)],
        "train": ["train", "--set", f"target={tmp}", "--set", f"data={x}", "--set", f"output_dir={d}", "--resume"],
        "eval": ["eval", "--datasets", x, "--out", str(d), "--overwrite"],
        "simulate": ["simulate", "--roofline", "qwen3-8b", "--out", str(d), "--overwrite"],
        "profile": ["profile", "--out", str(d)],
        "data regenerate": ["data", "regenerate", "--endpoint", "http://127.0.0.1:9", "--input", x, "--output", str(d)],
    }


def test_every_write_command_leaves_an_unrelated_file_alone(tmp_path, capsys):
    commands = _write_commands(tmp_path / "probe", tmp_path)
    for name in commands:
        d = _foreign_dir(tmp_path / name.replace(" ", "-"))
        argv = _write_commands(d, tmp_path)[name]
        assert main(argv) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(d) in err, (name, err)
        assert "not empty" in err or "is a directory" in err, (name, err)
        assert (d / "sub" / "important.txt").read_text() == "keep me", name
        assert sorted(p.name for p in d.iterdir()) == ["sub"], name
        assert not list(tmp_path.glob(f".{d.name}.*")), name


def test_tokenizer_never_deletes_its_output_directory(tmp_path, capsys):
    """Item 1: `dspark tokenizer --out d` used to delete d recursively."""
    src = write_source_tree(tmp_path / "src")
    assert main(["data", "corpus", "--roots", str(src), "--out", str(tmp_path / "corpus"), "--workers", "1",
                 "--chat-fraction", "0"]) == 0
    d = _foreign_dir(tmp_path / "d")
    tok = ["tokenizer", "--corpus", str(tmp_path / "corpus"), "--vocab-size", "300"]
    assert main([*tok, "--out", str(d)]) == 2
    assert (d / "sub" / "important.txt").read_text() == "keep me"
    out = tmp_path / "tok"
    assert main([*tok, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*tok, "--out", str(out)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*tok, "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "tokenizer.json").is_file()


def test_export_overwrite_keeps_unrelated_files_and_never_replaces_a_file(tmp_path, qwen3_target, capsys):
    """Item 2: `export --overwrite` wiped `somedir/sub/important.txt` and replaced a regular file."""
    draft = save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "src")
    export = ["export", "--draft", str(draft), "--format", "specforge", "--overwrite", "--out"]
    (tmp_path / "file").write_text("a regular file")
    assert main([*export, str(tmp_path / "file")]) == 2
    assert (tmp_path / "file").read_text() == "a regular file"
    out = tmp_path / "sf"
    assert main([*export, str(out)]) == 0
    (out / "sub").mkdir()
    (out / "sub" / "important.txt").write_text("keep me")
    assert main([*export, str(out)]) == 0
    assert (out / "sub" / "important.txt").read_text() == "keep me"
    assert json.loads((out / "config.json").read_text())["architectures"] == ["DSparkDraftModel"]


# -- outputs checked before the work -------------------------------------------------------------------
def _no_work(*args, **kwargs):
    raise AssertionError("the command started its work before checking its output")


@pytest.mark.parametrize("command, module, work", [
    (["eval", "--datasets", "x.jsonl", "--out", "{file}"], "dspark.cli.eval", "load_pair"),
    (["simulate", "--roofline", "qwen3-8b", "--out", "{file}"], "dspark.cli.simulate", "run_sweep"),
    (["profile", "--out", "{dir}"], "dspark.cli.profile", "load_pair"),
    (["simulate", "--roofline", "qwen3-8b", "--save-sps", "{dir}"], "dspark.cli.simulate", "run_sweep"),
])
def test_output_paths_are_checked_before_the_work(tmp_path, monkeypatch, capsys, command, module, work):
    """Item 5: `eval`/`simulate --out FILE` and `profile --out DIR` crashed after all the work was done."""
    import importlib

    monkeypatch.setattr(importlib.import_module(module), work, _no_work)
    (tmp_path / "file").write_text("results of yesterday")
    (tmp_path / "dir").mkdir()
    argv = [a.format(file=tmp_path / "file", dir=tmp_path / "dir") for a in command]
    assert main(argv) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (tmp_path / "file").read_text() == "results of yesterday" and not list((tmp_path / "dir").iterdir())


# -- leftovers of failed runs ------------------------------------------------------------------------
def test_failed_cache_build_leaves_nothing_that_blocks_the_rerun(tmp_path, qwen3_target):
    """Item 6: a cache build that failed on bad JSONL left `_build/`, which refused the fixed file."""
    from dspark.train.cache_build import build_cache

    rows = [{"id": i, "input_ids": [1, 2, 3, 4, 5, 6], "loss_mask": [0, 0, 1, 1, 1, 1]} for i in range(6)]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]) + "{broken\n" + json.dumps(rows[5]) + "\n")
    with pytest.raises(DSparkError):
        build_cache(qwen3_target, data, tmp_path / "cache", layer_ids=[0, 2], batch_size=2)
    assert not (tmp_path / "cache").exists()
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert build_cache(qwen3_target, data, tmp_path / "cache", layer_ids=[0, 2], batch_size=2)["num_samples"] == 6


def test_failed_corpus_leaves_no_partial_output(tmp_path, capsys):
    """Item 6: a failed `data corpus` left `*.tmp` files."""
    (tmp_path / "empty").mkdir()
    assert main(["data", "corpus", "--roots", str(tmp_path / "empty"), "--out", str(tmp_path / "corpus")]) == 2
    assert "no usable" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
