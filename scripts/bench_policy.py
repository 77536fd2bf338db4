"""Micro-benchmark of `dspark.scheduling.plan_verify_lengths` (R = 256 requests, γ = 7, one CPU core).

    python scripts/bench_policy.py [--requests 256] [--gamma 7] [--calls 2000] [--repeats 7]

Survival rows are drawn from the DSpark chat acceptance preset; costs from the analytic H200 table of a
Qwen3-8B-class target with a DSpark drafter. Prints a table (median and best µs per call over repeats),
then one JSON line. Pins itself to one core where the OS allows it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import timeit

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--gamma", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch

    torch.set_num_threads(1)
    from dspark.scheduling import async_capacity, plan_verify_lengths, roofline_table
    from dspark.sim.acceptance import make_acceptance

    rng = np.random.default_rng(0)
    acceptance = make_acceptance("dspark/chat", gamma=args.gamma)
    survival = np.cumprod(acceptance.draw(args.requests, rng)[0], axis=1)  # [R, γ]
    stale = np.cumprod(acceptance.draw(args.requests, rng)[0], axis=1)  # [R, γ]
    table = roofline_table("h200", "qwen3-8b", context_len=640, drafter="dspark", draft_slots=args.gamma)
    capacity = async_capacity(stale, table, args.requests)
    cases = [
        ("none", survival, {}),
        ("fixed:3", survival, {}),
        ("threshold:0.7", survival, {}),
        ("dspark", survival, {}),
        ("dspark-async", survival, {"stale_survival": stale}),
        ("dspark-async", survival, {"capacity": capacity}),
        ("global", survival, {}),
        ("dspark", torch.from_numpy(survival).float(), {}),
    ]
    rows = []
    for policy, surv, kwargs in cases:
        call = lambda: plan_verify_lengths(surv, table, policy, **kwargs)  # noqa: E731
        call()  # warm the table's caches
        times = [t / args.calls * 1e6 for t in timeit.repeat(call, number=args.calls, repeat=args.repeats)]
        variant = "torch" if isinstance(surv, torch.Tensor) else "numpy"
        if kwargs:
            variant += "+" + ",".join(kwargs)
        rows.append({"policy": policy, "input": variant, "median_us": statistics.median(times), "best_us": min(times), "verified": int(call().sum())})

    print(f"plan_verify_lengths, R={args.requests}, γ={args.gamma}, one core ({platform.machine()}, {os.cpu_count()} CPUs visible)")
    print(f"{'policy':<15}{'input':<24}{'median µs':>10}{'best µs':>9}{'Σℓ':>7}")
    for r in rows:
        print(f"{r['policy']:<15}{r['input']:<24}{r['median_us']:>10.1f}{r['best_us']:>9.1f}{r['verified']:>7}")
    dspark_us = next(r["median_us"] for r in rows if r["policy"] == "dspark" and r["input"] == "numpy")
    print(json.dumps({"bench": "plan_verify_lengths", "requests": args.requests, "gamma": args.gamma, "dspark_median_us": round(dspark_us, 1), "rows": rows}))


if __name__ == "__main__":
    main()
