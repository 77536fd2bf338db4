"""Engine target-step benchmark: `GraphedDenseTarget` (fused forward in CUDA graphs) against its floor.

    python scripts/bench_engine.py [--models qwen3-4b,qwen3-8b] [--contexts 1024,4096] [--out DIR]

One call does build, check and timing, on random bf16 weights made directly on the GPU (real Qwen3-4B
and Qwen3-8B shapes, no downloads):
* build: the model (`dspark.models.DenseLM`, fused Triton path), a paged KV cache holding random K/V
  for every sequence on shuffled pages, and `GraphedDenseTarget` (verify graphs promise γ+1 = 8 tokens);
* check: per case the graph replay against the eager fused forward of the same step (same kernels,
  unpadded shapes) and, for batches up to 32, the logits against the reference path (module-by-module
  forward with the plain PyTorch paged attention); relative L2 errors are printed;
* time: one target step (`forward`: copying the step's tensors into the static buffers + replay) with
  CUDA events between back-to-back steps after warm-up, median of `--reps`; decode at batch 1, 8, 32,
  128 and verify with 4 and 8 tokens per request at batch 1, 8, 32, contexts 1,024 and 4,096. The floor
  is max(bytes / copy bandwidth, FLOPs / matmul rate), bytes = weights + K/V read, both ceilings
  measured in the same run (2 GiB device copy; 8192³ bf16 GEMM).
* the DSpark drafter's proposal (`drafter.draft`: backbone over the block, Markov head's γ-step loop,
  confidence head, sampling with exact probabilities; 5 layers, rank 256, γ = 7, vocab 151,936) on the
  4B shape, eager and captured in a CUDA graph, as a share of the 4B decode step at the same batch,
  and its `absorb_flat` of γ+1 tokens a row (graphed), on the fused and the plain path
  (`--drafter-path fused|plain|both`; both: side by side, the second checked against the first).
Prints a table, then ONE JSON line (also written to DIR/bench_engine.json with --out).
`--sps-plot PATH` also draws the measured steps as SPS tables (per model: decode and verify-q curves per
context, the drafter's proposal as the 4B verify8 table's draft cost) next to the analytic roofline
table of `dspark.scheduling` (H200 planning figures), one PNG per model: PATH-<model>.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch

from dspark.drafters import DSparkDrafter
from dspark.drafters.config import DrafterConfig
from dspark.engine.batch import FlatBatch
from dspark.engine.draft_kv import PagedContextKV
from dspark.engine.graphed_target import GraphedDenseTarget
from dspark.engine.kv_cache import PagedKVCache
from dspark.engine.row_sampler import RowSampler
from dspark.kernels.gpu_timing import capture
from dspark.models import DenseConfig, DenseLM
from dspark.models import paged_attention as reference_attention
from dspark.sampling import RowParams, SamplingParams
from dspark.targets.layer_ids import default_layer_ids

try:  # the fused forward's GEMM dispatch (skinny kernel where tuned faster, else cuBLAS)
    from dspark.kernels.pdl import max_rows as pdl_max_rows
    from dspark.kernels.pdl import use_pdl
    from dspark.kernels.skinny_gemm import linear as step_linear
except ImportError:  # no Triton
    step_linear = torch.nn.functional.linear

    def use_pdl(device: torch.device, rows: int) -> bool:
        return False

    def pdl_max_rows() -> int:
        return 0

QWEN3 = dict(model_type="qwen3", num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
             max_position_embeddings=40960, rope_theta=1_000_000.0, hidden_act="silu", vocab_size=151936,
             num_hidden_layers=36, dtype="bfloat16")
SHAPES = {
    "qwen3-4b": dict(QWEN3, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True),
    "qwen3-8b": dict(QWEN3, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False),
}
PAGE = 16
GAMMA = 7
DIAG_BATCH = 32  # sequences of the diagnostics' verify-8 case


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def events_median(fn, reps: int, warmup: int) -> float:
    """Median ms between consecutive CUDA events around back-to-back calls of `fn` (steady-state step time)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    marks = [torch.cuda.Event(enable_timing=True) for _ in range(reps + 1)]
    marks[0].record()
    for i in range(reps):
        fn()
        marks[i + 1].record()
    marks[-1].synchronize()
    return statistics.median(marks[i].elapsed_time(marks[i + 1]) for i in range(reps))


