"""Listwise rows ``(query, [documents])`` with ``[labels]``, shared by every listwise loss; and the two simplest
listwise losses of sentence-transformers 6.2, ``ListNetLoss`` and ``ADRMSELoss``.

Every (query, document) pair of a row is one pair to score; its score sits in slot d of the row's
``[Q, D]`` matrix (D = the longest list, K = D: ``labels[q, d]`` is slot d's label). Lists may be ragged;
``doc_mask`` marks the real slots. ``mini_batch_size`` is kept for sentence-transformers compatibility: it
bounds how many pairs one forward scores at once, which the trainer's step implements.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossjax.losses.activations import identity
from crossjax.losses.base import (
    CrossEncoderLoss,
    PairLayout,
    PairTable,
    as_list,
    checked_number,
    is_finite_number,
    is_integer,
    label_rows,
    labels_to_width,
    masked_log_softmax,
)

__all__ = ["ListwiseLoss", "ListNetLoss", "ADRMSELoss"]


class ListwiseLoss(CrossEncoderLoss):
    """Base of the listwise losses: two columns (queries, lists of documents), a list of labels per row."""

    checks_model_type = False  # sentence-transformers' listwise losses check num_labels only
    one_label_verb = "supports"

    def __init__(self, model: Any, activation_fn: Any = identity, mini_batch_size: int | None = None) -> None:
        super().__init__(model, identity if activation_fn is None else activation_fn)
        if mini_batch_size is not None and not is_integer(mini_batch_size):
            raise ValueError(f"mini_batch_size must be an int or None, got {mini_batch_size!r}")
        self.mini_batch_size = None if mini_batch_size is None else int(mini_batch_size)

    def validate(self, columns: list[list], labels: Any, row_offset: int = 0) -> None:
        name = type(self).__name__
        if len(columns) != 2:
            raise ValueError(f"{name} expects two inputs (queries, documents_list), but got {len(columns)} inputs.")
        self._check_column_count(columns, 2)
        self._check_texts(columns, row_offset, (0,))
        for i, (docs, row_labels) in enumerate(zip(columns[1], label_rows(labels, len(columns[0]), name), strict=True)):
            row = row_offset + i
            docs = as_list(docs)
            if docs is None:
                raise ValueError(f"{name}: row {row}: the documents column must hold a list of documents per query")
            if not docs:
                raise ValueError(f"{name}: row {row}: the list of documents is empty")
            for d, doc in enumerate(docs):
                if not isinstance(doc, str):
                    raise ValueError(f"{name}: row {row}: document {d} must be a string, got {type(doc).__name__}")
            values = as_list(row_labels)
            if values is None:
                raise ValueError(
                    f"{name}: row {row}: expects a list of labels for each sample, but got a single value "
                    f"({row_labels!r:.40})"
                )
            if len(values) != len(docs):
                raise ValueError(
                    f"{name}: row {row}: {len(docs)} documents but {len(values)} labels (one label per document)"
                )
            for d, value in enumerate(values):
                if not is_finite_number(value):
                    raise ValueError(
                        f"{name}: row {row}: label {d} ({value!r}) is not a finite number that float32 can hold"
                    )

    def width(self, columns: list[list], labels: Any, rows_per_step: int | None = None) -> tuple[int, int]:
        longest = max((len(docs) for docs in columns[1]), default=1)
        return longest, longest

    def layout(self, columns: list[list], labels: Any, rng: np.random.Generator) -> PairLayout:
        queries, doc_lists = columns[0], [as_list(docs) for docs in columns[1]]
        rows = label_rows(labels, len(queries), type(self).__name__)
        longest = max((len(docs) for docs in doc_lists), default=1)
        table = PairTable()
        index = np.full((len(queries), longest), -1, dtype=np.int64)
        label_matrix = np.zeros((len(queries), longest), dtype=np.float32)
        for q, (query, docs, row_labels) in enumerate(zip(queries, doc_lists, rows, strict=True)):
            index[q, : len(docs)] = [table.add(query, doc) for doc in docs]
            label_matrix[q, : len(docs)] = as_list(row_labels)
        return PairLayout(table.pairs, index, label_matrix)

    def _list_inputs(
        self, logits: jnp.ndarray, doc_mask: jnp.ndarray, labels: jnp.ndarray, query_mask: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        """(scores [Q, D] activated, mask [Q, D], labels [Q, D] zero where masked, row mask [Q])."""
        mask = doc_mask & query_mask[:, None]
        scores = self._scores(logits, mask)
        labels = jnp.where(mask, labels_to_width(labels, mask.shape[1]).astype(jnp.float32), 0.0)
        return scores, mask, labels, jnp.any(mask, axis=1)

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}


class ListNetLoss(ListwiseLoss):
    """ListNet: cross-entropy between the softmax of the labels and the softmax of the scores, per query,
    averaged over queries (a split of the rows adds up exactly)."""

    citation = """
