"""The two ways `regenerate` gets answers: in process (`HFBackend`) or over HTTP (`EndpointBackend`).

* `HFBackend(target, options)`: batched plain Hugging Face `generate` on the target's `.model` with its
  tokenizer. Conversations are grouped `batch_size` at a time and answered turn by turn (left-padded
  prompts rendered by `templates.ChatFormatter`, so the answer to turn i is in the prompt of turn i+1).
  The RNG is seeded per batch and turn from the seed and the sample ids. An exception in a batch fails
  that batch's samples (with the reason), not the run.
* `EndpointBackend(url, options)`: any OpenAI-compatible `/v1/chat/completions` server (vLLM, SGLang,
  `dspark serve`) through `httpx`, `concurrency` conversations in flight, each request retried on
  transport errors, timeouts, 408/409/429 and 5xx with exponential backoff (honouring `Retry-After`);
  other 4xx fail the sample at once. `top_k`, `seed` and `chat_template_kwargs` are sent as the
  extra fields vLLM and SGLang accept. A key in `$DSPARK_API_KEY` (else `$OPENAI_API_KEY`) is sent as
  `Authorization: Bearer KEY` (for `dspark serve --api-key`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import torch

from dspark.errors import ConfigError
from dspark.train.regenerate import Job, JobResult, RegenerateOptions, conversation, derive_seed
from dspark.train.templates import ChatFormatter

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}


class HFBackend:
    """Batched in-process generation with the target model (see module docstring)."""

    def __init__(self, target: Any, options: RegenerateOptions) -> None:
        if target.tokenizer is None:
            raise ConfigError(f"target {target.path} has no tokenizer; in-process regeneration needs one")
        self.target, self.options = target, options
        self.formatter = ChatFormatter(target.tokenizer, options.chat_template_kwargs)
        stops = getattr(getattr(target.model, "generation_config", None), "eos_token_id", None)
        stops = [stops] if isinstance(stops, int) else list(stops or [])
        if self.formatter.eos_id is not None:
            stops.append(int(self.formatter.eos_id))
        self.stop_ids = sorted(set(stops))
        pad = getattr(target.tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (self.stop_ids[0] if self.stop_ids else 0))

    def describe(self) -> dict[str, Any]:
        return {"kind": "hf", "target": str(self.target.path), "batch_size": self.options.batch_size}

    def run(self, jobs: Sequence[Job], emit: Callable[[JobResult], None]) -> None:
        size = max(1, self.options.batch_size)
        for start in range(0, len(jobs), size):
            chunk = list(jobs[start: start + size])
            try:
                results = self._answer(chunk)
            except Exception as exc:  # one bad batch (OOM, overlong prompt) must not end the run
                log.warning("batch of %d failed: %s", len(chunk), exc, exc_info=True)
                results = [JobResult(j.sample_id, error=f"{type(exc).__name__}: {exc}") for j in chunk]
            for result in results:
                emit(result)

    def _answer(self, jobs: list[Job]) -> list[JobResult]:
        results = [JobResult(j.sample_id) for j in jobs]
        for turn in range(max(len(j.user_turns) for j in jobs)):
            active = [i for i, j in enumerate(jobs) if turn < len(j.user_turns)]
            prompts = []
            for i in active:
                history = conversation(jobs[i], results[i].answers)
                prompts.append(self.formatter.prompt_ids(history + [{"role": "user", "content": jobs[i].user_turns[turn]}]))
            seed = derive_seed(self.options.sampling.seed, turn, *(jobs[i].sample_id for i in active))
            for i, (text, reason) in zip(active, self._generate(prompts, seed)):
                results[i].answers.append(text)
                results[i].finish_reasons.append(reason)
        return results

    @torch.no_grad()
    def _generate(self, prompts: list[list[int]], seed: int) -> list[tuple[str, str]]:
        sampling = self.options.sampling
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [B, L] left-padded
        mask = torch.zeros_like(ids)
        for b, p in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p):] = 1
        kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": self.pad_id,
                                  "eos_token_id": self.stop_ids or None, "do_sample": sampling.temperature > 0}
        if sampling.temperature > 0:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        torch.manual_seed(seed)
        device = self.target.device
        out = self.target.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        answers = []
        for row in out[:, width:].tolist():  # [B, new]
            stop = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
            tokens = row if stop is None else row[:stop]
            text = self.target.tokenizer.decode(tokens, skip_special_tokens=True)
            answers.append((text, "length" if stop is None else "stop"))
        return answers


class RequestFailed(Exception):
    """A chat-completion request that failed for good (message says why)."""


def chat_completions_url(url: str) -> str:
    """`http://host:8000`, `.../v1` or `.../v1/chat/completions` -> the chat-completions URL."""
    base = url.rstrip("/")
    if base.endswith("/chat/completions"):
        return base
    return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")


class EndpointBackend:
    """Concurrent chat completions against an OpenAI-compatible server (see module docstring)."""

    def __init__(self, url: str, options: RegenerateOptions, max_backoff: float = 30.0) -> None:
        if options.concurrency < 1 or options.retries < 0:
            raise ConfigError("concurrency must be >= 1 and retries >= 0")
        try:
            import httpx  # noqa: F401
        except ModuleNotFoundError as exc:
            raise ConfigError("--endpoint needs httpx: pip install httpx (or pip install 'dspark[serve]')") from exc
        self.url = chat_completions_url(url)
        self.options, self.max_backoff = options, max_backoff
        self.model = options.model

    def describe(self) -> dict[str, Any]:
        return {"kind": "endpoint", "url": self.url, "model": self.model, "concurrency": self.options.concurrency,
                "retries": self.options.retries}

    def run(self, jobs: Sequence[Job], emit: Callable[[JobResult], None]) -> None:
        asyncio.run(self._run(jobs, emit))

    async def _run(self, jobs: Sequence[Job], emit: Callable[[JobResult], None]) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.options.concurrency)
        key = os.environ.get("DSPARK_API_KEY") or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with httpx.AsyncClient(timeout=self.options.timeout, limits=limits, headers=headers) as client:
            if self.model is None:
                self.model = await self._discover_model(client)
            pending = iter(jobs)  # shared by the workers; next() never yields control, so no job runs twice

            async def worker() -> None:
                for job in pending:
                    emit(await self._answer(client, job))

            await asyncio.gather(*(worker() for _ in range(min(self.options.concurrency, len(jobs)))))

    async def _discover_model(self, client: Any) -> str:
        models_url = self.url[: -len("/chat/completions")] + "/models"
        try:
            response = await client.get(models_url)
            response.raise_for_status()
            return str(response.json()["data"][0]["id"])
        except Exception as exc:
            raise ConfigError(f"could not list the models at {models_url} ({exc}); pass --model") from exc

    async def _answer(self, client: Any, job: Job) -> JobResult:
        result = JobResult(job.sample_id)
        for turn, user in enumerate(job.user_turns):
            messages = conversation(job, result.answers) + [{"role": "user", "content": user}]
            try:
                text, reason = await self._complete(client, messages, derive_seed(self.options.sampling.seed,
                                                                                  job.sample_id, turn))
            except RequestFailed as exc:
                return JobResult(job.sample_id, error=f"turn {turn}: {exc}")
            result.answers.append(text)
            result.finish_reasons.append(reason)
        return result

    async def _complete(self, client: Any, messages: list[dict[str, str]], seed: int) -> tuple[str, str]:
        import httpx

        s = self.options.sampling
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": s.temperature,
                                   "top_p": s.top_p, "top_k": s.top_k, "max_tokens": s.max_new_tokens,
                                   "seed": seed % (1 << 31)}
        if self.options.chat_template_kwargs:
            payload["chat_template_kwargs"] = self.options.chat_template_kwargs
        problem = ""
        for attempt in range(self.options.retries + 1):
            delay = min(self.max_backoff, self.options.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)
            try:
                response = await client.post(self.url, json=payload)
            except httpx.HTTPError as exc:  # connection refused/reset, timeouts
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    return _parse_completion(response)
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in RETRYABLE_STATUS:
                    raise RequestFailed(problem)
                retry_after = response.headers.get("retry-after", "")
                if retry_after.replace(".", "", 1).isdigit():
                    delay = min(self.max_backoff, float(retry_after))
            if attempt < self.options.retries:
                await asyncio.sleep(delay)
        raise RequestFailed(f"{problem} (gave up after {self.options.retries + 1} attempts)")


def _parse_completion(response: Any) -> tuple[str, str]:
    try:
        choice = response.json()["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RequestFailed(f"malformed chat completion ({exc!r}): {response.text[:200]}") from exc
    if not isinstance(content, str):
        raise RequestFailed(f"chat completion has no text content: {response.text[:200]}")
    return content, str(choice.get("finish_reason") or "stop")
