"""`LLM`: the engine's front door — add requests, step, read outputs (what the CLI, eval and server use).

    llm = LLM("path/to/target", "path/to/drafter", policy="dspark-async+gate")
    results = llm.generate([[1, 2, 3]], max_new_tokens=64, temperature=0.0)
    rid = llm.add_request([1, 2, 3], SamplingOptions(max_tokens=16)); outs = llm.step(); llm.abort(rid)

One `step()` = `Scheduler.schedule()` -> `Runner.execute()` -> `Scheduler.update()`; requests join and
leave at any step. `runner="hf"` runs the target through transformers (the oracle), `"model"` through
our own dense forward over the paged cache, `"auto"` (default) the latter where the family is supported.

`synthetic_acceptance="dspark/math"` (a preset, ``curve:...`` or a JSONL trace; benchmark only, NOT
lossless) forces every round's acceptance to draws from that model (`dspark.engine.synthetic`); `stats()`
and every result then carry its label. It needs a drafting policy: plain decoding refuses it.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dspark.drafters.base import Drafter
from dspark.engine.block_manager import BlockManager
from dspark.engine.options import EngineConfig, SamplingOptions
from dspark.engine.request import Request
from dspark.engine.results import GenerationResult, RequestOutput
from dspark.engine.runner import HFRunner, ModelRunner, Runner
from dspark.engine.scheduler import Scheduler
from dspark.engine.synthetic import SyntheticAcceptance, synthetic_from_spec
from dspark.errors import ConfigError, DSparkError, UnsupportedModelError
from dspark.scheduling.planner import NEEDS_SPS, Planner, VerifyPlanner
from dspark.scheduling.policy import parse_policy
from dspark.scheduling.sps_table import SPSTable
from dspark.targets.adapter import TargetModel

log = logging.getLogger(__name__)

KV_MEMORY_CPU = 2 << 30  # default KV budget on the CPU when num_pages is not given
KV_MEMORY_GPU_FRACTION = 0.8  # of the free device memory


def _load(target: str | Path | TargetModel, drafter: str | Path | Drafter | None, dtype: str, device: str
          ) -> tuple[TargetModel, Drafter | None]:
    from dspark.formats import check_compatible, load_drafter
    from dspark.targets import load_target

    if not isinstance(target, TargetModel):
        target = load_target(target, dtype=dtype, device=device)
    if drafter is not None and not isinstance(drafter, torch.nn.Module):
        drafter = load_drafter(drafter, target=target, device=target.device, dtype=target.dtype)
    if drafter is not None:
        check_compatible(drafter.config, target)
        drafter.to(target.device).eval()
    return target, drafter


def _page_bytes(target: TargetModel, drafter: Drafter | None, page_size: int) -> int:
    tc = target.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    kv_heads = getattr(tc, "num_key_value_heads", None) or tc.num_attention_heads
    size = 2 * target.num_layers * kv_heads * head_dim * target.dtype.itemsize
    if drafter is not None:
        c = drafter.config
        size += 2 * drafter.context_layers * c.num_key_value_heads * c.head_dim * next(drafter.parameters()).dtype.itemsize
    return size * page_size


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    pages_used: int
    pages_total: int
    steps: int
    prefix_hit_pages: int
    preemptions: int
    rounds_planned: int  # steps whose verify lengths the policy chose
    rows_planned: int  # request-rounds planned (mean verify length = tokens_planned / rows_planned)
    tokens_planned: int
    rounds_skipped: int  # rounds the draft gate ran plain
    synthetic_acceptance: str | None = None  # label of a synthetic acceptance model (NOT lossless), None: lossless


class LLM:
    def __init__(self, target: str | Path | TargetModel, drafter: str | Path | Drafter | None = None, *,
                 policy: str | Planner | None = None, sps: SPSTable | str | Path | None = None, runner: str = "auto",
                 dtype: str = "float32", device: str = "cpu", detokenize: bool = True, **options: object) -> None:
        self.target, self.drafter = _load(target, drafter, dtype, device)
        self.detokenize = detokenize  # decode the output text every step (off: a server detokenizes itself)
        self.num_drafts = self.drafter.config.num_drafts if self.drafter is not None else 0
        unknown = set(options) - set(EngineConfig.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown engine option(s) {sorted(unknown)}; known: {sorted(EngineConfig.__dataclass_fields__)}")
        cfg = EngineConfig(**options)  # type: ignore[arg-type]
        given = policy if policy is not None and not isinstance(policy, str) else None
        cfg.policy = given.policy if given is not None else (policy or (f"fixed:{self.num_drafts}" if self.drafter is not None else "none"))
        cfg.check(self.num_drafts)
        self.config = cfg
        self.synthetic = self._make_synthetic(given.drafting if given is not None else None)
        max_pos = int(getattr(self.target.text_config, "max_position_embeddings", 0) or 0) or 1 << 20
        self.max_model_len = min(cfg.max_model_len or max_pos, max_pos)
        self.eos_token_ids = set(cfg.eos_token_ids) or self.target.stop_token_ids()
        num_pages = cfg.num_pages or self._default_pages()
        self.runner = self._make_runner(runner, num_pages)
        self.blocks = BlockManager(num_pages, cfg.page_size, cfg.enable_prefix_caching and self.runner.supports_prefix_caching)
        if self.blocks.pages_for(self.max_model_len) > num_pages - 1:
            log.info("KV pool of %d pages holds less than one max_model_len sequence; long requests will be refused", num_pages)
        self.scheduler = Scheduler(cfg, self.blocks, VerifyPlanner("none"), self.num_drafts, self.eos_token_ids,
                                   self.max_model_len)
        self._ids = itertools.count()
        self._reported: dict[str, int] = {}
        self._last_step: tuple[int, int, bool, float] | None = None  # (seqs, tokens, drafted, start) of the last step
        self.planner = self._make_planner(given or cfg.policy, sps)  # may profile the engine (needs the scheduler)
        self.scheduler.planner = self.planner

    # ------------------------------------------------------------------------------ construction
    def _default_pages(self) -> int:
        want = self.config.max_num_seqs * -(-self.max_model_len // self.config.page_size) + 1
        if self.target.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.target.device)
            budget = int(free * KV_MEMORY_GPU_FRACTION)
        else:
            budget = KV_MEMORY_CPU
        return max(2, min(want, budget // _page_bytes(self.target, self.drafter, self.config.page_size)))

    def _make_synthetic(self, drafting: bool | None) -> SyntheticAcceptance | None:
        """The synthetic acceptance model of `synthetic_acceptance` (None when off); refused without drafting."""
        spec = self.config.synthetic_acceptance
        if spec is None:
            return None
        policy = self.config.policy
        if drafting is None:
            parsed = parse_policy(policy)
            drafting = not (parsed.kind == "none" or (parsed.kind == "fixed" and parsed.param == 0))
        if self.drafter is None or not drafting:
            raise ConfigError(f"synthetic_acceptance {spec!r} replaces the acceptance of drafts, but policy {policy!r}"
                              f"{'' if self.drafter is not None else ' without a drafter'} drafts nothing (plain "
                              f"decoding is lossless: drop the option)")
        synthetic = synthetic_from_spec(spec, self.num_drafts, self.config.synthetic_seed)
        log.warning("%s: accepted drafts are drawn from %s, not verified by the target; benchmark only",
                    synthetic.label, spec)
        return synthetic

    def _make_runner(self, kind: str, num_pages: int) -> Runner:
        ps = self.config.page_size
        extra = {"synthetic": self.synthetic} if self.synthetic is not None else {}
        if kind == "hf":
            return HFRunner(self.target, self.drafter, num_pages, ps, **extra)
        if kind in ("model", "auto"):
            try:
                return ModelRunner(self.target, self.drafter, num_pages, ps, cuda_graphs=not self.config.enforce_eager,
                                   max_num_seqs=self.config.max_num_seqs,
                                   max_num_batched_tokens=self.config.max_num_batched_tokens, **extra)
            except UnsupportedModelError:
                if kind == "model":
                    raise
                log.info("target family not supported by the dense runner; using transformers (runner='hf')")
                return HFRunner(self.target, self.drafter, num_pages, ps, **extra)
        raise ConfigError(f"runner must be 'auto', 'model' or 'hf', got {kind!r}")

    def _make_planner(self, policy: str | Planner, sps: SPSTable | str | Path | None) -> Planner:
        if isinstance(sps, (str, Path)):
            if not Path(sps).is_file():
                raise ConfigError(f"SPS table {str(sps)!r} not found")
            sps = SPSTable.load(sps)
        if isinstance(policy, str):
            parsed = parse_policy(policy)
            if sps is None and (parsed.kind in NEEDS_SPS or parsed.gate):
                if self.drafter is None:
                    raise ConfigError(f"policy {policy!r} drafts, but no drafter was given (use policy 'none')")
                from dspark.engine.profile import table_for

                sps = table_for(self)
        ladder = self.runner.graph_ladder()
        if sps is not None and ladder and not sps.ladder:  # price verify forwards as the graphs run them
            sps = sps.with_ladder(ladder)
        planner = VerifyPlanner(policy, sps) if isinstance(policy, str) else policy
        if planner.drafting and self.drafter is None:
            raise ConfigError(f"policy {policy!r} drafts, but no drafter was given (use policy 'none')")
        if (planner.needs_confidence and self.drafter is not None and not self.drafter.config.has_confidence
                and self.synthetic is None):  # synthetic acceptance brings its own confidences
            raise ConfigError(f"policy {policy!r} needs a drafter with a confidence head ({self.drafter.config.method} has none)")
        return planner

    # ------------------------------------------------------------------------------ requests
    def check_request(self, prompt_ids: list[int], options: SamplingOptions) -> None:
        """Raise `DSparkError` for a request `add_request` would refuse. Reads only constants, so another
        thread (a server's request handler) may call it while the engine steps."""
        if not prompt_ids:
            raise DSparkError("the prompt is empty")
        bad = [t for t in prompt_ids if not 0 <= t < self.target.vocab_size]
        if bad:
            raise DSparkError(f"prompt has token ids outside the vocabulary [0, {self.target.vocab_size}): {bad[:5]}")
        if len(prompt_ids) >= self.max_model_len:
            raise DSparkError(f"prompt of {len(prompt_ids)} tokens leaves no room under max_model_len {self.max_model_len}")
        if self.blocks.pages_for(min(len(prompt_ids) + options.max_tokens, self.max_model_len) + self.num_drafts + 1) > self.blocks.num_pages - 1:
            raise DSparkError(f"prompt + max_tokens ({len(prompt_ids)} + {options.max_tokens}) needs more KV pages than the "
                              f"pool has ({self.blocks.num_pages - 1} x {self.blocks.page_size}); raise num_pages")

    def add_request(self, prompt_ids: list[int], options: SamplingOptions | None = None, request_id: str | None = None) -> str:
        options = options or SamplingOptions()
        prompt_ids = [int(t) for t in prompt_ids]
        self.check_request(prompt_ids, options)
        req_id = request_id if request_id is not None else f"req-{next(self._ids)}"
        if req_id in self.scheduler.requests and not self.scheduler.requests[req_id].finished:
            raise DSparkError(f"request id {req_id!r} is already running")
        seed = options.seed if options.seed is not None else random.SystemRandom().randrange(2**63)
        self.scheduler.add(Request(req_id, prompt_ids, options, seed))
        self._reported[req_id] = 0
        return req_id

    def abort(self, request_id: str) -> bool:
        """Stop a request now and free its pages; False if it is unknown or already finished."""
        self._reported.pop(request_id, None)
        return self.scheduler.finish(request_id, "abort")

    def release(self, request_id: str) -> None:
        """Forget a finished request (a server calls this once it has sent the result; `result()` is gone then)."""
        req = self.scheduler.requests.get(request_id)
        if req is not None and not req.finished:
            raise DSparkError(f"request {request_id!r} is still running: abort it first")
        self.scheduler.requests.pop(request_id, None)
        self._reported.pop(request_id, None)

    def stats(self) -> EngineStats:
        """A snapshot of the engine's load and speculation counters (for metrics endpoints)."""
        planner = self.planner
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting), self.blocks.num_used,
                           self.blocks.num_pages - 1, self.scheduler.step_index, self.blocks.hits,
                           self.scheduler.num_preemptions, getattr(planner, "rounds_planned", 0),
                           getattr(planner, "rows_planned", 0), getattr(planner, "tokens_planned", 0),
                           getattr(planner, "rounds_skipped", 0), self.synthetic_label)

    @property
    def synthetic_label(self) -> str | None:
        """`synthetic-acceptance:NAME (NOT lossless)` when acceptance is synthetic, else None (lossless)."""
        return self.synthetic.label if self.synthetic is not None else None

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        now = time.perf_counter()
        planner, last = self.scheduler.planner, self._last_step
        if last is not None and isinstance(planner, VerifyPlanner):  # what the previous step really cost
            planner.observe_step(last[0], last[1], last[2], now - last[3])
        out = self.scheduler.schedule()
        prepare = planner.prepare if isinstance(planner, VerifyPlanner) and out.seqs else None
        result = self.runner.execute(out, None if prepare is None else (lambda: prepare(len(out.seqs))))
        touched = self.scheduler.update(out, result)
        self._last_step = (len(out.seqs), out.num_tokens, out.draft, now) if out.seqs else None
        return [self._output(req) for req in touched]

    def _output(self, req: Request) -> RequestOutput:
        text = None
        tok = self.target.tokenizer
        if tok is not None and (self.detokenize or req.options.stop):
            text = tok.decode(req.output_ids)
            cut = min((i for i in (text.find(s) for s in req.options.stop) if i >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                self.scheduler.finish(req.req_id, "stop")
        done = self._reported.get(req.req_id, 0)
        self._reported[req.req_id] = len(req.output_ids)
        if req.finished:
            self._reported.pop(req.req_id, None)
        return RequestOutput(req.req_id, req.output_ids[done:], list(req.output_ids), req.finished, req.finish_reason,
                             len(req.prompt_ids), text)

    def request(self, request_id: str) -> Request:
        return self.scheduler.requests[request_id]

    # ------------------------------------------------------------------------------ batch API
    def generate(self, prompts: list[list[int]], max_new_tokens: int | list[int] = 64, temperature: float = 1.0,
                 top_p: float = 1.0, top_k: int = 0, seed: int | None = None, stop_token_ids: tuple[int, ...] = (),
                 ignore_eos: bool = False) -> list[GenerationResult]:
        """Generate for every prompt (request i gets seed `seed + i`); results in prompt order."""
        if not prompts:
            raise DSparkError("no prompts given")
        budgets = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(prompts)
        if len(budgets) != len(prompts):
            raise DSparkError(f"max_new_tokens has {len(budgets)} entries for {len(prompts)} prompts")
        base = seed if seed is not None else random.SystemRandom().randrange(2**62)
        ids = [self.add_request(p, SamplingOptions(int(n), temperature, top_p, top_k, base + i, tuple(stop_token_ids),
                                                   ignore_eos=ignore_eos))
               for i, (p, n) in enumerate(zip(prompts, budgets))]
        while any(not self.scheduler.requests[i].finished for i in ids):
            self.step()
        return [self.result(i) for i in ids]

    def result(self, request_id: str) -> GenerationResult:
        req = self.scheduler.requests[request_id]
        text = self.target.tokenizer.decode(req.output_ids) if self.target.tokenizer is not None else None
        return GenerationResult(list(req.output_ids), list(req.rounds), req.finish_reason or "", req.req_id, text,
                                req.num_cached, req.num_preemptions, self.synthetic_label)
