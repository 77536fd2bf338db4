"""The reference tokenizer: byte-level BPE trained on the corpus, saved as a standard HF tokenizer.

Second step of the reference-target flow (corpus → tokenizer → pretrain). Byte-level, so every
string round-trips exactly (code, whitespace, any Unicode). Special tokens take the first ids, in the
order of `SPECIAL_TOKENS`:

    0 <|bos|>   start of every document and of every chat
    1 <|endoftext|>  end of a document (the eos token)
    2 <|pad|>   padding
    3 <|mask|>  the placeholder a parallel drafter feeds for not-yet-drafted slots
    4 <|im_start|>, 5 <|im_end|>  chat markers: `<|im_start|>role\\n content <|im_end|>\\n`

Encoding never adds special tokens by itself; the chat template writes `<|bos|>` first, and
pretraining writes `<|bos|> text <|endoftext|>` per document. A rendered chat must therefore be
encoded with `add_special_tokens=False` (or through `apply_chat_template(..., tokenize=True)`).
Generation should stop at `<|im_end|>` or `<|endoftext|>` (both listed in the target's
generation_config.json by pretraining).

Run: `dspark tokenizer --corpus runs/corpus --vocab-size 8192 --out runs/tokenizer`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from dspark.errors import ConfigError, DataError
from dspark.output_dir import OutputKind, write_output_dir
from dspark.reference.corpus import read_documents

logger = logging.getLogger(__name__)

BOS, EOS, PAD, MASK, IM_START, IM_END = (
    "<|bos|>", "<|endoftext|>", "<|pad|>", "<|mask|>", "<|im_start|>", "<|im_end|>",
)  # fmt: skip
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, MASK, IM_START, IM_END)
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TOKENIZER_OUTPUT = OutputKind("tokenizer", frozenset({*TOKENIZER_FILES, "chat_template.jinja"}))

# ChatML-style markers; `bos_token` first so a rendered chat starts like a pretraining document.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template in plain Python (no Jinja or transformers needed); equal to the template."""
    parts = [BOS]
    for message in messages:
        parts.append(f"{IM_START}{message['role']}\n{message['content']}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def _training_texts(corpus_dir: Path, max_bytes: int) -> Iterator[str]:
    """Train-split texts until max_bytes (0 = all), in corpus order."""
    total = 0
    for doc in read_documents(corpus_dir, "train"):
        yield doc.text
        total += len(doc.text)
        if max_bytes and total >= max_bytes:
            return


def train_tokenizer(
    corpus_dir: Path, vocab_size: int = 8192, max_bytes: int = 64_000_000, min_frequency: int = 2
) -> Tokenizer:
    """Train byte-level BPE on (a prefix of) the train split of a corpus."""
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"vocab_size must exceed the 256 byte symbols plus specials, got {vocab_size}")
    if vocab_size > 65535:
        raise ConfigError("vocab_size must fit in 16 bits (pretraining stores token streams as uint16)")
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_training_texts(corpus_dir, max_bytes), trainer=trainer)
    if tokenizer.get_vocab_size() < 256 + len(SPECIAL_TOKENS):
        raise DataError(f"corpus {corpus_dir} is too small to train a tokenizer")
    for index, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == index, "special tokens must take the first ids"
    logger.info("trained byte-level BPE: %d tokens", tokenizer.get_vocab_size())
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, model_max_length: int = 2048, overwrite: bool = False) -> Path:
    """Save as an HF tokenizer directory (tokenizer.json + tokenizer_config.json), atomically.

    An existing `out_dir` follows `dspark.output_dir`: refused unless it holds a tokenizer dspark wrote and
    `overwrite` is set; only the tokenizer's own files are then replaced.
    """
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        mask_token=MASK,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = CHAT_TEMPLATE

    def fill(tmp: Path) -> None:
        hf.save_pretrained(str(tmp))
        config_path = tmp / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config["chat_template"] = CHAT_TEMPLATE  # inline as well: some versions read only the side file
        config["tokenizer_class"] = "PreTrainedTokenizerFast"  # the class name every version knows
        config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    return write_output_dir(out_dir, TOKENIZER_OUTPUT, fill, overwrite=overwrite, flag="--output-dir")


def load_tokenizer(tokenizer_dir: Path) -> Tokenizer:
    """The raw `tokenizers.Tokenizer` of a saved directory (fast batch encoding, no transformers)."""
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path} not found: is {tokenizer_dir} a tokenizer built by `dspark tokenizer`?")
    tokenizer = Tokenizer.from_file(str(path))
    for index, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != index:
            raise DataError(f"{tokenizer_dir}: special token {token} is not id {index}")
    return tokenizer


def copy_tokenizer(tokenizer_dir: Path, out_dir: Path) -> None:
    """Copy the tokenizer files into a model directory (no re-save: the bytes stay identical)."""
    for name in os.listdir(tokenizer_dir):
        source = Path(tokenizer_dir) / name
        if source.is_file() and (name.startswith("tokenizer") or name.endswith((".jinja", "_map.json"))):
            shutil.copy2(source, Path(out_dir) / name)
