"""The server's engine loop: ONE thread owns the `LLM` and steps it; request handlers talk to it by message.

    loop = EngineLoop(llm, metrics, max_queue=256); loop.start()          # inside the running event loop
    sub = loop.submit([Job(prompt_ids, SamplingOptions(max_tokens=16))])  # may raise APIError 429 / 503
    async for event in sub.events(): ...                                  # Event per step with new tokens
    sub.abort()                                                           # client gone: pages freed at once

Where it sits: HTTP handler ─ submit ─► command queue ─► engine thread (`LLM.add_request` / `abort` /
`step`) ─ `loop.call_soon_threadsafe` ─► the submission's `asyncio.Queue` ─► SSE chunks or one response.
`LLM.step()` is synchronous and not thread-safe, so nothing but this thread touches the `LLM`; the
handlers only read the immutable facts copied at construction (`max_model_len`, the tokenizer).

Limits: at most `max_num_seqs + max_queue` engine requests are in flight; past that `submit` refuses
with 429 (and 503 once draining). A request the engine refuses (too long for the KV pool, ...) gets an
error event with status 400; a step that raises fails the requests it had with a 500 event, and the
loop keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from dspark.engine.options import SamplingOptions
from dspark.errors import DSparkError
from dspark.serve.errors import APIError
from dspark.serve.metrics import ServerMetrics

log = logging.getLogger(__name__)

IDLE_POLL_S = 0.05  # how long the idle engine thread blocks on the command queue before checking for stop


@dataclass
class Job:
    """One engine request of a submission (one choice of one prompt)."""

    prompt_ids: list[int]
    options: SamplingOptions
    request_id: str = ""


@dataclass
class Event:
    """What the engine thread reports for one job after a step (or an error instead)."""

    index: int  # the job's position in its submission
    token_ids: list[int]  # every output token so far
    finished: bool
    finish_reason: str | None  # the engine's: "eos" | "stop" | "length" | "abort"
    num_prompt_tokens: int
    error: APIError | None = None


class Submission:
    """The jobs of one HTTP request and the queue their events arrive on (used on the event loop only)."""

    def __init__(self, engine: "EngineLoop", jobs: list[Job]) -> None:
        self.engine, self.jobs = engine, jobs
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.open = {j.request_id for j in jobs}

    @property
    def done(self) -> bool:
        return not self.open

    async def next_event(self) -> Event:
        """The next event of any job (call while not `done`)."""
        event = await self.queue.get()
        if event.finished or event.error is not None:
            self.open.discard(self.jobs[event.index].request_id)
        return event

    async def events(self) -> AsyncIterator[Event]:
        """Every event until each job finished or failed."""
        while self.open:
            yield await self.next_event()

    def finish(self, index: int) -> None:
        """Stop one job early (the server found a stop string the engine did not)."""
        rid = self.jobs[index].request_id
        if rid in self.open:
            self.engine.abort([rid])
            self.open.discard(rid)

    def abort(self) -> None:
        """Abort every job still running (idempotent)."""
        if self.open:
            self.engine.abort(sorted(self.open))
            self.open.clear()


@dataclass
class _Track:
    """The engine thread's record of one live request."""

    sub: Submission
    index: int
    arrival: float
    num_prompt_tokens: int
    last_time: float | None = None
    num_rounds_seen: int = 0
    stats: dict[str, int] = field(default_factory=dict)


