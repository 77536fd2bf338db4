"""A mixed engine step (decode rows beside a prefill chunk): attention in two launches vs one, side by side.

    python scripts/bench_mixed.py [--model qwen3-8b] [--rows 16,64,254] [--context 320] [--chunk 192]

In a closed loop at high concurrency nearly every step carries one new request's prompt chunk beside the
decoding rows. Its CUDA graph promises the chunk's query length (a power of two) to every sequence; with
one attention launch sized for that promise each decode row gets a tile of up to 128 query rows over its
whole context. `GraphedDenseTarget.split_mixed` (default on; ``DSPARK_SPLIT_MIXED=0`` off) attends the
decode rows with tiles for the verify promise and the chunk apart (`dspark.kernels.paged_mixed_attention`).
Per row count, on random bf16 weights of a real shape (no downloads): the decode-only step (R rows), the
mixed step with the split, and without it (graph replays, CUDA-event median), the split's logits against
the single launch's (relative L2). Prints a table, then ONE JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from bench_engine import GAMMA, PAGE, build_model, case_batch, events_median, fill_random, rel_err
from dspark.engine.batch import FlatBatch
from dspark.engine.graphed_target import GraphedDenseTarget
from dspark.targets.layer_ids import default_layer_ids


def mixed_batch(rows: int, context: int, chunk: int, num_pages: int, vocab: int, gen: torch.Generator,
                device: str = "cuda") -> FlatBatch:
    """`rows` decode sequences (one token after `context` cached ones), then one `chunk`-token prompt chunk at
    context 0, every sequence on its own shuffled pages; logits for each sequence's last token."""
    need = [-(-(context + 1) // PAGE)] * rows + [-(-chunk // PAGE)]
    perm = (torch.randperm(num_pages - 1, generator=gen)[: sum(need)] + 1).tolist()
    width = max(need)
    tables, positions, slots, q_lens = [], [], [], []
    for b, pages in enumerate(need):
        table, perm = perm[:pages], perm[pages:]
        tables.append(table + [-1] * (width - pages))
        start, length = (context, 1) if b < rows else (0, chunk)
        pos = list(range(start, start + length))
        positions += pos
        slots += [table[x // PAGE] * PAGE + x % PAGE for x in pos]
        q_lens.append(length)
    n = rows + chunk
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    return FlatBatch(torch.randint(0, vocab, (n,), generator=gen), torch.tensor(positions), torch.tensor(slots),
                     torch.tensor(starts), torch.tensor([context] * rows + [0]), torch.tensor(tables, dtype=torch.int32),
                     torch.tensor([s - 1 for s in starts[1:]]), max_query_len=chunk, max_context_len=context).to(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen3-8b")
    ap.add_argument("--rows", default="16,64,254")
    ap.add_argument("--context", type=int, default=320)
    ap.add_argument("--chunk", type=int, default=192)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_mixed: needs a CUDA device", file=sys.stderr)
        return 2
    rows_list = [int(r) for r in args.rows.split(",")]
    model = build_model(args.model)
    cfg = model.config
    layer_ids = default_layer_ids(cfg.num_layers, 5)
    most = max(rows_list)
    num_pages = (most + 1) * -(-(args.context + args.chunk + 1) // PAGE) + 2
    sizes = tuple(sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 384, 512, 768, 1024} | {most + 1, most + 2}))
    target = GraphedDenseTarget(model, num_pages, PAGE, max_query_len=GAMMA + 1, sizes=sizes,
                                max_model_len=args.context + args.chunk + 64)
    fill_random(target.kv)
    gen = torch.Generator().manual_seed(0)
    print(f"{torch.cuda.get_device_name()}, {args.model}: decode rows at context {args.context} beside one "
          f"{args.chunk}-token chunk")
    print(f"{'rows':>5s} {'decode ms':>10s} {'mixed split':>12s} {'mixed one':>10s} {'split gain':>10s} {'err':>9s}")
    out = []
    for rows in rows_list:
        dec = case_batch(rows, 1, args.context, num_pages, cfg.vocab_size, gen)
        mixed = mixed_batch(rows, args.context, args.chunk, num_pages, cfg.vocab_size, gen)
        point = dict(rows=rows, context=args.context, chunk=args.chunk)
        with torch.no_grad():
            point["decode_ms"] = events_median(lambda: target.forward(dec, None, layer_ids), args.reps, args.warmup)
            logits = {}
            for split in (True, False):
                target.split_mixed = split
                target.clear_graphs()
                got = target.forward(mixed, None, layer_ids)
                logits[split] = got.logits.float().clone()
                name = "mixed_split_ms" if split else "mixed_one_ms"
                point[name] = events_median(lambda: target.forward(mixed, None, layer_ids), args.reps, args.warmup)
            target.split_mixed = True
            target.clear_graphs()
        point["err_split_vs_one"] = rel_err(logits[True], logits[False])
        point["split_gain"] = point["mixed_one_ms"] / point["mixed_split_ms"]
        out.append(point)
        print(f"{rows:>5d} {point['decode_ms']:>10.3f} {point['mixed_split_ms']:>12.3f} {point['mixed_one_ms']:>10.3f} "
              f"{point['split_gain']:>9.2f}x {point['err_split_vs_one']:>9.1e}")
    print(json.dumps({"bench": "mixed_step", "model": args.model, "device": torch.cuda.get_device_name(),
                      "points": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
