"""Training losses (pure functions, SPEC §2.5–2.6). Each returns weighted SUMS; the caller divides by
the global weight of supervised slots (summed across ranks), so gradient accumulation and data
parallelism give the same normalisation as one big batch.

* DSpark: α_ce·CE(q, x*) + α_tv·‖q − p‖₁ + α_conf·BCE(c, c*), c* = 1 − ½‖q − p‖₁ (detached), slot
  weights w_j = exp(−j / decay); DFlash is the same with α_ce = 1 and the other terms off.
* Eagle3 (training-time test) and MTP-1: soft cross-entropy against the target distribution, step k
  weighted by decay^k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    ce: float = 0.1
    tv: float = 0.9
    conf: float = 1.0
    slot_decay: float = 4.0  # w_j = exp(-j / slot_decay), j = 0..γ-1 (DeepSpec's released constant)


def slot_weights(block_size: int, decay: float, device: torch.device | None = None) -> torch.Tensor:
    return torch.exp(-torch.arange(block_size, dtype=torch.float32, device=device) / decay)


def block_loss_sums(logits: torch.Tensor, target_logits: torch.Tensor, labels: torch.Tensor, slot_mask: torch.Tensor,
                    conf_logits: torch.Tensor | None, weights: LossWeights) -> dict[str, torch.Tensor]:
    """logits/target_logits [M, γ, V], labels/slot_mask [M, γ], conf_logits [M, γ] -> weighted sums.

    Also returns `accept` [γ] (Σ over supervised blocks of 1 − TV, the expected per-slot acceptance
    under teacher forcing) and `count` [γ] for metrics.
    """
    w = slot_weights(logits.shape[1], weights.slot_decay, logits.device) * slot_mask.float()  # [M, γ]
    logq = F.log_softmax(logits.float(), dim=-1)
    ce = -logq.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # [M, γ]
    with torch.set_grad_enabled(torch.is_grad_enabled() and weights.tv + weights.conf > 0):
        p = F.softmax(target_logits.float(), dim=-1)
        l1 = (logq.exp() - p).abs().sum(-1)  # [M, γ]
    out = {"ce": (w * ce).sum(), "tv": (w * l1).sum(), "weight": w.sum()}
    accept = (1.0 - 0.5 * l1.detach()).clamp(0, 1)
    if conf_logits is not None:
        bce = F.binary_cross_entropy_with_logits(conf_logits.float(), accept, reduction="none")
        out["conf"] = (w * bce).sum()
    out["loss"] = weights.ce * out["ce"] + weights.tv * out["tv"] + weights.conf * out.get("conf", 0.0)
    m = slot_mask.float()
    out["accept"] = (accept * m).sum(0)
    out["count"] = m.sum(0)
    out["tau_terms"] = (accept * m).cumprod(-1).sum(-1).sum()  # Σ_blocks Σ_j Π_{i<=j} α_i (teacher-forced)
    out["blocks"] = m[:, 0].sum()
    return out


def soft_ce_sums(logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor, weight: float = 1.0
                 ) -> dict[str, torch.Tensor]:
    """Σ weight·mask·(−Σ_v p log q) over positions; logits/target_logits [..., V], mask [...]."""
    logq = F.log_softmax(logits.float(), dim=-1)
    p = F.softmax(target_logits.float(), dim=-1)
    m = mask.float()
    loss = -(p * logq).sum(-1)
    accept = 1.0 - 0.5 * (logq.exp().detach() - p).abs().sum(-1)
    return {"loss": weight * (m * loss).sum(), "weight": weight * m.sum(), "accept": (accept * m).sum(), "count": m.sum()}
