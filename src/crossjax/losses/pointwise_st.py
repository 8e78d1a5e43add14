"""sentence-transformers 6.2's pointwise cross-encoder losses: one (query, document) pair per row, one label.

``BinaryCrossEntropyLoss``, ``CrossEntropyLoss`` and ``MSELoss`` take two text columns; each row is one pair
(D = 1, K = 1). They are means over the rows, built on the legacy ``fit`` losses' ``(numerator, denominator)``
forms, so a split of the rows into micro-batches adds up exactly.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from crossjax.losses.activations import identity
from crossjax.losses.base import (
    CrossEncoderLoss,
    PairLayout,
    PairTable,
    is_finite_number,
    is_number,
    label_rows,
)
from crossjax.losses.pointwise import (
    binary_cross_entropy_with_logits_parts,
    checked_ignore_index,
    checked_label_smoothing,
    cross_entropy_parts,
    mse_parts,
)
from crossjax.losses.torch_compat import tensor_to_numpy

__all__ = ["BinaryCrossEntropyLoss", "CrossEntropyLoss", "MSELoss"]


def reject_torch_kwargs(loss_name: str, kwargs: dict[str, Any], supported: dict[str, Any]) -> None:
    """The torch loss keyword arguments sentence-transformers forwards: only those crossjax implements."""
    for key, value in kwargs.items():
        if key == "reduction":
            if value != "mean":
                raise ValueError(f"{loss_name}(reduction={value!r}) is not supported; only reduction='mean' is")
        elif key not in supported:
            raise ValueError(
                f"{loss_name} does not support the torch keyword argument {key!r} in crossjax"
                + (f"; supported: reduction, {', '.join(supported)}" if supported else "; supported: reduction")
            )


class _PairLoss(CrossEncoderLoss):
    """Two text columns, one label per row: the pair (column 0, column 1) in slot 0 of its row."""

    label_dtype: Any = np.float32

    def layout(self, columns: list[list], labels: Any, rng: np.random.Generator) -> PairLayout:
        table = PairTable()
        index = np.array([[table.add(q, d)] for q, d in zip(columns[0], columns[1], strict=True)], dtype=np.int64)
        index = index.reshape(len(columns[0]), 1)
        rows = label_rows(labels, len(columns[0]), type(self).__name__)
        return PairLayout(table.pairs, index, np.asarray(rows, dtype=self.label_dtype).reshape(-1, 1))

    def width(self, columns: list[list], labels: Any, rows_per_step: int | None = None) -> tuple[int, int]:
        return 1, 1

    def validate(self, columns: list[list], labels: Any, row_offset: int = 0) -> None:
        self._check_column_count(columns, 2)
        self._check_texts(columns, row_offset, (0, 1))
        for i, label in enumerate(label_rows(labels, len(columns[0]), type(self).__name__)):
            problem = self._label_problem(label)
            if problem:
                raise ValueError(f"{type(self).__name__}: row {row_offset + i}: label {label!r} {problem}")

    def _label_problem(self, label: Any) -> str | None:
        return None if is_finite_number(label) else "is not a finite number that float32 can hold (one score per pair)"

    def _row_mask(self, doc_mask: jnp.ndarray, query_mask: jnp.ndarray) -> jnp.ndarray:
        return doc_mask[:, 0] & query_mask


class BinaryCrossEntropyLoss(_PairLoss):
    """sentence-transformers' ``BinaryCrossEntropyLoss``: ``BCEWithLogitsLoss`` on one logit per pair, labels
    in [0, 1]; ``pos_weight`` (a torch tensor, numpy value or float) weighs the positive term."""

    def __init__(self, model: Any, activation_fn: Any = identity, pos_weight: Any = None, **kwargs: Any) -> None:
        super().__init__(model, activation_fn)
        reject_torch_kwargs(type(self).__name__, kwargs, {})
        self.pos_weight = pos_weight
        self._pos_weight_value: float | None = None
        if pos_weight is not None:
            values = tensor_to_numpy(pos_weight).reshape(-1)
            if values.size != 1:
                raise ValueError(f"pos_weight must hold one value (one output label), got shape {values.shape}")
            self._pos_weight_value = float(values[0])

    def _label_problem(self, label: Any) -> str | None:
        if not is_finite_number(label) or not 0.0 <= float(label) <= 1.0:
            return "is not a number in [0, 1] (1 = positive, 0 = negative, or a probability)"
        return None

    def parts(self, logits, doc_mask, labels, query_mask):
        mask = self._row_mask(doc_mask, query_mask)
        scores = self._scores(logits[:, :1], mask[:, None])  # [Q, 1]
        targets = jnp.where(mask, labels[:, 0].astype(jnp.float32), 0.0)
        return binary_cross_entropy_with_logits_parts(scores, targets, mask, self._pos_weight_value)

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "pos_weight": self._pos_weight_value}


class CrossEntropyLoss(_PairLoss):
    """sentence-transformers' ``CrossEntropyLoss``: ``nn.CrossEntropyLoss`` over the model's ``num_labels``
    logits, an integer class per pair, or (every row alike) a list of ``num_labels`` class probabilities, as
    torch takes them (e.g. a teacher's). Supports torch's ``weight`` and ``label_smoothing`` keywords."""

    requires_one_label = False
    allows_softmax = True  # applied over the class axis, as in sentence-transformers
    label_dtype = np.int32

    def __init__(self, model: Any, activation_fn: Any = identity, **kwargs: Any) -> None:
        super().__init__(model, activation_fn)
        reject_torch_kwargs(type(self).__name__, kwargs, {"weight": None, "label_smoothing": 0.0, "ignore_index": -100})
        # Rows labelled ``ignore_index`` count for nothing (torch's rule), e.g. -100 or -1 for pairs left unlabelled.
        # A real class as the index is refused: crossjax checks labels before training and could not tell them.
        self.ignore_index = int(kwargs.get("ignore_index", -100))
        weight = kwargs.get("weight")
        self.class_weights = None if weight is None else jnp.asarray(tensor_to_numpy(weight).reshape(-1))
        self.label_smoothing = checked_label_smoothing(kwargs.get("label_smoothing", 0.0))
        self._check_classes(model)

    def bind_model(self, model: Any) -> None:
        super().bind_model(model)
        self._check_classes(model)

    def _check_classes(self, model: Any) -> None:
        if model.num_labels == 1:  # sentence-transformers trains it, and nothing changes
            raise ValueError(
                "CrossEntropyLoss over a model's one output is 0 whatever the logits (softmax over one class), so "
                "nothing would train: use BinaryCrossEntropyLoss or MSELoss for one label, or num_labels >= 2"
            )
        checked_ignore_index(self.ignore_index, model.num_labels)
        if self.class_weights is not None and self.class_weights.shape[0] != model.num_labels:
            raise ValueError(
                f"CrossEntropyLoss(weight=...) has {self.class_weights.shape[0]} values for {model.num_labels} classes"
            )

    @staticmethod
    def _soft(labels: Any) -> bool:
        """Whether the labels are class probabilities (each row a list), judged by the first row."""
        rows = labels.tolist() if hasattr(labels, "tolist") else list(labels or [])
        return bool(rows) and isinstance(rows[0], list | tuple | np.ndarray) and np.ndim(rows[0]) == 1

    def validate(self, columns: list[list], labels: Any, row_offset: int = 0) -> None:
        self._soft_labels = self._soft(labels)
        super().validate(columns, labels, row_offset)

    def _label_problem(self, label: Any) -> str | None:
        classes = self.model.num_labels
        if getattr(self, "_soft_labels", False):
            row = list(label) if isinstance(label, list | tuple | np.ndarray) else None
            if row is not None and len(row) == classes and all(is_finite_number(p) for p in row):
                return None
            return f"is not a list of {classes} class probabilities, as the first row's (num_labels={classes})"
        if is_number(label) and float(label).is_integer() and (
            0 <= int(label) < classes or int(label) == self.ignore_index
        ):
            return None
        return f"is not an integer class index in [0, {classes}) (num_labels={classes})"

    def layout(self, columns: list[list], labels: Any, rng: np.random.Generator) -> PairLayout:
        if not self._soft(labels):
            return super().layout(columns, labels, rng)
        laid = super().layout(columns, [0] * len(columns[0]), rng)
        probabilities = np.asarray(label_rows(labels, len(columns[0]), type(self).__name__), dtype=np.float32)
        return PairLayout(laid.pairs, laid.index, probabilities)

    def width(self, columns: list[list], labels: Any, rows_per_step: int | None = None) -> tuple[int, int]:
        return 1, self.model.num_labels if self._soft(labels) else 1

    def parts(self, logits, doc_mask, labels, query_mask):
        soft = jnp.issubdtype(labels.dtype, jnp.floating)  # probabilities travel as float32, classes as int32
        mask = self._row_mask(doc_mask, query_mask)
        class_logits = jnp.where(mask[:, None], logits[:, 0, :].astype(jnp.float32), 0.0)
        if self.activation is not None:
            class_logits = self.activation(class_logits)
        if soft:
            targets = jnp.where(mask[:, None], labels[:, : class_logits.shape[-1]].astype(jnp.float32), 0.0)
        else:
            targets = jnp.where(mask, labels[:, 0].astype(jnp.int32), 0)  # rows labelled ignore_index keep it
        return cross_entropy_parts(
            class_logits, targets, mask, self.class_weights, self.label_smoothing, self.ignore_index
        )

    def get_config_dict(self) -> dict[str, Any]:
        return {}  # sentence-transformers' CrossEntropyLoss has no get_config_dict: its model card lists nothing


class MSELoss(_PairLoss):
    """sentence-transformers' ``MSELoss``: squared error between one (activated) logit per pair and its score,
    e.g. a teacher's (distillation)."""

    def __init__(self, model: Any, activation_fn: Any = identity, **kwargs: Any) -> None:
        super().__init__(model, activation_fn)
        reject_torch_kwargs(type(self).__name__, kwargs, {})

    def parts(self, logits, doc_mask, labels, query_mask):
        mask = self._row_mask(doc_mask, query_mask)
        scores = self._scores(logits[:, :1], mask[:, None])
        targets = jnp.where(mask, labels[:, 0].astype(jnp.float32), 0.0)
        return mse_parts(scores, targets, mask)
