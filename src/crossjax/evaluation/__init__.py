"""Cross-encoder evaluators with sentence-transformers' API, metric keys and CSV files, but no torch/scipy.

Each evaluator is called as ``evaluator(model, output_path=None, epoch=-1, steps=-1)`` and returns a dict of
``"{name}_{metric}"`` floats; ``evaluator.primary_metric`` names the key a training loop should optimise.
Both the classic ``CE*`` names and the sentence-transformers 6 ``CrossEncoder*Evaluator`` names are exported.
"""

from __future__ import annotations

from crossjax.st_paths import alias_class_modules, alias_modules

from .base import BaseEvaluator, CrossEncoderEvaluator, SentenceEvaluator, is_main_process
from .beir import (
    BEIRFolder,
    CrossEncoderBEIREvaluator,
    CrossEncoderNanoBEIREvaluator,
    bm25_reranking_samples,
    load_beir_folder,
)
from .binary import (
    CEBinaryAccuracyEvaluator,
    CEBinaryClassificationEvaluator,
    CrossEncoderClassificationEvaluator,
    average_precision,
    f1_scores,
    find_best_acc_and_threshold,
    find_best_f1_and_threshold,
)
from .correlation import (
    CECorrelationEvaluator,
    CrossEncoderCorrelationEvaluator,
    pearson_correlation,
    rankdata_average,
    spearman_correlation,
)
from .f1 import CEF1Evaluator
from .reranking import CERerankingEvaluator, CrossEncoderRerankingEvaluator, mrr_at_k, ndcg_at_k
from .sequential import SequentialEvaluator
from .softmax_accuracy import CESoftmaxAccuracyEvaluator

__all__ = [
    "CrossEncoderEvaluator",
    "BaseEvaluator",  # sentence-transformers' names for the base class
    "SentenceEvaluator",
    "is_main_process",
    # Classic names
    "CECorrelationEvaluator",
    "CEBinaryClassificationEvaluator",
    "CEBinaryAccuracyEvaluator",
    "CESoftmaxAccuracyEvaluator",
    "CEF1Evaluator",
    "CERerankingEvaluator",
    # sentence-transformers 6 names
    "CrossEncoderCorrelationEvaluator",
    "CrossEncoderClassificationEvaluator",
    "CrossEncoderRerankingEvaluator",
    "SequentialEvaluator",
    # BEIR folders: BM25 candidates, reranked
    "CrossEncoderBEIREvaluator",
    "CrossEncoderNanoBEIREvaluator",  # not in crossjax: its constructor says what to use instead
    "BEIRFolder",
    "load_beir_folder",
    "bm25_reranking_samples",
    # numpy metrics
    "pearson_correlation",
    "spearman_correlation",
    "rankdata_average",
    "find_best_acc_and_threshold",
    "find_best_f1_and_threshold",
    "average_precision",
    "f1_scores",
    "mrr_at_k",
    "ndcg_at_k",
]

# sentence-transformers' other paths to these classes (crossjax.evaluation stands for both its
# ``cross_encoder.evaluation`` and its ``evaluation`` packages): one module per class, and its topic modules
_CE_NAMES = [
    "CEBinaryAccuracyEvaluator",
    "CEBinaryClassificationEvaluator",
    "CEF1Evaluator",
    "CESoftmaxAccuracyEvaluator",
    "CECorrelationEvaluator",
    "CERerankingEvaluator",
]
alias_class_modules(__name__, [*_CE_NAMES, "SequentialEvaluator"])
alias_modules(
    __name__,
    {
        "classification": ["CrossEncoderClassificationEvaluator"],
        "nano_beir": ["CrossEncoderNanoBEIREvaluator"],
        "deprecated": _CE_NAMES,
    },
)
