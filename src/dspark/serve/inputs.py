"""OpenAI request -> engine jobs: prompt token ids (chat template or raw prompt) and `SamplingOptions`.

Every check that needs no engine state happens here, before anything is queued, so a bad request is a
400 naming its field: the model name, unsupported features, prompts beyond `max_model_len`, a
`max_tokens` that does not fit behind the prompt, token ids outside the vocabulary, sampling values
`SamplingOptions` refuses. A text too long to possibly fit is refused before it is tokenized (no token
covers more than `max_token_bytes` bytes), so a huge body cannot stall the tokenizer.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from dspark.engine.options import SamplingOptions
from dspark.errors import ConfigError
from dspark.serve.engine_loop import Job
from dspark.serve.errors import APIError, bad_request
from dspark.serve.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions


@dataclass
class ModelInfo:
    """What the request handlers know about the served model (copied once at start: no engine access)."""

    names: list[str]  # served model names; the first is reported
    root: str  # the target's path
    max_model_len: int
    vocab_size: int
    tokenizer: Any
    max_token_bytes: int  # the longest token's UTF-8 length (a bound for the length pre-check)
    acceptance: str | None = None  # the synthetic acceptance label (NOT lossless), None: lossless

    @classmethod
    def from_llm(cls, llm: Any, names: list[str]) -> "ModelInfo":
        tok = llm.target.tokenizer
        longest = max((len(t.encode("utf-8", "replace")) for t in tok.get_vocab()), default=64) if tok is not None else 64
        return cls(names, str(llm.target.path), int(llm.max_model_len), int(llm.target.vocab_size), tok, max(1, longest),
                   getattr(llm, "synthetic_label", None))

    def check_model(self, name: str | None) -> str:
        if name is not None and name not in self.names:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {self.names}", "model",
                           "model_not_found")
        return self.names[0]

    def check_text_length(self, num_bytes: int, param: str) -> None:
        if num_bytes > self.max_model_len * self.max_token_bytes:
            raise bad_request(f"this model's maximum context length is {self.max_model_len} tokens; the {param} "
                              f"({num_bytes} bytes) cannot fit", param, "context_length_exceeded")


def check_supported(req: SamplingFields) -> None:
    bad = req.unsupported_fields()
    if bad:
        raise bad_request(f"{bad[0]} is not supported by this server", bad[0], "unsupported_parameter")


def chat_prompt_ids(info: ModelInfo, req: ChatCompletionRequest) -> list[int]:
    """Render the messages with the tokenizer's chat template (runs in the tokenizer thread)."""
    tok = info.tokenizer
    if tok is None or not getattr(tok, "chat_template", None):
        raise bad_request("this model has no chat template; use /v1/completions", "messages", "no_chat_template")
    info.check_text_length(sum(len(m.text().encode()) for m in req.messages), "messages")
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})} for m in req.messages]
    extra = dict(req.chat_template_kwargs or {})
    # only variables for the template: no replacing the template itself, tokenizing, tools, ...
    params = inspect.signature(tok.apply_chat_template).parameters.values()
    reserved = sorted(set(extra) & {p.name for p in params if p.kind is not p.VAR_KEYWORD})
    if reserved:
        raise bad_request(f"chat_template_kwargs may not set {reserved}", "chat_template_kwargs")
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=req.add_generation_prompt, **extra)
    except Exception as exc:  # noqa: BLE001 - jinja errors, template-raised exceptions
        raise bad_request(f"the chat template could not render these messages: {exc}", "messages") from exc
    return list(tok(text, add_special_tokens=False)["input_ids"])


def completion_prompts(info: ModelInfo, req: CompletionRequest) -> list[list[int]]:
    """The prompt(s) of a completion request as token ids (runs in the tokenizer thread)."""
    p = req.prompt
    if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], str)):
        texts = [p] if isinstance(p, str) else list(p)
        if info.tokenizer is None:
            raise bad_request("this model has no tokenizer: send token ids as the prompt", "prompt")
        for text in texts:
            info.check_text_length(len(text.encode()), "prompt")
        prompts = [list(info.tokenizer(t, add_special_tokens=True)["input_ids"]) for t in texts]
    elif isinstance(p, list) and p and isinstance(p[0], list):
        prompts = [list(x) for x in p]
    else:
        prompts = [list(p)]  # type: ignore[arg-type]
    for ids in prompts:
        if not ids:
            raise bad_request("the prompt is empty", "prompt")
        bad = [t for t in ids if not 0 <= t < info.vocab_size]
        if bad:
            raise bad_request(f"prompt token ids outside the vocabulary [0, {info.vocab_size}): {bad[:5]}", "prompt")
    return prompts


def sampling_options(info: ModelInfo, req: SamplingFields, prompt_len: int, default_max_tokens: int | None,
                     index: int = 0) -> SamplingOptions:
    """Options for choice `index` of a prompt of `prompt_len` tokens (refuses what cannot fit)."""
    limit = info.max_model_len
    param = "messages" if isinstance(req, ChatCompletionRequest) else "prompt"
    if prompt_len >= limit:
        raise bad_request(f"this model's maximum context length is {limit} tokens; the {param} has {prompt_len}",
                          param, "context_length_exceeded")
    budget = req.budget()
    max_tokens = budget if budget is not None else min(default_max_tokens or limit, limit - prompt_len)
    if prompt_len + max_tokens > limit:
        raise bad_request(f"this model's maximum context length is {limit} tokens; you requested "
                          f"{prompt_len + max_tokens} ({prompt_len} in the {param}, {max_tokens} in the completion)",
                          "max_tokens", "context_length_exceeded")
    seed = None if req.seed is None else (req.seed + index) % 2**63
    try:
        return SamplingOptions(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else float(req.temperature),
                               top_p=1.0 if req.top_p is None else float(req.top_p), top_k=max(0, req.top_k or 0),
                               seed=seed, stop_token_ids=tuple(req.stop_token_ids or ()), stop=req.stop_list(),
                               ignore_eos=req.ignore_eos)
    except ConfigError as exc:
        raise bad_request(str(exc), str(exc).split(" ", 1)[0]) from exc


def chat_jobs(info: ModelInfo, req: ChatCompletionRequest, prompt_ids: list[int]) -> list[Job]:
    return [Job(prompt_ids, sampling_options(info, req, len(prompt_ids), None, i)) for i in range(req.n)]


def completion_jobs(info: ModelInfo, req: CompletionRequest, prompts: list[list[int]]) -> list[Job]:
    return [Job(ids, sampling_options(info, req, len(ids), DEFAULT_COMPLETION_TOKENS, j))
            for ids in prompts for j in range(req.n)]
