"""Regeneration: a real local OpenAI-compatible HTTP server, retries, failures, SIGKILL and resume, HF backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers_train import make_target, read_jsonl, single_thread, write_jsonl

from dspark.errors import ConfigError, DataError
from dspark.train.regen_backends import EndpointBackend, HFBackend, chat_completions_url
from dspark.train.regenerate import RegenerateOptions, SamplingParams, regenerate

_one_thread = pytest.fixture(scope="module", autouse=True)(single_thread)


def expected_answer(user: str, turn: int) -> str:
    return f"ans({user})#{turn}"


class ChatServer:
    """Deterministic chat completions: the answer names the question and how many answers came before.

    It checks that the history it receives holds exactly its own earlier answers (else HTTP 400), so a
    conversation whose turns were misaligned cannot succeed. "FLAKY" prompts fail once with 503,
    "BROKEN" always with 500, "BAD" with 400.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.requests, self.payloads = delay, Counter(), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "tiny-model", "object": "model"}]})

            def do_POST(self):
                payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.payloads.append(payload)
                messages = [m for m in payload["messages"] if m["role"] != "system"]
                users = [m["content"] for m in messages if m["role"] == "user"]
                answers = [m["content"] for m in messages if m["role"] == "assistant"]
                last = users[-1]
                server.requests[last] += 1
                time.sleep(server.delay)
                if answers != [expected_answer(u, k) for k, u in enumerate(users[:-1])]:
                    return self._send(400, {"error": "history does not match"})
                if "BROKEN" in last:
                    return self._send(500, {"error": "boom"})
                if "BAD" in last:
                    return self._send(400, {"error": "bad request"})
                if "FLAKY" in last and server.requests[last] == 1:
                    return self._send(503, {"error": "busy"})
                self._send(200, {"id": "x", "object": "chat.completion", "model": payload["model"], "choices": [
                    {"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": expected_answer(last, len(answers))}}]})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = ChatServer()
    yield srv
    srv.close()


def _prompts(n: int, extra: list[dict] | None = None) -> list[dict]:
    rows = [{"id": f"p{i}", "turns": [f"question {i}", f"follow-up {i}"]} for i in range(n)]
    return rows + (extra or [])


def _check_aligned(rows: list[dict], inputs: list[dict]) -> None:
    by_id = {r["id"]: r for r in inputs}
    for row in rows:
        turns = by_id[row["id"]]["turns"]
        conv = row["conversations"]
        assert [m["content"] for m in conv if m["role"] == "user"] == turns
        assert [m["content"] for m in conv if m["role"] == "assistant"] == [expected_answer(t, k)
                                                                            for k, t in enumerate(turns)]


def _options(**kw) -> RegenerateOptions:
    return RegenerateOptions(sampling=SamplingParams(temperature=0.7, top_p=0.8, top_k=20, max_new_tokens=64),
                             backoff=0.01, **kw)


def test_url_normalisation():
    for url in ("http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/chat/completions"):
        assert chat_completions_url(url) == "http://h:1/v1/chat/completions"


