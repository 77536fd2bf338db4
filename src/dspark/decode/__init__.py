"""Deprecated location: the decoding core is `dspark.engine`; these names are re-exported from there."""

from dspark.engine.decoder import SpeculativeDecoder
from dspark.engine.results import GenerationResult, RoundRecord
from dspark.eval.metrics import summarize

__all__ = ["SpeculativeDecoder", "GenerationResult", "RoundRecord", "summarize"]
