"""The reference speculative decoder: batch of prompts, any drafter, per-round statistics."""

from dspark.decode.decoder import SpeculativeDecoder
from dspark.decode.records import GenerationResult, RoundRecord, summarize

__all__ = ["SpeculativeDecoder", "GenerationResult", "RoundRecord", "summarize"]
