"""Pearson/Spearman correlation between predicted and gold scores (STS-style regression evaluation)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from crossjax.runtime import show_progress_default

from .base import CrossEncoderEvaluator, PredictModel, checked_gold, epoch_text

logger = logging.getLogger(__name__)


def pearson_correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson's r computed like ``scipy.stats.pearsonr`` (float64, normalised dot product, clipped).

    Returns NaN for constant or too-short input, or NaN values, where scipy returns NaN (or raises).
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if x.size < 2 or np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    if (x == x[0]).all() or (y == y[0]).all():
        return float("nan")
    xm = x - x.mean()
    ym = y - y.mean()
    normxm = np.linalg.norm(xm)
    normym = np.linalg.norm(ym)
    r = float(np.dot(xm / normxm, ym / normym))
    return max(min(r, 1.0), -1.0)


def rankdata_average(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (``scipy.stats.rankdata(method="average")``)."""
    values = np.asarray(values).ravel()
    n = values.size
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    # Start index of each run of equal values in sorted order.
    is_new = np.r_[True, sorted_values[1:] != sorted_values[:-1]] if n else np.zeros(0, dtype=bool)
    starts = np.flatnonzero(is_new)
    ends = np.r_[starts[1:], n]
    avg_rank = (starts + ends + 1) / 2.0  # mean of the 1-based positions starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    return ranks


def spearman_correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the average-tie ranks, like ``scipy.stats.spearmanr``."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.shape[0]} and {y.shape[0]}")
    if np.isnan(x).any() or np.isnan(y).any():
        return float("nan")
    return pearson_correlation(rankdata_average(x), rankdata_average(y))


class CrossEncoderCorrelationEvaluator(CrossEncoderEvaluator):
    """Pearson and Spearman correlation of ``model.predict`` scores against gold scores.

    Same constructor, metric keys (``pearson``, ``spearman``; primary ``spearman``), CSV file
    (``CrossEncoderCorrelationEvaluator[_{name}]_results.csv``) and columns as sentence-transformers 6's
    ``CrossEncoderCorrelationEvaluator`` (whose deprecated alias is ``CECorrelationEvaluator``), so results
    and output folders are interchangeable. The correlations are computed in numpy (no scipy dependency).

    Args:
        sentence_pairs: pairs ``[text_a, text_b]``.
        scores: gold score per pair.
        name: prefix for metric keys and the CSV file name.
        prompt_name: forwarded to ``model.predict`` only when set (crossjax models take no prompts).
        batch_size: prediction batch size.
        show_progress_bar: None -> on when logging is at INFO/DEBUG.
        write_csv: append results to a CSV file when ``output_path`` is given.
    """

    def __init__(
        self,
        sentence_pairs: list[list[str]],
        scores: list[float],
        name: str = "",
        prompt_name: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
    ) -> None:
        super().__init__(name=name, write_csv=write_csv)
        if len(sentence_pairs) < 2:
            raise ValueError(f"a correlation needs at least 2 sentence pairs, got {len(sentence_pairs)}")
        self.sentence_pairs = sentence_pairs
        self.scores = checked_gold(scores, len(sentence_pairs), "scores")
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_default(show_progress_bar)
        self.csv_file = "CrossEncoderCorrelationEvaluator" + ("_" + name if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "Pearson_Correlation", "Spearman_Correlation"]
        self.primary_metric = "spearman"

    def __call__(
        self, model: PredictModel, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Predict all pairs, correlate with the gold scores, log/CSV the result, return prefixed metrics."""
        logger.info(
            f"CrossEncoderCorrelationEvaluator: Evaluating the model on {self.name} dataset{epoch_text(epoch, steps)}:"
        )
        pred_scores = self.predict(
            model, self.sentence_pairs, self.batch_size, self.show_progress_bar, self.prompt_name
        )
        if pred_scores.ndim != 1:
            raise ValueError(
                f"{type(self).__name__} correlates one score a pair, but the model gives {pred_scores.shape[1:]} "
                "(a model with num_labels=1 is needed)"
            )
        eval_pearson = pearson_correlation(self.scores, pred_scores)
        eval_spearman = spearman_correlation(self.scores, pred_scores)
        logger.info(f"Correlation:\tPearson: {eval_pearson:.4f}\tSpearman: {eval_spearman:.4f}")

        self.write_csv_row(output_path, [epoch, steps, eval_pearson, eval_spearman])

        metrics = self.prefix_name_to_metrics({"pearson": eval_pearson, "spearman": eval_spearman}, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


class CECorrelationEvaluator(CrossEncoderCorrelationEvaluator):
    """The name sentence-transformers 3 and earlier used (identical behaviour; its 6.x keeps it as an alias)."""
