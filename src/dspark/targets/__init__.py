"""The target adapter: any Hugging Face causal LM, seen through the features drafters need."""

from dspark.targets.adapter import TargetFeatures, TargetModel, load_target
from dspark.targets.layer_ids import default_layer_ids, validate_layer_ids

__all__ = ["TargetModel", "TargetFeatures", "load_target", "default_layer_ids", "validate_layer_ids"]
