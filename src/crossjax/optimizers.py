"""The optimizers Hugging Face Trainer's ``optim`` names besides AdamW: torch's SGD, Adagrad and RMSprop and
transformers' Adafactor, step for step, as optax gradient transformations.

Each transformation computes the optimizer's direction without the learning rate; the step chains it as
Hugging Face's ``Trainer.create_optimizer`` builds the torch optimizer: gradient clipping first, weight decay on
the parameters its rule decays (coupled, ``g + wd * p``, for SGD, Adagrad and RMSprop, as torch's
``weight_decay`` is; decoupled, ``p - lr * wd * p``, for Adafactor), then the scheduled learning rate. Their
options (``momentum``, ``alpha``, ...) are static: changing them compiles another step; the learning rate,
weight decay and clipping norm stay traced numbers.

AdamW itself lives in :mod:`crossjax.training` (its state predates this module: checkpoints keep restoring).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

logger = logging.getLogger("crossjax")

__all__ = ["OPTIMIZERS", "optimizer_key", "optimizer_options", "direction"]

Options = tuple[tuple[str, Any], ...]

# Hugging Face's ``optim`` names -> crossjax's optimizer key.
OPTIMIZERS: dict[str, str] = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw",
    "adamw_hf": "adamw",
    "adamw": "adamw",
    "sgd": "sgd",
    "adagrad": "adagrad",
    "rmsprop": "rmsprop",
    "adafactor": "adafactor",
}
# Each optimizer's options and torch's (transformers') defaults; transformers' ``optim_args`` reads these
# keys for each (``trainer_optimizer._get_sgd`` ...), Adafactor's it fixes (``scale_parameter``/``relative_step``
# False, the rest torch's defaults). ``weight_decay`` is the parameter groups' in both trainers: not an option.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {},
    "sgd": {"momentum": 0.0, "dampening": 0.0, "nesterov": False},
    "adagrad": {"lr_decay": 0.0, "eps": 1e-10, "initial_accumulator_value": 0.0},
    "rmsprop": {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False},
    "adafactor": {"eps": (1e-30, 1e-3), "clip_threshold": 1.0, "decay_rate": -0.8, "scale_parameter": False},
}
_BOOLEAN = ("nesterov", "centered", "scale_parameter")
# What transformers' optim_args parser reads for each optimizer (the rest of a string it ignores).
_OPTIM_ARGS_KEYS = {
    "sgd": ("momentum", "dampening", "weight_decay", "nesterov"),
    "adagrad": ("lr_decay", "weight_decay", "eps"),
    "rmsprop": ("momentum", "alpha", "eps", "weight_decay", "centered"),
}


def optimizer_key(name: Any) -> str:
    """crossjax's key for a Hugging Face ``optim`` value (a name or ``OptimizerNames`` member)."""
    name = getattr(name, "value", name)
    if name not in OPTIMIZERS:
        raise ValueError(
            f"optim={name!r} is not supported: crossjax implements {sorted(OPTIMIZERS)} (the 8-bit, paged, "
            "low-rank and fused-kernel optimizers are PyTorch libraries)"
        )
    return OPTIMIZERS[name]


def parse_optim_args(optim_args: str | None) -> dict[str, str]:
    """transformers' ``optim_args`` string, ``"momentum=0.9,nesterov=True"``, as a dict of strings."""
    if not optim_args:
        return {}
    parsed = {}
    for mapping in optim_args.replace(" ", "").split(","):
        if mapping.count("=") != 1:
            raise ValueError(f"optim_args={optim_args!r}: each item must be key=value, got {mapping!r}")
        key, value = mapping.split("=")
        parsed[key] = value
    return parsed


