"""Run the speculative decoder over prompt sets, batched, and record every round as a `Trace`.

    prompt set (JSONL) ─ chat template ─ SpeculativeDecoder.generate (batches, fixed γ) ─► Trace per set

Prompt sets are named (`gsm8k`, `humaneval`, ... from the shared benchmark directory, see
`dspark.reference.prompts.shared_datasets_dir`) or given as JSONL paths. Records may be prompt sets
(`{"turns": [...]}`), chat data (its user turns are used, the answers regenerated), plain documents
(`{"text": ...}`, continued as raw text) or pre-tokenized prompts (`{"input_ids": [...]}`, used as is).
Multi-turn prompts (MT-Bench) are answered turn by turn: the answer generated for turn t becomes part
of the history of turn t+1. Prompts longer than the target's context allows (minus the generation
budget) are skipped and counted.

Confidences are recorded RAW (calibration off during the run) so that before/after-STS comparisons can
be made from one run; verification lengths are fixed, so confidences never influence decoding here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dspark.errors import ConfigError, DataError
from dspark.eval.traces import Trace, concat_traces, trace_from_results

log = logging.getLogger(__name__)

# Domains of the reference target's own prompt sets (written by `dspark data corpus`).
_REFERENCE_DOMAINS = {"code-completion": "code", "code-instruct": "code", "prose": "prose"}


@dataclass(frozen=True)
class PromptSet:
    name: str
    domain: str
    path: Path


@dataclass(frozen=True)
class Conversation:
    """One evaluation request: user turns (chat template applied), a raw text, or raw token ids."""

    sample_id: str
    turns: tuple[str, ...] = ()
    text: str | None = None
    prompt_ids: tuple[int, ...] = ()

    @property
    def num_turns(self) -> int:
        return max(1, len(self.turns))


@dataclass(frozen=True)
class DecodeSettings:
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    verify_len: int | None = None  # drafts verified per round (None: all γ)
    batch_size: int = 32
    seed: int = 0
    max_turns: int | None = None  # answer at most this many user turns per request (None: all)
    policy: str | None = None  # verification-length policy (dspark.scheduling.planner), None: fixed
    sps: str | None = None  # SPS table JSON for the policies that need one


@dataclass
class PromptSetRun:
    prompt_set: PromptSet
    trace: Trace
    num_prompts: int  # requests decoded
    num_skipped: int = 0  # requests whose first prompt was too long
    num_generated: int = 0  # tokens generated over all turns
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def domain_of(name: str) -> str:
    from dspark.reference.prompts import SHARED_DOMAINS

    return SHARED_DOMAINS.get(name, _REFERENCE_DOMAINS.get(name, "custom"))


def resolve_prompt_sets(specs: Sequence[str] | None) -> list[PromptSet]:
    """Names of shared prompt sets or JSONL paths -> `PromptSet`s; all shared sets when `specs` is empty."""
    from dspark.reference.prompts import list_prompt_sets, shared_datasets_dir

    directory = shared_datasets_dir()
    available = list_prompt_sets(directory) if directory is not None else {}
    if not specs:
        if not available:
            raise DataError("no --datasets given and no shared prompt sets found "
                            "(set DSPARK_DATASETS to a directory of *.jsonl prompt sets, or pass JSONL files)")
        specs = list(available)
    out: list[PromptSet] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_file():
            out.append(PromptSet(path.stem, domain_of(path.stem), path))
        elif spec in available:
            out.append(PromptSet(spec, domain_of(spec), available[spec]))
        else:
            where = f"; known prompt sets in {directory}: {', '.join(available)}" if available else \
                " (no shared prompt-set directory found; set DSPARK_DATASETS)"
            raise DataError(f"dataset {spec!r} is neither a JSONL file nor a known prompt set{where}")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise DataError(f"two datasets share a name: {names}")
    return out


def load_conversations(path: str | Path, max_prompts: int | None = None) -> list[Conversation]:
    """The first `max_prompts` requests of a JSONL file (all when None or 0)."""
    from dspark.train.data import iter_records

    out: list[Conversation] = []
    for rec in iter_records(path):
        if max_prompts and len(out) >= max_prompts:
            break
        if rec.kind in ("prompt", "chat"):
            turns = tuple(rec.user_turns())
            if not turns:
                raise DataError(f"{rec.source}: the conversation has no user turn")
            out.append(Conversation(rec.sample_id, turns=turns))
        elif rec.kind == "text":
            out.append(Conversation(rec.sample_id, text=rec.text))
        else:
            out.append(Conversation(rec.sample_id, prompt_ids=tuple(rec.input_ids)))
    if not out:
        raise DataError(f"{path}: no prompts")
    return out


def eos_ids(target: Any) -> list[int]:
    """Every end-of-sequence id the target knows (tokenizer, config and generation config)."""
    found: list[int] = []
    sources = [getattr(target.tokenizer, "eos_token_id", None) if target.tokenizer is not None else None,
               getattr(target.config, "eos_token_id", None),
               getattr(getattr(target.model, "generation_config", None), "eos_token_id", None)]
    for value in sources:
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and int(v) not in found:
                found.append(int(v))
    return found


class _Prompter:
    """Token ids of the next prompt of a conversation, given the answers generated so far."""

    def __init__(self, target: Any) -> None:
        self.tokenizer = target.tokenizer
        self._formatter = None

    def formatter(self):
        if self._formatter is None:
            from dspark.train.templates import ChatFormatter

            if self.tokenizer is None:
                raise DataError("text prompts need a target with a tokenizer (or pass {\"input_ids\": [...]} records)")
            self._formatter = ChatFormatter(self.tokenizer, {"enable_thinking": False})
        return self._formatter

    def prompt(self, conv: Conversation, answers: list[str]) -> list[int]:
        if conv.prompt_ids:
            return list(conv.prompt_ids)
        if conv.text is not None:
            fmt = self.formatter()
            return list(fmt.bos_prefix) + fmt.encode(conv.text)
        messages: list[dict[str, str]] = []
        for t, answer in enumerate(answers):
            messages += [{"role": "user", "content": conv.turns[t]}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": conv.turns[len(answers)]})
        return self.formatter().prompt_ids(messages)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer is not None else ""


def run_prompt_set(decoder: Any, prompt_set: PromptSet, conversations: Sequence[Conversation],
                   settings: DecodeSettings, request_offset: int = 0, progress: bool = False) -> PromptSetRun:
    """Decode every conversation of one prompt set (all its turns) and trace the rounds."""
    target, drafter = decoder.target, decoder.drafter
    if drafter is None:
        raise ConfigError("evaluation needs a drafter")
    num_slots = int(drafter.config.num_drafts)
    max_positions = int(getattr(target.config, "max_position_embeddings", 0) or 0)
    max_prompt = max_positions - settings.max_new_tokens - num_slots - 1 if max_positions else None
    if max_prompt is not None and max_prompt < 1:
        raise ConfigError(f"--max-new-tokens {settings.max_new_tokens} leaves no room for a prompt in the target's "
                          f"{max_positions} positions")
    prompter, stop_ids = _Prompter(target), eos_ids(target)
    answers: list[list[str]] = [[] for _ in conversations]
    rounds_done = [0] * len(conversations)
    alive = [True] * len(conversations)
    results, labels = [], []  # labels: (request id, turn, first round index)
    num_skipped = num_generated = batch_no = 0
    max_turns = max(c.num_turns for c in conversations)
    if settings.max_turns:
        max_turns = min(max_turns, settings.max_turns)
    t0 = time.perf_counter()
    for turn in range(max_turns):
        todo: list[tuple[int, list[int]]] = []
        for i, conv in enumerate(conversations):
            if not alive[i] or turn >= conv.num_turns:
                continue
            ids = prompter.prompt(conv, answers[i])
            if max_prompt is not None and len(ids) > max_prompt:
                alive[i] = False  # later turns only grow
                num_skipped += int(turn == 0)
                continue
            todo.append((i, ids))
        todo.sort(key=lambda item: len(item[1]))  # similar lengths per batch: less padding
        batches = [todo[s: s + settings.batch_size] for s in range(0, len(todo), settings.batch_size)]
        for batch in _progress(batches, progress, f"{prompt_set.name} turn {turn + 1}"):
            out = decoder.generate([ids for _, ids in batch], max_new_tokens=settings.max_new_tokens,
                                   temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                                   seed=settings.seed + batch_no, eos_token_id=stop_ids or None,
                                   verify_len=settings.verify_len, planner=_planner(settings))
            batch_no += 1
            for (i, _), res in zip(batch, out):
                results.append(res)
                labels.append((request_offset + i, turn, rounds_done[i]))
                rounds_done[i] += len(res.rounds)
                num_generated += len(res.token_ids)
                if turn + 1 < conversations[i].num_turns:
                    answers[i].append(prompter.decode(res.token_ids))
    trace = trace_from_results(results, num_slots, prompt_set.name, prompt_set.domain,
                               [r for r, _, _ in labels], [t for _, t, _ in labels], [o for _, _, o in labels])
    run = PromptSetRun(prompt_set, trace, len(conversations) - num_skipped, num_skipped, num_generated,
                       time.perf_counter() - t0)
    if num_skipped:
        run.notes.append(f"{num_skipped} prompt(s) longer than {max_prompt} tokens skipped")
        log.warning("%s: %d prompt(s) longer than %s tokens skipped", prompt_set.name, num_skipped, max_prompt)
    log.info("%s: %d prompts, %d rounds, %d tokens in %.1fs", prompt_set.name, run.num_prompts, len(trace),
             num_generated, run.wall_s)
    return run


def _planner(settings: DecodeSettings):
    """A fresh policy planner per decoded batch (its stale-survival history belongs to that batch)."""
    if settings.policy is None:
        return None
    from dspark.scheduling.planner import planner_from_args

    return planner_from_args(settings.policy, settings.sps)


def run_prompt_sets(target: Any, drafter: Any, prompt_sets: Sequence[PromptSet], settings: DecodeSettings,
                    max_prompts: int | None = None, progress: bool = False) -> list[PromptSetRun]:
    """Decode several prompt sets with calibration switched off (raw confidences); restores it after."""
    from dspark import SpeculativeDecoder

    decoder = SpeculativeDecoder(target, drafter)
    stored = getattr(drafter.config, "calibration_temperatures", None)
    has_setter = hasattr(drafter, "set_calibration")
    if has_setter:
        drafter.set_calibration(None)
    loaded = [load_conversations(ps.path, max_prompts) for ps in prompt_sets]  # bad files fail before decoding
    runs, offset = [], 0
    try:
        for ps, convs in zip(prompt_sets, loaded):
            runs.append(run_prompt_set(decoder, ps, convs, settings, request_offset=offset, progress=progress))
            offset += len(convs)
    finally:
        if has_setter:
            drafter.set_calibration(stored)
    if not any(len(r.trace) for r in runs):
        raise DataError("no round was decoded (every prompt was skipped or empty)")
    return runs


def combined_trace(runs: Sequence[PromptSetRun]) -> Trace:
    return concat_traces([r.trace for r in runs])


def _progress(items: list, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False)
