"""`dspark calibrate`: fit Sequential Temperature Scaling (SPEC §2.4) and store it in the checkpoint.

    dspark calibrate --target DIR --draft DIR --data heldout.jsonl                  # in place
    dspark calibrate --target DIR --draft DIR --data heldout.jsonl --output-dir DIR2  # new checkpoint

Decodes held-out prompts with every slot verified (calibration off, so the recorded confidences are
raw), fits one temperature per slot left to right, and stores them as `dspark_calibration_temperatures`
in config.json. In place, only config.json is rewritten (atomically; weights and other files are
untouched); with --output-dir a full checkpoint is saved in the source's format, dtype and leanness (an
existing --output-dir is checked before any decoding, `dspark.output_dir`). Beside it: calibration.json
(per-slot ECE / ROC-AUC before and after, on the fitting rounds) and calibration_reliability.png.
A slot with too few survivals or failures (`--min-events`) keeps the temperature the checkpoint already
had (T = 1 when it had none), and the output says which slots those are. Prints a table, then ONE JSON
line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dspark.cli.common import DEFAULT_DRAFT, CommaList, add_model_arguments, add_output_dir_argument, load_pair, print_json
from dspark.cli.eval import add_decode_arguments, decode_settings, print_calibration
from dspark.errors import ConfigError
from dspark.output_dir import check_output_dir


PLOT_NAME = "calibration_reliability.png"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--data", action=CommaList, required=True, metavar="FILE|NAME",
                        help="held-out prompts (JSONL: turns, conversations, text or input_ids), or shared set names "
                             "(comma-separated)")
    add_output_dir_argument(parser, default=None, help="write a calibrated copy here (default: update --draft in place)")
    parser.add_argument("--overwrite", action="store_true", help="replace a drafter checkpoint dspark wrote in --out")
    parser.add_argument("--no-plots", action="store_true", help="skip the reliability-diagram PNG")
    parser.add_argument("--min-events", type=int, default=10,
                        help="survivals and failures a slot needs to get a fitted temperature (else T = 1)")
    add_decode_arguments(parser, max_prompts=200)


def _source_layout(draft_dir: Path) -> tuple[str, str | None, bool]:
    """(format, stored dtype, lean: saved without embedding / LM head) of a checkpoint directory."""
    from dspark.formats import read_drafter_config
    from dspark.formats.io import load_weights, read_json

    _, fmt = read_drafter_config(draft_dir)
    raw = read_json(draft_dir / "config.json")
    keys = load_weights(draft_dir).keys()
    lean = "embed_tokens.weight" not in keys or "lm_head.weight" not in keys
    return fmt, raw.get("dtype"), lean


def _rewrite_config(draft_dir: Path, temperatures: list[float]) -> None:
    """Set the calibration key of config.json atomically, leaving every other key and file as it was."""
    from dspark.formats.deepspec import CALIB_KEY
    from dspark.formats.io import read_json

    path = draft_dir / "config.json"
    raw = read_json(path)
    raw[CALIB_KEY] = [float(t) for t in temperatures]
    fd, tmp = tempfile.mkstemp(prefix=".config.json.tmp-", dir=draft_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unfitted_slots(accepted: Any, verified: Any, num_slots: int, min_events: int) -> list[int]:
    """Slots (0-based) with fewer than `min_events` survivals or failures: `fit_sts` gives them T = 1."""
    from dspark.eval.metrics import slot_outcomes

    observed, survived = slot_outcomes(accepted, verified, num_slots)  # [N, γ]
    wins, losses = survived.sum(0), (observed & ~survived).sum(0)
    return [k for k in range(num_slots) if min(int(wins[k]), int(losses[k])) < min_events]


def _save_copy(drafter: Any, draft_dir: Path, out: Path, overwrite: bool, extra: dict[str, Any],
               write_extra: Any = None) -> Path:
    import torch

    from dspark.formats import save_drafter

    fmt, dtype, lean = _source_layout(draft_dir)
    if dtype and hasattr(torch, str(dtype)):
        drafter = drafter.to(getattr(torch, str(dtype)))  # keep the stored precision (bf16 stays bf16)
    kwargs: dict[str, Any] = {}
    if lean and "include_frozen" in inspect.signature(save_drafter).parameters:
        kwargs["include_frozen"] = False
    return save_drafter(drafter, out, fmt=fmt, overwrite=overwrite, extra_files=extra, write_extra=write_extra, **kwargs)


def run(args: argparse.Namespace) -> int:
    from dspark.eval.calibration import apply_temperatures, confidence_logits, fit_sts
    from dspark.eval.reliability import calibration_report
    from dspark.eval.runner import combined_trace, resolve_prompt_sets, run_prompt_sets

    if args.out is None and args.draft is None:
        raise ConfigError("calibrating in place needs an explicit --draft (or pass --output-dir for a calibrated copy)")
    draft_dir = Path(args.draft).expanduser() if args.draft else DEFAULT_DRAFT
    out_dir = Path(args.out).expanduser() if args.out else None
    if out_dir is not None:
        from dspark.formats import CHECKPOINT  # torch: not at import time (`dspark --help` stays fast)

        check_output_dir(out_dir, CHECKPOINT, args.overwrite, flag="--output-dir")  # before any decoding
    settings = decode_settings(args, verify_len=None)
    prompt_sets = resolve_prompt_sets(args.data)
    target, drafter = load_pair(args)
    if not drafter.config.has_confidence:
        raise ConfigError(f"drafter {str(draft_dir)!r} ({drafter.config.method}) has no confidence head: "
                          "there is nothing to calibrate")
    previous = drafter.config.calibration_temperatures
    runs = run_prompt_sets(target, drafter, prompt_sets, settings, max_prompts=args.max_prompts or None,
                           progress=args.progress)
    trace = combined_trace(runs)
    logits = confidence_logits(trace.raw_confidences)  # [N, γ]
    fit = fit_sts(logits, trace.accepted, trace.verified, num_bins=args.num_bins, min_events=args.min_events)
    temps = [float(t) for t in fit.temperatures]
    unfitted = _unfitted_slots(trace.accepted, trace.verified, trace.num_slots, args.min_events)
    for k in unfitted if previous is not None else []:
        temps[k] = float(previous[k])  # too little data for this slot: keep what was fitted before
    before = calibration_report(trace.raw_confidences, trace.accepted, trace.verified, args.num_bins)
    after = calibration_report(apply_temperatures(logits, temps), trace.accepted, trace.verified, args.num_bins)
    bins_before, bins_after = before.pop("bins"), after.pop("bins")
    for rep in (before, after):
        rep["bins_pooled"] = rep["bins_pooled"].to_dict()
    report = {
        "source": "fitted on the calibration rounds (in-sample)", "temperatures": temps,
        "previous_temperatures": previous, "data": [str(p.path) for p in prompt_sets],
        "num_prompts": sum(r.num_prompts for r in runs), "num_rounds": len(trace),
        "temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "num_slots": trace.num_slots,
        "unfitted_slots": [k + 1 for k in unfitted],
        "unfitted_temperatures": "kept from the checkpoint" if previous is not None else "1.0 (no earlier fit)",
        "before": before, "after": after,
    }
    drafter.set_calibration(temps)

    def write_plot(directory: Path) -> None:
        if not args.no_plots:
            from dspark.eval.plots import plot_reliability

            plot_reliability(bins_before, bins_after, directory / PLOT_NAME,
                             f"STS on {', '.join(p.name for p in prompt_sets)} ({len(trace)} rounds)",
                             [s["ece"] for s in before["per_slot"]], [s["ece"] for s in after["per_slot"]])

    if out_dir is None:
        _rewrite_config(draft_dir, temps)
        dest = draft_dir
        (dest / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
        write_plot(dest)
    else:
        dest = _save_copy(drafter, draft_dir, out_dir, args.overwrite, {"calibration.json": report}, write_plot)
    files = {"checkpoint": str(dest), "report": str(dest / "calibration.json")}
    if not args.no_plots:
        files["reliability"] = str(dest / PLOT_NAME)
    if unfitted:
        print(f"slots {[k + 1 for k in unfitted]} had fewer than {args.min_events} accepted or rejected drafts: their "
              f"temperature is {report['unfitted_temperatures']}")
    print(f"calibrated {drafter.config.method} drafter on {report['num_prompts']} prompts, {len(trace)} rounds "
          f"-> {dest}")
    print_calibration(report)
    strip = {k: v for k, v in report.items() if k not in ("before", "after")}
    strip["before"] = {k: v for k, v in before.items() if k != "bins_pooled"}
    strip["after"] = {k: v for k, v in after.items() if k != "bins_pooled"}
    print_json({**strip, "files": files})
    return 0
