"""`dspark tokenizer`: train the reference byte-level BPE tokenizer on a corpus.

    dspark tokenizer --corpus runs/corpus --vocab-size 8192 --output-dir runs/tokenizer

The output is a standard Hugging Face tokenizer directory (`AutoTokenizer.from_pretrained`), with
bos/eos/pad, the drafters' `<|mask|>` token, chat markers and a chat template
(see `dspark.reference.tokenizer`). An existing --output-dir is never deleted: it is refused unless it holds a
tokenizer dspark wrote and --overwrite is given (checked before training; `dspark.output_dir`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dspark.cli.common import add_output_dir_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", required=True, type=Path, help="corpus directory (`dspark data corpus`)")
    parser.add_argument("--vocab-size", type=int, default=8192)
    add_output_dir_argument(parser, required=True, type=Path, help="output tokenizer directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a tokenizer dspark wrote in --output-dir")
    parser.add_argument("--max-bytes", type=int, default=64_000_000,
                        help="train on at most this many bytes of the train split (0: all)")
    parser.add_argument("--min-frequency", type=int, default=2)


def run(args: argparse.Namespace) -> int:
    from dspark.output_dir import check_output_dir
    from dspark.reference.tokenizer import TOKENIZER_OUTPUT, save_tokenizer, train_tokenizer

    check_output_dir(args.out, TOKENIZER_OUTPUT, args.overwrite, flag="--output-dir")
    tokenizer = train_tokenizer(args.corpus, args.vocab_size, args.max_bytes, args.min_frequency)
    save_tokenizer(tokenizer, args.out, overwrite=args.overwrite)
    sample = "def add(a, b):\n    return a + b\n"
    print(f"vocabulary {tokenizer.get_vocab_size()} tokens; {sample!r} -> {len(tokenizer.encode(sample).ids)} tokens")
    print(json.dumps({"out": str(args.out), "vocab_size": tokenizer.get_vocab_size()}))
    return 0
