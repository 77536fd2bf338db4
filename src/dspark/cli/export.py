"""`dspark export --draft DIR|HUB_ID --format deepspec|specforge --output-dir DIR [--target T] [--dtype D] [--lean]`.

Converts a drafter checkpoint into a directory a serving engine loads: config.json plus safetensors
weights (sharded with an index above `--max-shard-size`), in the dtype asked for. A lean source (the
embedded drafter, a training checkpoint) has no embedding / LM head: `--target` supplies them and
checks that the drafter fits the target; `--lean` writes them left out instead (with the lean marker),
for engines that take them from the target. After the export it prints the vLLM and SGLang command
lines that serve the directory (`serving_commands`).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from dspark.cli.cache import parse_size
from dspark.cli.common import DEFAULT_TARGET, add_output_dir_argument, dtype_name

DTYPES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--draft", required=True, help="drafter checkpoint directory or hub id (any supported format)")
    parser.add_argument("--format", default="deepspec", choices=("deepspec", "specforge"),
                        help="deepspec: what vLLM method 'dspark' and SGLang DSPARK load; specforge: DSparkDraftModel")
    add_output_dir_argument(parser, required=True, help="output directory (must not exist unless --overwrite)")
    parser.add_argument("--target", help="the drafter's target (directory or hub id): fills in a lean checkpoint's "
                                         "embedding / LM head and checks that the drafter fits it")
    parser.add_argument("--dtype", default="auto", type=dtype_name, choices=DTYPES,
                        help="weights' dtype; auto: as the source stores them")
    parser.add_argument("--lean", action="store_true", help="leave out the embedding / LM head (the engine takes "
                                                          "them from the target); default: write them")
    parser.add_argument("--max-shard-size", default="5G", type=parse_size,
                        help="shard the weights above this size (e.g. 5G, 500M)")
    parser.add_argument("--overwrite", action="store_true", help="replace a drafter checkpoint dspark wrote there")


def _target_name(target: str | None, config: Any) -> str:
    """The target to name in serving commands: the flag, else the one recorded in the drafter's config."""
    if target:
        return target
    raw = config.target_config or {}
    return str(raw.get("target_model_name_or_path") or raw.get("_name_or_path") or "TARGET")


def serving_commands(out: Path, config: Any, target: str, fmt: str = "deepspec") -> dict[str, str]:
    """The vLLM and SGLang command lines that serve `target` with the drafter in `out` (SPEC §3.2).

    DSpark and DFlash (both `Qwen3DSparkModel`) are vLLM's method "dspark" and SGLang's DSPARK; Eagle3 is
    "eagle3" / EAGLE3. SGLang reads the DeepSpec format only; no engine serves an MTP-1 drafter."""
    if config.method == "mtp":
        return {}
    drafts = int(config.ttt_length if config.method == "eagle3" else config.block_size)
    spec: dict[str, Any] = {"method": "eagle3" if config.method == "eagle3" else "dspark", "model": str(out),
                            "num_speculative_tokens": drafts}
    if config.method == "dspark" and config.has_confidence:
        spec["enable_adaptive_verification"] = True  # the confidence head chooses how many drafts to verify
    commands = {"vllm": f"vllm serve {shlex.quote(target)} --speculative-config {shlex.quote(json.dumps(spec))}"}
    if fmt == "deepspec":
        algorithm = ("--speculative-algorithm EAGLE3 --speculative-num-steps {n} --speculative-eagle-topk 1 "
                     "--speculative-num-draft-tokens {m}".format(n=drafts, m=drafts + 1)
                     if config.method == "eagle3" else "--speculative-algorithm DSPARK")
        commands["sglang"] = (f"python -m sglang.launch_server --model-path {shlex.quote(target)} {algorithm} "
                              f"--speculative-draft-model-path {shlex.quote(str(out))}")
    return commands


def run(args: argparse.Namespace) -> int:
    from dspark.cli.common import load_target_checked
    from dspark.formats import CHECKPOINT, export_drafter, is_lean, read_drafter_config
    from dspark.output_dir import check_output_dir

    check_output_dir(args.out, CHECKPOINT, args.overwrite, flag="--output-dir")  # before anything is loaded
    config, src_fmt = read_drafter_config(args.draft)
    target = load_target_checked(args.target, "float32", "cpu") if args.target else None
    if target is None and is_lean(args.draft) and not args.lean:
        from dspark.errors import ConfigError

        hint = (f" (the embedded drafter's target is {DEFAULT_TARGET})"
                if Path(args.draft).expanduser().resolve() == DEFAULT_TARGET.parent.joinpath("tiny-dspark") else "")
        raise ConfigError(f"--draft {args.draft!r} is a lean checkpoint (no embedding / LM head): pass --target with "
                          f"its target model{hint}, or --lean to export it lean")
    out = export_drafter(args.draft, args.out, args.format, overwrite=args.overwrite, target=target,
                         dtype=None if args.dtype == "auto" else args.dtype, lean=args.lean,
                         max_shard_bytes=args.max_shard_size, flag="--output-dir")
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"exported {config.method} drafter ({src_fmt} -> {args.format}{', lean' if args.lean else ''}) to {out}: "
          f"{', '.join(files)}")
    commands = serving_commands(out, config, _target_name(args.target, config), args.format)
    if not commands:
        print("no serving engine loads MTP-1 drafters; use `dspark serve` or `dspark generate`")
    for engine, line in commands.items():
        print(f"serve it with {'vLLM' if engine == 'vllm' else 'SGLang'}:\n  {line}")
    return 0
