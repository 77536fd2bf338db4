"""Training benchmarks: DSpark drafter throughput (cached vs online) and single-vs-distributed loss agreement.

    # throughput against a Qwen3-0.6B-shaped target with random weights (nothing downloaded):
    python scripts/bench_training.py throughput --workdir /tmp/bench [--seq-len 2048 --num-anchors 512]
    # a small learnable setup (bigram target + data + config.json) for DDP / FSDP agreement runs:
    python scripts/bench_training.py make-small --workdir /tmp/small
    # train one drafter from a standard and from a compact cache, evaluate both on exact online features:
    python scripts/bench_training.py compact-acceptance --workdir /tmp/compact [--device cpu --seeds 0 1]
    # compare the metrics.jsonl of several runs with the first one (max relative difference per key):
    python scripts/bench_training.py compare /tmp/small/single /tmp/small/ddp /tmp/small/fsdp

Each subcommand prints a table, then ONE JSON line. Throughput times `Trainer.train_step()` itself (data
from the cache or the online target, anchors, forward, backward, AdamW), eager PyTorch with bf16 autocast,
`torch.cuda.synchronize()` around every step, median over the steps after warm-up; peak memory is
`torch.cuda.max_memory_allocated()` over the timed steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, tie_word_embeddings=True)


def make_target(path: Path, shape: dict[str, Any], device: str, init_range: float = 0.02, seed: int = 0) -> Path:
    """A Qwen3 causal LM with random weights (bf16 on CUDA), saved with `save_pretrained`; no tokenizer."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    cfg = Qwen3Config(**shape, initializer_range=init_range, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    with torch.device(device):  # initialise where the compute is: a 0.6B init on the CPU takes long
        model = Qwen3ForCausalLM(cfg)
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    return path


def write_tokens(path: Path, rows: list[tuple[list[int], int]]) -> Path:
    """JSONL of {"id", "input_ids", "loss_mask"}: `prompt_len` unsupervised tokens, then the response."""
    with path.open("w") as f:
        for i, (ids, prompt_len) in enumerate(rows):
            f.write(json.dumps({"id": i, "input_ids": ids, "loss_mask": [0] * prompt_len + [1] * (len(ids) - prompt_len)}) + "\n")
    return path


def _fmt_gib(x: int) -> str:
    return f"{x / 2**30:.2f}"


# -- throughput -----------------------------------------------------------------------------------------
def time_mode(args: argparse.Namespace, target_dir: Path, data: Path, cache: Path | None, micro_batch: int,
              anchors_per_seq: int) -> dict[str, Any]:
    """Build a Trainer for one mode and time its optimizer steps."""
    from dspark.train.config import TrainConfig
    from dspark.train.trainer import Trainer

    cuda = args.device.startswith("cuda")
    cfg = TrainConfig(target=str(target_dir), data=[] if cache else [str(data)], cache=str(cache or ""),
                      output_dir=str(args.workdir / "runs" / f"{cache.name if cache else 'online'}-{micro_batch}"),
                      num_draft_layers=args.draft_layers, block_size=args.block_size, num_anchors=args.num_anchors,
                      global_batch=args.global_batch, micro_batch=micro_batch, max_steps=10_000, eval_fraction=0.0,
                      max_length=args.seq_len, tensorboard=False, device=args.device, eval_every=10**9, save_every=10**9)
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    setup_s = time.perf_counter() - t0
    times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup and cuda:
            torch.cuda.reset_peak_memory_stats()
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        stats = trainer.train_step()
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    tokens = args.global_batch * args.seq_len
    out = {"mode": "online" if cache is None else f"cached-{cache.name}", "micro_batch": micro_batch,
           "global_batch": args.global_batch, "step_s": step_s, "step_s_min": min(times), "step_s_max": max(times),
           "tokens_per_s": tokens / step_s, "anchors_per_s": args.global_batch * anchors_per_seq / step_s,
           "peak_bytes": torch.cuda.max_memory_allocated() if cuda else 0, "setup_s": setup_s,
           "last_loss": stats["loss"], "drafter_params": sum(p.numel() for p in trainer.drafter.parameters() if p.requires_grad)}
    del trainer
    if cuda:
        torch.cuda.empty_cache()
    return out


