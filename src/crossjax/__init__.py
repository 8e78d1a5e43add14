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
    "TrainingPreempted": "crossjax.runtime",
    "mine_hard_negatives": "crossjax.util",
}

_SUBMODULES = ("losses", "evaluation", "util", "readers", "cross_encoder")

# sentence-transformers 6.2's module paths with the package renamed: its cross-encoder package's modules (crossjax
# keeps them as top-level modules) and the homes its deprecation warnings now send the shared classes to
_ST_PATHS = {
    "crossjax.cross_encoder.trainer": "crossjax.trainer",
    "crossjax.cross_encoder.training_args": "crossjax.training_args",
    "crossjax.cross_encoder.model_card": "crossjax.model_card",
    "crossjax.cross_encoder.model": "crossjax.cross_encoder",
    "crossjax.cross_encoder.CrossEncoder": "crossjax.cross_encoder",  # the module of sentence-transformers < 4
    "crossjax.cross_encoder.losses": "crossjax.losses",
    "crossjax.cross_encoder.evaluation": "crossjax.evaluation",
    "crossjax.sentence_transformer": None,
    "crossjax.sentence_transformer.training_args": "crossjax.training_args",
    "crossjax.sentence_transformer.evaluation": "crossjax.evaluation",
    "crossjax.base": None,
    "crossjax.base.sampler": "crossjax.training_args",
    "crossjax.base.evaluation": "crossjax.evaluation",
    "crossjax.base.evaluation.sequential": "crossjax.evaluation",
}

__all__ = ["__version__", *_LAZY]

from crossjax.st_paths import alias_paths  # noqa: E402 - after the names it does not need

alias_paths(_ST_PATHS)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:  # ``import crossjax; crossjax.losses`` as sentence-transformers' package allows
        return importlib.import_module(f"crossjax.{name}")
    raise AttributeError(f"module 'crossjax' has no attribute {name!r}")
