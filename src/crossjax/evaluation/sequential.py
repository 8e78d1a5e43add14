"""Several evaluators as one, as sentence-transformers' ``SequentialEvaluator``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .base import CrossEncoderEvaluator, PredictModel


class SequentialEvaluator(CrossEncoderEvaluator):
    """Runs ``evaluators`` one after another and returns all their metrics, plus ``sequential_score``
    (primary): ``main_score_function`` of each evaluator's primary score (default: the last one's).

    A plain number an evaluator returns is kept as ``evaluator_{i}``, as in sentence-transformers.
    """

    def __init__(
        self,
        evaluators: Iterable[Callable[..., Any]],
        main_score_function: Callable[[list[float]], float] = lambda scores: scores[-1],
    ) -> None:
        super().__init__()
        self.evaluators = list(evaluators)
        for i, evaluator in enumerate(self.evaluators):
            if isinstance(evaluator, type) or not callable(evaluator):
                raise TypeError(f"evaluators[{i}] must be an evaluator instance, got {evaluator!r}")
        self.main_score_function = main_score_function
        self.primary_metric = "sequential_score"

    def __call__(
        self, model: PredictModel, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        results: dict[str, float] = {}
        scores: list[float] = []
        for i, evaluator in enumerate(self.evaluators):
            evaluation = evaluator(model, output_path, epoch, steps)
            if not isinstance(evaluation, dict):
                scores.append(evaluation)
                evaluation = {f"evaluator_{i}": evaluation}
            else:
                primary = getattr(evaluator, "primary_metric", None)
                scores.append(evaluation[primary] if primary is not None else next(iter(evaluation.values())))
            results.update(evaluation)
        results["sequential_score"] = self.main_score_function(scores) if scores else 0.0
        return results
