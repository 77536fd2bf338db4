"""DeepSpec / SpecForge config import and the training keys users expect from them (issue 14, items 3-4).

The DeepSpec config is written here in DeepSpec's style (a Python module of `dict(...)` sections with an
imported trainer class and a `finalize_cfg`), plus a statement that would leave a file behind if the
importer ever executed it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import REPO, save_tiny_target
from dspark.cli import main
from dspark.cli.common import DEFAULT_TARGET
from dspark.errors import ConfigError
from dspark.train.config import TrainConfig, load_train_config
from dspark.train.config_import import (
    DEEPSPEC_KEYS, DRAFT_JSON_KEYS, SPECFORGE_KEYS, import_deepspec, import_specforge, read_python_config,
)

DEEPSPEC_CONFIG = '''\
import os
from deepspec.trainer import Qwen3DSparkTrainer
BASE_CKPT_DIR = os.path.expanduser("~/checkpoints")
open({marker!r}, "w").write("executed")  # must never run
project_name = "deepspec"
exp_name = "dspark_block7_tiny"
seed = 40 + 2
num_layers = 5

model = dict(
    target_model_name_or_path="Qwen/Qwen3-8B",
    block_size=7,
    num_draft_layers=num_layers,
    target_layer_ids=[1, 9, 17, 25, 33],
    mask_token_id=151669,
    num_anchors=2 ** 9,
    markov_rank=256,
    markov_head_type='vanilla',
    confidence_head_alpha=1.0,
    confidence_head_with_markov=True,
    loss_decay_gamma=4.0,
    ce_loss_alpha=0.1,
    l1_loss_alpha=1 - 0.1,
)

train = dict(
    trainer_cls=Qwen3DSparkTrainer,
    lr=6.0e-4,
    warmup_ratio=0.04,
    weight_decay=0.0,
    precision="bf16",
    local_batch_size=1,
    global_batch_size=512,
    num_train_epochs=10,
    max_train_steps=None,
    max_grad_norm=1.0,
    sharding_strategy="full_shard",
    torch_compile=True,
)
train["lr"] = 3e-4

logging = dict(logging_steps=10, checkpointing_steps=3000)

data = dict(target_cache_path=None, chat_template="qwen", max_length=4096, num_workers=4)


def finalize_cfg(cfg):
    open({marker!r}, "w").write("executed")
    return cfg
'''


def _deepspec(tmp_path: Path, **replace: str) -> Path:
    text = DEEPSPEC_CONFIG.format(marker=str(tmp_path / "executed"))
    for old, new in replace.items():
        text = text.replace(old, new)
    path = tmp_path / "dspark_tiny.py"
    path.write_text(text)
    return path


def test_deepspec_config_is_read_without_running_it(tmp_path):
    result = import_deepspec(_deepspec(tmp_path))
    assert not (tmp_path / "executed").exists()
    v = result.values
    assert v["method"] == "dspark" and v["target"] == "Qwen/Qwen3-8B" and v["output_dir"] == "runs/dspark_block7_tiny"
    assert (v["seed"], v["num_draft_layers"], v["num_anchors"], v["mask_token_id"]) == (42, 5, 512, 151669)
    assert v["target_layer_ids"] == [1, 9, 17, 25, 33] and v["loss_tv"] == pytest.approx(0.9)
    assert (v["lr"], v["micro_batch"], v["global_batch"], v["epochs"], v["grad_clip"]) == (3e-4, 1, 512, 10.0, 1.0)
    assert v["fsdp"] is True and v["torch_compile"] is True and v["bf16"] is True and "max_steps" not in v
    assert (v["log_every"], v["save_every"], v["num_workers"], v["min_loss_tokens"]) == (10, 3000, 4, 14)
    assert v["enable_confidence_head"] is True and v["loss_conf"] == 1.0 and v["slot_decay"] == 4.0
    assert "data.chat_template" in result.ignored and "project_name" in result.ignored
    cfg = TrainConfig(**v)  # every imported value is a valid config
    assert cfg.min_loss_tokens == 14


def test_deepspec_dflash_and_eagle3_methods(tmp_path):
    dflash = _deepspec(tmp_path, **{"markov_rank=256": "markov_rank=0", "confidence_head_alpha=1.0": "confidence_head_alpha=0.0"})
    v = import_deepspec(dflash).values
    assert v["method"] == "dflash" and v["enable_confidence_head"] is False and v["markov_rank"] == 0
    eagle = _deepspec(tmp_path, Qwen3DSparkTrainer="Qwen3Eagle3Trainer", **{"block_size=7": "ttt_length=7"})
    assert import_deepspec(eagle).values["method"] == "eagle3"
    (tmp_path / "bad.py").write_text("model = dict(\n")
    with pytest.raises(ConfigError, match="not valid Python"):
        import_deepspec(tmp_path / "bad.py")
    (tmp_path / "plain.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="not a DeepSpec training config"):
        import_deepspec(tmp_path / "plain.py")


def test_python_reader_keeps_calls_unevaluated(tmp_path):
    (tmp_path / "c.py").write_text("a = 2 ** 10000\nb = __import__('os').getcwd()\nc = dict(x=[1, (2, 3)], y=-1.5)\n")
    names = read_python_config(tmp_path / "c.py")
    assert type(names["a"]).__name__ == "Unevaluated" and type(names["b"]).__name__ == "Unevaluated"
    assert names["c"] == {"x": [1, (2, 3)], "y": -1.5}


SPECFORGE_RECIPE = """\
model:
  target_model_path: Qwen/Qwen3-8B
  draft_model_config: configs/qwen3-8b-dspark.json
  target_backend: sglang
  torch_dtype: bfloat16
