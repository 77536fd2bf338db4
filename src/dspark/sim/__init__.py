"""Serving simulator for capacity planning (every output is labelled SIMULATED).

`SPSTable + acceptance model + workload ─ simulate ─► SimResult`; decoding rounds call the same
`dspark.scheduling.plan_verify_lengths` as the decoder. Modules: `acceptance` (Fig.-2 presets, Beta
curves, trace replay, traces from engine rounds), `workload` (lengths, arrivals), `cost` (the price of one
engine step: the table plus measured prefill, context, planning and CUDA-graph padding terms), `engine`
(the event loop), `sweep` (policy × load grids, SLA anchors), `plots` (PNG). CLI: `dspark simulate`;
held against the engine by ``scripts/bench_frontier.py --simulate`` (`dspark.eval.sim_check`).
"""

from __future__ import annotations

from dspark.sim.acceptance import PRESETS, CurveAcceptance, TraceAcceptance, make_acceptance, trace_records
from dspark.sim.cost import PrefillCost, RequestCurve, StepCost
from dspark.sim.engine import SimConfig, SimResult, simulate
from dspark.sim.sweep import run_sweep, sla_table
from dspark.sim.workload import Arrivals, LengthDist, LengthSequence

__all__ = [
    "PRESETS",
    "CurveAcceptance",
    "TraceAcceptance",
    "make_acceptance",
    "trace_records",
    "PrefillCost",
    "RequestCurve",
    "StepCost",
    "SimConfig",
    "SimResult",
    "simulate",
    "run_sweep",
    "sla_table",
    "Arrivals",
    "LengthDist",
    "LengthSequence",
]
