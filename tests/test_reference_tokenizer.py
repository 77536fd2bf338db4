"""Reference tokenizer: round trip, special tokens, chat template, loadable by transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_reference_corpus import write_source_tree

from dspark.errors import ConfigError
from dspark.reference.corpus import CorpusConfig, build_corpus
from dspark.reference.tokenizer import (
    BOS,
    CHAT_TEMPLATE,
    EOS,
    IM_END,
    IM_START,
    MASK,
    PAD,
    SPECIAL_TOKENS,
    load_tokenizer,
    render_chat,
    save_tokenizer,
    train_tokenizer,
)

SAMPLES = [
    "def add(a, b):\n    return a + b\n",
    "\tif x  ==  1:\r\n\t\tpass  # trailing   \n\n\n",
    "Unicode: naïve café — 数据 🙂 ∑x² \u00a0 \x00 end",
    "",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tok")
    src = write_source_tree(root / "src", stdlib=True)
    build_corpus(root / "corpus", CorpusConfig(roots=(str(src),)))
    return save_tokenizer(train_tokenizer(root / "corpus", vocab_size=400), root / "tokenizer")


def test_round_trip_and_special_ids(tokenizer_dir: Path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.get_vocab_size() == 400
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    for text in SAMPLES:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text
    # special tokens are single ids inside text, and never added implicitly
    ids = tokenizer.encode(f"{BOS}x{MASK}{IM_START}user{IM_END}", add_special_tokens=True).ids
    assert ids[0] == 0 and ids.count(3) == 1 and 4 in ids and 5 in ids
    assert tokenizer.encode("hello").ids[0] != 0


def test_transformers_loads_it_with_chat_template(tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.mask_token) == (BOS, EOS, PAD, MASK)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.mask_token_id) == (0, 1, 2, 3)
    assert hf.convert_tokens_to_ids([IM_START, IM_END]) == [4, 5]
    for text in SAMPLES:
        assert hf.decode(hf(text)["input_ids"]) == text
    messages = [{"role": "user", "content": "Write `f`."}, {"role": "assistant", "content": "def f():\n    pass"}]
    for generation_prompt in (False, True):
        rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        assert rendered == render_chat(messages, generation_prompt)
    rendered = hf.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert rendered == f"{BOS}{IM_START}user\nWrite `f`.{IM_END}\n{IM_START}assistant\n"
    ids = hf.apply_chat_template(messages[:1], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids == hf(rendered, add_special_tokens=False)["input_ids"] and ids[0] == 0 and ids.count(0) == 1
    assert hf.chat_template == CHAT_TEMPLATE


def test_bad_vocab_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        train_tokenizer(tmp_path, vocab_size=100)
    with pytest.raises(ConfigError):
        train_tokenizer(tmp_path, vocab_size=70000)
