"""`CacheWriter`: writes a target cache shard by shard, atomically and resumably.

Everything in progress lives in `<cache>/_build/`: the open shard (`shard-NNNNN.bin.partial`), the
index and the sample-id list being appended (`samples.idx.partial`, `sample_ids.jsonl.partial`) and
`progress.json`, the single commit point. `commit(consumed)` fsyncs the data, renames every shard
that filled up since the last commit to its final name `shard-NNNNN.bin`, and then atomically
rewrites `progress.json` (committed byte lengths, closed shards with size and sha256, and how many
input records were consumed). A killed build resumes from the last commit: files are cut back to the
committed lengths and shards renamed after it are taken back. `finish()` moves the index into place
and writes `manifest.json` last, so a cache is complete exactly when its manifest exists.

A directory that already holds a complete cache or unrelated files is never written to
(`check_cache_dir`, also run by the CLI before it loads the target); a partial build started with
different settings (target fingerprint, layers, format, data) is refused. `discard()` removes
everything the build wrote, for a build that failed on its input: the rerun with a fixed file then
starts clean instead of being refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from dspark.errors import DataError
from dspark.train.cache_format import (
    INDEX_NAME, INDEX_RECORD_SIZE, MANIFEST_NAME, SAMPLE_IDS_NAME, IndexRecord, build_manifest, shard_file_name,
)
from dspark.train.jsonl import atomic_write_json, read_json

log = logging.getLogger(__name__)

BUILD_DIR = "_build"
PROGRESS = "progress.json"


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as handle:
        os.fsync(handle.fileno())


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 16 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _truncate(path: Path, length: int) -> None:
    with path.open("ab") as handle:
        if handle.tell() < length:
            raise DataError(f"{path}: shorter ({handle.tell()} bytes) than its committed length {length}; "
                            "the partial build is damaged, remove the directory and rebuild")
        handle.truncate(length)


def check_cache_dir(cache_dir: str | Path) -> None:
    """Raise `DataError` unless `cache_dir` is new, empty or a partial build (nothing is written)."""
    directory = Path(cache_dir)
    if directory.exists() and not directory.is_dir():
        raise DataError(f"{directory} is a file, not a directory; choose a new directory for the cache")
    if (directory / MANIFEST_NAME).exists():
        raise DataError(f"{directory} already holds a complete cache ({MANIFEST_NAME} exists); "
                        "choose a new directory (nothing was changed)")
    if directory.exists() and not (directory / BUILD_DIR / PROGRESS).exists():
        others = sorted(p.name for p in directory.iterdir() if p.name != BUILD_DIR)
        if others:
            raise DataError(f"{directory} is not empty (it holds {others[0]!r}) and holds no partial cache build; "
                            "choose a new directory")


class CacheWriter:
    """Append samples to a cache directory; see the module docstring for the protocol."""

    def __init__(self, cache_dir: str | Path, *, hidden_dtype: str, hidden_size: int, target_layer_ids: list[int],
                 build_key: dict[str, Any], max_shard_bytes: int = 1 << 30) -> None:
        self.dir = Path(cache_dir)
        self.build = self.dir / BUILD_DIR
        self.hidden_dtype, self.hidden_size = hidden_dtype, int(hidden_size)
        self.target_layer_ids = [int(i) for i in target_layer_ids]
        self.build_key = build_key
        self.max_shard_bytes = int(max_shard_bytes)
        check_cache_dir(self.dir)
        if self.dir.exists() and not (self.build / PROGRESS).exists():
            shutil.rmtree(self.build, ignore_errors=True)  # killed before its first commit: start over
        self.build.mkdir(parents=True, exist_ok=True)
        self._lock = (self.build / "lock").open("w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise DataError(f"{self.dir}: another cache build is writing here") from exc
        progress_path = self.build / PROGRESS
        if progress_path.exists():
            self.state = read_json(progress_path, "cache build progress")
            self._check_key(self.state.get("build_key"))
            self._roll_back()
            log.info("resuming cache build in %s: %d samples, %d input records done", self.dir,
                     self.state["num_samples"], self.state["consumed"])
        else:
            self.state = {"build_key": build_key, "consumed": 0, "num_samples": 0, "ids_bytes": 0, "shards": [],
                          "open_shard": {"shard_id": 0, "num_bytes": 0, "num_samples": 0}, "finalizing": False}
            for name in (INDEX_NAME, SAMPLE_IDS_NAME):
                (self.build / f"{name}.partial").write_bytes(b"")
            self._partial(0).write_bytes(b"")
            atomic_write_json(progress_path, self.state)
        self._pending_close: list[dict[str, Any]] = []
        self._open = dict(self.state["open_shard"])
        self._num_samples = self.state["num_samples"]
        if not self.finalizing:
            self._shard = self._partial(self._open["shard_id"]).open("ab")
            self._index = (self.build / f"{INDEX_NAME}.partial").open("ab")
            self._ids = (self.build / f"{SAMPLE_IDS_NAME}.partial").open("ab")

    # -- state ----------------------------------------------------------------------------------------
    @property
    def consumed(self) -> int:
        """Input records fully handled at the last commit (the build resumes after them)."""
        return int(self.state["consumed"])

    @property
    def num_samples(self) -> int:
        return self._num_samples

    @property
    def finalizing(self) -> bool:
        return bool(self.state.get("finalizing"))

    def _partial(self, shard_id: int) -> Path:
        return self.build / f"{shard_file_name(shard_id)}.partial"

    def _check_key(self, key: Any) -> None:
        if key != self.build_key:
            diff = sorted(k for k in set(key or {}) | set(self.build_key)
                          if (key or {}).get(k) != self.build_key.get(k))
            raise DataError(f"{self.dir} holds a partial cache build started with other settings (differs in "
                            f"{diff}); use a new directory or the original settings")

    def _roll_back(self) -> None:
        """Cut every file back to the committed state of `progress.json`."""
        if self.finalizing:
            return
        open_id = int(self.state["open_shard"]["shard_id"])
        for path in list(self.dir.glob("shard-*.bin")) + list(self.build.glob("shard-*.bin.partial")):
            shard_id = int(path.name.split("-")[1].split(".")[0])
            if shard_id == open_id and path.parent == self.dir:
                os.replace(path, self._partial(open_id))  # renamed after the last commit: take it back
            elif shard_id > open_id:
                path.unlink()
        if not self._partial(open_id).exists():
            self._partial(open_id).write_bytes(b"")
        _truncate(self._partial(open_id), int(self.state["open_shard"]["num_bytes"]))
        _truncate(self.build / f"{INDEX_NAME}.partial", int(self.state["num_samples"]) * INDEX_RECORD_SIZE)
        _truncate(self.build / f"{SAMPLE_IDS_NAME}.partial", int(self.state["ids_bytes"]))

    # -- writing --------------------------------------------------------------------------------------
    def add(self, sample_id: str, fields: list[bytes], seq_len: int) -> None:
        """Append one sample (its five field byte strings, `cache_codec.encode_sample`)."""
        total = sum(len(f) for f in fields)
        if self._open["num_bytes"] > 0 and self._open["num_bytes"] + total > self.max_shard_bytes:
            self._roll_shard()
        offsets, position = [], self._open["num_bytes"]
        for chunk in fields:
            offsets.append(position)
            self._shard.write(chunk)
            position += len(chunk)
        record = IndexRecord(self._num_samples, self._open["shard_id"], int(seq_len), tuple(offsets))  # type: ignore[arg-type]
        self._index.write(record.pack())
        self._ids.write((_json_str(sample_id) + "\n").encode("utf-8"))
        self._open["num_bytes"] = position
        self._open["num_samples"] += 1
        self._num_samples += 1

    def _roll_shard(self) -> None:
        self._shard.close()
        self._pending_close.append(dict(self._open))
        next_id = self._open["shard_id"] + 1
        self._open = {"shard_id": next_id, "num_bytes": 0, "num_samples": 0}
        self._shard = self._partial(next_id).open("wb")

    def commit(self, consumed: int) -> None:
        """Make everything added so far durable and record that `consumed` input records are done."""
        for handle in (self._shard, self._index, self._ids):
            handle.flush()
            os.fsync(handle.fileno())
        for shard in self._pending_close:
            self._close_shard(shard)
        self._pending_close = []
        self.state.update(consumed=int(consumed), num_samples=self._num_samples, ids_bytes=self._ids.tell(),
                          open_shard=dict(self._open))
        atomic_write_json(self.build / PROGRESS, self.state)

    def _close_shard(self, shard: dict[str, Any]) -> None:
        partial = self._partial(shard["shard_id"])
        _fsync_file(partial)
        final = self.dir / shard_file_name(shard["shard_id"])
        os.replace(partial, final)
        self.state["shards"].append({"shard_id": shard["shard_id"], "file_name": final.name,
                                     "num_bytes": shard["num_bytes"], "num_samples": shard["num_samples"],
                                     "sha256": file_sha256(final)})

    def finish(self, consumed: int, extra: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
        """Close the last shard, move the index into place and write the manifest; return it."""
        if not self.finalizing:
            self.commit(consumed)
            self._close_handles()
            if self._num_samples == 0:
                self.abort()
                raise DataError(f"no sample was written to {self.dir}: every input record was dropped")
            if self._open["num_samples"] > 0:
                self._close_shard(self._open)
            else:
                self._partial(self._open["shard_id"]).unlink(missing_ok=True)
            self.state["finalizing"] = True
            atomic_write_json(self.build / PROGRESS, self.state)
        for name in (INDEX_NAME, SAMPLE_IDS_NAME):
            if (self.build / f"{name}.partial").exists():
                os.replace(self.build / f"{name}.partial", self.dir / name)
        shards = self.state["shards"]
        manifest = build_manifest(num_samples=self.state["num_samples"], shards=shards,
                                  target_layer_ids=self.target_layer_ids, hidden_size=self.hidden_size,
                                  hidden_dtype=self.hidden_dtype, extra=extra, ours=ours)
        atomic_write_json(self.dir / MANIFEST_NAME, manifest)
        self._release()
        shutil.rmtree(self.build, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        """Remove the partial build (used when nothing usable was produced)."""
        self._close_handles()
        self._release()
        shutil.rmtree(self.build, ignore_errors=True)

    def discard(self) -> None:
        """Remove the partial build and every shard it closed (used when its input turned out to be bad)."""
        self.abort()
        for shard in self.state["shards"]:
            (self.dir / shard["file_name"]).unlink(missing_ok=True)
        for path in self.dir.glob("shard-*.bin"):  # renamed after the last commit
            path.unlink(missing_ok=True)
        if self.dir.is_dir() and not any(self.dir.iterdir()):
            self.dir.rmdir()

    def _release(self) -> None:
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def _close_handles(self) -> None:
        if not self.finalizing:
            for handle in (self._shard, self._index, self._ids):
                handle.close()

    def close(self) -> None:
        """Stop without finishing (what is committed stays resumable)."""
        self._close_handles()
        self._release()


def _json_str(value: str) -> str:
    return json.dumps(str(value), ensure_ascii=False)
