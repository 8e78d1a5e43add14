"""The losses of the legacy ``CrossEncoder.fit``: pure functions over flat pairs, mapped from torch's names.

Every loss has the signature ``(logits [B, C], labels [B], example_mask [B]) -> scalar`` and averages
over the *real* examples only (``example_mask == 1``): batches are padded to a fixed number of rows so
that shapes stay static under ``jit``, and the padding rows must not change the loss or its gradient.
With no padding rows the values equal PyTorch's ``BCEWithLogitsLoss`` / ``CrossEntropyLoss`` /
``MSELoss`` with ``reduction="mean"``.

Each shipped loss is a ratio ``sum(w_i * loss_i) / sum(w_i)`` over the real rows (``w_i`` = 1, or torch's
class weight ``weight[y_i]``), and :func:`loss_parts` gives its ``(numerator, denominator)`` form, so
gradient accumulation can sum both over micro-batches and divide once: exactly the loss of the whole batch.

``resolve_loss`` accepts what ``CrossEncoder.fit`` users pass (``None``, names, or torch modules such as
``nn.BCEWithLogitsLoss()``, recognised by class name so torch is never imported here) and returns a pure
``jnp`` callable. The sentence-transformers 4+ loss classes built on these are in ``pointwise_st.py``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from crossjax.losses.torch_compat import is_torch_function, is_torch_module, tensor_to_numpy

__all__ = [
    "LossFn",
    "LossParts",
    "loss_parts",
    "binary_cross_entropy_with_logits_parts",
    "cross_entropy_parts",
    "mse_parts",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "mse",
    "resolve_loss",
    "ratio",
]

LossFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
# (logits, labels, example_mask) -> (sum of weighted per-row losses, sum of the weights), both over real rows.
LossParts = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]


def ratio(numerator: jnp.ndarray, denominator: jnp.ndarray) -> jnp.ndarray:
    """The loss from its parts; a zero denominator (an all-padding batch) gives 0 instead of NaN."""
    return numerator / jnp.where(denominator == 0.0, 1.0, denominator)


def _masked_sum_and_count(per_example: jnp.ndarray, example_mask: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    mask = example_mask.astype(per_example.dtype)
    return jnp.sum(per_example * mask), jnp.sum(mask)


def _per_example_logits(logits: jnp.ndarray, labels: jnp.ndarray, loss_name: str) -> jnp.ndarray:
    """Squeeze ``[B, 1]`` logits to ``[B]`` (as ST's fit does with ``logits.view(-1)``); keep ``[B, C]``
    only when the labels have the same shape (multi-target)."""
    if logits.ndim == 2 and labels.ndim == 1:
        if logits.shape[1] != 1:
            raise ValueError(
                f"{loss_name} expects logits of shape [B, 1] for labels of shape [B], got logits "
                f"{tuple(logits.shape)}; use a model with num_labels=1 (or cross_entropy for classification)"
            )
        return logits[:, 0]
    if logits.shape != labels.shape:
        raise ValueError(
            f"{loss_name}: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}"
        )
    return logits


def _mean_over_trailing(x: jnp.ndarray) -> jnp.ndarray:
    return x if x.ndim == 1 else jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def binary_cross_entropy_with_logits(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    example_mask: jnp.ndarray,
    pos_weight: float | jnp.ndarray | None = None,
) -> jnp.ndarray:
    """``torch.nn.BCEWithLogitsLoss`` on ``logits[:, 0]`` vs float labels, averaged over real rows.

    Uses the same overflow-free form as torch: ``(1 - y) x + (1 + (p - 1) y) * softplus(-x)``.
    """
    return ratio(*binary_cross_entropy_with_logits_parts(logits, labels, example_mask, pos_weight))


def binary_cross_entropy_with_logits_parts(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    example_mask: jnp.ndarray,
    pos_weight: float | jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sum of the per-row losses, number of real rows) of :func:`binary_cross_entropy_with_logits`."""
    x = _per_example_logits(logits, labels, "binary_cross_entropy_with_logits").astype(jnp.float32)
    y = labels.astype(jnp.float32)
    softplus_neg_x = jax.nn.softplus(-x)  # stable, and its slope at 0 is torch's 0.5 (|x| and max would give 1)
    if pos_weight is None:
        loss = (1.0 - y) * x + softplus_neg_x
    else:
        weight = 1.0 + (jnp.asarray(pos_weight, jnp.float32) - 1.0) * y
        loss = (1.0 - y) * x + weight * softplus_neg_x
    return _masked_sum_and_count(_mean_over_trailing(loss), example_mask)


def checked_label_smoothing(value: Any) -> float:
    """torch's ``label_smoothing``, refused up front where torch's first forward pass would refuse it."""
    try:
        smoothing = float(value)
    except (TypeError, ValueError):
        smoothing = float("nan")
    if not 0.0 <= smoothing <= 1.0:  # NaN too
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0, got {value!r}")
    return smoothing


def cross_entropy(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    example_mask: jnp.ndarray,
    class_weights: jnp.ndarray | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> jnp.ndarray:
    """``torch.nn.CrossEntropyLoss`` with integer class labels [N] (or class probabilities [N, C], see
    :func:`cross_entropy_parts`), averaged over real rows.

    With ``class_weights`` and class labels the mean is weighted like torch's: ``sum(w[y] * loss) / sum(w[y])``.
    Rows labelled ``ignore_index`` (torch's default -100) count for nothing, as in torch.
    """
    return ratio(*cross_entropy_parts(logits, labels, example_mask, class_weights, label_smoothing, ignore_index))


def cross_entropy_parts(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    example_mask: jnp.ndarray,
    class_weights: jnp.ndarray | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(numerator, denominator) of :func:`cross_entropy`: ``(sum(w[y] * loss), sum(w[y]))`` over real rows
    (``w`` = 1 without class weights; label smoothing changes the numerator only, as in torch) whose label is not
    ``ignore_index``: a batch of ignored rows only has (0, 0), so its loss is 0 (torch's mean is NaN there).

    ``labels`` of shape [N, C] are class probabilities (torch's soft targets, e.g. a teacher's): the numerator
    is ``sum(-sum_c w_c t_c log q_c)`` with ``t = (1 - e) p + e / C``, and as torch does for them the mean is
    over rows, not over the weights."""
    logits = logits.astype(jnp.float32)
    mask = example_mask.astype(jnp.float32)
    if labels.ndim == 2:
        logp = jax.nn.log_softmax(logits, axis=-1)
        targets = labels.astype(jnp.float32)
        if label_smoothing:
            targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[-1]
        if class_weights is not None:
            targets = targets * jnp.asarray(class_weights, jnp.float32)[None, :]
        return _masked_sum_and_count(-jnp.sum(targets * logp, axis=-1), mask)
    y = labels.astype(jnp.int32)
    kept = y != ignore_index
    mask = jnp.where(kept, mask, 0.0)
    y = jnp.where(kept, y, 0)  # any class: the row is masked out
    logp = jax.nn.log_softmax(jnp.where(kept[:, None], logits, 0.0), axis=-1)  # an ignored row's NaN reaches nothing
    nll = -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]
    if class_weights is None:
        loss = nll
        if label_smoothing:
            loss = (1.0 - label_smoothing) * nll + label_smoothing * (-jnp.mean(logp, axis=-1))
        return _masked_sum_and_count(loss, mask)
    w = jnp.asarray(class_weights, jnp.float32)
    w_y = w[y]
    loss = w_y * nll
    if label_smoothing:
        num_classes = logits.shape[-1]
        smooth = -jnp.sum(logp * w[None, :], axis=-1) / num_classes
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    return jnp.sum(loss * mask), jnp.sum(w_y * mask)


def mse(logits: jnp.ndarray, labels: jnp.ndarray, example_mask: jnp.ndarray) -> jnp.ndarray:
    """``torch.nn.MSELoss`` on ``logits[:, 0]`` vs float labels (regression), averaged over real rows."""
    return ratio(*mse_parts(logits, labels, example_mask))


def mse_parts(
    logits: jnp.ndarray, labels: jnp.ndarray, example_mask: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sum of the per-row squared errors, number of real rows) of :func:`mse`."""
    x = _per_example_logits(logits, labels, "mse").astype(jnp.float32)
    return _masked_sum_and_count(_mean_over_trailing(jnp.square(x - labels.astype(jnp.float32))), example_mask)


_PARTS: dict[Callable, LossParts] = {
    binary_cross_entropy_with_logits: binary_cross_entropy_with_logits_parts,
    cross_entropy: cross_entropy_parts,
    mse: mse_parts,
}


def loss_parts(loss_fn: Callable) -> LossParts | None:
    """The ``(numerator, denominator)`` form of a loss crossjax ships (also under ``functools.partial``, as
    :func:`resolve_loss` returns it for torch modules with weights or smoothing), or None for any other
    callable: those are taken as means over their real rows and weighted by row count when accumulating."""
    if isinstance(loss_fn, functools.partial):
        parts = loss_parts(loss_fn.func)
        return None if parts is None else functools.partial(parts, *loss_fn.args, **loss_fn.keywords)
    for known, parts in _PARTS.items():
        if loss_fn is known:
            return parts
    return None


_LOSS_NAMES: dict[str, LossFn] = {
    "bce": binary_cross_entropy_with_logits,
    "binary_cross_entropy": binary_cross_entropy_with_logits,
    "binary_cross_entropy_with_logits": binary_cross_entropy_with_logits,
    "bcewithlogitsloss": binary_cross_entropy_with_logits,
    "cross_entropy": cross_entropy,
    "ce": cross_entropy,
    "crossentropyloss": cross_entropy,
    "mse": mse,
    "mseloss": mse,
}

_TORCH_LOSSES = ("BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss")


def _from_torch_loss(obj: Any) -> LossFn:
    name = type(obj).__name__
    if name not in _TORCH_LOSSES:
        raise ValueError(
            f"Unsupported torch loss {name}: crossjax trains in JAX and maps only the torch losses "
            f"{', '.join(_TORCH_LOSSES)} (or pass 'bce', 'cross_entropy', 'mse', or a JAX callable "
            "(logits, labels, example_mask) -> scalar)"
        )
    reduction = getattr(obj, "reduction", "mean")
    if reduction != "mean":
        raise ValueError(f"{name}(reduction={reduction!r}) is not supported; only reduction='mean' is")
    if name == "BCEWithLogitsLoss":
        if getattr(obj, "weight", None) is not None:
            raise ValueError("BCEWithLogitsLoss(weight=...) is not supported; pos_weight is")
        pos_weight = getattr(obj, "pos_weight", None)
        if pos_weight is None:
            return binary_cross_entropy_with_logits
        pw = tensor_to_numpy(pos_weight).reshape(-1)
        if pw.size != 1:
            raise ValueError(f"BCEWithLogitsLoss(pos_weight=...) must hold one value, got shape {pw.shape}")
        return functools.partial(binary_cross_entropy_with_logits, pos_weight=float(pw[0]))
    if name == "CrossEntropyLoss":
        ignore_index = int(getattr(obj, "ignore_index", -100))
        weight = getattr(obj, "weight", None)
        smoothing = checked_label_smoothing(getattr(obj, "label_smoothing", 0.0) or 0.0)
        if weight is None and smoothing == 0.0 and ignore_index == -100:
            return cross_entropy
        class_weights = None if weight is None else jnp.asarray(tensor_to_numpy(weight))
        # torch's default ignore_index is the function's own: left out, the loss reads (and is fingerprinted in
        # checkpoints) as before ignore_index was taken, so such runs still resume
        other = {} if ignore_index == -100 else {"ignore_index": ignore_index}
        return functools.partial(cross_entropy, class_weights=class_weights, label_smoothing=smoothing, **other)
    return mse  # MSELoss


def checked_ignore_index(ignore_index: int, num_labels: int) -> int:
    """torch's ``ignore_index`` as crossjax takes it (fit's torch module, the trainer's loss): an int32 (labels
    travel as int32) that names no real class, since crossjax checks every label before training and could not
    tell that class's examples from unlabelled ones."""
    if not -(2**31) <= ignore_index < 2**31:
        raise ValueError(f"CrossEntropyLoss(ignore_index={ignore_index}) must fit in int32")
    if 0 <= ignore_index < num_labels:
        raise ValueError(
            f"CrossEntropyLoss(ignore_index={ignore_index}) names a real class of num_labels={num_labels}: crossjax "
            "checks every label before training and would take that class's examples for unlabelled ones; leave "
            "those examples out of the training data instead (or mark them with -100)"
        )
    return ignore_index


def ignored_label(loss_fn: Callable) -> int | None:
    """The label whose rows ``loss_fn`` skips (torch's ``ignore_index``: -100 unless set), for the cross-entropy
    :func:`resolve_loss` returns; None for any other loss, which trains on every row."""
    if isinstance(loss_fn, functools.partial) and loss_fn.func is cross_entropy:
        return int(loss_fn.keywords.get("ignore_index", -100))
    return -100 if loss_fn is cross_entropy else None


def resolve_loss(loss_fct: Any, num_labels: int) -> LossFn:
    """Turn ``CrossEncoder.fit``'s ``loss_fct`` into a JAX loss ``(logits, labels, example_mask) -> scalar``.

    ``None`` follows sentence-transformers' legacy rule: BCE-with-logits for ``num_labels == 1``, else
    cross-entropy. Names are case-insensitive; torch loss modules are mapped by class name.
    """
    if loss_fct is None:
        return binary_cross_entropy_with_logits if num_labels == 1 else cross_entropy
    if isinstance(loss_fct, str):
        key = loss_fct.lower()
        if key not in _LOSS_NAMES:
            raise ValueError(f"Unknown loss {loss_fct!r}; valid names are: {', '.join(sorted(_LOSS_NAMES))}")
        resolved = _LOSS_NAMES[key]
    elif _is_trainer_loss(loss_fct):
        raise ValueError(
            f"loss_fct={type(loss_fct).__name__}(model, ...) is a CrossEncoderTrainer loss (built on the model, "
            "with settings of its own that fit's loss_fct does not take): train with "
            "CrossEncoderTrainer(loss=...) to use it, or pass fit a torch.nn loss module with the same settings "
            "(BCEWithLogitsLoss(pos_weight=...), CrossEntropyLoss(weight=..., label_smoothing=...), MSELoss() with "
            "activation_fct=...), its name, or a JAX callable (logits, labels, example_mask) -> scalar"
        )
    elif type(loss_fct).__name__ in _TORCH_LOSSES or is_torch_module(loss_fct):
        resolved = _from_torch_loss(loss_fct)
    elif callable(loss_fct):
        return _checked_custom_loss(loss_fct)
    else:
        raise TypeError(f"loss_fct must be None, a name, a torch loss module or a callable, got {type(loss_fct)}")
    ignored = ignored_label(resolved)
    if ignored is not None:
        checked_ignore_index(ignored, num_labels)
    weights = getattr(resolved, "keywords", {}).get("class_weights")
    if weights is not None and weights.shape != (num_labels,):
        raise ValueError(
            f"CrossEntropyLoss(weight=...) holds {weights.size} class weights of shape {tuple(weights.shape)}; "
            f"a model with num_labels={num_labels} needs one weight per class, shape ({num_labels},)"
        )
    if num_labels == 1 and getattr(resolved, "func", resolved) is cross_entropy:
        raise ValueError(
            "cross-entropy needs num_labels >= 2: over a model's one output it is a softmax over one class (0 "
            "whatever the logits; sentence-transformers' old_fit flattens the logits instead, into one softmax "
            "across the batch's pairs, which crossjax does not reproduce): use BCEWithLogitsLoss or MSELoss for one "
            "label"
        )
    return resolved


def _is_trainer_loss(loss: Any) -> bool:
    """A loss of crossjax's or sentence-transformers' trainer (``LossClass(model, ...)``: it holds the model),
    not fit's kind. (By its module: crossjax.losses.base imports this module.)"""
    module = type(loss).__module__ or ""
    return module.startswith(("crossjax.losses.", "sentence_transformers.")) and hasattr(loss, "model")


def _checked_custom_loss(loss_fct: Callable) -> LossFn:
    """A user's loss must be a JAX function ``(logits, labels, example_mask)``; say so before any tracing."""
    if is_torch_function(loss_fct):
        raise ValueError(
            f"loss_fct {loss_fct.__module__}.{getattr(loss_fct, '__name__', loss_fct)} is a torch function, but "
            "crossjax's logits are JAX arrays: pass a torch.nn loss module (mapped to crossjax's), its name, or a "
            "JAX function (logits, labels, example_mask) -> scalar"
        )
    try:
        inspect.signature(loss_fct).bind(None, None, None)
    except TypeError:
        raise ValueError(
            f"loss_fct {loss_fct!r} must take (logits, labels, example_mask) JAX arrays (example_mask marks "
            "the real examples of a packed batch) and return a scalar: sentence-transformers' (logits, labels) "
            "torch losses cannot run in JAX"
        ) from None
    except ValueError:  # no signature (a builtin): its call will say what is wrong
        pass
    return loss_fct
