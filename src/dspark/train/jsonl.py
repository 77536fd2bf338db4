"""JSON Lines I/O with the guarantees the data pipeline needs.

* `iter_jsonl(path)` yields `(line_number, object)` and turns a malformed line into a `DataError`
  that names the file and the 1-based line number (blank lines are skipped).
* `AppendLog` is an append-only JSONL writer that flushes and fsyncs every record, so a killed
  process leaves at most one incomplete LAST line; `repair_tail` cuts such a line off before a
  resumed run appends again. This is how `dspark data regenerate` never duplicates or drops a sample.
* `atomic_write_json` writes through a temporary file and `os.replace`, so readers see the old or
  the new file, never half of one.

Data flow: prompts.jsonl -> regenerate (AppendLog) -> conversations.jsonl -> data.load_records.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dspark.errors import DataError

log = logging.getLogger(__name__)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, parsed JSON)` for every non-blank line; 1-based line numbers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{line_number}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
            try:
                yield line_number, json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_number}: malformed JSON ({exc.msg} at column {exc.colno})") from exc


def repair_tail(path: str | Path) -> int:
    """Cut off an incomplete or unparsable last line left by a killed writer; return bytes removed.

    Only the LAST line may be damaged (every earlier record was fsynced before the next was written);
    damage anywhere else is reported as a `DataError` and nothing is changed.
    """
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data:
        return 0
    end = len(data)
    if data.endswith(b"\n"):
        last_start = data.rfind(b"\n", 0, end - 1) + 1
        try:
            json.loads(data[last_start:end])
            return 0
        except (json.JSONDecodeError, UnicodeDecodeError):
            keep = last_start
    else:
        keep = data.rfind(b"\n") + 1
    removed = end - keep
    log.warning("%s: removing an incomplete last record (%d bytes) left by an interrupted run", path, removed)
    with path.open("r+b") as handle:
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return removed


class AppendLog:
    """Append-only JSONL file; every `write` is durable (flush + fsync) before it returns."""

    def __init__(self, path: str | Path, lock: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if lock:  # one writer per file: a second run on the same output fails instead of interleaving
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(self._fd)
                raise DataError(f"{self.path}: another process is writing this file") from exc
        repair_tail(self.path)

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def atomic_write_json(path: str | Path, payload: Any) -> None:
    """Write JSON to `path` via a fsynced temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Load a JSON file, turning a missing or malformed file into a `DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: {what} is not valid JSON ({exc})") from exc
