"""Regeneration: the target answers every user turn of every conversation (SPEC §2.5 data recipe).

    backend = EndpointBackend("http://localhost:8000", options)      # or HFBackend(target, options)
    summary = regenerate("prompts.jsonl", "conv.jsonl", backend, options)

Input: chat records (their assistant messages are discarded and regenerated) or `{"turns": [...]}`
prompt sets. Turn `i` is answered with the previous turns AND the target's own previous answers in
context. Output: one line per sample, `{"id", "conversations", "finish_reasons", "source_hash"}`, in
completion order (keyed by id, not by position).

Crash safety: the output is an append-only JSONL (`jsonl.AppendLog`: flush + fsync per record, an
exclusive lock, a torn last line cut off on restart). A restarted run reads the ids already written
and skips them, so nothing is duplicated or dropped; every output line carries the hash of the user
turns it answers, and a restart whose input no longer matches (or whose output holds ids the input
lacks) stops with a `DataError` instead of misaligning samples. Samples that fail (after retries) go
to `<output>.failures.jsonl` with the reason; that file describes the latest run, whose restart
retries them. Sampling parameters and runs are recorded in `<output>.meta.json`; resuming with other
sampling parameters is refused.

Data flow: prompts.jsonl -> regenerate -> conversations.jsonl -> data / cache_build / trainer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dspark import __version__
from dspark.errors import ConfigError, DataError
from dspark.train.data import Record, iter_records
from dspark.train.jsonl import AppendLog, atomic_write_json, iter_jsonl, read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling of the regenerated answers (DeepSpec recipe: T=0.7, top-p 0.8, top-k 20)."""

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_new_tokens: int = 2048
    seed: int = 0


@dataclass(frozen=True)
class RegenerateOptions:
    """Everything a regeneration run needs besides its files and its backend."""

    sampling: SamplingParams = field(default_factory=SamplingParams)
    chat_template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": False})
    batch_size: int = 8  # in-process: conversations per generate call
    concurrency: int = 16  # endpoint: conversations in flight
    retries: int = 3  # endpoint: extra attempts per request
    timeout: float = 600.0  # endpoint: seconds per request
    backoff: float = 0.5  # endpoint: first retry delay, doubled each attempt
    model: str | None = None  # endpoint: model name (default: the first of /v1/models)


