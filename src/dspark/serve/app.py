"""FastAPI routes of `dspark serve`: the OpenAI endpoints plus `/health` and `/metrics`.

    app = create_app(EngineLoop(llm, metrics), ModelInfo.from_llm(llm, ["tiny"]), metrics, api_key=None)

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models[/{id}]`, `GET /health`
(no key needed), `GET /metrics` (Prometheus text). A request flows: body read (at most MAX_BODY_BYTES,
else 413) -> JSON + strict pydantic validation (400) -> model name (404) -> prompt rendering in the
tokenizer thread -> limits (400) -> `EngineLoop.submit` (429 queue full, 503 draining) -> the first
engine event (a refusal there is still an HTTP error) -> one JSON body or an SSE stream. A client that
disconnects, while waiting or mid-stream, has its requests aborted, which frees their KV pages.
A server with synthetic acceptance (`dspark serve --benchmark --synthetic-acceptance`) puts its NOT
lossless label in an `X-DSpark-Acceptance` header on every response and in its model cards.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from dspark.serve.auth import bearer_check
from dspark.serve.engine_loop import EngineLoop, Event, Job
from dspark.serve.errors import APIError, bad_request, from_validation, install_handlers
from dspark.serve.inputs import (
    ModelInfo, chat_jobs, chat_prompt_ids, check_supported, completion_jobs, completion_prompts,
)
from dspark.serve.metrics import ServerMetrics
from dspark.serve.protocol import ChatCompletionRequest, CompletionRequest, ModelCard, ModelList, SamplingFields
from dspark.serve.responses import ChatFormat, Choices, CompletionFormat, stream_events

MAX_BODY_BYTES = 16 << 20
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before its response was ready."""


async def read_json(request: Request, model: type[M]) -> M:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"request body of {declared} bytes is over the limit of {MAX_BODY_BYTES}", code="too_large")
    body = bytearray()
    try:
        async for piece in request.stream():
            body += piece
            if len(body) > MAX_BODY_BYTES:
                raise APIError(413, f"request body is over the limit of {MAX_BODY_BYTES} bytes", code="too_large")
    except ClientDisconnect as exc:  # gone while sending its body: nobody reads the answer
        raise bad_request("the client disconnected while sending the request", None, "client_disconnected") from exc
    try:
        data = json.loads(bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}", None, "invalid_json") from exc
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from exc


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising ClientGone) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    raise ClientGone


def create_app(engine: EngineLoop, info: ModelInfo, metrics: ServerMetrics, api_key: str | None = None) -> FastAPI:
    tokenizer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dspark-tokenizer")

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        engine.start()
        try:
            yield
        finally:
            engine.stop()
            tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="dspark", summary="OpenAI-compatible server on the dspark engine", lifespan=lifespan)
    install_handlers(app)
    if info.acceptance is not None:
        label = info.acceptance

        @app.middleware("http")
        async def acceptance_header(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            response = await call_next(request)
            response.headers["X-DSpark-Acceptance"] = label
            return response

    auth = [Depends(bearer_check(api_key))]
    created = int(time.time())

    async def tokenize(fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(tokenizer_pool, fn, *args)

    async def respond(request: Request, req: SamplingFields, jobs: list[Job], fmt: ChatFormat | CompletionFormat,
                      arrival: float) -> Response:
        try:
            sub = engine.submit(jobs, arrival)
        except APIError as err:
            metrics.rejected(err.status)
            raise
        choices = Choices(sub, info.tokenizer, req)
        try:
            if not req.stream:
                await until_disconnect(request, choices.collect())
                return JSONResponse(fmt.response(choices))
            first: Event = await until_disconnect(request, sub.next_event())
            if first.error is not None:
                raise first.error
        except ClientGone:
            sub.abort()
            return Response(status_code=499)
        except BaseException:
            sub.abort()
            raise
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(stream_events(choices, fmt, first, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/health")
    async def health() -> Response:
        if engine.alive and engine.accepting:
            return JSONResponse({"status": "ok"})
        reason = "draining" if engine.alive else f"engine stopped: {engine.error}"
        return JSONResponse(APIError(503, reason, code="service_unavailable").body(), status_code=503)

    def card(name: str) -> ModelCard:
        return ModelCard(id=name, created=created, root=info.root, max_model_len=info.max_model_len,
                         dspark_acceptance=info.acceptance)

    @app.get("/v1/models", dependencies=auth)
    async def models() -> dict[str, Any]:
        return ModelList(data=[card(n) for n in info.names]).model_dump(exclude_none=True)

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def model(model_id: str) -> dict[str, Any]:
        info.check_model(model_id)
        return card(model_id).model_dump(exclude_none=True)

    @app.get("/metrics", dependencies=auth)
    async def metrics_route() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    async def handle(request: Request, model: type[SamplingFields], to_prompts: Callable[..., Any],
                     to_jobs: Callable[..., list[Job]], to_format: Callable[..., ChatFormat | CompletionFormat]) -> Response:
        arrival = time.monotonic()
        req = await read_json(request, model)
        name = info.check_model(req.model)
        check_supported(req)
        prompts = await tokenize(to_prompts, info, req)
        return await respond(request, req, to_jobs(info, req, prompts), to_format(name, req, prompts), arrival)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request) -> Response:
        return await handle(request, ChatCompletionRequest, chat_prompt_ids, chat_jobs, lambda name, req, ids: ChatFormat(
            engine.new_id("chatcmpl"), name, ids, req.return_token_ids))

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request) -> Response:
        return await handle(request, CompletionRequest, completion_prompts, completion_jobs, lambda name, req, ps:
                            CompletionFormat(engine.new_id("cmpl"), name, ps, req.n, req.return_token_ids))

    return app

