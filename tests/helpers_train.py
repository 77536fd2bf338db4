"""Shared helpers for the training-pipeline tests: tiny random targets and tokenizers, built in tmp dirs.

Nothing is downloaded: the tokenizer is a byte-level BPE trained on a few lines, the target a 4-layer
Qwen3 with hidden size 64 and random weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 320
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is two plus two? two plus two is four.",
    "hello world, this is a tiny corpus for a tiny tokenizer",
    "user assistant system answer question",
]


def make_tokenizer(chat_template: bool = True) -> Any:
    """A byte-level BPE `PreTrainedTokenizerFast` (ids < VOCAB_SIZE), optionally with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token=None, unk_token=None)
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    assert len(fast) <= VOCAB_SIZE
    return fast


def make_target(path: str | Path, tokenizer: bool = True, chat_template: bool = True, seed: int = 0,
                num_layers: int = 4) -> Path:
    """Save a tiny random Qwen3 causal LM (and a tokenizer) to `path`; return the path."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(chat_template) if tokenizer else None
    eos = tok.convert_tokens_to_ids("<|im_end|>") if tok is not None else 3
    cfg = Qwen3Config(vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                      eos_token_id=eos, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    Qwen3ForCausalLM(cfg).save_pretrained(path)
    if tok is not None:
        tok.save_pretrained(path)
    return path


def write_jsonl(path: str | Path, rows: list[Any]) -> Path:
    path = Path(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: str | Path) -> list[Any]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def chat_rows(n: int) -> list[dict[str, Any]]:
    """`n` small two-turn conversations with distinct answers."""
    return [{"id": f"s{i}", "conversations": [
        {"role": "user", "content": f"what is {i} plus {i}?"},
        {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        {"role": "user", "content": "and the quick brown fox?"},
        {"role": "assistant", "content": "it jumps over the lazy dog " * (1 + i % 3)},
    ]} for i in range(n)]


def single_thread():
    """Generator for a module-scoped fixture: torch on one thread (tiny models; 2 shared cores), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