def ceilings() -> tuple[float, float]:
    """(copy bandwidth in B/s counting read + write, bf16 matmul FLOP/s), on random data."""
    src = torch.randn(1 << 30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = events_median(lambda: dst.copy_(src), 10, 3)
    bandwidth = 2 * src.numel() * 2 / (ms * 1e-3)
    del src, dst
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = events_median(lambda: a @ b, 10, 3)
    return bandwidth, 2 * 8192 ** 3 / (ms * 1e-3)


def build_model(name: str) -> DenseLM:
    config = DenseConfig.from_dict(SHAPES[name])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # random weights made in bf16 on the GPU directly
    try:
        with torch.device("cuda"):
            model = DenseLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.to(torch.bfloat16).eval().requires_grad_(False)


def matmul_params(cfg: DenseConfig) -> int:
    d = cfg.hidden_size
    per_layer = d * (cfg.q_size + 2 * cfg.kv_size) + cfg.q_size * d + 3 * d * cfg.intermediate_size
    return cfg.num_layers * per_layer + d * cfg.vocab_size


def case_batch(batch: int, q_len: int, ctx: int, num_pages: int, vocab: int, gen: torch.Generator,
               device: str = "cuda") -> FlatBatch:
    """`batch` sequences with `ctx` cached positions each on shuffled pages, `q_len` new tokens each."""
    per_seq = -(-(ctx + q_len) // PAGE)
    pages = (torch.randperm(num_pages - 1, generator=gen)[: batch * per_seq] + 1).view(batch, per_seq)
    pos = ctx + torch.arange(q_len)
    slots = (pages[:, pos // PAGE] * PAGE + pos % PAGE).flatten()
    n = batch * q_len
    return FlatBatch(torch.randint(0, vocab, (n,), generator=gen), pos.repeat(batch), slots,
                     torch.arange(batch + 1) * q_len, torch.full((batch,), ctx), pages.to(torch.int32),
                     torch.arange(n), max_query_len=q_len, max_context_len=ctx).to(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def fill_random(cache: PagedKVCache) -> None:
    for store in (cache.k, cache.v):
        for t in store:
            t.normal_()


def graph_ms(fn, reps: int, warmup: int) -> float:
    """Capture `fn` in a CUDA graph and time its replays."""
    return events_median(capture(fn)[0].replay, reps, warmup)


def gemm_only_ms(model: DenseLM, n: int, reps: int, warmup: int) -> float:
    """The step's GEMMs alone (every layer's 4 projections + the LM head over n rows, through the fused
    forward's dispatch `step_linear`) in one graph."""
    cfg = model.config
    xs = {k: torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
          for k in {cfg.hidden_size, cfg.q_size, cfg.intermediate_size}}

    def run():
        for layer in model.layers:
            for lin in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
                step_linear(xs[lin.in_features], lin.weight, lin.bias)
        step_linear(xs[cfg.hidden_size], model.lm_head.weight)

    return graph_ms(run, reps, warmup)


def diagnostics(model: DenseLM, target: GraphedDenseTarget, layer_ids: list[int], ctx: int, args, bandwidth: float,
                gen: torch.Generator) -> list[dict]:
    """Where the step time goes (GEMMs alone vs the rest) and the same steps with cuBLASLt preferred."""
    out = []
    weight_ms = matmul_params(model.config) * 2 / bandwidth * 1e3
    for label, b, q in (("decode", 1, 1), ("verify8", DIAG_BATCH, 8)):
        batch = case_batch(b, q, ctx, target.kv.num_pages, model.config.vocab_size, gen)
        row = dict(case=label, batch=b, context=ctx, weights_floor_ms=weight_ms)
        for lib in ("cublas", "cublaslt"):
            try:
                torch.backends.cuda.preferred_blas_library(lib)
                target.clear_graphs()
                with torch.no_grad():
                    row[f"step_ms_{lib}"] = events_median(lambda: target.forward(batch, None, layer_ids), args.reps,
                                                          args.warmup)
                    row[f"gemm_only_ms_{lib}"] = gemm_only_ms(model, b * q, args.reps, args.warmup)
            except Exception as exc:
                row[f"error_{lib}"] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
        torch.backends.cuda.preferred_blas_library("cublas")
        target.clear_graphs()
        log(json.dumps(row))
        out.append(row)
    return out


def bench_target(name: str, args, bandwidth: float, flops_rate: float, gen: torch.Generator
                 ) -> tuple[list, DenseLM, list]:
    model = build_model(name)
    cfg = model.config
    layer_ids = default_layer_ids(cfg.num_layers, 5)
    max_ctx = max(args.contexts)
    big = max(args.decode_batches)
    num_pages = big * -(-(max_ctx + 1) // PAGE) + 1
    num_pages = max(num_pages, max(args.verify_batches) * -(-(max_ctx + max(args.verify)) // PAGE) + 1)
    if args.diagnostics:  # its verify-8 case runs 32 sequences at the smallest context
        num_pages = max(num_pages, DIAG_BATCH * -(-(min(args.contexts) + 8) // PAGE) + 1)
    target = GraphedDenseTarget(model, num_pages, PAGE, max_query_len=GAMMA + 1, max_model_len=max_ctx + 64)
    fill_random(target.kv)
    weight_bytes = matmul_params(cfg) * 2
    kv_per_pos = cfg.num_layers * 2 * cfg.kv_size * 2
    log(f"{name}: {matmul_params(cfg) / 1e9:.2f}B matmul params, {num_pages} pages "
        f"({num_pages * PAGE * kv_per_pos / 2**30:.1f} GiB KV)")
    cases = [("decode", b, 1) for b in args.decode_batches] + \
            [(f"verify{q}", b, q) for q in args.verify for b in args.verify_batches]
    rows = []
    for ctx in args.contexts:
        for label, b, q in cases:
            t0 = time.time()
            row = dict(model=name, case=label, batch=b, q_len=q, context=ctx)
            try:
                batch = case_batch(b, q, ctx, num_pages, cfg.vocab_size, gen)
                with torch.no_grad():
                    before = target.num_graph_steps
                    got = target.forward(batch, None, layer_ids)
                    got_logits, got_feat = got.logits.clone(), got.features.clone()
                    row["graphed"] = target.num_graph_steps > before
                    eager = model(batch, target.kv, layer_ids)
                    row["err_graph_vs_eager"] = rel_err(got_logits, eager.logits)
                    row["err_features_graph_vs_eager"] = rel_err(got_feat, eager.features)
                    if b <= 32:
                        model.fused, model.attention = False, reference_attention
                        try:
                            ref = model(batch, target.kv, layer_ids)
                        finally:
                            model.fused, model.attention = None, None
                        row["err_vs_reference"] = rel_err(got_logits, ref.logits)
                        del ref
                    del eager, got_logits, got_feat
                    row["step_ms"] = events_median(lambda: target.forward(batch, None, layer_ids), args.reps,
                                                   args.warmup)
                    if b == 1 and label == "decode":
                        row["eager_ms"] = events_median(lambda: model(batch, target.kv, layer_ids), 5, 2)
                n = b * q
                kv_bytes = b * (ctx + q) * kv_per_pos
                flops = 2 * n * matmul_params(cfg) + 4 * n * (ctx + q) * cfg.q_size * cfg.num_layers
                row.update(bytes=weight_bytes + kv_bytes, flops=flops,
                           floor_bytes_ms=(weight_bytes + kv_bytes) / bandwidth * 1e3, floor_flops_ms=flops / flops_rate * 1e3)
                row["floor_ms"] = max(row["floor_bytes_ms"], row["floor_flops_ms"])
                row["x_floor"] = row["step_ms"] / row["floor_ms"]
            except Exception as exc:  # one broken case must not lose the others
                row["error"] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
            row["seconds"] = time.time() - t0
            log(json.dumps(row))
            rows.append(row)
        target.clear_graphs()
    diag = diagnostics(model, target, layer_ids, min(args.contexts), args, bandwidth, gen) if args.diagnostics else []
    del target
    torch.cuda.empty_cache()
    return rows, model, diag


def drafter_config() -> DrafterConfig:
    s = SHAPES["qwen3-4b"]
    return DrafterConfig(method="dspark", vocab_size=s["vocab_size"], hidden_size=s["hidden_size"],
                         intermediate_size=s["intermediate_size"], num_hidden_layers=5,
                         num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_key_value_heads"],
                         head_dim=s["head_dim"], num_target_layers=s["num_hidden_layers"],
                         target_layer_ids=default_layer_ids(s["num_hidden_layers"], 5), mask_token_id=151669,
                         block_size=GAMMA, rope_theta=s["rope_theta"], markov_rank=256, markov_head_type="vanilla",
                         enable_confidence_head=True, confidence_head_with_markov=True)


class SoftmaxArgmaxSampler:
    """Diagnostic stand-in for `RowSampler`: softmax probs, argmax draws (the drafter network without the
    engine's sort-based top-k/top-p processing and float64 inverse-CDF draws)."""

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=-1)

    def draw(self, probs: torch.Tensor) -> torch.Tensor:
        return probs.argmax(-1)

    def stack(self, probs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(probs, dim=1)


def bench_drafter(args, gen: torch.Generator) -> list[dict]:
    """`drafter.draft` (and `absorb_flat` of γ+1 tokens a row) for the 4B shape, eager and CUDA-graphed, at
    context 1,024 (or the smallest asked), on the drafter's fused and / or plain path (`--drafter-path`)."""
    cfg = drafter_config()
    torch.manual_seed(1)
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            drafter = DSparkDrafter(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    drafter = drafter.eval().requires_grad_(False)
    paths = ["fused", "plain"] if args.drafter_path == "both" else [args.drafter_path]
    ctx = min(args.contexts)
    rows = []
    for b in args.drafter_batches:
        per_seq = -(-(ctx + GAMMA + 1) // PAGE)
        num_pages = b * per_seq + 1
        cache = PagedKVCache(cfg.num_hidden_layers, num_pages, PAGE, cfg.num_key_value_heads, cfg.head_dim,
                             torch.bfloat16, "cuda")
        fill_random(cache)
        tables = (torch.randperm(num_pages - 1, generator=gen) + 1).view(b, per_seq).to(torch.int32).cuda()
        lengths = torch.full((b,), ctx, dtype=torch.long, device="cuda")
        anchors = torch.randint(0, cfg.vocab_size, (b,), generator=gen).cuda()
        params = RowParams.from_list([SamplingParams(1.0, 0, 1.0)] * b, "cuda")
        seeds = torch.arange(b, device="cuda")
        counters = torch.zeros(b, dtype=torch.long, device="cuda")
        # absorb: the γ+1 positions a row commits after a fully accepted verify, at ctx - γ - 1 .. ctx - 1
        new = GAMMA + 1
        features = torch.randn(b * new, len(cfg.target_layer_ids) * cfg.hidden_size, device="cuda",
                               dtype=torch.bfloat16)
        positions = (ctx - new + torch.arange(new, device="cuda")).repeat(b)
        table_rows = tables.long().repeat_interleave(new, 0)
        slots = table_rows.gather(1, (positions // PAGE)[:, None])[:, 0] * PAGE + positions % PAGE
        reference = None
        for path in paths:
            drafter.fused = path == "fused"
            row = dict(case="drafter.draft", path=path, batch=b, context=ctx)
            t0 = time.time()
            try:
                def draft():
                    state = drafter.state_for(PagedContextKV(cache, tables, lengths, ctx))
                    return drafter.draft(state, None, anchors, RowSampler(params, seeds, counters))

                def absorb():
                    drafter.absorb_flat(cache, features, positions, slots)

                with torch.no_grad():
                    eager = draft()
                    if reference is None:
                        reference = eager
                    else:  # the other path on the same inputs (T = 1 draws: ids agree until a near-tie flips)
                        row[f"same_ids_vs_{paths[0]}"] = (eager.draft_ids == reference.draft_ids).float().mean().item()
                        row[f"err_probs_vs_{paths[0]}"] = rel_err(eager.draft_probs, reference.draft_probs)
                    row["eager_ms"] = events_median(draft, args.reps, args.warmup)
                    try:
                        graph, static = capture(draft)
                        graph.replay()
                        torch.cuda.synchronize()
                        row["graph_same_ids"] = bool(torch.equal(static.draft_ids, eager.draft_ids))
                        row["err_probs_graph_vs_eager"] = rel_err(static.draft_probs, eager.draft_probs)
                        row["graph_ms"] = events_median(graph.replay, args.reps, args.warmup)
                        del graph, static

                        def network_only():
                            state = drafter.state_for(PagedContextKV(cache, tables, lengths, ctx))
                            return drafter.draft(state, None, anchors, SoftmaxArgmaxSampler())

                        row["graph_ms_softmax_argmax"] = graph_ms(network_only, args.reps, args.warmup)
                        row["absorb_graph_ms"] = graph_ms(absorb, args.reps, args.warmup)
                    except Exception as exc:
                        row["graph_error"] = f"{type(exc).__name__}: {exc}"
                        log(traceback.format_exc())
                del eager
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                log(traceback.format_exc())
            row["seconds"] = time.time() - t0
            log(json.dumps(row))
            rows.append(row)
        del cache, reference
        torch.cuda.empty_cache()
    del drafter
    torch.cuda.empty_cache()
    return rows


def launch_settings() -> str:
    """The kernel-launch switches this run used (skinny GEMM dispatch, programmatic dependent launch)."""
    skinny = os.environ.get("DSPARK_SKINNY_GEMM", "1") != "0"
    return f"skinny GEMM {'on' if skinny else 'off'}, PDL {'on' if use_pdl(torch.device('cuda'), 1) else 'off'}" \
        f" (launches of <= {pdl_max_rows()} rows)"


def print_table(rows: list[dict], drafts: list[dict], bandwidth: float, flops_rate: float) -> None:
    print(f"\ntarget step = GraphedDenseTarget.forward (static-buffer copies + CUDA graph replay of the fused forward); "
          f"{torch.cuda.get_device_name(0)}; copy {bandwidth / 1e12:.2f} TB/s, bf16 GEMM {flops_rate / 1e12:.0f} TFLOP/s; "
          f"{launch_settings()}")
    print(f"{'model':<10}{'case':<9}{'B':>4}{'ctx':>6}{'step ms':>9}{'floor ms':>9}{'x floor':>8}{'bytes':>7}"
          f"{'flops':>7}{'err eag':>9}{'err ref':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:<10}{r['case']:<9}{r['batch']:>4}{r['context']:>6}  ERROR {r['error'][:80]}")
            continue
        print(f"{r['model']:<10}{r['case']:<9}{r['batch']:>4}{r['context']:>6}{r['step_ms']:>9.3f}{r['floor_ms']:>9.3f}"
              f"{r['x_floor']:>8.2f}{r['floor_bytes_ms']:>7.2f}{r['floor_flops_ms']:>7.2f}"
              f"{r['err_graph_vs_eager']:>9.1e}{r.get('err_vs_reference', float('nan')):>9.1e}")
    decode = {(r["batch"], r["context"]): r["step_ms"] for r in rows
              if r.get("model") == "qwen3-4b" and r["case"] == "decode" and "step_ms" in r}
    print("\nDSpark drafter.draft, qwen3-4b shape (5 layers, rank 256, γ=7, V=151936), T=1; share of the 4B decode step;"
          " absorb = absorb_flat of γ+1 tokens a row, graphed")
    print(f"{'path':<6}{'B':>4}{'ctx':>6}{'eager ms':>10}{'graph ms':>10}{'4B step':>9}{'share(graph)':>14}"
          f"{'share(eager)':>14}{'graph, softmax+argmax sampler':>31}{'absorb ms':>11}")
    for r in drafts:
        step = decode.get((r["batch"], r["context"]))
        g, e = r.get("graph_ms"), r.get("eager_ms")
        share = lambda x: f"{x / step:.0%}" if (x is not None and step) else "-"  # noqa: E731
        print(f"{r.get('path', '-'):<6}{r['batch']:>4}{r['context']:>6}{e if e is not None else float('nan'):>10.3f}"
              f"{g if g is not None else float('nan'):>10.3f}{step if step else float('nan'):>9.3f}"
              f"{share(g):>14}{share(e):>14}"
              f"{r.get('graph_ms_softmax_argmax', float('nan')):>23.3f} ms {share(r.get('graph_ms_softmax_argmax')):>5}"
              f"{r.get('absorb_graph_ms', float('nan')):>11.3f}  {r.get('error', r.get('graph_error', ''))[:60]}")


def sps_tables(rows: list[dict], drafts: list[dict], model: str) -> dict:
    """The measured steps of `model` as `SPSTable`s (label -> table) beside the roofline's, per context and case.

    Measured: tokens per step B = batch x q_len -> 1 / step time, one table per (case, context); the
    drafter's proposal (graphed, else eager) is the draft cost of the verify-(γ+1) tables at its context.
    Roofline: `roofline_table("h200", model, context_len=ctx)` (DSpark drafter for the 4B shape) read at
    the same shape, R requests of q tokens: verify time(q·R) + its KV reads request_time(R), so both
    curves count the same bytes; its draft cost beside the measured one.
    """
    import numpy as np

    from dspark.scheduling import MODELS, SPSTable, roofline_table

    mine = [r for r in rows if r.get("model") == model and "step_ms" in r]
    draft = {}
    for r in sorted(drafts, key=lambda r: r.get("path") == "fused"):  # the fused path's time wins where both ran
        ms = r.get("graph_ms", r.get("eager_ms"))
        if ms is not None:
            draft.setdefault(r["context"], {})[r["batch"]] = ms * 1e-3
    tables = {}
    for ctx in sorted({r["context"] for r in mine}):
        here = [r for r in mine if r["context"] == ctx]
        max_req = 2 * max(r["batch"] for r in here)
        roof = None
        if model in MODELS:
            roof = roofline_table("h200", model, context_len=ctx, drafter="dspark" if model == "qwen3-4b" else None,
                                  max_tokens=max_req * max(r["q_len"] for r in here), max_requests=max_req)
        for case in sorted({r["case"] for r in here}, key=lambda c: (c != "decode", c)):
            pts = {r["batch"] * r["q_len"]: r["step_ms"] * 1e-3 for r in here if r["case"] == case}
            q = next(r["q_len"] for r in here if r["case"] == case)
            drafted = case == f"verify{GAMMA + 1}" and model == "qwen3-4b"
            tables[f"{case} ctx {ctx}"] = SPSTable(sorted(pts), [1 / pts[b] for b in sorted(pts)],
                                                   (draft.get(ctx) or None) if drafted else None,
                                                   meta={"source": "bench_engine (GraphedDenseTarget.forward)"})
            if roof is not None:
                req = np.arange(1, max_req + 1, dtype=np.float64)
                seconds = roof.step_time(q * req) + roof.request_time(req)
                cost = (req.astype(int).tolist(), roof.draft_time(req).tolist()) if drafted and roof.has_draft_cost else None
                tables[f"roofline {case} ctx {ctx}"] = SPSTable((q * req).astype(int).tolist(), (1 / seconds).tolist(), cost,
                                                                meta={"source": "roofline (h200 planning, KV reads included)"})
    return tables


def write_sps_plots(path: str, rows: list[dict], drafts: list[dict], device: str) -> list[str]:
    """One PNG per model (`PATH-<model>.png`) of `sps_tables`; returns the paths written."""
    from pathlib import Path

    from dspark.scheduling.plots import plot_sps

    out = []
    base = Path(path)
    for model in dict.fromkeys(r["model"] for r in rows if "step_ms" in r):
        tables = sps_tables(rows, drafts, model)
        target = base.with_name(f"{base.stem}-{model}{base.suffix or '.png'}")
        plot_sps(tables, target, title=f"{model} (random bf16 weights), measured on {device} vs roofline (h200 planning)")
        out.append(str(target))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    ap.add_argument("--models", default="qwen3-4b,qwen3-8b")
    ap.add_argument("--contexts", type=ints, default=[1024, 4096])
    ap.add_argument("--decode-batches", type=ints, default=[1, 8, 32, 128])
    ap.add_argument("--verify", type=ints, default=[4, 8])
    ap.add_argument("--verify-batches", type=ints, default=[1, 8, 32])
    ap.add_argument("--drafter-batches", type=ints, default=[1, 8, 32])
    ap.add_argument("--drafter-path", choices=["fused", "plain", "both"], default="both",
                    help="the drafter's inference path(s) to time (fused Triton kernels, plain PyTorch modules)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-diagnostics", dest="diagnostics", action="store_false")
    ap.add_argument("--out", default=None)
    ap.add_argument("--sps-plot", default=None, metavar="PATH",
                    help="PNG of the measured steps as SPS tables beside the roofline table (PATH-<model>.png)")
    args = ap.parse_args()
    import triton

    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()
    bandwidth, flops_rate = ceilings()
    log(f"copy {bandwidth / 1e12:.2f} TB/s, bf16 GEMM {flops_rate / 1e12:.0f} TFLOP/s")
    gen = torch.Generator().manual_seed(0)
    rows: list[dict] = []
    drafts: list[dict] = []
    diag: list[dict] = []
    for name in args.models.split(","):
        model_rows, model, model_diag = bench_target(name, args, bandwidth, flops_rate, gen)
        rows += model_rows
        diag += [dict(model=name, **r) for r in model_diag]
        del model
        torch.cuda.empty_cache()
        if name == "qwen3-4b" and args.drafter_batches:
            drafts = bench_drafter(args, gen)
    print_table(rows, drafts, bandwidth, flops_rate)
    if diag:
        print("\ndiagnostics (graphs): the step's GEMMs alone vs the whole step, cuBLAS and cuBLASLt preferred")
        print(f"{'model':<10}{'case':<9}{'B':>4}{'ctx':>6}{'weights floor':>14}{'gemm cublas':>12}{'step cublas':>12}"
              f"{'gemm lt':>9}{'step lt':>9}")
        nan = float("nan")
        for r in diag:
            print(f"{r['model']:<10}{r['case']:<9}{r['batch']:>4}{r['context']:>6}{r['weights_floor_ms']:>14.3f}"
                  f"{r.get('gemm_only_ms_cublas', nan):>12.3f}{r.get('step_ms_cublas', nan):>12.3f}"
                  f"{r.get('gemm_only_ms_cublaslt', nan):>9.3f}{r.get('step_ms_cublaslt', nan):>9.3f}")
    plots = write_sps_plots(args.sps_plot, rows, drafts, torch.cuda.get_device_name(0)) if args.sps_plot else []
    result = {"bench": "engine_target_step", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "triton": triton.__version__, "python": platform.python_version(), "copy_bandwidth_Bps": bandwidth,
              "bf16_matmul_flops": flops_rate, "launch": launch_settings(), "page_size": PAGE, "gamma": GAMMA, "seconds": time.time() - t0,
              "graphed": "target: whole forward incl. LM head, features; drafter: drafter.draft and absorb_flat (separately)",
              "config": vars(args), "target": rows, "drafter": drafts, "diagnostics": diag,
              "sps_plots": plots}
    line = json.dumps(result)
    if args.out:
        from pathlib import Path

        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "bench_engine.json").write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
