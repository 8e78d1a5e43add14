"""``FlaxAutoModelForSequenceClassification``: dispatch on ``config.model_type`` to a family.

Families register themselves by being a module in ``crossjax.models`` that defines a
:class:`FlaxPreTrainedModel` subclass with ``model_types``: adding an architecture is adding one file.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from functools import cache
from typing import Any

import jax.numpy as jnp

from crossjax.models import checkpoints
from crossjax.models.base import FlaxPreTrainedModel, pretrained_options
from crossjax.models.checkpoints import CheckpointError, UnknownModelTypeError

_NOT_FAMILIES = {"auto", "base", "checkpoints", "export", "layers", "params"}


@cache
def model_registry() -> dict[str, type[FlaxPreTrainedModel]]:
    import crossjax.models as package

    registry: dict[str, type[FlaxPreTrainedModel]] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in _NOT_FAMILIES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"crossjax.models.{info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, FlaxPreTrainedModel) and cls.__module__ == module.__name__:
                for model_type in cls.model_types:
                    registry[model_type] = cls
    return registry


def supported_model_types() -> list[str]:
    return sorted(model_registry())


def _unsupported(model_type: Any) -> CheckpointError:
    return CheckpointError(
        f"model_type {model_type!r} is not supported by crossjax; supported: {', '.join(supported_model_types())}"
    )


def model_class_for(config) -> type[FlaxPreTrainedModel]:
    model_type = getattr(config, "model_type", None)
    try:
        return model_registry()[model_type]
    except KeyError:
        raise _unsupported(model_type) from None


def load_config(directory: str | os.PathLike, num_labels: int | None = None, **config_kwargs: Any):
    """The checkpoint's transformers config; a model_type that neither transformers nor crossjax knows is
    reported with the list of supported ones."""
    try:
        return checkpoints.load_config(directory, num_labels=num_labels, **config_kwargs)
    except UnknownModelTypeError as e:
        if e.model_type not in model_registry():
            raise _unsupported(e.model_type) from e
        raise


class FlaxAutoModelForSequenceClassification:
    """Like transformers' Auto class: ``from_pretrained`` (a directory or hub id) and ``from_config``."""

    def __init__(self) -> None:
        raise OSError("Use FlaxAutoModelForSequenceClassification.from_pretrained(...) or .from_config(...)")

    @staticmethod
    def from_config(config, *, dtype=jnp.float32, seed: int = 0, scan_layers: bool = True) -> FlaxPreTrainedModel:
        return model_class_for(config).from_config(config, dtype=dtype, seed=seed, scan_layers=scan_layers)

    @staticmethod
    def from_pretrained(
        name_or_path: str | os.PathLike,
        num_labels: int | None = None,
        *,
        config=None,
        dtype=None,
        seed: int = 0,
        scan_layers: bool = True,
        output_loading_info: bool = False,
        config_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        """Load a Hugging Face checkpoint directory (or hub id) into the matching crossjax family, in eval mode
        (dropout off) as transformers returns it; ``dtype`` (or ``torch_dtype``) is the compute dtype, float32 by
        default (parameters stay float32).

        The keywords are transformers': ``config=`` (a config object or path) replaces the checkpoint's config;
        other keywords that name config attributes override it (``hidden_dropout_prob=0.0``), and so do
        ``num_labels`` and ``config_kwargs`` (sentence-transformers' spelling); hub options (``revision``,
        ``token``, ``cache_dir``, ...) go to the download. A keyword that is none of those is a TypeError, and
        PyTorch-only loading options (``device_map``, ``attn_implementation``, ...) are refused by name. A head
        of another size than the checkpoint's is an error unless ``ignore_mismatched_sizes=True`` (then it is
        re-initialised, with a warning), as in transformers.
        """
        where = "FlaxAutoModelForSequenceClassification.from_pretrained"
        directory, config, dtype, ignore_mismatched_sizes = pretrained_options(
            where, name_or_path, config, num_labels, config_kwargs, dtype, kwargs, load=load_config
        )
        return model_class_for(config).from_checkpoint(
            directory, config, dtype, seed, scan_layers, output_loading_info, ignore_mismatched_sizes
        )
