"""Where a speculative engine step's GPU time goes: torch.profiler over decode steps, by phase and by kernel.

    python scripts/profile_step.py --target random:qwen3-8b --drafter random:5 --batch 1,64,256 [--steps 4]

For each batch size B, B requests decode in an eager engine (`enforce_eager`: every op is its own
kernel, so the profiler sees each one; kernel times are what a CUDA graph replays, launch gaps aside)
with policy ``fixed:γ`` and synthetic acceptance (benchmark only, NOT lossless: drafts are accepted
by the preset's curve so every step verifies γ), then `--steps` steps run under torch.profiler. It
prints the GPU time per phase (`step.target`, `step.verify`, `step.absorb`, `step.propose` and the
drafter's `draft.backbone` / `draft.lm_head` / `draft.sequential`, the `record_function` labels of
`dspark.engine.step` and `dspark.drafters.dspark`) and the top kernels, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from dspark.cli.common import DEFAULT_DRAFT, DEFAULT_TARGET, load_target_checked
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions
from dspark.engine.synthetic import NOT_LOSSLESS
from dspark.formats import load_drafter
from dspark.targets.random_weights import random_drafter, random_target

PHASES = ("step.target", "step.verify", "step.absorb", "step.propose", "draft.backbone", "draft.lm_head",
          "draft.sequential")


def build(args: argparse.Namespace):
    if args.target.startswith("random:"):
        target = random_target(args.target.split(":", 1)[1], device="cuda", dtype="bfloat16")
    else:
        target = load_target_checked(args.target, "bfloat16", "cuda")
    if args.drafter.startswith("random"):
        layers = int(args.drafter.split(":", 1)[1]) if ":" in args.drafter else None
        drafter = random_drafter(target, "dspark", layers)
    else:
        drafter = load_drafter(args.drafter, target=target, device="cuda")
    return target, drafter


def _kernel_us(event) -> float:
    """GPU time of every kernel launched under a CPU event (its own and its descendants')."""
    own = sum(k.duration for k in getattr(event, "kernels", []) or [])
    return own + sum(_kernel_us(child) for child in event.cpu_children)


def phase_times(events, steps: int) -> dict[str, float]:
    """ms of kernels per step under each `record_function` phase label."""
    out: dict[str, float] = defaultdict(float)
    for e in events:
        if e.name in PHASES:
            out[e.name] += _kernel_us(e) / steps / 1e3
    return dict(out)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def profile_batch(target, drafter, batch: int, steps: int, prompt_len: int, preset: str) -> dict:
    gamma = drafter.config.num_drafts
    llm = LLM(target, drafter, policy=f"fixed:{gamma}", max_num_seqs=batch, enforce_eager=True,
              max_num_batched_tokens=max(2048, batch * (gamma + 1)), max_model_len=prompt_len + 64 * (gamma + 1),
              synthetic_acceptance=preset, detokenize=False)
    for i in range(batch):
        llm.add_request([(7 * i + j) % 1000 + 1 for j in range(prompt_len)],
                        SamplingOptions(48 * (gamma + 1), temperature=1.0, seed=i, ignore_eos=True))
    while any(r.in_prefill or not r.output_ids for r in llm.scheduler.requests.values()):
        llm.step()
    for _ in range(2):
        llm.step()
    _sync()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            llm.step()
        _sync()
    events = prof.key_averages()
    phases = phase_times(prof.events(), steps)
    kernels = defaultdict(float)
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA and e.key not in PHASES:
            kernels[e.key] += e.device_time_total / steps / 1e3
    total = sum(kernels.values())
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:25]
    return {"batch": batch, "phases_ms": phases, "kernels_total_ms": total, "top_kernels_ms": top}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", default=DEFAULT_TARGET)
    p.add_argument("--drafter", default=DEFAULT_DRAFT)
    p.add_argument("--batch", default="1,64")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--synthetic-acceptance", default="dspark/math")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: profile_step needs CUDA", file=sys.stderr)
        return 2
    target, drafter = build(args)
    rows = []
    for b in (int(x) for x in args.batch.split(",")):
        row = profile_batch(target, drafter, b, args.steps, args.prompt_len, args.synthetic_acceptance)
        rows.append(row)
        print(f"batch {b}: kernels {row['kernels_total_ms']:.2f} ms/step  [{NOT_LOSSLESS}]")
        for name in PHASES:
            if name in row["phases_ms"]:
                print(f"  {name:18s} {row['phases_ms'][name]:8.3f} ms")
        for name, ms in row["top_kernels_ms"]:
            print(f"  {ms:8.3f} ms  {name[:110]}")
    print(json.dumps({"bench": "profile_step", "note": NOT_LOSSLESS, "target": args.target, "drafter": args.drafter,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
