"""Classification evaluation: best-threshold binary metrics for 1-label models, F1s for n-label models.

sentence-transformers 6 folded ``CEBinaryClassificationEvaluator``, ``CEBinaryAccuracyEvaluator``,
``CEF1Evaluator`` and ``CESoftmaxAccuracyEvaluator`` into one ``CrossEncoderClassificationEvaluator``
that picks its metrics from ``model.num_labels``. This module holds that shared implementation (plus the numpy
metrics it needs, which replicate ST's / scikit-learn's numbers) and the two binary CE* names.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from crossjax.runtime import show_progress_default

from .base import CrossEncoderEvaluator, PredictModel, checked_gold, epoch_text, finite_scores

logger = logging.getLogger(__name__)

ArrayLike = Sequence[float] | np.ndarray


def _sort_rows(scores: np.ndarray, labels: np.ndarray, high_score_more_similar: bool):
    order = np.argsort(scores, kind="stable")
    if high_score_more_similar:
        order = order[::-1]
    s, lab = scores[order], labels[order]
    # A row closes a group of equal scores when the next score differs (ST skips rows tied with the next).
    group_end = np.r_[s[1:] != s[:-1], True] if s.size else np.zeros(0, dtype=bool)
    return s, lab, np.flatnonzero(group_end)


def _midpoint_threshold(s: np.ndarray, i: int) -> Any:
    """Threshold between group ending at ``i`` and the next; in the scores' dtype, as ST computes it."""
    if i == s.size - 1:
        return s[i]
    threshold = (s[i] + s[i + 1]) / 2
    # A rounded midpoint must not include the next score group.
    if threshold == s[i + 1]:
        threshold = s[i]
    return threshold


def find_best_acc_and_threshold(
    scores: ArrayLike, labels: ArrayLike, high_score_more_similar: bool = True
) -> tuple[float, float]:
    """Best accuracy over all decision thresholds, and that threshold.

    Same result as sentence-transformers' ``BinaryClassificationEvaluator.find_best_acc_and_threshold``
    (first best threshold wins; the start point predicts everything negative), vectorised.
    """
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError("scores and labels must have the same length")
    n = len(labels)
    if n == 0:
        return 0.0, -1.0
    score_dtype = np.result_type(scores.dtype, np.float16)
    s, lab, ends = _sort_rows(scores, labels, high_score_more_similar)
    is_pos = lab == 1
    positive_so_far = np.cumsum(is_pos)
    remaining_negatives = int(np.sum(labels == 0)) - np.cumsum(~is_pos)
    acc = (positive_so_far + remaining_negatives)[ends] / n

    max_acc = int(np.sum(labels == 0)) / n
    best_threshold = np.nextafter(s[0], np.inf if high_score_more_similar else -np.inf, dtype=score_dtype)
    best = int(np.argmax(acc))
    if acc[best] > max_acc:
        max_acc = float(acc[best])
        best_threshold = _midpoint_threshold(s, int(ends[best]))
    return float(max_acc), float(best_threshold)


def find_best_f1_and_threshold(
    scores: ArrayLike, labels: ArrayLike, high_score_more_similar: bool = True
) -> tuple[float, float, float, float]:
    """Best F1 over all thresholds with its precision, recall and threshold (ST's algorithm, vectorised)."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if len(scores) != len(labels):
        raise ValueError("scores and labels must have the same length")
    if len(labels) == 0:
        return 0.0, 0.0, 0.0, 0.0
    s, lab, ends = _sort_rows(scores, labels, high_score_more_similar)
    total_num_duplicates = labels.sum()
    nextract = np.arange(1, len(lab) + 1)[ends]
    ncorrect = np.cumsum(lab == 1)[ends]
    valid = ncorrect > 0
    if not valid.any():
        return 0.0, 0.0, 0.0, 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = ncorrect / nextract
        recall = ncorrect / total_num_duplicates
        f1 = 2 * precision * recall / (precision + recall)
    f1 = np.where(valid, f1, -np.inf)
    best = int(np.argmax(f1))
    if not f1[best] > 0:
        return 0.0, 0.0, 0.0, 0.0
    threshold = _midpoint_threshold(s, int(ends[best]))
    return float(f1[best]), float(precision[best]), float(recall[best]), float(threshold)


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision (area under the step PR curve), matching ``sklearn.metrics.average_precision_score``.

    Tied scores form one threshold (no optimistic interpolation); positives are ``y_true == 1``.
    Returns 0.0 without positives (scikit-learn warns and returns 0.0 too).
    """
    y_true = np.asarray(y_true).ravel() == 1
    y_score = np.asarray(y_score).ravel()
    if y_true.size != y_score.size:
        raise ValueError("y_true and y_score must have the same length")
    if y_true.size == 0:
        return float("nan")
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score = y_score[order]
    y_true = y_true[order]
    distinct_value_indices = np.flatnonzero(np.diff(y_score))
    threshold_idxs = np.r_[distinct_value_indices, y_true.size - 1]
    tps = np.cumsum(y_true, dtype=np.float64)[threshold_idxs]
    if tps[-1] == 0:
        return 0.0
    fps = 1 + threshold_idxs.astype(np.float64) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(max(0.0, np.sum(np.diff(np.r_[0.0, recall]) * precision)))


