"""`dspark simulate`: a serving simulator for capacity planning (all outputs are SIMULATED).

Runs `dspark.sim` for every policy × load and prints a table, then one JSON line. Examples::

    dspark simulate --roofline qwen3-8b --acceptance dspark/chat --concurrency 1,4,16,64,256
    dspark simulate --sps engine_sps.json --acceptance traces.jsonl --policy mtp1,dspark --rate 2,8,32
    dspark simulate --roofline qwen3-8b --acceptance dspark/math --out sim/   # + JSON and PNG plots

Costs come from a profiled table (``--sps FILE``, see `dspark.scheduling.sps_table`) or a roofline
estimate (``--roofline MODEL``). With a roofline, ``none`` pays no draft cost, ``mtp1`` pays an MTP-1
module's (one layer, one slot) and every other policy pays the DSpark drafter's (``--drafter-layers``
target-width layers over γ slots); ``--policy-sps POLICY=FILE`` gives any policy its own table.
``POLICY+gate`` (e.g. ``dspark+gate``) adds the draft gate: rounds where drafting does not pay for its
cost run plain (the ``drafted`` column is the fraction of decoding rounds that ran the drafter).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from dspark.cli.common import SIMULATION_OUTPUT, add_output_dir_argument, check_output_file, check_report_dir
from dspark.errors import ConfigError
from dspark.output_dir import claim_output_dir
from dspark.scheduling import HARDWARE, MODELS, SPSTable, parse_policy, roofline_table
from dspark.scheduling.roofline import Hardware, dspark_drafter_shape
from dspark.sim.acceptance import CENSORED, DEFAULT_SHARPNESS, make_acceptance, preset_names
from dspark.sim.cost import StepCost
from dspark.sim.engine import SimConfig, SimResult
from dspark.sim.sweep import PAPER_SLAS, matched_speedups, run_sweep, sla_table
from dspark.sim.workload import Arrivals, LengthDist

DEFAULT_POLICIES = "none,mtp1,fixed:3,fixed:7,dspark,dspark-async"
DEFAULT_CONCURRENCY = "1,2,4,8,16,32,64,128,256"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cost = parser.add_argument_group("costs (one of --sps / --roofline)")
    src = cost.add_mutually_exclusive_group(required=True)
    src.add_argument("--sps", metavar="FILE", help="profiled SPS table (JSON)")
    src.add_argument("--roofline", metavar="MODEL", help=f"analytic table for a target: {', '.join(MODELS)}")
    cost.add_argument("--policy-sps", metavar="POLICY=FILE", action="append", default=[], help="a table for one policy (repeatable)")
    cost.add_argument("--cost", metavar="[POLICY=]FILE", action="append", default=[],
                      help="measured step-cost terms (JSON from `bench_frontier.py --simulate --sim-dir`) for one "
                           "policy, or for all without POLICY= (repeatable)")
    cost.add_argument("--monotone", action="store_true", help="apply the monotone envelope to table files")
    cost.add_argument("--hardware", default="h200", help=f"roofline hardware: {', '.join(HARDWARE)}")
    cost.add_argument("--context-len", type=int, help="roofline mean context (default: mean prompt + mean output / 2)")
    cost.add_argument("--drafter-layers", type=int, default=5, help="roofline DSpark drafter layers; 0 = free drafting")
    cost.add_argument("--token-tile", type=int, default=1, help="roofline GEMM tile in tokens (>1 makes the curve jagged)")
    cost.add_argument("--overhead-ms", type=float, default=0.0, help="roofline fixed overhead per forward")
    cost.add_argument("--bandwidth-efficiency", type=float, help="roofline fraction of peak HBM bandwidth (default 0.8)")
    cost.add_argument("--compute-efficiency", type=float, help="roofline fraction of peak FLOP/s (default 0.6)")
    cost.add_argument("--save-sps", metavar="FILE", help="write the roofline table used for the DSpark drafter")
    acc = parser.add_argument_group("acceptance")
    acc.add_argument("--acceptance", default="dspark/chat", help=f"preset ({', '.join(preset_names())}), curve:a1,a2,..., or a .jsonl trace")
    acc.add_argument("--confidence", default="calibrated", help="calibrated | overconfident[:DELTA] (logit shift)")
    acc.add_argument("--sharpness", type=float, default=DEFAULT_SHARPNESS, help="Beta concentration κ of per-round acceptance")
    acc.add_argument("--gamma", type=int, help="block size γ (truncates a curve)")
    acc.add_argument("--censored", choices=CENSORED, default="reject",
                     help="trace replay of rounds that verified fewer than γ drafts and accepted them all")
    run = parser.add_argument_group("workload")
    run.add_argument("--policy", default=DEFAULT_POLICIES, help="comma-separated policies")
    load = run.add_mutually_exclusive_group()
    load.add_argument("--concurrency", help=f"comma-separated closed-loop concurrencies (default {DEFAULT_CONCURRENCY})")
    load.add_argument("--rate", help="comma-separated Poisson arrival rates (requests/s)")
    run.add_argument("--max-concurrency", type=int, default=256, help="batch cap with --rate")
    run.add_argument("--num-requests", type=int, help="measured requests per point")
    run.add_argument("--warmup-requests", type=int, help="warm-up requests per point")
    run.add_argument("--prompt-len", default="uniform:256:768", help="N | uniform:LO:HI | lognormal:MEDIAN:SIGMA")
    run.add_argument("--output-len", default="uniform:128:384", help="N | uniform:LO:HI | lognormal:MEDIAN:SIGMA")
    run.add_argument("--prefill", choices=("inline", "chunked", "none"), default="inline",
                     help="inline = one prefill forward on admission; chunked = inside decoding steps, as dspark.engine "
                          "does; none = prefill runs elsewhere")
    run.add_argument("--max-num-batched-tokens", type=int, default=2048, help="tokens per step with --prefill chunked")
    run.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--sla", default=",".join(f"{x:g}" for x in PAPER_SLAS), help="tok/s/user anchors for the frontier summary")
    out.add_argument("--target", default="dspark", help="policy compared at the SLA anchors")
    out.add_argument("--baseline", default="mtp1", help="baseline policy at the SLA anchors")
    add_output_dir_argument(out, help="write simulation.json and PNG plots here")
    out.add_argument("--overwrite", action="store_true", help="replace a simulation report dspark wrote in --output-dir")
    out.add_argument("--no-plots", action="store_true")


def _csv(text: str, kind: type, what: str) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ConfigError(f"{what} needs positive values, got {text!r}")
    return values


def _tables(args: argparse.Namespace, policies: list[str], context_len: int, gamma: int) -> tuple[dict[str, SPSTable], dict]:
    overrides = {}
    for item in args.policy_sps:
        policy, sep, path = item.partition("=")
        if not sep:
            raise ConfigError(f"--policy-sps {item!r}: expected POLICY=FILE")
        overrides[str(parse_policy(policy))] = SPSTable.load(path, monotone=args.monotone or None)
    if args.sps:
        base = SPSTable.load(args.sps, monotone=args.monotone or None)
        tables = {p: overrides.get(str(parse_policy(p)), base) for p in policies}
        return tables, {"source": args.sps, **base.meta}
    hw = HARDWARE.get(args.hardware)
    if hw is None:
        raise ConfigError(f"unknown hardware {args.hardware!r}; known: {', '.join(HARDWARE)}")
    hw = Hardware(
        hw.name,
        hw.bandwidth,
        hw.flops,
        args.bandwidth_efficiency if args.bandwidth_efficiency is not None else hw.bandwidth_efficiency,
        args.compute_efficiency if args.compute_efficiency is not None else hw.compute_efficiency,
    )
    if args.drafter_layers < 0:
        raise ConfigError(f"--drafter-layers must be >= 0, got {args.drafter_layers}")
    common = dict(context_len=context_len, token_tile=args.token_tile, overhead_s=args.overhead_ms / 1e3)
    drafter = dspark_drafter_shape(args.roofline, num_layers=args.drafter_layers) if args.drafter_layers else None
    built = {
        "none": roofline_table(hw, args.roofline, **common),
        "mtp1": roofline_table(hw, args.roofline, drafter="mtp1", **common),
        "drafter": roofline_table(hw, args.roofline, drafter=drafter, draft_slots=gamma, **common),
    }
    if args.save_sps:
        built["drafter"].save(args.save_sps)
    tables = {}
    for p in policies:
        name = str(parse_policy(p))
        raw = p.strip().lower().removesuffix("+gate")
        key = "none" if name == "fixed:0" or raw == "none" else "mtp1" if raw == "mtp1" else "drafter"
        tables[p] = overrides.get(name, built[key])
    return tables, built["drafter"].meta


def _costs(specs: list[str], policies: list[str], tables: dict[str, SPSTable]) -> dict[str, StepCost]:
    """--cost [POLICY=]FILE entries -> a step-cost model per policy (a FILE without POLICY= serves every policy).

    FILE is a `bench_frontier.py --sim-dir` POLICY.cost.json (``{"cost": terms, ...}``) or the bare terms
    (`StepCost.to_dict`); a POLICY.cost.sps.json beside it (the step prices' table, profiled at more request
    counts) prices the steps, else the policy's own table does.
    """
    out: dict[str, StepCost] = {}
    for spec in specs:
        policy, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        if policy and policy not in policies:
            raise ConfigError(f"--cost {spec!r}: policy {policy!r} is not in --policy ({', '.join(policies)})")
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"--cost {spec!r}: {path} is not a file")
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"--cost {spec!r}: {path} is not readable JSON ({e})") from e
        terms = data.get("cost", data) if isinstance(data, dict) else None
        if not isinstance(terms, dict):
            raise ConfigError(f"--cost {spec!r}: {path} must hold a JSON object of cost terms")
        prices = file.with_name(file.name.removesuffix(".cost.json") + ".cost.sps.json")
        for p in [policy] if policy else policies:
            table = SPSTable.load(prices) if file.name.endswith(".cost.json") and prices.is_file() else tables[p]
            out[p] = StepCost.from_dict(table, terms)
    return out


def _row(r: SimResult) -> str:
    return (
        f"{r.policy:<18}{r.load:<18}{r.per_user_mean:>10.1f}{r.throughput:>11.0f}{r.mean_budget:>8.2f}"
        f"{r.mean_committed:>7.2f}{r.drafted_rounds / max(r.rounds, 1):>8.2f}{r.ttft['p50'] * 1e3:>10.1f}{r.tpot['p50'] * 1e3:>10.2f}{r.tpot['p99'] * 1e3:>10.2f}"
    )


def run(args: argparse.Namespace) -> int:
    check_report_dir(args.out, SIMULATION_OUTPUT, args.overwrite)  # before the work, not after it
    check_output_file(args.save_sps, "--save-sps")
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    if not policies:
        raise ConfigError("--policy is empty")
    for p in policies:
        parse_policy(p)
    acceptance = make_acceptance(args.acceptance, confidence=args.confidence, sharpness=args.sharpness, gamma=args.gamma,
                                 censored=args.censored)
    prompt_len = LengthDist.parse(args.prompt_len, "--prompt-len")
    output_len = LengthDist.parse(args.output_len, "--output-len")
    context_len = args.context_len or int(round(prompt_len.mean() + output_len.mean() / 2))
    tables, cost_meta = _tables(args, policies, context_len, acceptance.gamma)
    if args.rate:
        loads = [lambda r=r: Arrivals(rate=r) for r in _csv(args.rate, float, "--rate")]
    else:
        loads = [lambda c=c: Arrivals(concurrency=c) for c in _csv(args.concurrency or DEFAULT_CONCURRENCY, int, "--concurrency")]
    base = SimConfig(
        prompt_len=prompt_len,
        output_len=output_len,
        num_requests=args.num_requests,
        warmup_requests=args.warmup_requests,
        max_concurrency=args.max_concurrency,
        prefill=args.prefill,
        max_num_batched_tokens=args.max_num_batched_tokens,
        seed=args.seed,
    )
    costs = _costs(args.cost, policies, tables)
    results = []
    for policy in policies:  # each policy with its own table and, if given, its measured cost terms
        cfg = base if policy not in costs else replace(base, cost=costs[policy])
        results += run_sweep([policy], loads, tables.get, acceptance, cfg)
    slas = _csv(args.sla, float, "--sla")
    have = set(policies)
    sla = sla_table(results, args.target, args.baseline, slas) if {args.target, args.baseline} <= have else []
    matched = matched_speedups(results, args.target, args.baseline) if {args.target, args.baseline} <= have else []

    title = f"{acceptance.name}, {args.roofline or Path(args.sps).name}, ctx {context_len}"
    print(f"SIMULATED serving ({title}); illustrative numbers from a model, not measurements")
    print(f"{'policy':<18}{'load':<18}{'tok/s/user':>10}{'tok/s/GPU':>11}{'budget':>8}{'tau':>7}{'drafted':>8}{'TTFT p50':>10}{'TPOT p50':>10}{'TPOT p99':>10}")
    print(f"{'':<18}{'':<18}{'':>10}{'':>11}{'':>8}{'':>7}{'':>8}{'ms':>10}{'ms':>10}{'ms':>10}")
    for r in results:
        print(_row(r))
    for row in sla:
        gain = "n/a" if row["gain"] is None else f"{row['gain']:+.1%}"
        print(f"at {row['sla_tok_s_user']:g} tok/s/user: {args.target} {row[args.target] or 0:.0f} vs {args.baseline} {row[args.baseline] or 0:.0f} tok/s/GPU ({gain})")

    summary = {
        "simulated": True,
        "acceptance": acceptance.name,
        "cost": args.sps or f"roofline:{args.roofline}@{args.hardware}",
        "context_len": context_len,
        "prefill": args.prefill,
        "step_cost": {p: "measured terms" for p in costs} or None,
        "seed": args.seed,
        "rows": [
            {"policy": r.policy, "load": r.load, "tok_s_user": round(r.per_user_mean, 2), "tok_s_gpu": round(r.throughput, 1), "budget": round(r.mean_budget, 3),
             "drafted": round(r.drafted_rounds / max(r.rounds, 1), 3)}
            for r in results
        ],
        "sla": sla,
        "out": args.out,
    }
    if args.out:
        out = claim_output_dir(args.out, SIMULATION_OUTPUT, args.overwrite)
        full = {
            **summary,
            "note": "simulated with dspark.sim; illustrative, not measured",
            "config": {k: (str(v) if isinstance(v, LengthDist) else v) for k, v in vars(args).items() if not k.startswith("_")},
            "cost_meta": cost_meta,
            "results": [r.to_dict() for r in results],
            "matched_throughput": matched,
        }
        (out / "simulation.json").write_text(json.dumps(full, indent=1) + "\n")
        if not args.no_plots:
            from dspark.sim.plots import plot_frontier, plot_load

            plot_frontier(results, out / "frontier.png", title, slas)
            if not args.rate:
                plot_load(results, out / "load.png", title)
    print(json.dumps(summary))
    return 0
