"""The interface between the sentence-transformers-style loss classes and the trainer's jitted step.

A loss works in two halves, so the step stays pure and compiles once per shape:

* host side (numpy, strings), once per optimizer step: :meth:`CrossEncoderLoss.layout` picks the
  (query, document) pairs to score, each once, and says how their scores gather into a ``[Q, D]`` matrix
  (Q = rows of the batch, D = document slots); :meth:`~CrossEncoderLoss.validate` checks a whole dataset
  before anything compiles and names the bad row; :meth:`~CrossEncoderLoss.width` gives the (D, K) the
  trainer pads every step to.
* device side (pure ``jnp``): :meth:`CrossEncoderLoss.parts` turns the gathered logits into
  ``(numerator, denominator)``; ``numerator / denominator`` is sentence-transformers' loss on the real rows,
  and summing both over a split of the rows gives the whole batch's loss, so gradient accumulation and
  gradient caching divide once.

Padding (rows with ``query_mask`` False, slots with ``doc_mask`` False, labels beyond a row's documents)
never changes the value or the gradient: padded logits are replaced by zeros before any arithmetic, so even
NaN there cannot leak into the gradient.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Real
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossjax.data import fits_float32, python_values
from crossjax.losses.activations import (
    activation_name_for_export,
    identity,
    is_row_normalising,
    resolve_training_activation,
)
from crossjax.losses.pointwise import ratio
from crossjax.losses.torch_compat import is_torch_module

__all__ = ["PairLayout", "CrossEncoderLoss", "PairTable", "fullname"]

# A value far below any real score that stays finite under subtraction in float32 (exp() of it is 0).
NEG_LARGE = -1e30


@dataclass
class PairLayout:
    """Which pairs one step scores and how their scores gather into the loss's ``[Q, D]`` matrix."""

    pairs: list[tuple[str, str]]  # every (query, document) pair to score this step, each once
    index: np.ndarray  # int64 [Q, D]: doc slot d of row q -> position in `pairs`; -1 = empty slot
    labels: np.ndarray  # [Q, K]: the loss's targets per row (float32; int32 for CrossEntropyLoss)


class PairTable:
    """Collects (query, document) pairs, each once: a pair that appears twice in a step is scored once and
    both slots point at it (its gradient is the sum of both uses, as when the model scores it twice)."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []
        self._position: dict[tuple[str, str], int] = {}

    def add(self, query: str, document: str) -> int:
        key = (query, document)
        position = self._position.get(key)
        if position is None:
            position = self._position[key] = len(self.pairs)
            self.pairs.append(key)
        return position


def fullname(obj: Any) -> str:
    """sentence_transformers.util.fullname: ``module.ClassName`` of an object (builtins without a module)."""
    cls = obj if isinstance(obj, type) else type(obj)
    module = cls.__module__
    if module is None or module == "builtins":
        return cls.__name__
    return f"{module}.{cls.__name__}"


def activation_config_name(original: Any, resolved: Callable | None) -> str:
    """What sentence-transformers' ``get_config_dict`` writes for ``activation_fn``: the torch class path
    (also for crossjax's own activations, which stand for those classes), a custom callable's dotted name,
    or ``NoneType`` for ``None`` (as ``fullname(None)`` gives)."""
    if resolved is None:
        return "NoneType"
    if is_torch_module(original):
        return fullname(original)
    try:
        return activation_name_for_export(resolved)
    except ValueError:
        return f"{getattr(resolved, '__module__', '')}.{getattr(resolved, '__qualname__', type(resolved).__name__)}"


def is_number(value: Any) -> bool:
    """A label value: a real number, or a bool (a dataset's boolean column: 1.0 / 0.0, as sentence-transformers'
    collator makes float labels of it)."""
    return isinstance(value, Real | np.number | np.bool_)


def is_integer(value: Any) -> bool:
    """An integer argument as torch code passes it: a Python or numpy integer, not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    """A number that stays finite in float32, where the step computes (1e39 would become inf there)."""
    return is_number(value) and fits_float32(float(value))


def checked_number(name: str, value: Any) -> Any:
    """A loss's numeric argument (``scale``, ``sigma``, ``eps`` ...), refused by name when it is not a finite
    number: a string from a config file would otherwise fail inside the first compiled step."""
    if isinstance(value, bool | np.bool_) or not is_finite_number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def as_list(value: Any) -> list | None:
    """A row's list value (list, tuple, numpy array, torch tensor) as a Python list; None if it is a scalar."""
    if isinstance(value, str | bytes):
        return None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list | tuple):
        return list(value)
    return None


