"""Flax nnx encoders with Hugging Face parity, one family per file."""

from crossjax.models.auto import FlaxAutoModelForSequenceClassification, supported_model_types
from crossjax.models.hf_io import CheckpointError, FlaxPreTrainedModel, ParamRule

__all__ = [
    "CheckpointError",
    "FlaxAutoModelForSequenceClassification",
    "FlaxPreTrainedModel",
    "ParamRule",
    "supported_model_types",
]
