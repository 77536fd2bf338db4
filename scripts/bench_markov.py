"""The drafter's γ-slot Markov loop: fused kernels (`dspark.kernels.markov_sampling`) per launch config vs the loop.

    python scripts/bench_markov.py [--rows 1,8] [--configs 256,64,4,2;512,64,8,3] [--best-out FILE]

Random bf16 operands at the DSpark drafter's shape (V = 151,936, Markov rank 256, γ = 7, T = 1): the LM-head
logits of the block, anchor ids, W1 and W2. Each variant is one CUDA graph of the whole γ-slot block, as
the drafter's captured proposal runs it (W2, 78 MB, is re-read every slot: the L2 holds part of it, as in
the drafter): the fused kernels at every launch config, and the PyTorch loop they replace (embedding,
the skinny-GEMM projection, the add, `RowSampler.probs` and `draw` (fused sampling kernels), the stack).
The floor is γ reads of W2 at the copy bandwidth measured in the same run. Every fused config's ids must
equal the first config's (checked). Prints a table, then ONE JSON line; `--best-out` writes the fastest
config at the first row count (the form `DSPARK_MARKOV_CONFIG` takes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_skinny import copy_bandwidth
from dspark.engine.row_sampler import RowSampler
from dspark.kernels.gpu_timing import capture, events_median_ms
from dspark.kernels.markov_sampling import Config, markov_draft
from dspark.kernels.skinny_gemm import linear
from dspark.sampling import RowParams, SamplingParams

DEFAULT_CONFIGS = ("256,64,4,2", "256,64,4,1", "256,32,4,2", "512,64,4,2", "512,64,8,3", "512,128,8,2",
                   "1024,64,8,2", "128,64,4,2", "256,128,8,2")


def loop_draft(base: torch.Tensor, anchor: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, sampler: RowSampler,
               out: torch.Tensor) -> torch.Tensor:
    """The drafter's unfused slot loop (`DSparkDrafter._sample_sequential` with a vanilla Markov head)."""
    prev, ids, probs = anchor, [], []
    for k in range(base.shape[1]):
        p = sampler.probs(base[:, k] + linear(F.embedding(prev, w1), w2))
        prev = sampler.draw(p)
        ids.append(prev)
        probs.append(p)
    torch.stack(probs, dim=1, out=out)
    return torch.stack(ids, dim=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,8")
    ap.add_argument("--configs", default=";".join(DEFAULT_CONFIGS), help="BLOCK,SUB,WARPS,STAGES separated by ;")
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--rank", type=int, default=256)
    ap.add_argument("--gamma", type=int, default=7)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--best-out", type=Path, default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_markov: needs a CUDA device", file=sys.stderr)
        return 2
    configs = [Config.parse(c) for c in args.configs.split(";") if c.strip()]
    bw = copy_bandwidth()
    floor_us = args.gamma * 2 * args.vocab * args.rank / bw * 1e6
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s; γ = {args.gamma} reads of W2 "
          f"[{args.vocab}, {args.rank}] bf16: floor {floor_us:.1f} µs")
    print(f"{'rows':>4s}  {'variant':18s} {'block µs':>9s} {'per slot':>9s} {'x floor':>8s}")
    g = torch.Generator(device="cuda").manual_seed(0)
    w1 = torch.randn(args.vocab, args.rank, device="cuda", generator=g).to(torch.bfloat16)
    w2 = (torch.randn(args.vocab, args.rank, device="cuda", generator=g) / args.rank ** 0.5).to(torch.bfloat16)
    rows_out = []
    for rows in (int(r) for r in args.rows.split(",")):
        base = (torch.randn(rows, args.gamma, args.vocab, device="cuda", generator=g) * 3).to(torch.bfloat16)
        anchor = torch.randint(0, args.vocab, (rows,), device="cuda", generator=g)
        u = torch.rand(rows, args.gamma, device="cuda", generator=g, dtype=torch.float64)
        temp = torch.ones(rows, device="cuda")
        out = torch.empty(rows, args.gamma, args.vocab, device="cuda")
        params = RowParams.from_list([SamplingParams(1.0)] * rows, "cuda")
        seeds, counters = torch.arange(rows, device="cuda"), torch.zeros(rows, dtype=torch.long, device="cuda")
        variants = {"loop": lambda: loop_draft(base, anchor, w1, w2, RowSampler(params, seeds, counters, u), out)}
        for cfg in configs:
            variants[f"fused {cfg}"] = lambda cfg=cfg: markov_draft(base, anchor, w1, w2, temp, False, u, out=out,
                                                                    config=cfg)[0]
        want = None
        for name, fn in variants.items():
            graph, ids = capture(fn)
            us = events_median_ms(graph.replay, args.reps, 3) * 1e3
            graph.replay()
            same = None
            if name != "loop":
                want = ids.clone() if want is None else want
                same = bool(torch.equal(ids, want))
            del graph
            rows_out.append(dict(rows=rows, variant=name, block_us=us, slot_us=us / args.gamma, x_floor=us / floor_us,
                                 ids_equal_first=same))
            flag = "" if same in (None, True) else "  IDS DIFFER"
            print(f"{rows:>4d}  {name:18s} {us:>9.1f} {us / args.gamma:>9.1f} {us / floor_us:>8.2f}{flag}")
    fused = [r for r in rows_out if r["variant"] != "loop" and r["rows"] == rows_out[0]["rows"]]
    best = min(fused, key=lambda r: r["block_us"])["variant"].split()[1] if fused else None
    if args.best_out is not None and best is not None:
        args.best_out.write_text(best + "\n")
    print(f"fastest config at {rows_out[0]['rows']} row(s): {best}")
    print(json.dumps({"bench": "markov", "device": torch.cuda.get_device_name(), "copy_tb_s": bw / 1e12,
                      "floor_us": floor_us, "best": best, "points": rows_out}))
    return 0 if all(r["ids_equal_first"] in (None, True) for r in rows_out) else 1


if __name__ == "__main__":
    sys.exit(main())
