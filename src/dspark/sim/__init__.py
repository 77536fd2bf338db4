"""Serving simulator for capacity planning (every output is labelled SIMULATED).

`SPSTable + acceptance model + workload ─ simulate ─► SimResult`; decoding rounds call the same
`dspark.scheduling.plan_verify_lengths` as the decoder. Modules: `acceptance` (Fig.-2 presets, Beta
curves, trace replay), `workload` (lengths, arrivals), `engine` (the event loop), `sweep` (policy × load
grids, SLA anchors), `plots` (PNG). CLI: `dspark simulate`.
"""

from __future__ import annotations

from dspark.sim.acceptance import PRESETS, CurveAcceptance, TraceAcceptance, make_acceptance
from dspark.sim.engine import SimConfig, SimResult, simulate
from dspark.sim.sweep import run_sweep, sla_table
from dspark.sim.workload import Arrivals, LengthDist

__all__ = [
    "PRESETS",
    "CurveAcceptance",
    "TraceAcceptance",
    "make_acceptance",
    "SimConfig",
    "SimResult",
    "simulate",
    "run_sweep",
    "sla_table",
    "Arrivals",
    "LengthDist",
]
