"""The engine's own model forwards (no transformers modeling code at run time): dense Qwen3/Qwen2/Llama/Mistral."""

from dspark.models.config import DenseConfig
from dspark.models.dense import DenseLM, DenseOutput
from dspark.models.loader import load_dense
from dspark.models.paged_attention import PagedAttentionFn, paged_attention
from dspark.models.weights import SafetensorsDir, StateDictSource, WeightSource

__all__ = ["DenseConfig", "DenseLM", "DenseOutput", "PagedAttentionFn", "SafetensorsDir", "StateDictSource",
           "WeightSource", "load_dense", "paged_attention"]