def label_rows(labels: Any, count: int, loss_name: str) -> list:
    """The label column as one Python value per row (numpy/torch arrays unpacked)."""
    if labels is None:
        raise ValueError(f"{loss_name} needs a label column ('label', 'labels', 'score' or 'scores'), but got none")
    rows = python_values(labels)
    if len(rows) != count:
        raise ValueError(f"{loss_name}: got {len(rows)} labels for {count} rows")
    return rows


class CrossEncoderLoss(abc.ABC):
    """Base of crossjax's sentence-transformers 6.2 cross-encoder losses (see the module docstring).

    ``model`` is a crossjax ``CrossEncoder``; ``activation_fn`` a torch activation module (recognised by
    class name, torch is never imported), a name, or an elementwise ``jnp`` callable, applied to the logits
    inside :meth:`parts` as sentence-transformers applies it inside ``forward``.
    """

    # sentence-transformers checks ``isinstance(model, CrossEncoder)`` in some losses and ``num_labels == 1``
    # in most, with two wordings; each subclass says which it mirrors.
    checks_model_type: bool = True
    requires_one_label: bool = True
    one_label_verb: str = "expects"
    # The activation is applied over one scores vector/matrix, so a softmax would mix documents or rows.
    allows_softmax: bool = False

    def __init__(self, model: Any, activation_fn: Any = identity) -> None:
        self.model = model
        self._activation_arg = activation_fn
        self.activation = None if activation_fn is None else resolve_training_activation(activation_fn)
        if is_row_normalising(self.activation) and not self.allows_softmax:
            raise ValueError(
                f"{type(self).__name__}: a Softmax-style activation ({self.activation.__name__}) would normalise "
                "across the batch's documents (sentence-transformers applies it to all scores at once; over one "
                "logit a pair it trains nothing); use an elementwise activation"
            )
        self._check_model(model)

    def bind_model(self, model: Any) -> None:
        """Compute with ``model`` from now on: a trainer puts its own model into its losses, as
        sentence-transformers' trainer does (a loss made for another model would otherwise check labels against
        that one's outputs while the trainer trained its own), checked as the constructor checks it."""
        self._check_model(model)
        self.model = model

    def _check_model(self, model: Any) -> None:
        if self.checks_model_type:
            from crossjax.cross_encoder import CrossEncoder  # cross_encoder imports this package

            if not isinstance(model, CrossEncoder):
                raise ValueError(
                    f"{type(self).__name__} expects a model of type CrossEncoder, but got a model of type "
                    f"{type(model)}."
                )
        if self.requires_one_label and model.num_labels != 1:
            raise ValueError(
                f"{type(self).__name__} {self.one_label_verb} a model with 1 output label, but got a model with "
                f"{model.num_labels} output labels."
            )

    @property
    def activation_fn(self) -> Any:
        """The activation as the user passed it (sentence-transformers' attribute name)."""
        return self._activation_arg

    # --- host side -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def layout(self, columns: list[list], labels: Any, rng: np.random.Generator) -> PairLayout:
        """The pairs of one step's rows and their ``[Q, D]`` gather index (see :class:`PairLayout`)."""

    @abc.abstractmethod
    def validate(self, columns: list[list], labels: Any, row_offset: int = 0) -> None:
        """Raise a ``ValueError`` naming the row (``row_offset + i``) for input this loss cannot train on."""

    @abc.abstractmethod
    def width(self, columns: list[list], labels: Any, rows_per_step: int | None = None) -> tuple[int, int]:
        """(D, K) these rows need. ``rows_per_step`` matters only for in-batch negatives (D grows with the
        batch); it defaults to ``len(columns[0])``."""

    # --- device side -----------------------------------------------------------------------------------

    @abc.abstractmethod
    def parts(
        self, logits: jnp.ndarray, doc_mask: jnp.ndarray, labels: jnp.ndarray, query_mask: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray]:
        """(numerator, denominator): ``logits`` float32 [Q, D, C], ``doc_mask`` bool [Q, D], ``labels``
        [Q, K], ``query_mask`` bool [Q]."""

    def value(
        self, logits: jnp.ndarray, doc_mask: jnp.ndarray, labels: jnp.ndarray, query_mask: jnp.ndarray
    ) -> jnp.ndarray:
        """The loss itself: ``numerator / denominator`` (0 for a batch without real rows)."""
        return ratio(*self.parts(logits, doc_mask, labels, query_mask))

    def __call__(self, inputs: Sequence[Sequence], labels: Any = None) -> jnp.ndarray:
        """sentence-transformers' ``loss(inputs, labels)``: this loss on one batch, ``inputs`` its text columns
        (queries, then documents) and ``labels`` its label column, scored by :attr:`model` as ``predict`` scores
        (no dropout). A value to look at or test with; training steps are the trainer's (jitted, packed)."""
        columns = [list(column) for column in inputs]
        self.validate(columns, labels)
        layout = self.layout(columns, labels, np.random.default_rng(0))
        logits = self.model.predict(layout.pairs, activation_fn="identity", show_progress_bar=False)
        logits = np.asarray(logits, np.float32).reshape(len(layout.pairs), -1)
        index = np.asarray(layout.index)
        return self.value(
            jnp.asarray(logits[np.maximum(index, 0)]),
            jnp.asarray(index >= 0),
            jnp.asarray(layout.labels),
            jnp.ones(index.shape[0], bool),
        )

    def get_config_dict(self) -> dict[str, Any]:
        """The loss's settings, as sentence-transformers' ``get_config_dict`` returns them (for the model card)."""
        return {"activation_fn": activation_config_name(self._activation_arg, self.activation)}

    # --- helpers for subclasses ------------------------------------------------------------------------

    def _scores(self, logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        """Single-label logits [Q, D] with padding zeroed (so NaN there cannot reach a gradient), after the
        activation."""
        scores = jnp.where(mask, logits[..., 0].astype(jnp.float32), 0.0)
        return scores if self.activation is None else self.activation(scores)

    def _check_column_count(self, columns: Sequence, expected: int | None, at_least: int | None = None) -> None:
        name = type(self).__name__
        if expected is not None and len(columns) != expected:
            count = {2: "two", 3: "three"}.get(expected, str(expected))  # sentence-transformers' wording
            raise ValueError(
                f"{name} expects a dataset with {count} non-label columns, but got a dataset with "
                f"{len(columns)} columns."
            )
        if at_least is not None and len(columns) < at_least:
            raise ValueError(
                f"{name} expects a dataset with at least {at_least} non-label columns, but got a dataset with "
                f"{len(columns)} columns."
            )
        lengths = {len(column) for column in columns}
        if len(lengths) > 1:
            raise ValueError(f"{name}: the input columns have different lengths {[len(c) for c in columns]}")

    def _check_texts(self, columns: Sequence, row_offset: int, text_columns: Sequence[int]) -> None:
        for c in text_columns:
            for i, text in enumerate(columns[c]):
                if not isinstance(text, str):
                    raise ValueError(
                        f"{type(self).__name__}: row {row_offset + i}, column {c} must be a string, got "
                        f"{type(text).__name__} {text!r:.80}"
                    )


def labels_to_width(labels: jnp.ndarray, width: int) -> jnp.ndarray:
    """``labels`` [Q, K] cut or zero-padded to [Q, width], so a trainer that pads D more than K still lines
    the labels up with the document slots."""
    if labels.shape[1] >= width:
        return labels[:, :width]
    return jnp.pad(labels, ((0, 0), (0, width - labels.shape[1])))


def masked_log_softmax(scores: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """log_softmax over the last axis restricted to ``mask``; masked entries are meaningless (and finite),
    a row without any real entry gives finite values too."""
    shifted = jnp.where(mask, scores, NEG_LARGE)
    top = jax.lax.stop_gradient(jnp.max(shifted, axis=-1, keepdims=True))  # log_softmax does not depend on it
    total = jnp.sum(jnp.where(mask, jnp.exp(shifted - top), 0.0), axis=-1, keepdims=True)
    return shifted - top - jnp.log(jnp.where(total > 0.0, total, 1.0))
