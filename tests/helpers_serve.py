"""A real `dspark serve` process for the serve tests: free port on 127.0.0.1, embedded tiny model, one torch thread.

`shared_server()` starts one server per pytest process (the API, fault and load tests share it; it is
stopped at exit); `ServerProcess(...)` starts a private one (limits, SIGTERM). Logs go to a temp file
that a failing test prints.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MODEL = "tiny-target"
# Small engine for 2 shared CPU cores: a short context and pool keep start-up and memory low.
BASE_ARGS = ["--torch-threads", "1", "--policy", "fixed:7", "--max-model-len", "512", "--num-pages", "1024"]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DSPARK_API_KEY": ""}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, startup_timeout: float = 180.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="dspark-serve-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "dspark", "serve", "--port", str(self.port), *BASE_ARGS, *args]
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=SUBPROCESS_ENV)
        self.wait_healthy(startup_timeout)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"server not healthy after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


_SHARED: list[ServerProcess] = []


def shared_server() -> ServerProcess:
    """The one shared server of this test process (no API key, queue large enough for the load test)."""
    if not _SHARED:
        server = ServerProcess("--max-num-seqs", "64", "--max-queue", "512")
        _SHARED.append(server)
        atexit.register(server.stop)
    return _SHARED[0]


def metrics(url: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """`dspark:*` samples of /metrics by name (labels dropped; one model per server)."""
    text = httpx.get(url + "/metrics", headers=headers or {}, timeout=10.0).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dspark:") and "{" in line and "_bucket{" not in line:
            name = line.split("{", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def wait_idle(url: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> dict[str, float]:
    """Poll /metrics until no request runs or waits and no KV page is held; returns the last sample."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url, headers)
        idle = (m.get("dspark:kv_cache_pages_used") == 0 and m.get("dspark:num_requests_running") == 0
                and m.get("dspark:num_requests_waiting") == 0)
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.2)