def optimizer_options(key: str, settings: Mapping[str, Any] | None = None) -> Options:
    """The static options of optimizer ``key`` from ``settings`` (numbers, or the strings of ``optim_args``),
    checked as torch checks them; a setting the optimizer does not take is a ``ValueError`` naming it."""
    defaults = _DEFAULTS[key]
    settings = dict(settings or {})
    if settings.pop("weight_decay", None) is not None:
        logger.warning(
            "weight_decay in the optimizer's own arguments has no effect: as in sentence-transformers and Hugging "
            "Face (torch parameter groups), the run's weight_decay (fit's argument, the trainer's training "
            "argument) decays the weights, and norms and biases get 0"
        )
    unknown = sorted(set(settings) - set(defaults))
    if unknown:
        raise ValueError(f"optimizer {key!r} does not take {unknown}; it takes {sorted(defaults) or 'none'}")
    options = dict(defaults)
    for name, value in settings.items():
        if name in _BOOLEAN:
            if isinstance(value, str):
                value = value.lower() in ("true", "1", "yes")
            if not isinstance(value, bool):
                raise ValueError(f"optimizer option {name!r} must be True or False, got {value!r}")
        elif name == "eps" and key == "adafactor":
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ValueError(f"Adafactor's eps must be a pair (eps1, eps2), got {value!r}")
            value = (float(value[0]), float(value[1]))
        else:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"optimizer option {name!r} must be a number, got {value!r}") from None
        options[name] = value
    if key in ("sgd", "rmsprop") and options["momentum"] < 0:
        raise ValueError(f"Invalid momentum value: {options['momentum']}")
    if key == "sgd" and options["nesterov"] and (options["momentum"] <= 0 or options["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if key == "adafactor" and options["scale_parameter"]:
        raise ValueError(
            "Adafactor's scale_parameter=True is not supported (Hugging Face's Trainer turns it off): pass False"
        )
    if key == "rmsprop" and options["alpha"] < 0:
        raise ValueError(f"Invalid alpha value: {options['alpha']}")
    if key in ("adagrad", "rmsprop") and options["eps"] < 0:
        raise ValueError(f"Invalid epsilon value: {options['eps']}")
    if key == "adagrad" and (options["lr_decay"] < 0 or options["initial_accumulator_value"] < 0):
        raise ValueError("Adagrad's lr_decay and initial_accumulator_value must be >= 0")
    return tuple(sorted(options.items()))


def optim_args_options(key: str, optim_args: str | None, optim: str | None = None) -> Options:
    """Hugging Face's ``optim_args`` for optimizer ``key`` (given as ``optim``), read as its Trainer reads them:
    the keys it knows for SGD, Adagrad and RMSprop; a key it would ignore (and AdamW's and Adafactor's, which it
    ignores whole) is refused here, so a setting never silently does nothing."""
    parsed = parse_optim_args(optim_args)
    if not parsed:
        return optimizer_options(key)
    known = _OPTIM_ARGS_KEYS.get(key, ())
    ignored = sorted(set(parsed) - set(known))
    if ignored:
        if known:
            hint = f"it reads {list(known)}"
        elif key == "adamw":
            hint = "set adam_beta1, adam_beta2 and adam_epsilon instead"
        else:
            hint = "Adafactor runs with transformers' defaults there (and here)"
        raise ValueError(
            f"optim_args {ignored} have no effect on optim={optim or key!r} (Hugging Face's Trainer ignores them); "
            + hint
        )
    return optimizer_options(key, parsed)


# --------------------------------------------------------------------------------------------- the transforms
class TorchMomentumState(NamedTuple):
    count: jax.Array
    buffer: Any


def scale_by_torch_sgd(momentum: float, dampening: float, nesterov: bool) -> optax.GradientTransformation:
    """``torch.optim.SGD``'s direction: the momentum buffer starts as the first gradient (not dampened)."""
    if momentum == 0:
        return optax.identity()

    def init(params):
        return TorchMomentumState(jnp.zeros([], jnp.int32), optax.tree.zeros_like(params))

    def update(updates, state, params=None):
        del params
        first = state.count == 0
        buffer = jax.tree.map(
            lambda g, b: jnp.where(first, g, momentum * b + (1.0 - dampening) * g), updates, state.buffer
        )
        out = jax.tree.map(lambda g, b: g + momentum * b, updates, buffer) if nesterov else buffer
        return out, TorchMomentumState(optax.safe_increment(state.count), buffer)

    return optax.GradientTransformation(init, update)


class TorchAdagradState(NamedTuple):
    count: jax.Array
    sum: Any


def scale_by_torch_adagrad(eps: float, lr_decay: float, initial: float) -> optax.GradientTransformation:
    """``torch.optim.Adagrad``'s direction ``g / (sqrt(sum g^2) + eps)``, divided by ``1 + step * lr_decay``."""

    def init(params):
        return TorchAdagradState(jnp.zeros([], jnp.int32), jax.tree.map(lambda p: jnp.full_like(p, initial), params))

    def update(updates, state, params=None):
        del params
        total = jax.tree.map(lambda s, g: s + g * g, state.sum, updates)
        decay = 1.0 + state.count.astype(jnp.float32) * lr_decay
        out = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps) / decay, updates, total)
        return out, TorchAdagradState(optax.safe_increment(state.count), total)

    return optax.GradientTransformation(init, update)


