"""sentence-transformers 6.2's ``MarginMSELoss``: (query, positive, negative_1..n) rows, gold margins as labels."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from crossjax.losses.activations import identity
from crossjax.losses.base import (
    CrossEncoderLoss,
    PairLayout,
    PairTable,
    as_list,
    is_finite_number,
    label_rows,
    labels_to_width,
)
from crossjax.losses.pointwise_st import reject_torch_kwargs

__all__ = ["MarginMSELoss"]


class MarginMSELoss(CrossEncoderLoss):
    """MSE between the predicted margins ``s(q, pos) - s(q, neg_j)`` and the gold margins.

    Columns: query, positive, then one column per negative (n >= 1). A row's label is either the n margins,
    or the n + 1 scores (positive first; the margins are taken as in sentence-transformers), or one number
    when n == 1. Slots: D = 1 + n (the positive first), K = n margins. The loss is the mean over all
    (row, negative) margins, so a split of the rows adds up exactly.
    """

    citation = """
@misc{hofstätter2021improving,
    title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
    author={Sebastian Hofstätter and Sophia Althammer and Michael Schröder and Mete Sertkan and Allan Hanbury},
    year={2021},
    eprint={2010.02666},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}
"""

    def __init__(self, model: Any, activation_fn: Any = identity, **kwargs: Any) -> None:
        super().__init__(model, activation_fn)
        reject_torch_kwargs(type(self).__name__, kwargs, {})

    def _margins(self, label: Any, num_negatives: int) -> list[float] | None:
        """A row's gold margins, or None when its label has none of the accepted shapes."""
        values = as_list(label)
        if values is None:
            values = [label]
        if not all(is_finite_number(v) for v in values):
            return None
        values = [float(v) for v in values]
        if len(values) == num_negatives + 1:
            return [values[0] - v for v in values[1:]]
        if len(values) == num_negatives:
            return values
        return None

    def validate(self, columns: list[list], labels: Any, row_offset: int = 0) -> None:
        self._check_column_count(columns, None, at_least=3)
        self._check_texts(columns, row_offset, range(len(columns)))
        num_negatives = len(columns) - 2
        for i, label in enumerate(label_rows(labels, len(columns[0]), type(self).__name__)):
            if self._margins(label, num_negatives) is None:
                raise ValueError(
                    f"MarginMSELoss: row {row_offset + i}: label {label!r:.120} does not fit {num_negatives} "
                    f"negative column(s). Labels must be 1) the {num_negatives} differences between the positive "
                    f"score and the negative scores, or 2) the {num_negatives + 1} scores, positive first "
                    "(finite numbers)."
                )

    def width(self, columns: list[list], labels: Any, rows_per_step: int | None = None) -> tuple[int, int]:
        num_negatives = len(columns) - 2
        return 1 + num_negatives, num_negatives

    def layout(self, columns: list[list], labels: Any, rng: np.random.Generator) -> PairLayout:
        table = PairTable()
        rows = label_rows(labels, len(columns[0]), type(self).__name__)
        num_negatives = len(columns) - 2
        index = np.array(
            [[table.add(query, column[q]) for column in columns[1:]] for q, query in enumerate(columns[0])],
            dtype=np.int64,
        ).reshape(len(columns[0]), 1 + num_negatives)
        margins = np.array([self._margins(label, num_negatives) for label in rows], dtype=np.float32)
        return PairLayout(table.pairs, index, margins.reshape(len(rows), num_negatives))

    def parts(self, logits, doc_mask, labels, query_mask):
        mask = doc_mask & query_mask[:, None]
        scores = self._scores(logits, mask)  # [Q, 1 + n]
        pair_mask = mask[:, 1:] & mask[:, :1]
        margins = scores[:, :1] - scores[:, 1:]
        num_negatives = margins.shape[1]
        targets = jnp.where(pair_mask, labels_to_width(labels, num_negatives).astype(jnp.float32), 0.0)
        squared = jnp.where(pair_mask, jnp.square(margins - targets), 0.0)
        return jnp.sum(squared), jnp.sum(pair_mask.astype(jnp.float32))
