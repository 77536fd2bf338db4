"""Offline evaluation of drafters (SPEC §4) and their calibration (SPEC §2.4).

    prompts ─ runner (decoder, fixed γ) ─► traces ─ metrics / reliability / calibration ─► report, plots

Modules: `metrics` (τ, conditional and unconditional acceptance, threshold sweep), `reliability`
(ECE, ROC-AUC, reliability bins), `calibration` (Sequential Temperature Scaling), `traces` (per-round
JSONL the simulator replays), `runner` (batched decoding over prompt sets), `report` (per-dataset /
per-domain summary), `plots` (PNG). CLIs: `dspark eval`, `dspark calibrate`.
"""
