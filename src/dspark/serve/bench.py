"""`dspark bench serve`: a client-side benchmark of any OpenAI-compatible server (the `vllm bench serve` idea).

    dspark bench serve --base-url http://127.0.0.1:8000/v1 --dataset mt-bench --concurrency 1,8,64 --num-prompts 64

For each concurrency level, `num_prompts` streamed chat completions (the first user turn of each prompt,
cycled) run with at most that many in flight; every chunk's arrival time is recorded. Reported per
level: output throughput (tokens/s over the level's wall time), per-user tokens/s (a request's tokens
over its own latency, median), TTFT, TPOT ((latency - TTFT) / (tokens - 1)) and end-to-end latency
percentiles, failures, and — when the server is `dspark serve` — τ (tokens per verification round)
from the difference of its /metrics counters. Prints a table, then ONE JSON line; `--plot FILE` draws
throughput against per-user tokens/s. Token counts come from the server's `usage`.

A `dspark serve --benchmark --synthetic-acceptance` server says so in its /v1/models entry
(`dspark_acceptance`); the result then carries that label and every table line says NOT lossless.
`expect_acceptance` (`--synthetic-acceptance SPEC`) refuses a server that does not run that model.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass
class RequestRecord:
    ok: bool
    start: float
    end: float
    ttft: float | None = None
    completion_tokens: int = 0
    prompt_tokens: int = 0
    text: str = ""
    finish_reason: str | None = None
    chunk_times: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.completion_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.completion_tokens - 1)


def base_v1(url: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/chat/completions` -> `http://host:8000/v1`."""
    base = url.rstrip("/")
    for tail in ("/chat/completions", "/completions"):
        if base.endswith(tail):
            base = base[: -len(tail)]
    return base if base.endswith("/v1") else base + "/v1"


def load_prompts(dataset: str, limit: int | None = None) -> list[str]:
    """First user turns (or texts) of a named prompt set (mt-bench, humaneval, ...) or a JSONL file."""
    from dspark.errors import DataError
    from dspark.eval.runner import load_conversations, resolve_prompt_sets

    (prompt_set,) = resolve_prompt_sets([dataset])
    out = []
    for conv in load_conversations(prompt_set.path, limit):
        if conv.turns:
            out.append(conv.turns[0])
        elif conv.text is not None:
            out.append(conv.text)
    if not out:
        raise DataError(f"{dataset}: no text prompts (token-id records are not sent by this benchmark)")
    return out


async def one_request(client: Any, url: str, payload: dict[str, Any]) -> RequestRecord:
    """One streamed chat completion, timed chunk by chunk."""
    start = time.perf_counter()
    rec = RequestRecord(ok=False, start=start, end=start)
    parts: list[str] = []
    try:
        async with client.stream("POST", url, json=payload) as response:
            if response.status_code != 200:
                body = (await response.aread()).decode(errors="replace")
                rec.error = f"HTTP {response.status_code}: {body[:200]}"
                return rec
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    rec.ok = rec.error is None
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    rec.error = str(chunk["error"].get("message"))
                    continue
                if chunk.get("usage"):
                    rec.completion_tokens = int(chunk["usage"]["completion_tokens"])
                    rec.prompt_tokens = int(chunk["usage"]["prompt_tokens"])
                for choice in chunk.get("choices", []):
                    content = (choice.get("delta") or {}).get("content") or choice.get("text") or ""
                    if content:
                        now = time.perf_counter()
                        if rec.ttft is None:
                            rec.ttft = now - start
                        rec.chunk_times.append(now - start)
                        parts.append(content)
                    if choice.get("finish_reason"):
                        rec.finish_reason = choice["finish_reason"]
    except Exception as exc:  # noqa: BLE001 - a failed request is a data point, not a crash
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        rec.end = time.perf_counter()
        rec.text = "".join(parts)
    if rec.ok and rec.ttft is None:  # no text at all (e.g. EOS first): the first token is the last one
        rec.ttft = rec.latency
    return rec


def _percentiles(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in PERCENTILES}
    ordered = sorted(values)
    out = {}
    for p in PERCENTILES:
        k = min(len(ordered) - 1, max(0, int(round(p / 100 * (len(ordered) - 1)))))
        out[f"p{p}"] = ordered[k] * scale
    return out


