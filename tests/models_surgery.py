"""Weight surgery that gives random tiny models known, partly matching behaviour (tests only).

`make_bigram_target` zeroes every layer's output projections, so the target's next token depends only
on the current token: greedy decoding follows a fixed map f. `teach_dspark` / `teach_mtp` then give a
drafter a noisy copy of f, so drafts are accepted over varying lengths: exactly the paths a greedy
equivalence test must exercise (full acceptance, partial acceptance, immediate rejection).
"""

from __future__ import annotations

import torch


def make_bigram_target(target) -> torch.Tensor:
    """Zero o_proj/down_proj in every target layer; return f [V] (greedy next token of each token)."""
    with torch.no_grad():
        for layer in target.model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        all_ids = torch.arange(target.vocab_size).unsqueeze(1)
        logits = target.model(all_ids).logits[:, -1]
    return logits.argmax(-1)


def noisy_map(f: torch.Tensor, wrong: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(f.shape, generator=g) < wrong
    return torch.where(flip, torch.randint(0, f.numel(), f.shape, generator=g), f)


def teach_dspark(drafter, f: torch.Tensor, wrong: float = 0.25, seed: int = 0) -> None:
    """Markov head with rank V: bias(prev) = 30 · onehot(f̃(prev))."""
    v = f.numel()
    head = drafter.markov_head
    assert head.rank == v, "use markov_rank = vocab size"
    with torch.no_grad():
        head.markov_w1.weight.copy_(torch.eye(v))
        head.markov_w2.weight.copy_(30.0 * torch.nn.functional.one_hot(noisy_map(f, wrong, seed), v).float().T)
        if hasattr(head, "gate_proj"):
            head.gate_proj.weight.zero_()
            head.gate_proj.bias.fill_(20.0)  # gate ≈ 1


def teach_mtp(drafter, target, wrong_scale: float = 0.0) -> None:
    """Pass the token embedding straight to the LM head: the MTP then predicts f(x_{t+1})."""
    d = drafter.config.hidden_size
    with torch.no_grad():
        drafter.eh_proj.weight.zero_()
        drafter.eh_proj.weight[:, d:] = torch.eye(d)
        drafter.eh_proj.weight.add_(wrong_scale * torch.randn_like(drafter.eh_proj.weight))
        drafter.layers[0].self_attn.o_proj.weight.zero_()
        drafter.layers[0].mlp.down_proj.weight.zero_()
        drafter.norm.weight.copy_(target.model.model.norm.weight)
