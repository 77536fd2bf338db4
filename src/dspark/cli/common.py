"""Helpers shared by CLI commands: the conventions every command follows, loading models, output paths.

Conventions (one place, so every command reads the same):
* `--device auto` and `--dtype auto` are every command's defaults: auto is CUDA when available, else
  the CPU; the dtype auto is float32 on the CPU and, on a GPU, the checkpoint's own 16-bit dtype
  (`dtype` / `torch_dtype` in its config.json; bfloat16 when it stores float32 or says nothing).
* An output directory is `--output-dir` (`--out`, `--output` and `--output_dir` are accepted as hidden
  aliases); an output file is `--output` (`--out` hidden).
* A list flag takes comma-separated values; where a flag took space-separated values or could be
  repeated, that still works (`--datasets a,b c --datasets d` is `[a, b, c, d]`).
* `--help` shows every default (`HelpFormatter`); aliases are not listed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dspark.output_dir import OutputKind

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_TARGET = ASSETS / "tiny-target"
DEFAULT_DRAFT = ASSETS / "tiny-dspark"

# The report directories `dspark eval --output-dir` and `dspark simulate --output-dir` write (see `dspark.output_dir`).
EVAL_OUTPUT = OutputKind("evaluation report", frozenset({
    "results.json", "traces.jsonl", "acceptance_conditional.png", "acceptance_unconditional.png", "reliability.png",
    "threshold_sweep.png"}))
SIMULATION_OUTPUT = OutputKind("simulation report", frozenset({"simulation.json", "frontier.png", "load.png"}))

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}


# -- help and flag conventions ------------------------------------------------------------------------
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default (unless its help already says it) and hides alias spellings."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default in ([], "")
        if "%(default)" in text or "default" in text.lower() or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"

    def _format_action_invocation(self, action: argparse.Action) -> str:
        hidden = getattr(action, "hidden_aliases", ())
        if not hidden:
            return super()._format_action_invocation(action)
        shown = [s for s in action.option_strings if s not in hidden]
        if action.nargs == 0:
            return ", ".join(shown)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{s} {metavar}" for s in shown)


def add_aliased(parser: Any, names: list[str], hidden: list[str], **kwargs: Any) -> argparse.Action:
    """`add_argument(*names, *hidden)` with the `hidden` spellings accepted but not listed in --help."""
    action = parser.add_argument(*names, *hidden, **kwargs)
    action.hidden_aliases = tuple(hidden)
    return action


def add_output_dir_argument(parser: Any, dest: str = "out", **kwargs: Any) -> argparse.Action:
    """`--output-dir` (hidden aliases `--out`, `--output`, `--output_dir`), stored in `args.<dest>`."""
    kwargs.setdefault("metavar", "DIR")
    return add_aliased(parser, ["--output-dir"], ["--out", "--output", "--output_dir"], dest=dest, **kwargs)


def add_output_file_argument(parser: Any, dest: str = "out", **kwargs: Any) -> argparse.Action:
    """`--output` for an output FILE (hidden alias `--out`), stored in `args.<dest>`."""
    kwargs.setdefault("metavar", "FILE")
    return add_aliased(parser, ["--output"], ["--out"], dest=dest, **kwargs)


class CommaList(argparse.Action):
    """A list flag: comma-separated items, also space-separated and repeatable; `item_type` converts each."""

    def __init__(self, option_strings: list[str], dest: str, item_type: Any = str, nargs: Any = "+", **kwargs: Any) -> None:
        self.item_type = item_type
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        for value in values if isinstance(values, list) else [values]:
            for part in str(value).split(","):
                if part.strip():
                    try:
                        items.append(self.item_type(part.strip()))
                    except (TypeError, ValueError):
                        raise argparse.ArgumentError(self, f"invalid value {part.strip()!r}") from None
        setattr(namespace, self.dest, items)


def dtype_name(text: str) -> str:
    """argparse type of `--dtype`: the canonical name (`bf16` -> `bfloat16`)."""
    return _DTYPE_ALIASES.get(str(text).lower(), str(text).lower())


def add_device_dtype_arguments(parser: Any, what: str = "the models") -> None:
    parser.add_argument("--device", default="auto",
                        help=f"torch device for {what}: auto (cuda when available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", type=dtype_name, choices=DTYPE_CHOICES,
                        help="auto: float32 on the CPU; on a GPU the checkpoint's 16-bit dtype (bfloat16 if it has none)")


def add_model_arguments(parser: Any) -> None:
    parser.add_argument("--target", help=f"target model directory or hub id (default: the embedded {DEFAULT_TARGET.name})")
    parser.add_argument("--draft", help=f"drafter checkpoint directory or hub id (default: the embedded {DEFAULT_DRAFT.name})")
    add_device_dtype_arguments(parser)


# -- devices, dtypes, models --------------------------------------------------------------------------
def resolve_device(device: str | None) -> str:
    """`auto` or unset: cuda when available, else cpu; anything else as given (checked by `validate_args`)."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def checkpoint_dtype(path: str | Path | None) -> str | None:
    """The dtype a local checkpoint's config.json says it is stored in (None: unknown)."""
    if path is None:
        return None
    try:
        raw = json.loads((Path(path).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = raw.get("dtype") or raw.get("torch_dtype") or (raw.get("text_config") or {}).get("dtype")
    return dtype_name(value) if isinstance(value, str) else None


def resolve_dtype_name(dtype: str | None, device: str, checkpoint: str | Path | None = None) -> str:
    """`--dtype auto` (or unset) -> float32 on the CPU, else the checkpoint's 16-bit dtype or bfloat16."""
    if dtype not in (None, "auto"):
        return dtype_name(dtype)
    if not str(device).startswith("cuda"):
        return "float32"
    stored = checkpoint_dtype(checkpoint)
    return stored if stored in ("bfloat16", "float16") else "bfloat16"


def load_target_checked(path: str, dtype: str | None, device: str | None) -> Any:
    """`load_target`, with auto device / dtype resolved, after checking that the weight files are whole and fit
    the config (a truncated file or another model's config.json is named in one line, not a traceback)."""
    from dspark.formats.io import load_target_checked as load

    device = resolve_device(device)
    return load(path, dtype=resolve_dtype_name(dtype, device, path), device=device)


def load_pair(args: argparse.Namespace, need_draft: bool = True) -> tuple[Any, Any]:
    """The target and drafter the flags name, or the embedded defaults (the drafter in the target's dtype)."""
    from dspark import load_drafter
    from dspark.errors import CheckpointError

    target_path = args.target or (str(DEFAULT_TARGET) if DEFAULT_TARGET.is_dir() else None)
    if target_path is None:
        raise CheckpointError("no --target given and no embedded default model is installed")
    device = resolve_device(args.device)
    dtype = resolve_dtype_name(args.dtype, device, target_path)
    target = load_target_checked(target_path, dtype, device)
    draft_path = args.draft or (str(DEFAULT_DRAFT) if args.target is None and DEFAULT_DRAFT.is_dir() else None)
    if draft_path is None:
        if need_draft:
            raise CheckpointError("no --draft given (a drafter checkpoint directory or hub id is required)")
        return target, None
    return target, load_drafter(draft_path, target=target, device=device, dtype=dtype)


# -- outputs ------------------------------------------------------------------------------------------
def check_output_file(path: str | None, flag: str = "--output") -> None:
    """Before any work: an output FILE must not be a directory, and the directory it goes in must exist."""
    from dspark.errors import ConfigError

    if path is None:
        return
    out = Path(path).expanduser()
    if out.is_dir():
        raise ConfigError(f"{flag} {path!r} is a directory; give the path of a file to write")
    if not out.parent.is_dir():
        raise ConfigError(f"{flag} {path!r}: directory {str(out.parent)!r} does not exist")


def check_report_dir(path: str | None, kind: OutputKind, overwrite: bool, flag: str = "--output-dir") -> None:
    """Before any work: the `--output-dir` directory of a report may be written (`dspark.output_dir`)."""
    from dspark.output_dir import check_output_dir

    if path is not None:
        check_output_dir(path, kind, overwrite, flag=flag)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=float))
