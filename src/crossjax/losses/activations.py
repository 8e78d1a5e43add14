"""Activation functions applied to the logits, mapped from torch's names and back (for export)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from crossjax.losses.torch_compat import is_torch_module

__all__ = [
    "resolve_activation",
    "activation_name_for_export",
    "activation_from_export_name",
    "identity",
    "sigmoid",
    "tanh",
    "softmax",
    "relu",
]

def identity(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.Identity``."""
    return x


def sigmoid(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.Sigmoid``."""
    return jax.nn.sigmoid(x)


def tanh(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.Tanh``."""
    return jnp.tanh(x)


def softmax(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.Softmax(dim=-1)`` over the class axis."""
    return jax.nn.softmax(x, axis=-1)


def relu(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.ReLU``."""
    return jax.nn.relu(x)


# The exact strings sentence-transformers writes (``util.fullname(nn.Sigmoid())``) in
# config_sentence_transformers.json / config.json under "activation_fn".
_EXPORT_NAMES: dict[Callable[[jnp.ndarray], jnp.ndarray], str] = {
    identity: "torch.nn.modules.linear.Identity",
    sigmoid: "torch.nn.modules.activation.Sigmoid",
    tanh: "torch.nn.modules.activation.Tanh",
    softmax: "torch.nn.modules.activation.Softmax",
    relu: "torch.nn.modules.activation.ReLU",
}
# Plain JAX functions users may pass, mapped to ours so they can be exported too.
_JAX_ALIASES: tuple[tuple[Any, Callable[[jnp.ndarray], jnp.ndarray]], ...] = (
    (jax.nn.sigmoid, sigmoid),
    (jnp.tanh, tanh),
    (jax.nn.relu, relu),
    (jax.nn.softmax, softmax),
)
_BY_CLASS_NAME: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    "identity": identity,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "softmax": softmax,
    "relu": relu,
}


def resolve_activation(activation: Any) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Turn an ``activation_fct`` (``None``, a name, a torch activation module or a JAX callable) into a
    JAX function applied to the logits before the loss, as in ST's legacy ``fit``."""
    if activation is None:
        return identity
    if isinstance(activation, str):
        key = activation.lower()
        if key not in _BY_CLASS_NAME:
            raise ValueError(
                f"Unknown activation {activation!r}; valid names are: {', '.join(_BY_CLASS_NAME)}"
            )
        return _BY_CLASS_NAME[key]
    for known in _EXPORT_NAMES:
        if activation is known:
            return known
    for alias, known in _JAX_ALIASES:
        if activation is alias:
            return known
    cls_name = type(activation).__name__
    if is_torch_module(activation) or cls_name in {"Identity", "Sigmoid", "Tanh", "Softmax", "ReLU"}:
        key = cls_name.lower()
        if key not in _BY_CLASS_NAME:
            raise ValueError(
                f"Unsupported torch activation {cls_name}; supported are torch.nn.Identity, Sigmoid, Tanh, "
                "Softmax and ReLU (or pass a JAX callable)"
            )
        if key == "softmax" and getattr(activation, "dim", None) not in (None, -1, 1):
            raise ValueError(f"Softmax(dim={activation.dim}) is not supported; use dim=-1 (the class axis)")
        return _BY_CLASS_NAME[key]
    if callable(activation):
        return activation
    raise TypeError(
        f"activation must be None, a name, a torch activation or a callable, got {type(activation)}"
    )


def activation_name_for_export(fn: Any) -> str:
    """The dotted torch class path sentence-transformers stores for this activation (``fullname(...)``),
    e.g. ``"torch.nn.modules.activation.Sigmoid"``, so exported models load with the same activation."""
    resolved = resolve_activation(fn)
    for known, export_name in _EXPORT_NAMES.items():
        if resolved is known:
            return export_name
    raise ValueError(
        f"Cannot export custom activation {fn!r}: only identity, sigmoid, tanh, softmax and relu map to "
        "torch classes sentence-transformers can load"
    )


def activation_from_export_name(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Inverse of :func:`activation_name_for_export`; also accepts short paths like ``torch.nn.Sigmoid``."""
    if not isinstance(name, str):
        raise TypeError(f"expected a dotted class path string, got {type(name)}")
    key = name.rsplit(".", 1)[-1].lower()
    if ("." in name and not name.startswith("torch.")) or key not in _BY_CLASS_NAME:
        raise ValueError(
            f"Unsupported activation {name!r}; supported are: {', '.join(_EXPORT_NAMES.values())}"
        )
    return _BY_CLASS_NAME[key]
