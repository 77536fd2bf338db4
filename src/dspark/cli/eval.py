"""`dspark eval`: the accepted-length benchmark (SPEC §4) of a drafter against its target.

    dspark eval --target DIR --draft DIR --datasets gsm8k humaneval mt-bench --out runs/eval
    dspark eval --target DIR --draft DIR --datasets my_prompts.jsonl --temperature 0 --verify-len 4

Decodes every prompt set with fixed-length verification (γ, or --verify-len) and reports τ per dataset
and per domain (macro-averaged), position-wise conditional and unconditional acceptance, the
confidence-threshold sweep and calibration (ECE / ROC-AUC before and after STS). Prints a table, then
ONE JSON line. With --out: results.json, traces.jsonl (per-round confidences and acceptance, replayable
by `dspark simulate --acceptance DIR/traces.jsonl`) and PNG plots.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dspark.cli.common import DEFAULT_DRAFT, EVAL_OUTPUT, add_model_arguments, check_report_dir, load_pair, print_json
from dspark.errors import ConfigError


def add_decode_arguments(parser: argparse.ArgumentParser, max_prompts: int) -> None:
    """Decoding flags shared by `dspark eval` and `dspark calibrate`."""
    parser.add_argument("--max-new-tokens", type=int, default=256, help="tokens generated per user turn")
    parser.add_argument("--max-prompts", type=int, default=max_prompts, help="prompts per dataset (0: all)")
    parser.add_argument("--max-turns", type=int, default=None, help="user turns answered per prompt (default: all)")
    parser.add_argument("--batch-size", type=int, default=32, help="prompts decoded together")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-bins", type=int, default=10, help="reliability bins for ECE")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per dataset")


def decode_settings(args: argparse.Namespace, verify_len: int | None = None):
    from dspark.eval.runner import DecodeSettings

    for flag, value, low in (("--max-new-tokens", args.max_new_tokens, 1), ("--batch-size", args.batch_size, 1),
                             ("--max-prompts", args.max_prompts, 0), ("--num-bins", args.num_bins, 1)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.temperature < 0:
        raise ConfigError(f"--temperature must be >= 0, got {args.temperature}")
    return DecodeSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k, verify_len=verify_len, batch_size=args.batch_size, seed=args.seed,
                          max_turns=args.max_turns, policy=getattr(args, "policy", None), sps=getattr(args, "sps", None))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dspark.cli.common import CommaList, add_output_dir_argument

    add_model_arguments(parser)
    parser.add_argument("--datasets", action=CommaList, default=None, metavar="NAME|FILE",
                        help="shared prompt-set names (gsm8k, humaneval, mt-bench, ...) or JSONL files (default: all shared sets)")
    parser.add_argument("--verify-len", type=int, default=None, help="drafts verified per round (default: all γ)")
    parser.add_argument("--policy", default=None, help="verification-length policy: none, fixed:K, mtp1, threshold:T, dspark, dspark-async; POLICY+gate skips drafting when it does not pay")
    parser.add_argument("--sps", default=None, help="SPS table JSON (for --policy dspark / dspark-async / POLICY+gate)")
    parser.add_argument("--thresholds", action=CommaList, item_type=float, default=None,
                        help="confidence thresholds of the sweep (default: 0 0.1 ... 0.9)")
    add_decode_arguments(parser, max_prompts=100)
    add_output_dir_argument(parser, default=None, help="directory for results.json, traces.jsonl and PNG plots")
    parser.add_argument("--overwrite", action="store_true", help="replace an evaluation report dspark wrote in --output-dir")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def _fmt(x: float | None, pattern: str = "{:.2f}") -> str:
    return "-" if x is None else pattern.format(x)


def _slots(values: list[float | None]) -> str:
    return " ".join(_fmt(v) for v in values)


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'dataset':<18}{'domain':<9}{'prompts':>8}{'rounds':>8}{'tau':>7}   conditional acceptance per slot")
    for name, d in summary["datasets"].items():
        print(f"{name:<18}{d['domain']:<9}{d['num_prompts']:>8}{d['num_rounds']:>8}{_fmt(d['tau']):>7}   "
              f"{_slots(d['accept_rate_conditional'])}")
    print()
    print(f"{'domain':<18}{'datasets':>9}{'tau':>7}   conditional | unconditional (accept_rate@k)")
    for name, d in summary["domains"].items():
        print(f"{name:<18}{len(d['datasets']):>9}{_fmt(d['tau']):>7}   {_slots(d['accept_rate_conditional'])} | "
              f"{_slots(d['accept_rate_unconditional'])}")
    print(f"{'all (macro)':<18}{'':>9}{_fmt(summary['macro_tau']):>7}   {_slots(summary['accept_rate_conditional'])} | "
          f"{_slots(summary['accept_rate_unconditional'])}")
    sweep = summary.get("threshold_sweep")
    if sweep:
        print("\nthreshold  tokens/step  verified/step  accepted/step  rejected/step  acceptance")
        for row in sweep:
            print(f"{row['threshold']:>9.2f}{row['tokens_per_step']:>13.2f}{row['verify_len']:>15.2f}"
                  f"{row['accepted_per_step']:>15.2f}{row['rejected_per_step']:>15.2f}{_fmt(row['acceptance_rate']):>12}")
    calib = summary.get("calibration")
    if calib:
        print_calibration(calib)


def print_calibration(calib: dict[str, Any]) -> None:
    before, after = calib["before"], calib["after"]
    print(f"\ncalibration of a_k (STS temperatures: {calib['source']})")
    print(f"{'slot':>5}{'rounds':>8}{'T_k':>7}{'ECE raw':>9}{'ECE STS':>9}{'AUC raw':>9}{'AUC STS':>9}")
    for b, a, t in zip(before["per_slot"], after["per_slot"], calib["temperatures"]):
        pct = "{:.1%}"
        print(f"{b['slot']:>5}{b['count']:>8}{t:>7.2f}{_fmt(b['ece'], pct):>9}{_fmt(a['ece'], pct):>9}"
              f"{_fmt(b['auc'], '{:.3f}'):>9}{_fmt(a['auc'], '{:.3f}'):>9}")
    print(f"{'all':>5}{'':>8}{'':>7}{_fmt(before['ece'], '{:.1%}'):>9}{_fmt(after['ece'], '{:.1%}'):>9}"
          f"{_fmt(before['auc'], '{:.3f}'):>9}{_fmt(after['auc'], '{:.3f}'):>9}")


def write_outputs(report, out: Path, plots: bool, title: str) -> dict[str, str]:
    """results.json, traces.jsonl and the PNGs under `out`; returns {what: path}."""
    from dspark.eval.traces import write_trace_jsonl

    out.mkdir(parents=True, exist_ok=True)
    files = {"results": str(out / "results.json"), "traces": str(write_trace_jsonl(report.trace, out / "traces.jsonl"))}
    summary = report.summary
    if plots:
        from dspark.eval.plots import plot_acceptance, plot_reliability, plot_threshold_sweep

        curves = {name: d["accept_rate_conditional"] for name, d in summary["datasets"].items()}
        files["acceptance"] = str(plot_acceptance(curves, out / "acceptance_conditional.png", title))
        uncond = {name: d["accept_rate_unconditional"] for name, d in summary["datasets"].items()}
        files["acceptance_unconditional"] = str(plot_acceptance(uncond, out / "acceptance_unconditional.png", title,
                                                                ylabel="prefix survival (accept_rate@k)"))
        if summary["calibration"] is not None:
            cal = summary["calibration"]
            files["reliability"] = str(plot_reliability(
                report.bins_before, report.bins_after, out / "reliability.png", f"{title} — STS: {cal['source']}",
                [s["ece"] for s in cal["before"]["per_slot"]], [s["ece"] for s in cal["after"]["per_slot"]]))
            files["threshold_sweep"] = str(plot_threshold_sweep(summary["threshold_sweep"], out / "threshold_sweep.png",
                                                                title))
    (out / "results.json").write_text(json.dumps({**summary, "files": files}, indent=2, default=float) + "\n")
    return files


def run(args: argparse.Namespace) -> int:
    check_report_dir(args.out, EVAL_OUTPUT, args.overwrite)  # before the work, not after it
    from dspark.eval.metrics import DEFAULT_THRESHOLDS
    from dspark.eval.report import build_report
    from dspark.eval.runner import resolve_prompt_sets, run_prompt_sets

    if args.verify_len is not None and args.verify_len < 1:
        raise ConfigError(f"--verify-len must be >= 1, got {args.verify_len}")
    settings = decode_settings(args, args.verify_len)
    prompt_sets = resolve_prompt_sets(args.datasets)  # fail on a bad name before loading models
    target, drafter = load_pair(args)
    runs = run_prompt_sets(target, drafter, prompt_sets, settings, max_prompts=args.max_prompts or None,
                           progress=args.progress)
    stored = drafter.config.calibration_temperatures if drafter.config.has_confidence else None
    thresholds = args.thresholds if args.thresholds is not None else DEFAULT_THRESHOLDS
    report = build_report(runs, stored, thresholds, args.num_bins)
    summary = report.summary
    summary = {"target": str(target.path), "draft": args.draft or str(DEFAULT_DRAFT), "method": drafter.config.method,
               "temperature": args.temperature, "verify_len": args.verify_len or summary["num_slots"], "policy": args.policy,
               "max_new_tokens": args.max_new_tokens, **summary}
    report.summary = summary
    if args.out:
        title = f"{drafter.config.method}, T={args.temperature}, γ={summary['num_slots']}"
        summary["files"] = write_outputs(report, Path(args.out), not args.no_plots, title)
    print_table(summary)
    print_json(_compact(summary))
    return 0


def _compact(summary: dict[str, Any]) -> dict[str, Any]:
    """The JSON line: everything except the pooled reliability bins (those are in results.json)."""
    out = dict(summary)
    if out.get("calibration"):
        cal = dict(out["calibration"])
        cal["before"] = {k: v for k, v in cal["before"].items() if k != "bins_pooled"}
        cal["after"] = {k: v for k, v in cal["after"].items() if k != "bins_pooled"}
        out["calibration"] = cal
    return out
