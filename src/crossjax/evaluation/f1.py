"""F1 evaluation of classifier cross-encoders (binary best-threshold F1 or macro/micro/weighted F1)."""

from __future__ import annotations

from .binary import CrossEncoderClassificationEvaluator


class CEF1Evaluator(CrossEncoderClassificationEvaluator):
    """F1 scores of a classifier cross-encoder against gold labels.

    Follows sentence-transformers 6, where this name is an alias of ``CrossEncoderClassificationEvaluator``:
    an n-label model gets ``f1_macro`` (primary), ``f1_micro`` and ``f1_weighted`` of its argmax class; a
    1-label model gets the binary metrics (``f1`` at the best threshold, ..., primary
    ``average_precision``). Results go to ``CrossEncoderClassificationEvaluator[_{name}]_results.csv``
    rather than the pre-v4 ``CEF1Evaluator_*`` file. Unlike ST it does not emit a deprecation warning.
    """
