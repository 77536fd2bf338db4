"""Replay a frontier run's simulator inputs offline, against the points that run measured (CPU, seconds).

    python scripts/sim_replay.py --sim-dir runs/sim8b --frontier frontier8b.json [--refit]

`scripts/bench_frontier.py --simulate --sim-dir DIR` keeps, per policy, the planner's SPS table
(POLICY.sps.json), the measured step-cost terms (POLICY.cost.json, and POLICY.cost.sps.json when the step
prices came from a re-profiled table) and the trace of its engine's rounds (POLICY.trace.jsonl). This
script simulates every measured point of `--frontier` (its JSON) again from those files, as the run did
(`dspark.eval.sim_check.simulate_point`: chunked prefill within the run's step budget, the censored rounds
continued at their confidences), and prints measured against simulated throughput and per-user speed
with the relative errors, then ONE JSON line. `--refit` fits the host term again from the cost file's raw
rows as `dspark.eval.host_cost` does today (signed), to see what that does to an old run without the GPU.
What it cannot replay: state the files do not hold (the
planner's live overhead is not saved; the simulator prices steps without it anyway, `price_table`).
Synthetic-acceptance runs stay NOT lossless: their label is printed with every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from dspark.eval.closed_loop import default_warmup
from dspark.eval.host_cost import MIN_STEPS
from dspark.eval.sim_check import NO_DRAFTS, Workload, simulate_point
from dspark.scheduling.sps_table import SPSTable
from dspark.sim.acceptance import TraceAcceptance
from dspark.sim.cost import RequestCurve, StepCost


def stem(policy: str) -> str:
    """The file stem bench_frontier's --sim-dir gives a policy."""
    return policy.replace(":", "-").replace("+", "_")


def step_budget(config: dict, gamma: int) -> int:
    """The engine's max_num_batched_tokens as bench_frontier builds it (every policy the same room)."""
    return max(config["concurrency"]) * (gamma + 1) + max(2048, int(config.get("prompt_len") or 0))


def refit(cost: StepCost, rows: dict[str, list[dict]]) -> StepCost:
    """`cost` with its host term fitted again from the raw `rows` of its cost file, signed (runs before
    session 16 clipped it at 0)."""
    host = [r for r in rows.get("host", []) if r["steps"] >= MIN_STEPS]
    if not host:
        return cost
    curve = RequestCurve(tuple(r["requests"] for r in host), tuple(r["trimmed_s"] for r in host), signed=True)
    return dataclasses.replace(cost, host=curve)


def replay(sim_dir: Path, frontier: dict, pad_planner: bool = False, refit_terms: bool = False) -> list[dict]:
    """Every measured point simulated again; `pad_planner`: the planner reads its table padded up the cost
    file's CUDA-graph ladder (what engines since session 12 do; a run's table then already holds it);
    `refit_terms`: the host term fitted again from the raw rows (`refit`)."""
    config = frontier["config"]
    prompt = int(config.get("prompt_len") or 0)
    if prompt <= 0:
        raise SystemExit("sim_replay: the frontier JSON has no fixed prompt_len (prompt sets are not replayable here)")
    rows = []
    for policy in dict.fromkeys(p["policy"] for p in frontier["points"]):
        s = stem(policy)
        table_path, cost_path = sim_dir / f"{s}.sps.json", sim_dir / f"{s}.cost.json"
        if not table_path.is_file() or not cost_path.is_file():
            print(f"{policy}: no {table_path.name} / {cost_path.name} in {sim_dir}: skipped", file=sys.stderr)
            continue
        table = SPSTable.load(table_path)
        priced = SPSTable.load(sim_dir / f"{s}.cost.sps.json") if (sim_dir / f"{s}.cost.sps.json").is_file() else table
        saved = json.loads(cost_path.read_text())
        cost = StepCost.from_dict(priced, saved["cost"])
        if pad_planner and cost.ladder and not table.ladder:
            table = table.with_ladder(cost.ladder)
        trace_path = sim_dir / f"{s}.trace.jsonl"
        acceptance = TraceAcceptance.load(trace_path, censored="confidence") if trace_path.is_file() else NO_DRAFTS
        gamma = getattr(acceptance, "gamma", 0) if trace_path.is_file() else 0
        if refit_terms:
            cost = refit(cost, saved.get("rows") or {})
        work = Workload((prompt,) * int(config.get("num_prompts") or 512), int(config["max_tokens"]),
                        step_budget(config, gamma), int(config.get("seed") or 0))
        for point in (p for p in frontier["points"] if p["policy"] == policy):
            c = int(point["concurrency"])
            n = int(config.get("num_requests") or point.get("num_measured") or max(8, 2 * c))  # as the run measured
            warm = default_warmup(c) if config.get("warmup_requests") is None else int(config["warmup_requests"])
            sim = simulate_point(policy, c, n, warm, work, table, cost, acceptance)
            rows.append({"policy": policy, "concurrency": c, "throughput": point["throughput"],
                         "sim_throughput": sim.throughput, "throughput_error": sim.throughput / point["throughput"] - 1,
                         "per_user": point["per_user_mean"], "sim_per_user": sim.per_user_mean,
                         "per_user_error": sim.per_user_mean / point["per_user_mean"] - 1,
                         "tau": point["tau"], "sim_tau": sim.mean_committed})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sim-dir", required=True, type=Path, help="bench_frontier.py --sim-dir output")
    ap.add_argument("--frontier", required=True, type=Path, help="the same run's --json-out")
    ap.add_argument("--pad-planner", action="store_true",
                    help="plan with the table padded up the engine's CUDA-graph ladder (runs before session 12 did not)")
    ap.add_argument("--refit", action="store_true",
                    help="fit the host term again from the cost files' raw rows, signed, as today's engines do")
    args = ap.parse_args(argv)
    frontier = json.loads(args.frontier.read_text())
    label = " [synthetic acceptance (NOT lossless)]" if frontier.get("lossless") is False else ""
    rows = replay(args.sim_dir, frontier, args.pad_planner, args.refit)
    print(f"{'policy':<20}{'conc':>5}{'tok/s':>10}{'sim':>10}{'err':>8}{'tok/s/user':>12}{'sim':>9}{'err':>8}"
          f"{'tau':>6}{'sim':>6}{label}")
    for r in rows:
        print(f"{r['policy']:<20}{r['concurrency']:>5}{r['throughput']:>10.1f}{r['sim_throughput']:>10.1f}"
              f"{r['throughput_error']:>+8.1%}{r['per_user']:>12.1f}{r['sim_per_user']:>9.1f}{r['per_user_error']:>+8.1%}"
              f"{r['tau']:>6.2f}{r['sim_tau']:>6.2f}{label}")
    worst = max((max(abs(r["throughput_error"]), abs(r["per_user_error"])) for r in rows), default=float("nan"))
    print(json.dumps({"bench": "sim_replay", "lossless": frontier.get("lossless"), "sim_dir": str(args.sim_dir),
                      "frontier": str(args.frontier), "pad_planner": args.pad_planner, "refit": args.refit, "max_abs_error": worst, "points": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
