"""Prompt sets for the reference targets, and the reader of the shared benchmark prompt sets.

Two products, both made from a corpus written by `dspark.reference.corpus`:

* evaluation prompt sets from the HELD-OUT split (test), one JSONL per domain in the format of
  `../shared/datasets/*.jsonl` (`{"turns": ["user message", ...]}`):
  `code-completion` (a documented signature → the body), `code-instruct` (a one-line request built
  from the docstring summary → the function) and `prose` (the opening of a docstring or comment
  block → its continuation);
* chat documents from the TRAIN split (`chat_train.jsonl.gz`, `{"messages": [user, assistant]}`),
  the same three kinds of request with their answers, which pretraining mixes into the raw code so
  that the target answers prompts rendered with its chat template.

Selection is deterministic (ordered by a hash of file content and line), at most a few items per file
so that one large file does not dominate a set.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import get_context
from pathlib import Path
from typing import TypeVar

from dspark.errors import DataError
from dspark.reference.corpus import Document, open_gzip_text, read_documents
from dspark.reference.snippets import FunctionSnippet, extract_functions, extract_prose, split_prose

logger = logging.getLogger(__name__)

CHAT_FILE = "chat_train.jsonl.gz"
PROMPT_KINDS: tuple[str, ...] = ("code-completion", "code-instruct", "prose")
# Domain of each shared prompt set (see ../shared/datasets/README.md), for per-domain reporting.
SHARED_DOMAINS: dict[str, str] = {
    "gsm8k": "math", "math500": "math", "aime24": "math", "aime25": "math",
    "mbpp": "code", "humaneval": "code", "livecodebench": "code", "lbpp": "code",
    "mt-bench": "chat", "arena-hard-v2": "chat", "swe-bench": "agentic",
}  # fmt: skip

T = TypeVar("T")
Message = dict[str, str]
Example = tuple[str, str, str]  # (kind, user request, reference answer)


def _fence(code: str) -> str:
    return f"```python\n{code.rstrip()}\n```"


def code_completion_request(fn: FunctionSnippet) -> str:
    """A documented signature, asking for the body (answer: the whole function)."""
    return f"Complete the body of this Python function.\n\n{_fence(fn.header)}"


def code_instruct_request(fn: FunctionSnippet) -> str:
    """A one-line request made of the signature and the docstring summary."""
    summary = fn.summary.rstrip(".")
    return f"Write a Python function `{fn.signature}`. {summary[0].upper()}{summary[1:]}."


def prose_request(opening: str) -> str:
    """The opening of a documentation passage, asking for the rest."""
    return f"Continue this passage from a library's documentation.\n\n{opening}"


def examples_from_source(source: str, per_file: int = 3, comments: bool = True) -> list[Example]:
    """Up to `per_file` examples of each kind from one file, ordered by a hash of their position."""
    functions = extract_functions(source)
    code_ok = [fn for fn in functions if len(fn.summary) >= 20]
    prose = [pair for pair in map(split_prose, extract_prose(source, comments=comments)) if pair]
    chosen: list[Example] = []
    for fn in _pick(functions, per_file, lambda f: f.line):
        chosen.append(("code-completion", code_completion_request(fn), _fence(fn.header + "\n" + fn.body)))
    for fn in _pick(code_ok, per_file, lambda f: -f.line):
        chosen.append(("code-instruct", code_instruct_request(fn), _fence(fn.header + "\n" + fn.body)))
    for head, tail in _pick(prose, per_file, lambda p: p[0]):
        chosen.append(("prose", prose_request(head), tail))
    return chosen


def _pick(items: list[T], count: int, key: Callable[[T], object]) -> list[T]:
    """A deterministic pseudo-random choice of `count` items (ordered by a hash of `key`)."""
    ranked = sorted(items, key=lambda item: hashlib.sha256(str(key(item)).encode()).hexdigest())
    return ranked[:count]


def _examples_of(args: tuple[str, int, bool]) -> list[Example]:
    source, per_file, comments = args
    return examples_from_source(source, per_file, comments)


def _iter_examples(
    docs: Iterable[Document], per_file: int, comments: bool, workers: int
) -> Iterator[tuple[Document, list[Example]]]:
    """Examples of each document, extracted in a process pool (ast parsing is the slow part)."""
    docs = list(docs)
    jobs = [(doc.text, per_file, comments) for doc in docs]
    if workers <= 1 or len(docs) < 64:
        yield from zip(docs, map(_examples_of, jobs))
        return
    with get_context("spawn").Pool(workers) as pool:
        yield from zip(docs, pool.imap(_examples_of, jobs, chunksize=16))


def _subsample(docs: Iterable[Document], fraction: float) -> Iterator[Document]:
    """Documents whose content hash (a different slice than the split's) falls under `fraction`."""
    for doc in docs:
        if int(doc.sha256[16:32], 16) / float(1 << 64) < fraction:
            yield doc


def build_prompt_sets(
    corpus_dir: Path, out_dir: Path, split: str = "test", max_per_set: int = 500, per_file: int = 3,
    workers: int = 0,
) -> dict[str, int]:
    """Write `<kind>.jsonl` prompt sets from one (held-out) split; returns the count per kind."""
    workers = workers or min(8, os.cpu_count() or 1)
    by_kind: dict[str, list[tuple[str, str]]] = {kind: [] for kind in PROMPT_KINDS}
    for doc, examples in _iter_examples(read_documents(corpus_dir, split), per_file, True, workers):
        for kind, request, _answer in examples:
            by_kind[kind].append((hashlib.sha256(f"{doc.sha256}:{request}".encode()).hexdigest(), request))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for kind, ranked in by_kind.items():
        chosen = [request for _, request in sorted(ranked)[:max_per_set]]
        write_prompt_set(out_dir / f"{kind}.jsonl", ([request] for request in chosen))
        counts[kind] = len(chosen)
        if not chosen:
            logger.warning("prompt set %s is empty: split %r of %s has no usable %s material", kind, split, corpus_dir, kind)
    logger.info("prompt sets in %s: %s", out_dir, counts)
    return counts


def build_chat_documents(
    corpus_dir: Path, out_path: Path | None = None, fraction: float = 0.5, per_file: int = 3, workers: int = 0,
) -> int:
    """Write chat documents (`{"messages": [...]}`) from a subsample of the train split; returns the count."""
    workers = workers or min(8, os.cpu_count() or 1)
    out_path = Path(out_path) if out_path else Path(corpus_dir) / CHAT_FILE
    count = 0
    docs = _subsample(read_documents(corpus_dir, "train"), fraction)
    tmp = out_path.with_suffix(".tmp")
    try:
        with open_gzip_text(tmp) as handle:
            for _doc, examples in _iter_examples(docs, per_file, False, workers):
                for _kind, request, answer in examples:
                    messages = [{"role": "user", "content": request}, {"role": "assistant", "content": answer}]
                    handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
                    count += 1
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out_path)
    logger.info("%d chat documents in %s", count, out_path)
    return count


