"""Timing GPU work the way a decode step runs it: inside a CUDA graph, weights streamed from HBM.

Back-to-back eager calls of a small kernel measure the Python launch path (~25-35 µs per call on the
H200 machine whatever the kernel), and repeating one call on one weight matrix that fits in the 50 MB
L2 measures the cache, not the memory. A decode step does neither: its launches are replayed from a
graph and every weight is read from HBM once. `rotating_graph_us` times a call the same way: the graph
holds `calls` launches cycling over enough copies of the operands that their bytes exceed `L2_DEFEAT`,
so each launch finds its weight evicted, and the replays' CUDA-event median is divided by the count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

L2_DEFEAT = 160 << 20  # bytes of operands cycled through: over 3x an H200's 50 MB L2


def events_median_ms(fn: Callable[[], object], reps: int, warmup: int) -> float:
    """Median CUDA-event time of `fn` in ms over `reps` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(start, end):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(start, end))
    return times[len(times) // 2]


def capture(fn: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """(CUDA graph of `fn`, its static output), after a warm-up call on a side stream."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def copies_needed(nbytes: int) -> int:
    """How many copies of `nbytes` of operands to cycle through so that together they defeat the L2."""
    return max(1, -(-L2_DEFEAT // max(1, nbytes)))


def rotating_graph_us(calls: Sequence[Callable[[], object]], launches: int = 24, replays: int = 7) -> float:
    """Median µs per launch of a graph that runs `launches` calls cycling over `calls` (one per operand copy)."""
    per_copy = max(1, -(-launches // len(calls)))

    def run() -> None:
        for _ in range(per_copy):
            for call in calls:
                call()

    graph, _ = capture(run)
    ms = events_median_ms(graph.replay, replays, 2)
    del graph
    return ms * 1e3 / (per_copy * len(calls))
