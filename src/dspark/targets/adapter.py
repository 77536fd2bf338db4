"""Load any Hugging Face causal LM and expose what drafters consume.

A `TargetModel` wraps a frozen `transformers` causal LM (never a vendored copy) and gives:
* `features(...)`: the raw outputs of the decoder layers in `target_layer_ids`, concatenated in list
  order (`[B, S, n·d]`), and the final-normed last hidden state (`[B, S, d]`), optionally logits;
* `embed_tokens` / `lm_head`: the frozen input embedding and LM head that drafters share;
* `fingerprint()`: a hash of the config and (a sample of) every weight, used to check that a cache or
  a drafter belongs to this exact target, not merely to a path string.

Data flow: prompts -> target.features -> drafter (training) / decode.SpeculativeDecoder (inference).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dspark.errors import CheckpointError, UnsupportedModelError
from dspark.targets.layer_ids import default_layer_ids, validate_layer_ids

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UnsupportedModelError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[dtype]


@dataclass
class TargetFeatures:
    """Target outputs over a token sequence."""

    context_features: torch.Tensor  # [B, S, n·d] raw layer outputs at target_layer_ids
    last_hidden: torch.Tensor  # [B, S, d] final-normed last hidden state
    logits: torch.Tensor | None = None  # [B, S, V]
    past_key_values: Any = None


def stack_layer_features(hidden_states: tuple[torch.Tensor, ...], layer_ids: list[int]) -> torch.Tensor:
    """HF `hidden_states` (embeddings, layer 0, ..., final-normed) -> `[B, S, n·d]` in list order."""
    return torch.cat([hidden_states[0 if i == -1 else i + 1] for i in layer_ids], dim=-1)


def cache_keyword(model: nn.Module) -> str:
    """The name of the KV-cache argument of `model.forward`: ``cache`` (transformers >= 5.2x) or the
    older ``past_key_values`` (deprecated there, removed in 5.40). The one place that knows."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


