"""Target cache: DeepSpec-v2 byte layout, round trips (standard and compact), resume, validation, estimate."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_train import chat_rows, make_target, single_thread, write_jsonl

from dspark.cli import main
from dspark.errors import DataError
from dspark.targets import load_target
from dspark.train.cache import TargetCache, open_cache
from dspark.train.cache_build import build_cache
from dspark.train.cache_codec import encode_sample, last_hidden_rows
from dspark.train.cache_format import COMPACT_DTYPE, STANDARD_DTYPE
from dspark.train.cache_writer import CacheWriter
from dspark.train.data import collate_padded

LAYERS = [0, 1, 2]


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)

@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return load_target(str(make_target(tmp_path_factory.mktemp("target") / "t")))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("data") / "conv.jsonl", chat_rows(9))


def _dir_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


def _random_samples(n: int, d: int = 8, layers: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        s = 5 + 3 * i
        mask = torch.zeros(s, dtype=torch.long)
        mask[2:] = 1
        out.append((f"src{i}", torch.randint(0, 300, (s,), generator=g), mask,
                    torch.randn(s, layers * d, generator=g) * (1 + i), torch.randn(s, d, generator=g)))
    return out


def _write(cache_dir, samples, hidden_dtype, max_shard_bytes=1 << 20, d=8, layers=(0, 1)):
    writer = CacheWriter(cache_dir, hidden_dtype=hidden_dtype, hidden_size=d, target_layer_ids=list(layers),
                         build_key={"k": 1}, max_shard_bytes=max_shard_bytes)
    for sid, ids, mask, feats, last in samples:
        writer.add(sid, encode_sample(hidden_dtype, ids, mask, feats, last, len(layers)), len(ids))
    return writer.finish(len(samples), {"target_model_name_or_path": "x"}, {})


def test_deepspec_layout_read_independently(tmp_path):
    """Raw bytes read with struct/numpy only: 56-byte records, offsets, dtypes, contiguous fields."""
    samples = _random_samples(5)
    manifest = _write(tmp_path / "c", samples, STANDARD_DTYPE, max_shard_bytes=1500)
    raw = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert raw["version"] == 2 and raw["index_record_size"] == 56 and raw["hidden_dtype"] == "bfloat16"
    assert raw["token_dtype"] == "int32" and raw["mask_dtype"] == "uint8" and raw["hidden_size"] == 8
    assert raw["target_layer_ids"] == [0, 1] and raw["num_samples"] == 5 and raw["num_shards"] > 1
    assert [s["file_name"] for s in raw["shards"]] == [f"shard-{k:05d}.bin" for k in range(raw["num_shards"])]
    index = (tmp_path / "c" / "samples.idx").read_bytes()
    assert len(index) == 56 * 5 and struct.calcsize("<QIIQQQQQ") == 56
    n, d = 2, 8
    ends: dict[int, int] = {}
    for i, (sid, ids, mask, feats, last) in enumerate(samples):
        sample_id, shard_id, seq_len, *offs = struct.unpack_from("<QIIQQQQQ", index, 56 * i)
        assert sample_id == i and seq_len == len(ids)
        sizes = [4 * seq_len, seq_len, seq_len, 2 * seq_len * n * d, 2 * seq_len * d]
        assert offs[0] == ends.get(shard_id, 0)  # samples back to back from the shard start
        assert all(offs[k + 1] == offs[k] + sizes[k] for k in range(4))
        ends[shard_id] = offs[4] + sizes[4]
        blob = (tmp_path / "c" / raw["shards"][shard_id]["file_name"]).read_bytes()
        assert np.array_equal(np.frombuffer(blob, "<i4", seq_len, offs[0]), ids.numpy())
        assert np.frombuffer(blob, "u1", seq_len, offs[1]).tolist() == [1] * seq_len
        assert np.array_equal(np.frombuffer(blob, "u1", seq_len, offs[2]), mask.numpy())
        as_f32 = lambda u16: torch.from_numpy((u16.astype(np.uint32) << 16).view(np.float32))  # noqa: E731
        got = as_f32(np.frombuffer(blob, "<u2", seq_len * n * d, offs[3])).reshape(seq_len, n * d)
        assert torch.equal(got, _bf16(feats))
        assert torch.equal(as_f32(np.frombuffer(blob, "<u2", seq_len * d, offs[4])).reshape(seq_len, d), _bf16(last))
    assert all((tmp_path / "c" / raw["shards"][k]["file_name"]).stat().st_size == e for k, e in ends.items())
    assert manifest["num_samples"] == 5



@pytest.mark.parametrize("hidden_dtype", ["bfloat16", "float8_e4m3fn"])
def test_reads_a_cache_written_by_another_tool(tmp_path, hidden_dtype):
    """A DeepSpec-style cache assembled here with struct/numpy only (no extras, no sample ids, no sizes)."""
    d, layers, samples = 8, [1, 3], _random_samples(3, d=8, layers=2)
    torch_dtype = torch.bfloat16 if hidden_dtype == "bfloat16" else torch.float8_e4m3fn
    blob, index = bytearray(), bytearray()
    for i, (_, ids, mask, feats, last) in enumerate(samples):
        s, offsets = len(ids), []
        raw_view = torch.uint16 if hidden_dtype == "bfloat16" else torch.uint8
        for chunk in (ids.numpy().astype("<i4").tobytes(), bytes([1]) * s, mask.numpy().astype("u1").tobytes(),
                      feats.to(torch_dtype).view(raw_view).numpy().tobytes(),
                      last.to(torch_dtype).view(raw_view).numpy().tobytes()):
            offsets.append(len(blob))
            blob += chunk
        index += struct.pack("<QIIQQQQQ", i, 0, s, *offsets)
    (tmp_path / "shard-00000.bin").write_bytes(bytes(blob))
    (tmp_path / "samples.idx").write_bytes(bytes(index))
    (tmp_path / "manifest.json").write_text(json.dumps({
        "version": 2, "num_samples": 3, "num_shards": 1, "target_layer_ids": layers, "hidden_dtype": hidden_dtype,
        "token_dtype": "int32", "mask_dtype": "uint8", "index_record_size": 56, "hidden_size": d,
        "shards": [{"shard_id": 0, "file_name": "shard-00000.bin"}], "target_model_name_or_path": "somewhere"}))
    cache = TargetCache(tmp_path)
    assert cache.sample_ids == ["0", "1", "2"] and cache.describe()["target"] == "somewhere"
    for i, (_, ids, mask, feats, last) in enumerate(samples):
        item = cache[i]
        assert torch.equal(item["input_ids"], ids) and torch.equal(item["loss_mask"], mask)
        assert torch.equal(item["context_features"], feats.to(torch_dtype).float())
        assert torch.equal(item["last_hidden"], last.to(torch_dtype).float())


def test_round_trip_standard_and_compact(tmp_path):
    samples = _random_samples(4)
    for dtype in (STANDARD_DTYPE, COMPACT_DTYPE):
        _write(tmp_path / dtype, samples, dtype)
        cache = TargetCache(tmp_path / dtype)
        assert len(cache) == 4 and cache.sample_ids == ["src0", "src1", "src2", "src3"]
        assert cache.seq_lens().tolist() == [5, 8, 11, 14]
        for i, (_, ids, mask, feats, last) in enumerate(samples):
            item = cache[i]
            assert item["input_ids"].dtype == torch.long and torch.equal(item["input_ids"], ids)
            assert torch.equal(item["loss_mask"], mask) and item["attention_mask"].tolist() == [1] * len(ids)
            assert item["context_features"].dtype == torch.float32 and item["last_hidden"].shape == last.shape
            if dtype == STANDARD_DTYPE:
                assert torch.equal(item["context_features"], _bf16(feats)) and torch.equal(item["last_hidden"], _bf16(last))
                assert item["last_hidden_mask"].all()
            else:  # fp8 e4m3 with per-(token, layer) scales: error below 1/16 of each row's max
                rows = feats.reshape(len(ids), 2, 8)
                err = (item["context_features"].reshape(len(ids), 2, 8) - rows).abs()
                assert (err <= rows.abs().amax(-1, keepdim=True) / 16 + 1e-6).all()
                keep = torch.from_numpy(last_hidden_rows(mask.numpy()))
                assert keep.tolist() == [False, True] + [True] * (len(ids) - 2)  # row 1 predicts the first loss token
                assert torch.equal(item["last_hidden_mask"], keep) and (item["last_hidden"][~keep] == 0).all()
                assert ((item["last_hidden"][keep] - last[keep]).abs()
                        <= last[keep].abs().amax(-1, keepdim=True) / 16 + 1e-6).all()
    assert TargetCache(tmp_path / STANDARD_DTYPE, dtype=torch.bfloat16)[0]["context_features"].dtype == torch.bfloat16


def test_build_from_target_matches_features_and_validates(tmp_path, target, data):
    build_cache(target, data, tmp_path / "c", layer_ids=LAYERS, batch_size=4)
    cache = open_cache(tmp_path / "c", target, LAYERS)
    assert len(cache) == 9 and cache.sample_ids[0] == "s0"
    for i in (0, 5):
        item = cache[i]
        ref = target.features(item["input_ids"][None], LAYERS)
        assert torch.allclose(item["context_features"], ref.context_features[0], atol=1e-2, rtol=1e-2)
        assert torch.allclose(item["last_hidden"], ref.last_hidden[0], atol=3e-2, rtol=1e-2)
        assert item["loss_mask"].sum() > 0
    batch = next(iter(torch.utils.data.DataLoader(cache, batch_size=3, collate_fn=collate_padded)))
    assert batch["context_features"].shape[0] == 3 and batch["context_features"].shape[2] == 3 * 64
    with pytest.raises(DataError, match="target_layer_ids"):
        cache.check_target(target, [0, 1])
    other = load_target(str(make_target(tmp_path / "other", seed=1)))  # same shapes, other weights
    with pytest.raises(DataError, match="fingerprint"):
        open_cache(tmp_path / "c", other, LAYERS)
    assert json.loads(json.dumps(cache.describe()))["num_samples"] == 9
    assert cache.verify()["samples_checked"] == 9


def test_compact_build_is_smaller(tmp_path, target, data):
    build_cache(target, data, tmp_path / "std", layer_ids=LAYERS)
    build_cache(target, data, tmp_path / "cmp", layer_ids=LAYERS, cache_format="compact")
    std, cmp_ = TargetCache(tmp_path / "std").describe(), TargetCache(tmp_path / "cmp").describe()
    assert cmp_["num_tokens"] == std["num_tokens"] and cmp_["shard_bytes"] < 0.5 * std["shard_bytes"]
    a, b = TargetCache(tmp_path / "std")[2], TargetCache(tmp_path / "cmp")[2]
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["loss_mask"], b["loss_mask"])
    rel = (a["context_features"] - b["context_features"]).norm() / a["context_features"].norm()
    assert rel < 0.05


class _Crash(Exception):
    pass


def test_killed_build_resumes_to_identical_bytes(tmp_path, target, data):
    kwargs = dict(layer_ids=LAYERS, batch_size=2, max_shard_bytes=60_000)
    build_cache(target, data, tmp_path / "ref", **kwargs)

    def crash_after_two(num_samples, consumed):
        if num_samples >= 4:
            raise _Crash

    with pytest.raises(_Crash):
        build_cache(target, data, tmp_path / "c", on_batch=crash_after_two, **kwargs)
    assert not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(DataError, match="did not finish"):
        TargetCache(tmp_path / "c")
    # what a SIGKILL can leave behind after the last commit: uncommitted bytes, a shard renamed early
    build = tmp_path / "c" / "_build"
    progress = json.loads((build / "progress.json").read_text())
    open_id = progress["open_shard"]["shard_id"]
    for name in ("samples.idx.partial", "sample_ids.jsonl.partial", f"shard-{open_id:05d}.bin.partial"):
        with (build / name).open("ab") as handle:
            handle.write(b"\x07" * 99)
    (build / f"shard-{open_id:05d}.bin.partial").rename(tmp_path / "c" / f"shard-{open_id:05d}.bin")
    with pytest.raises(DataError, match="other settings"):
        build_cache(target, data, tmp_path / "c", **{**kwargs, "layer_ids": [0, 1]})
    build_cache(target, data, tmp_path / "c", **kwargs)
    assert _dir_digest(tmp_path / "c") == _dir_digest(tmp_path / "ref")


def test_never_overwrites(tmp_path, target, data):
    build_cache(target, data, tmp_path / "c", layer_ids=LAYERS, limit=3)
    before = _dir_digest(tmp_path / "c")
    with pytest.raises(DataError, match="already holds a complete cache"):
        build_cache(target, data, tmp_path / "c", layer_ids=LAYERS)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        build_cache(target, data, tmp_path / "other", layer_ids=LAYERS)
    assert _dir_digest(tmp_path / "c") == before and len(TargetCache(tmp_path / "c")) == 3
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    bad = write_jsonl(tmp_path / "few.jsonl", [{"input_ids": [1, 2, 3], "loss_mask": [0, 0, 1]}])
    with pytest.raises(DataError, match="no sample was written"):
        build_cache(target, bad, tmp_path / "empty", layer_ids=LAYERS)
    assert not (tmp_path / "empty" / "_build").exists()


@pytest.fixture
def small_cache(tmp_path):
    _write(tmp_path / "c", _random_samples(3), STANDARD_DTYPE, max_shard_bytes=1 << 20)
    return tmp_path / "c"


def test_truncated_index(small_cache):
    index = small_cache / "samples.idx"
    index.write_bytes(index.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"samples\.idx: 158 bytes, expected 168"):
        TargetCache(small_cache)


def test_corrupt_shard(small_cache):
    shard = small_cache / "shard-00000.bin"
    data = bytearray(shard.read_bytes())
    shard.write_bytes(bytes(data[:-5]))
    with pytest.raises(DataError, match=r"shard-00000\.bin: .* truncated"):
        TargetCache(small_cache)
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"shard-00000\.bin: sha256 differs"):
        TargetCache(small_cache).verify()
    assert main(["cache", "info", str(small_cache), "--verify"]) == 2


def test_corrupt_index_record(small_cache):
    index = bytearray((small_cache / "samples.idx").read_bytes())
    struct.pack_into("<Q", index, 56 + 16 + 32, 10**9)  # last-hidden offset of sample 1 far past the end
    (small_cache / "samples.idx").write_bytes(bytes(index))
    cache = TargetCache(small_cache)
    cache[0]
    with pytest.raises(DataError, match=r"shard-00000\.bin \(sample 1\): field runs past the end"):
        cache[1]
    struct.pack_into("<Q", index, 112, 7)  # sample_id of record 2
    (small_cache / "samples.idx").write_bytes(bytes(index))
    with pytest.raises(DataError, match="record 2 has sample_id 7"):
        TargetCache(small_cache)[2]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("hidden_size"), r"missing required field\(s\) \['hidden_size'\]"),
    (lambda m: m.update(version=3), "unsupported cache version 3"),
    (lambda m: m.update(index_record_size=48), "index_record_size 48"),
    (lambda m: m.update(hidden_dtype="float16"), "unsupported hidden_dtype"),
    (lambda m: m.update(num_shards=2), "num_shards is 2"),
    (lambda m: m["shards"][0].update(file_name="../x.bin"), "plain file name"),
])
def test_bad_manifest(small_cache, edit, message):
    path = small_cache / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message) as err:
        TargetCache(small_cache)
    assert "manifest.json" in str(err.value)


def test_missing_shard_and_manifest(small_cache):
    (small_cache / "shard-00000.bin").unlink()
    with pytest.raises(DataError, match="shard-00000.bin: shard file listed in manifest.json is missing"):
        TargetCache(small_cache)
    (small_cache / "manifest.json").unlink()
    with pytest.raises(DataError, match="cache manifest is missing"):
        TargetCache(small_cache)


def test_estimate_qwen3_4b(tmp_path, capsys):
    config = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2560,
              "num_hidden_layers": 36, "vocab_size": 151936, "intermediate_size": 9728,
              "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["cache", "estimate", "--target", str(tmp_path / "config.json"), "--target-layer-ids",
                 "1", "9", "17", "25", "33", "--num-tokens", "1000000"]) == 0
    out = capsys.readouterr().out
    assert "30,726 bytes/token" in out and "15,390" in out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["standard"]["bytes_per_token"] == 30726 and result["standard"]["total_bytes"] == 30_726_000_000
    assert main(["cache", "estimate", "--target", str(tmp_path), "--num-tokens", "10",
                 "--last-hidden-fraction", "0.5"]) == 0  # a directory and the default 5 layer ids
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["target_layer_ids"] == [1, 9, 17, 25, 33] and result["compact"]["bytes_per_token"] == 14108.0
    assert result["compact"]["ratio_to_standard"] < 0.5


def test_estimate_from_data_matches_build(tmp_path, target, data, capsys):
    build_cache(target, data, tmp_path / "c", layer_ids=LAYERS, cache_format="compact")
    assert main(["cache", "estimate", "--target", str(target.path), "--data", str(data),
                 "--target-layer-ids", "0,1,2"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    info = TargetCache(tmp_path / "c").describe()
    assert result["num_tokens"] == info["num_tokens"] and result["num_samples"] == 9
    assert result["compact"]["total_bytes"] == info["shard_bytes"] + info["index_bytes"]
    assert main(["cache", "info", str(tmp_path / "c")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["format"] == "compact"
