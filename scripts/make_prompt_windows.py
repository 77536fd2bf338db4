"""Prompt windows for the reference drafters: token windows cut from a corpus built by `dspark data corpus`.

    python scripts/make_prompt_windows.py --corpus .carry/corpus --tokenizer src/dspark/assets/tiny-target \
        --out .carry/ref

Writes three JSONL files of {"input_ids": [...]} (64 tokens each by default), atomically:
* prompts_train.jsonl     the train split's files, shuffled (random.Random(0)); the first 11,000 files,
                          one window each with seeds 0 and 1 (the drafters' training prompts);
* prompts_heldout.jsonl   the next 1,000 files, seed 2 (calibration and evaluation; never trained on);
* prompts_test1000.jsonl  the test split's files, windows with seeds 10, 11, 12, shuffled, first 1,000
                          (the throughput benchmark).
Files shorter than a window give none. With the corpus and tokenizer of docs/benchmarks these
reproduce the files behind quality.md exactly (21,668 / 988 / 1,000 windows).
"""

from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

from tokenizers import Tokenizer

from dspark.errors import DataError
from dspark.reference.corpus import read_documents
from dspark.train.continuations import prompt_windows


def encode_split(corpus: Path, tokenizer: Tokenizer, split: str) -> list[list[int]]:
    texts = [d.text for d in read_documents(corpus, split)]
    return [e.ids for e in tokenizer.encode_batch(texts, add_special_tokens=False)]


def write_windows(path: Path, windows: list[list[int]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps({"input_ids": w}) + "\n" for w in windows))
    os.replace(tmp, path)
    print(f"{path}: {len(windows)} windows")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--tokenizer", type=Path, required=True, help="directory with tokenizer.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--train-files", type=int, default=11_000)
    p.add_argument("--heldout-files", type=int, default=1_000)
    p.add_argument("--test-windows", type=int, default=1_000)
    a = p.parse_args()
    if not (a.tokenizer / "tokenizer.json").is_file():
        raise SystemExit(f"error: {a.tokenizer}/tokenizer.json not found (--tokenizer takes a model or tokenizer directory)")
    tokenizer = Tokenizer.from_file(str(a.tokenizer / "tokenizer.json"))
    try:
        train = encode_split(a.corpus, tokenizer, "train")
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    a.out.mkdir(parents=True, exist_ok=True)
    random.Random(0).shuffle(train)
    first, rest = train[: a.train_files], train[a.train_files: a.train_files + a.heldout_files]
    n = a.prompt_tokens
    write_windows(a.out / "prompts_train.jsonl", prompt_windows(first, n, seed=0) + prompt_windows(first, n, seed=1))
    write_windows(a.out / "prompts_heldout.jsonl", prompt_windows(rest, n, seed=2))
    test = encode_split(a.corpus, tokenizer, "test")
    windows = [w for seed in (10, 11, 12) for w in prompt_windows(test, n, seed=seed)]
    random.Random(0).shuffle(windows)
    write_windows(a.out / "prompts_test1000.jsonl", windows[: a.test_windows])


if __name__ == "__main__":
    main()
