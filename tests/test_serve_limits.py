"""`dspark serve` limits on a private server: API key on every route but /health, a flood past the queue limit
(429 with Retry-After, nothing else breaks), and SIGTERM during load (requests finish or fail cleanly, exit 0)."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from helpers_serve import MODEL, ServerProcess, wait_idle

KEY = "sekrit-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 8}


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess("--api-key", KEY, "--max-num-seqs", "2", "--max-queue", "2", "--drain-timeout", "60")
    yield srv
    srv.stop()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
def test_every_route_but_health_needs_the_key(server, headers):
    assert httpx.get(server.url + "/health", headers=headers).status_code == 200
    for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"),
                         ("POST", "/v1/completions")):
        r = httpx.request(method, server.url + path, headers=headers, json=BODY, timeout=30)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_openai_client_with_wrong_and_right_key(server):
    with openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    with openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0) as good:
        assert good.chat.completions.create(**BODY).choices[0].message.content


def test_regenerate_sends_the_key_from_the_environment(server, tmp_path, monkeypatch, capsys):
    from dspark.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"turns": ["def add(a, b):"]}) + "\n" + json.dumps({"turns": ["import os"]}) + "\n")
    argv = ["data", "regenerate", "--endpoint", server.url + "/v1", "--input", str(prompts), "--max-new-tokens", "8",
            "--concurrency", "2", "--retries", "0", "--model", MODEL]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("DSPARK_API_KEY", "wrong")
    assert main(argv + ["--output", str(tmp_path / "refused.jsonl")]) == 1  # every sample failed: 401
    monkeypatch.setenv("DSPARK_API_KEY", KEY)
    assert main(argv + ["--output", str(tmp_path / "ok.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["completed"] == 2


async def _flood(url: str, n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120.0, headers=AUTH, limits=httpx.Limits(max_connections=n)) as client:
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=BODY) for _ in range(n)))


def test_a_flood_past_the_queue_limit_gets_429_and_nothing_else_breaks(server):
    responses = asyncio.run(_flood(server.url, 30))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) >= 1 and statuses.count(200) >= 4
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] and r.json()["error"]["type"] == "rate_limit_error"
        else:
            assert r.json()["usage"]["completion_tokens"] <= 8
    ok = httpx.post(server.url + "/v1/chat/completions", json=BODY, headers=AUTH, timeout=60)
    assert ok.status_code == 200
    m = wait_idle(server.url, AUTH)
    assert m["dspark:kv_cache_pages_used"] == 0
    assert m["dspark:http_requests_rejected_total"] >= statuses.count(429)


async def _stream(client: httpx.AsyncClient, url: str, started: asyncio.Event) -> tuple[str, int]:
    """('done', tokens) for a stream that ended with [DONE]; ('refused', status) or ('error', 0) otherwise."""
    body = {**BODY, "max_tokens": 24, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    tokens = 0
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return "refused", r.status_code
            async for line in r.aiter_lines():
                started.set()
                if line == "data: [DONE]":
                    return "done", tokens
                if line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        return "error", 0
                    tokens = (chunk.get("usage") or {}).get("completion_tokens", tokens)
    except httpx.TransportError:
        return "error", 0
    return "error", 0  # stream cut without [DONE]: would be a dirty end


def test_sigterm_during_load_drains_and_exits_0(server):
    async def scenario():
        started = asyncio.Event()
        async with httpx.AsyncClient(timeout=120.0, headers=AUTH, limits=httpx.Limits(max_connections=16)) as client:
            tasks = [asyncio.create_task(_stream(client, server.url, started)) for _ in range(8)]
            await asyncio.wait_for(started.wait(), 60)
            server.terminate()
            results = await asyncio.gather(*tasks)
            try:
                late = (await client.post(server.url + "/v1/chat/completions", json=BODY)).status_code
            except httpx.TransportError:
                late = "refused"
        return results, late

    results, late = asyncio.run(scenario())
    assert server.proc.wait(90) == 0, server.log()
    done = [tokens for kind, tokens in results if kind == "done"]
    assert len(done) >= 1 and all(t == 24 for t in done), results
    assert all(kind == "done" or (kind == "refused" and tokens in (429, 503)) for kind, tokens in results), results
    assert late in ("refused", 503)