def read_chat_documents(path: Path) -> Iterator[list[Message]]:
    """The message lists of a chat document file (missing file: nothing)."""
    path = Path(path)
    if not path.is_file():
        return
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            try:
                yield json.loads(line)["messages"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: malformed chat document ({exc})") from exc


def write_prompt_set(path: Path, prompts: Iterable[list[str]]) -> None:
    """Write `{"turns": [...]}` lines (atomically)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for turns in prompts:
                handle.write(json.dumps({"turns": list(turns)}, ensure_ascii=False) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def read_prompt_set(path: Path) -> list[list[str]]:
    """The turns of every line of a `{"turns": [...]}` JSONL file, validated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt set {path} not found")
    prompts = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                turns = json.loads(line)["turns"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: expected {{\"turns\": [...]}} ({exc})") from exc
            if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
                raise DataError(f"{path}:{line_no}: 'turns' must be a non-empty list of strings")
            prompts.append(turns)
    return prompts


def shared_datasets_dir() -> Path | None:
    """`$DSPARK_DATASETS`, else `<repo>/../shared/datasets` of a source checkout; None when absent."""
    env = os.environ.get("DSPARK_DATASETS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[3] / ".." / "shared" / "datasets")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return None


def list_prompt_sets(directory: Path) -> dict[str, Path]:
    """Name → path of every `*.jsonl` prompt set in a directory (sorted by name)."""
    return {p.stem: p for p in sorted(Path(directory).glob("*.jsonl"))}


def load_shared_prompt_sets(names: Iterable[str] | None = None) -> dict[str, list[list[str]]]:
    """The shared benchmark prompt sets that are present (all, or the named ones); {} when absent."""
    directory = shared_datasets_dir()
    if directory is None:
        return {}
    available = list_prompt_sets(directory)
    wanted = list(names) if names is not None else list(available)
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise DataError(f"unknown prompt set(s) {unknown}; {directory} has {sorted(available)}")
    return {name: read_prompt_set(available[name]) for name in wanted}