@inproceedings{cao2007learning,
    title={Learning to Rank: From Pairwise Approach to Listwise Approach},
    author={Cao, Zhe and Qin, Tao and Liu, Tie-Yan and Tsai, Ming-Feng and Li, Hang},
    booktitle={Proceedings of the 24th international conference on Machine learning},
    pages={129--136},
    year={2007}
}
"""

    def parts(self, logits, doc_mask, labels, query_mask):
        scores, mask, labels, row_mask = self._list_inputs(logits, doc_mask, labels, query_mask)
        target = jnp.where(mask, jnp.exp(masked_log_softmax(labels, mask)), 0.0)
        per_query = -jnp.sum(jnp.where(mask, target * masked_log_softmax(scores, mask), 0.0), axis=1)
        return jnp.sum(jnp.where(row_mask, per_query, 0.0)), jnp.sum(row_mask.astype(jnp.float32))


class ADRMSELoss(ListwiseLoss):
    """ADR-MSE (Rank-DistiLLM): discounted squared error between each document's differentiable ApproxRank
    (``alpha`` sharpens the sigmoid) and its true rank from the labels (ties share the average rank), averaged
    over all documents of the batch (a split of the rows adds up exactly)."""

    citation = """
@inproceedings{schlatt2025rankdistillm,
    title={Rank-DistiLLM: Closing the Effectiveness Gap Between Cross-Encoders and LLMs for Passage Re-ranking},
    author={Schlatt, Ferdinand and Fröbe, Maik and Scells, Harrisen and Zhuang, Shengyao and Koopman, Bevan and \
Zuccon, Guido and Stein, Benno and Potthast, Martin and Hagen, Matthias},
    booktitle={Advances in Information Retrieval (ECIR 2025)},
    year={2025},
    doi={10.1007/978-3-031-88714-7_31},
}
"""

    def __init__(
        self, model: Any, alpha: float = 1.0, activation_fn: Any = identity, mini_batch_size: int | None = None
    ) -> None:
        super().__init__(model, activation_fn, mini_batch_size)
        self.alpha = checked_number("alpha", alpha)

    def approximate_ranks(self, scores: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        """``1 + sum_{j != i} sigmoid(alpha * (s_j - s_i))`` over the real documents j."""
        pairwise = jax.nn.sigmoid(self.alpha * (scores[:, None, :] - scores[:, :, None])) * mask[:, None, :]
        return 1.0 + jnp.sum(pairwise, axis=2) - 0.5 * mask

    def parts(self, logits, doc_mask, labels, query_mask):
        scores, mask, labels, _ = self._list_inputs(logits, doc_mask, labels, query_mask)
        valid_j = mask[:, None, :]
        greater = jnp.sum((labels[:, None, :] > labels[:, :, None]) & valid_j, axis=-1).astype(jnp.float32)
        equal = jnp.sum((labels[:, None, :] == labels[:, :, None]) & valid_j, axis=-1).astype(jnp.float32)
        true_ranks = greater + (equal + 1.0) / 2.0
        discount = 1.0 / jnp.log2(true_ranks + 1.0)
        loss = jnp.where(mask, discount * jnp.square(true_ranks - self.approximate_ranks(scores, mask)), 0.0)
        return jnp.sum(loss), jnp.sum(mask.astype(jnp.float32))

    def get_config_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, **super().get_config_dict()}
