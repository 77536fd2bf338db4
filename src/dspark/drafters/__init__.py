"""The drafter family behind one interface (see `base.py`); the registry is a plain dict."""

from __future__ import annotations

from torch import nn

from dspark.drafters.base import BlockScores, ContextUpdate, Drafter, Proposal
from dspark.drafters.config import DrafterConfig, config_from_target
from dspark.drafters.dspark import DSparkDrafter
from dspark.drafters.eagle3 import Eagle3Drafter
from dspark.drafters.mtp import MTPDrafter

DRAFTERS: dict[str, type[nn.Module]] = {
    "dspark": DSparkDrafter,
    "dflash": DSparkDrafter,  # the same backbone with both heads off
    "eagle3": Eagle3Drafter,
    "mtp": MTPDrafter,
}


def build_drafter(config: DrafterConfig) -> nn.Module:
    """A freshly initialised drafter for `config` (embedding/LM head still to copy from the target)."""
    return DRAFTERS[config.method](config)


__all__ = ["DRAFTERS", "build_drafter", "DrafterConfig", "config_from_target", "Drafter", "Proposal",
           "ContextUpdate", "BlockScores", "DSparkDrafter", "Eagle3Drafter", "MTPDrafter"]
