"""Confidence-scheduled verification (SPEC §5): engine cost tables and verification-length policies.

`SPSTable` holds the profiled (or analytic, `roofline_table`) steps/second curve; `plan_verify_lengths`
turns per-request prefix survival into per-request verify lengths under a named policy; `DraftGate`
decides before a round whether drafting pays for its cost at all (policies named ``POLICY+gate``).
"""

from __future__ import annotations

from dspark.scheduling.policy import (
    POLICY_NAMES,
    Policy,
    async_capacity,
    parse_policy,
    plan_verify_lengths,
)
from dspark.scheduling.sps_table import SPSTable
from dspark.scheduling.gate import DraftGate, drafting_pays

from dspark.scheduling.roofline import HARDWARE, MODELS, Hardware, ModelShape, roofline_table

__all__ = [
    "SPSTable",
    "plan_verify_lengths",
    "async_capacity",
    "DraftGate",
    "drafting_pays",
    "parse_policy",
    "Policy",
    "POLICY_NAMES",
    "roofline_table",
    "Hardware",
    "ModelShape",
    "HARDWARE",
    "MODELS",
]
