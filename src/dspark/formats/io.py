"""Checkpoint file I/O: JSON, and safetensors weights (single file or sharded with an index), checked whole.

Directories are written through `dspark.output_dir` (atomic, never over a user's files).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dspark.errors import CheckpointError


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {exc}") from exc


INDEX_NAME = "model.safetensors.index.json"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(*paths: Path) -> None:
    """Give files the mode the umask grants new files (safetensors writes them 0600, so a serving process
    running as another user could not read a checkpoint); directories below a path are walked."""
    mask = _umask()
    for path in paths:
        for item in [path, *(path.rglob("*") if path.is_dir() else [])]:
            if item.is_file() and not item.is_symlink():
                os.chmod(item, 0o666 & ~mask)
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # above this a checkpoint is sharded (what HF, vLLM and SGLang read)


def save_weights(directory: Path, state: dict[str, torch.Tensor], max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
                 ) -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000N.safetensors` + `model.safetensors.index.json` when the
    tensors exceed `max_shard_bytes` (HF's layout, split by `huggingface_hub`). Returns the file names."""
    from huggingface_hub import split_torch_state_dict_into_shards

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_bytes)
    for filename, names in split.filename_to_tensors.items():
        save_file({k: tensors[k] for k in names}, str(directory / filename), metadata={"format": "pt"})
        apply_umask(directory / filename)
    if not split.is_sharded:
        return list(split.filename_to_tensors)
    write_json(directory / INDEX_NAME, {"metadata": {**split.metadata, "format": "pt"},
                                        "weight_map": dict(sorted(split.tensor_to_filename.items()))})
    return [*split.filename_to_tensors, INDEX_NAME]


def check_safetensors(path: Path) -> None:
    """Raise `CheckpointError` naming `path` unless it is a whole safetensors file (header and all tensor bytes)."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else -1
        if header_len < 0 or header_len > size - 8:
            raise CheckpointError(f"{str(path)!r} is truncated or corrupt ({size} bytes: no complete safetensors "
                                  "header); copy or download it again")
        try:
            header = json.loads(handle.read(header_len))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise CheckpointError(f"{str(path)!r} is corrupt (unreadable safetensors header)") from None
    if 8 + header_len + end > size:
        raise CheckpointError(f"{str(path)!r} is truncated: {size} bytes, but its header describes "
                              f"{8 + header_len + end}; copy or download it again")


def weight_files(directory: Path) -> list[Path]:
    """model.safetensors, or the shards listed in model.safetensors.index.json ([] when neither exists)."""
    single = directory / "model.safetensors"
    index = directory / INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            return [directory / shard for shard in sorted(set(read_json(index)["weight_map"].values()))]
        except (KeyError, AttributeError, TypeError) as exc:
            raise CheckpointError(f"{str(index)!r} has no valid weight_map: {exc}") from exc
    return []


def check_weight_files(directory: Path) -> None:
    """Refuse, naming the file, a model directory whose safetensors weights are missing, truncated or corrupt."""
    for path in weight_files(Path(directory)):
        if not path.is_file():
            raise CheckpointError(f"weight shard {str(path)!r} is missing")
        check_safetensors(path)


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or the shards listed in model.safetensors.index.json."""
    files = weight_files(directory)
    check_weight_files(directory)
    try:
        state: dict[str, torch.Tensor] = {}
        for path in files:
            state.update(load_file(str(path)))
        if files:
            return state
    except (OSError, KeyError) as exc:
        raise CheckpointError(f"cannot read weights in {str(directory)!r}: {exc}") from exc
    except Exception as exc:  # safetensors raises its own error type on corrupt files
        raise CheckpointError(f"corrupt weights in {str(directory)!r}: {exc}") from exc
    raise CheckpointError(f"no model.safetensors (or index) in {str(directory)!r}")


def _embedding_shape(directory: Path) -> tuple[int, ...] | None:
    """Shape of the stored input embedding (from the safetensors headers only), or None."""
    from safetensors import safe_open

    for path in weight_files(directory):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key.endswith("embed_tokens.weight"):
                    return tuple(handle.get_slice(key).get_shape())
    return None


def _config_mismatch(directory: Path) -> str | None:
    """What in config.json contradicts the stored embedding (another model's config), or None."""
    raw = read_json(directory / "config.json")
    text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else raw
    shape = _embedding_shape(directory)
    if shape is None or len(shape) != 2:
        return None
    vocab = text.get("vocab_size")  # (only the vocabulary: some models project a narrower embedding)
    if isinstance(vocab, int) and vocab != shape[0]:
        return f"its weights hold a {shape[0]}-token embedding but config.json says vocab_size {vocab}"
    return None


def load_target_checked(path: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu") -> Any:
    """`load_target`, after checking the weight files are whole and fit the config (another model's
    config.json, a vocabulary resized on one side only), each named in one line."""
    from dspark.targets import load_target

    local = Path(path).expanduser()
    detail = None
    if local.is_dir():
        check_weight_files(local)
        detail = _config_mismatch(local) if (local / "config.json").is_file() else None
    if detail is None:
        try:
            return load_target(path, dtype=dtype, device=device)
        except RuntimeError as exc:
            if not local.is_dir() or "mismatch" not in str(exc).lower():
                raise
            detail = "its weights have other shapes than its config.json describes"
    raise CheckpointError(f"target {str(path)!r} is inconsistent: {detail}; the weights and the config come "
                          "from different models (use the config.json saved with these weights)")