def test_endpoint_retries_failures_and_params(tmp_path, server):
    extra = [{"id": "flaky", "turns": ["FLAKY one"]}, {"id": "broken", "turns": ["fine", "BROKEN two"]},
             {"id": "bad", "turns": ["BAD"]}, {"id": "doc", "text": "no turns here"},
             {"id": "sys", "conversations": [{"role": "system", "content": "be brief"},
                                             {"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "an old answer"}]}]
    inputs = _prompts(6, extra)
    src = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.jsonl"
    summary = regenerate(src, out, EndpointBackend(server.url, _options(concurrency=4, retries=2)), _options())
    assert (summary.total, summary.completed, summary.failed) == (11, 8, 3)
    rows = read_jsonl(out)
    assert sorted(r["id"] for r in rows) == sorted([f"p{i}" for i in range(6)] + ["flaky", "sys"])
    _check_aligned([r for r in rows if r["id"].startswith("p")], inputs)
    sys_row = next(r for r in rows if r["id"] == "sys")
    assert sys_row["conversations"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "ans(hi)#0"}]
    failures = {r["id"]: r["error"] for r in read_jsonl(summary.failures)}
    assert set(failures) == {"broken", "bad", "doc"}
    assert "turn 1: HTTP 500" in failures["broken"] and "3 attempts" in failures["broken"]
    assert "HTTP 400" in failures["bad"] and server.requests["BAD"] == 1  # not retried
    assert server.requests["FLAKY one"] == 2 and server.requests["BROKEN two"] == 3
    payload = server.payloads[0]
    assert (payload["model"], payload["temperature"], payload["top_p"], payload["top_k"], payload["max_tokens"]) == \
        ("tiny-model", 0.7, 0.8, 20, 64)
    assert payload["chat_template_kwargs"] == {"enable_thinking": False}
    meta = json.loads(Path(summary.meta).read_text())
    assert meta["sampling"] == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_new_tokens": 64, "seed": 0}
    assert meta["runs"][0]["completed"] == 8 and meta["runs"][0]["backend"]["kind"] == "endpoint"

    # a rerun only retries the failures; answered samples are never asked again
    before = sum(server.requests.values())
    again = regenerate(src, out, EndpointBackend(server.url, _options(retries=0)), _options())
    assert (again.already_done, again.completed, again.failed) == (8, 0, 3)
    assert sum(server.requests.values()) - before == 3  # fine (turn 0 of broken), BROKEN two, BAD
    assert len(read_jsonl(out)) == 8


def test_sigkill_mid_run_then_resume(tmp_path):
    server = ChatServer(delay=0.03)
    try:
        inputs = _prompts(40)
        src = write_jsonl(tmp_path / "in.jsonl", inputs)
        out = tmp_path / "out.jsonl"
        cmd = [sys.executable, "-c", "import sys; from dspark.cli import main; sys.exit(main(sys.argv[1:]))",
               "data", "regenerate", "--endpoint", server.url, "--input", str(src), "--output", str(out),
               "--concurrency", "2", "--max-new-tokens", "64", "--backoff", "0.01"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 6):
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        written = read_jsonl(out)
        assert 6 <= len(written) < 40, "the kill should land mid-run"
        with out.open("a") as handle:  # and what a kill during a write looks like
            handle.write('{"id": "p39", "conversations": [{"role": "us')
        asked_before = sum(server.requests.values())
        summary = regenerate(src, out, EndpointBackend(server.url, _options(concurrency=3)), _options())
        rows = read_jsonl(out)
        assert summary.already_done == len(written) and summary.completed == 40 - len(written)
        assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in inputs)  # no duplicate, none dropped
        _check_aligned(rows, inputs)
        assert rows[: len(written)] == written  # what was there is untouched
        assert sum(server.requests.values()) - asked_before <= 2 * (40 - len(written)) + 4  # in flight at the kill
    finally:
        server.close()


def test_resume_refuses_misalignment(tmp_path, server):
    inputs = _prompts(3)
    src = write_jsonl(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "out.jsonl"
    regenerate(src, out, EndpointBackend(server.url, _options()), _options())
    snapshot = out.read_bytes()
    changed = [dict(inputs[0], turns=["another question", "x"])] + inputs[1:]
    with pytest.raises(DataError, match="changed since its answer was written"):
        regenerate(write_jsonl(tmp_path / "in.jsonl", changed), out, EndpointBackend(server.url, _options()), _options())
    with pytest.raises(DataError, match="holds ids not in"):
        regenerate(write_jsonl(tmp_path / "in.jsonl", inputs[1:]), out, EndpointBackend(server.url, _options()),
                   _options())
    hotter = RegenerateOptions(sampling=SamplingParams(temperature=1.0, max_new_tokens=64))
    with pytest.raises(ConfigError, match="other \\['sampling'\\]"):
        regenerate(write_jsonl(tmp_path / "in.jsonl", inputs), out, EndpointBackend(server.url, hotter), hotter)
    assert out.read_bytes() == snapshot


def test_unreachable_endpoint_is_a_failure_not_a_crash(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", _prompts(2))
    opts = _options(retries=1, model="m", timeout=2.0)
    summary = regenerate(src, tmp_path / "out.jsonl", EndpointBackend("http://127.0.0.1:9", opts), opts)
    assert summary.failed == 2 and "ConnectError" in read_jsonl(summary.failures)[0]["error"]
    with pytest.raises(ConfigError, match="pass --model"):
        regenerate(src, tmp_path / "o2.jsonl", EndpointBackend("http://127.0.0.1:9", _options()), _options())


def test_hf_backend_multi_turn(tmp_path):
    from dspark.targets import load_target

    target = load_target(str(make_target(tmp_path / "t")))
    inputs = [{"id": "a", "turns": ["hello world", "what is two plus two?"]}, {"id": "b", "turns": ["the fox"]},
              {"id": "c", "conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}]
    src = write_jsonl(tmp_path / "in.jsonl", inputs)
    opts = RegenerateOptions(sampling=SamplingParams(max_new_tokens=5, seed=1), batch_size=2)
    backend = HFBackend(target, opts)
    prompts: list[list[int]] = []
    generate = backend._generate
    backend._generate = lambda ps, seed: (prompts.extend(ps), generate(ps, seed))[1]
    summary = regenerate(src, tmp_path / "out.jsonl", backend, opts)
    assert (summary.completed, summary.failed) == (3, 0)
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert [m["role"] for m in rows["a"]["conversations"]] == ["user", "assistant", "user", "assistant"]
    assert all(reason in ("stop", "length") for r in rows.values() for reason in r["finish_reasons"])
    # the second-turn prompt of "a" holds its first answer exactly as recorded
    a_history = rows["a"]["conversations"][:3]
    assert backend.formatter.prompt_ids(a_history) in prompts
    # same seed, same batches -> same answers
    again = regenerate(src, tmp_path / "out2.jsonl", HFBackend(target, opts), opts)
    assert again.completed == 3
    assert {r["id"]: r for r in read_jsonl(tmp_path / "out2.jsonl")} == rows
