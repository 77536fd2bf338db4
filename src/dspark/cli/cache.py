"""`dspark cache build | info | estimate`: target-feature caches (DeepSpec v2 layout or compact fp8).

    dspark cache build --target DIR --data conv.jsonl --output-dir CACHE [--target-layer-ids 1,9,17,25,33]
                       [--format standard|compact] [--max-length 4096] [--batch-size 8] [--max-shard-bytes 1G]
    dspark cache info CACHE [--verify]
    dspark cache estimate --target DIR|config.json [--target-layer-ids ...] (--data FILE | --num-tokens N)

`build` resumes a killed run when given the same arguments, refuses (before loading the target) an
--output-dir that holds a complete cache or anything else, and removes what it wrote when it fails on its
input. Each command prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from dspark.cli.common import CommaList, add_device_dtype_arguments, add_output_dir_argument
from dspark.errors import ConfigError

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'4G', '512M', '1000000' -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", str(text).upper())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1G, 512M, 1000000)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def parse_layer_ids(values: list[str | int] | None) -> list[int] | None:
    """`["1,9", "17"]` -> `[1, 9, 17]`; None stays None (use the target's defaults)."""
    if not values:
        return None
    try:
        return [int(v) for item in values for v in str(item).split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"--target-layer-ids must be integers, got {values}") from exc


def _json_kwargs(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--chat-template-kwargs is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError("--chat-template-kwargs must be a JSON object")
    return value


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target-layer-ids", action=CommaList, metavar="ID",
                        help="target layers to cache (comma-separated; default: 5 spread over depth)")
    parser.add_argument("--max-length", type=int, default=4096, help="truncate samples to this many tokens")
    parser.add_argument("--min-loss-tokens", type=int, default=2, help="drop samples with fewer loss tokens")
    parser.add_argument("--chat-template-kwargs", default='{"enable_thinking": false}',
                        help="JSON passed to the tokenizer's chat template")


def _data_config(args: argparse.Namespace) -> Any:
    from dspark.train.data import DataConfig

    return DataConfig(max_length=args.max_length, min_loss_tokens=args.min_loss_tokens,
                      chat_template_kwargs=_json_kwargs(args.chat_template_kwargs))


def _print_table(rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


# -- build --------------------------------------------------------------------------------------------
def add_arguments_build(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="target model directory or hub id")
    parser.add_argument("--data", required=True, action=CommaList, metavar="FILE", help="JSONL data files (comma-separated)")
    add_output_dir_argument(parser, dest="output", required=True, help="cache directory (new, or a killed build to resume)")
    parser.add_argument("--format", choices=["standard", "compact"], default="standard",
                        help="standard = DeepSpec bf16 layout; compact = fp8 + per-row scales, final hidden on loss rows")
    _add_data_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=8, help="samples per target forward")
    parser.add_argument("--max-shard-bytes", type=parse_size, default=1 << 30, help="shard size limit (e.g. 4G)")
    parser.add_argument("--limit", type=int, help="cache at most this many samples")
    add_device_dtype_arguments(parser, "the target")


def run_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dspark.cli.common import load_target_checked
    from dspark.train.cache_build import build_cache
    from dspark.train.cache_writer import check_cache_dir

    check_cache_dir(args.output)  # before loading the target
    target = load_target_checked(args.target, args.dtype, args.device)
    with tqdm(desc="cache build", unit="sample") as bar:
        def progress(num_samples: int, consumed: int) -> None:
            bar.update(num_samples - bar.n)
            bar.set_postfix(records=consumed, refresh=False)

        manifest = build_cache(target, args.data, args.output, layer_ids=parse_layer_ids(args.target_layer_ids),
                               data_config=_data_config(args), cache_format=args.format, batch_size=args.batch_size,
                               max_shard_bytes=args.max_shard_bytes, limit=args.limit, on_batch=progress)
    summary = {"output": args.output, "format": args.format, "num_samples": manifest["num_samples"],
               "num_shards": manifest["num_shards"], "target_layer_ids": manifest["target_layer_ids"],
               "hidden_size": manifest["hidden_size"]}
    _print_table([(k, v) for k, v in summary.items()])
    print(json.dumps(summary))
    return 0


# -- info ---------------------------------------------------------------------------------------------
def add_arguments_info(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", help="cache directory")
    parser.add_argument("--verify", action="store_true", help="hash every shard and decode every sample")


def run_info(args: argparse.Namespace) -> int:
    from dspark.train.cache import TargetCache
    from dspark.train.cache_estimate import format_bytes

    cache = TargetCache(args.cache)
    info: dict[str, Any] = cache.describe()
    if args.verify:
        info.update(cache.verify())
    rows = [(k, v) for k, v in info.items() if k not in ("shard_bytes", "index_bytes")]
    rows += [("size on disk", format_bytes(info["shard_bytes"] + info["index_bytes"]))]
    _print_table(rows)
    print(json.dumps(info))
    return 0


# -- estimate -----------------------------------------------------------------------------------------
def add_arguments_estimate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="target model directory or its config.json")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", action=CommaList, metavar="FILE",
                        help="JSONL data files to count (comma-separated; needs the target's tokenizer)")
    source.add_argument("--num-tokens", type=int, help="number of tokens to estimate for")
    parser.add_argument("--num-samples", type=int, help="with --num-tokens: number of samples (index size)")
    parser.add_argument("--last-hidden-fraction", type=float, default=1.0,
                        help="with --num-tokens: fraction of rows whose final hidden state a loss uses (compact)")
    _add_data_arguments(parser)


