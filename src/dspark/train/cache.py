"""Reading a target cache: `TargetCache`, a torch `Dataset` over a DeepSpec-v2 (or compact) cache.

    cache = TargetCache("cache/", dtype=torch.float32)
    cache.check_target(target, layer_ids=[1, 9, 17, 25, 33])   # DataError on any mismatch
    item = cache[0]   # input_ids [S] long, loss_mask [S] long, attention_mask [S] long,
                      # context_features [S, n·d] float, last_hidden [S, d] float, last_hidden_mask [S] bool
    loader = DataLoader(cache, batch_size=8, collate_fn=collate_padded)   # from dspark.train.data

Opening checks the manifest, that `samples.idx` holds exactly `num_samples` 56-byte records, and that
every shard exists with the size the manifest records; each read checks its record (dense sample id,
shard id, bounds, mask values). Problems raise `DataError` naming the file. Shards are memory-mapped
lazily per process, so the dataset works with `DataLoader(num_workers>0)`.

Data flow: cache_build.build_cache -> cache dir -> TargetCache -> trainer (cached mode).
"""

from __future__ import annotations

import json
import logging
import mmap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dspark.errors import DataError
from dspark.train.cache_codec import decode_sample
from dspark.train.cache_format import (
    INDEX_NAME, INDEX_RECORD_SIZE, MANIFEST_NAME, SAMPLE_IDS_NAME, CacheManifest, IndexRecord, parse_manifest,
)
from dspark.train.jsonl import read_json

log = logging.getLogger(__name__)


def load_manifest(cache_dir: str | Path) -> CacheManifest:
    """Parse and validate `<cache_dir>/manifest.json` (no shard access)."""
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.exists() and (Path(cache_dir) / "_build").exists():
        raise DataError(f"{cache_dir}: the cache build did not finish (no {MANIFEST_NAME}); rerun "
                        "`dspark cache build` with the same arguments to resume it")
    return parse_manifest(read_json(path, "cache manifest"), path)


