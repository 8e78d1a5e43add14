"""Shared plumbing for the cross-encoder evaluators.

The evaluators mirror sentence-transformers' ``BaseEvaluator`` contract (``name``, ``primary_metric``,
``greater_is_better``, name-prefixed metric keys, append-only CSV files) without importing
sentence-transformers or torch, so that evaluation can run inside a JAX training job.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from crossjax.data import python_values
from crossjax.runtime import is_main_process

logger = logging.getLogger(__name__)


class PredictModel(Protocol):
    """What an evaluator needs from a model: a ``predict`` over sentence pairs returning numpy scores."""

    def predict(self, sentences: Any, batch_size: int = 32, **kwargs: Any) -> Any: ...


def epoch_text(epoch: int, steps: int) -> str:
    """The ' in epoch X after Y steps' suffix used in log lines, worded exactly like sentence-transformers."""
    if epoch == -1:
        return ""
    if steps == -1:
        return f" after epoch {epoch}"
    return f" in epoch {epoch} after {steps} steps"


def checked_gold(values: Sequence[Any], pairs: int, what: str, classes: bool = False) -> np.ndarray:
    """One gold value per sentence pair, checked when the evaluator is made: finite numbers, and for classes
    whole numbers >= 0. A None (crossjax's ``InputExample`` label default), a string or a NaN would otherwise
    surface as a NaN metric, a silent 0 or a numpy error at the first evaluation, after training."""
    values = python_values(values)
    if len(values) != pairs:
        raise ValueError(f"{what}: {len(values)} values for {pairs} sentence pairs")
    if pairs == 0:  # metrics of nothing would read as a real (0 or NaN) score
        raise ValueError(f"{what}: the evaluator needs at least one sentence pair")
    for i, value in enumerate(values):
        number = isinstance(value, (int, float, np.integer, np.floating, np.bool_))
        bad = not number or not math.isfinite(float(value))
        if not bad and classes:
            bad = float(value) != int(value) or value < 0
        if bad:
            need = "a class index (a whole number >= 0)" if classes else "a finite number"
            hint = " (crossjax's InputExample label defaults to None)" if value is None else ""
            if classes and number and value == -100:
                hint = (
                    " (-100, torch's ignore_index, marks an unlabelled pair: fit's loss skips it, but a metric "
                    "needs every pair's class; leave such pairs out of the evaluation data)"
                )
            raise ValueError(f"{what}[{i}] is {value!r}: every pair needs {need}{hint}")
    return np.asarray(values, dtype=np.int64 if classes else np.float64)


def finite_scores(scores: np.ndarray, pairs: Sequence[Any], evaluator: str) -> np.ndarray:
    """``scores`` if all are finite, else a ValueError naming the first bad pair. A NaN would sort first
    (argsort puts it last, and metrics read scores best first): a diverged model could then score a perfect
    accuracy, MAP or MRR and be kept as the best. sentence-transformers raises here too (scikit-learn's
    "Input contains NaN")."""
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(scores), -1).any(axis=1))
        first = int(rows[0])
        raise ValueError(
            f"{evaluator}: the model scored {len(rows)} of {len(scores)} pairs {scores[first].tolist()}, not a finite "
            f"number (first: pair {first}, {list(pairs[first])!r}); its parameters (or compute dtype) no longer "
            "give finite outputs, so no metric can be computed"
        )
    return scores


def _maybe_to_float(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


class CrossEncoderEvaluator:
    """Base class of all crossjax cross-encoder evaluators.

    Subclasses implement ``__call__(model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]``.
    The returned keys are prefixed with ``name`` (``"{name}_{metric}"``) and ``primary_metric`` names the key
    that a training loop should treat as *the* score (higher is better when ``greater_is_better``), which is
    how sentence-transformers >= 3 training loops consume evaluators.
    """

    csv_file: str = ""
    csv_headers: list[str] = []

    def __init__(self, name: str = "", write_csv: bool = True) -> None:
        self.name = name
        self.write_csv = write_csv
        self.greater_is_better = True
        self.primary_metric: str | None = None

    def __call__(
        self, model: PredictModel, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Evaluate ``model``; append a CSV row under ``output_path`` (process 0 only); return metrics."""
        raise NotImplementedError

    # -- helpers shared by the subclasses -------------------------------------------------------------------

    @classmethod
    def from_input_examples(cls, examples: list[Any], **kwargs: Any):
        """Build from ``InputExample``-like objects: their ``.texts`` pairs and ``.label`` values."""
        return cls([example.texts for example in examples], [example.label for example in examples], **kwargs)

    def prefix_name_to_metrics(self, metrics: dict[str, Any], name: str) -> dict[str, Any]:
        """Prefix keys with ``name_`` and cast values to float, keeping ``primary_metric`` in sync (as ST)."""
        if not name:
            return {key: _maybe_to_float(value) for key, value in metrics.items()}
        metrics = {name + "_" + key: _maybe_to_float(value) for key, value in metrics.items()}
        if self.primary_metric is not None and not self.primary_metric.startswith(name + "_"):
            self.primary_metric = name + "_" + self.primary_metric
        return metrics

    def write_csv_row(self, output_path: str | None, row: Sequence[Any]) -> None:
        """Append ``row`` to ``output_path/csv_file``; the header is written only when the file is new.

        Only JAX process 0 writes, so multi-host runs on a shared filesystem don't interleave rows.
        """
        if output_path is None or not self.write_csv or not is_main_process():
            return
        os.makedirs(output_path, exist_ok=True)
        csv_path = os.path.join(output_path, self.csv_file)
        output_file_exists = os.path.isfile(csv_path)
        with open(csv_path, newline="", mode="a" if output_file_exists else "w", encoding="utf-8") as f:
            writer = csv.writer(f)
            if not output_file_exists:
                writer.writerow(self.csv_headers)
            writer.writerow([value.item() if isinstance(value, np.generic) else value for value in row])

    def store_metrics_in_model_card_data(
        self, model: Any, metrics: dict[str, Any], epoch: int = 0, step: int = 0
    ) -> None:
        """Forward metrics to ``model.model_card_data`` when the model has one (ST models do)."""
        card = getattr(model, "model_card_data", None)
        if card is not None and hasattr(card, "set_evaluation_metrics"):
            card.set_evaluation_metrics(self, metrics, epoch, step)

    def predict(
        self,
        model: PredictModel,
        sentence_pairs: Sequence[Sequence[str]],
        batch_size: int,
        show_progress_bar: bool,
        prompt_name: str | None = None,
    ) -> np.ndarray:
        """Call ``model.predict`` with the kwargs sentence-transformers uses.

        ``prompt_name`` is only forwarded when set, because crossjax models have no prompts.
        """
        kwargs: dict[str, Any] = {
            "batch_size": batch_size,
            "convert_to_numpy": True,
            "show_progress_bar": show_progress_bar,
        }
        if prompt_name is not None:
            kwargs["prompt_name"] = prompt_name
        return np.asarray(model.predict(sentence_pairs, **kwargs))

    @property
    def description(self) -> str:
        """Human-readable name for model cards: ``CECorrelationEvaluator`` -> ``CrossEncoder Correlation``."""
        class_name = self.__class__.__name__
        if class_name.startswith("CE"):
            class_name = "CrossEncoder" + class_name[2:]
        if "Evaluator" in class_name:
            class_name = class_name[: class_name.index("Evaluator")]
        return re.sub(r"([a-z])([A-Z])", r"\g<1> \g<2>", class_name)

    def get_config_dict(self) -> dict[str, Any]:
        """Configuration worth recording in a model card; empty unless a subclass has tunables."""
        return {}


# sentence-transformers' names for the base class a custom evaluator subclasses (``base.evaluation.BaseEvaluator``,
# and ``SentenceEvaluator`` at its older paths): the same contract, so a subclass written for it runs here
BaseEvaluator = CrossEncoderEvaluator
SentenceEvaluator = CrossEncoderEvaluator