class EngineLoop:
    def __init__(self, llm: Any, metrics: ServerMetrics | None = None, max_queue: int = 256) -> None:
        self.llm, self.metrics = llm, metrics
        self.max_in_flight = int(llm.config.max_num_seqs) + int(max_queue)
        self.max_model_len = int(llm.max_model_len)
        self.tokenizer = llm.target.tokenizer
        self.vocab_size = int(llm.target.vocab_size)
        self.accepting = True
        self.error: str | None = None  # set when the thread died
        self._live: dict[str, Submission] = {}  # event-loop side: request id -> submission
        self._commands: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self._tracks: dict[str, _Track] = {}  # engine-thread side
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = 0

    # ------------------------------------------------------------------------------ event-loop side
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="dspark-engine", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def num_in_flight(self) -> int:
        return len(self._live)

    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}-{time.time_ns() % 10**9:09d}"

    def submit(self, jobs: list[Job], arrival: float | None = None) -> Submission:
        if not self.accepting or not self.alive:
            raise APIError(503, "the server is shutting down" if not self.accepting else f"engine stopped: {self.error}",
                           code="service_unavailable", headers={"Retry-After": "5"})
        if len(jobs) > self.max_in_flight:
            raise APIError(400, f"{len(jobs)} choices x prompts in one request; this server holds at most "
                                f"{self.max_in_flight} requests in flight", "n")
        if len(self._live) + len(jobs) > self.max_in_flight:
            raise APIError(429, f"too many requests in flight ({len(self._live)} running or queued, limit "
                                f"{self.max_in_flight}); retry later", code="queue_full", headers={"Retry-After": "1"})
        for i, job in enumerate(jobs):
            job.request_id = job.request_id or self.new_id("req")
        sub = Submission(self, jobs)
        for job in jobs:
            self._live[job.request_id] = sub
        self._commands.put(("add", sub, arrival if arrival is not None else time.monotonic()))
        return sub

    def abort(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            if self._live.pop(rid, None) is not None:
                self._commands.put(("abort", rid))

    def begin_drain(self) -> None:
        """Refuse new requests (503); the ones in flight run to the end."""
        self.accepting = False

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what is left (its clients get a 503 event) and end the engine thread."""
        self.accepting = False
        gone = APIError(503, "the server shut down before this request finished", code="service_unavailable")
        for rid, sub in list(self._live.items()):
            index = next(i for i, j in enumerate(sub.jobs) if j.request_id == rid)
            sub.queue.put_nowait(Event(index, [], True, "abort", len(sub.jobs[index].prompt_ids), gone))
        self.abort(list(self._live))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _deliver(self, batch: list[tuple[Submission, Event]]) -> None:
        for sub, event in batch:
            rid = sub.jobs[event.index].request_id
            if rid not in self._live:
                continue  # aborted meanwhile
            if event.finished or event.error is not None:
                del self._live[rid]
            sub.queue.put_nowait(event)

    # ------------------------------------------------------------------------------ engine thread
    def _publish(self, batch: list[tuple[Submission, Event]]) -> None:
        if batch and self._loop is not None:
            try:
                self._loop.call_soon_threadsafe(self._deliver, batch)
            except RuntimeError:  # the event loop is closed: shutting down
                pass

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._take_commands(block=not self.llm.has_unfinished())
                if self.llm.has_unfinished():
                    self._step()
                self._update_gauges()
        except BaseException as exc:  # a bug in the loop itself: fail everyone, report unhealthy
            log.exception("engine loop died")
            self.error = f"{type(exc).__name__}: {exc}"
            self._fail_all(APIError(500, f"engine loop died: {self.error}", code="internal_error"))

    def _take_commands(self, block: bool) -> None:
        try:
            command = self._commands.get(timeout=IDLE_POLL_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            if command[0] == "add":
                self._add(command[1], command[2])
            else:
                self._abort(command[1])
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _add(self, sub: Submission, arrival: float) -> None:
        failed = []
        for index, job in enumerate(sub.jobs):
            try:
                self.llm.add_request(job.prompt_ids, job.options, request_id=job.request_id)
            except DSparkError as exc:
                failed.append((sub, Event(index, [], True, None, len(job.prompt_ids), APIError(400, str(exc)))))
                continue
            except Exception as exc:  # noqa: BLE001 - a request must not take the loop down
                log.exception("add_request failed")
                failed.append((sub, Event(index, [], True, None, len(job.prompt_ids),
                                          APIError(500, f"internal error: {type(exc).__name__}", code="internal_error"))))
                continue
            self._tracks[job.request_id] = _Track(sub, index, arrival, len(job.prompt_ids))
            if self.metrics is not None:
                self.metrics.prompt_tokens.inc(len(job.prompt_ids))
        self._publish(failed)

    def _abort(self, request_id: str) -> None:
        if self._tracks.pop(request_id, None) is None:
            return
        self.llm.abort(request_id)
        self._forget(request_id)
        if self.metrics is not None:
            self.metrics.aborted.inc()

    def _forget(self, request_id: str) -> None:
        # The engine keeps finished requests for `LLM.result`; a server must not (memory grows per request).
        self.llm.release(request_id)

    def _step(self) -> None:
        try:
            outputs = self.llm.step()
        except Exception as exc:  # noqa: BLE001 - fail this step's requests, keep serving
            log.exception("engine step failed")
            if self.metrics is not None:
                self.metrics.engine_errors.inc()
            self._fail_all(APIError(500, f"engine step failed: {type(exc).__name__}: {exc}", code="internal_error"))
            return
        now = time.monotonic()
        m = self.metrics
        batch = []
        for out in outputs:
            track = self._tracks.get(out.request_id)
            if track is None:
                continue
            if m is not None:
                self._observe(track, out, now)
            batch.append((track.sub, Event(track.index, list(out.token_ids), out.finished, out.finish_reason,
                                           out.num_prompt_tokens)))
            if out.finished:
                del self._tracks[out.request_id]
                self._forget(out.request_id)
        if m is not None:
            m.engine_steps.inc()
        self._publish(batch)

    def _observe(self, track: _Track, out: Any, now: float) -> None:
        m = self.metrics
        assert m is not None
        n = len(out.new_token_ids)
        if n:
            m.generation_tokens.inc(n)
            if track.last_time is None:
                m.ttft.observe(now - track.arrival)
            else:
                gap = (now - track.last_time) / n
                for _ in range(n):
                    m.itl.observe(gap)
            track.last_time = now
        rounds = self.llm.request(out.request_id).rounds
        for rec in rounds[track.num_rounds_seen:]:
            m.spec_rounds.inc()
            m.spec_drafted.inc(rec.drafted)
            m.spec_verified.inc(rec.verified)
            m.spec_accepted.inc(rec.accepted)
        track.num_rounds_seen = len(rounds)
        if out.finished:
            m.e2e.observe(now - track.arrival)
            m.finished(out.finish_reason or "unknown")

    def _fail_all(self, error: APIError) -> None:
        batch = []
        for rid, track in list(self._tracks.items()):
            try:
                self.llm.abort(rid)
                self._forget(rid)
            except Exception:  # noqa: BLE001 - best effort while failing
                log.exception("abort of %s failed", rid)
            batch.append((track.sub, Event(track.index, [], True, None, track.num_prompt_tokens, error)))
        self._tracks.clear()
        self._publish(batch)

    def _update_gauges(self) -> None:
        m = self.metrics
        if m is None:
            return
        st = self.llm.stats()
        m.running.set(st.running)
        m.waiting.set(st.waiting)
        m.kv_pages_used.set(st.pages_used)
        m.kv_pages_total.set(st.pages_total)
        m.kv_usage.set(st.pages_used / st.pages_total if st.pages_total else 0.0)
        if st.rows_planned:
            m.mean_verify_len.set(st.tokens_planned / st.rows_planned)
        if st.steps:
            m.gate_skip_share.set(st.rounds_skipped / st.steps)