class TargetCache(torch.utils.data.Dataset):
    """Random access to the samples of a target cache (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, dtype: torch.dtype = torch.float32) -> None:
        self.dir = Path(cache_dir)
        self.manifest = load_manifest(self.dir)
        self.dtype = dtype
        self.hidden_size = self.manifest.hidden_size
        self.target_layer_ids = list(self.manifest.target_layer_ids)
        self.hidden_dtype = self.manifest.hidden_dtype
        self.index_path = self.dir / INDEX_NAME
        if not self.index_path.is_file():
            raise DataError(f"{self.index_path}: index file is missing")
        size = self.index_path.stat().st_size
        expected = self.manifest.num_samples * INDEX_RECORD_SIZE
        if size != expected:
            raise DataError(f"{self.index_path}: {size} bytes, expected {expected} ({self.manifest.num_samples} "
                            f"records of {INDEX_RECORD_SIZE} bytes); the index is truncated or does not belong "
                            "to this manifest")
        self.shard_paths: list[Path] = []
        for shard in self.manifest.shards:
            path = self.dir / shard["file_name"]
            if not path.is_file():
                raise DataError(f"{path}: shard file listed in {MANIFEST_NAME} is missing")
            recorded = shard.get("num_bytes")
            if recorded is not None and path.stat().st_size != int(recorded):
                raise DataError(f"{path}: {path.stat().st_size} bytes but the manifest records {recorded}; "
                                "the shard is truncated or was replaced")
            self.shard_paths.append(path)
        self._index: bytes | None = None
        self._maps: dict[int, mmap.mmap] = {}
        self._sample_ids: list[str] | None = None

    # -- torch Dataset --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.manifest.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(index)
        record = self.record(index)
        where = f"{self.shard_paths[record.shard_id]} (sample {index})"
        return decode_sample(memoryview(self._map(record.shard_id)), record, self.hidden_dtype, self.hidden_size,
                             self.manifest.num_layers, where, self.dtype)

    def record(self, index: int) -> IndexRecord:
        """The index record of sample `index`, checked for density and a known shard."""
        if self._index is None:
            self._index = self.index_path.read_bytes()
        record = IndexRecord.unpack(self._index, index * INDEX_RECORD_SIZE)
        if record.sample_id != index:
            raise DataError(f"{self.index_path}: record {index} has sample_id {record.sample_id}; the index "
                            "is not dense and ordered (corrupt)")
        if record.shard_id >= len(self.shard_paths):
            raise DataError(f"{self.index_path}: record {index} points to shard {record.shard_id}, but the "
                            f"manifest lists {len(self.shard_paths)}")
        return record

    def seq_lens(self) -> np.ndarray:
        """`[N]` sequence lengths from the index (for length-aware batching), no shard reads."""
        if self._index is None:
            self._index = self.index_path.read_bytes()
        if not self._index:
            return np.zeros(0, dtype=np.int64)
        records = np.frombuffer(self._index, dtype=np.dtype("<u8, <u4, <u4, (5,)<u8"))
        return records["f2"].astype(np.int64)

    @property
    def sample_ids(self) -> list[str]:
        """Source ids per sample (`sample_ids.jsonl`); positions as strings for caches without one."""
        if self._sample_ids is None:
            path = self.dir / SAMPLE_IDS_NAME
            if path.exists():
                ids = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
                if len(ids) != len(self):
                    raise DataError(f"{path}: {len(ids)} ids for {len(self)} samples")
                self._sample_ids = [str(i) for i in ids]
            else:
                self._sample_ids = [str(i) for i in range(len(self))]
        return self._sample_ids

    def _map(self, shard_id: int) -> mmap.mmap:
        if shard_id not in self._maps:
            with self.shard_paths[shard_id].open("rb") as handle:
                if self.shard_paths[shard_id].stat().st_size == 0:
                    raise DataError(f"{self.shard_paths[shard_id]}: shard file is empty")
                self._maps[shard_id] = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[shard_id]

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers re-open their own maps
        state = dict(self.__dict__)
        state["_maps"] = {}
        return state

    # -- inspection -----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Summary from the manifest and the index only (cheap): sizes, tokens, provenance."""
        num_tokens = int(self.seq_lens().sum())
        shard_bytes = sum(p.stat().st_size for p in self.shard_paths)
        index_bytes = self.index_path.stat().st_size
        raw, ours = self.manifest.raw, self.manifest.ours
        return {"path": str(self.dir), "format": self.manifest.format, "hidden_dtype": self.hidden_dtype,
                "num_samples": len(self), "num_shards": len(self.shard_paths), "num_tokens": num_tokens,
                "target_layer_ids": self.target_layer_ids, "hidden_size": self.hidden_size,
                "target": raw.get("target_model_name_or_path"), "target_fingerprint": ours.get("target_fingerprint"),
                "max_length": raw.get("max_length"), "shard_bytes": shard_bytes, "index_bytes": index_bytes,
                "bytes_per_token": round(shard_bytes / num_tokens, 1) if num_tokens else None}

    def verify(self) -> dict[str, int]:
        """Check every shard's sha256 (when recorded) and decode every sample; `DataError` on damage."""
        from dspark.train.cache_writer import file_sha256

        hashed = 0
        for shard, path in zip(self.manifest.shards, self.shard_paths):
            if shard.get("sha256"):
                if file_sha256(path) != shard["sha256"]:
                    raise DataError(f"{path}: sha256 differs from the manifest; the shard is corrupt")
                hashed += 1
        loss_tokens = 0
        for i in range(len(self)):
            item = self[i]
            if not (torch.isfinite(item["context_features"]).all() and torch.isfinite(item["last_hidden"]).all()):
                raise DataError(f"{self.shard_paths[self.record(i).shard_id]} (sample {i}): non-finite hidden states")
            loss_tokens += int(item["loss_mask"].sum())
        return {"samples_checked": len(self), "shards_hashed": hashed, "loss_tokens": loss_tokens}

    # -- validation -----------------------------------------------------------------------------------
    def check_target(self, target: Any, layer_ids: list[int] | None = None) -> None:
        """Raise `DataError` unless this cache was built from `target` (a `TargetModel`) at `layer_ids`.

        Compares the hidden size, the layer ids (when given), the target's layer count and the
        fingerprint of its config and weights (caches written by DeepSpec carry no fingerprint: then
        only the shapes can be checked, and a warning says so).
        """
        where = self.manifest.path
        if int(target.hidden_size) != self.hidden_size:
            raise DataError(f"{where}: cache hidden_size {self.hidden_size} != target hidden size {target.hidden_size}")
        if layer_ids is not None and [int(i) for i in layer_ids] != self.target_layer_ids:
            raise DataError(f"{where}: cache target_layer_ids {self.target_layer_ids} != requested {list(layer_ids)}")
        ours = self.manifest.ours
        num_layers = ours.get("num_target_layers")
        if num_layers is not None and int(num_layers) != int(target.num_layers):
            raise DataError(f"{where}: cache was built from a target with {num_layers} layers, this one has "
                            f"{target.num_layers}")
        expected = ours.get("target_fingerprint")
        if expected is None:
            log.warning("%s has no target fingerprint (written by another tool?); only shapes were checked", where)
            return
        actual = target.fingerprint()
        if actual != expected:
            raise DataError(f"{where}: cache was built from another target (fingerprint {expected[:12]}… != "
                            f"{actual[:12]}… of {getattr(target, 'path', 'the target')}): same shapes, different "
                            "config or weights")


def open_cache(cache_dir: str | Path, target: Any = None, layer_ids: list[int] | None = None,
               dtype: torch.dtype = torch.float32) -> TargetCache:
    """Open a cache and, when `target` is given, check that it belongs to it (the trainer's entry point)."""
    cache = TargetCache(cache_dir, dtype=dtype)
    if target is not None:
        cache.check_target(target, layer_ids)
    return cache
