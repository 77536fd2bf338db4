"""Lossless verification of drafted tokens (pure functions).

One round for R requests (SPEC §1): each row r drafted K tokens with per-slot draft distributions q;
the target produced K+1 next-token distributions p (after the anchor and after each draft). Only the
first `num_verify[r]` drafts of row r are verified (the scheduler may verify fewer than drafted).
Left to right, draft x_k is accepted with probability min(1, p_k(x_k) / q_k(x_k)); at the first
rejection a *recovered* token is drawn from norm(max(0, p_k - q_k)); if every verified draft is
accepted a *bonus* token is drawn from p_{n+1}. This keeps the output distributed exactly as p.

Both p and q must already be processed by `dspark.sampling.processed_probs` with the same params.
Outputs: `output_ids [R, K+1]` = accepted drafts, then the recovered or bonus token, then -1 padding;
`num_accepted [R]` = accepted drafts (committed tokens = num_accepted + 1).
"""

from __future__ import annotations

import torch

from dspark.sampling import sample_from


def _check_shapes(draft_ids: torch.Tensor, num_verify: torch.Tensor, num_rows: int, k: int) -> None:
    if draft_ids.dim() != 2 or draft_ids.shape != (num_rows, k):
        raise ValueError(f"draft_ids must be [R, K] = [{num_rows}, {k}], got {tuple(draft_ids.shape)}")
    if num_verify.shape != (num_rows,):
        raise ValueError(f"num_verify must be [R] = [{num_rows}], got {tuple(num_verify.shape)}")
    # values are checked where that costs no device synchronisation (the engine's lengths come from its scheduler)
    if num_verify.device.type == "cpu" and (bool((num_verify < 0).any()) or bool((num_verify > k).any())):
        raise ValueError(f"num_verify must lie in [0, {k}], got {num_verify.tolist()}")


def _assemble(draft_ids: torch.Tensor, num_accepted: torch.Tensor, last_ids: torch.Tensor) -> torch.Tensor:
    """Accepted drafts, then the final (recovered or bonus) token, padded with -1 -> [R, K+1]."""
    num_rows, k = draft_ids.shape
    slots = torch.arange(k + 1, device=draft_ids.device).unsqueeze(0)  # [1, K+1]
    padded = torch.cat([draft_ids, draft_ids.new_full((num_rows, 1), -1)], dim=1)
    out = torch.where(slots < num_accepted.unsqueeze(1), padded, torch.full_like(padded, -1))
    return out.scatter(1, num_accepted.unsqueeze(1), last_ids.unsqueeze(1).to(out.dtype))


def _accepted_prefix(accept: torch.Tensor, num_verify: torch.Tensor) -> torch.Tensor:
    """Length of the leading run of accepted slots among the first num_verify -> [R]."""
    k = accept.shape[1]
    verified = torch.arange(k, device=accept.device).unsqueeze(0) < num_verify.unsqueeze(1)
    return (accept & verified).long().cumprod(dim=1).sum(dim=1)


def rejection_sample(
    draft_ids: torch.Tensor,  # [R, K] long
    draft_probs: torch.Tensor,  # [R, K, V] float32, the exact distributions the drafts were drawn from
    target_probs: torch.Tensor,  # [R, K+1, V] float32
    num_verify: torch.Tensor,  # [R] long, 0..K
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,  # [R, >=K+1] in [0, 1): column k tests slot k, the LAST column draws the final token
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative rejection sampling; returns `(output_ids [R, K+1], num_accepted [R])`.

    Randomness comes from `generator`, or from pre-drawn `uniforms` (the engine's per-request streams: a
    row reserves γ+1 draws every round, so which draw serves which test never depends on the batch).
    """
    num_rows, k, vocab = draft_probs.shape
    if target_probs.shape != (num_rows, k + 1, vocab):
        raise ValueError(
            f"target_probs must be [R, K+1, V] = [{num_rows}, {k + 1}, {vocab}], got {tuple(target_probs.shape)}"
        )
    _check_shapes(draft_ids, num_verify, num_rows, k)
    device = draft_probs.device
    draft_ids = draft_ids.long()
    num_verify = num_verify.to(device).long()

    idx = draft_ids.unsqueeze(-1)  # [R, K, 1]
    p_at = target_probs[:, :k].gather(-1, idx).squeeze(-1).float()  # [R, K]
    q_at = draft_probs.gather(-1, idx).squeeze(-1).float()  # [R, K]
    if uniforms is None:
        u = torch.rand((num_rows, k), generator=generator, device=device)  # [R, K]
    else:
        u = uniforms[:, :k].to(device=device, dtype=torch.float32)
    accept = u * q_at < p_at  # P(accept) = min(1, p/q)
    num_accepted = _accepted_prefix(accept, num_verify)  # [R]

    rows = torch.arange(num_rows, device=device)
    p_last = target_probs[rows, num_accepted].float()  # [R, V]
    rejected = num_accepted < num_verify  # [R]
    q_last = draft_probs[rows, num_accepted.clamp(max=max(k - 1, 0))].float() if k > 0 else torch.zeros_like(p_last)
    residual = (p_last - q_last).clamp_min(0.0)
    mass = residual.sum(-1, keepdim=True)
    # A residual of zero mass only arises from rounding when p == q; p itself is then the right law.
    residual = torch.where(mass > 1e-12, residual / mass.clamp_min(1e-30), p_last)
    final_probs = torch.where(rejected.unsqueeze(-1), residual, p_last)  # [R, V]
    last_ids = sample_from(final_probs, generator, None if uniforms is None else uniforms[:, -1])
    return _assemble(draft_ids, num_accepted, last_ids), num_accepted


def forced_accept(
    draft_ids: torch.Tensor,  # [R, K] long
    target_probs: torch.Tensor,  # [R, K+1, V] float32
    num_accepted: torch.Tensor,  # [R] long, 0..K, decided elsewhere (synthetic acceptance)
    uniforms: torch.Tensor,  # [R, >=1]: the LAST column draws the final token
) -> tuple[torch.Tensor, torch.Tensor]:
    """Benchmarks only, NOT lossless: accept the first `num_accepted` drafts whatever the target says.

    The final token is drawn from the target's distribution at the slot after them, so a step costs
    what a real one costs; `(output_ids [R, K+1], num_accepted [R])` as `rejection_sample` returns.
    """
    num_rows = draft_ids.shape[0]
    num_accepted = num_accepted.to(draft_ids.device).long()
    p_last = target_probs[torch.arange(num_rows, device=draft_ids.device), num_accepted]  # [R, V]
    last_ids = sample_from(p_last, uniforms=uniforms[:, -1])
    return _assemble(draft_ids.long(), num_accepted, last_ids), num_accepted


def greedy_verify(
    draft_ids: torch.Tensor,  # [R, K] long
    target_ids: torch.Tensor,  # [R, K+1] long: argmax of the target after the anchor and each draft
    num_verify: torch.Tensor,  # [R] long
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature-0 verification: accept while the draft equals the target's argmax."""
    num_rows, k = draft_ids.shape
    if target_ids.shape != (num_rows, k + 1):
        raise ValueError(f"target_ids must be [R, K+1] = [{num_rows}, {k + 1}], got {tuple(target_ids.shape)}")
    _check_shapes(draft_ids, num_verify, num_rows, k)
    num_verify = num_verify.to(draft_ids.device).long()
    num_accepted = _accepted_prefix(draft_ids.long() == target_ids[:, :k].long(), num_verify)
    last_ids = target_ids.gather(1, num_accepted.unsqueeze(1)).squeeze(1)
    return _assemble(draft_ids.long(), num_accepted, last_ids), num_accepted
