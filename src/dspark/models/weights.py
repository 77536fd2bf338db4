"""Hugging Face weights -> the dense forward's fused layout (`DenseLM` parameter names).

A `WeightSource` is anything that lists tensor names and returns a tensor by name: `SafetensorsDir`
(``model.safetensors`` or shards listed in ``model.safetensors.index.json``, read lazily with
``safetensors.safe_open``) or `StateDictSource` (an in-memory `transformers` state_dict).
`dense_state_dict` renames and fuses: per layer one ``qkv_proj`` ``[(H + 2·Hkv)·D, d]`` from
q/k/v_proj and one ``gate_up_proj`` ``[2·I, d]`` from gate/up_proj; a tied LM head is left out (the
model shares its embedding). Missing keys, wrong shapes and unreadable files raise `CheckpointError`
naming the key or the file.

Flow: checkpoint dir / HF model -> WeightSource -> dense_state_dict -> DenseLM.load_state_dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Protocol

import torch
from safetensors import SafetensorError, safe_open

from dspark.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# our module name inside a decoder layer -> the HF module name(s) it is made of (concatenated on dim 0)
LAYER_MODULES: dict[str, tuple[str, ...]] = {
    "input_layernorm": ("input_layernorm",),
    "post_attention_layernorm": ("post_attention_layernorm",),
    "qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "q_norm": ("self_attn.q_norm",),
    "k_norm": ("self_attn.k_norm",),
    "o_proj": ("self_attn.o_proj",),
    "gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "down_proj": ("mlp.down_proj",),
}


class WeightSource(Protocol):
    where: str  # for error messages: a directory, or "<memory>"

    def names(self) -> set[str]: ...

    def get(self, name: str) -> torch.Tensor: ...


class _SafetensorsHandle(Protocol):
    def keys(self) -> list[str]: ...

    def get_tensor(self, name: str) -> torch.Tensor: ...


class StateDictSource:
    """A `transformers` model's state_dict (or any name -> tensor mapping)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor], where: str = "<memory>") -> None:
        self._tensors = state_dict
        self.where = where

    def names(self) -> set[str]:
        return set(self._tensors)

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]


class SafetensorsDir:
    """The weights of a HF model directory, one file or sharded; files are opened on first use."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.where = str(self.directory)
        single, index = self.directory / SINGLE_FILE, self.directory / INDEX_FILE
        self._handles: dict[Path, _SafetensorsHandle] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"cannot read the shard index {index}: {exc!r}") from exc
            self._file_of = {name: self.directory / file for name, file in weight_map.items()}
        elif single.is_file():
            self._handles[single] = self._open(single)
            self._file_of = {name: single for name in self._handles[single].keys()}
        else:
            raise CheckpointError(f"no {SINGLE_FILE} or {INDEX_FILE} in {self.directory}")
        missing = sorted({f.name for f in self._file_of.values() if not f.is_file()})
        if missing:
            raise CheckpointError(f"{index} lists shard file(s) that do not exist: {', '.join(missing)}")

    def _open(self, file: Path) -> _SafetensorsHandle:
        try:
            return safe_open(str(file), framework="pt", device="cpu")
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read safetensors file {file}: {exc} (truncated or corrupt?)") from exc

    def names(self) -> set[str]:
        return set(self._file_of)

    def get(self, name: str) -> torch.Tensor:
        file = self._file_of[name]
        if file not in self._handles:
            self._handles[file] = self._open(file)
        try:
            return self._handles[file].get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"cannot read tensor {name!r} from {file}: {exc}") from exc


def _hf_prefix(source: WeightSource) -> str:
    """'model.' for a *ForCausalLM checkpoint, '' for a bare decoder (e.g. a saved `Qwen3Model`)."""
    names = source.names()
    for prefix in ("model.", ""):
        if f"{prefix}embed_tokens.weight" in names:
            return prefix
    raise CheckpointError(f"weights at {source.where} have no 'model.embed_tokens.weight': not a decoder LM checkpoint")


def hf_names(name: str, prefix: str) -> tuple[str, ...]:
    """Our parameter name -> the HF tensor name(s) it is built from."""
    if name == "lm_head.weight":
        return (name,)
    if not name.startswith("layers."):
        return (prefix + name.replace("embed.", "embed_tokens."),)
    _, index, module, param = name.split(".")
    return tuple(f"{prefix}layers.{index}.{part}.{param}" for part in LAYER_MODULES[module])


def dense_state_dict(expected: Mapping[str, torch.Size], source: WeightSource, dtype: torch.dtype,
                     device: torch.device | str) -> dict[str, torch.Tensor]:
    """Build every tensor of `expected` (our name -> shape) from `source`, fused, cast and moved."""
    prefix, names = _hf_prefix(source), source.names()
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        parts = hf_names(name, prefix)
        absent = [p for p in parts if p not in names]
        if absent:
            raise CheckpointError(f"weights at {source.where} lack {absent[0]!r} (needed for {name})")
        tensor = torch.cat([source.get(p) for p in parts]) if len(parts) > 1 else source.get(parts[0])
        if tensor.shape != shape:
            raise CheckpointError(f"{' + '.join(parts)} at {source.where} has shape {tuple(tensor.shape)}, "
                                  f"the config implies {tuple(shape)}")
        out[name] = tensor.to(device=device, dtype=dtype)
    return out
