"""`dspark serve` under load: 200 concurrent streaming requests over loopback, nothing lost, /health answering.

Short requests (8 tokens, `ignore_eos`) so the whole load runs in well under a minute on 2 slow cores;
the figures (p50/p99 latency, duration) are printed (`pytest -s`) for the record.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from dspark.serve.bench import run_level, summarize
from helpers_serve import MODEL, shared_server, wait_idle

NUM_REQUESTS = 200
MAX_TOKENS = 8
PROMPTS = ["def add(a, b):", "import os", "class Stack:", "Hello, how are you?", "for i in range(10):"]


@pytest.fixture(scope="module")
def server():
    return shared_server()


async def _load(url: str):
    health: list[tuple[int, float]] = []
    done = asyncio.Event()

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=30.0) as client:
            while not done.is_set():
                start = time.perf_counter()
                status = (await client.get(url + "/health")).status_code
                health.append((status, time.perf_counter() - start))
                await asyncio.sleep(0.25)

    poller = asyncio.create_task(poll())
    try:
        records, duration = await run_level(url, MODEL, PROMPTS, NUM_REQUESTS, NUM_REQUESTS, MAX_TOKENS,
                                            temperature=1.0, seed=0, ignore_eos=True, timeout=300.0)
    finally:
        done.set()
        await poller
    return records, duration, health


def test_200_concurrent_streams_all_complete_and_health_answers(server):
    wait_idle(server.url)
    records, duration, health = asyncio.run(_load(server.url))
    failed = [r.error for r in records if not r.ok]
    assert not failed, failed[:5]
    assert len(records) == NUM_REQUESTS
    assert all(r.completion_tokens == MAX_TOKENS and r.finish_reason == "length" for r in records)
    assert all(r.text for r in records)
    assert len(health) >= 3 and all(status == 200 for status, _ in health)
    summary = summarize(records, NUM_REQUESTS, duration)
    print(f"\nload: {NUM_REQUESTS} streams x {MAX_TOKENS} tokens at concurrency {NUM_REQUESTS}, lost 0, "
          f"{duration:.1f} s, latency p50 {summary['latency_ms']['p50']:.0f} ms p99 {summary['latency_ms']['p99']:.0f} ms, "
          f"TTFT p50 {summary['ttft_ms']['p50']:.0f} ms, /health max {max(t for _, t in health) * 1e3:.0f} ms "
          f"over {len(health)} polls")
    assert max(t for _, t in health) < 10.0
    m = wait_idle(server.url)
    assert m["dspark:kv_cache_pages_used"] == 0
