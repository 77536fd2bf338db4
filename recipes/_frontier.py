"""`scripts/bench_frontier.py` in resumable parts, for recipes/e2e_small.sh's `frontier` stage.

    python recipes/_frontier.py run --parts DIR --policies none,mtp1,... --warmup 1,4 -- BENCH_ARGS...
    python recipes/_frontier.py merge --parts DIR --policies none,mtp1,... --json F --plot F.png

`run` runs bench_frontier (in this process) on the policies of --policies that no DIR/part-*.json holds
yet, in the order given, writing DIR/part-K.json (bench_frontier rewrites it after every policy, so a
run cut short by the device call's limit keeps the policies it finished; the next `run` does the rest).
`--warmup X,MIN` gives each point max(X·C, MIN) warm-up requests instead of bench_frontier's
max(2C, 16) (`dspark.eval.closed_loop.default_warmup`, which the closed loops and the simulator's replay
of them both read); `--warmup default` keeps bench_frontier's. `merge` joins the parts into one result
(bench_frontier's JSON layout: points, the SLA summary against `none`, the simulation rows), prints
bench_frontier's tables for it, draws the frontier PNG, and lists the policies still missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _policies(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _parts(directory: Path) -> list[tuple[Path, dict]]:
    out = []
    names = [p for p in directory.glob("part-*.json") if p.stem.split("-")[1].isdigit()]  # not part-K.schedule.json
    for path in sorted(names, key=lambda p: int(p.stem.split("-")[1])):
        try:
            out.append((path, json.loads(path.read_text())))
        except ValueError:  # cut while bench_frontier wrote it (or before): its policies run again
            print(f"frontier: {path} is unreadable, left out", flush=True)
    return out


def _done(parts: list[tuple[Path, dict]]) -> set[str]:
    return {p["policy"] for _, part in parts for p in part["points"]}


def _bench():
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_frontier

    return bench_frontier


def run(args: argparse.Namespace, bench_args: list[str]) -> int:
    directory = Path(args.parts)
    directory.mkdir(parents=True, exist_ok=True)
    parts = _parts(directory)
    todo = [p for p in _policies(args.policies) if p not in _done(parts)]
    if not todo:
        print(f"frontier: every policy is measured already ({directory}/part-*.json)", flush=True)
        return 0
    index = 1 + max((int(path.stem.split("-")[1]) for path, _ in parts), default=0)
    bf = _bench()
    if args.warmup != "default":
        import dspark.eval.closed_loop as closed_loop

        per_client, least = (int(x) for x in args.warmup.split(","))

        def warmup(concurrency: int) -> int:
            return max(per_client * concurrency, least)

        for module in (closed_loop, bf):  # run_closed_loop's default and simulate_policy's replay of it
            if not hasattr(module, "default_warmup"):
                raise SystemExit(f"{module.__name__} has no default_warmup any more: update recipes/_frontier.py")
            module.default_warmup = warmup
    schedule = {"warmup": args.warmup, "policies": todo, "argv": bench_args}
    (directory / f"part-{index}.schedule.json").write_text(json.dumps(schedule) + "\n")
    print(f"frontier part {index}: {', '.join(todo)} (warm-up per point: "
          f"{'max(2C, 16)' if args.warmup == 'default' else 'max(%s·C, %s)' % tuple(args.warmup.split(','))})", flush=True)
    return bf.main([*bench_args, "--policies", ",".join(todo), "--json-out", str(directory / f"part-{index}.json")])


def merge(args: argparse.Namespace) -> int:
    from dspark.eval.frontier import FrontierPoint, reference_speed, sla_summary
    from dspark.eval.sim_check import max_errors

    parts = _parts(Path(args.parts))
    if not parts:
        print("frontier: no part measured yet", flush=True)
        return 0
    bf = _bench()
    wanted = _policies(args.policies)
    points = [FrontierPoint(**p) for _, part in parts for p in part["points"]]
    order = {name: i for i, name in enumerate(wanted)}
    points.sort(key=lambda p: (order.get(p.policy, len(order)), p.concurrency))
    has_none = any(p.policy == "none" for p in points)
    first = parts[0][1]
    result = {k: first[k] for k in ("bench", "lossless", "note", "device", "dtype", "torch", "date") if k in first}
    schedules = [path.with_suffix(".schedule.json") for path, _ in parts]
    result.update(
        seconds=sum(part["seconds"] for _, part in parts),
        parts=[{"file": path.name, "seconds": part["seconds"], "date": part.get("date"), "config": part["config"],
                "schedule": json.loads(s.read_text()) if s.exists() else None}
               for (path, part), s in zip(parts, schedules)],
        missing_policies=[p for p in wanted if p not in _done(parts)],
        reference_per_user=reference_speed(points) if has_none else None,
        points=[p.to_dict() for p in points], sla=sla_summary(points) if has_none else [], plot=args.plot)
    sims = [part["simulation"] for _, part in parts if part.get("simulation")]
    if sims:
        rows = [row for sim in sims for row in sim["points"]]
        rows.sort(key=lambda r: (order.get(r["policy"], len(order)), r["concurrency"]))
        result["simulation"] = {"note": sims[0]["note"], "points": rows, "max_abs_error": max_errors(rows),
                                "engines": {k: v for sim in sims for k, v in sim["engines"].items()}}
    printer = bf.Printer(not result.get("lossless", True))  # synthetic acceptance: every line says so
    config = first["config"]
    title = (f"frontier: {config['target']} + {config['drafter']} (mtp1: {config['mtp_drafter']}) on "
             f"{result.get('device')} ({result.get('dtype')}), {config['max_tokens']} tokens/request, T = "
             f"{config['temperature']}, {config['prompts'] or 'random prompts'}; {len(parts)} part(s), "
             f"{result['seconds']:.0f} s")
    printer.out()
    bf.print_report(points, result["sla"], printer, title)
    if sims:
        bf.print_sim_report(result["simulation"]["points"], printer, result.get("device") == "cpu")
    if args.plot:
        from dspark.sim.plots import plot_frontier

        plot_frontier(points, args.plot, f"{Path(config['target']).name}, {config['max_tokens']} tok/req, "
                      f"T={config['temperature']}", [row["per_user_target"] for row in result["sla"]],
                      kind="MEASURED" if result.get("lossless", True) else f"MEASURED, {result.get('note', 'NOT lossless')}")
    Path(args.json).write_text(json.dumps(result, default=float) + "\n")
    missing = result["missing_policies"]
    print(f"frontier: {len(wanted) - len(missing)} of {len(wanted)} policies measured"
          + (f"; still missing: {','.join(missing)} (STAGES=frontier measures them)" if missing else ""), flush=True)
    return 0


def main() -> int:
    argv = sys.argv[1:]
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["run", "merge"])
    p.add_argument("--parts", required=True, help="folder of part-*.json")
    p.add_argument("--policies", required=True, help="comma-separated, in the order to measure them")
    p.add_argument("--warmup", default="default", help="X,MIN: max(X*C, MIN) warm-up requests per point, or default")
    p.add_argument("--json", help="merge: the joined JSON")
    p.add_argument("--plot", help="merge: the frontier PNG")
    args = p.parse_args(argv)
    if args.command == "run":
        return run(args, bench_args)
    if not args.json:
        p.error("merge needs --json")
    return merge(args)


if __name__ == "__main__":
    sys.exit(main())
