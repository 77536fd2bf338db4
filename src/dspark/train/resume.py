"""A training run's output directory, and explicit, checked resume (`dspark train --resume`).

`open_run_dir` decides before anything is loaded: a new or empty `output_dir` (or one holding only an
earlier run that never saved a checkpoint) starts a run; one holding a checkpoint is continued only when
`resume=True`, else refused with a pointer to `--resume`; anything that is not a training run of ours is
refused (`dspark.output_dir`). `prepare_run_dir` then claims it and removes what killed runs left behind.

`check_resume` compares the newest checkpoint with the run about to continue it: the target (by
`TargetModel.fingerprint()`), the training data (by content, `data_fingerprint`), the drafter's parameter
names and shapes, and every `TrainConfig` field outside `MAY_CHANGE`. Any difference is refused with one
line naming all of them. Fields in `MAY_CHANGE` (the step budget, logging and checkpoint cadence, the
hardware) take their new values: `train_config.json` always records the run as it continues.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dspark.errors import ConfigError
from dspark.formats import CHECKPOINT
from dspark.output_dir import OutputKind, check_output_dir, claim_output_dir
from dspark.train.checkpoints import clean_checkpoint_leftovers, latest_checkpoint
from dspark.train.config import TrainConfig

log = logging.getLogger(__name__)

TRAIN_RUN = OutputKind("training run", frozenset({"train_config.json", "metrics.jsonl", "tb", "checkpoints", "final"}))

FROZEN = frozenset({"embed_tokens.weight", "lm_head.weight"})  # the target's, absent from lean checkpoints

# May differ between a checkpoint and the run resuming it. `target`, `data` and `cache` are paths: what
# they hold is compared by fingerprint instead, so moved files still resume. Everything else must match.
MAY_CHANGE = frozenset({
    "output_dir", "target", "data", "cache", "epochs", "max_steps", "micro_batch", "device", "bf16", "target_dtype",
    "log_every", "eval_every", "save_every", "keep_checkpoints", "max_eval_samples", "tensorboard",
    "num_workers", "torch_compile", "save_dtype",
})


def open_run_dir(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (None: a new run), or `ConfigError` when `out` may not be used."""
    check_output_dir(out, TRAIN_RUN, overwrite=True, flag="output_dir")
    check_output_dir(out / "final", CHECKPOINT, overwrite=True, flag="output_dir")
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        raise ConfigError(f"output_dir {str(out)!r} holds a checkpoint of an earlier run ({ckpt.name}); pass --resume "
                          "to continue it (its target, data and settings must match) or choose a new output_dir")
    if ckpt is None and (out / "final").exists():
        raise ConfigError(f"output_dir {str(out)!r} holds a trained drafter (final/) and no checkpoint to resume "
                          "from; choose a new output_dir")
    if ckpt is None and resume:
        log.info("--resume: %s holds no checkpoint yet, starting the run", out)
    return ckpt


def prepare_run_dir(out: Path, fresh: bool) -> None:
    """Claim `out` for this run (main rank): remove killed checkpoint writes; a new run forgets old metrics."""
    claim_output_dir(out, TRAIN_RUN, overwrite=True, flag="output_dir")
    for path in clean_checkpoint_leftovers(out):
        log.warning("removed %s, left by a checkpoint write that was killed", path)
    if fresh:
        (out / "metrics.jsonl").unlink(missing_ok=True)  # lines of a run that never saved a checkpoint


def data_fingerprint(cfg: TrainConfig, dataset: Any) -> str:
    """sha256 of what is trained on: the cache's manifest (shard hashes included), or every tokenized sample."""
    h = hashlib.sha256()
    if cfg.cache:
        from dspark.train.cache_format import MANIFEST_NAME

        h.update((Path(cfg.cache) / MANIFEST_NAME).read_bytes())
        return "cache:" + h.hexdigest()
    for sample in dataset.samples:
        h.update(f"{sample.sample_id}\0{sample.num_tokens}\0".encode())
        h.update(sample.input_ids.tobytes())
        h.update(sample.loss_mask.tobytes())
    return "samples:" + h.hexdigest()


def _shape_differences(saved: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> list[str]:
    diffs = [f"{k}: {tuple(saved[k].shape)} in the checkpoint, {tuple(v.shape)} now"
             for k, v in model.items() if k in saved and saved[k].shape != v.shape]
    missing, extra = sorted(set(model) - set(saved) - FROZEN), sorted(set(saved) - set(model))
    if missing:
        diffs.append(f"{len(missing)} tensor(s) the checkpoint lacks (e.g. {missing[0]})")
    if extra:
        diffs.append(f"{len(extra)} tensor(s) only in the checkpoint (e.g. {extra[0]})")
    return diffs


def check_resume(ckpt: Path, state: dict[str, Any], cfg: TrainConfig, identity: dict[str, str],
                 weights: dict[str, torch.Tensor], model_state: dict[str, torch.Tensor]) -> None:
    """Refuse (`ConfigError`, naming every difference) a checkpoint this run cannot continue."""
    saved = state.get("config", {})
    defaults = asdict(TrainConfig())  # keys an older checkpoint lacks had their default value
    now = cfg.to_dict()
    diffs = [f"{key}: {saved.get(key, defaults[key])!r} in the checkpoint, {value!r} now"
             for key, value in now.items() if key not in MAY_CHANGE and saved.get(key, defaults[key]) != value]
    for key, value in identity.items():
        if key == "target_fingerprint" and key in state and state[key] != value:
            diffs.append(f"target: the checkpoint was trained for {saved.get('target', '?')!r} (fingerprint "
                         f"{str(state[key])[:12]}…), this run's target is {cfg.target!r} ({value[:12]}…)")
        elif key in state and state[key] != value:
            diffs.append(f"{key.replace('_', ' ')}: {str(state[key])[:20]}… in the checkpoint, {value[:20]}… now")
        elif key not in state:  # written before fingerprints: the paths are all there is to compare
            path_key = "target" if key == "target_fingerprint" else ("cache" if cfg.cache else "data")
            if saved.get(path_key, defaults[path_key]) != now[path_key]:
                diffs.append(f"{path_key}: {saved.get(path_key)!r} in the checkpoint, {now[path_key]!r} now")
    shapes = _shape_differences(weights, model_state)
    if shapes:
        diffs.append("drafter shape: " + "; ".join(shapes[:3]))
    if diffs:
        raise ConfigError(f"cannot resume from {ckpt}, which differs from this run: {' | '.join(diffs)}; use the "
                          "checkpoint's target, data and settings, or a new output_dir")


def restore_metrics(path: Path, step: int, saved: dict[str, Any] | None) -> None:
    """Make metrics.jsonl end at `step`: drop what a killed run logged after its checkpoint (and a torn last
    line), and put back the checkpoint's own line (`saved`) if it is missing."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            records.append(record)
    if saved is not None and all(r.get("step") != saved.get("step") for r in records):
        records.append(saved)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
