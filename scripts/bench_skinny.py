"""The few-row GEMM kernel against cuBLAS at the engine's shapes: `dspark.kernels.skinny_gemm` vs F.linear.

    python scripts/bench_skinny.py [--rows 1,7,8,32,56] [--models qwen3-4b,qwen3-8b]

For every weight shape a decode / verify step and the DSpark drafter multiply (per layer: fused QKV,
o_proj, fused gate/up, down_proj; the LM head; the Markov head's rank-256 projection; the drafter's
context k|v of 5 layers), random bf16 operands on the GPU, each row count: F.linear's time, the tuned
choice of `linear` (the configuration it picked, or cuBLAS kept) and its time, both timed as a decode
step runs them (`dspark.kernels.gpu_timing.rotating_graph_us`: launches replayed from a CUDA graph,
cycling over copies of the weight that defeat the L2), and the bandwidth each reaches on the weight bytes (the copy bandwidth measured
in the same run is the ceiling). Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from dspark.kernels import skinny_gemm
from dspark.kernels.gpu_timing import copies_needed, events_median_ms, rotating_graph_us
from dspark.kernels.skinny_gemm import block_m, linear

SHAPES = {
    "qwen3-4b": dict(d=2560, q=4096, kv=1024, inter=9728, vocab=151936),
    "qwen3-8b": dict(d=4096, q=4096, kv=1024, inter=12288, vocab=151936),
}


def weights(model: str) -> list[tuple[str, int, int]]:
    s = SHAPES[model]
    return [("qkv", s["q"] + 2 * s["kv"], s["d"]), ("o_proj", s["d"], s["q"]), ("gate_up", 2 * s["inter"], s["d"]),
            ("down", s["d"], s["inter"]), ("lm_head", s["vocab"], s["d"]), ("markov_w2", s["vocab"], 256),
            ("draft_ctx_kv", 5 * 2 * s["kv"], s["d"])]


def copy_bandwidth() -> float:
    src = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = events_median_ms(lambda: dst.copy_(src), 10, 3)
    return 2 * src.numel() / (ms * 1e-3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1,7,8,32,56")
    ap.add_argument("--models", default="qwen3-4b,qwen3-8b")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_skinny: needs a CUDA device", file=sys.stderr)
        return 2
    rows_list = [int(r) for r in args.rows.split(",")]
    bw = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}: copy {bw / 1e12:.2f} TB/s")
    print(f"{'model':9s} {'weight':13s} {'N':>7s} {'K':>6s} {'rows':>4s} {'cuBLAS us':>9s} {'chosen us':>9s} "
          f"{'speedup':>7s} {'cuBLAS %bw':>10s} {'chosen %bw':>10s}  choice")
    out = []
    seen = set()
    for model in args.models.split(","):
        for name, n, k in weights(model):
            if (n, k) in seen:
                continue
            seen.add((n, k))
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5
            ws = [w] + [w.clone() for _ in range(copies_needed(2 * n * k) - 1)]
            for m in rows_list:
                x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
                base = rotating_graph_us([lambda w=c: F.linear(x, w) for c in ws]) * 1e-3
                linear(x, w)  # tunes this shape
                config = skinny_gemm._CHOICE[(block_m(m), n, k, torch.bfloat16, False, x.device)]
                chosen = rotating_graph_us([lambda w=c: linear(x, w) for c in ws]) * 1e-3
                err = ((linear(x, w).double() - F.linear(x, w).double()).norm() / F.linear(x, w).double().norm()).item()
                byte = 2 * n * k
                row = dict(model=model, weight=name, n=n, k=k, rows=m, cublas_us=base * 1e3, chosen_us=chosen * 1e3,
                           speedup=base / chosen, cublas_bw=byte / (base * 1e-3) / bw, chosen_bw=byte / (chosen * 1e-3) / bw,
                           choice=None if config is None else vars(config), rel_err=err)
                out.append(row)
                print(f"{model:9s} {name:13s} {n:7d} {k:6d} {m:4d} {row['cublas_us']:9.1f} {row['chosen_us']:9.1f} "
                      f"{row['speedup']:7.2f} {100 * row['cublas_bw']:9.0f}% {100 * row['chosen_bw']:9.0f}%  "
                      f"{'cuBLAS' if config is None else config}  err {err:.1e}", flush=True)
            del w, ws
    print(json.dumps(dict(bench="skinny_gemm", device=torch.cuda.get_device_name(), copy_bandwidth_Bps=bw, rows=out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