def cmd_throughput(args: argparse.Namespace) -> None:
    from dspark.targets import load_target
    from dspark.train.cache_build import build_cache
    from dspark.train.data import DataConfig
    from dspark.train.objectives import CHUNK_ELEMENTS

    args.workdir.mkdir(parents=True, exist_ok=True)
    shape = TINY if args.tiny else QWEN3_0_6B
    t0 = time.perf_counter()
    target_dir = make_target(args.workdir / "target", shape, args.device)
    g = torch.Generator().manual_seed(0)
    rows = [(torch.randint(0, shape["vocab_size"], (args.seq_len,), generator=g).tolist(), args.prompt_len)
            for _ in range(args.num_samples)]
    data = write_tokens(args.workdir / "data.jsonl", rows)
    prep_s = time.perf_counter() - t0
    anchors_per_seq = min(args.num_anchors, args.seq_len - args.prompt_len - 1)
    target = load_target(target_dir, dtype="bfloat16" if args.device.startswith("cuda") else "float32", device=args.device)
    layer_ids = target.default_layer_ids(5)
    n_params = sum(p.numel() for p in target.model.parameters())
    caches: dict[str, dict[str, Any]] = {}
    for fmt in args.cache_formats:
        t = time.perf_counter()
        manifest = build_cache(target, [str(data)], args.workdir / fmt, layer_ids=layer_ids, cache_format=fmt,
                               data_config=DataConfig(max_length=args.seq_len), batch_size=8)
        size = sum(p.stat().st_size for p in (args.workdir / fmt).rglob("*") if p.is_file())
        caches[fmt] = {"build_s": time.perf_counter() - t, "bytes": size,
                       "bytes_per_token": size / (args.num_samples * args.seq_len), "num_samples": manifest["num_samples"]}
    del target
    results = []
    for micro_batch in args.micro_batches:
        for mode in args.modes:
            cache = None if mode == "online" else args.workdir / mode
            if mode != "online" and mode not in caches:
                continue
            results.append(time_mode(args, target_dir, data, cache, micro_batch, anchors_per_seq))
    for r in results:
        ref = next((x for x in results if x["mode"] == "cached-standard" and x["micro_batch"] == r["micro_batch"]), None)
        r["vs_cached_standard"] = r["step_s"] / ref["step_s"] if ref else None
    vocab_rows = args.num_anchors * args.block_size
    print(f"target: Qwen3 {'tiny' if args.tiny else '0.6B-shaped'} ({n_params / 1e6:.0f}M params, random weights); "
          f"drafter {args.draft_layers} layers, gamma={args.block_size}, {args.num_anchors} anchors/seq, seq {args.seq_len}, "
          f"global batch {args.global_batch} seqs; {args.device}, eager{', bf16 autocast' if args.device.startswith('cuda') else ''}")
    print(f"{'mode':<17}{'micro':>6}{'step s':>9}{'tokens/s':>11}{'anchors/s':>11}{'peak GiB':>10}{'x cached':>10}")
    for r in results:
        ratio = "" if r["vs_cached_standard"] is None else f"{r['vs_cached_standard']:.2f}"
        print(f"{r['mode']:<17}{r['micro_batch']:>6}{r['step_s']:>9.3f}{r['tokens_per_s']:>11.0f}{r['anchors_per_s']:>11.0f}"
              f"{_fmt_gib(r['peak_bytes']):>10}{ratio:>10}")
    for fmt, c in caches.items():
        print(f"cache {fmt}: {c['bytes_per_token']:.0f} bytes/token, built in {c['build_s']:.1f} s")
    worst = max((r["vs_cached_standard"] for r in results if r["mode"] == "online" and r["vs_cached_standard"]), default=None)
    print(json.dumps({
        "bench": "training_throughput", "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__, "target_params": n_params, "target_shape": shape, "seq_len": args.seq_len,
        "prompt_len": args.prompt_len, "num_anchors": args.num_anchors, "block_size": args.block_size,
        "draft_layers": args.draft_layers, "global_batch": args.global_batch, "warmup": args.warmup, "steps": args.steps,
        "chunk_elements": CHUNK_ELEMENTS, "unchunked_fp32_logits_bytes_per_seq": vocab_rows * shape["vocab_size"] * 4,
        "prep_s": prep_s, "caches": caches, "results": results, "online_over_cached_max": worst,
        "goal_online_le_2x_cached": None if worst is None else worst <= 2.0}))


