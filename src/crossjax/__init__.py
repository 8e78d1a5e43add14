"""crossjax: train cross-encoders in JAX/Flax, export plain Hugging Face PyTorch models.

The public names are imported lazily so that ``import crossjax`` stays cheap and never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CrossEncoder": "crossjax.cross_encoder",
    "InputExample": "crossjax.data",
    "DataLoader": "crossjax.data",
    "FlaxAutoModelForSequenceClassification": "crossjax.models",
    "CrossEncoderTrainer": "crossjax.trainer",
    "CrossEncoderTrainingArguments": "crossjax.training_args",
    "BatchSamplers": "crossjax.training_args",
    "CrossEncoderModelCardData": "crossjax.model_card",
    "LoggingHandler": "crossjax.runtime",
}

_SUBMODULES = ("losses", "evaluation", "util", "readers")

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:  # ``import crossjax; crossjax.losses`` as sentence-transformers' package allows
        return importlib.import_module(f"crossjax.{name}")
    raise AttributeError(f"module 'crossjax' has no attribute {name!r}")
