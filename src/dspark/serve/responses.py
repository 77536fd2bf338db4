"""Engine events -> OpenAI responses: one JSON body, or SSE chunks ending in `data: [DONE]`.

`Choices` follows the jobs of one submission (text deltas per choice through `TextStream`, finish
reasons, token counts); `ChatFormat` and `CompletionFormat` shape its content as `chat.completion(.chunk)`
or `text_completion`. A stop string the server finds before the engine does ends that job at once.
Engine finish reasons map to OpenAI's: ``eos`` and ``stop`` -> ``"stop"``, ``length`` -> ``"length"``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from dspark.serve.detokenizer import TextStream
from dspark.serve.engine_loop import Event, Submission
from dspark.serve.protocol import (
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, Completion, CompletionChoice,
    Delta, SamplingFields, Usage,
)

FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length", "abort": "abort"}
EXTENSIONS = ("token_ids", "prompt_token_ids")  # vLLM's return_token_ids fields, left out when not asked for


def _clean(body: dict[str, Any]) -> dict[str, Any]:
    for key in EXTENSIONS:
        if body.get(key, 0) is None:
            del body[key]
    for choice in body.get("choices", []):
        for key in EXTENSIONS:
            if choice.get(key, 0) is None:
                del choice[key]
    return body


def sse(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


class Choices:
    """Per-choice state of one submission while its events arrive."""

    def __init__(self, sub: Submission, tokenizer: Any, req: SamplingFields) -> None:
        self.sub, self.req = sub, req
        self.streams = [TextStream(tokenizer, job.options.stop) for job in sub.jobs]
        self.token_ids: list[list[int]] = [[] for _ in sub.jobs]
        self.finish: list[str | None] = [None] * len(sub.jobs)

    def apply(self, event: Event) -> tuple[str, list[int], str | None]:
        """(new text, new token ids, finish reason or None) of the event's choice; raises its error."""
        if event.error is not None:
            raise event.error
        i = event.index
        if self.finish[i] is not None:
            return "", [], None
        new_ids = event.token_ids[len(self.token_ids[i]):]
        self.token_ids[i] = list(event.token_ids)
        stream = self.streams[i]
        delta = stream.update(event.token_ids, event.finished)
        if stream.stopped and not event.finished:
            self.sub.finish(i)
            self.finish[i] = "stop"
        elif event.finished:
            self.finish[i] = FINISH_REASONS.get(event.finish_reason or "", "stop")
        return delta, new_ids, self.finish[i]

    def usage(self, prompt_tokens: int) -> Usage:
        completion = sum(len(t) for t in self.token_ids)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)

    async def collect(self) -> None:
        """Consume events until every choice finished (aborting the rest if anything raises)."""
        try:
            while not self.sub.done:
                self.apply(await self.sub.next_event())
        finally:
            self.sub.abort()


class ChatFormat:
    def __init__(self, response_id: str, model: str, prompt_ids: list[int], return_ids: bool) -> None:
        self.id, self.model, self.prompt_ids, self.return_ids = response_id, model, prompt_ids, return_ids
        self.created = int(time.time())

    def response(self, choices: Choices) -> dict[str, Any]:
        items = [ChatChoice(index=i, message=AssistantMessage(content=s.sent), finish_reason=choices.finish[i],
                            token_ids=choices.token_ids[i] if self.return_ids else None)
                 for i, s in enumerate(choices.streams)]
        body = ChatCompletion(id=self.id, created=self.created, model=self.model, choices=items,
                              usage=choices.usage(len(self.prompt_ids)),
                              prompt_token_ids=self.prompt_ids if self.return_ids else None)
        return _clean(body.model_dump())

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None, with_usage: bool = False) -> str:
        body = ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage).model_dump()
        if not with_usage:
            del body["usage"]
        for choice in body["choices"]:  # OpenAI sends only the delta's fields that are set
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return sse(_clean(body))

    def opening(self, num_choices: int, with_usage: bool) -> list[str]:
        return [self._chunk([ChatChunkChoice(index=i, delta=Delta(role="assistant", content=""))], with_usage=with_usage)
                for i in range(num_choices)]

    def delta(self, index: int, text: str, token_ids: list[int], finish: str | None, with_usage: bool) -> list[str]:
        out = []
        if text or (self.return_ids and token_ids):
            out.append(self._chunk([ChatChunkChoice(index=index, delta=Delta(content=text),
                                                    token_ids=token_ids if self.return_ids else None)],
                                   with_usage=with_usage))
        if finish is not None:
            out.append(self._chunk([ChatChunkChoice(index=index, delta=Delta(), finish_reason=finish)],
                                   with_usage=with_usage))
        return out

    def closing_usage(self, choices: Choices) -> str:
        return self._chunk([], usage=choices.usage(len(self.prompt_ids)), with_usage=True)


