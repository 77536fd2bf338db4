"""Shared test fixtures: tiny random HF targets (Qwen3, Llama) and drafters of every kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dspark.drafters import build_drafter, config_from_target
from dspark.targets import load_target

# Tiny models: one intra-op thread is fastest, and on a shared 2-core machine extra threads oversubscribe
# the cores (measured 8x slower per engine step with 2 threads under load).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures" / "deepspec"


def save_tiny_target(directory: Path, arch: str = "qwen3", vocab: int = 64, hidden: int = 32, layers: int = 4,
                     seed: int = 0, init_range: float = 0.02, eos: int | None = None) -> Path:
    """A random HF causal LM saved with `save_pretrained` (no tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    cls, cfg_cls = {"qwen3": (Qwen3ForCausalLM, Qwen3Config), "llama": (LlamaForCausalLM, LlamaConfig)}[arch]
    cfg = cfg_cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4, max_position_embeddings=512,
                  initializer_range=init_range, tie_word_embeddings=False, eos_token_id=eos, bos_token_id=None,
                  pad_token_id=None)
    model = cls(cfg)
    model.save_pretrained(directory)
    return directory


def tiny_drafter(target, method: str, seed: int = 0, scale: float = 1.0, **overrides):
    """A random drafter fitted to `target` (shared frozen embedding / LM head)."""
    torch.manual_seed(seed)
    defaults = dict(num_hidden_layers=2 if method in ("dspark", "dflash") else 1, block_size=4, markov_rank=8,
                    target_layer_ids=target.default_layer_ids(3) if method != "mtp" else [target.num_layers - 2])
    if method != "dspark":
        defaults.pop("markov_rank")
    if method == "eagle3":
        defaults.pop("block_size")  # Eagle3 drafts ttt_length tokens; DeepSpec's config has no block_size
    defaults.update(overrides)
    drafter = build_drafter(config_from_target(target, method, **defaults))
    if scale != 1.0:
        with torch.no_grad():
            for p in drafter.parameters():
                p.mul_(scale)
    drafter.init_from_target(target)
    return drafter.eval()


@pytest.fixture(scope="session")
def qwen3_target(tmp_path_factory):
    return load_target(save_tiny_target(tmp_path_factory.mktemp("qwen3")))


@pytest.fixture(scope="session")
def llama_target(tmp_path_factory):
    return load_target(save_tiny_target(tmp_path_factory.mktemp("llama"), arch="llama", seed=1))


def fixture_case(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_dir():
        pytest.skip(f"DeepSpec fixtures not present at {path}")
    return path
