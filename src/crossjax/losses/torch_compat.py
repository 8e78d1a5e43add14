"""Recognising torch objects (modules, tensors) without importing torch: crossjax never needs torch at runtime,
but users port sentence-transformers scripts that pass ``nn.Sigmoid()`` or ``torch.tensor(4.0)``."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_torch_module(obj: Any) -> bool:
    """A ``torch.nn.Module`` instance, detected without importing torch."""
    return is_torch_module_class(type(obj))


def is_torch_module_class(cls: type) -> bool:
    """A subclass of ``torch.nn.Module``, detected without importing torch."""
    return any(base.__module__.startswith("torch.") and base.__name__ == "Module" for base in cls.__mro__)


def is_torch_function(obj: Any) -> bool:
    """A function of torch's (``torch.sigmoid``, ``torch.nn.functional.mse_loss``): it takes torch tensors,
    never the JAX arrays crossjax computes with."""
    module = getattr(obj, "__module__", None) or ""
    return not isinstance(obj, type) and (module == "torch" or module.startswith("torch."))


def tensor_to_numpy(value: Any) -> np.ndarray:
    """A torch tensor, numpy array or number as a float32 numpy array."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float32)
