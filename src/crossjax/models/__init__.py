"""Flax nnx encoders with Hugging Face parity, one family per file."""

from crossjax.models.auto import FlaxAutoModelForSequenceClassification, supported_model_types
from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.checkpoints import CheckpointError
from crossjax.models.params import ParamRule

__all__ = [
    "CheckpointError",
    "FlaxAutoModelForSequenceClassification",
    "FlaxPreTrainedModel",
    "ParamRule",
    "supported_model_types",
]
