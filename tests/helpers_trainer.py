"""A learnable tiny target (bigram, sharp) and data sampled from it, for trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from conftest import save_tiny_target
from dspark import SpeculativeDecoder, load_target
from models_surgery import make_bigram_target


def learnable_target_and_data(root: Path, num_samples: int = 48, length: int = 40) -> tuple[Path, Path]:
    tdir = save_tiny_target(root / "target", vocab=64, hidden=32, layers=4, seed=3, init_range=0.3)
    target = load_target(tdir)
    make_bigram_target(target)
    target.model.save_pretrained(tdir)
    prompts = [torch.randint(0, 64, (6,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(num_samples)]
    results = SpeculativeDecoder(load_target(tdir)).generate(prompts, length, seed=0, speculative=False)
    data = root / "data.jsonl"
    with data.open("w") as f:
        for i, (p, r) in enumerate(zip(prompts, results)):
            f.write(json.dumps({"id": i, "input_ids": p + r.token_ids,
                                "loss_mask": [0] * len(p) + [1] * len(r.token_ids)}) + "\n")
    return tdir, data


def small_config(tdir: Path, data: Path, out: Path, method: str = "dspark", **kw):
    from dspark.train.config import TrainConfig

    base = dict(target=str(tdir), data=[str(data)], output_dir=str(out), method=method, num_draft_layers=1,
                block_size=4, num_anchors=16, markov_rank=16, global_batch=8, micro_batch=4, max_steps=20, lr=3e-3,
                eval_every=1000, save_every=1000, eval_fraction=0.1, tensorboard=False, device="cpu", log_every=1)
    base.update(kw)
    return TrainConfig(**base)
