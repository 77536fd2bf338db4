"""The reference corpus: Python source files found on the local machine, deduplicated and split.

First step of the reference-target flow (corpus → tokenizer → pretrain → drafters). No data can be
downloaded on our machines, but every machine has the source of its Python interpreter and installed
packages; that is the corpus. `build_corpus` walks the given roots (by default the running
interpreter's standard library and site-packages), keeps readable `.py` files that look hand-written,
drops exact duplicates (same content after newline normalisation), and assigns each document to
train / validation / test by a hash of its content, so the split of a file never depends on where it
was found or on what else is in the corpus.

Layout written to the output directory::

    train.jsonl.gz  validation.jsonl.gz  test.jsonl.gz    one {"text", "path", "sha256"} per line
    provenance.json                                      roots, interpreter, filters, counts,
                                                         distributions found (name, version, license)

Run: `dspark data corpus --out runs/corpus` (or `--roots DIR ...`).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import platform
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dspark.errors import DataError

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "validation", "test")
PROVENANCE_FILE = "provenance.json"
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", "node_modules", ".tox", ".venv"}


@dataclass(frozen=True)
class CorpusConfig:
    """What goes into the corpus and how it is split. Fractions are of documents, by content hash."""

    roots: tuple[str, ...] = ()
    extensions: tuple[str, ...] = (".py",)
    min_bytes: int = 128
    max_bytes: int = 256_000
    max_line_chars: int = 400  # longer lines mean generated or minified code
    max_documents: int = 0  # 0 = no limit; otherwise keep the first N documents in walk order
    validation_fraction: float = 0.01
    test_fraction: float = 0.02

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise DataError("split fractions must lie in [0, 1)")
        if self.validation_fraction + self.test_fraction >= 1:
            raise DataError("validation + test fractions must leave room for train")
        if self.min_bytes < 0 or self.max_bytes <= self.min_bytes:
            raise DataError(f"need 0 <= min_bytes < max_bytes, got {self.min_bytes}, {self.max_bytes}")


@dataclass(frozen=True)
class Document:
    """One deduplicated source file. `path` is relative to the root it was found under."""

    text: str
    path: str
    sha256: str


@dataclass
class CorpusStats:
    """Counts recorded in provenance.json (and returned to the CLI)."""

    files_seen: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    documents: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)


def default_roots() -> list[Path]:
    """The running interpreter's standard library and site-packages (existing, distinct)."""
    paths = sysconfig.get_paths()
    candidates = [paths.get("stdlib"), paths.get("purelib"), paths.get("platlib")]
    roots: list[Path] = []
    for candidate in candidates:
        if candidate and Path(candidate).is_dir() and Path(candidate).resolve() not in roots:
            roots.append(Path(candidate).resolve())
    return roots


def normalize_text(raw: bytes) -> str | None:
    """Decode UTF-8 and normalise newlines; None when the bytes are not text."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def content_hash(text: str) -> str:
    """SHA-256 of the normalised text: the dedup key and the split key."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_of(sha256: str, validation_fraction: float, test_fraction: float) -> str:
    """Deterministic split from the first 64 bits of the content hash."""
    unit = int(sha256[:16], 16) / float(1 << 64)
    if unit < validation_fraction:
        return "validation"
    if unit < validation_fraction + test_fraction:
        return "test"
    return "train"


def _walk(root: Path, extensions: Sequence[str], exclude: set[Path]) -> Iterator[Path]:
    """Files under root with one of the extensions, in sorted (deterministic) order.

    Directories in `exclude` (the other roots: site-packages lives inside the stdlib directory)
    are left for their own walk.
    """
    if root.is_file():
        if root.suffix in extensions:
            yield root
        return
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in _SKIP_DIRS and not d.endswith(".dist-info") and Path(dirpath, d) not in exclude
        )
        for name in sorted(filenames):
            if any(name.endswith(ext) for ext in extensions):
                yield Path(dirpath) / name


def _reject_reason(text: str, size: int, config: CorpusConfig) -> str | None:
    if size < config.min_bytes:
        return "too_small"
    if size > config.max_bytes:
        return "too_large"
    if max((len(line) for line in text.split("\n")), default=0) > config.max_line_chars:
        return "long_lines"
    return None