def f1_scores(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[float, float, float]:
    """Macro, micro and support-weighted F1 over the union of labels, like sklearn's ``f1_score``.

    Classes with neither true nor predicted samples cannot occur (labels are the union), and a class
    with zero precision and recall contributes F1 = 0 (sklearn's ``zero_division`` default).
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.size != y_pred.size:
        raise ValueError("y_true and y_pred must have the same length")
    _, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    inverse = inverse.ravel()
    t, p = inverse[: y_true.size], inverse[y_true.size :]
    n_labels = int(inverse.max()) + 1 if inverse.size else 0
    true_sum = np.bincount(t, minlength=n_labels).astype(np.float64)
    pred_sum = np.bincount(p, minlength=n_labels).astype(np.float64)
    tp_sum = np.bincount(t[t == p], minlength=n_labels).astype(np.float64)
    denom = true_sum + pred_sum
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class = np.where(denom > 0, 2 * tp_sum / denom, 0.0)
    macro = float(per_class.mean()) if n_labels else 0.0
    micro = float(2 * tp_sum.sum() / denom.sum()) if denom.sum() > 0 else 0.0
    weighted = float(np.average(per_class, weights=true_sum)) if true_sum.sum() > 0 else 0.0
    return macro, micro, weighted


def _num_labels(model: Any, pred_scores: np.ndarray) -> int:
    num_labels = getattr(model, "num_labels", None)
    if num_labels is None:
        num_labels = 1 if pred_scores.ndim == 1 else int(pred_scores.shape[-1])
    return int(num_labels)


class CrossEncoderClassificationEvaluator(CrossEncoderEvaluator):
    """Accuracy-style evaluation of a classifier cross-encoder against gold labels.

    With ``model.num_labels == 1`` (or 1-D predictions when the model has no ``num_labels``) the scores
    are treated as binary: ``accuracy``/``accuracy_threshold`` and ``f1``/``f1_threshold``/``precision``/
    ``recall`` at their best thresholds, and ``average_precision`` (primary). Otherwise the argmax class
    is scored with ``f1_macro`` (primary), ``f1_micro`` (= accuracy) and ``f1_weighted``.

    Matches sentence-transformers 6's ``CrossEncoderClassificationEvaluator``: constructor, keys, CSV file
    ``CrossEncoderClassificationEvaluator[_{name}]_results.csv`` and its columns. As in ST,
    ``primary_metric`` and ``csv_headers`` are only known after the first call (they depend on the model);
    before that ``primary_metric`` is None. Unknown keyword arguments (from the pre-v4 evaluators, e.g.
    ``threshold``) are ignored, like ST does, but logged. ``from_input_examples`` is available on all
    classification evaluators here, not only the CE* ones.
    """

    def __init__(
        self,
        sentence_pairs: list[list[str]],
        labels: list[int],
        *,
        name: str = "",
        prompt_name: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
        **kwargs: Any,
    ) -> None:
        labels = checked_gold(labels, len(sentence_pairs), "labels", classes=True)
        super().__init__(name=name, write_csv=write_csv)
        if kwargs:
            logger.warning(f"{type(self).__name__} ignores the arguments {sorted(kwargs)}.")
        self.sentence_pairs = sentence_pairs
        self.labels = np.asarray(labels)
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_default(show_progress_bar)
        self.csv_file = "CrossEncoderClassificationEvaluator" + ("_" + name if name else "") + "_results.csv"

    def __call__(
        self, model: PredictModel, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Predict all pairs, compute binary or multi-class metrics, log/CSV them, return prefixed metrics."""
        logger.info(
            f"CrossEncoderClassificationEvaluator: Evaluating the model on {self.name} dataset"
            f"{epoch_text(epoch, steps)}:"
        )
        pred_scores = self.predict(
            model, self.sentence_pairs, self.batch_size, self.show_progress_bar, self.prompt_name
        )
        finite_scores(pred_scores, self.sentence_pairs, type(self).__name__)

        metrics: dict[str, float]
        if _num_labels(model, pred_scores) == 1:
            if pred_scores.ndim == 2 and pred_scores.shape[1] == 1:
                pred_scores = pred_scores[:, 0]
            if not set(np.unique(self.labels)) <= {0, 1}:
                raise ValueError(
                    f"a model with one output is scored as a binary classifier: labels must be 0 or 1, got "
                    f"{sorted(set(np.unique(self.labels).tolist()))}"
                )
            acc, acc_threshold = find_best_acc_and_threshold(pred_scores, self.labels, True)
            f1, precision, recall, f1_threshold = find_best_f1_and_threshold(pred_scores, self.labels, True)
            ap = average_precision(self.labels, pred_scores)

            logger.info(f"Accuracy:          {acc * 100:.2f}\t(Threshold: {acc_threshold:.4f})")
            logger.info(f"F1:                {f1 * 100:.2f}\t(Threshold: {f1_threshold:.4f})")
            logger.info(f"Precision:         {precision * 100:.2f}")
            logger.info(f"Recall:            {recall * 100:.2f}")
            logger.info(f"Average Precision: {ap * 100:.2f}")

            metrics = {
                "accuracy": acc,
                "accuracy_threshold": acc_threshold,
                "f1": f1,
                "f1_threshold": f1_threshold,
                "precision": precision,
                "recall": recall,
                "average_precision": ap,
            }
            self.csv_headers = [
                "epoch",
                "steps",
                "Accuracy",
                "Accuracy_Threshold",
                "F1",
                "F1_Threshold",
                "Precision",
                "Recall",
                "Average_Precision",
            ]
            self.primary_metric = "average_precision"
        else:
            pred_labels = np.argmax(pred_scores, axis=1)
            f1_macro, f1_micro, f1_weighted = f1_scores(self.labels, pred_labels)

            logger.info(f"Macro F1:           {f1_macro * 100:.2f}")
            logger.info(f"Micro F1:           {f1_micro * 100:.2f}")
            logger.info(f"Weighted F1:        {f1_weighted * 100:.2f}")

            metrics = {"f1_macro": f1_macro, "f1_micro": f1_micro, "f1_weighted": f1_weighted}
            self.csv_headers = ["epoch", "steps", "Macro_F1", "Micro_F1", "Weighted_F1"]
            self.primary_metric = "f1_macro"

        self.write_csv_row(output_path, [epoch, steps, *metrics.values()])

        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


class CEBinaryClassificationEvaluator(CrossEncoderClassificationEvaluator):
    """Binary classification of a 1-label cross-encoder: best-threshold accuracy/F1, precision, recall, AP.

    Primary metric ``average_precision``. As in sentence-transformers 6 this is the general
    :class:`CrossEncoderClassificationEvaluator` (so a multi-label model gets macro/micro/weighted F1), and
    it writes ``CrossEncoderClassificationEvaluator[_{name}]_results.csv``, not the pre-v4
    ``CEBinaryClassificationEvaluator_*`` file. Unlike ST it does not emit a deprecation warning.
    """


class CEBinaryAccuracyEvaluator(CrossEncoderClassificationEvaluator):
    """Pre-v4 name kept by sentence-transformers 6 as an alias of the classification evaluator.

    The legacy fixed ``threshold`` argument is ignored (as in ST 6); use ``accuracy`` with
    ``accuracy_threshold`` from the returned metrics instead.
    """