data:
  train_data_path: ./cache/dataset/sharegpt_train.jsonl
  max_length: 3072
  chat_template: qwen
training:
  strategy: dspark
  num_epochs: 6
  batch_size: 2
  accumulation_steps: 4
  learning_rate: 6.0e-4
  num_anchors: 512
  loss_decay_gamma: 4.0
  save_interval: 0
  log_interval: 50
output_dir: ./outputs/qwen3-8b-dspark
deployment:
  mode: local_colocated
  trainer: {nnodes: 1, nproc_per_node: 8}
"""
DRAFT_JSON = {"architectures": ["DSparkDraftModel"], "block_size": 7, "num_hidden_layers": 5,
              "dflash_config": {"confidence_head_alpha": 1.0, "confidence_head_with_markov": True,
                                "enable_confidence_head": True, "markov_head_type": "gated", "markov_rank": 128,
                                "mask_token_id": 151669, "projector_type": "dspark", "target_layer_ids": [1, 9, 17, 25, 33]}}


def test_specforge_recipe_and_its_draft_json(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "qwen3-8b-dspark.json").write_text(json.dumps(DRAFT_JSON))
    (tmp_path / "examples").mkdir()
    recipe = tmp_path / "examples" / "recipe.yaml"
    recipe.write_text(SPECFORGE_RECIPE)
    result = import_specforge(recipe)  # the draft JSON is found from the recipe's parent folder
    v = result.values
    assert v["method"] == "dspark" and v["target"] == "Qwen/Qwen3-8B" and v["data"] == ["./cache/dataset/sharegpt_train.jsonl"]
    assert (v["micro_batch"], v["global_batch"], v["epochs"], v["max_length"]) == (2, 2 * 4 * 8, 6.0, 3072)
    assert (v["markov_rank"], v["markov_head_type"], v["num_draft_layers"], v["target_layer_ids"][0]) == (128, "gated", 5, 1)
    assert v["grad_clip"] == 0.5 and v["warmup_ratio"] == 0.015 and v["seed"] == 42  # SpecForge's defaults
    assert "save_every" not in v and "deployment.mode" in result.ignored
    TrainConfig(**v)
    v_json = import_specforge(tmp_path / "configs" / "qwen3-8b-dspark.json").values
    assert v_json["loss_conf"] == 1.0 and v_json["mask_token_id"] == 151669
    recipe.write_text(SPECFORGE_RECIPE.replace("strategy: dspark", "strategy: domino"))
    with pytest.raises(ConfigError, match="domino"):
        import_specforge(recipe)


def test_train_cli_imports_and_prints_a_config(tmp_path, capsys):
    import tomllib

    path = _deepspec(tmp_path)
    assert main(["train", "--from-deepspec", str(path), "--set", "max_steps=7", "--print-config"]) == 0
    captured = capsys.readouterr()
    parsed = tomllib.loads(captured.out)
    assert parsed["max_steps"] == 7 and parsed["method"] == "dspark" and parsed["min_loss_tokens"] == 14
    assert "data.chat_template" in captured.err
    assert load_train_config(None, [f"{k}={json.dumps(v)}" for k, v in parsed.items()]).max_steps == 7


def test_every_mapped_key_is_documented():
    doc = (REPO / "docs" / "config_import.md").read_text()
    for section, key in [*DEEPSPEC_KEYS, *SPECFORGE_KEYS]:
        assert f"`{section + '.' if section else ''}{key}`" in doc or f"`{key}`" in doc, (section, key)
    for key in DRAFT_JSON_KEYS:
        assert f"`{key}`" in doc


# -- the keys DeepSpec users set, honoured by the trainer ---------------------------------------------
FLAG_TEMPLATE = ("{{ bos_token }}{% if flag %}FLAGGED {% endif %}{% for message in messages %}{{ '<|im_start|>' + "
                 "message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def flag_target(tmp_path_factory):
    """The embedded tiny target with a chat template that prints FLAGGED when the kwarg `flag` is true."""
    root = tmp_path_factory.mktemp("flag-target")
    shutil.copytree(DEFAULT_TARGET, root / "t")
    (root / "t" / "chat_template.jinja").write_text(FLAG_TEMPLATE)
    cfg = json.loads((root / "t" / "tokenizer_config.json").read_text())
    cfg["chat_template"] = FLAG_TEMPLATE
    (root / "t" / "tokenizer_config.json").write_text(json.dumps(cfg))
    return root / "t"


def _chat_data(path: Path) -> Path:
    with path.open("w") as f:
        for i in range(6):
            answer = "def f(x):\n    return x + 1\n" * (1 + i % 3) if i else "ok"  # sample 0: 1-2 loss tokens
            f.write(json.dumps({"id": i, "conversations": [{"role": "user", "content": f"write f {i}"},
                                                           {"role": "assistant", "content": answer}]}) + "\n")
    return path


def test_chat_template_kwargs_and_min_loss_tokens_reach_the_training_data(tmp_path, flag_target):
    from dspark.train.trainer import Trainer

    data = _chat_data(tmp_path / "chat.jsonl")
    base = dict(target=str(flag_target), data=[str(data)], method="dspark", num_draft_layers=1, block_size=4,
                num_anchors=4, markov_rank=8, global_batch=2, micro_batch=2, max_steps=1, eval_fraction=0.0,
                tensorboard=False, device="cpu")
    trainer = Trainer(TrainConfig(**base, output_dir=str(tmp_path / "a"), chat_template_kwargs={"flag": True},
                                  min_loss_tokens=5))
    samples = trainer.train_set.dataset.samples
    assert sorted(s.sample_id for s in samples) == ["1", "2", "3", "4", "5"]  # "0" had fewer than 5 loss tokens
    text = trainer.target.tokenizer.decode(samples[0].input_ids.tolist())
    assert "FLAGGED" in text
    plain = Trainer(TrainConfig(**base, output_dir=str(tmp_path / "b"), chat_template_kwargs={"flag": False}))
    assert "FLAGGED" not in plain.target.tokenizer.decode(plain.train_set.dataset.samples[0].input_ids.tolist())


def test_regeneration_passes_chat_template_kwargs_to_the_template(flag_target):
    from dspark import load_target
    from dspark.train.regen_backends import HFBackend
    from dspark.train.regenerate import RegenerateOptions

    target = load_target(flag_target)
    messages = [{"role": "user", "content": "hi"}]
    on = HFBackend(target, RegenerateOptions(chat_template_kwargs={"flag": True})).formatter.prompt_ids(messages)
    off = HFBackend(target, RegenerateOptions(chat_template_kwargs={})).formatter.prompt_ids(messages)
    assert "FLAGGED" in target.tokenizer.decode(on) and "FLAGGED" not in target.tokenizer.decode(off)


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    tdir = save_tiny_target(root / "target", vocab=64, hidden=32, layers=4, seed=3, init_range=0.3)
    g = torch.Generator().manual_seed(0)
    with (root / "data.jsonl").open("w") as f:
        for i in range(16):
            ids = torch.randint(0, 64, (24 + i,), generator=g).tolist()
            f.write(json.dumps({"id": i, "input_ids": ids, "loss_mask": [0] * 4 + [1] * (len(ids) - 4)}) + "\n")
    base = dict(target=str(tdir), data=[str(root / "data.jsonl")], method="dspark", num_draft_layers=1, block_size=4,
                num_anchors=4, markov_rank=8, global_batch=4, micro_batch=2, max_steps=3, lr=3e-3, eval_every=3,
                save_every=2, eval_fraction=0.25, tensorboard=False, device="cpu", log_every=1)
    return root, base


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_num_workers_prepare_the_same_batches(token_run):
    from dspark.train.trainer import Trainer

    root, base = token_run
    Trainer(TrainConfig(**base, output_dir=str(root / "w0"))).fit()
    Trainer(TrainConfig(**base, output_dir=str(root / "w2"), num_workers=2)).fit()
    assert _metrics(root / "w0") == _metrics(root / "w2")


def test_final_is_in_the_save_dtype_and_step_checkpoints_are_lean(token_run, monkeypatch):
    from dspark.train.trainer import Trainer

    root, base = token_run
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append(kw))
    out = root / "bf16"
    Trainer(TrainConfig(**base, output_dir=str(out), save_dtype="bfloat16", torch_compile=True)).fit()
    assert compiled == [{"dynamic": True}]
    final = json.loads((out / "final" / "config.json").read_text())
    assert final["dtype"] == "bfloat16" and "dspark_frozen_from_target" not in final
    with safe_open(str(out / "final" / "model.safetensors"), framework="pt") as f:
        assert "embed_tokens.weight" in f.keys() and f.get_tensor("fc.weight").dtype == torch.bfloat16
    ckpt = out / "checkpoints" / "step-00000002"
    assert json.loads((ckpt / "config.json").read_text())["dspark_frozen_from_target"] is True
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        assert "embed_tokens.weight" not in f.keys() and f.get_tensor("fc.weight").dtype == torch.float32
    default = Trainer(TrainConfig(**{**base, "max_steps": 1}, output_dir=str(root / "auto"))).fit()
    assert default and json.loads((root / "auto" / "final" / "config.json").read_text())["dtype"] == "float32"  # CPU
