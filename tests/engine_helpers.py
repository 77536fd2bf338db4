"""Shared pieces of the engine tests: a tiny target whose attention matters but whose greedy path is
mostly predictable (so drafts are accepted over varying lengths), drafters taught its bigram map, and
plain `transformers` greedy decoding as the oracle."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import save_tiny_target, tiny_drafter
from dspark import load_target
from models_surgery import make_bigram_target, teach_dspark, teach_mtp

DRAFTERS = [("dspark", {"markov_head_type": "vanilla"}), ("dspark", {"markov_head_type": "gated"}),
            ("dspark", {"markov_head_type": "rnn"}), ("dflash", {}), ("eagle3", {}), ("mtp", {})]


def weak_bigram_target(directory: Path, arch: str = "qwen3", seed: int = 3):
    """Greedy decoding follows a bigram map f about 70% of the time; attention decides the rest."""
    target = load_target(save_tiny_target(directory, arch=arch, seed=seed))
    saved = [layer.self_attn.o_proj.weight.clone() for layer in target.model.model.layers]
    f = make_bigram_target(target)
    with torch.no_grad():
        for layer, w in zip(target.model.model.layers, saved):
            layer.self_attn.o_proj.weight.copy_(0.5 * w)
    return target, f


def taught_drafter(target, f: torch.Tensor, method: str, kw: dict):
    if method == "dspark":
        d = tiny_drafter(target, "dspark", markov_rank=target.vocab_size, block_size=5, **kw)
        if kw.get("markov_head_type") != "rnn":
            teach_dspark(d, f, wrong=0.25)
        return d
    d = tiny_drafter(target, method, **({"block_size": 5} if method == "dflash" else {}))
    if method == "mtp":
        teach_mtp(d, target, wrong_scale=0.3)
    return d


def hf_greedy(target, prompt: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
    """Plain transformers greedy decoding (the oracle), stopping at `eos` if given."""
    with torch.no_grad():
        out = target.model.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens, do_sample=False,
                                    eos_token_id=eos, pad_token_id=0 if eos is None else eos)
    ids = out[0, len(prompt):].tolist()
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos) + 1]
    return ids


def run_one(llm, prompt: list[int], opts) -> str:
    """Add one request and step the engine until everything has finished; returns its id."""
    rid = llm.add_request(prompt, opts)
    while llm.has_unfinished():
        llm.step()
    return rid


def run_staggered(llm, prompts: list[list[int]], options: list) -> list[tuple]:
    """One new request per step (prefill chunks beside decoding rows), then to the end: per request its tokens,
    per-round (verified, accepted, drafts) and per-round confidences."""
    ids = []
    for prompt, opts in zip(prompts, options):
        ids.append(llm.add_request(prompt, opts))
        llm.step()
    while llm.has_unfinished():
        llm.step()
    out = []
    for rid in ids:
        res = llm.result(rid)
        out.append((res.token_ids, [(r.verified, r.accepted, r.draft_ids) for r in res.rounds],
                    [r.confidences or [] for r in res.rounds]))
    return out