class TorchRMSpropState(NamedTuple):
    square_avg: Any
    grad_avg: Any
    buffer: Any


def scale_by_torch_rmsprop(alpha: float, eps: float, momentum: float, centered: bool) -> optax.GradientTransformation:
    """``torch.optim.RMSprop``'s direction (its state is created whole, used or not, so its tree is fixed)."""

    def init(params):
        zeros = optax.tree.zeros_like
        return TorchRMSpropState(zeros(params), zeros(params), zeros(params))

    def update(updates, state, params=None):
        del params
        square = jax.tree.map(lambda s, g: alpha * s + (1.0 - alpha) * g * g, state.square_avg, updates)
        grad_avg = state.grad_avg
        if centered:
            grad_avg = jax.tree.map(lambda a, g: alpha * a + (1.0 - alpha) * g, grad_avg, updates)
            avg = jax.tree.map(lambda s, a: jnp.sqrt(s - a * a) + eps, square, grad_avg)
        else:
            avg = jax.tree.map(lambda s: jnp.sqrt(s) + eps, square)
        buffer = state.buffer
        if momentum > 0:
            buffer = jax.tree.map(lambda b, g, a: momentum * b + g / a, buffer, updates, avg)
            out = buffer
        else:
            out = jax.tree.map(lambda g, a: g / a, updates, avg)
        return out, TorchRMSpropState(square, grad_avg, buffer)

    return optax.GradientTransformation(init, update)


class AdafactorState(NamedTuple):
    count: jax.Array
    factors: list  # per parameter leaf: (row, col) second-moment factors, or (full second moment,)


# How a parameter leaf holds its Hugging Face tensor (training.hf_layouts): a stack of scanned layers on axis 0,
# and/or transposed (every axis reversed: nnx kernels against torch's Linear and Conv1d weights).
STACKED, TRANSPOSED = 1, 2


def _factor_axes(ndim: int, layout: int) -> tuple[int, int] | None:
    """The two axes of our leaf that are the last two of its Hugging Face tensor (what transformers' Adafactor
    factors), or None for a tensor of fewer than two dimensions (kept whole)."""
    stacked = layout & STACKED
    if ndim - stacked < 2:
        return None
    return (stacked, stacked + 1) if layout & TRANSPOSED else (ndim - 2, ndim - 1)


def _to_end(x, axes: tuple[int, int]):
    return jnp.moveaxis(x, axes, (-2, -1))


