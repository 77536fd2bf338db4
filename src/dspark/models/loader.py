"""`load_dense`: a HF model directory (config.json + safetensors) -> a ready `DenseLM`.

No `transformers` import: the config is read as JSON (`DenseConfig`) and the weights with
``safetensors.safe_open`` (`SafetensorsDir`), fused as they are copied. The dtype defaults to float32,
like `dspark.targets.load_target`, so the two runners compare like for like.

Flow: model dir -> load_dense -> DenseLM (the engine's fast runner) ; load_target -> the HF oracle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dspark.errors import CheckpointError
from dspark.models.config import DenseConfig
from dspark.models.dense import DenseLM
from dspark.models.paged_attention import PagedAttentionFn
from dspark.models.weights import SafetensorsDir
from dspark.targets.adapter import resolve_dtype


def load_dense(path: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
               attention: PagedAttentionFn | None = None, fused: bool | None = None) -> DenseLM:
    """Load the dense target at `path` (a local HF directory) in `dtype` on `device` (see `DenseLM` for the rest)."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise CheckpointError(f"target path {str(path)!r} is not a directory")
    config = DenseConfig.from_file(directory)
    return DenseLM.from_weights(config, SafetensorsDir(directory), resolve_dtype(dtype), device, attention, fused)
