"""Run the app under uvicorn with a clean SIGTERM: stop accepting, drain what runs, exit 0.

On SIGTERM (or Ctrl-C) uvicorn closes the listening socket and waits up to `drain_timeout` seconds for
the requests in flight, which keep streaming; new requests on open connections get a 503 from the
engine loop meanwhile. Then the lifespan stops the engine thread (whatever is still running gets a 503
error event) and `serve` returns. uvicorn re-raises the signal it caught once it is done; a no-op
handler installed first absorbs it, so the process exits with status 0 instead of dying by SIGTERM.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import uvicorn

from dspark.serve.engine_loop import EngineLoop

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine: EngineLoop) -> None:
        super().__init__(config)
        self.engine = engine

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.engine.accepting:
            log.warning("signal %d: draining %d request(s) in flight, then exiting", sig, self.engine.num_in_flight)
        self.engine.begin_drain()
        super().handle_exit(sig, frame)


def serve(app: Any, engine: EngineLoop, host: str, port: int, drain_timeout: float = 30.0,
          log_level: str = "warning") -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                            timeout_graceful_shutdown=drain_timeout, lifespan="on")
    caught: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: caught.append(s))  # absorbs uvicorn's re-raise after the drain
    DrainingServer(config, engine).run()