class TargetModel:
    """A frozen HF causal LM plus the feature interface drafters need."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, path: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.path = path
        self.config = model.config
        text_config = self.config.get_text_config() if hasattr(self.config, "get_text_config") else self.config
        self.text_config = text_config
        for key in ("hidden_size", "num_hidden_layers", "vocab_size"):
            if getattr(text_config, key, None) is None:
                raise UnsupportedModelError(f"target config at {path or '<memory>'} has no {key!r}; not a decoder LM")
        self.hidden_size = int(text_config.hidden_size)
        self.num_layers = int(text_config.num_hidden_layers)
        self.vocab_size = int(text_config.vocab_size)
        if model.get_input_embeddings() is None or model.get_output_embeddings() is None:
            raise UnsupportedModelError(f"target {path!r} exposes no input embedding or LM head")
        self.cache_keyword = cache_keyword(model)

    # -- frozen pieces shared with drafters ---------------------------------------------------------
    @property
    def embed_tokens(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    def validate_layer_ids(self, layer_ids: list[int]) -> list[int]:
        return validate_layer_ids(layer_ids, self.num_layers)

    def default_layer_ids(self, num_layers: int = 5) -> list[int]:
        return default_layer_ids(self.num_layers, num_layers)

    def token_id(self, name: str) -> int | None:
        """`eos_token_id` etc. from the tokenizer or the config (first id if a list)."""
        value = getattr(self.tokenizer, name, None) if self.tokenizer is not None else None
        if value is None:
            value = getattr(self.config, name, None)
            gen = getattr(self.model, "generation_config", None)
            if value is None and gen is not None:
                value = getattr(gen, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        return None if value is None else int(value)

    def stop_token_ids(self) -> set[int]:
        """Every id that ends a generation: all EOS ids of the generation config, the config and the
        tokenizer, plus the chat template's end-of-turn token when the vocabulary has one."""
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        for source in (gen, self.config, self.tokenizer):
            value = getattr(source, "eos_token_id", None) if source is not None else None
            ids.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None)
        if self.tokenizer is not None:
            vocab = self.tokenizer.get_vocab()
            ids.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
        return ids

    # -- forward --------------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S]
        layer_ids: list[int] | None,
        attention_mask: torch.Tensor | None = None,  # [B, S_past + S] 1 = attend
        position_ids: torch.Tensor | None = None,  # [B, S]
        past_key_values: Any = None,
        use_cache: bool = False,
        with_logits: bool = True,
    ) -> TargetFeatures:
        """One forward returning features at `layer_ids` (None: skip), the last hidden and logits."""
        cache_arg = {self.cache_keyword: past_key_values} if past_key_values is not None else {}
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            output_hidden_states=True,
            return_dict=True,
            **cache_arg,
        )
        hidden = getattr(out, "hidden_states", None)
        if hidden is None or len(hidden) != self.num_layers + 1:
            raise UnsupportedModelError(
                f"target {type(self.model).__name__} does not return per-layer hidden states "
                f"(got {None if hidden is None else len(hidden)}, expected {self.num_layers + 1})"
            )
        feats = stack_layer_features(hidden, layer_ids) if layer_ids is not None else hidden[-1][..., :0]
        return TargetFeatures(feats, hidden[-1], out.logits if with_logits else None, output_cache(out))

    def features(self, input_ids: torch.Tensor, layer_ids: list[int],
                 attention_mask: torch.Tensor | None = None, with_logits: bool = False) -> TargetFeatures:
        """Teacher-forced features over whole sequences (training, caching, calibration)."""
        layer_ids = self.validate_layer_ids(layer_ids)
        return self.forward(input_ids, layer_ids, attention_mask=attention_mask, with_logits=with_logits)

    def fingerprint(self) -> str:
        """sha256 over the config and, per parameter, its name, shape and a strided sample of values."""
        h = hashlib.sha256()
        cfg = {k: v for k, v in self.config.to_dict().items() if k not in ("transformers_version", "_name_or_path", "dtype", "torch_dtype")}
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        for name, p in sorted(self.model.state_dict().items()):
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            # rounded to bf16 so a checkpoint loaded in fp32 or bf16 fingerprints the same
            sample = flat[::step][:4096].to(torch.bfloat16).float().cpu().contiguous()
            h.update(f"{name}:{tuple(p.shape)}".encode())
            h.update(sample.numpy().tobytes())
        return h.hexdigest()


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") != 1


def load_target(path: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
                local_files_only: bool | None = None, attn_implementation: str | None = "sdpa") -> TargetModel:
    """Load a causal LM from a local directory (or a hub id, for users with network access).

    The tokenizer is loaded when the directory has one; a target without a tokenizer works on token ids.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    name = str(path)
    local = Path(name).expanduser()
    if _looks_like_path(name):
        if not local.exists():
            raise CheckpointError(f"target path {name!r} does not exist")
        if not local.is_dir() or not (local / "config.json").is_file():
            raise CheckpointError(f"target path {name!r} is not a Hugging Face model directory (no config.json)")
        name = str(local)
        local_files_only = True if local_files_only is None else local_files_only
    try:
        config = AutoConfig.from_pretrained(name, local_files_only=bool(local_files_only))
    except (ValueError, KeyError) as exc:
        raise UnsupportedModelError(f"cannot read the target config at {name!r}: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot load target {name!r}: {exc}") from exc
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype), "local_files_only": bool(local_files_only)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(name, config=config, **kwargs)
    except ValueError as exc:
        if "attn_implementation" in kwargs and "attention" in str(exc).lower():
            kwargs.pop("attn_implementation")
            model = AutoModelForCausalLM.from_pretrained(name, config=config, **kwargs)
        else:
            raise UnsupportedModelError(
                f"target {name!r} (model_type={getattr(config, 'model_type', '?')!r}) is not a supported causal LM: {exc}"
            ) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot load target weights from {name!r}: {exc}") from exc
    tokenizer = None
    has_tok = not local.exists() or any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    if has_tok:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=bool(local_files_only))
        except Exception as exc:  # a broken tokenizer should not stop id-level use
            log.warning("no usable tokenizer at %s (%s); working on token ids", name, exc)
    model.to(device)
    return TargetModel(model, tokenizer, path=name)
