"""Per-round confidence and acceptance traces: built from decoder results, saved as JSONL.

`dspark eval` and `dspark calibrate` record every decoding round of every request. The JSONL file holds
one object per round, in the format the serving simulator replays (`dspark.sim.TraceAcceptance`,
`dspark simulate --acceptance traces.jsonl`)::

    {"dataset": "gsm8k", "domain": "math", "request": 12, "turn": 0, "round": 3,
     "drafted": 7, "verified": 7, "accepted": 3, "committed": 4,
     "confidences": [0.93, 0.88, ...], "raw_confidences": [0.97, 0.95, ...]}

* `confidences`: calibrated conditional survival c_1..c_γ (what a scheduler sees; equal to the raw
  ones when no temperatures are known), `raw_confidences`: σ(raw logit). Both are null for drafters
  without a confidence head (the simulator cannot replay those traces).
* `verified` <= γ is the fixed verification length, smaller only where the budget cut the round.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from dspark.errors import DataError
from dspark.eval.metrics import round_tokens


@dataclass(frozen=True)
class Trace:
    """Columns of N recorded rounds."""

    num_slots: int  # γ (drafts per round)
    accepted: np.ndarray  # [N] int
    verified: np.ndarray  # [N] int
    committed: np.ndarray  # [N] int (accepted + 1, fewer when EOS or the budget cut the round)
    request: np.ndarray  # [N] int, request id (unique over the whole evaluation)
    turn: np.ndarray  # [N] int, user turn of the request
    round_index: np.ndarray  # [N] int, round number within the request
    dataset: np.ndarray  # [N] str
    domain: np.ndarray  # [N] str
    raw_confidences: np.ndarray | None = None  # [N, γ] σ(raw logit), or None without a confidence head
    confidences: np.ndarray | None = None  # [N, γ] calibrated; None -> same as raw
    stopped: np.ndarray | None = None  # [N] bool: the round ended the request at a stop token (None: none did)

    def tau_tokens(self) -> np.ndarray:
        """[N] what each round counts for τ (`dspark.eval.metrics.round_tokens`)."""
        return round_tokens(self.accepted, self.committed, self.stopped)

    def __len__(self) -> int:
        return int(self.accepted.size)

    @property
    def has_confidence(self) -> bool:
        return self.raw_confidences is not None

    @property
    def scheduler_confidences(self) -> np.ndarray | None:
        """Calibrated confidences when set, else raw ones (what the decoder's threshold rule sees)."""
        return self.confidences if self.confidences is not None else self.raw_confidences

    def select(self, mask: np.ndarray) -> Trace:
        """The rounds where `mask` [N] is true."""
        kw = {f.name: (getattr(self, f.name)[mask] if isinstance(getattr(self, f.name), np.ndarray) else getattr(self, f.name))
              for f in fields(self)}
        return Trace(**kw)

    def with_confidences(self, confidences: np.ndarray | None) -> Trace:
        return replace(self, confidences=None if confidences is None else np.asarray(confidences, dtype=np.float64))


def trace_from_results(results: Sequence[Any], num_slots: int, dataset: str, domain: str,
                       request_ids: Sequence[int], turns: Sequence[int] | int = 0,
                       round_offsets: Sequence[int] | None = None) -> Trace:
    """Rounds of `GenerationResult`s (one per request and turn) -> `Trace`.

    `request_ids[i]` / `turns[i]` label results[i]; `round_offsets[i]` numbers its first round (so the rounds
    of a multi-turn request keep counting up).
    """
    turns = [turns] * len(results) if isinstance(turns, int) else list(turns)
    offsets = list(round_offsets) if round_offsets is not None else [0] * len(results)
    cols: dict[str, list] = {k: [] for k in ("accepted", "verified", "committed", "request", "turn", "round_index")}
    stopped: list[bool] = []
    confs: list[list[float] | None] = []
    for res, req, turn, off in zip(results, request_ids, turns, offsets):
        for i, rec in enumerate(res.rounds):
            cols["accepted"].append(rec.accepted)
            cols["verified"].append(rec.verified)
            cols["committed"].append(rec.committed)
            cols["request"].append(req)
            cols["turn"].append(turn)
            cols["round_index"].append(off + i)
            stopped.append(bool(getattr(rec, "stopped", False)))
            confs.append(None if rec.confidences is None else list(rec.confidences)[:num_slots])
    n = len(confs)
    raw = None
    if n and all(c is not None and len(c) == num_slots for c in confs):
        raw = np.asarray(confs, dtype=np.float64).reshape(n, num_slots)
    return Trace(num_slots, *(np.asarray(cols[k], dtype=np.int64) for k in cols),
                 dataset=np.full(n, dataset, dtype=object), domain=np.full(n, domain, dtype=object),
                 raw_confidences=raw, stopped=np.asarray(stopped, dtype=bool))


def concat_traces(traces: Sequence[Trace]) -> Trace:
    """One trace of all rounds, in order; all parts must share γ and the presence of confidences."""
    traces = list(traces)
    if not traces:
        raise DataError("no traces to concatenate")
    traces = [t for t in traces if len(t)] or traces[:1]  # empty parts carry no confidence information
    slots = {t.num_slots for t in traces}
    if len(slots) != 1:
        raise DataError(f"traces have different numbers of slots: {sorted(slots)}")
    kw: dict[str, Any] = {"num_slots": traces[0].num_slots}
    for f in fields(Trace):
        if f.name not in ("num_slots", "raw_confidences", "confidences", "stopped"):
            kw[f.name] = np.concatenate([getattr(t, f.name) for t in traces])
    has_conf = all(t.has_confidence for t in traces)  # one part without a confidence head: none for the whole
    kw["raw_confidences"] = np.concatenate([t.raw_confidences for t in traces]) if has_conf else None
    calibrated = has_conf and any(t.confidences is not None for t in traces)
    kw["confidences"] = np.concatenate([t.scheduler_confidences for t in traces]) if calibrated else None
    kw["stopped"] = np.concatenate([t.stopped if t.stopped is not None else np.zeros(len(t), dtype=bool) for t in traces])
    return Trace(**kw)


def write_trace_jsonl(trace: Trace, path: str | Path) -> Path:
    """Write one JSON object per round (format in the module docstring); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conf = trace.scheduler_confidences
    with path.open("w") as fh:
        for i in range(len(trace)):
            rec = {"dataset": str(trace.dataset[i]), "domain": str(trace.domain[i]), "request": int(trace.request[i]),
                   "turn": int(trace.turn[i]), "round": int(trace.round_index[i]), "drafted": trace.num_slots,
                   "verified": int(trace.verified[i]), "accepted": int(trace.accepted[i]),
                   "committed": int(trace.committed[i]),
                   "stopped": bool(trace.stopped[i]) if trace.stopped is not None else False,
                   "confidences": None if conf is None else [round(float(c), 6) for c in conf[i]],
                   "raw_confidences": None if trace.raw_confidences is None
                   else [round(float(c), 6) for c in trace.raw_confidences[i]]}
            fh.write(json.dumps(rec) + "\n")
    return path


def read_trace_jsonl(path: str | Path) -> Trace:
    """Read a file written by `write_trace_jsonl` (or any JSONL with `accepted` and `confidences`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"trace file {path} does not exist")
    recs = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(recs[-1], dict) or not isinstance(recs[-1].get("accepted"), int):
                raise DataError(f"{path}:{lineno}: a trace record needs an integer 'accepted'")
    if not recs:
        raise DataError(f"{path}: no trace records")
    conf = [r.get("confidences") for r in recs]
    raw = [r.get("raw_confidences", r.get("confidences")) for r in recs]
    num_slots = int(recs[0].get("drafted") or (len(conf[0]) if conf[0] else 0))
    if num_slots < 1:
        raise DataError(f"{path}: records give neither 'drafted' nor 'confidences' (cannot tell γ)")

    def matrix(rows: list) -> np.ndarray | None:
        if any(r is None for r in rows):
            return None
        if any(len(r) != num_slots for r in rows):
            raise DataError(f"{path}: confidence lists must all have γ = {num_slots} entries")
        return np.asarray(rows, dtype=np.float64)

    def col(key: str, default: Any) -> np.ndarray:
        return np.asarray([r.get(key, default) for r in recs], dtype=np.int64)

    return Trace(num_slots, col("accepted", 0), col("verified", num_slots),
                 np.asarray([r.get("committed", r["accepted"] + 1) for r in recs], dtype=np.int64),
                 col("request", 0), col("turn", 0), col("round", 0),
                 np.asarray([r.get("dataset", "") for r in recs], dtype=object),
                 np.asarray([r.get("domain", "") for r in recs], dtype=object),
                 raw_confidences=matrix(raw), confidences=matrix(conf),
                 stopped=np.asarray([bool(r.get("stopped", False)) for r in recs], dtype=bool))
