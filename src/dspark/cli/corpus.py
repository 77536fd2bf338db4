"""`dspark data corpus`: build the reference corpus, its held-out prompt sets and its chat documents.

    dspark data corpus --output-dir runs/corpus                # this interpreter's stdlib + site-packages
    dspark data corpus --roots ~/src/project,/usr/lib/python3 --output-dir runs/corpus

Writes train/validation/test JSONL.gz splits and provenance.json (see `dspark.reference.corpus`),
`prompts/{code-completion,code-instruct,prose}.jsonl` from the test split and `chat_train.jsonl.gz`
from the train split (see `dspark.reference.prompts`). The whole directory is built under a temporary
name and installed at the end, so a failed or killed run leaves no partial corpus and no `*.tmp` files;
an existing --output-dir is refused before any work unless it holds a corpus dspark wrote and --overwrite is
given (`dspark.output_dir`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dspark.cli.common import CommaList, add_output_dir_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--roots", action=CommaList, default=None, metavar="DIR",
                        help="directories (or files) to read, comma-separated; default: this interpreter's stdlib "
                             "and site-packages")
    add_output_dir_argument(parser, required=True, type=Path, help="output corpus directory")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus dspark wrote in --output-dir")
    parser.add_argument("--validation-fraction", type=float, default=0.01)
    parser.add_argument("--test-fraction", type=float, default=0.02)
    parser.add_argument("--max-documents", type=int, default=0, help="keep at most N documents (0: all)")
    parser.add_argument("--max-file-bytes", type=int, default=256_000, help="skip larger files")
    parser.add_argument("--prompts-per-set", type=int, default=500, help="prompts per held-out prompt set")
    parser.add_argument("--chat-fraction", type=float, default=0.5,
                        help="fraction of train files that chat documents are made from (0: none)")
    parser.add_argument("--workers", type=int, default=0, help="processes for prompt extraction (0: auto)")


def run(args: argparse.Namespace) -> int:
    from dspark.output_dir import OutputKind, check_output_dir, write_output_dir
    from dspark.reference.corpus import PROVENANCE_FILE, SPLITS, CorpusConfig, build_corpus
    from dspark.reference.prompts import CHAT_FILE, build_chat_documents, build_prompt_sets

    kind = OutputKind("corpus", frozenset({*(f"{s}.jsonl.gz" for s in SPLITS), PROVENANCE_FILE, "prompts", CHAT_FILE}))
    check_output_dir(args.out, kind, args.overwrite, flag="--output-dir")
    config = CorpusConfig(
        roots=tuple(args.roots or ()),
        max_bytes=args.max_file_bytes,
        max_documents=args.max_documents,
        validation_fraction=args.validation_fraction,
        test_fraction=args.test_fraction,
    )
    counts: dict = {}

    def fill(tmp: Path) -> None:
        counts["stats"] = build_corpus(tmp, config)
        counts["prompts"] = build_prompt_sets(tmp, tmp / "prompts", max_per_set=args.prompts_per_set, workers=args.workers)
        counts["chat"] = build_chat_documents(tmp, fraction=args.chat_fraction, workers=args.workers) if args.chat_fraction > 0 else 0

    write_output_dir(args.out, kind, fill, args.overwrite, flag="--output-dir")
    stats, prompts, chat = counts["stats"], counts["prompts"], counts["chat"]
    print(f"{'split':<12}{'documents':>10}{'MB':>10}")
    for split, count in stats.documents.items():
        print(f"{split:<12}{count:>10}{stats.bytes[split] / 1e6:>10.1f}")
    print(f"files seen {stats.files_seen}, duplicates {stats.duplicates}, skipped {stats.skipped}")
    print(f"prompt sets in {args.out / 'prompts'}: {prompts}; chat documents: {chat}")
    print(json.dumps({"out": str(args.out), "documents": stats.documents, "bytes": stats.bytes,
                      "duplicates": stats.duplicates, "prompts": prompts, "chat_documents": chat}))
    return 0
