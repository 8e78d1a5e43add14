"""Recognising torch objects (modules, tensors) without importing torch: crossjax never needs torch at runtime,
but users port sentence-transformers scripts that pass ``nn.Sigmoid()`` or ``torch.tensor(4.0)``."""

from __future__ import annotations

import functools
import importlib.util
import inspect
import types
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
    if hasattr(value, "detach"):  # a torch tensor (bfloat16 too: numpy has no such dtype)
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


_JAX_ROOTS = ("jax", "jaxlib", "flax", "optax", "crossjax")


def _framework_of(value: Any) -> str | None:
    """"jax" or "torch" for a module, function or object of either library; None for anything else."""
    name = getattr(value, "__name__", "") if isinstance(value, types.ModuleType) else ""
    name = name or getattr(value, "__module__", None) or type(value).__module__ or ""
    root = name.split(".")[0]
    return "jax" if root in _JAX_ROOTS else "torch" if root == "torch" else None


def _named_frameworks(fn: Any, depth: int = 0) -> set[str]:
    """The libraries (jax / torch) that ``fn``'s code names: its globals and closure, and those of the plain
    Python functions it calls (two levels)."""
    if isinstance(fn, functools.partial):
        fn = fn.func
    if not isinstance(fn, types.FunctionType):
        call = next((c.__dict__["__call__"] for c in type(fn).__mro__ if "__call__" in c.__dict__), None)
        if not isinstance(call, types.FunctionType) or type(fn).__module__ == "builtins":
            found = _framework_of(fn)
            return {found} if found else set()
        fn = call
    try:
        names = inspect.getclosurevars(fn)
    except (TypeError, ValueError):
        return set()
    found: set[str] = set()
    for value in (*names.globals.values(), *names.nonlocals.values()):
        framework = _framework_of(value)
        if framework:
            found.add(framework)
        elif isinstance(value, types.FunctionType) and depth < 2:
            found |= _named_frameworks(value, depth + 1)
    return found


def names_torch(fn: Any) -> bool:
    """Whether a plain Python function's code names torch (``lambda x: torch.sigmoid(x) * 2``): under JAX's
    tracing (training) it would be handed a tracer, which torch refuses with a message naming neither."""
    return "torch" in _named_frameworks(fn)


def runs_on_torch(fn: Any) -> bool:
    """Whether ``predict`` hands the activation ``fn`` (not one of crossjax's own) a torch tensor, as
    sentence-transformers does, rather than a JAX array. torch's modules and functions take tensors; a function
    whose code names JAX (``jnp``, ``jax.nn``, a crossjax activation) takes a JAX array; one that names torch, or
    neither (``lambda x: (x - x.mean()) / x.std()``) takes a tensor when torch is installed: its array methods
    then mean what they mean in sentence-transformers (torch's ``std`` is unbiased, JAX's is not)."""
    if is_torch_module(fn) or is_torch_function(fn):
        return True
    named = _named_frameworks(fn)
    if "jax" in named and "torch" not in named:
        return False
    if _framework_of(fn) == "jax":
        return False
    return importlib.util.find_spec("torch") is not None
