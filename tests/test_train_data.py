"""Training data: record parsing, chat-template and plain-template loss masks, truncation, filters, splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_train import chat_rows, make_tokenizer, single_thread, write_jsonl

from dspark.errors import DataError
from dspark.train.data import (
    DataConfig, TokenDataset, collate_padded, iter_records, load_samples, parse_record, split_by_id, tokenize_record,
)
from dspark.train.jsonl import AppendLog, iter_jsonl
from dspark.train.templates import ChatFormatter

SHARED = Path("/work/shared/datasets")


_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)

@pytest.fixture(scope="module")
def tok():
    return make_tokenizer(chat_template=True)


@pytest.fixture(scope="module")
def plain_tok():
    return make_tokenizer(chat_template=False)


def _loss_text(tokenizer, ids, mask) -> list[str]:
    """Decoded runs of consecutive loss tokens."""
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tokenizer.decode(cur))
            cur = []
    if cur:
        runs.append(tokenizer.decode(cur))
    return runs


def test_record_shapes(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [
        {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"id": 7, "messages": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
        {"turns": ["q1", "q2"]},
        {"text": "a document"},
        {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]},
    ])
    records = list(iter_records(path))
    assert [r.kind for r in records] == ["chat", "chat", "prompt", "text", "tokens"]
    assert [r.sample_id for r in records] == ["1", "7", "3", "4", "5"]
    assert records[1].messages == ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"})
    assert records[2].user_turns() == ["q1", "q2"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "ok"\n{"text": "x"}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: malformed JSON"):
        list(iter_records(path))


@pytest.mark.parametrize("obj, message", [
    ({"foo": 1}, "none of"),
    ({"conversations": [{"role": "robot", "content": "x"}]}, "role 'robot'"),
    ({"conversations": []}, "non-empty"),
    ({"turns": [1]}, "list of strings"),
    ({"input_ids": [1, 2], "loss_mask": [1]}, "as long as"),
    ([1, 2], "JSON object"),
])
def test_bad_records(obj, message):
    with pytest.raises(DataError, match=message) as err:
        parse_record(obj, "f.jsonl:9", "9")
    assert "f.jsonl:9" in str(err.value)


def test_duplicate_ids(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    with pytest.raises(DataError, match=r"d\.jsonl:2: duplicate sample id 'a' \(first at .*d\.jsonl:1\)"):
        list(iter_records(path))


def test_chat_template_loss_mask(tok):
    fmt = ChatFormatter(tok)
    msgs = chat_rows(3)[2]["conversations"]
    ids, mask = fmt.encode_conversation(msgs)
    assert len(ids) == len(mask)
    # loss exactly on each answer plus the template's end-of-turn marker
    assert _loss_text(tok, ids, mask) == [msgs[1]["content"] + "<|im_end|>", msgs[3]["content"] + "<|im_end|>"]
    # the tokens before the first answer are exactly the generation prompt the target sees at inference
    prompt = fmt.prompt_ids(msgs[:1])
    assert ids[: len(prompt)] == prompt and mask[len(prompt)] == 1 and not any(mask[: len(prompt)])
    assert tok.decode(ids) == tok.apply_chat_template(msgs, tokenize=False)


def test_history_rewriting_template_falls_back_to_locating_answers():
    tok = make_tokenizer(chat_template=False)
    # like Qwen3: only the LAST answer (and the generation prompt) carry an empty think block
    tok.chat_template = (
        "{% for m in messages %}{% if m.role == 'assistant' and loop.last %}<|im_start|>assistant\n<think></think>"
        "{{ m.content }}<|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think></think>{% endif %}")
    msgs = chat_rows(2)[1]["conversations"]
    ids, mask = ChatFormatter(tok).encode_conversation(msgs)
    assert _loss_text(tok, ids, mask) == [msgs[1]["content"] + "<|im_end|>", msgs[3]["content"] + "<|im_end|>"]


def test_plain_template(plain_tok):
    fmt = ChatFormatter(plain_tok)
    assert not fmt.has_template
    msgs = [{"role": "system", "content": "be brief"}] + chat_rows(1)[0]["conversations"]
    ids, mask = fmt.encode_conversation(msgs)
    text = plain_tok.decode(ids)
    assert text == ("System:\nbe brief\n\nUser:\nwhat is 0 plus 0?\n\nAssistant:\n0 plus 0 is 0.<|im_end|>\n\n"
                    "User:\nand the quick brown fox?\n\nAssistant:\nit jumps over the lazy dog <|im_end|>")
    assert _loss_text(plain_tok, ids, mask) == ["0 plus 0 is 0.<|im_end|>", "it jumps over the lazy dog <|im_end|>"]
    prompt = fmt.prompt_ids(msgs[:4])  # history + second question: same tokens as in training
    assert prompt == ids[: len(prompt)] and plain_tok.decode(prompt).endswith("fox?\n\nAssistant:\n")


def test_documents_and_tokens(tok):
    fmt = ChatFormatter(tok)
    sample = tokenize_record(parse_record({"text": "hello world"}, "f:1", "1"), fmt, 100)
    assert sample.loss_mask.all() and sample.input_ids[-1] == tok.eos_token_id
    pre = tokenize_record(parse_record({"input_ids": [1, 2, 3, 4], "loss_mask": [0, 0, 1, 1]}, "f:2", "2"), None, 3)
    assert pre.input_ids.tolist() == [1, 2, 3] and pre.loss_mask.tolist() == [0, 0, 1]
    with pytest.raises(DataError, match="needs a tokenizer"):
        tokenize_record(parse_record({"text": "x"}, "f:3", "3"), None, 10)


def test_truncation_and_filter(tmp_path, tok):
    rows = chat_rows(4) + [{"id": "short", "conversations": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": ""}]}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    samples, stats = load_samples(path, tok, DataConfig(max_length=40, min_loss_tokens=3))
    assert stats.seen == 5 and stats.kept == 4 and stats.dropped_few_loss_tokens == 1
    assert all(s.num_tokens <= 40 for s in samples) and stats.truncated == 4
    assert "short" not in {s.sample_id for s in samples}


def test_prompts_only_data_says_regenerate(tmp_path, tok):
    path = write_jsonl(tmp_path / "p.jsonl", [{"turns": ["a"]}, {"turns": ["b"]}])
    with pytest.raises(DataError, match="dspark data regenerate"):
        load_samples(path, tok)


def test_split_is_seeded_and_order_independent():
    ids = [f"id{i}" for i in range(100)]
    train, held = split_by_id(ids, 0.1, seed=3)
    assert len(held) == 10 and sorted(train + held) == list(range(100))
    assert split_by_id(ids, 0.1, seed=3) == (train, held)
    shuffled = list(reversed(ids))
    assert {shuffled[i] for i in split_by_id(shuffled, 0.1, seed=3)[1]} == {ids[i] for i in held}
    assert split_by_id(ids, 0.1, seed=4)[1] != held
    assert split_by_id(ids[:3], 0.01)[1].__len__() == 1 and split_by_id(ids, 0.0)[1] == []
    with pytest.raises(DataError):
        split_by_id(ids, 1.0)


def test_token_dataset_and_collate(tmp_path, tok):
    samples, _ = load_samples(write_jsonl(tmp_path / "d.jsonl", chat_rows(3)), tok)
    ds = TokenDataset(samples)
    batch = collate_padded([ds[0], ds[2]], pad_token_id=0)
    lengths = [samples[0].num_tokens, samples[2].num_tokens]
    assert batch["input_ids"].shape == (2, max(lengths)) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert torch.equal(batch["loss_mask"][0, : lengths[0]], torch.from_numpy(samples[0].loss_mask.astype(np.int64)))


def test_append_log_repairs_torn_tail_and_locks(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"id": 1}\n{"id": 2}\n{"id": 3, "conv')
    with AppendLog(path, lock=True) as log:
        with pytest.raises(DataError, match="another process"):
            AppendLog(path, lock=True)
        log.write({"id": 4})
    assert [obj["id"] for _, obj in iter_jsonl(path)] == [1, 2, 4]


@pytest.mark.skipif(not SHARED.is_dir(), reason="/work/shared/datasets not present")
def test_shared_prompt_sets_parse():
    records = list(iter_records(SHARED / "mt-bench.jsonl"))
    assert records and all(r.kind == "prompt" for r in records)
    assert max(len(r.user_turns()) for r in records) == 2
    for name in ("gsm8k.jsonl", "humaneval.jsonl"):
        first = json.loads((SHARED / name).read_text().splitlines()[0])
        assert parse_record(first, name, "1").kind == "prompt"
