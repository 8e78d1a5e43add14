"""sentence-transformers 6.2's in-batch negatives losses: ``MultipleNegativesRankingLoss`` and its cached twin.

Rows are (anchor, positive, hard_negative_1..h) with no labels. Each anchor is scored against its positive,
``num_negatives`` candidates drawn from the *other* rows' positives and hard negatives (all of them with
``num_negatives=None``, or when there are fewer), and its own hard negatives, in that order (slot 0 = the
positive, as sentence-transformers' ``forward`` builds the score matrix). The loss is the cross-entropy of
``scale * activation(scores)`` against slot 0, a mean over rows, so a split of the rows adds up exactly
(the negatives are drawn once per step for the whole batch, on the host).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from crossjax.losses.activations import is_row_normalising, sigmoid
from crossjax.losses.base import (
    CrossEncoderLoss,
    PairLayout,
    PairTable,
    checked_number,
    is_integer,
    masked_log_softmax,
)

__all__ = ["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss"]


class MultipleNegativesRankingLoss(CrossEncoderLoss):
    """InfoNCE over (anchor, positive[, hard negatives...]) rows with in-batch negatives (see the module
    docstring). Sampling uses the ``rng`` the trainer passes to :meth:`layout` (the step's seed)."""

    # sentence-transformers applies the activation to the [anchors, 1 + negatives] scores: a softmax normalises
    # each anchor's own candidates (here: the real ones of its row)
    allows_softmax = True

    def __init__(
        self, model: Any, num_negatives: int | None = 4, scale: float = 10.0, activation_fn: Any = sigmoid
    ) -> None:
        super().__init__(model, activation_fn)
        if num_negatives is not None and (
            not is_integer(num_negatives) or num_negatives < 1
        ):
            raise ValueError(
                f"num_negatives must be a positive int or None (all in-batch negatives), got {num_negatives!r}"
            )
        self.num_negatives = None if num_negatives is None else int(num_negatives)
        self.scale = None if scale is None else checked_number("scale", scale)  # None: unscaled, as there

    def sampled_negative_count(self, rows: int, num_candidate_columns: int) -> int:
        """How many in-batch negatives each row gets: ``num_negatives``, or all of them when that is None
        or not smaller than the other rows' candidates (sentence-transformers' rule)."""
        available = (rows - 1) * num_candidate_columns
        if self.num_negatives is not None and self.num_negatives < available:
            return self.num_negatives
        return available

    def negative_indices(self, rows: int, num_candidate_columns: int, rng: np.random.Generator) -> np.ndarray:
        """int [rows, n]: flat candidate indices ``column * rows + row`` (column 0 = the positives), never the
        row's own. All of them in increasing order, or a uniform draw without replacement (as torch.multinomial
        over a uniform mask) in random order."""
        flat = np.arange(rows * num_candidate_columns)
        own = (flat % rows)[None, :] == np.arange(rows)[:, None]
        count = self.sampled_negative_count(rows, num_candidate_columns)
        if count == (rows - 1) * num_candidate_columns:
            return np.broadcast_to(flat, own.shape)[~own].reshape(rows, count)
        keys = rng.random(own.shape)
        keys[own] = np.inf
        return np.argsort(keys, axis=1, kind="stable")[:, :count]

    def _scores(self, logits: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        if not is_row_normalising(self.activation):
            return super()._scores(logits, mask)
        raw = jnp.where(mask, logits[..., 0].astype(jnp.float32), 0.0)
        name = self.activation.__name__  # softmax, logsoftmax or softmin, over the row's real candidates
        log_probs = masked_log_softmax(-raw if name == "softmin" else raw, mask)
        return jnp.where(mask, log_probs if name == "logsoftmax" else jnp.exp(log_probs), 0.0)

    def validate(self, columns: list[list], labels: Any, row_offset: int = 0) -> None:
        self._check_column_count(columns, None, at_least=2)
        self._check_texts(columns, row_offset, range(len(columns)))

    def width(self, columns: list[list], labels: Any, rows_per_step: int | None = None) -> tuple[int, int]:
        rows = len(columns[0]) if rows_per_step is None else rows_per_step
        num_candidate_columns = len(columns) - 1
        return 1 + self.sampled_negative_count(rows, num_candidate_columns) + num_candidate_columns - 1, 0

    def layout(self, columns: list[list], labels: Any, rng: np.random.Generator) -> PairLayout:
        anchors, candidates = columns[0], columns[1:]
        rows = len(anchors)
        negatives = self.negative_indices(rows, len(candidates), rng)
        table = PairTable()
        index = [
            [table.add(anchor, candidates[0][q])]
            + [table.add(anchor, candidates[f // rows][f % rows]) for f in negatives[q]]
            + [table.add(anchor, column[q]) for column in candidates[1:]]
            for q, anchor in enumerate(anchors)
        ]
        width = 1 + negatives.shape[1] + len(candidates) - 1
        return PairLayout(
            table.pairs, np.array(index, dtype=np.int64).reshape(rows, width), np.zeros((rows, 0), np.float32)
        )

    def parts(self, logits, doc_mask, labels, query_mask):
        row_mask = query_mask & doc_mask[:, 0]
        mask = doc_mask & row_mask[:, None]
        scores = self._scores(logits, mask)
        if self.scale:
            scores = scores * self.scale
        log_probs = masked_log_softmax(scores, mask)
        return -jnp.sum(jnp.where(row_mask, log_probs[:, 0], 0.0)), jnp.sum(row_mask.astype(jnp.float32))

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "num_negatives": self.num_negatives, **super().get_config_dict()}


class CachedMultipleNegativesRankingLoss(MultipleNegativesRankingLoss):
    """``MultipleNegativesRankingLoss`` with gradient caching: the same loss, computed in bounded memory.

    ``mini_batch_size`` is the number of pairs per forward/backward chunk: the trainer's step scores all pairs
    without gradients, takes the loss's gradient with respect to the scores, then back-propagates chunk by
    chunk (sentence-transformers' GradCache). The value and the gradient equal the uncached loss.
    """

    uses_gradient_cache = True

    def __init__(
        self,
        model: Any,
        num_negatives: int | None = 4,
        scale: float = 10.0,
        activation_fn: Any = sigmoid,
        mini_batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> None:
        super().__init__(model, num_negatives=num_negatives, scale=scale, activation_fn=activation_fn)
        if not is_integer(mini_batch_size) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be a positive int, got {mini_batch_size!r}")
        self.mini_batch_size = int(mini_batch_size)
        self.show_progress_bar = show_progress_bar

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}
