"""The engine's own dense forward (dspark.models) against transformers, over shuffled KV pages.

Every target is a tiny random HF model; DenseLM must give the same logits, features and final hidden
(fp32, atol 1e-4) as one full transformers forward over each sequence, however the tokens reach it:
one prefill of several sequences, chunked prefill, decode and verify steps mixed in one batch, and a
rejected verify block that the next step overwrites. Bad checkpoints and configs fail with one clear error.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dspark.engine.batch import FlatBatch, slots_for
from dspark.errors import CheckpointError, ConfigError, IncompatibleModelsError, UnsupportedModelError
from dspark.models import DenseConfig, DenseLM, load_dense
from dspark.targets.adapter import stack_layer_features

VOCAB, HIDDEN, LAYERS, PAGE = 64, 32, 3, 4
FEATURE_IDS = [1, -1, 0]  # list order, not sorted: features come back in this order
ATOL = 1e-4


def build_hf(arch: str, seed: int = 0, **overrides):
    """A random transformers causal LM with weights large enough that mistakes show."""
    import transformers

    torch.manual_seed(seed)
    names = {"qwen3": "Qwen3", "llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[arch]
    kwargs = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=HIDDEN // 4, max_position_embeddings=128,
                  initializer_range=0.2, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None,
                  pad_token_id=None)
    if arch == "qwen2":
        kwargs.pop("head_dim")
    kwargs.update(overrides)
    cfg = getattr(transformers, names + "Config")(**kwargs)
    model = getattr(transformers, names + "ForCausalLM")(cfg).eval()
    with torch.no_grad():  # random biases too (HF initialises them to zero)
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 500.0}

TARGETS = {
    "qwen3": dict(arch="qwen3"),
    "qwen3-tied": dict(arch="qwen3", tie_word_embeddings=True),
    "llama-llama3rope-bias": dict(arch="llama", rope_parameters=LLAMA3_ROPE, attention_bias=True, mlp_bias=True),
    "llama-linear": dict(arch="llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
    "qwen2": dict(arch="qwen2"),
    "mistral": dict(arch="mistral", sliding_window=None),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls on a shared 2-core box run ~50x faster without intra-op threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=sorted(TARGETS))
def pair(request, tmp_path_factory):
    """(HF model, DenseLM loaded from its saved directory); llama3-rope is saved sharded."""
    spec = dict(TARGETS[request.param])
    hf = build_hf(spec.pop("arch"), seed=len(request.param), **spec)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory, max_shard_size="40KB" if "llama3" in request.param else "1GB")
    if "llama3" in request.param:
        assert (directory / "model.safetensors.index.json").is_file()
    return hf, load_dense(directory)


class PagedSim:
    """A minimal stand-in for the engine's block manager: shuffled pages, page_size 4, rollback."""

    def __init__(self, model: DenseLM, num_pages: int = 48, seed: int = 0) -> None:
        self.kv = model.new_kv_cache(num_pages, PAGE)
        self.free = torch.randperm(num_pages, generator=torch.Generator().manual_seed(seed)).tolist()
        self.tables: dict[int, list[int]] = {}
        self.tokens: dict[int, list[int]] = {}

    def batch(self, steps: list[tuple[int, list[int]]]) -> FlatBatch:
        """Each (seq, new tokens) appends to that sequence; logits for every token."""
        ids, pos, slots, starts, ctx = [], [], [], [0], []
        for seq, new in steps:
            table, done = self.tables.setdefault(seq, []), self.tokens.setdefault(seq, [])
            while len(table) * PAGE < len(done) + len(new):
                table.append(self.free.pop())
            ctx.append(len(done))
            ids += new
            pos += range(len(done), len(done) + len(new))
            slots += slots_for(table, len(done), len(new), PAGE)
            starts.append(starts[-1] + len(new))
            done += new
        width = max(len(self.tables[s]) for s, _ in steps) + 1  # one spare -1 column, as the engine pads
        tables = [self.tables[s] + [-1] * (width - len(self.tables[s])) for s, _ in steps]
        t = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        return FlatBatch(t(ids), t(pos), t(slots), t(starts), t(ctx), torch.tensor(tables, dtype=torch.int32),
                         torch.arange(len(ids)))

    def rollback(self, seq: int, length: int) -> None:
        """Drop rejected tokens: their K/V stay in the pages, to be masked and then overwritten."""
        del self.tokens[seq][length:]