def summarize(records: list[RequestRecord], concurrency: int, duration: float) -> dict[str, Any]:
    good = [r for r in records if r.ok]
    tokens = sum(r.completion_tokens for r in good)
    per_user = [r.completion_tokens / r.latency for r in good if r.latency > 0]
    return {
        "concurrency": concurrency, "requests": len(records), "completed": len(good), "failed": len(records) - len(good),
        "duration_s": duration, "output_tokens": tokens, "output_tok_s": tokens / duration if duration > 0 else 0.0,
        "request_s": len(good) / duration if duration > 0 else 0.0,
        "per_user_tok_s": statistics.median(per_user) if per_user else 0.0,
        "ttft_ms": _percentiles([r.ttft for r in good if r.ttft is not None], 1e3),
        "tpot_ms": _percentiles([t for r in good if (t := r.tpot) is not None], 1e3),
        "latency_ms": _percentiles([r.latency for r in good], 1e3),
        "errors": sorted({r.error for r in records if r.error})[:5],
    }


async def run_level(base_url: str, model: str, prompts: list[str], concurrency: int, num_prompts: int,
                    max_tokens: int, temperature: float = 0.0, seed: int = 0, ignore_eos: bool = False,
                    api_key: str | None = None, timeout: float = 600.0) -> tuple[list[RequestRecord], float]:
    """`num_prompts` streamed requests with at most `concurrency` in flight -> (records, wall seconds)."""
    import httpx

    url = base_v1(base_url) + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    gate = asyncio.Semaphore(concurrency)

    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        async def go(i: int) -> RequestRecord:
            payload = {"model": model, "messages": [{"role": "user", "content": prompts[i % len(prompts)]}],
                       "max_tokens": max_tokens, "temperature": temperature, "seed": seed + i, "stream": True,
                       "stream_options": {"include_usage": True}}
            if ignore_eos:
                payload["ignore_eos"] = True
            async with gate:
                return await one_request(client, url, payload)

        start = time.perf_counter()
        records = await asyncio.gather(*(go(i) for i in range(num_prompts)))
        return list(records), time.perf_counter() - start


async def _get(base_url: str, path: str, api_key: str | None) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(timeout=30.0, headers=headers) as client:
        response = await client.get(base_url + path)
        response.raise_for_status()
        return response


async def discover_model(base_url: str, api_key: str | None) -> str:
    from dspark.errors import ConfigError

    try:
        return str((await _get(base_v1(base_url), "/models", api_key)).json()["data"][0]["id"])
    except Exception as exc:
        raise ConfigError(f"could not list the models at {base_v1(base_url)}/models ({exc}); pass --model") from exc


async def server_acceptance(base_url: str, api_key: str | None) -> str | None:
    """A dspark server's synthetic acceptance label (NOT lossless) from /v1/models; None: lossless or unknown."""
    try:
        cards = (await _get(base_v1(base_url), "/models", api_key)).json()["data"]
    except Exception:  # noqa: BLE001 - another server, or no model list: nothing to label
        return None
    labels = [c.get("dspark_acceptance") for c in cards if isinstance(c, dict) and c.get("dspark_acceptance")]
    return str(labels[0]) if labels else None


def check_acceptance(label: str | None, expected: str | None) -> None:
    """Refuse a server whose acceptance is not the synthetic model the benchmark was asked to measure."""
    from dspark.errors import ConfigError

    if expected is None:
        return
    needle = Path(expected).name if expected.endswith(".jsonl") else expected.strip()  # a trace is named by its file
    if label is None or needle.lower() not in label.lower():
        raise ConfigError(f"--synthetic-acceptance {expected!r}: the server reports "
                          f"{label or 'lossless acceptance'}; start it with --benchmark --synthetic-acceptance {expected}")


async def spec_counters(base_url: str, api_key: str | None) -> dict[str, float] | None:
    """dspark's speculation counters from /metrics (None for servers that do not have them)."""
    root = base_v1(base_url)[: -len("/v1")]
    try:
        text = (await _get(root, "/metrics", api_key)).text
    except Exception:  # noqa: BLE001 - another server, or no metrics
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        for key in ("spec_decode_num_rounds_total", "spec_decode_num_accepted_tokens_total", "engine_steps_total"):
            if line.startswith(f"dspark:{key}{{"):
                out[key] = float(line.rsplit(" ", 1)[1])
    return out or None


