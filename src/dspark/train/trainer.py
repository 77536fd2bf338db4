"""`Trainer`: one loop for every drafter method, on CPU, one GPU or many (torchrun: DDP or FSDP).

Per optimizer step: the step's samples come from `stream.step_indices` (a pure function of seed and
step), and each sample's anchors from a seed of its slot in the global batch (so the blocks trained on do
not depend on world size or micro-batching); features come from a target cache or are computed online
by the frozen target; the objective of the method gives weighted loss sums; each micro-batch's loss is
divided by the GLOBAL weight of supervised slots (summed over accumulation and ranks before any
forward), so the gradient equals that of one big batch. AdamW, linear warm-up then cosine to 0,
gradient clipping, bf16 autocast on CUDA with fp32 master weights. Parallelism is DDP or FSDP2
(`train.distributed`). Checkpoints (DeepSpec format + trainer state) are atomic and hold full fp32
weights (lean: the frozen embedding / LM head stay the target's) and optimizer state also under FSDP
(gathered to rank 0); a run started with `resume=True` continues the newest one exactly (bit-identical
on CPU), after `train.resume` has checked that target, data and settings match it. Each step's metrics
line is made durable before that step's checkpoint, so a resumed run never lacks one. `final/` is the
drafter in the training dtype (`save_dtype`) with the embedding / LM head, ready for a serving engine.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dspark.drafters import build_drafter, config_from_target
from dspark.errors import ConfigError
from dspark.formats import save_drafter
from dspark.formats.io import load_target_checked, load_weights
from dspark.train import distributed as par
from dspark.train.checkpoints import save_checkpoint
from dspark.train.config import TrainConfig
from dspark.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from dspark.train.losses import LossWeights
from dspark.train.objectives import OBJECTIVES
from dspark.train.resume import (
    FROZEN, check_resume, data_fingerprint, open_run_dir, prepare_run_dir, restore_metrics,
)
from dspark.train.stream import StepBatches, unbatched

log = logging.getLogger(__name__)


class ObjectiveModule(nn.Module):
    """Wraps drafter + objective so DDP/FSDP see one forward per micro-batch."""

    def __init__(self, drafter: nn.Module, method: str, weights: LossWeights) -> None:
        super().__init__()
        self.drafter = drafter
        self.objective = OBJECTIVES[method][0]
        self.weights = weights

    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.objective(self.drafter, batch, generator, self.weights)


def lr_lambda(total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def drafter_overrides(cfg: TrainConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"num_anchors": cfg.num_anchors}
    if cfg.num_draft_layers is not None:
        out["num_hidden_layers"] = cfg.num_draft_layers
    if cfg.target_layer_ids is not None:
        out["target_layer_ids"] = cfg.target_layer_ids
    if cfg.mask_token_id is not None:
        out["mask_token_id"] = cfg.mask_token_id
    if cfg.method in ("dspark", "dflash", "mtp"):
        out["block_size"] = cfg.block_size
    if cfg.method == "dspark":
        out.update(markov_rank=cfg.markov_rank, markov_head_type=cfg.markov_head_type,
                   enable_confidence_head=cfg.enable_confidence_head,
                   confidence_head_with_markov=cfg.confidence_head_with_markov and cfg.markov_rank > 0)
    if cfg.method == "eagle3":
        out.update(ttt_length=cfg.block_size, step_loss_decay=cfg.step_loss_decay)
    return out


def save_dtype(cfg: TrainConfig, device: torch.device) -> str:
    """The dtype `final/` is written in: `save_dtype`, or the training dtype for `auto`."""
    if cfg.save_dtype != "auto":
        return cfg.save_dtype
    return "bfloat16" if cfg.bf16 and device.type == "cuda" else "float32"


class Trainer:
    def __init__(self, cfg: TrainConfig, resume: bool = False) -> None:
        if not cfg.target:
            raise ConfigError("training needs `target` (a model directory or hub id)")
        if not cfg.cache and not cfg.data:
            raise ConfigError("training needs `data` (JSONL files, online mode) or `cache` (a target-cache directory)")
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.resume_from = open_run_dir(self.out, resume)  # before loading anything: a wrong directory fails now
        self.dist, self.device = init_distributed(cfg.device)
        torch.manual_seed(cfg.seed)
        online = not cfg.cache
        cuda = self.device.type == "cuda"
        self.target = load_target_checked(cfg.target, dtype=cfg.target_dtype if cuda else "float32",
                                          device=self.device if online else "cpu")
        self.drafter = build_drafter(config_from_target(self.target, cfg.method, **drafter_overrides(cfg)))
        self.drafter.init_from_target(self.target)
        self.drafter.to(self.device)
        self.layer_ids = self.drafter.config.target_layer_ids
        self.train_set, self.eval_set = self._datasets()
        if len(self.train_set) == 0:
            raise ConfigError("no training samples left after filtering and the eval split")
        self.identity = {"target_fingerprint": self.target.fingerprint(),
                         "data_fingerprint": data_fingerprint(cfg, self.train_set.dataset)}
        self.weights = LossWeights(cfg.loss_ce, cfg.loss_tv, cfg.loss_conf, cfg.slot_decay)
        state = None
        if self.resume_from is not None:  # weights before wrapping: FSDP shards the parameters in place
            state = torch.load(self.resume_from / "trainer_state.pt", map_location="cpu", weights_only=False)
            weights = load_weights(self.resume_from)
            check_resume(self.resume_from, state, cfg, self.identity, weights, self.drafter.state_dict())
            self.drafter.load_state_dict(weights, strict=not FROZEN.isdisjoint(weights))  # lean: frozen from the target
        if self.dist.is_main:
            prepare_run_dir(self.out, fresh=state is None)
        self.module: nn.Module = ObjectiveModule(self.drafter, cfg.method, self.weights)
        self.fsdp = cfg.fsdp and self.dist.world > 1
        if self.fsdp:
            self.module = par.shard_fsdp(self.module, self.drafter, self.device, self.dist.world)
        elif self.dist.world > 1:
            self.module = par.wrap_ddp(self.module, self.device)
        if cfg.torch_compile:
            self.module.compile(dynamic=True)  # in place: parameter names (checkpoints) stay the same
        self.params = [p for p in self.drafter.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        self.batches = StepBatches(self.train_set, cfg.seed, cfg.global_batch, cfg.micro_batch, self.dist.rank,
                                   self.dist.world)
        steps_per_epoch = max(1, len(self.train_set) // cfg.global_batch)
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.total_steps, cfg.warmup_ratio))
        self.step = 0
        self._resume(state)

    # -- setup ------------------------------------------------------------------------------------
    def _datasets(self):
        from dspark.train.data import DataConfig, TokenDataset, load_samples, split_by_id

        cfg = self.cfg
        if cfg.cache:
            from dspark.train.cache import open_cache

            data = open_cache(cfg.cache, self.target, self.layer_ids)
            ids = list(data.sample_ids)
        else:
            data_config = DataConfig(max_length=cfg.max_length, min_loss_tokens=cfg.min_loss_tokens,
                                     chat_template_kwargs=cfg.chat_template_kwargs)
            samples, _ = load_samples(cfg.data, self.target.tokenizer, data_config)
            data = TokenDataset(samples)
            ids = [s.sample_id for s in samples]
        train_idx, eval_idx = split_by_id(ids, cfg.eval_fraction, cfg.seed)
        sub = torch.utils.data.Subset
        return sub(data, train_idx), sub(data, eval_idx[: cfg.max_eval_samples])

    def _drafter_state(self) -> dict[str, torch.Tensor]:
        """The drafter's full state dict (FSDP: gathered, on rank 0 only; collective)."""
        if not self.fsdp:
            return self.drafter.state_dict()
        full = par.full_model_state(self.module, True)
        return {k.removeprefix("drafter."): v for k, v in full.items() if k.startswith("drafter.")}

    def _resume(self, state: dict[str, Any] | None) -> None:
        ckpt = self.resume_from
        if ckpt is None or state is None:
            return
        if int(state["step"]) > self.total_steps:
            raise ConfigError(f"{ckpt} is at step {state['step']}, past this run's {self.total_steps} steps "
                              "(max_steps / epochs); raise them to continue it")
        if bool(state.get("fsdp", False)) != self.fsdp:
            raise ConfigError(f"{ckpt} holds {'FSDP' if state.get('fsdp') else 'plain'} optimizer state; resume it "
                              f"with fsdp={str(bool(state.get('fsdp'))).lower()} under the same launcher")
        par.load_optimizer_state(self.module, self.optimizer, state["optimizer"], self.fsdp)
        self.scheduler.load_state_dict(state["scheduler"])
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(self.scheduler.last_epoch)  # this run's schedule (max_steps may have changed)
        self.step = int(state["step"])
        if self.dist.is_main:
            restore_metrics(self.out / "metrics.jsonl", self.step, state.get("metrics"))
        log.info("resumed from %s at step %d", ckpt, self.step)

    # -- data -------------------------------------------------------------------------------------
    def _with_features(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move to the device; online mode: the frozen target computes the features now, rounded like the cache."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if "context_features" not in batch:
            from dspark.targets.adapter import resolve_dtype

            feats = self.target.features(batch["input_ids"], self.layer_ids, attention_mask=batch["attention_mask"])
            dtype = resolve_dtype(self.cfg.feature_dtype)
            batch["context_features"] = feats.context_features.to(dtype).float()
            batch["last_hidden"] = feats.last_hidden.to(dtype).float()
        return batch

    def _step_batches(self, end: int) -> Any:
        """The CPU micro-batches of steps self.step .. end-1, prepared by `num_workers` processes when set."""
        steps = range(self.step, end)
        if self.cfg.num_workers == 0:
            return (self.batches[s] for s in steps)
        return torch.utils.data.DataLoader(self.batches, batch_size=None, sampler=steps, collate_fn=unbatched,
                                           num_workers=self.cfg.num_workers, prefetch_factor=2)

    # -- loop -------------------------------------------------------------------------------------
    def train_step(self, step_batches: list[tuple[dict[str, torch.Tensor], int]] | None = None) -> dict[str, float]:
        """One optimizer step on `step_batches` (default: this step's, `StepBatches[self.step]`)."""
        cfg = self.cfg
        micro = [(self._with_features(b), seed) for b, seed in (step_batches or self.batches[self.step])]
        weight_fn = OBJECTIVES[cfg.method][1]
        total = sum(weight_fn(self.drafter, b, torch.Generator().manual_seed(s), self.weights) for b, s in micro)
        total = all_reduce_sum(torch.as_tensor(total, dtype=torch.float32, device=self.device).clone(), self.dist)
        scale = self.dist.world / total.clamp_min(1e-6)  # DDP averages over ranks: undo it, then normalise
        self.drafter.train()
        sums: dict[str, torch.Tensor] = {}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and self.device.type == "cuda")
        for i, (batch, seed) in enumerate(micro):
            sync = i == len(micro) - 1 or self.dist.world == 1
            with par.gradient_sync(self.module, sync), autocast:
                out = self.module(batch, torch.Generator().manual_seed(seed))
                (out["loss"] * scale).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
        grad_norm = par.clip_grad_norm(self.params, cfg.grad_clip)  # FSDP: the norm over every rank's shards
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        loss = all_reduce_sum(sums["loss"].clone(), self.dist) / total
        return {"loss": float(loss), "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Teacher-forced acceptance on the held-out split: per slot conditional/unconditional, τ estimate."""
        self.drafter.eval()
        sums: dict[str, torch.Tensor] = {}
        from dspark.train.data import collate_padded

        objective = OBJECTIVES[self.cfg.method][0]
        data = self.eval_set if len(self.eval_set) else self.train_set
        n = min(len(data), self.cfg.max_eval_samples)
        rounds = max(1, math.ceil(n / self.dist.world))  # the same number of forwards on every rank (FSDP gathers)
        for r in range(rounds):
            i = r * self.dist.world + self.dist.rank
            mine = i < n  # a rank past the end runs sample 0 and adds zeros, so all ranks reduce the same keys
            batch = self._with_features(collate_padded([data[i if mine else 0]]))
            gen = torch.Generator().manual_seed(i if mine else 0)
            # FSDP: through the wrapper, which gathers the shards; else the plain drafter (no DDP buffer syncs)
            out = self.module(batch, gen) if self.fsdp else objective(self.drafter, batch, gen, self.weights)
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach().float() * (1.0 if mine else 0.0)
        if self.fsdp:  # the root keeps its gathered weights after a forward; without a backward, free them here
            self.module.reshard()
        for k in sorted(sums):
            sums[k] = all_reduce_sum(torch.as_tensor(sums[k], device=self.device).clone(), self.dist)
        cond = (sums["accept"] / sums["count"].clamp_min(1)).tolist()
        uncond = [math.prod(cond[: j + 1]) for j in range(len(cond))]
        return {"eval_loss": float(sums["loss"] / sums["weight"].clamp_min(1e-6)), "accept_conditional": cond,
                "accept_unconditional": uncond, "tau_estimate": 1.0 + sum(uncond)}

    def save(self, metrics: dict[str, Any] | None = None) -> Path | None:
        """Checkpoint on rank 0 (every rank must call: under FSDP gathering the full state is collective).

        `metrics` is the step's logged metrics line, kept in the checkpoint so a resume can restore it."""
        barrier(self.dist)
        optim = par.full_optimizer_state(self.module, self.optimizer, self.fsdp)
        weights = self._drafter_state()
        path = None
        if self.dist.is_main:
            state = {"step": self.step, "optimizer": optim, "scheduler": self.scheduler.state_dict(),
                     "config": self.cfg.to_dict(), "fsdp": self.fsdp, "metrics": metrics, **self.identity}
            path = save_checkpoint(self.out, self.step, self.drafter, state, self.cfg.keep_checkpoints, weights)
        barrier(self.dist)
        return path

    def fit(self, stop_at: int | None = None) -> dict[str, Any]:
        """Train to `total_steps` (or stop early at `stop_at`, as a killed run would, keeping the schedule)."""
        from tqdm import tqdm

        cfg = self.cfg
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        writer = _tensorboard(self.out / "tb") if cfg.tensorboard and self.dist.is_main else None
        metrics_file = (self.out / "metrics.jsonl").open("a") if self.dist.is_main else None
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.dist.is_main, desc=f"train {cfg.method}")
        last: dict[str, Any] = {}
        end = self.total_steps if stop_at is None else min(stop_at, self.total_steps)
        for step_batches in self._step_batches(end):
            stats = self.train_step(step_batches)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.4f}")
            record: dict[str, Any] = {"step": self.step, **stats}
            if self.step % cfg.eval_every == 0 or self.step == self.total_steps:
                record.update(self.evaluate())
            logged = self.step % cfg.log_every == 0 or "tau_estimate" in record
            if self.dist.is_main and logged:
                _log(record, metrics_file, writer)  # durable before the checkpoint of this step
            if self.step % cfg.save_every == 0 or self.step == self.total_steps:
                self.save(record if logged else None)
            last = record
        bar.close()
        if self.step == self.total_steps:
            weights = self._drafter_state()
            if self.dist.is_main:
                save_drafter(self.drafter, self.out / "final", overwrite=True, state=weights,
                             dtype=save_dtype(self.cfg, self.device), flag="output_dir")
        if self.dist.is_main:
            metrics_file.close()
            if writer is not None:
                writer.close()
        barrier(self.dist)
        shutdown(self.dist)
        return last


def _log(record: dict[str, Any], metrics_file: Any, writer: Any) -> None:
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()
    os.fsync(metrics_file.fileno())
    if writer is not None:
        for k, v in record.items():
            if isinstance(v, float):
                writer.add_scalar(k, v, record["step"])


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl still has everything
        return None
    return SummaryWriter(str(path))
