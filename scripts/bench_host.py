"""Where an engine step's time goes on the host: per-phase wall time of decode steps, plain and speculative.

    python scripts/bench_host.py [--target DIR] [--draft DIR] [--device cuda] [--batch 1,8] [--steps 200]

For each batch size, B requests decode in an engine (`dspark.engine.llm.LLM`, policy ``none`` without a
drafter, then ``fixed:γ`` with it) and, after a warm-up, every phase of `LLM.step` is timed with
`time.perf_counter` around it: the scheduler's `schedule`, the runner's plan building (`_plan`: lists,
the one upload), the step itself (`runner.step`: graph fill + replay, or the eager step; asynchronous on
CUDA), the read-back (`_read_back`: the one device-to-host read, which waits for the GPU), the
scheduler's `update` and the per-request outputs. GPU time hides in "step" + "read_back"; the rest is
host work that a faster GPU would not shorten. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from dspark.cli.common import add_model_arguments, load_pair
from dspark.engine.llm import LLM
from dspark.engine.options import SamplingOptions

PHASES = ("schedule", "plan", "step", "read_back", "update", "outputs")


def _timed(fn: Callable, bucket: list[float]) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        bucket.append(time.perf_counter() - t0)
        return out
    return wrapper


def measure(llm: LLM, batch: int, steps: int, warmup: int, prompt_len: int) -> dict[str, float]:
    """Median microseconds per phase over `steps` decode steps of `batch` requests."""
    times: dict[str, list[float]] = defaultdict(list)
    for i in range(batch):
        llm.add_request([(7 * i + j) % 200 + 1 for j in range(prompt_len)],
                        SamplingOptions(steps * 8 + warmup * 8 + 64, temperature=1.0, seed=i, ignore_eos=True))
    for _ in range(warmup):
        llm.step()
    runner, sched = llm.runner, llm.scheduler
    saved = (sched.schedule, runner._plan, runner.step, runner._read_back, sched.update, llm._output)
    sched.schedule, runner._plan = _timed(sched.schedule, times["schedule"]), _timed(runner._plan, times["plan"])
    runner.step, runner._read_back = _timed(runner.step, times["step"]), _timed(runner._read_back, times["read_back"])
    sched.update, llm._output = _timed(sched.update, times["update"]), _timed(llm._output, times["outputs"])
    totals = []
    try:
        for _ in range(steps):
            t0 = time.perf_counter()
            llm.step()
            totals.append(time.perf_counter() - t0)
    finally:
        sched.schedule, runner._plan, runner.step, runner._read_back, sched.update, llm._output = saved
    for rid in list(llm.scheduler.running) + list(llm.scheduler.waiting):
        llm.abort(rid if isinstance(rid, str) else rid.req_id)
    while llm.has_unfinished():
        llm.step()

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2] * 1e6 if xs else 0.0

    out = {p: med(times[p]) for p in PHASES}
    out["outputs"] *= batch  # one call per touched request
    out["total"] = med(totals)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--prompt-len", type=int, default=64)
    args = p.parse_args()
    target, drafter = load_pair(args, need_draft=True)
    gamma = drafter.config.num_drafts
    rows = []
    for b in (int(x) for x in args.batch.split(",")):
        for name, d, policy in (("plain", None, "none"), (f"fixed:{gamma}", drafter, f"fixed:{gamma}")):
            llm = LLM(target, d, policy=policy, max_num_seqs=b, enable_prefix_caching=False, detokenize=False)
            rows.append({"engine": name, "batch": b, **measure(llm, b, args.steps, args.warmup, args.prompt_len)})
            del llm
            if target.device.type == "cuda":
                torch.cuda.empty_cache()
    print(f"median µs per decode step and phase, {target.device} ({torch.cuda.get_device_name() if target.device.type == 'cuda' else 'cpu'})")
    print(f"{'engine':>10} {'B':>4} " + " ".join(f"{p:>10}" for p in PHASES + ("total",)))
    for r in rows:
        print(f"{r['engine']:>10} {r['batch']:>4} " + " ".join(f"{r[p]:10.1f}" for p in PHASES + ("total",)))
    print(json.dumps({"bench": "host_phases", "device": str(target.device), "rows": rows}))


if __name__ == "__main__":
    main()
