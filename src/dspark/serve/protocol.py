"""The OpenAI HTTP schema `dspark serve` speaks: pydantic request and response models.

Requests are validated strictly (a string where a number belongs is an error, not coerced) and unknown
fields are kept but ignored, as vLLM does, so clients that send newer OpenAI fields still work. The
extra fields vLLM and SGLang accept are understood too: `top_k`, `stop_token_ids`, `ignore_eos`,
`chat_template_kwargs`, `return_token_ids`. Features the engine does not have (log-probabilities,
penalties, tools that must be called, `echo`, `suffix`) are refused with a 400 naming the field
(`unsupported_fields`) instead of being silently dropped.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 16  # choices per request
MAX_STOP = 16  # stop strings per request


class Request(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(Request):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(Request):
    """Fields shared by chat completions and completions."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=-1)  # -1 or 0: off
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    return_token_ids: bool = False  # vLLM's extension: token ids of the prompt and of every choice

    @field_validator("temperature", "top_p", "presence_penalty", "frequency_penalty")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if len(items) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        if any(not s for s in items):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_ids(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(t < 0 for t in value):
            raise ValueError("token ids must be >= 0")
        return value

    def stop_list(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def budget(self) -> int | None:
        return self.max_tokens

    def unsupported_fields(self) -> list[str]:
        bad = [name for name in ("presence_penalty", "frequency_penalty") if getattr(self, name)]
        return bad


class TextPart(Request):
    type: Literal["text"]
    text: str


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True

    def budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported_fields(self) -> list[str]:
        bad = super().unsupported_fields()
        if self.logprobs or self.top_logprobs:
            bad.append("logprobs")
        if self.tool_choice not in (None, "none", "auto"):
            bad.append("tool_choice")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            bad.append("response_format")
        return bad


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None

    def unsupported_fields(self) -> list[str]:
        bad = super().unsupported_fields()
        bad += [name for name in ("echo", "logprobs", "suffix") if getattr(self, name)]
        if self.best_of is not None and self.best_of != self.n:
            bad.append("best_of")
        return bad


# ---------------------------------------------------------------------------------------- responses
class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Usage(Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(Response):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(Response):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: None = None
    token_ids: list[int] | None = None


class ChatCompletion(Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_token_ids: list[int] | None = None


class Delta(Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(Response):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionChoice(Response):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None


class Completion(Response):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "dspark"
    root: str
    max_model_len: int
    dspark_acceptance: str | None = None  # set only when acceptance is synthetic (benchmark only, NOT lossless)


class ModelList(Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(Response):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(Response):
    error: ErrorInfo