class CompletionFormat:
    def __init__(self, response_id: str, model: str, prompts: list[list[int]], n: int, return_ids: bool) -> None:
        self.id, self.model, self.prompts, self.n, self.return_ids = response_id, model, prompts, n, return_ids
        self.created = int(time.time())
        self.num_prompt_tokens = sum(len(p) for p in prompts)

    def _prompt_ids(self, index: int) -> list[int] | None:
        return self.prompts[index // self.n] if self.return_ids else None

    def response(self, choices: Choices) -> dict[str, Any]:
        items = [CompletionChoice(index=i, text=s.sent, finish_reason=choices.finish[i],
                                  token_ids=choices.token_ids[i] if self.return_ids else None,
                                  prompt_token_ids=self._prompt_ids(i))
                 for i, s in enumerate(choices.streams)]
        body = Completion(id=self.id, created=self.created, model=self.model, choices=items,
                          usage=choices.usage(self.num_prompt_tokens))
        return _clean(body.model_dump())

    def _chunk(self, choices: list[CompletionChoice], usage: Usage | None = None, with_usage: bool = False) -> str:
        body = Completion(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage).model_dump()
        if not with_usage:
            del body["usage"]
        return sse(_clean(body))

    def opening(self, num_choices: int, with_usage: bool) -> list[str]:
        return []

    def delta(self, index: int, text: str, token_ids: list[int], finish: str | None, with_usage: bool) -> list[str]:
        if not text and finish is None and not (self.return_ids and token_ids):
            return []
        return [self._chunk([CompletionChoice(index=index, text=text, finish_reason=finish,
                                              token_ids=token_ids if self.return_ids else None)], with_usage=with_usage)]

    def closing_usage(self, choices: Choices) -> str:
        return self._chunk([], usage=choices.usage(self.num_prompt_tokens), with_usage=True)


async def stream_events(choices: Choices, fmt: ChatFormat | CompletionFormat, first: Event,
                        include_usage: bool) -> AsyncIterator[str]:
    """The SSE body: opening chunks, one chunk per text delta, finish chunks, usage, `[DONE]`.

    An error after the headers went out (the engine failed, the server shut down) becomes one
    `data: {"error": ...}` chunk before `[DONE]`. Whatever ends the stream (client gone included)
    aborts the choices still running.
    """
    sub = choices.sub
    try:
        for chunk in fmt.opening(len(sub.jobs), include_usage):
            yield chunk
        event: Event | None = first
        while event is not None:
            text, ids, finish = choices.apply(event)
            for chunk in fmt.delta(event.index, text, ids, finish, include_usage):
                yield chunk
            event = await sub.next_event() if not sub.done else None
        if include_usage:
            yield fmt.closing_usage(choices)
    except Exception as exc:  # noqa: BLE001 - APIError from an event, or anything unexpected
        from dspark.serve.errors import APIError

        err = exc if isinstance(exc, APIError) else APIError(500, f"internal error: {type(exc).__name__}",
                                                             code="internal_error")
        yield sse(err.body())
    finally:
        sub.abort()
    yield "data: [DONE]\n\n"
