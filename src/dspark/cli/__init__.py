"""`dspark <command>`: the command-line entry point.

Each command lives in its own module under `dspark.cli` and exposes `add_arguments(parser)` and
`run(args) -> int`. This file only wires them together; a module that is missing (an optional part
not installed) is skipped. Library errors (`DSparkError` and friends) become one clear line on
stderr and a non-zero exit code instead of a traceback. Every flag is checked against its declared
range (`dspark.cli.validation`) before the command runs. Every parser shows its defaults in --help
(`common.HelpFormatter`); `-v/--verbose` is accepted anywhere on the command line; `--version` prints
the versions of dspark, torch and transformers.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (command path, module, one-line help). Nested paths give `dspark data regenerate` etc.
COMMANDS: list[tuple[tuple[str, ...], str, str]] = [
    (("generate",), "dspark.cli.generate", "speculative generation with a target and a drafter"),
    (("export",), "dspark.cli.export", "convert a drafter checkpoint between formats"),
    (("data", "regenerate"), "dspark.cli.regenerate", "have the target answer every user turn"),
    (("data", "corpus"), "dspark.cli.corpus", "build a corpus from local source files"),
    (("cache", "build"), "dspark.cli.cache", "build a target-feature cache"),
    (("cache", "info"), "dspark.cli.cache", "describe a target-feature cache"),
    (("cache", "estimate"), "dspark.cli.cache", "estimate the size of a target-feature cache"),
    (("train",), "dspark.cli.train", "train a drafter"),
    (("calibrate",), "dspark.cli.calibrate", "fit sequential temperature scaling"),
    (("eval",), "dspark.cli.eval", "accepted-length evaluation"),
    (("simulate",), "dspark.cli.simulate", "serving simulator for capacity planning"),
    (("profile",), "dspark.cli.profile", "measure the decoder's SPS table and draft cost"),
    (("pretrain",), "dspark.cli.pretrain", "pretrain a reference target model"),
    (("tokenizer",), "dspark.cli.tokenizer", "train a byte-level BPE tokenizer"),
    (("serve",), "dspark.cli.serve", "OpenAI-compatible HTTP server on the engine"),
    (("bench", "serve"), "dspark.cli.bench", "benchmark an OpenAI-compatible server through its HTTP API"),
]


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from dspark import __version__

    parts = [f"dspark {__version__}"]
    for dist in ("torch", "transformers"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def _add_verbose(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # Below the top level the default is SUPPRESS, so a subcommand without -v keeps the top level's value.
    parser.add_argument("-v", "--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="log at INFO level (anywhere on the command line)")


def build_parser() -> argparse.ArgumentParser:
    from dspark.cli.common import HelpFormatter

    parser = argparse.ArgumentParser(prog="dspark", description="DSpark speculative decoding toolkit",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    _add_verbose(parser, top=True)
    groups: dict[tuple[str, ...], argparse._SubParsersAction] = {(): parser.add_subparsers(dest="command")}
    for path, module_name, help_text in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("dspark.cli"):
                continue  # command not built (yet)
            raise
        for depth in range(1, len(path)):
            prefix = path[:depth]
            if prefix not in groups:
                group_parser = groups[path[: depth - 1]].add_parser(prefix[-1], help=f"{prefix[-1]} commands",
                                                                    formatter_class=HelpFormatter)
                _add_verbose(group_parser)
                groups[prefix] = group_parser.add_subparsers(dest=f"command_{depth}")
        sub = groups[path[:-1]].add_parser(path[-1], help=help_text, description=help_text,
                                           formatter_class=HelpFormatter)
        _add_verbose(sub)
        adder = getattr(module, f"add_arguments_{path[-1]}", None) or module.add_arguments
        adder(sub)
        runner = getattr(module, f"run_{path[-1]}", None) or module.run
        sub.set_defaults(_run=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    from dspark.cli.validation import validate_args
    from dspark.errors import DSparkError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    runner = getattr(args, "_run", None)
    if runner is None:
        parser.print_help()
        return 2
    try:
        validate_args(args)
        return int(runner(args) or 0)
    except DSparkError as exc:
        print(f"dspark: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"dspark: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
