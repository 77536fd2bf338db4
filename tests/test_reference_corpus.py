"""Reference corpus: deduplication, split determinism, provenance, prompt sets and chat documents."""

from __future__ import annotations

import gzip
import json
import shutil
import sysconfig
from pathlib import Path

import pytest

from dspark.errors import DataError
from dspark.reference.corpus import CorpusConfig, build_corpus, content_hash, read_documents, split_of
from dspark.reference.prompts import (
    CHAT_FILE,
    build_chat_documents,
    build_prompt_sets,
    load_shared_prompt_sets,
    read_chat_documents,
    read_prompt_set,
    shared_datasets_dir,
    write_prompt_set,
)
from dspark.reference.snippets import extract_functions, extract_prose, split_prose

STDLIB_SAMPLE = ("textwrap.py", "colorsys.py", "bisect.py", "fnmatch.py", "json", "heapq.py", "shlex.py")

MODULE = '''"""A small module about widgets.

Widgets are counted and measured here. The functions below are simple on purpose, so that a test
can check what the extractors find. Each one has a docstring and a body of a few lines.
"""


def count_widgets(items, kind="any"):
    """Count the widgets of one kind in a list of items."""
    total = 0
    for item in items:
        if kind == "any" or item.kind == kind:
            total += 1
    return total


class Ruler:
    def measure(self, widget, unit: str = "cm") -> float:
        """Measure one widget in the given unit."""
        size = widget.size
        if unit == "mm":
            size *= 10
        return size
'''


def write_source_tree(root: Path, stdlib: bool = False) -> Path:
    """A tiny source tree: unique modules, exact and CRLF duplicates, files that must be skipped."""
    (root / "pkg" / "sub").mkdir(parents=True, exist_ok=True)
    for index in range(12):
        body = MODULE.replace("widgets", f"widgets{index}").replace("Ruler", f"Ruler{index}")
        (root / "pkg" / f"mod{index}.py").write_text(body)
    (root / "pkg" / "sub" / "copy_of_mod0.py").write_text((root / "pkg" / "mod0.py").read_text())
    (root / "pkg" / "sub" / "crlf_mod1.py").write_bytes((root / "pkg" / "mod1.py").read_text().replace("\n", "\r\n").encode())
    (root / "pkg" / "tiny.py").write_text("x = 1\n")
    (root / "pkg" / "generated.py").write_text("DATA = [" + ", ".join(["1"] * 400) + "]\n" + MODULE)
    (root / "pkg" / "binary.py").write_bytes(b"\xff\xfe" + MODULE.encode("utf-16-le"))
    (root / "pkg" / "__pycache__").mkdir(exist_ok=True)
    (root / "pkg" / "__pycache__" / "mod0.py").write_text(MODULE + "# cached\n")
    (root / "pkg" / "notes.txt").write_text(MODULE)
    if stdlib:
        source = Path(sysconfig.get_paths()["stdlib"])
        for name in STDLIB_SAMPLE:
            if (source / name).is_dir():
                shutil.copytree(source / name, root / "std" / name, ignore=shutil.ignore_patterns("__pycache__"))
            elif (source / name).is_file():
                (root / "std").mkdir(exist_ok=True)
                shutil.copy(source / name, root / "std" / name)
    return root


def _split_bytes(corpus: Path) -> dict[str, bytes]:
    return {name: (corpus / f"{name}.jsonl.gz").read_bytes() for name in ("train", "validation", "test")}


def test_dedup_filters_and_provenance(tmp_path: Path) -> None:
    src = write_source_tree(tmp_path / "src")
    stats = build_corpus(tmp_path / "corpus", CorpusConfig(roots=(str(src),), validation_fraction=0.2, test_fraction=0.2))
    docs = [d for split in ("train", "validation", "test") for d in read_documents(tmp_path / "corpus", split)]
    assert len(docs) == 12  # mod0..mod11; the exact copy and the CRLF copy are duplicates
    assert stats.duplicates == 2
    assert stats.skipped == {"too_small": 1, "long_lines": 1, "not_utf8": 1}
    assert len({d.sha256 for d in docs}) == 12
    assert all(d.sha256 == content_hash(d.text) and "\r" not in d.text for d in docs)
    assert not any("__pycache__" in d.path or d.path.endswith(".txt") for d in docs)
    assert {d.path for d in docs} >= {"src/pkg/mod0.py", "src/pkg/mod1.py"}  # first in walk order wins
    provenance = json.loads((tmp_path / "corpus" / "provenance.json").read_text())
    assert provenance["roots"] == [str(src.resolve())]
    assert provenance["stats"]["documents"] == stats.documents
    assert sum(stats.documents.values()) == 12