def iter_documents(roots: Sequence[Path], config: CorpusConfig, stats: CorpusStats) -> Iterator[Document]:
    """Unique, filtered documents from the roots, first occurrence wins (roots in order, paths sorted)."""
    seen: set[str] = set()
    kept = 0
    for root in roots:
        others = {r for r in roots if r != root}
        for file_path in _walk(root, config.extensions, others):
            stats.files_seen += 1
            try:
                raw = file_path.read_bytes()
            except OSError:
                stats.skipped["unreadable"] = stats.skipped.get("unreadable", 0) + 1
                continue
            text = normalize_text(raw)
            reason = "not_utf8" if text is None else _reject_reason(text, len(raw), config)
            if reason is not None:
                stats.skipped[reason] = stats.skipped.get(reason, 0) + 1
                continue
            assert text is not None
            digest = content_hash(text)
            if digest in seen:
                stats.duplicates += 1
                continue
            seen.add(digest)
            relative = file_path.relative_to(root) if root.is_dir() else Path(file_path.name)
            yield Document(text=text, path=f"{root.name}/{relative.as_posix()}", sha256=digest)
            kept += 1
            if config.max_documents and kept >= config.max_documents:
                return


def _distributions(roots: Sequence[Path]) -> list[dict[str, str]]:
    """Installed distributions under the roots, for licence and version provenance."""
    found: dict[str, dict[str, str]] = {}
    for dist in importlib.metadata.distributions(path=[str(r) for r in roots if r.is_dir()]):
        name = dist.metadata.get("Name") or ""
        if name and name.lower() not in found:
            found[name.lower()] = {
                "name": name,
                "version": dist.version or "",
                "license": (dist.metadata.get("License-Expression") or dist.metadata.get("License") or "")[:80],
            }
    return [found[key] for key in sorted(found)]


def open_gzip_text(path: Path) -> io.TextIOWrapper:
    """A gzip text writer with a fixed header (mtime 0, no name), so equal input gives equal bytes."""
    raw = open(path, "wb")  # noqa: SIM115 - closed through the wrappers
    zipped = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0)
    zipped.myfileobj = raw  # GzipFile closes the underlying file it owns
    return io.TextIOWrapper(zipped, encoding="utf-8")


def build_corpus(out_dir: Path, config: CorpusConfig) -> CorpusStats:
    """Walk, filter, dedup and split; write the three JSONL.gz splits and provenance.json to out_dir."""
    roots = [Path(r).resolve() for r in config.roots] if config.roots else default_roots()
    missing = [str(r) for r in roots if not r.exists()]
    if missing:
        raise DataError(f"corpus root(s) not found: {', '.join(missing)}")
    if not roots:
        raise DataError("no corpus roots given and no standard library found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats(documents={s: 0 for s in SPLITS}, bytes={s: 0 for s in SPLITS})
    temps = {s: out_dir / f"{s}.jsonl.gz.tmp" for s in SPLITS}
    handles = {s: open_gzip_text(path) for s, path in temps.items()}
    try:
        for doc in iter_documents(roots, config, stats):
            split = split_of(doc.sha256, config.validation_fraction, config.test_fraction)
            handles[split].write(json.dumps(asdict(doc), ensure_ascii=False) + "\n")
            stats.documents[split] += 1
            stats.bytes[split] += len(doc.text.encode("utf-8"))
        if sum(stats.documents.values()) == 0:
            raise DataError(f"no usable {'/'.join(config.extensions)} files under {', '.join(map(str, roots))}")
    except BaseException:
        for handle in handles.values():
            handle.close()
        for path in temps.values():
            path.unlink(missing_ok=True)
        raise
    for handle in handles.values():
        handle.close()
    for split in SPLITS:
        os.replace(temps[split], out_dir / f"{split}.jsonl.gz")
    provenance = {
        "kind": "dspark-reference-corpus",
        "roots": [str(r) for r in roots],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "config": asdict(config),
        "split_rule": "sha256(normalized text)[:16] as a fraction of 2**64: < validation_fraction → "
        "validation, < validation+test → test, else train",
        "stats": asdict(stats),
        "distributions": _distributions(roots),
    }
    (out_dir / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    logger.info("corpus %s: %s documents, %s bytes", out_dir, stats.documents, stats.bytes)
    return stats


def read_documents(corpus_dir: Path, split: str) -> Iterator[Document]:
    """Stream one split of a corpus directory written by `build_corpus`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(corpus_dir) / f"{split}.jsonl.gz"
    if not path.is_file():
        raise DataError(f"{path} not found: is {corpus_dir} a corpus built by `dspark data corpus`?")
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            try:
                record = json.loads(line)
                yield Document(text=record["text"], path=record["path"], sha256=record["sha256"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: malformed corpus record ({exc})") from exc


def read_provenance(corpus_dir: Path) -> dict:
    """The provenance.json of a corpus directory."""
    path = Path(corpus_dir) / PROVENANCE_FILE
    if not path.is_file():
        raise DataError(f"{path} not found: is {corpus_dir} a corpus built by `dspark data corpus`?")
    return json.loads(path.read_text())
