"""Synthetic acceptance for benchmarking only: per-request acceptance drawn from a model, NOT lossless.

Where it sits: `Runner(..., synthetic=SyntheticAcceptance)`. The drafter and the target run for real
(their full cost), but every verify row's accepted count is forced to `accepted(req_id, ℓ)` and, after
each proposal, the drafter's confidences are replaced by `propose(req_ids)`: the calibrated predictions
of a `dspark.sim.acceptance.AcceptanceModel` (the same model the simulator draws from). This measures
what a scheduling policy does with a drafter of a given quality on a target without a trained drafter
(random-weight 8B shapes). The output tokens are NOT the target's distribution: never serve them.

    synthetic = synthetic_from_spec("dspark/math", gamma=7, seed=0)
    conf = synthetic.propose(["req-0", "req-1"])   # [R][γ] confidences for the planner; one round drawn per request
    synthetic.accepted("req-0", 3)                 # min(accepted_if_all of req-0's round, 3)

Each request has its own stream of rounds, seeded by (`seed`, request id): its k-th proposal is the
k-th round of that stream whatever else is running (rounds are drawn `CHUNK` at a time per request).
So two policies serving the same requests see the same acceptance rounds (common random numbers): a
difference between them is what the policy did, not the luck of the draw.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from dspark.errors import ConfigError, DataError
from dspark.sim.acceptance import AcceptanceModel, CurveAcceptance, TraceAcceptance, make_acceptance, preset_names

NOT_LOSSLESS = "synthetic acceptance (NOT lossless)"
CHUNK = 64  # rounds drawn at a time for one request


class SyntheticAcceptance:
    """Per-request synthetic acceptance drawn from a dspark.sim.acceptance AcceptanceModel (benchmark only, NOT lossless)."""

    def __init__(self, model: AcceptanceModel, gamma: int, seed: int = 0) -> None:
        if model.gamma != gamma:
            raise ConfigError(f"synthetic acceptance {model.name!r} has γ = {model.gamma} slots, but the drafter "
                              f"proposes {gamma} tokens per round")
        self.model, self.gamma = model, int(gamma)
        self.label = f"synthetic-acceptance:{model.name} (NOT lossless)"
        self.seed = int(seed)
        self._streams: dict[str, list] = {}  # req_id -> [confidence [CHUNK, γ], accepted [CHUNK], next round, rng]
        self._accepted: dict[str, int] = {}  # req_id -> accepted_if_all of its last drawn round

    def propose(self, req_ids: list[str]) -> list[list[float]]:
        """A new round for each request: draw (confidences [γ], accepted_if_all) from the model (one model.draw call for all rows),
        keep accepted_if_all per request, return the confidences (the model's calibrated predictions) that replace the drafter's."""
        out = []
        for req_id in req_ids:
            conf, n = self._next_round(req_id)
            self._accepted[req_id] = n
            out.append(conf)
        return out

    def _next_round(self, req_id: str) -> tuple[list[float], int]:
        stream = self._streams.get(req_id)
        if stream is None or stream[2] == CHUNK:
            rng = stream[3] if stream is not None else np.random.default_rng(
                [self.seed, 0x5A, *np.frombuffer(hashlib.sha256(req_id.encode()).digest()[:8], dtype=np.uint32).tolist()])
            confidence, accepted = self.model.draw(CHUNK, rng)  # [CHUNK, γ], [CHUNK]
            stream = [np.asarray(confidence, dtype=np.float64).tolist(), accepted.tolist(), 0, rng]
            self._streams[req_id] = stream
        k = stream[2]
        stream[2] = k + 1
        return stream[0][k], int(stream[1][k])

    def accepted(self, req_id: str, num_verify: int) -> int:
        """min(accepted_if_all of its last round, num_verify); 0 when the request has no stored round."""
        return min(self._accepted.get(req_id, 0), max(0, int(num_verify)))

    def release(self, req_id: str) -> None:
        self._accepted.pop(req_id, None)
        self._streams.pop(req_id, None)

    def expected_accepted(self, num_verify: int | None = None) -> float | None:
        """Mean accepted drafts per round at a fixed ℓ (default γ) for curve models; None for traces."""
        if isinstance(self.model, CurveAcceptance):
            return self.model.expected_tau(num_verify) - 1.0
        if isinstance(self.model, TraceAcceptance):
            k = self.gamma if num_verify is None else num_verify
            return float(np.minimum(self.model.accepted, k).mean())
        return None


def synthetic_from_spec(spec: str, gamma: int, seed: int = 0) -> SyntheticAcceptance:
    """A preset (`dspark/math`, `mtp/chat`, ...), ``curve:a1,a2,...`` (truncated to γ) or a JSONL trace file.

    Raises ConfigError naming `spec` when it is none of these, or when its γ does not fit the drafter's.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"synthetic acceptance must be a preset, curve:... or a JSONL trace path, got {spec!r}")
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            model: AcceptanceModel = TraceAcceptance.load(path)
        except DataError as exc:
            raise ConfigError(f"synthetic acceptance trace {spec!r}: {exc}") from None
        return SyntheticAcceptance(model, gamma, seed)
    if spec.endswith(".jsonl"):
        raise ConfigError(f"synthetic acceptance trace {spec!r} does not exist")
    try:
        model = make_acceptance(spec)
    except ConfigError as exc:
        raise ConfigError(f"synthetic acceptance {spec!r} is neither a preset ({', '.join(preset_names())}), "
                          f"curve:a1,a2,... nor an existing JSONL trace file ({exc})") from None
    if model.gamma < gamma:
        raise ConfigError(f"synthetic acceptance {spec!r} has {model.gamma} slot(s), but the drafter proposes {gamma} "
                          f"tokens per round")
    if model.gamma > gamma:  # a longer curve: its first γ slots (as `dspark simulate --gamma` does)
        model = make_acceptance(spec, gamma=gamma)
    if spec.startswith("curve:") and isinstance(model, CurveAcceptance):
        model = replace(model, name=spec)
    return SyntheticAcceptance(model, gamma, seed)
