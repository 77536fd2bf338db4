"""DSpark's small heads: the sequential (Markov / gated / RNN) head and the confidence head.

Sequential head (SPEC §2.2): a bias on slot k's logits that depends on the token placed before slot k
(the anchor for slot 0). During drafting that token is the one just SAMPLED, so each slot's draft
distribution is an exact softmax conditioned on the prefix. During training and `score_block` it is
the given (teacher-forced) token. All three variants share `markov_w1` (a V×r embedding of the
previous token) and `markov_w2` (r -> V); the confidence head reuses `markov_w1` as its Markov feature.

`step` advances one slot (inference); `block_bias` runs a whole block under teacher forcing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

HeadState = torch.Tensor | None  # the RNN's recurrent state [B, r]; None for memoryless heads
Projection = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, weight) -> x @ weight.T


class MarkovHead(nn.Module):
    """Vanilla low-rank bigram: B(x_prev) = W2 · W1[x_prev]. Independent of the backbone hidden."""

    def __init__(self, vocab_size: int, rank: int, hidden_size: int) -> None:
        super().__init__()
        self.rank = rank
        self.markov_w1 = nn.Embedding(vocab_size, rank)
        self.markov_w2 = nn.Linear(rank, vocab_size, bias=False)

    def prev_embedding(self, prev_ids: torch.Tensor) -> torch.Tensor:
        return self.markov_w1(prev_ids.long())

    def initial_state(self, batch: int, ref: torch.Tensor) -> HeadState:
        return None

    def latent(self, e: torch.Tensor, hidden: torch.Tensor, state: HeadState) -> tuple[torch.Tensor, HeadState]:
        """(prev embedding [..., r], slot hidden [..., d], state) -> (latent [..., r], next state)."""
        return e, state

    def step(self, prev_ids: torch.Tensor, hidden: torch.Tensor, state: HeadState, project: Projection | None = None
             ) -> tuple[torch.Tensor, HeadState]:
        """One slot: prev_ids [B], hidden [B, d] -> bias [B, V], next state (`project(z, W2)`: the GEMM to use)."""
        z, state = self.latent(self.prev_embedding(prev_ids), hidden, state)
        return (self.markov_w2(z) if project is None else project(z, self.markov_w2.weight)), state

    def block_bias(self, prev_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Teacher-forced bias for a block: prev_ids [..., γ], hidden [..., γ, d] -> [..., γ, V]."""
        z, _ = self.latent(self.prev_embedding(prev_ids), hidden, None)
        return self.markov_w2(z)


class GatedMarkovHead(MarkovHead):
    """g = σ(G[h ; e] + b), B = W2 (g ⊙ e)."""

    def __init__(self, vocab_size: int, rank: int, hidden_size: int) -> None:
        super().__init__(vocab_size, rank, hidden_size)
        self.gate_proj = nn.Linear(hidden_size + rank, rank)

    def latent(self, e: torch.Tensor, hidden: torch.Tensor, state: HeadState) -> tuple[torch.Tensor, HeadState]:
        gate = torch.sigmoid(self.gate_proj(torch.cat([hidden, e.to(hidden.dtype)], dim=-1)))
        return gate.to(e.dtype) * e, state


class RNNHead(MarkovHead):
    """s_k = σ(g)⊙s_{k-1} + (1-σ(g))⊙tanh(c), B_k = W2 tanh(o), with [g; c; o] = J[s_{k-1}; e; h_k] + b."""

    def __init__(self, vocab_size: int, rank: int, hidden_size: int) -> None:
        super().__init__(vocab_size, rank, hidden_size)
        self.joint_proj = nn.Linear(2 * rank + hidden_size, 3 * rank)

    def initial_state(self, batch: int, ref: torch.Tensor) -> HeadState:
        return ref.new_zeros(batch, self.rank)

    def latent(self, e: torch.Tensor, hidden: torch.Tensor, state: HeadState) -> tuple[torch.Tensor, HeadState]:
        if state is None:
            state = e.new_zeros(e.shape)
        gate, cand, out = self.joint_proj(torch.cat([state, e, hidden.to(e.dtype)], dim=-1)).chunk(3, dim=-1)
        gate = torch.sigmoid(gate)
        return torch.tanh(out), gate * state + (1.0 - gate) * torch.tanh(cand)

    def block_bias(self, prev_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        e = self.prev_embedding(prev_ids)  # [..., γ, r]
        state = e.new_zeros(e[..., 0, :].shape)
        outs = []
        for k in range(e.shape[-2]):  # the state makes slots sequential even under teacher forcing
            z, state = self.latent(e[..., k, :], hidden[..., k, :], state)
            outs.append(z)
        return self.markov_w2(torch.stack(outs, dim=-2))


HEADS: dict[str, type[MarkovHead]] = {"vanilla": MarkovHead, "gated": GatedMarkovHead, "rnn": RNNHead}


class ConfidenceHead(nn.Module):
    """c_k logit = w·[h_k ; W1[x_{k-1}]] + b (or w·h_k + b without the Markov feature)."""

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(input_dim, 1)

    def forward(self, hidden: torch.Tensor, prev_embedding: torch.Tensor | None) -> torch.Tensor:
        feats = hidden if prev_embedding is None else torch.cat([hidden, prev_embedding.to(hidden.dtype)], dim=-1)
        return self.proj(feats).squeeze(-1).float()
