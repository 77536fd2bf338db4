"""Boundary checks of every command's flags, run by `dspark.cli.main` before a command does any work.

`CHECKS` maps an argparse `dest` to its check: a `Range` for numbers, or a function for the values
with a rule of their own (temperature, device). Every numeric flag of every command has an entry
(`tests/test_validation_cli.py` enforces it); a flag left unset (None) is not checked. A value outside
its range is a `ConfigError`: one line, exit status 2, nothing loaded or written.

Checks that need a loaded model (the context length in `generate`) live in `check_context_length`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from dspark.errors import ConfigError
from dspark.ranges import (
    ANY, AT_LEAST_ONE, FRACTION, MAX_TOKENS, NON_NEGATIVE, POSITIVE, Range, check_device, check_temperature,
)

TOKENS = Range(1, MAX_TOKENS)
EFFICIENCY = Range(0, 1, open_low=True)

CHECKS: dict[str, Range | Callable[[str, Any], None]] = {
    # sampling and decoding
    "temperature": check_temperature,
    "top_p": Range(0, 1, open_low=True),
    "top_k": Range(0, note="0: off"),
    "max_new_tokens": TOKENS,
    "seed": ANY,
    "verify_len": Range(0, note="0: verify no draft"),
    "threshold": FRACTION,
    "thresholds": FRACTION,
    "device": check_device,
    # prompts, batches, data
    "max_prompts": Range(0, note="0: all"),
    "max_turns": AT_LEAST_ONE,
    "batch_size": AT_LEAST_ONE,
    "limit": AT_LEAST_ONE,
    "num_bins": AT_LEAST_ONE,
    "min_events": AT_LEAST_ONE,
    "max_length": TOKENS,
    "min_loss_tokens": NON_NEGATIVE,
    "max_shard_bytes": AT_LEAST_ONE,
    "max_shard_size": AT_LEAST_ONE,
    "num_tokens": AT_LEAST_ONE,
    "num_samples": AT_LEAST_ONE,
    "last_hidden_fraction": FRACTION,
    # endpoint regeneration
    "concurrency": AT_LEAST_ONE,
    "retries": NON_NEGATIVE,
    "timeout": POSITIVE,
    "backoff": NON_NEGATIVE,
    # corpus and tokenizer
    "validation_fraction": Range(0, 1, open_high=True),
    "test_fraction": Range(0, 1, open_high=True),
    "max_documents": Range(0, note="0: all"),
    "max_file_bytes": AT_LEAST_ONE,
    "prompts_per_set": NON_NEGATIVE,
    "chat_fraction": FRACTION,
    "workers": Range(0, note="0: auto"),
    "vocab_size": AT_LEAST_ONE,
    "max_bytes": Range(0, note="0: all"),
    "min_frequency": NON_NEGATIVE,
    # pretraining
    "steps": AT_LEAST_ONE,
    "micro_batch_size": Range(0, note="0: the batch size"),
    "seq_len": Range(2, MAX_TOKENS),
    "lr": POSITIVE,
    "warmup_steps": NON_NEGATIVE,
    "time_budget": Range(0, note="0: none"),
    "eval_every": AT_LEAST_ONE,
    "eval_tokens": AT_LEAST_ONE,
    # simulator
    "context_len": TOKENS,
    "drafter_layers": Range(0, note="0: free drafting"),
    "token_tile": AT_LEAST_ONE,
    "overhead_ms": NON_NEGATIVE,
    "bandwidth_efficiency": EFFICIENCY,
    "compute_efficiency": EFFICIENCY,
    "sharpness": POSITIVE,
    "gamma": AT_LEAST_ONE,
    "max_concurrency": AT_LEAST_ONE,
    "num_requests": AT_LEAST_ONE,
    "warmup_requests": NON_NEGATIVE,
    # server and its benchmark
    "port": Range(0, 65535),
    "max_num_seqs": AT_LEAST_ONE,
    "max_model_len": Range(2, MAX_TOKENS),
    "max_num_batched_tokens": AT_LEAST_ONE,
    "num_pages": Range(2, note="page 0 is reserved"),
    "max_queue": NON_NEGATIVE,
    "drain_timeout": NON_NEGATIVE,
    "torch_threads": Range(0, note="0: torch's default"),
    "num_prompts": AT_LEAST_ONE,
    "max_tokens": TOKENS,
    # profiler
    "context": TOKENS,
    "repeats": AT_LEAST_ONE,
    "warmup": NON_NEGATIVE,
    "round_tokens": TOKENS,
}


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def validate_args(args: argparse.Namespace) -> None:
    """Apply `CHECKS` to every flag of the parsed command line; floats without an entry must be finite."""
    for dest, value in vars(args).items():
        if value is None or dest.startswith("_"):
            continue
        check = CHECKS.get(dest)
        if isinstance(check, Range):
            check.check(flag_name(dest), value)
        elif check is not None:
            check(flag_name(dest), value)
        elif isinstance(value, float):
            ANY.check(flag_name(dest), value)


def check_context_length(target: Any, drafter: Any, prompt_len: int, max_new_tokens: int) -> None:
    """Refuse a prompt plus budget (plus one round of drafts) beyond the target's position limit."""
    max_positions = int(getattr(target.config, "max_position_embeddings", 0) or 0)
    slots = int(drafter.config.num_drafts) if drafter is not None else 0
    need = prompt_len + max_new_tokens + slots + 1
    if max_positions and need > max_positions:
        raise ConfigError(f"a {prompt_len}-token prompt plus --max-new-tokens {max_new_tokens}"
                          f"{f' and {slots} drafts' if slots else ''} needs {need} positions, more than the target's "
                          f"{max_positions}; shorten the prompt or lower --max-new-tokens")
