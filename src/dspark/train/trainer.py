"""`Trainer`: one loop for every drafter method, on CPU, one GPU or many (torchrun: DDP or FSDP).

Per optimizer step: the step's samples come from `stream.step_indices` (a pure function of seed and
step), and each sample's anchors from a seed of its slot in the global batch (so the blocks trained on do
not depend on world size or micro-batching); features come from a target cache or are computed online
by the frozen target; the objective of the method gives weighted loss sums; each micro-batch's loss is
divided by the GLOBAL weight of supervised slots (summed over accumulation and ranks before any
forward), so the gradient equals that of one big batch. AdamW, linear warm-up then cosine to 0,
gradient clipping, bf16 autocast on CUDA with fp32 master weights. Checkpoints (DeepSpec format +
trainer state) are atomic and hold full weights and optimizer state also under FSDP (gathered to rank
0); a run started with `resume=True` continues the newest one exactly (bit-identical on CPU), after
`train.resume` has checked that target, data and settings match it. Each step's metrics line is
made durable before that step's checkpoint, so a resumed run never lacks one.
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
from dspark.formats.io import check_weight_files, load_weights
from dspark.targets import load_target
from dspark.train.checkpoints import save_checkpoint
from dspark.train.config import TrainConfig
from dspark.train.distributed import DistInfo, all_reduce_sum, barrier, init_distributed, shutdown
from dspark.train.losses import LossWeights
from dspark.train.objectives import OBJECTIVES
from dspark.train.resume import check_resume, data_fingerprint, open_run_dir, prepare_run_dir, restore_metrics
from dspark.train.stream import micro_seed, step_indices

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
    if cfg.method in ("dspark", "dflash", "mtp"):
        out["block_size"] = cfg.block_size
    if cfg.method == "dspark":
        out.update(markov_rank=cfg.markov_rank, markov_head_type=cfg.markov_head_type,
                   enable_confidence_head=cfg.enable_confidence_head,
                   confidence_head_with_markov=cfg.confidence_head_with_markov and cfg.markov_rank > 0)
    if cfg.method == "eagle3":
        out["ttt_length"] = cfg.block_size
    return out


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
        if Path(cfg.target).is_dir():
            check_weight_files(Path(cfg.target))
        self.target = load_target(cfg.target, dtype=cfg.target_dtype if cuda else "float32",
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
            self.drafter.load_state_dict(weights, strict=True)
        if self.dist.is_main:
            prepare_run_dir(self.out, fresh=state is None)
        self.module: nn.Module = ObjectiveModule(self.drafter, cfg.method, self.weights)
        self.fsdp = cfg.fsdp and self.dist.world > 1
        if self.dist.world > 1:
            self.module = self._wrap_parallel(self.module)
        params = [p for p in self.drafter.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
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
            samples, _ = load_samples(cfg.data, self.target.tokenizer, DataConfig(max_length=cfg.max_length))
            data = TokenDataset(samples)
            ids = [s.sample_id for s in samples]
        train_idx, eval_idx = split_by_id(ids, cfg.eval_fraction, cfg.seed)
        sub = torch.utils.data.Subset
        return sub(data, train_idx), sub(data, eval_idx[: cfg.max_eval_samples])

    def _wrap_parallel(self, module: nn.Module) -> nn.Module:
        if self.cfg.fsdp:
            from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            # device_id also on CPU: FSDP then runs on Gloo instead of refusing a machine with no accelerator
            wrapped = FSDP(module, use_orig_params=True, device_id=self.device)
            # Full optimizer state for checkpoints. On CPU, "offload" would be a no-op `.cpu()` that leaves every
            # state (exp_avg, exp_avg_sq) a view of one reused gather buffer, so all would hold the last one.
            FSDP.set_state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, FullStateDictConfig(),
                                     FullOptimStateDictConfig(offload_to_cpu=self.device.type != "cpu"))
            return wrapped
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                   find_unused_parameters=False)

    def _full_params(self) -> Any:
        """Context in which `self.drafter` holds its full parameters on every rank (collective under FSDP)."""
        if not self.fsdp:
            return _null()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(self.module, writeback=False)

    def _optimizer_state(self) -> dict[str, Any]:
        """The optimizer's full state (FSDP: gathered from the shards, keyed by parameter name; collective)."""
        if not self.fsdp:
            return self.optimizer.state_dict()
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.optim_state_dict(self.module, self.optimizer)

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
        optim = state["optimizer"]
        if self.fsdp:
            from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

            optim = FSDP.optim_state_dict_to_load(self.module, self.optimizer, optim)
        self.optimizer.load_state_dict(optim)
        self.scheduler.load_state_dict(state["scheduler"])
        for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
            group["lr"] = base * fn(self.scheduler.last_epoch)  # this run's schedule (max_steps may have changed)
        self.step = int(state["step"])
        if self.dist.is_main:
            restore_metrics(self.out / "metrics.jsonl", self.step, state.get("metrics"))
        log.info("resumed from %s at step %d", ckpt, self.step)

    # -- data -------------------------------------------------------------------------------------
    def _batch(self, items: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        """(dataset index, anchor seed) pairs -> a device batch with `anchor_seeds [B]` and features."""
        from dspark.train.data import collate_padded

        batch = collate_padded([self.train_set.dataset[i] for i, _ in items])
        batch["anchor_seeds"] = torch.tensor([seed for _, seed in items], dtype=torch.long)
        return self._with_features(batch)

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

    def _micro_batches(self, step: int) -> list[list[tuple[int, int]]]:
        """This rank's micro-batches of (dataset index, anchor seed). The seed follows the sample's slot in
        the global batch, not the rank or micro-batch, so any world size / micro_batch draws the same anchors."""
        cfg, rank, world = self.cfg, self.dist.rank, self.dist.world
        local = step_indices(len(self.train_set), cfg.seed, step, cfg.global_batch, rank, world)
        slots = range(rank, cfg.global_batch, world)  # the positions step_indices walked, within this step
        items = [(self.train_set.indices[i], micro_seed(cfg.seed, step, 0, slot)) for i, slot in zip(local, slots)]
        mb = cfg.micro_batch
        return [items[i: i + mb] for i in range(0, len(items), mb)]

    # -- loop -------------------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg, step = self.cfg, self.step
        micro = [(self._batch(idx), micro_seed(cfg.seed, step, self.dist.rank, m)) for m, idx in enumerate(self._micro_batches(step))]
        weight_fn = OBJECTIVES[cfg.method][1]
        total = sum(weight_fn(self.drafter, b, torch.Generator().manual_seed(s), self.weights) for b, s in micro)
        total = all_reduce_sum(torch.as_tensor(total, dtype=torch.float32, device=self.device).clone(), self.dist)
        scale = self.dist.world / total.clamp_min(1e-6)  # DDP averages over ranks: undo it, then normalise
        self.drafter.train()
        sums: dict[str, torch.Tensor] = {}
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.bf16 and self.device.type == "cuda")
        for i, (batch, seed) in enumerate(micro):
            sync = i == len(micro) - 1 or self.dist.world == 1
            ctx = self.module.no_sync() if (not sync and hasattr(self.module, "no_sync")) else _null()
            with ctx, autocast:
                out = self.module(batch, torch.Generator().manual_seed(seed))
                (out["loss"] * scale).backward()
            for k, v in out.items():
                sums[k] = sums.get(k, 0) + v.detach().float()
        if self.fsdp:  # each rank holds a shard of the gradients: FSDP's clip reduces the norm across ranks
            grad_norm = self.module.clip_grad_norm_(cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.drafter.parameters() if p.requires_grad], cfg.grad_clip)
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
        mine = list(range(self.dist.rank, n, self.dist.world))
        with self._full_params():
            for i in mine or [0]:  # a rank with no sample of its own adds zeros, so all ranks reduce the same keys
                batch = self._with_features(collate_padded([data[i]]))
                out = objective(self.drafter, batch, torch.Generator().manual_seed(i), self.weights)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0) + v.detach().float() * (1.0 if mine else 0.0)
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
        optim = self._optimizer_state()
        path = None
        with self._full_params():
            if self.dist.is_main:
                state = {"step": self.step, "optimizer": optim, "scheduler": self.scheduler.state_dict(),
                         "config": self.cfg.to_dict(), "fsdp": self.fsdp, "metrics": metrics, **self.identity}
                path = save_checkpoint(self.out, self.step, self.drafter, state, self.cfg.keep_checkpoints)
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
        while self.step < end:
            stats = self.train_step()
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
            with self._full_params():
                if self.dist.is_main:
                    save_drafter(self.drafter, self.out / "final", overwrite=True)
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


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl still has everything
        return None
    return SummaryWriter(str(path))