def scale_by_hf_adafactor(
    layouts: Any,
    eps: tuple[float, float] = (1e-30, 1e-3),
    clip_threshold: float = 1.0,
    decay_rate: float = -0.8,
) -> optax.GradientTransformation:
    """transformers' ``Adafactor`` with ``relative_step=False`` and no first moment (Hugging Face Trainer's
    ``optim="adafactor"``), without the learning rate.

    Each parameter is one of transformers' tensors as ``layouts`` (a tree like the parameters', of
    :data:`STACKED` / :data:`TRANSPOSED` codes) says crossjax holds it: the second moment is factored over the
    axes that are the torch tensor's last two (the factored product does not depend on which of the two is the
    row), the other axes (layers, a convolution's outputs) kept apart, and the update's RMS clipping is per
    layer, as in torch, where each layer is a tensor of its own."""
    eps1 = eps[0]  # eps[1] bounds the parameter scale of scale_parameter=True, which Hugging Face turns off

    def init(params):
        factors = []
        for x, layout in zip(jax.tree.leaves(params), jax.tree.leaves(layouts), strict=True):
            axes = _factor_axes(x.ndim, layout)
            if axes is None:
                factors.append((jnp.zeros(x.shape, jnp.float32),))
                continue
            rest = [n for axis, n in enumerate(x.shape) if axis not in axes]
            shape = (*rest, x.shape[axes[0]], x.shape[axes[1]])  # _to_end's
            factors.append((jnp.zeros(shape[:-1], jnp.float32), jnp.zeros(shape[:-2] + shape[-1:], jnp.float32)))
        return AdafactorState(jnp.zeros([], jnp.int32), factors)

    def rms(x, stacked):
        return jnp.sqrt(jnp.mean(jnp.square(x), axis=tuple(range(stacked, x.ndim)), keepdims=True))

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        beta2 = 1.0 - jnp.power(count.astype(jnp.float32), jnp.float32(decay_rate))
        grads, treedef = jax.tree.flatten(updates)
        outs, factors = [], []
        for g, factor, layout in zip(grads, state.factors, jax.tree.leaves(layouts), strict=True):
            g = g.astype(jnp.float32)
            axes = _factor_axes(g.ndim, layout)
            if axes is not None:
                moved = _to_end(g, axes)
                squared = jnp.square(moved) + eps1
                row = beta2 * factor[0] + (1.0 - beta2) * jnp.mean(squared, axis=-1)
                col = beta2 * factor[1] + (1.0 - beta2) * jnp.mean(squared, axis=-2)
                r = jax.lax.rsqrt(row / jnp.mean(row, axis=-1, keepdims=True))[..., None]
                u = jnp.moveaxis(r * jax.lax.rsqrt(col)[..., None, :] * moved, (-2, -1), axes)
                factors.append((row, col))
            else:
                full = beta2 * factor[0] + (1.0 - beta2) * (jnp.square(g) + eps1)
                u = jax.lax.rsqrt(full) * g
                factors.append((full,))
            outs.append(u / jnp.maximum(rms(u, layout & STACKED) / clip_threshold, 1.0))
        return jax.tree.unflatten(treedef, outs), AdafactorState(count, factors)

    return optax.GradientTransformation(init, update)


def direction(key: str, options: Options, layouts: Any = None) -> optax.GradientTransformation:
    """The direction transform of optimizer ``key`` (not AdamW) with its :func:`optimizer_options`."""
    o = dict(options)
    if key == "sgd":
        return scale_by_torch_sgd(o["momentum"], o["dampening"], o["nesterov"])
    if key == "adagrad":
        return scale_by_torch_adagrad(o["eps"], o["lr_decay"], o["initial_accumulator_value"])
    if key == "rmsprop":
        return scale_by_torch_rmsprop(o["alpha"], o["eps"], o["momentum"], o["centered"])
    if key == "adafactor":
        if layouts is None:
            raise ValueError("Adafactor needs the parameters' Hugging Face layouts (training.hf_layouts)")
        return scale_by_hf_adafactor(layouts, o["eps"], o["clip_threshold"], o["decay_rate"])
    raise ValueError(f"no direction transform for optimizer {key!r}")


def decoupled_decay(key: str) -> bool:
    """Whether the optimizer decays weights after its direction (Adafactor) or into the gradient (torch's)."""
    return key == "adafactor"