def run_estimate(args: argparse.Namespace) -> int:
    from dspark.targets import validate_layer_ids
    from dspark.targets.layer_ids import default_layer_ids
    from dspark.train.cache_estimate import count_tokens, estimate, format_bytes, read_target_shape

    shape = read_target_shape(args.target)
    ids = parse_layer_ids(args.target_layer_ids)
    layer_ids = validate_layer_ids(ids, shape.num_layers) if ids else default_layer_ids(shape.num_layers, 5)
    if args.data:
        count = count_tokens(args.data, _load_tokenizer(shape.path.parent), _data_config(args))
        num_tokens, num_samples, fraction = count.num_tokens, count.num_samples, count.last_fraction
    else:
        if not 0.0 <= args.last_hidden_fraction <= 1.0:
            raise ConfigError("--last-hidden-fraction must be in [0, 1]")
        num_tokens, num_samples, fraction = args.num_tokens, args.num_samples, args.last_hidden_fraction
    result = estimate(shape.hidden_size, len(layer_ids), num_tokens, num_samples, fraction)
    result.update(target=str(shape.path), target_layer_ids=layer_ids)
    std, cmp_ = result["standard"], result["compact"]
    _print_table([
        ("target", f"{shape.path} (hidden {shape.hidden_size}, {shape.num_layers} layers)"),
        ("layer ids", f"{layer_ids} (n={len(layer_ids)})"),
        ("tokens", f"{num_tokens:,}" + (f" in {num_samples:,} samples" if num_samples else "")),
        ("standard", f"{std['bytes_per_token']:,} bytes/token, total {format_bytes(std['total_bytes'])}"),
        ("compact", f"{cmp_['bytes_per_token']:,.1f} bytes/token ({cmp_['ratio_to_standard']:.1%} of standard; "
                    f"final hidden on {fraction:.1%} of rows; worst case {cmp_['bytes_per_token_worst_case']:,}), "
                    f"total {format_bytes(cmp_['total_bytes'])}"),
    ])
    print(json.dumps(result))
    return 0


def _load_tokenizer(model_dir: Any) -> Any:
    from pathlib import Path

    from transformers import AutoTokenizer

    if not any((Path(model_dir) / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None  # pre-tokenized data still works; text records then raise a clear DataError
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
