"""DeepSpec checkpoint format (SPEC §3.1): what vLLM, SGLang, TRT-LLM and llama.cpp load.

config.json is the target's HF config with the drafter keys changed; the state-dict names are our
modules' names (they were chosen to match). DSpark and DFlash are both `Qwen3DSparkModel`; Eagle3 is
`Qwen3Eagle3Model`. MTP-1 has no DeepSpec release; we write it in the same style as `DSparkMTPModel`.
Calibration temperatures travel as the extra key `dspark_calibration_temperatures` (others ignore it).
"""

from __future__ import annotations

import copy
from typing import Any

from dspark.drafters.config import DrafterConfig, rope_from_hf
from dspark.errors import CheckpointError

ARCH = {"dspark": "Qwen3DSparkModel", "dflash": "Qwen3DSparkModel", "eagle3": "Qwen3Eagle3Model", "mtp": "DSparkMTPModel"}
CALIB_KEY = "dspark_calibration_temperatures"
_DIM_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
             "head_dim", "rms_norm_eps", "max_position_embeddings", "attention_bias", "hidden_act")


def to_deepspec_config(cfg: DrafterConfig) -> dict[str, Any]:
    out = copy.deepcopy(cfg.target_config) or {"model_type": "qwen3"}
    for key in _DIM_KEYS:
        out[key] = getattr(cfg, key)
    if "rope_parameters" in out or "rope_theta" not in out:
        params = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
        if cfg.rope_scaling:
            params.update(cfg.rope_scaling)
        out["rope_parameters"] = params
    else:
        out["rope_theta"] = cfg.rope_theta
        out["rope_scaling"] = cfg.rope_scaling
    out.update(
        architectures=[ARCH[cfg.method]],
        num_hidden_layers=cfg.num_hidden_layers,
        num_target_layers=cfg.num_target_layers,
        target_layer_ids=list(cfg.target_layer_ids),
        layer_types=["full_attention"] * cfg.num_hidden_layers,
        tie_word_embeddings=False,
    )
    for key in ("text_config", "auto_map", "quantization_config"):
        out.pop(key, None)
    if cfg.method == "eagle3":
        out.update(draft_num_hidden_layers=cfg.num_hidden_layers, ttt_length=cfg.ttt_length,
                   step_loss_decay=cfg.step_loss_decay,
                   target_model_name_or_path=out.get("target_model_name_or_path", out.get("_name_or_path", "")))
        return out
    out.update(block_size=cfg.block_size, mask_token_id=cfg.mask_token_id, num_anchors=cfg.num_anchors,
               markov_rank=cfg.markov_rank if cfg.method == "dspark" else 0,
               enable_confidence_head=cfg.has_confidence)
    if cfg.has_markov:
        out["markov_head_type"] = cfg.markov_head_type
    if cfg.has_confidence:
        out["confidence_head_with_markov"] = cfg.confidence_head_with_markov
    if cfg.method == "mtp":
        out["dspark_method"] = "mtp"
    if cfg.calibration_temperatures is not None:
        out[CALIB_KEY] = list(cfg.calibration_temperatures)
    return out


def from_deepspec_config(raw: dict[str, Any], where: str = "") -> DrafterConfig:
    arch = (raw.get("architectures") or [""])[0]
    if arch == "Qwen3Eagle3Model":
        method = "eagle3"
    elif arch == "DSparkMTPModel":
        method = "mtp"
    elif arch == "Qwen3DSparkModel":
        required = ("target_layer_ids", "mask_token_id", "num_anchors", "enable_confidence_head", "markov_rank")
        missing = [k for k in required if k not in raw]
        if missing:
            raise CheckpointError(f"DeepSpec config {where} is missing required field(s) {missing}")
        method = "dspark" if int(raw["markov_rank"]) > 0 or raw["enable_confidence_head"] else "dflash"
    else:
        raise CheckpointError(f"{where}: architectures {raw.get('architectures')} is not a DeepSpec drafter")
    missing = [k for k in ("num_target_layers", "target_layer_ids", "hidden_size", "vocab_size", "num_hidden_layers")
               if k not in raw]
    if missing:
        raise CheckpointError(f"drafter config {where} is missing required field(s) {missing}")
    head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    kw: dict[str, Any] = {k: raw[k] for k in _DIM_KEYS if k in raw and raw[k] is not None}
    kw.update(rope_from_hf(raw))
    kw.update(
        method=method, head_dim=head_dim, num_hidden_layers=raw["num_hidden_layers"],
        num_target_layers=raw["num_target_layers"], target_layer_ids=raw["target_layer_ids"],
        mask_token_id=raw.get("mask_token_id", raw["vocab_size"] - 1),
        block_size=raw.get("block_size", raw.get("ttt_length", 7)),
        num_anchors=raw.get("num_anchors", 512), markov_rank=raw.get("markov_rank", 0) if method == "dspark" else 0,
        markov_head_type=raw.get("markov_head_type") or "vanilla",
        enable_confidence_head=bool(raw.get("enable_confidence_head", False)),
        confidence_head_with_markov=bool(raw.get("confidence_head_with_markov", False)),
        calibration_temperatures=raw.get(CALIB_KEY),
        ttt_length=raw.get("ttt_length", 7), step_loss_decay=raw.get("step_loss_decay", 0.8),
        target_config={k: v for k, v in raw.items() if k not in (CALIB_KEY, "dspark_frozen_from_target")},
    )
    return DrafterConfig(**kw)
