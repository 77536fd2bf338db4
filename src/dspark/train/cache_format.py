"""The on-disk layout of a target cache (DeepSpec version 2, SPEC §3.3) plus our compact variant.

A cache directory holds:
* `manifest.json`: `version` 2, `num_samples`, `num_shards`, `target_layer_ids`, `hidden_size`,
  `hidden_dtype`, `token_dtype` "int32", `mask_dtype` "uint8", `index_record_size` 56, `shards`
  (`[{"shard_id", "file_name", ...}]`), and provenance (`target_model_name_or_path`, data paths,
  `max_length`, `min_loss_tokens`). Our own extras live under the `"dspark"` key (target fingerprint,
  format, layer count, checksums); DeepSpec ignores keys it does not know.
* `samples.idx`: one 56-byte little-endian record per sample, in sample order (record `i` has
  `sample_id == i`): `sample_id u64, shard_id u32, seq_len u32`, then the u64 byte offsets INSIDE the
  shard file of `input_ids`, `attention_mask`, `loss_mask`, `target_hidden_states` and
  `target_last_hidden_states`.
* `shard-NNNNN.bin`: samples back to back, each `input_ids int32[S] | attention_mask u8[S] |
  loss_mask u8[S] | target_hidden_states [S, n·d] | target_last_hidden_states [S, d]`.
* `sample_ids.jsonl` (ours, optional): line `i` is the source id of sample `i`, so the cached and the
  online trainer split train/eval identically.

Formats (`hidden_dtype`):
* `"bfloat16"` (standard, byte-compatible with DeepSpec): `4 + 1 + 1 + 2·n·d + 2·d` bytes/token.
* `"float8_e4m3fn"`, `"float8_e5m2"`: DeepSpec's plain fp8 casts; read, never written.
* `COMPACT_DTYPE` (ours): hidden states as fp8 e4m3 with one float32 scale per token and layer
  (`fp8[S, n·d] | f32[S, n]`), and the final hidden state only at rows `t` with
  `loss_mask[t] or loss_mask[t+1]` (the rows a loss can use: `fp8[K, d] | f32[K]`):
  `6 + n·d + 4·n + f·(d + 4)` bytes/token with `f = K/S`. DeepSpec rejects this dtype by name
  instead of misreading it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspark.errors import DataError

CACHE_VERSION = 2
INDEX_RECORD = struct.Struct("<QIIQQQQQ")  # sample_id, shard_id, seq_len, 5 offsets
INDEX_RECORD_SIZE = INDEX_RECORD.size  # 56
TOKEN_DTYPE = "int32"
MASK_DTYPE = "uint8"
STANDARD_DTYPE = "bfloat16"
COMPACT_DTYPE = "dspark_float8_e4m3fn_rowscale"
READABLE_DTYPES = (STANDARD_DTYPE, "float8_e4m3fn", "float8_e5m2", COMPACT_DTYPE)
FORMATS = {"standard": STANDARD_DTYPE, "compact": COMPACT_DTYPE}
SCALE_BYTES = 4  # float32 per-row scales of the compact format
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "samples.idx"
SAMPLE_IDS_NAME = "sample_ids.jsonl"
REQUIRED_FIELDS = ("version", "num_samples", "num_shards", "target_layer_ids", "hidden_dtype", "token_dtype",
                   "mask_dtype", "index_record_size", "hidden_size", "shards")
FIELDS = ("input_ids", "attention_mask", "loss_mask", "target_hidden_states", "target_last_hidden_states")


def shard_file_name(shard_id: int) -> str:
    return f"shard-{shard_id:05d}.bin"


@dataclass(frozen=True)
class IndexRecord:
    """One 56-byte `samples.idx` record; offsets are byte positions inside the shard file."""

    sample_id: int
    shard_id: int
    seq_len: int
    offsets: tuple[int, int, int, int, int]  # in FIELDS order

    def pack(self) -> bytes:
        return INDEX_RECORD.pack(self.sample_id, self.shard_id, self.seq_len, *self.offsets)

    @classmethod
    def unpack(cls, buffer: bytes | memoryview, offset: int = 0) -> IndexRecord:
        sample_id, shard_id, seq_len, *offsets = INDEX_RECORD.unpack_from(buffer, offset)
        return cls(sample_id, shard_id, seq_len, tuple(offsets))  # type: ignore[arg-type]


# -- sizes ------------------------------------------------------------------------------------------
def hidden_item_bytes(hidden_dtype: str) -> int:
    return 2 if hidden_dtype == STANDARD_DTYPE else 1


def field_nbytes(hidden_dtype: str, seq_len: int, hidden_size: int, num_layers: int,
                 num_last_rows: int | None = None) -> dict[str, int]:
    """Bytes of each field of one sample (compact: scales included, `num_last_rows` kept rows)."""
    item = hidden_item_bytes(hidden_dtype)
    sizes = {
        "input_ids": 4 * seq_len,
        "attention_mask": seq_len,
        "loss_mask": seq_len,
        "target_hidden_states": item * seq_len * num_layers * hidden_size,
        "target_last_hidden_states": item * seq_len * hidden_size,
    }
    if hidden_dtype == COMPACT_DTYPE:
        rows = seq_len if num_last_rows is None else num_last_rows
        sizes["target_hidden_states"] += SCALE_BYTES * seq_len * num_layers
        sizes["target_last_hidden_states"] = rows * (hidden_size + SCALE_BYTES)
    return sizes


def bytes_per_token(hidden_dtype: str, hidden_size: int, num_layers: int, last_fraction: float = 1.0) -> float:
    """Shard bytes per token (index excluded); compact keeps `last_fraction` of final hidden rows."""
    item = hidden_item_bytes(hidden_dtype)
    fixed = 4 + 1 + 1 + item * num_layers * hidden_size
    if hidden_dtype == COMPACT_DTYPE:
        return fixed + SCALE_BYTES * num_layers + last_fraction * (hidden_size + SCALE_BYTES)
    return fixed + item * hidden_size


# -- manifest ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheManifest:
    """The parsed, validated `manifest.json` (the raw dict is kept in `raw`)."""

    path: Path
    num_samples: int
    target_layer_ids: list[int]
    hidden_size: int
    hidden_dtype: str
    shards: list[dict[str, Any]]
    raw: dict[str, Any]

    @property
    def num_layers(self) -> int:
        return len(self.target_layer_ids)

    @property
    def ours(self) -> dict[str, Any]:
        """Our extension block (`{}` for caches written by DeepSpec)."""
        block = self.raw.get("dspark")
        return block if isinstance(block, dict) else {}

    @property
    def format(self) -> str:
        return "compact" if self.hidden_dtype == COMPACT_DTYPE else "standard" if self.hidden_dtype == STANDARD_DTYPE \
            else self.hidden_dtype


def parse_manifest(raw: Any, path: Path) -> CacheManifest:
    """Validate a manifest dict against the version-2 protocol; `DataError` names `path` and the problem."""
    if not isinstance(raw, dict):
        raise DataError(f"{path}: manifest is not a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise DataError(f"{path}: manifest is missing required field(s) {missing}")

    def check(ok: bool, problem: str) -> None:
        if not ok:
            raise DataError(f"{path}: {problem}")

    try:
        version, num_samples, num_shards = int(raw["version"]), int(raw["num_samples"]), int(raw["num_shards"])
        hidden_size, record_size = int(raw["hidden_size"]), int(raw["index_record_size"])
        layer_ids = [int(i) for i in raw["target_layer_ids"]]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: manifest has a non-integer field ({exc})") from exc
    check(version == CACHE_VERSION, f"unsupported cache version {version} (this reader knows version {CACHE_VERSION})")
    check(raw["hidden_dtype"] in READABLE_DTYPES, f"unsupported hidden_dtype {raw['hidden_dtype']!r}; "
          f"known: {list(READABLE_DTYPES)}")
    check(raw["token_dtype"] == TOKEN_DTYPE, f"token_dtype must be {TOKEN_DTYPE!r}, got {raw['token_dtype']!r}")
    check(raw["mask_dtype"] == MASK_DTYPE, f"mask_dtype must be {MASK_DTYPE!r}, got {raw['mask_dtype']!r}")
    check(record_size == INDEX_RECORD_SIZE, f"index_record_size {record_size} != {INDEX_RECORD_SIZE}")
    check(hidden_size > 0, f"hidden_size must be positive, got {hidden_size}")
    check(num_samples >= 0, f"num_samples must be >= 0, got {num_samples}")
    check(bool(layer_ids) and layer_ids == sorted(set(layer_ids)),
          f"target_layer_ids must be non-empty and strictly increasing, got {layer_ids}")
    shards = raw["shards"]
    check(isinstance(shards, list) and len(shards) == num_shards,
          f"num_shards is {num_shards} but 'shards' lists {len(shards) if isinstance(shards, list) else '?'}")
    for k, shard in enumerate(shards):
        check(isinstance(shard, dict) and shard.get("shard_id") == k and isinstance(shard.get("file_name"), str),
              f"shard entry {k} must be {{'shard_id': {k}, 'file_name': ...}}, got {shard!r}")
        name = shard["file_name"]
        check("/" not in name and "\\" not in name and name not in ("", ".", ".."),
              f"shard {k} file name {name!r} must be a plain file name inside the cache directory")
    return CacheManifest(path=path, num_samples=num_samples, target_layer_ids=layer_ids, hidden_size=hidden_size,
                         hidden_dtype=str(raw["hidden_dtype"]), shards=shards, raw=raw)


def build_manifest(*, num_samples: int, shards: list[dict[str, Any]], target_layer_ids: list[int],
                   hidden_size: int, hidden_dtype: str, extra: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """A manifest dict: DeepSpec's required fields, then provenance `extra`, then `{"dspark": ours}`."""
    manifest: dict[str, Any] = {
        "version": CACHE_VERSION,
        "num_samples": int(num_samples),
        "num_shards": len(shards),
        "target_layer_ids": [int(i) for i in target_layer_ids],
        "hidden_dtype": hidden_dtype,
        "token_dtype": TOKEN_DTYPE,
        "mask_dtype": MASK_DTYPE,
        "index_record_size": INDEX_RECORD_SIZE,
        "hidden_size": int(hidden_size),
        "shards": shards,
    }
    manifest.update(extra)
    manifest["dspark"] = ours
    return manifest
