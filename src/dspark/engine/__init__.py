"""The decoding engine: continuous batching over a paged KV cache, one speculative round per step.

    scheduler.py (CPU: who runs, how many tokens) ── messages.py ──► runner.py (device: one step.py round)
    block_manager.py (pages, prefix cache)           kv_cache.py / draft_kv.py (target + drafter K/V, same pages)
    llm.py (LLM: add_request / step / generate / abort)   profile.py (the engine's own SPS table)
"""

from __future__ import annotations

from typing import Any

__all__ = ["LLM", "SamplingOptions", "GenerationResult", "RequestOutput"]


def __getattr__(name: str) -> Any:  # lazy: importing the package must not load torch for the scheduler alone
    if name == "LLM":
        from dspark.engine.llm import LLM

        return LLM
    if name == "SamplingOptions":
        from dspark.engine.options import SamplingOptions

        return SamplingOptions
    if name in ("GenerationResult", "RequestOutput"):
        from dspark.engine import results

        return getattr(results, name)
    raise AttributeError(f"module 'dspark.engine' has no attribute {name!r}")