def check_step(hf, model: DenseLM, sim: PagedSim, steps: list[tuple[int, list[int]]]) -> None:
    batch = sim.batch(steps)
    with torch.no_grad():
        out = model(batch, sim.kv, FEATURE_IDS)
    assert out.logits.shape == (batch.num_tokens, VOCAB)
    assert out.features.shape == (batch.num_tokens, len(FEATURE_IDS) * HIDDEN)
    start = 0
    for (seq, new), ctx in zip(steps, batch.context_lens.tolist()):
        full = torch.tensor([sim.tokens[seq][: ctx + len(new)]])
        with torch.no_grad():
            ref = hf(full, output_hidden_states=True)
        rows, span = slice(start, start + len(new)), slice(ctx, ctx + len(new))
        torch.testing.assert_close(out.logits[rows], ref.logits[0, span], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.last_hidden[rows], ref.hidden_states[-1][0, span], atol=ATOL, rtol=0)
        torch.testing.assert_close(out.features[rows], stack_layer_features(ref.hidden_states, FEATURE_IDS)[0, span],
                                   atol=ATOL, rtol=0)
        start += len(new)


def tokens(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_prefill_of_several_sequences(pair):
    hf, model = pair
    sim = PagedSim(model)
    check_step(hf, model, sim, [(0, tokens(5, 1)), (1, tokens(13, 2)), (2, tokens(1, 3)), (3, tokens(8, 4))])


def test_chunked_prefill(pair):
    hf, model = pair
    sim = PagedSim(model, seed=1)
    prompt = tokens(23, 5)
    check_step(hf, model, sim, [(0, prompt[:9])])
    check_step(hf, model, sim, [(1, tokens(6, 6)), (0, prompt[9:12])])  # another request joins mid-way
    check_step(hf, model, sim, [(0, prompt[12:])])


def test_decode_and_verify_steps_mixed(pair):
    hf, model = pair
    sim = PagedSim(model, seed=2)
    check_step(hf, model, sim, [(0, tokens(6, 7)), (1, tokens(3, 8)), (2, tokens(11, 9))])
    check_step(hf, model, sim, [(0, tokens(1, 10)), (1, tokens(5, 11)), (2, tokens(1, 12))])
    sim.rollback(1, 5)  # 3 of the 5 verify tokens rejected; their stale K/V must not leak
    check_step(hf, model, sim, [(2, tokens(4, 13)), (1, tokens(1, 14)), (0, tokens(1, 15))])  # stale slots remain
    check_step(hf, model, sim, [(1, tokens(4, 16)), (0, tokens(6, 17))])


def test_from_hf_model_in_memory_and_tied_head():
    hf = build_hf("qwen3", seed=3, tie_word_embeddings=True)
    model = DenseLM.from_hf_model(hf)
    assert model.lm_head.weight is model.embed.weight
    assert model.layers[0].qkv_proj.weight.shape == ((4 + 2 * 2) * 8, HIDDEN)
    assert model.layers[0].gate_up_proj.weight.shape == (4 * HIDDEN, HIDDEN)
    assert not any(p.requires_grad for p in model.parameters())
    sim = PagedSim(model)
    check_step(hf, model, sim, [(0, tokens(7, 18)), (1, tokens(2, 19))])
    check_step(hf, model, sim, [(0, tokens(3, 20)), (1, tokens(1, 21))])


def test_only_logits_indices_and_optional_features():
    hf = build_hf("llama", seed=4)
    model = DenseLM.from_hf_model(hf)
    sim = PagedSim(model)
    batch = sim.batch([(0, tokens(5, 22)), (1, tokens(3, 23))])
    batch.logits_indices = torch.tensor([4, 7])  # the last token of each sequence
    out = model(batch, sim.kv, None)
    assert out.features is None and out.logits.shape == (2, VOCAB)
    with torch.no_grad():
        ref = hf(torch.tensor([sim.tokens[1]])).logits[0, -1]
    torch.testing.assert_close(out.logits[1], ref, atol=ATOL, rtol=0)
    assert model(sim.batch([(0, [1])]), sim.kv, []).features.shape == (1, 0)
    with pytest.raises(IncompatibleModelsError, match="out of range"):
        model(sim.batch([(0, [1])]), sim.kv, [LAYERS - 1])


def test_bfloat16_keeps_rotary_frequencies_in_float32():
    model = DenseLM.from_hf_model(build_hf("qwen3", seed=5)).to(torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.inv_freq.dtype == torch.float32
    torch.testing.assert_close(model.inv_freq, model.config.inv_freq(), atol=0, rtol=0)


# -- config ----------------------------------------------------------------------------------------


def test_config_old_and_new_rope_layouts_agree():
    new = build_hf("llama", rope_parameters=LLAMA3_ROPE).config.to_dict()
    assert "rope_parameters" in new
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old["rope_theta"] = LLAMA3_ROPE["rope_theta"]
    old["rope_scaling"] = {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    a, b = DenseConfig.from_dict(new), DenseConfig.from_dict(old)
    assert a == b and a.rope_theta == 500.0 and a.rope_scaling["rope_type"] == "llama3"
    plain = DenseConfig.from_dict({**old, "rope_scaling": None})
    assert plain.rope_scaling is None and plain.head_dim == HIDDEN // 4
    q3 = DenseConfig.from_dict(build_hf("qwen3").config.to_dict())
    assert q3.qk_norm and not q3.qkv_bias and q3.rope_theta == 10000.0
    q2 = DenseConfig.from_dict(build_hf("qwen2").config.to_dict())
    assert q2.qkv_bias and not q2.o_bias and not q2.qk_norm


@pytest.mark.parametrize("change, error, match", [
    ({"model_type": "gpt2"}, UnsupportedModelError, "'gpt2'"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, UnsupportedModelError, "yarn"),
    ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, UnsupportedModelError, "dynamic"),
    ({"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0, "layer_types": None},
     UnsupportedModelError, "sliding"),
    ({"hidden_act": "gelu"}, UnsupportedModelError, "gelu"),
    ({"rope_parameters": {"rope_type": "linear"}}, ConfigError, "factor"),
    ({"hidden_size": None}, ConfigError, "hidden_size"),
])
def test_config_refuses_what_it_cannot_run(change, error, match):
    raw = {**build_hf("qwen3").config.to_dict(), **change}
    with pytest.raises(error, match=match):
        DenseConfig.from_dict(raw)


def test_unsupported_model_type_in_a_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(UnsupportedModelError, match="'bert'"):
        load_dense(tmp_path)


# -- bad checkpoints -------------------------------------------------------------------------------


@pytest.fixture()
def saved_qwen3(tmp_path) -> Path:
    build_hf("qwen3", seed=6).save_pretrained(tmp_path)
    return tmp_path


def test_missing_weight_key(saved_qwen3):
    file = saved_qwen3 / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight"):
        load_dense(saved_qwen3)


def test_wrong_shape(saved_qwen3):
    file = saved_qwen3 / "model.safetensors"
    tensors = load_file(file)
    tensors["model.layers.0.mlp.up_proj.weight"] = tensors["model.layers.0.mlp.up_proj.weight"][:-1].contiguous()
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="shape"):
        load_dense(saved_qwen3)


def test_truncated_safetensors_names_the_file(saved_qwen3):
    file = saved_qwen3 / "model.safetensors"
    file.write_bytes(file.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dense(saved_qwen3)


def test_missing_and_truncated_shards(tmp_path):
    build_hf("llama", seed=7).save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].write_bytes(shards[-1].read_bytes()[:100])
    with pytest.raises(CheckpointError, match=shards[-1].name):
        load_dense(tmp_path)
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=shards[-1].name):
        load_dense(tmp_path)


def test_no_weights_or_no_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(build_hf("qwen3").config.to_dict()))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_dense(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        load_dense(tmp_path / "nope")