@dataclass(frozen=True)
class Job:
    """One conversation to answer."""

    sample_id: str
    system: str | None
    user_turns: tuple[str, ...]
    source: str  # "file:line"

    @property
    def source_hash(self) -> str:
        payload = json.dumps([self.system, list(self.user_turns)], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


@dataclass
class JobResult:
    """Answers for one job, or the reason it failed."""

    sample_id: str
    answers: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    error: str | None = None


class Backend(Protocol):
    """Something that answers conversations: in process (`HFBackend`) or over HTTP (`EndpointBackend`)."""

    def describe(self) -> dict[str, Any]: ...

    def run(self, jobs: Sequence[Job], emit: Callable[[JobResult], None]) -> None: ...


@dataclass
class RegenerateSummary:
    total: int = 0
    already_done: int = 0
    pending: int = 0
    completed: int = 0
    failed: int = 0
    output: str = ""
    failures: str = ""
    meta: str = ""


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from a base seed and identifying parts (sample id, turn), stable across runs."""
    digest = hashlib.sha256(json.dumps([seed, *map(str, parts)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def job_from_record(record: Record) -> Job | None:
    """The user turns (and a leading system message) of a record; None when it has no user turn."""
    if record.kind not in ("chat", "prompt"):
        return None
    system = record.messages[0]["content"] if record.messages and record.messages[0]["role"] == "system" else None
    turns = tuple(record.user_turns())
    return Job(record.sample_id, system, turns, record.source) if turns else None


def conversation(job: Job, answers: Sequence[str]) -> list[dict[str, str]]:
    """System + alternating user turns and answers (as many turns as there are answers)."""
    messages = [{"role": "system", "content": job.system}] if job.system is not None else []
    for user, answer in zip(job.user_turns, answers):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages


def sidecar_paths(output: Path) -> tuple[Path, Path]:
    """`(<output>.failures.jsonl, <output>.meta.json)`."""
    return output.with_name(output.name + ".failures.jsonl"), output.with_name(output.name + ".meta.json")


def _done_ids(output: Path) -> dict[str, str | None]:
    done: dict[str, str | None] = {}
    if not output.exists():
        return done
    for line_number, obj in iter_jsonl(output):
        sid = str(obj.get("id")) if isinstance(obj, dict) and obj.get("id") is not None else None
        if sid is None:
            raise DataError(f"{output}:{line_number}: output record has no 'id'; not a regenerate output")
        if sid in done:
            raise DataError(f"{output}:{line_number}: sample id {sid!r} appears twice")
        done[sid] = obj.get("source_hash")
    return done


def _check_meta(meta_path: Path, options: RegenerateOptions, input_path: Path) -> dict[str, Any]:
    settings = {"sampling": asdict(options.sampling), "chat_template_kwargs": options.chat_template_kwargs}
    if meta_path.exists():
        meta = read_json(meta_path, "regeneration metadata")
        changed = [k for k, v in settings.items() if meta.get(k) != v]
        if changed:
            raise ConfigError(f"{meta_path}: the existing output was generated with other {changed} "
                              f"({ {k: meta.get(k) for k in changed} }); use a new --output or the same settings")
        return meta
    return {**settings, "input": str(input_path), "runs": []}


def regenerate(input_path: str | Path, output_path: str | Path, backend: Backend, options: RegenerateOptions,
               failures_path: str | Path | None = None, limit: int | None = None,
               on_progress: Callable[[RegenerateSummary], None] | None = None) -> RegenerateSummary:
    """Answer every pending conversation of `input_path` into `output_path` (see module docstring).

    `on_progress(summary)` is called after every finished or failed sample (for a progress bar).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    default_failures, meta_path = sidecar_paths(output_path)
    failures_path = Path(failures_path) if failures_path else default_failures
    meta = _check_meta(meta_path, options, input_path)
    summary = RegenerateSummary(output=str(output_path), failures=str(failures_path), meta=str(meta_path))
    records = list(iter_records(input_path))[:limit]
    input_ids = {r.sample_id for r in records}
    with AppendLog(output_path, lock=True) as out:
        done = _done_ids(output_path)
        stray = sorted(set(done) - input_ids)
        if stray:
            raise DataError(f"{output_path} holds ids not in {input_path} (e.g. {stray[:3]}); it was written "
                            "from another input")
        jobs, invalid = [], []
        for record in records:
            job = job_from_record(record)
            if record.sample_id in done:
                if job is not None and done[record.sample_id] not in (None, job.source_hash):
                    raise DataError(f"{record.source}: sample {record.sample_id!r} changed since its answer was "
                                    f"written to {output_path}; refusing to mix inputs")
                summary.already_done += 1
            elif job is None:
                invalid.append(record)
            else:
                jobs.append(job)
        summary.total, summary.pending = len(records), len(jobs)
        run = {"backend": backend.describe(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "pending": len(jobs),
               "dspark": __version__}
        meta["runs"] = [*meta.get("runs", []), run]
        atomic_write_json(meta_path, meta)
        failures_path.write_text("", encoding="utf-8")  # this file describes the latest run only
        with AppendLog(failures_path) as failures:
            for record in invalid:
                failures.write({"id": record.sample_id, "source": record.source,
                                "error": f"a {record.kind} record has no user turn to answer"})
                summary.failed += 1
            by_id = {job.sample_id: job for job in jobs}

            def emit(result: JobResult) -> None:
                job = by_id.pop(result.sample_id, None)
                if job is None:
                    raise RuntimeError(f"backend returned sample {result.sample_id!r} twice or unasked")
                if result.error is not None:
                    failures.write({"id": job.sample_id, "source": job.source, "error": result.error})
                    summary.failed += 1
                else:
                    out.write({"id": job.sample_id, "conversations": conversation(job, result.answers),
                               "finish_reasons": result.finish_reasons, "source_hash": job.source_hash})
                    summary.completed += 1
                if on_progress is not None:
                    on_progress(summary)

            log.info("regenerate %s -> %s: %d to do, %d already done", input_path, output_path, len(jobs),
                     summary.already_done)
            if jobs:
                backend.run(jobs, emit)
    run.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S"), completed=summary.completed, failed=summary.failed)
    atomic_write_json(meta_path, meta)
    return summary
