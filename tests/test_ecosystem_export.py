"""Checkpoints a serving engine can load (issue 14, item 4): `dspark export`, shards, dtypes, file modes.

The DeepSpec-format reader below is written from SPEC §3.1 alone (config keys -> the state-dict keys and
shapes a DeepSpec loader fills), reading the files with safetensors directly, not with dspark's loader.
DeepSpec's own loader fills any key it does not find with random weights, so "no missing keys" is the
property that matters.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import FIXTURES, tiny_drafter
from dspark.cli import main
from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET
from dspark.formats import load_drafter, save_drafter


def deepspec_expected_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor a DeepSpec `Qwen3DSparkModel` loader fills, with its shape (SPEC §3.1)."""
    v, d, hd = cfg["vocab_size"], cfg["hidden_size"], cfg["head_dim"]
    heads, kv, inter, n = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"], \
        len(cfg["target_layer_ids"])
    out = {"embed_tokens.weight": (v, d), "lm_head.weight": (v, d), "norm.weight": (d,), "fc.weight": (d, n * d),
           "hidden_norm.weight": (d,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        out.update({p + "self_attn.q_proj.weight": (heads * hd, d), p + "self_attn.k_proj.weight": (kv * hd, d),
                    p + "self_attn.v_proj.weight": (kv * hd, d), p + "self_attn.o_proj.weight": (d, heads * hd),
                    p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
                    p + "mlp.gate_proj.weight": (inter, d), p + "mlp.up_proj.weight": (inter, d),
                    p + "mlp.down_proj.weight": (d, inter), p + "input_layernorm.weight": (d,),
                    p + "post_attention_layernorm.weight": (d,)})
    r = cfg.get("markov_rank", 0)
    if r:
        out.update({"markov_head.markov_w1.weight": (v, r), "markov_head.markov_w2.weight": (v, r)})
    if cfg.get("enable_confidence_head"):
        out.update({"confidence_head.proj.weight": (1, d + (r if cfg.get("confidence_head_with_markov") else 0)),
                    "confidence_head.proj.bias": (1,)})
    return out


def read_deepspec_dir(directory: Path) -> tuple[dict, dict[str, tuple[int, ...]], set[str]]:
    """(config, {key: shape} stored, dtypes) of a DeepSpec-format directory: one file or shards + index."""
    cfg = json.loads((directory / "config.json").read_text())
    index = directory / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    shapes, dtypes = {}, set()
    for name in files:
        with safe_open(str(directory / name), framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
                dtypes.add(str(f.get_slice(key).get_dtype()))
    return cfg, shapes, dtypes


def test_reader_matches_deepspecs_own_checkpoint():
    """The reader's expectations are DeepSpec's: its fixture checkpoint has exactly these keys and shapes."""
    draft = FIXTURES / "deepspec-dspark-vanilla" / "draft"
    if not draft.is_dir():
        pytest.skip("DeepSpec fixtures not present")
    cfg, shapes, _ = read_deepspec_dir(draft)
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    assert shapes == deepspec_expected_shapes(cfg)


def test_export_of_the_embedded_drafter_loads_in_a_deepspec_reader(tmp_path, capsys):
    out = tmp_path / "served"
    assert main(["export", "--draft", str(DEFAULT_DRAFT), "--target", str(DEFAULT_TARGET), "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    cfg, shapes, dtypes = read_deepspec_dir(out)
    expected = deepspec_expected_shapes(cfg)
    assert sorted(set(expected) - set(shapes)) == []  # no missing keys (DeepSpec would fill them randomly)
    assert sorted(set(shapes) - set(expected)) == []
    assert all(shapes[k] == s for k, s in expected.items())
    assert "dspark_frozen_from_target" not in cfg and cfg["architectures"] == ["Qwen3DSparkModel"]
    assert cfg["dtype"] == "bfloat16" and dtypes == {"BF16"}  # the source's dtype (auto)
    # the embedding / LM head are the target's
    with safe_open(str(DEFAULT_TARGET / "model.safetensors"), framework="pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight").to(torch.bfloat16)
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert torch.equal(f.get_tensor("embed_tokens.weight"), emb)
    # the exact serving command lines for this directory
    spec = {"method": "dspark", "model": str(out.resolve()), "num_speculative_tokens": 7, "enable_adaptive_verification": True}
    assert f"vllm serve {DEFAULT_TARGET} --speculative-config '{json.dumps(spec)}'" in printed
    assert (f"python -m sglang.launch_server --model-path {DEFAULT_TARGET} --speculative-algorithm DSPARK "
            f"--speculative-draft-model-path {out.resolve()}") in printed


def test_export_lean_source_without_target_is_refused_or_kept_lean(tmp_path, capsys):
    assert main(["export", "--draft", str(DEFAULT_DRAFT), "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "lean" in err and "--target" in err and not (tmp_path / "x").exists()
    assert main(["export", "--draft", str(DEFAULT_DRAFT), "--lean", "--format", "specforge", "--output-dir",
                 str(tmp_path / "lean")]) == 0
    cfg, shapes, _ = read_deepspec_dir(tmp_path / "lean")
    assert cfg["dspark_frozen_from_target"] is True and "embed_tokens.weight" not in shapes
    assert "vllm serve" in capsys.readouterr().out


def test_export_dtype_and_shards(tmp_path, qwen3_target):
    src = save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "src")
    out = tmp_path / "sharded"
    assert main(["export", "--draft", str(src), "--output-dir", str(out), "--dtype", "bf16", "--max-shard-size", "20K"]) == 0
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((out / s).is_file() for s in shards) and not (out / "model.safetensors").exists()
    assert index["metadata"]["total_size"] > 0
    cfg, shapes, dtypes = read_deepspec_dir(out)
    assert cfg["dtype"] == "bfloat16" and dtypes == {"BF16"}
    back, ref = load_drafter(out).state_dict(), load_drafter(src).state_dict()
    assert back.keys() == ref.keys()
    assert all(torch.equal(back[k], ref[k].to(torch.bfloat16)) for k in ref)
    # a sharded checkpoint is exported again (read through its index)
    assert main(["export", "--draft", str(out), "--format", "specforge", "--output-dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "model.safetensors").is_file()


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_files_follow_the_umask(tmp_path, qwen3_target, umask):
    old = os.umask(umask)
    try:
        out = save_drafter(tiny_drafter(qwen3_target, "dspark"), tmp_path / "ckpt")
    finally:
        os.umask(old)
    for path in [out, *out.iterdir()]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o777 if path.is_dir() else 0o666) & ~umask, (path.name, oct(mode))
