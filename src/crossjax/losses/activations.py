"""Activation functions applied to the logits, mapped from torch's names and back (for export)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossjax.losses.torch_compat import is_torch_function, is_torch_module, names_torch

__all__ = [
    "resolve_activation",
    "activation_name_for_export",
    "is_known_activation",
    "host_form",
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


def _softplus(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.Softplus()``: linear above its threshold 20, as torch computes it."""
    return jnp.where(x > 20.0, x, jax.nn.softplus(x))


def _leaky_relu(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.LeakyReLU()``: at 0 its gradient is the slope, as torch's (``jax.nn.leaky_relu`` takes 1)."""
    return jnp.where(x > 0, x, 0.01 * x)


def _hardtanh(x: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.Hardtanh()``: gradient 1 strictly inside (-1, 1), else 0, as torch's (``jnp.clip`` gives 0.5 at
    the edges)."""
    return jnp.where((x > -1.0) & (x < 1.0), x, jax.lax.stop_gradient(jnp.clip(x, -1.0, 1.0)))


# Every torch activation class sentence-transformers can save by its dotted path (``util.fullname``) and
# re-create with no arguments, with its JAX form and the constructor defaults an instance must keep to be
# that function (the saved path does not record arguments). ``identity`` lives in torch.nn.modules.linear.
_TORCH_ACTIVATIONS: dict[str, tuple[Callable[[jnp.ndarray], jnp.ndarray], dict[str, tuple]]] = {
    "Identity": (identity, {}),
    "Sigmoid": (sigmoid, {}),
    "Tanh": (tanh, {}),
    "Softmax": (softmax, {"dim": (None, -1, 1)}),
    "ReLU": (relu, {}),
    "LeakyReLU": (_leaky_relu, {"negative_slope": (0.01,)}),
    "LogSigmoid": (jax.nn.log_sigmoid, {}),
    "Softplus": (_softplus, {"beta": (1, 1.0), "threshold": (20, 20.0)}),
    "GELU": (lambda x: jax.nn.gelu(x, approximate=False), {"approximate": ("none",)}),
    "Hardtanh": (_hardtanh, {"min_val": (-1, -1.0), "max_val": (1, 1.0)}),
    "SiLU": (jax.nn.silu, {}),
    "ELU": (jax.nn.elu, {"alpha": (1, 1.0)}),
    "CELU": (jax.nn.celu, {"alpha": (1, 1.0)}),
    "SELU": (jax.nn.selu, {}),
    "Mish": (jax.nn.mish, {}),
    "Softsign": (jax.nn.soft_sign, {}),
    "Hardsigmoid": (jax.nn.hard_sigmoid, {}),
    "Hardswish": (jax.nn.hard_swish, {}),
    "ReLU6": (jax.nn.relu6, {}),
    "Tanhshrink": (lambda x: x - jnp.tanh(x), {}),
    "LogSoftmax": (lambda x: jax.nn.log_softmax(x, axis=-1), {"dim": (None, -1, 1)}),
    "Softmin": (lambda x: jax.nn.softmax(-x, axis=-1), {"dim": (None, -1, 1)}),
}
for _name, (_fn, _) in _TORCH_ACTIVATIONS.items():
    if _fn.__name__ == "<lambda>":
        _fn.__name__ = _fn.__qualname__ = _name.lower()
_BY_CLASS_NAME: dict[str, Callable[[jnp.ndarray], jnp.ndarray]] = {
    name.lower(): fn for name, (fn, _) in _TORCH_ACTIVATIONS.items()
}
# Activations that normalise over an axis (a vector's entries depend on each other), not element by element.
ROW_NORMALISING: tuple[Callable[[jnp.ndarray], jnp.ndarray], ...] = (
    softmax, _BY_CLASS_NAME["logsoftmax"], _BY_CLASS_NAME["softmin"]
)


def is_row_normalising(fn: Any) -> bool:
    return any(fn is known for known in ROW_NORMALISING)
# The exact strings sentence-transformers writes (``util.fullname(nn.Sigmoid())``) in
# config_sentence_transformers.json / config.json under "activation_fn".
_EXPORT_NAMES: dict[Callable[[jnp.ndarray], jnp.ndarray], str] = {
    fn: f"torch.nn.modules.{'linear' if name == 'Identity' else 'activation'}.{name}"
    for name, (fn, _) in _TORCH_ACTIVATIONS.items()
}
# Plain JAX functions users may pass, mapped to ours so they can be exported too.
_JAX_ALIASES: tuple[tuple[Any, Callable[[jnp.ndarray], jnp.ndarray]], ...] = (
    (jax.nn.sigmoid, sigmoid),
    (jnp.tanh, tanh),
    (jax.nn.relu, relu),
    (jax.nn.softmax, softmax),
)
# torch's functional forms (``torch.sigmoid``, ``torch.nn.functional.gelu`` ...) by name, with default arguments.
_TORCH_FUNCTIONS: dict[str, str] = {
    "sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "leaky_relu": "leakyrelu", "log_sigmoid": "logsigmoid",
    "softplus": "softplus", "gelu": "gelu", "hardtanh": "hardtanh", "silu": "silu", "elu": "elu", "celu": "celu",
    "selu": "selu", "mish": "mish", "softsign": "softsign", "hardsigmoid": "hardsigmoid",
    "hardswish": "hardswish", "relu6": "relu6", "tanhshrink": "tanhshrink",
    # torch picks dim=1 of a 2-D input when none is given (with a warning): the labels axis of the logits
    "softmax": "softmax", "log_softmax": "logsoftmax", "softmin": "softmin",
}  # fmt: skip


def _from_torch_module(activation: Any) -> Callable[[jnp.ndarray], jnp.ndarray]:
    cls_name = type(activation).__name__
    if cls_name not in _TORCH_ACTIVATIONS:
        raise ValueError(
            f"Unsupported torch activation {cls_name}; supported are torch.nn.{', torch.nn.'.join(_TORCH_ACTIVATIONS)}"
            " (or pass a JAX callable)"
        )
    fn, defaults = _TORCH_ACTIVATIONS[cls_name]
    for attr, allowed in defaults.items():
        value = getattr(activation, attr, allowed[0])
        if value not in allowed:
            raise ValueError(
                f"{cls_name}({attr}={value!r}) is not supported: a saved model records only the class, which "
                f"sentence-transformers re-creates with {attr}={allowed[0]!r}; pass a JAX callable that computes it"
            )
    return fn


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
    if is_torch_module(activation) or type(activation).__name__ in {"Identity", "Sigmoid", "Tanh", "Softmax", "ReLU"}:
        return _from_torch_module(activation)
    if is_torch_function(activation):
        name = getattr(activation, "__name__", "")
        if name in _TORCH_FUNCTIONS:
            return _BY_CLASS_NAME[_TORCH_FUNCTIONS[name]]
        raise ValueError(
            f"activation {getattr(activation, '__module__', '')}.{name} is a torch function, but crossjax's "
            "logits are JAX arrays: pass a torch.nn activation module, its name, or a JAX function"
        )
    if callable(activation):
        return activation
    raise TypeError(
        f"activation must be None, a name, a torch activation or a callable, got {type(activation)}"
    )


def resolve_training_activation(activation: Any) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """:func:`resolve_activation` for training, where the activation is traced by ``jax.jit``: a Python
    function whose code uses torch is refused by name (inside the trace torch would fail on a JAX tracer)."""
    resolved = resolve_activation(activation)
    if resolved is activation and not is_known_activation(resolved) and names_torch(activation):
        raise ValueError(
            f"activation {getattr(activation, '__name__', activation)!r} uses torch, but training computes the logits "
            "as JAX arrays (traced by jax.jit): pass a torch.nn activation module, its name, or a JAX function "
            "(e.g. lambda x: jax.nn.sigmoid(x) * 2)"
        )
    return resolved


def resolve_scoring_activation(activation: Any) -> Callable:
    """``predict``'s activation: :func:`resolve_activation`'s JAX form where there is one; a torch module or
    function without one (``Softmax(dim=0)``, ``GELU(approximate="tanh")``, a user's ``nn.Module``) is kept as it
    is, and predict runs it on torch tensors, as sentence-transformers does."""
    try:
        return resolve_activation(activation)
    except ValueError:
        if is_torch_module(activation) or is_torch_function(activation):
            return activation
        raise


def is_known_activation(fn: Any) -> bool:
    """One of crossjax's own (elementwise or row-wise) activations, which every torch activation maps to."""
    return any(fn is known for known in _EXPORT_NAMES)


def _host_sigmoid(x: np.ndarray) -> np.ndarray:
    """``sigmoid`` in numpy, float32 rounded from float64 (torch's and JAX's are up to two float32 steps off),
    without overflow (``exp`` of non-positive numbers only)."""
    wide = np.asarray(x, dtype=np.float64)
    with np.errstate(under="ignore"):  # sigmoid(-1e4) is 0, as it should be
        small = np.exp(-np.abs(wide))
        return (np.where(wide >= 0, 1.0, small) / (1.0 + small)).astype(np.float32)


# numpy forms of the activations ``predict`` applies by default (Sigmoid for one label, Identity otherwise): an
# eager JAX op compiles a program of its own, ~30 ms on the first call of a process, more than the numpy runs.
_HOST_FORMS: dict[Callable, Callable[[np.ndarray], np.ndarray]] = {identity: lambda x: x, sigmoid: _host_sigmoid}


def host_form(fn: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """The numpy form of one of crossjax's activations where it has one, else None."""
    return next((host for known, host in _HOST_FORMS.items() if fn is known), None)


def activation_name_for_export(fn: Any, strict: bool = True) -> str:
    """The dotted torch class path sentence-transformers stores for this activation (``fullname(...)``),
    e.g. ``"torch.nn.modules.activation.Sigmoid"``, so exported models load with the same activation. A custom
    callable is an error, or with ``strict=False`` its own dotted path, which neither library imports on
    loading (both then warn and take the default, as sentence-transformers does with what it saved)."""
    resolved = resolve_scoring_activation(fn)  # a torch module without a JAX form stays itself: its path below
    for known, export_name in _EXPORT_NAMES.items():
        if resolved is known:
            return export_name
    if not strict:
        module = getattr(fn, "__module__", None) or type(fn).__module__
        return f"{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
    raise ValueError(
        f"Cannot export custom activation {fn!r}: only the torch.nn activations "
        f"({', '.join(_TORCH_ACTIVATIONS)}) map to torch classes sentence-transformers can load"
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
