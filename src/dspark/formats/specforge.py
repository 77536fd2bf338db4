"""SpecForge / vLLM speculators `DSparkDraftModel` config (SPEC §3.2).

Same tensors as the DeepSpec format; the DSpark-specific keys are nested under `dflash_config`.
vLLM maps this config to its Qwen3 DSpark model.
"""

from __future__ import annotations

from typing import Any

from dspark.drafters.config import DrafterConfig
from dspark.errors import CheckpointError
from dspark.formats.deepspec import CALIB_KEY, from_deepspec_config, to_deepspec_config

NESTED = ("markov_rank", "markov_head_type", "enable_confidence_head", "confidence_head_with_markov",
          "mask_token_id", "target_layer_ids")


def to_specforge_config(cfg: DrafterConfig) -> dict[str, Any]:
    if cfg.method not in ("dspark", "dflash"):
        raise CheckpointError(f"the SpecForge DSparkDraftModel format holds DSpark/DFlash drafters, not {cfg.method!r}")
    out = to_deepspec_config(cfg)
    nested = {k: out.pop(k) for k in NESTED if k in out}
    nested.setdefault("markov_head_type", cfg.markov_head_type if cfg.has_markov else None)
    nested.setdefault("confidence_head_with_markov", cfg.confidence_head_with_markov if cfg.has_confidence else False)
    nested.update(projector_type="dspark", confidence_head_alpha=1.0)
    out["architectures"] = ["DSparkDraftModel"]
    out["dflash_config"] = nested
    return out


def from_specforge_config(raw: dict[str, Any], where: str = "") -> DrafterConfig:
    nested = raw.get("dflash_config")
    if not isinstance(nested, dict):
        raise CheckpointError(f"SpecForge config {where} has no 'dflash_config' object")
    if nested.get("projector_type", "dspark") != "dspark":
        raise CheckpointError(f"SpecForge config {where}: projector_type {nested.get('projector_type')!r} is not 'dspark'")
    flat = {k: v for k, v in raw.items() if k != "dflash_config"}
    flat.update({k: v for k, v in nested.items() if k in NESTED and v is not None})
    if not flat.get("markov_rank"):
        flat.pop("markov_head_type", None)
    if not flat.get("enable_confidence_head"):
        flat.pop("confidence_head_with_markov", None)
    flat.setdefault("num_anchors", 512)
    flat["architectures"] = ["Qwen3DSparkModel"]
    flat.setdefault("enable_confidence_head", False)
    flat.setdefault("markov_rank", 0)
    if CALIB_KEY in raw:
        flat[CALIB_KEY] = raw[CALIB_KEY]
    return from_deepspec_config(flat, where)