def test_split_is_deterministic_and_depends_only_on_content(tmp_path: Path) -> None:
    src = write_source_tree(tmp_path / "src")
    config = CorpusConfig(roots=(str(src),), validation_fraction=0.3, test_fraction=0.3)
    build_corpus(tmp_path / "a", config)
    build_corpus(tmp_path / "b", config)
    assert _split_bytes(tmp_path / "a") == _split_bytes(tmp_path / "b")  # byte-identical outputs
    # the same files under another root name and order land in the same splits
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(src / "pkg", moved)
    build_corpus(tmp_path / "c", CorpusConfig(roots=(str(moved),), validation_fraction=0.3, test_fraction=0.3))
    where = {s: {d.sha256 for d in read_documents(tmp_path / "a", s)} for s in ("train", "validation", "test")}
    for split in where:
        assert {d.sha256 for d in read_documents(tmp_path / "c", split)} == where[split]


def test_split_fractions() -> None:
    hashes = [content_hash(str(i)) for i in range(20000)]
    splits = [split_of(h, 0.05, 0.1) for h in hashes]
    assert abs(splits.count("validation") / 20000 - 0.05) < 0.01
    assert abs(splits.count("test") / 20000 - 0.1) < 0.01
    assert splits == [split_of(h, 0.05, 0.1) for h in hashes]


def test_bad_input_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        build_corpus(tmp_path / "out", CorpusConfig(roots=(str(tmp_path / "missing"),)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        build_corpus(tmp_path / "out", CorpusConfig(roots=(str(tmp_path / "empty"),)))
    with pytest.raises(DataError):
        CorpusConfig(validation_fraction=0.6, test_fraction=0.5)
    with pytest.raises(DataError):
        list(read_documents(tmp_path / "empty", "train"))


def test_snippets() -> None:
    functions = extract_functions(MODULE)
    assert [f.name for f in functions] == ["count_widgets", "measure"]
    measure = functions[1]
    assert measure.header.startswith('def measure(self, widget, unit: str = "cm") -> float:\n    """Measure')
    assert measure.signature == "measure(self, widget, unit: str='cm') -> float"
    assert measure.body.startswith("    size = widget.size\n") and measure.body.endswith("return size\n")
    assert measure.summary == "Measure one widget in the given unit."
    prose = extract_prose(MODULE)
    assert len(prose) == 1 and prose[0].startswith("A small module about widgets.")
    head, tail = split_prose(prose[0])
    assert prose[0].startswith(head) and tail in prose[0]
    assert extract_functions("def broken(:\n") == [] and extract_prose("def broken(:\n") == []


def test_prompt_sets_and_chat_documents(tmp_path: Path) -> None:
    src = write_source_tree(tmp_path / "src")
    build_corpus(tmp_path / "corpus", CorpusConfig(roots=(str(src),), validation_fraction=0.0, test_fraction=0.5))
    counts = build_prompt_sets(tmp_path / "corpus", tmp_path / "prompts", max_per_set=3, workers=1)
    assert set(counts) == {"code-completion", "code-instruct", "prose"}
    for kind, count in counts.items():
        prompts = read_prompt_set(tmp_path / "prompts" / f"{kind}.jsonl")
        assert len(prompts) == count and 0 < count <= 3
        assert all(len(turns) == 1 and turns[0] for turns in prompts)
    completion = read_prompt_set(tmp_path / "prompts" / "code-completion.jsonl")[0][0]
    assert "```python\ndef " in completion and '"""' in completion
    written = build_chat_documents(tmp_path / "corpus", fraction=1.0, workers=1)
    chats = list(read_chat_documents(tmp_path / "corpus" / CHAT_FILE))
    assert written == len(chats) > 0
    assert all([m["role"] for m in chat] == ["user", "assistant"] for chat in chats)
    with gzip.open(tmp_path / "corpus" / CHAT_FILE, "rt") as handle:
        assert json.loads(handle.readline())["messages"][1]["content"]


def test_prompt_set_reader_validates(tmp_path: Path) -> None:
    write_prompt_set(tmp_path / "ok.jsonl", [["a"], ["b", "c"]])
    assert read_prompt_set(tmp_path / "ok.jsonl") == [["a"], ["b", "c"]]
    (tmp_path / "bad.jsonl").write_text('{"turns": []}\n')
    with pytest.raises(DataError):
        read_prompt_set(tmp_path / "bad.jsonl")
    (tmp_path / "bad2.jsonl").write_text('{"prompt": "x"}\n')
    with pytest.raises(DataError):
        read_prompt_set(tmp_path / "bad2.jsonl")


def test_shared_prompt_sets_when_present() -> None:
    directory = shared_datasets_dir()
    if directory is None or not (directory / "mt-bench.jsonl").is_file():
        pytest.skip("../shared/datasets is not present on this machine")
    sets = load_shared_prompt_sets(["mt-bench"])
    assert len(sets["mt-bench"]) > 0 and all(isinstance(t, str) for turns in sets["mt-bench"] for t in turns)
    with pytest.raises(DataError):
        load_shared_prompt_sets(["no-such-set"])
