"""Paged-attention KERNEL benchmark: `dspark.kernels.paged_attention` (Triton) against its byte floor.

    python scripts/bench_attention.py [--heads 32 --kv-heads 8 --head-dim 128 --page-size 16 --dtype bf16]

Measures kernels only (one attention layer's call, plus `store_kv` separately), not a model step. One
call does everything: for each case (decode at batch 1..128, verify blocks, prefill chunks; contexts
1,024 and 4,096) it builds a paged cache with shuffled pages, checks the kernel against the plain
PyTorch reference (`dspark.models.paged_attention`), then times it with CUDA events after warm-up:
`graph` replays a CUDA graph of `--reps` back-to-back calls (GPU time, as the engine runs it),
`eager` is the same loop from Python (adds launch overhead). The floor is the bytes the call must move
(K/V of every visible position, q and out) over the device-to-device copy bandwidth measured in the
same run. Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from dspark.engine.batch import FlatBatch
from dspark.kernels import paged_attention, plan_attention, store_kv
from dspark.models.paged_attention import paged_attention as reference_attention

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# (label, batch, query tokens per sequence, cached context per sequence)
CASES = ([("decode", b, 1, c) for c in (1024, 4096) for b in (1, 8, 32, 128)]
         + [(f"verify{q}", b, q, c) for q in (4, 8) for c in (1024, 4096) for b in (1, 8, 32)]
         + [("prefill", 1, q, c) for q, c in ((512, 0), (512, 3584), (2048, 0), (4096, 0))])


def build(batch: int, q_len: int, ctx: int, heads: int, kv_heads: int, head_dim: int, page_size: int,
          dtype: torch.dtype, gen: torch.Generator):
    """A paged cache holding `batch` sequences of ctx + q_len positions on shuffled pages (page 0 = null), and q."""
    per_seq = -(-(ctx + q_len) // page_size)
    num_pages = batch * per_seq + 1
    tables = (torch.randperm(num_pages - 1, generator=gen) + 1).view(batch, per_seq).to(torch.int32)
    pos = ctx + torch.arange(q_len)
    slots = (tables[:, pos // page_size].long() * page_size + pos % page_size).flatten()
    flat = FlatBatch(input_ids=torch.zeros(batch * q_len, dtype=torch.long), positions=pos.repeat(batch),
                     slot_mapping=slots, query_start=torch.arange(batch + 1) * q_len,
                     context_lens=torch.full((batch,), ctx), block_tables=tables,
                     logits_indices=torch.zeros(0, dtype=torch.long)).to("cuda")
    cuda_gen = torch.Generator("cuda").manual_seed(int(torch.randint(1 << 30, (1,), generator=gen)))

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=cuda_gen, device="cuda", dtype=dtype)

    n = batch * q_len
    return (flat, rand(num_pages, page_size, kv_heads, head_dim), rand(num_pages, page_size, kv_heads, head_dim),
            rand(n, heads, head_dim), rand(n, kv_heads, head_dim), rand(n, kv_heads, head_dim))


def time_ms(fn, reps: int, warmup: int, graph: bool) -> float:
    """Mean ms per call of `fn` over `reps` back-to-back calls, with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(reps):
                fn()
        g.replay()
        run = g.replay
    else:
        def run():
            for _ in range(reps):
                fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(3):  # best of three rounds
        start.record()
        run()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / reps)
    return best


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), 2 GiB buffers."""
    src = torch.empty(1 << 30, dtype=torch.int16, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), reps=10, warmup=3, graph=False)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--dtype", choices=DTYPES, default="bf16")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    import triton

    dtype, elem = DTYPES[args.dtype], DTYPES[args.dtype].itemsize
    bandwidth = copy_bandwidth()
    gen = torch.Generator().manual_seed(0)
    scale = args.head_dim ** -0.5
    rows = []
    for label, b, q_len, ctx in CASES:
        flat, kc, vc, q, k_new, v_new = build(b, q_len, ctx, args.heads, args.kv_heads, args.head_dim,
                                              args.page_size, dtype, gen)
        store_kv(k_new, v_new, kc, vc, flat.slot_mapping)
        kw = dict(max_query_len=q_len, max_context_len=ctx)
        out = paged_attention(q, kc, vc, flat, scale, **kw)
        err = (out.float() - reference_attention(q, kc, vc, flat, scale).float()).abs().max().item()
        plan = plan_attention(b, args.kv_heads, args.heads // args.kv_heads, args.head_dim, q_len, ctx + q_len,
                              torch.cuda.get_device_properties(0).multi_processor_count, elem)
        attn = lambda: paged_attention(q, kc, vc, flat, scale, **kw)  # noqa: E731
        graph_ms = time_ms(attn, args.reps, args.warmup, graph=True)
        eager_ms = time_ms(attn, args.reps, args.warmup, graph=False)
        store_ms = time_ms(lambda: store_kv(k_new, v_new, kc, vc, flat.slot_mapping), args.reps, args.warmup, True)
        kv_bytes = 2 * b * (ctx + q_len) * args.kv_heads * args.head_dim * elem  # K and V, every visible position
        io_bytes = 2 * q.numel() * elem
        floor_ms = (kv_bytes + io_bytes) / bandwidth * 1e3
        rows.append(dict(case=label, batch=b, q_len=q_len, context=ctx, splits=plan.num_splits,
                         tile=f"{plan.block_m}x{plan.block_g}x{plan.block_n}", graph_us=graph_ms * 1e3,
                         eager_us=eager_ms * 1e3, store_kv_us=store_ms * 1e3, floor_us=floor_ms * 1e3,
                         x_floor=graph_ms / floor_ms, gbps=(kv_bytes + io_bytes) / (graph_ms * 1e-3) / 1e9,
                         max_abs_err=err))
        del flat, kc, vc, q, k_new, v_new, out
        torch.cuda.empty_cache()

    print(f"paged attention kernels only, one layer; {torch.cuda.get_device_name(0)}; H={args.heads} "
          f"Hkv={args.kv_heads} D={args.head_dim} page={args.page_size} {args.dtype}; "
          f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    head = f"{'case':<9}{'B':>4}{'q':>5}{'ctx':>6}{'splits':>7}{'tile':>10}{'graph us':>10}{'eager us':>10}" \
           f"{'store us':>10}{'floor us':>10}{'x floor':>9}{'GB/s':>7}{'max err':>9}"
    print(head)
    for r in rows:
        print(f"{r['case']:<9}{r['batch']:>4}{r['q_len']:>5}{r['context']:>6}{r['splits']:>7}{r['tile']:>10}"
              f"{r['graph_us']:>10.1f}{r['eager_us']:>10.1f}{r['store_kv_us']:>10.1f}{r['floor_us']:>10.1f}"
              f"{r['x_floor']:>9.2f}{r['gbps']:>7.0f}{r['max_abs_err']:>9.2e}")
    print(json.dumps({"bench": "paged_attention_kernels", "measures": "kernels only (one layer), not a model step",
                      "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
                      "python": platform.python_version(), "config": vars(args), "copy_bandwidth_Bps": bandwidth,
                      "rows": rows}))


if __name__ == "__main__":
    main()