# -- small learnable setup for distributed agreement ----------------------------------------------------
def make_small(workdir: Path, vocab: int, num_samples: int, seq_len: int, prompt_len: int, steps: int) -> dict[str, Any]:
    """A sharp bigram target (attention/MLP outputs zeroed) and data that follows its greedy map 90% of the
    time; returns (and writes as config.json) a small DSpark training config for them."""
    from transformers import Qwen3ForCausalLM

    workdir.mkdir(parents=True, exist_ok=True)
    shape = dict(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, tie_word_embeddings=False)
    tdir = make_target(workdir / "target", shape, "cpu", init_range=0.3, seed=3)
    model = Qwen3ForCausalLM.from_pretrained(tdir, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        greedy = model(torch.arange(vocab).unsqueeze(1)).logits[:, -1].argmax(-1)  # [V]
    model.save_pretrained(tdir)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(num_samples):
        ids = torch.randint(0, vocab, (seq_len,), generator=g)
        jump = torch.rand(seq_len, generator=g) < 0.1
        for t in range(prompt_len, seq_len):
            if not jump[t]:
                ids[t] = greedy[ids[t - 1]]
        rows.append((ids.tolist(), prompt_len))
    data = write_tokens(workdir / "data.jsonl", rows)
    config = dict(target=str(tdir), data=[str(data)], method="dspark", num_draft_layers=2, block_size=7,
                  num_anchors=64, global_batch=16, micro_batch=4, max_steps=steps, lr=1e-3, eval_every=100,
                  save_every=100, eval_fraction=0.05, max_eval_samples=32, log_every=1, tensorboard=False,
                  max_length=seq_len)
    (workdir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return config


def cmd_make_small(args: argparse.Namespace) -> None:
    config = make_small(args.workdir, args.vocab, args.num_samples, args.seq_len, args.prompt_len, args.steps)
    print(f"{'file':<40}{'what'}")
    print(f"{config['target']:<40}bigram Qwen3 target, vocab {args.vocab}, hidden 256, 4 layers")
    print(f"{config['data'][0]:<40}{args.num_samples} samples x {args.seq_len} tokens")
    print(json.dumps({"bench": "make_small", "workdir": str(args.workdir), "config": config}))


def cmd_compact_acceptance(args: argparse.Namespace) -> None:
    """Train the same drafter from a standard and from a compact cache; evaluate both on exact (online) features."""
    from dspark import load_drafter
    from dspark.drafters import config_from_target
    from dspark.targets import load_target
    from dspark.train.cache_build import build_cache
    from dspark.train.config import TrainConfig
    from dspark.train.data import DataConfig
    from dspark.train.trainer import Trainer

    config = make_small(args.workdir, args.vocab, args.num_samples, args.seq_len, args.prompt_len, args.steps)
    config.update(device=args.device, eval_every=args.steps, save_every=args.steps)
    target = load_target(config["target"], dtype="float32", device=args.device)
    layer_ids = config_from_target(target, "dspark").target_layer_ids
    sizes = {}
    for fmt in ("standard", "compact"):
        build_cache(target, config["data"], args.workdir / f"cache-{fmt}", layer_ids=layer_ids, cache_format=fmt,
                    data_config=DataConfig(max_length=args.seq_len))
        sizes[fmt] = sum(p.stat().st_size for p in (args.workdir / f"cache-{fmt}").rglob("*") if p.is_file())
    tokens = args.num_samples * args.seq_len
    rows = []
    for seed in args.seeds:
        for fmt in ("standard", "compact"):
            run = args.workdir / f"train-{fmt}-seed{seed}"
            t0 = time.perf_counter()
            own = Trainer(TrainConfig(**{**config, "data": [], "cache": str(args.workdir / f"cache-{fmt}"),
                                         "output_dir": str(run), "seed": seed})).fit()
            seconds = time.perf_counter() - t0
            judge = Trainer(TrainConfig(**{**config, "output_dir": str(run / "online-eval"), "seed": seed}))
            judge.drafter.load_state_dict(load_drafter(run / "final").state_dict())
            exact = judge.evaluate()
            rows.append({"cache": fmt, "seed": seed, "bytes_per_token": sizes[fmt] / tokens, "train_s": seconds,
                         "final_loss": own["loss"], "tau_on_own_cache": own["tau_estimate"],
                         "tau_online": exact["tau_estimate"], "accept_conditional_online": exact["accept_conditional"]})
    print(f"{'cache':<10}{'seed':>5}{'B/token':>9}{'loss':>8}{'tau(own cache)':>16}{'tau(online)':>13}  conditional acceptance (online)")
    for r in rows:
        acc = " ".join(f"{x:.3f}" for x in r["accept_conditional_online"])
        print(f"{r['cache']:<10}{r['seed']:>5}{r['bytes_per_token']:>9.0f}{r['final_loss']:>8.4f}{r['tau_on_own_cache']:>16.4f}"
              f"{r['tau_online']:>13.4f}  {acc}")
    print(json.dumps({"bench": "compact_cache_acceptance", "device": args.device, "config": config, "results": rows}))


def cmd_compare(args: argparse.Namespace) -> None:
    """Max relative difference of each run's per-step metrics against the first run's."""
    def load(run: str) -> dict[int, dict[str, Any]]:
        lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
        return {m["step"]: m for m in map(json.loads, lines)}

    ref = load(args.runs[0])
    keys = ("loss", "grad_norm", "eval_loss", "tau_estimate")
    out = []
    for run in args.runs[1:]:
        cur = load(run)
        steps = sorted(set(ref) & set(cur))
        row: dict[str, Any] = {"run": run, "steps": len(steps), "ref_steps": len(ref)}
        for k in keys:
            diffs = [abs(cur[s][k] - ref[s][k]) / max(abs(ref[s][k]), 1e-12) for s in steps if k in ref[s] and k in cur[s]]
            row[f"max_rel_{k}"] = max(diffs) if diffs else None
            row[f"n_{k}"] = len(diffs)
        first, last = ref[steps[0]]["loss"], ref[steps[-1]]["loss"]
        row.update(ref_loss_first=first, ref_loss_last=last, run_loss_last=cur[steps[-1]]["loss"])
        out.append(row)
    print(f"reference: {args.runs[0]}")
    print(f"{'run':<34}{'steps':>6}" + "".join(f"{'max rel ' + k:>22}" for k in keys))
    for r in out:
        cells = "".join(f"{'-' if r[f'max_rel_{k}'] is None else format(r[f'max_rel_{k}'], '.2e'):>22}" for k in keys)
        print(f"{r['run'][-34:]:<34}{r['steps']:>6}{cells}")
    print(json.dumps({"bench": "training_agreement", "reference": args.runs[0], "runs": out}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--workdir", type=Path, default=Path("/tmp/dspark-bench-training"))
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--tiny", action="store_true", help="tiny target (a CPU smoke run of this script)")
    t.add_argument("--seq-len", type=int, default=2048)
    t.add_argument("--prompt-len", type=int, default=128)
    t.add_argument("--num-samples", type=int, default=32)
    t.add_argument("--num-anchors", type=int, default=512)
    t.add_argument("--block-size", type=int, default=7)
    t.add_argument("--draft-layers", type=int, default=5)
    t.add_argument("--global-batch", type=int, default=8)
    t.add_argument("--micro-batches", type=int, nargs="+", default=[1, 4])
    t.add_argument("--modes", nargs="+", default=["standard", "compact", "online"], help="cache formats and/or online")
    t.add_argument("--warmup", type=int, default=3)
    t.add_argument("--steps", type=int, default=10)
    s = sub.add_parser("make-small")
    s.add_argument("--workdir", type=Path, required=True)
    s.add_argument("--vocab", type=int, default=2048)
    s.add_argument("--num-samples", type=int, default=512)
    s.add_argument("--seq-len", type=int, default=256)
    s.add_argument("--prompt-len", type=int, default=16)
    s.add_argument("--steps", type=int, default=300)
    a = sub.add_parser("compact-acceptance")
    a.add_argument("--workdir", type=Path, required=True)
    a.add_argument("--device", default="cpu")
    a.add_argument("--vocab", type=int, default=512)
    a.add_argument("--num-samples", type=int, default=256)
    a.add_argument("--seq-len", type=int, default=96)
    a.add_argument("--prompt-len", type=int, default=8)
    a.add_argument("--steps", type=int, default=200)
    a.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c = sub.add_parser("compare")
    c.add_argument("runs", nargs="+")
    args = p.parse_args()
    if args.cmd == "throughput":
        args.cache_formats = [m for m in args.modes if m != "online"]
        if args.prompt_len >= args.seq_len - 1:
            p.error("--prompt-len must be shorter than --seq-len - 1")
        cmd_throughput(args)
    elif args.cmd == "make-small":
        cmd_make_small(args)
    elif args.cmd == "compact-acceptance":
        cmd_compact_acceptance(args)
    else:
        cmd_compare(args)


if __name__ == "__main__":
    main()
