"""`dspark serve` under misbehaving clients: malformed bodies, oversize prompts, clients killed mid-request.

Every refusal is a 4xx with an OpenAI error object (never a 500); a killed client's request is aborted and
its KV pages return to the pool (checked through /metrics); afterwards a normal request still works.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from helpers_serve import MODEL, SUBPROCESS_ENV, metrics, shared_server, wait_idle

MSG = [{"role": "user", "content": "def add(a, b):"}]


@pytest.fixture(scope="module")
def server():
    return shared_server()


def chat_body(**kw):
    return json.dumps({"model": MODEL, "messages": MSG, "max_tokens": 4, **kw}).encode()


BAD_CHAT = [
    b"{not json", b"[1, 2]", b"", b"\xff\xfe{}", b'{"messages": "hi"}', b'{"messages": []}', b'{"max_tokens": 4}',
    b'{"messages": [{"role": "user"}], "max_tokens": "8"}', b'{"messages": [{"role": "wizard", "content": "x"}]}',
    b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}',
    chat_body(max_tokens=0), chat_body(max_tokens=-1), chat_body(max_tokens=10**9), chat_body(max_tokens=2.5),
    chat_body(max_tokens=True), chat_body(temperature=-1), chat_body(temperature=1e-9), chat_body(temperature="hot"),
    b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', chat_body(top_p=0), chat_body(top_p=1.5),
    chat_body(top_k=-5), chat_body(n=0), chat_body(n=1000), chat_body(seed="x"), chat_body(seed=2**70),
    chat_body(stop=[""]), chat_body(stop=123), chat_body(stop=["a"] * 50), chat_body(stream="yes"),
    chat_body(logprobs=True), chat_body(frequency_penalty=0.5), chat_body(stop_token_ids=[-1]),
    chat_body(stream_options={"include_usage": "yes"}), chat_body(max_completion_tokens=0),
    chat_body(chat_template_kwargs={"chat_template": "{{ 'pwned' }}"}), chat_body(chat_template_kwargs=[1]),
]
BAD_COMPLETIONS = [
    b'{"prompt": []}', b'{"prompt": [-1]}', b'{"prompt": [[]]}', b'{"prompt": [99999]}', b'{"prompt": {"a": 1}}',
    b'{"prompt": "x", "max_tokens": 0}', b'{"prompt": "x", "echo": true}', b'{"prompt": "x", "logprobs": 2}',
    b'{"prompt": "x", "suffix": "y"}', b'{"prompt": [1.5]}', b'{"prompt": "x", "model": 5}',
    json.dumps({"prompt": ["x"] * 40, "n": 16}).encode(),  # more choices than the server ever holds
]


def check_error(response: httpx.Response, statuses=(400,)) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text)
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("body", BAD_CHAT)
def test_malformed_chat_bodies_get_400(server, body):
    check_error(httpx.post(server.url + "/v1/chat/completions", content=body, timeout=30))


@pytest.mark.parametrize("body", BAD_COMPLETIONS)
def test_malformed_completion_bodies_get_400(server, body):
    check_error(httpx.post(server.url + "/v1/completions", content=body, timeout=30))


def test_unknown_model_route_and_method(server):
    err = check_error(httpx.post(server.url + "/v1/chat/completions", content=chat_body(model="gpt-9")), (404,))
    assert err["code"] == "model_not_found" and err["param"] == "model"
    check_error(httpx.get(server.url + "/v1/nothing"), (404,))
    check_error(httpx.delete(server.url + "/v1/models"), (405,))


def test_oversize_prompts_are_refused(server):
    long_text = "x " * 3000  # ~3000 tokens, the server's max_model_len is 512
    err = check_error(httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
        "model": MODEL, "messages": [{"role": "user", "content": long_text}]}))
    assert err["code"] == "context_length_exceeded"
    err = check_error(httpx.post(server.url + "/v1/completions", json={"prompt": [7] * 600}, timeout=30))
    assert err["code"] == "context_length_exceeded"
    err = check_error(httpx.post(server.url + "/v1/completions", json={"prompt": "x y z", "max_tokens": 511}, timeout=30))
    assert err["param"] == "max_tokens"
    start = time.monotonic()  # far past any possible fit: refused before tokenizing
    check_error(httpx.post(server.url + "/v1/completions", json={"prompt": "y" * (2 << 20)}, timeout=60))
    assert time.monotonic() - start < 30
    check_error(httpx.post(server.url + "/v1/completions", content=b"x" * (17 << 20), timeout=60), (413,))


CLIENT = """
import sys, time, httpx
url, stream = sys.argv[1], sys.argv[2] == "1"
body = {"model": "tiny-target", "messages": [{"role": "user", "content": "def add(a, b):"}], "max_tokens": 480,
        "ignore_eos": True, "stream": stream}
if stream:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                print("streaming", flush=True)
                time.sleep(600)
else:
    print("sending", flush=True)
    httpx.post(url + "/v1/chat/completions", json=body, timeout=300)
"""


def test_clients_killed_mid_request_free_their_pages(server):
    wait_idle(server.url)
    before = metrics(server.url).get("dspark:num_requests_aborted_total", 0.0)
    procs = [subprocess.Popen([sys.executable, "-c", CLIENT, server.url, "1" if i < 6 else "0"], stdout=subprocess.PIPE,
                              text=True, env=SUBPROCESS_ENV) for i in range(8)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() in ("streaming", "sending")
        deadline = time.monotonic() + 60
        while metrics(server.url).get("dspark:num_requests_running", 0) < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
        busy = metrics(server.url)
        assert busy["dspark:num_requests_running"] == 8 and busy["dspark:kv_cache_pages_used"] > 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
    # 8 x 480 tokens would take far longer than this: the pages come back because the requests were aborted
    m = wait_idle(server.url, timeout=20)
    assert m["dspark:kv_cache_pages_used"] == 0 and m["dspark:num_requests_running"] == 0
    assert m["dspark:num_requests_aborted_total"] - before == 8


def test_a_normal_request_succeeds_after_the_faults(server):
    out = httpx.post(server.url + "/v1/chat/completions", content=chat_body(max_tokens=8, temperature=0), timeout=60)
    assert out.status_code == 200 and out.json()["choices"][0]["message"]["content"]
    assert httpx.get(server.url + "/health").status_code == 200
    assert wait_idle(server.url)["dspark:kv_cache_pages_used"] == 0
