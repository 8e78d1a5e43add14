"""Softmax (argmax) classification evaluation for multi-label cross-encoders such as NLI models."""

from __future__ import annotations

from .binary import CrossEncoderClassificationEvaluator


class CESoftmaxAccuracyEvaluator(CrossEncoderClassificationEvaluator):
    """Score the argmax class of an n-label cross-encoder against gold labels.

    Follows sentence-transformers 6, where this name is an alias of ``CrossEncoderClassificationEvaluator``:
    it returns ``f1_macro`` (primary), ``f1_micro`` and ``f1_weighted`` and writes
    ``CrossEncoderClassificationEvaluator[_{name}]_results.csv``. The plain softmax accuracy reported by
    the pre-v4 evaluator (``CESoftmaxAccuracyEvaluator_*_results.csv``, column ``Accuracy``) equals
    ``f1_micro`` for single-label multi-class data. Unlike ST it does not emit a deprecation warning.
    """
