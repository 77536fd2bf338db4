"""Accepted length τ and per-slot acceptance of several drafters on held-out prompts, side by side.

    python scripts/bench_tau.py --target DIR --prompts prompts.jsonl --drafts name=DIR ... [--temperature 1]

Prints a table, then one JSON line. Prompts: JSONL with {"input_ids": [...]} (or {"turns": [...]}
with a tokenizer). Fixed-length verification (all γ drafts), chain drafting, as SPEC §4 defines τ.
`--plain` also times plain decoding (no drafter) of the same prompts in the same run, so the wall
times of each drafter can be read as a ratio (`seconds` per row; eager PyTorch, no CUDA graphs).
`--policies all dspark dspark+gate --sps sps.json` runs every drafter under each verification policy
(`all` = every draft verified; rows named DRAFTER:POLICY; `drafted` = share of rounds that ran the drafter).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dspark import SpeculativeDecoder, load_drafter, load_target
from dspark.eval.metrics import summarize
from dspark.scheduling.planner import planner_from_args


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--drafts", nargs="+", required=True, help="name=DIR")
    p.add_argument("--temperature", type=float, nargs="+", default=[1.0])
    p.add_argument("--max-prompts", type=int, default=256)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--plain", action="store_true", help="also time plain decoding (no speculation)")
    p.add_argument("--policies", nargs="+", default=["all"], help="verification policies (all = every draft)")
    p.add_argument("--sps", default=None, help="SPS table JSON for the dspark / +gate policies (dspark profile)")
    a = p.parse_args()
    target = load_target(a.target, device=a.device)
    lines = [json.loads(x) for x in Path(a.prompts).read_text().splitlines() if x.strip()][: a.max_prompts]
    prompts = [x["input_ids"] for x in lines]
    eos = target.token_id("eos_token_id")
    rows = []
    specs = [spec.split("=", 1) for spec in a.drafts] + ([("plain", "")] if a.plain else [])
    runs = [(n if pol == "all" or not path else f"{n}:{pol}", path, pol)
            for n, path in specs for pol in (a.policies if path else ["all"])]
    for name, path, policy in runs:
        drafter = load_drafter(path, target=target, device=a.device, dtype="float32") if path else None
        dec = SpeculativeDecoder(target, drafter)
        dec.generate(prompts[:2], 4, seed=0)  # one-time costs (kernels, allocator) out of the timings
        for temp in a.temperature:
            planner = None if policy == "all" else planner_from_args(policy, a.sps)
            if a.device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            results = []
            for i in range(0, len(prompts), a.batch_size):
                results += dec.generate(prompts[i: i + a.batch_size], a.max_new_tokens, temperature=temp, seed=0,
                                        eos_token_id=eos, speculative=drafter is not None, planner=planner)
            seconds = time.perf_counter() - t0
            new_tokens = sum(len(r.token_ids) for r in results)
            timing = {"seconds": seconds, "new_tokens": new_tokens, "tokens_per_s": new_tokens / seconds}
            if drafter is None:
                rows.append({"drafter": name, "temperature": temp, "tau": 1.0, "rounds": new_tokens,
                             "accept_conditional": [], "accept_unconditional": [], **timing})
                continue
            s = summarize(results, drafter.config.num_drafts)
            drafted = sum(r.drafted > 0 for res in results for r in res.rounds) / max(1, s["num_rounds"])
            rows.append({"drafter": name, "temperature": temp, "tau": s["tau"], "rounds": s["num_rounds"], "drafted": drafted,
                         "accept_conditional": s["accept_rate_conditional"],
                         "accept_unconditional": s["accept_rate_unconditional"], **timing})
    width = max(14, max(len(r["drafter"]) for r in rows) + 1)
    print(f"{'drafter':<{width}}{'T':>5}{'tau':>7}{'seconds':>9}{'tok/s':>9}{'drafted':>8}  conditional acceptance per slot")
    for r in rows:
        acc = " ".join("  -  " if x is None else f"{x:.3f}" for x in r["accept_conditional"])
        print(f"{r['drafter']:<{width}}{r['temperature']:>5.1f}{r['tau']:>7.3f}{r['seconds']:>9.1f}{r['tokens_per_s']:>9.0f}"
              f"{r.get('drafted', 0.0):>8.2f}  {acc}")
    print(json.dumps({"prompts": len(prompts), "max_new_tokens": a.max_new_tokens, "device": a.device, "results": rows}))


if __name__ == "__main__":
    main()
