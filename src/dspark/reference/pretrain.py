"""Pretraining of a reference target: a Qwen3-architecture causal LM on the packed corpus.

Third step of the reference-target flow (corpus → tokenizer → pretrain → drafters). A plain torch
loop: random windows of the packed train stream, bf16 autocast on CUDA, AdamW with linear warmup and
a cosine decay whose progress is the larger of the step fraction and the wall-clock fraction (so a
time budget ends the run with a decayed learning rate), periodic validation loss. The result is a
standard Hugging Face model directory (`config.json`, `model.safetensors`, `generation_config.json`),
the tokenizer files beside it, the corpus's provenance (`corpus_provenance.json`), and
`training_summary.json` (preset, parameter count, tokens seen, validation loss, perplexity and bits
per byte, loss history, versions, device). The directory is
written under a temporary name and renamed at the end, so a crashed run never leaves a half model; an
existing output is checked before training and never deleted: only a target dspark wrote is replaced,
and only with `overwrite` (`dspark.output_dir`).

Run: `dspark pretrain --preset tiny --corpus runs/corpus --tokenizer runs/tokenizer --out runs/tiny`
or the whole flow with `recipes/reference_target.sh tiny`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from dspark.errors import ConfigError, DataError
from dspark.formats.io import apply_umask
from dspark.output_dir import OutputKind, check_output_dir, write_output_dir
from dspark.reference.corpus import PROVENANCE_FILE, read_provenance
from dspark.reference.packing import eval_windows, load_split, random_windows
from dspark.reference.presets import TargetPreset, qwen3_config
from dspark.reference.tokenizer import BOS, EOS, IM_END, PAD, TOKENIZER_OUTPUT, copy_tokenizer, load_tokenizer

logger = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
CORPUS_PROVENANCE_FILE = "corpus_provenance.json"
TARGET_OUTPUT = OutputKind("reference target", frozenset({
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", SUMMARY_FILE,
    CORPUS_PROVENANCE_FILE, *TOKENIZER_OUTPUT.entries}))


def resolve_device(device: str) -> torch.device:
    """`auto` → cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return torch.device(device)


def learning_rate(preset: TargetPreset, step: int, progress: float, warmup_end_progress: float) -> float:
    """Linear warmup over `warmup_steps`, then cosine from lr to lr·min_lr_ratio as progress → 1."""
    if step < preset.warmup_steps:
        return preset.lr * (step + 1) / preset.warmup_steps
    span = max(1e-9, 1.0 - warmup_end_progress)
    fraction = min(1.0, max(0.0, (progress - warmup_end_progress) / span))
    cosine = 0.5 * (1.0 + math.cos(math.pi * fraction))
    return preset.lr * (preset.min_lr_ratio + (1.0 - preset.min_lr_ratio) * cosine)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on norms)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _loss(model: torch.nn.Module, windows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Mean next-token cross entropy of a [B, T+1] batch of windows."""
    with _autocast(device):
        logits = model(input_ids=windows[:, :-1], use_cache=False).logits  # [B, T, V]
    return F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten())


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean cross entropy (nats per token) over all evaluation windows."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        chunk = windows[start : start + batch_size]
        total += _loss(model, chunk, device).item() * chunk.shape[0]
        count += chunk.shape[0]
    model.train(was_training)
    return total / count


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, non-embedding parameters); tied weights are counted once."""
    unique = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in unique.values())
    embedding = model.get_input_embeddings().weight.numel()
    return total, total - embedding