def tau(before: dict[str, float] | None, after: dict[str, float] | None) -> float | None:
    if not before or not after:
        return None
    rounds = after.get("spec_decode_num_rounds_total", 0) - before.get("spec_decode_num_rounds_total", 0)
    accepted = after.get("spec_decode_num_accepted_tokens_total", 0) - before.get("spec_decode_num_accepted_tokens_total", 0)
    return (accepted + rounds) / rounds if rounds > 0 else None


async def benchmark(base_url: str, dataset: str, concurrencies: list[int], num_prompts: int, max_tokens: int,
                    model: str | None = None, temperature: float = 0.0, seed: int = 0, ignore_eos: bool = False,
                    api_key: str | None = None, timeout: float = 600.0, warmup: int = 1,
                    expect_acceptance: str | None = None) -> dict[str, Any]:
    prompts = load_prompts(dataset)
    model = model or await discover_model(base_url, api_key)
    acceptance = await server_acceptance(base_url, api_key)
    check_acceptance(acceptance, expect_acceptance)
    if warmup:
        await run_level(base_url, model, prompts, 1, warmup, min(max_tokens, 8), temperature, seed, ignore_eos, api_key,
                        timeout)
    levels = []
    for c in concurrencies:
        before = await spec_counters(base_url, api_key)
        records, duration = await run_level(base_url, model, prompts, c, num_prompts, max_tokens, temperature, seed,
                                            ignore_eos, api_key, timeout)
        level = summarize(records, c, duration)
        level["tau"] = tau(before, await spec_counters(base_url, api_key))
        levels.append(level)
    return {"base_url": base_v1(base_url), "model": model, "dataset": dataset, "num_prompts": num_prompts,
            "max_tokens": max_tokens, "temperature": temperature, "levels": levels,
            "synthetic_acceptance": acceptance, "lossless": acceptance is None}


def table(result: dict[str, Any]) -> str:
    head = (f"{'conc':>5} {'done':>5} {'fail':>4} {'out tok/s':>10} {'user tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} "
            f"{'TPOT p50':>9} {'TPOT p99':>9} {'lat p50':>9} {'lat p99':>9} {'tau':>5}")
    rows = [f"model {result['model']} at {result['base_url']}, dataset {result['dataset']}, {result['num_prompts']} "
            f"prompts x {result['max_tokens']} max tokens per level (ms for latencies)", head]

    def ms(v: float | None) -> str:
        return f"{v:9.1f}" if v is not None else f"{'-':>9}"

    for lv in result["levels"]:
        t = f"{lv['tau']:5.2f}" if lv["tau"] is not None else f"{'-':>5}"
        rows.append(f"{lv['concurrency']:>5} {lv['completed']:>5} {lv['failed']:>4} {lv['output_tok_s']:>10.1f} "
                    f"{lv['per_user_tok_s']:>10.1f} {ms(lv['ttft_ms']['p50'])} {ms(lv['ttft_ms']['p99'])} "
                    f"{ms(lv['tpot_ms']['p50'])} {ms(lv['tpot_ms']['p99'])} {ms(lv['latency_ms']['p50'])} "
                    f"{ms(lv['latency_ms']['p99'])} {t}")
    label = result.get("synthetic_acceptance")
    if label:
        rows = [f"{row}  [{label}]" for row in rows]
    return "\n".join(rows)


def plot(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["levels"]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = [lv["per_user_tok_s"] for lv in levels], [lv["output_tok_s"] for lv in levels]
    ax.plot(xs, ys, marker="o")
    for lv, x, y in zip(levels, xs, ys):
        ax.annotate(f"c={lv['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("per-user tokens/s (median)")
    ax.set_ylabel("output throughput (tokens/s)")
    label = f" — {result['synthetic_acceptance']}" if result.get("synthetic_acceptance") else ""
    ax.set_title(f"{result['model']} — {result['dataset']}{label}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
