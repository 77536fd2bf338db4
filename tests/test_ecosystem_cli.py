"""The command-line conventions users bring from vLLM / SGLang / HF (issue 14, item 2), for every command."""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import fields

import pytest

from dspark.cli import build_parser, main
from dspark.cli.common import CommaList, HelpFormatter, resolve_dtype_name
from dspark.train.config import HELP, TrainConfig


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, path + (name,))
    if path:
        yield " ".join(path), parser


COMMANDS = dict(_commands(build_parser()))


def test_every_command_is_covered():
    assert {"generate", "export", "train", "eval", "calibrate", "profile", "simulate", "cache build",
            "data regenerate", "serve"} <= set(COMMANDS)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("dspark ") and "torch " in out and "transformers " in out


@pytest.mark.parametrize("argv", [["-v", "simulate", "--roofline", "m"], ["simulate", "-v", "--roofline", "m"],
                                  ["simulate", "--roofline", "m", "--verbose"],
                                  ["data", "-v", "regenerate", "--target", "T", "--input", "i", "--output", "o"],
                                  ["data", "regenerate", "--target", "T", "--input", "i", "--output", "o", "-v"]])
def test_verbose_anywhere(argv):
    assert build_parser().parse_args(argv).verbose is True


def test_not_verbose_by_default():
    assert build_parser().parse_args(["simulate", "--roofline", "m"]).verbose is False


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_device_and_dtype_default_to_auto(name):
    for action in COMMANDS[name]._actions:
        if action.dest in ("device", "dtype"):
            assert action.default == "auto", (name, action.dest)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_default_and_no_alias(name):
    parser = COMMANDS[name]
    assert parser.formatter_class is HelpFormatter
    text = parser.format_help()
    formatter = parser._get_formatter()
    for action in parser._actions:
        unset = action.default is None or action.default is False or action.default in (argparse.SUPPRESS, [], "")
        if not action.option_strings or unset or action.help is None:
            continue  # nothing to show: "unset" is what the help text says
        assert "default" in formatter._get_help_string(action).lower(), (name, action.option_strings)
    for alias in ("--out ", "--out,", "--output_dir"):
        assert alias not in text, (name, alias)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_directories_are_spelled_output_dir(name):
    """Directories: --output-dir; the old spellings still parse (hidden); files are --output."""
    for action in COMMANDS[name]._actions:
        if "--out" in action.option_strings:
            canonical = action.option_strings[0]
            assert canonical in ("--output-dir", "--output"), (name, action.option_strings)
            assert set(getattr(action, "hidden_aliases", ())) >= {"--out"}


def test_old_output_spellings_still_work():
    parser = build_parser()
    for flag in ("--output-dir", "--out", "--output", "--output_dir"):
        assert parser.parse_args(["simulate", "--roofline", "m", flag, "D"]).out == "D"
        assert parser.parse_args(["cache", "build", "--target", "t", "--data", "d", flag, "C"]).output == "C"
    assert parser.parse_args(["profile", "--out", "f.json"]).out == "f.json"


def test_lists_are_comma_separated_and_keep_old_styles():
    parser = build_parser()
    args = parser.parse_args(["eval", "--datasets", "gsm8k,humaneval", "mt-bench", "--datasets", "x.jsonl",
                              "--thresholds", "0,0.5", "0.9"])
    assert args.datasets == ["gsm8k", "humaneval", "mt-bench", "x.jsonl"]
    assert args.thresholds == [0.0, 0.5, 0.9]
    args = parser.parse_args(["cache", "build", "--target", "t", "--data", "a.jsonl,b.jsonl", "--data", "c.jsonl",
                              "--output-dir", "c", "--target-layer-ids", "1,3", "5"])
    assert args.data == ["a.jsonl", "b.jsonl", "c.jsonl"] and args.target_layer_ids == ["1", "3", "5"]
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--thresholds", "0.1,abc"])
    assert isinstance(next(a for a in COMMANDS["calibrate"]._actions if a.dest == "data"), CommaList)


def test_dtype_auto():
    assert resolve_dtype_name("auto", "cpu") == "float32"
    assert resolve_dtype_name("auto", "cuda") == "bfloat16"
    assert resolve_dtype_name("bf16", "cpu") == "bfloat16"
    assert build_parser().parse_args(["generate", "--dtype", "bf16"]).dtype == "bfloat16"


def test_dtype_auto_follows_the_checkpoint_on_a_gpu(tmp_path):
    (tmp_path / "config.json").write_text('{"torch_dtype": "float16"}')
    assert resolve_dtype_name("auto", "cuda:0", tmp_path) == "float16"
    (tmp_path / "config.json").write_text('{"dtype": "float32"}')
    assert resolve_dtype_name("auto", "cuda", tmp_path) == "bfloat16"  # fp32 checkpoints serve in bf16 (as vLLM)
    assert resolve_dtype_name("auto", "cpu", tmp_path) == "float32"


def test_train_print_config_lists_every_key(capsys):
    assert main(["train", "--print-config", "--set", "lr=1e-3", "--output-dir", "runs/x"]) == 0
    text = capsys.readouterr().out
    parsed = tomllib.loads(text)
    names = [f.name for f in fields(TrainConfig)]
    assert set(HELP) == set(names)
    for name in names:
        line = next(l for l in text.splitlines() if l.lstrip("# ").startswith(f"{name} ="))
        assert HELP[name] in line, name
    assert parsed["lr"] == 1e-3 and "[default: 0.0006]" in text and parsed["output_dir"] == "runs/x"
    defaults = TrainConfig()
    assert all(parsed[k] == getattr(defaults, k) for k in parsed if k not in ("lr", "output_dir"))
    assert TrainConfig(**parsed).lr == 1e-3  # the printed file is a config


def test_train_help_lists_every_config_key():
    text = COMMANDS["train"].format_help()
    assert "--print-config" in text and "--from-deepspec" in text
    for f in fields(TrainConfig):
        assert f"  {f.name} = " in text, f.name