def pretrain(
    preset: TargetPreset,
    corpus_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    device: str = "auto",
    seed: int = 0,
    micro_batch_size: int = 0,
    cache_dir: Path | None = None,
    compile_model: bool = False,
    save_dtype: str = "bfloat16",
    log_every: int = 50,
    command: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Train a reference target from scratch and save it to out_dir; returns the training summary."""
    check_output_dir(out_dir, TARGET_OUTPUT, overwrite, flag="--output-dir")  # before any work: never train for a refused output
    from transformers import Qwen3ForCausalLM

    if save_dtype not in ("bfloat16", "float16", "float32"):
        raise ConfigError(f"save_dtype must be bfloat16, float16 or float32, got {save_dtype!r}")
    dev = resolve_device(device)
    micro = micro_batch_size or preset.batch_size
    if preset.batch_size % micro:
        raise ConfigError(f"batch_size {preset.batch_size} is not a multiple of micro_batch_size {micro}")
    torch.manual_seed(seed)
    started = time.time()
    tokenizer = load_tokenizer(tokenizer_dir)
    train = load_split(corpus_dir, tokenizer_dir, "train", cache_dir=cache_dir)
    valid = load_split(corpus_dir, tokenizer_dir, "validation", cache_dir=cache_dir)
    data_s = time.time() - started
    train_tokens = torch.from_numpy(train.tokens.astype("int32")).to(dev)
    valid_tokens = torch.from_numpy(valid.tokens.astype("int32")).to(dev)
    eval_small = eval_windows(valid_tokens, preset.seq_len, preset.eval_tokens)
    eval_full = eval_windows(valid_tokens, preset.seq_len, 4 * preset.eval_tokens)

    ids = {name: tokenizer.token_to_id(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD), ("im_end", IM_END))}
    config = qwen3_config(preset, tokenizer.get_vocab_size(), ids["bos"], ids["eos"], ids["pad"])
    model = Qwen3ForCausalLM(config).to(dev)
    model.train()
    num_params, num_non_embedding = count_parameters(model)
    logger.info("model: %.2fM parameters (%.2fM non-embedding) on %s", num_params / 1e6, num_non_embedding / 1e6, dev)
    optimizer = torch.optim.AdamW(
        _param_groups(model, preset.weight_decay), lr=preset.lr, betas=(0.9, 0.95), eps=1e-8,
        fused=dev.type == "cuda",
    )  # fmt: skip
    step_model = torch.compile(model) if compile_model else model
    generator = torch.Generator(device=dev).manual_seed(seed)

    initial_val_loss = evaluate(model, eval_small, micro, dev)
    history: list[dict] = []
    warmup_end_progress = preset.warmup_steps / preset.steps
    loop_start = time.time()
    smoothed, step, progress, lr = float("nan"), 0, 0.0, 0.0
    while step < preset.steps:
        elapsed = time.time() - loop_start
        progress = step / preset.steps
        if preset.time_budget_s > 0:
            progress = max(progress, elapsed / preset.time_budget_s)
        if progress >= 1.0:
            break
        if step == preset.warmup_steps:
            warmup_end_progress = progress
        lr = learning_rate(preset, step, progress, warmup_end_progress)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = random_windows(train_tokens, preset.batch_size, preset.seq_len, generator)
        step_loss = torch.zeros((), device=dev)
        for chunk in batch.split(micro):
            loss = _loss(step_model, chunk, dev) * (chunk.shape[0] / preset.batch_size)
            loss.backward()
            step_loss += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), preset.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % log_every == 0 or step == 1 or step % preset.eval_every == 0:
            value = step_loss.item()
            smoothed = value if math.isnan(smoothed) else 0.9 * smoothed + 0.1 * value
            record = {"step": step, "train_loss": round(value, 4), "lr": lr, "elapsed_s": round(time.time() - loop_start, 1)}
            if step % preset.eval_every == 0:
                record["val_loss"] = round(evaluate(model, eval_small, micro, dev), 4)
            history.append(record)
            logger.info("step %s", record)
    train_s = time.time() - loop_start
    val_loss = evaluate(model, eval_full, micro, dev)
    eval_tokens = int(eval_full.shape[0] * preset.seq_len)
    # bits per byte: tokens in the evaluated windows ≈ their share of the validation bytes
    eval_bytes = valid.num_bytes * eval_tokens / max(1, valid.tokens.size)
    summary = {
        "kind": "dspark-reference-target",
        "preset": asdict(preset),
        "num_parameters": num_params,
        "num_parameters_non_embedding": num_non_embedding,
        "vocab_size": tokenizer.get_vocab_size(),
        "steps": step,
        "stopped_by": "time_budget" if step < preset.steps else "steps",
        "tokens_trained": step * preset.batch_size * preset.seq_len,
        "train_stream_tokens": int(train.tokens.size),
        "train_documents": train.num_documents,
        "epochs": round(step * preset.batch_size * preset.seq_len / max(1, train.tokens.size), 3),
        "initial_val_loss": round(initial_val_loss, 4),
        "final_train_loss": round(smoothed, 4),
        "val_loss": round(val_loss, 4),
        "val_perplexity": round(math.exp(val_loss), 3),
        "val_bits_per_byte": round(val_loss * eval_tokens / (eval_bytes * math.log(2)), 4),
        "val_tokens_evaluated": eval_tokens,
        "time_s": {"data": round(data_s, 1), "train": round(train_s, 1), "total": round(time.time() - started, 1)},
        "tokens_per_s": round(step * preset.batch_size * preset.seq_len / max(train_s, 1e-9)),
        "history": history,
        "seed": seed,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": _transformers_version(), "python": platform.python_version()},
        "corpus": _corpus_summary(corpus_dir),
        "command": command,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    save_target(model, tokenizer_dir, Path(out_dir), summary, save_dtype, ids, Path(corpus_dir) / PROVENANCE_FILE,
                overwrite=overwrite)
    logger.info("val loss %.4f, perplexity %.2f, saved to %s", val_loss, math.exp(val_loss), out_dir)
    return summary


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _corpus_summary(corpus_dir: Path) -> dict:
    try:
        provenance = read_provenance(corpus_dir)
    except (DataError, OSError, ValueError):  # provenance is informative only
        return {"path": str(corpus_dir)}
    return {"roots": provenance.get("roots"), "python": provenance.get("python"), "stats": provenance.get("stats")}


def save_target(
    model: torch.nn.Module, tokenizer_dir: Path, out_dir: Path, summary: dict, save_dtype: str, ids: dict[str, int],
    corpus_provenance: Path | None = None, overwrite: bool = False,
) -> None:
    """Write model + tokenizer + summary (+ the corpus provenance) under a temporary name, then install it."""
    model = model.to(device="cpu", dtype=getattr(torch, save_dtype))
    model.generation_config.bos_token_id = ids["bos"]
    model.generation_config.eos_token_id = [ids["eos"], ids["im_end"]]
    model.generation_config.pad_token_id = ids["pad"]

    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        copy_tokenizer(tokenizer_dir, tmp)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        if corpus_provenance is not None and corpus_provenance.is_file():  # what the weights were trained on
            shutil.copy2(corpus_provenance, tmp / CORPUS_PROVENANCE_FILE)
        apply_umask(tmp)  # safetensors writes 0600; a target is read by other users' servers too

    write_output_dir(out_dir, TARGET_OUTPUT, fill, overwrite=overwrite, flag="--output-dir")
