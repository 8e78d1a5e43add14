"""Re-ranking evaluation: score (query, document) pairs and measure MAP, MRR@k and NDCG@k per query."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from .base import CrossEncoderEvaluator, PredictModel, checked_gold, epoch_text, finite_scores
from .binary import average_precision

logger = logging.getLogger(__name__)


def mrr_at_k(y_true: Sequence[int], y_pred: np.ndarray, k: int | None) -> float:
    """Reciprocal rank of the first relevant document within the top ``k`` (None: any rank), else 0.

    Uses ``np.argsort(y_pred)[::-1]`` exactly like sentence-transformers, so tied scores are ordered the
    same way and the numbers agree bit for bit.
    """
    ranking = np.argsort(y_pred)[::-1]
    for rank, index in enumerate(ranking[0:k]):
        if y_true[index]:
            return 1 / (rank + 1)
    return 0.0


def ndcg_at_k(
    y_true: Sequence[float] | np.ndarray, y_score: Sequence[float] | np.ndarray, k: int | None
) -> float:
    """NDCG@k of one query with ``sklearn.metrics.ndcg_score`` semantics (the ST implementation).

    Log2 discount, gains are the raw relevances, and tied scores share the average gain of their group
    (sklearn's default ``ignore_ties=False``). A query without relevant documents scores 0. Unlike
    scikit-learn (which raises), a single-document query is allowed and scored normally.
    """
    y_true = np.asarray(y_true).ravel()
    y_score = np.asarray(y_score).ravel()
    if y_true.size != y_score.size:
        raise ValueError("y_true and y_score must have the same length")
    if y_true.size == 0:
        return 0.0
    if (y_true < 0).any():
        raise ValueError("NDCG is not defined for negative relevance values.")
    discount = 1 / (np.log(np.arange(y_true.size) + 2) / np.log(2))
    if k is not None:
        discount[k:] = 0
    discount_cumsum = np.cumsum(discount)

    # DCG averaged over all orderings of tied scores.
    _, inv, counts = np.unique(-y_score, return_inverse=True, return_counts=True)
    ranked = np.zeros(len(counts))
    np.add.at(ranked, inv.ravel(), y_true)
    ranked /= counts
    groups = np.cumsum(counts) - 1
    discount_sums = np.empty(len(counts))
    discount_sums[0] = discount_cumsum[groups[0]]
    discount_sums[1:] = np.diff(discount_cumsum[groups])
    dcg = (ranked * discount_sums).sum()

    ideal = discount.dot(y_true[np.argsort(y_true)[::-1]])
    if ideal == 0:
        return 0.0
    return float(dcg / ideal)


class CrossEncoderRerankingEvaluator(CrossEncoderEvaluator):
    """Re-ranking quality: MAP, MRR@k and NDCG@k (primary) of ``model.predict`` over (query, doc) pairs.

    Matches sentence-transformers 6's ``CrossEncoderRerankingEvaluator`` (whose deprecated alias is
    ``CERerankingEvaluator``): same constructor, sample format, keys ``map``, ``mrr@{k}``, ``ndcg@{k}`` (plus
    ``base_*`` before-reranking metrics when samples carry ranked ``documents``), primary ``ndcg@{k}``, CSV
    file ``CrossEncoderRerankingEvaluator[_{name}]_results_@{k}.csv`` and columns. Note that the pre-v4
    evaluator of this name used MRR@10 as its score; like ST 6, ``primary_metric`` is NDCG@k here and
    ``mrr@{k}`` is still returned. A query without positives counts as 0 for every metric (and is not sent
    to the model). All pairs are predicted in one batched ``predict`` call, as in ST.

    Differences from ST: a query whose only document is a positive is scored (1.0) instead of raising
    scikit-learn's "only meaningful when there is more than 1 document" error; ``from_input_examples`` is a
    crossjax addition.

    Args:
        samples: dicts with ``query``, ``positive`` (list of str) and either ``negative`` (list of str) or
            ``documents`` (all documents, ranked by a first-stage retriever, positives included). A dict of
            such samples (the pre-v4 format) is also accepted.
        at_k: cut-off for MRR and NDCG (None: every rank).
        always_rerank_positives: with ``documents``, add positives the retriever missed before re-ranking.
        name: prefix for metric keys and the CSV file name.
        prompt_name: forwarded to ``model.predict`` only when set (crossjax models take no prompts).
        batch_size: prediction batch size.
        show_progress_bar: show a progress bar during prediction.
        write_csv: append results to a CSV file when ``output_path`` is given.
        mrr_at_k: deprecated alias of ``at_k``.
    """

    def __init__(
        self,
        samples: list[dict[str, str | list[str]]],
        at_k: int | None = 10,
        always_rerank_positives: bool = True,
        name: str = "",
        prompt_name: str | None = None,
        batch_size: int = 64,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        mrr_at_k: int | None = None,
    ) -> None:
        super().__init__(name=name, write_csv=write_csv)
        if mrr_at_k is not None:
            logger.warning(
                f"The `mrr_at_k` parameter has been deprecated; please use `at_k={mrr_at_k}` instead."
            )
            at_k = mrr_at_k
        if at_k is not None and (isinstance(at_k, bool) or not isinstance(at_k, int | np.integer) or at_k < 1):
            raise ValueError(
                f"at_k must be an integer >= 1 (the ranks MRR and NDCG look at) or None (every rank), got {at_k!r}"
            )
        self.at_k = None if at_k is None else int(at_k)  # None: no cut-off ("mrr@None"), as sentence-transformers
        # A list, so that every evaluation reads the samples again (a generator would be empty the second time)
        self.samples = list(samples.values()) if isinstance(samples, dict) else list(samples)
        if not self.samples:
            raise ValueError(f"{type(self).__name__} needs at least one sample (query, positives, candidates)")
        self.always_rerank_positives = always_rerank_positives
        self.prompt_name = prompt_name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.csv_file = (
            "CrossEncoderRerankingEvaluator" + ("_" + name if name else "") + f"_results_@{self.at_k}.csv"
        )
        self.csv_headers = ["epoch", "steps", "MAP", f"MRR@{self.at_k}", f"NDCG@{self.at_k}"]
        self.primary_metric = f"{self.primary_kind}@{self.at_k}"

    primary_kind = "ndcg"  # the metric fit keeps the best model by

    @classmethod
    def from_input_examples(cls, examples: list[Any], **kwargs: Any) -> CrossEncoderRerankingEvaluator:
        """Group ``InputExample``-like (query, doc) pairs by query; ``label > 0`` marks a positive.

        Queries keep their first-seen order. This helper is a crossjax addition (ST has none for re-ranking).
        """
        grouped: dict[str, dict[str, Any]] = {}
        checked_gold([example.label for example in examples], len(examples), f"{cls.__name__} labels")
        for example in examples:
            query, doc = example.texts[0], example.texts[1]
            sample = grouped.setdefault(query, {"query": query, "positive": [], "negative": []})
            sample["positive" if float(example.label) > 0 else "negative"].append(doc)
        return cls(list(grouped.values()), **kwargs)

    def compute_metrics(self, y_true: Sequence[int], y_pred: np.ndarray) -> tuple[float, float, float]:
        """MRR@k, NDCG@k and AP of one query, in ST's order."""
        mrr = mrr_at_k(y_true, y_pred, self.at_k)
        ndcg = ndcg_at_k(y_true, y_pred, k=self.at_k)
        ap = average_precision(y_true, y_pred)
        return mrr, ndcg, ap

    def __call__(
        self, model: PredictModel, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Predict all (query, doc) pairs in one batch, average per-query metrics, log/CSV, return them."""
        where = epoch_text(epoch, steps)
        logger.info(f"CrossEncoderRerankingEvaluator: Evaluating the model on the {self.name} dataset{where}:")
        base_mrr_scores: list[float] = []
        base_ndcg_scores: list[float] = []
        base_ap_scores: list[float] = []
        num_positives: list[int] = []
        num_negatives: list[int] = []
        all_pairs: list[list[str]] = []
        sample_metadata: list[tuple[list[int], int] | None] = []

        cls_name = type(self).__name__
        for instance in self.samples:
            if "query" not in instance:
                raise ValueError(f"{cls_name} requires a 'query' key in each sample.")
            if "positive" not in instance:
                raise ValueError(f"{cls_name} requires a 'positive' key in each sample.")
            if ("negative" in instance) == ("documents" in instance):
                raise ValueError(
                    f"{cls_name} requires exactly one of 'negative' and 'documents' in each sample."
                )
            query = instance["query"]
            positive = instance["positive"]
            if isinstance(positive, str):
                positive = [positive]
            positive = list(positive)
            negative = instance.get("negative", None)
            documents = instance.get("documents", None)
            for key, value in (("negative", negative), ("documents", documents)):
                if isinstance(value, str | bytes):  # would be read as one document a character
                    raise TypeError(f"{cls_name}: a sample's {key!r} must be a list of texts, got {value!r:.60}")

            if documents is not None:  # an empty list: the retriever found nothing (not "no documents key")
                base_is_relevant = [int(doc in positive) for doc in documents]
                if sum(base_is_relevant) == 0:
                    base_mrr, base_ndcg, base_ap = 0.0, 0.0, 0.0
                else:
                    base_is_relevant += [1] * (len(positive) - sum(base_is_relevant))
                    base_pred_scores = np.array(range(len(base_is_relevant), 0, -1))
                    base_mrr, base_ndcg, base_ap = self.compute_metrics(base_is_relevant, base_pred_scores)
                base_mrr_scores.append(base_mrr)
                base_ndcg_scores.append(base_ndcg)
                base_ap_scores.append(base_ap)

                if self.always_rerank_positives:
                    docs = positive + [doc for doc in documents if doc not in positive]
                    is_relevant = [1] * len(positive) + [0] * (len(docs) - len(positive))
                else:
                    docs = list(documents)
                    is_relevant = [int(doc in positive) for doc in documents]
            else:
                docs = positive + list(negative or [])
                is_relevant = [1] * len(positive) + [0] * (len(docs) - len(positive))

            num_positives.append(len(positive))
            num_negatives.append(len(is_relevant) - sum(is_relevant))

            if sum(is_relevant) == 0:
                sample_metadata.append(None)
                continue
            sample_metadata.append((is_relevant, len(docs)))
            all_pairs.extend([query, doc] for doc in docs)

        if all_pairs:
            all_pred_scores = self.predict(
                model, all_pairs, self.batch_size, self.show_progress_bar, self.prompt_name
            )
            finite_scores(all_pred_scores, all_pairs, type(self).__name__)
            if all_pred_scores.ndim == 2 and all_pred_scores.shape[1] == 1:
                all_pred_scores = all_pred_scores[:, 0]
            if all_pred_scores.ndim != 1:
                raise ValueError(
                    f"{cls_name} ranks by one score a pair, but the model gives {all_pred_scores.shape[1:]} "
                    "(a model with num_labels=1 is needed)"
                )
        else:
            all_pred_scores = np.array([])

        all_mrr_scores: list[float] = []
        all_ndcg_scores: list[float] = []
        all_ap_scores: list[float] = []
        score_offset = 0
        for meta in sample_metadata:
            if meta is None:
                all_mrr_scores.append(0.0)
                all_ndcg_scores.append(0.0)
                all_ap_scores.append(0.0)
                continue
            is_relevant, num_pairs = meta
            pred_scores = all_pred_scores[score_offset : score_offset + num_pairs]
            score_offset += num_pairs
            mrr, ndcg, ap = self.compute_metrics(is_relevant, pred_scores)
            all_mrr_scores.append(mrr)
            all_ndcg_scores.append(ndcg)
            all_ap_scores.append(ap)

        def mean(values: list[float]) -> float:
            return float(np.mean(values)) if values else float("nan")

        mean_mrr, mean_ndcg, mean_ap = mean(all_mrr_scores), mean(all_ndcg_scores), mean(all_ap_scores)
        k = self.at_k
        metrics: dict[str, Any] = {"map": mean_ap, f"mrr@{k}": mean_mrr, f"ndcg@{k}": mean_ndcg}

        if num_positives:
            logger.info(
                f"Queries: {len(self.samples)}\t"
                f"Positives: Min {np.min(num_positives):.1f}, Mean {np.mean(num_positives):.1f}, "
                f"Max {np.max(num_positives):.1f}\t"
                f"Negatives: Min {np.min(num_negatives):.1f}, Mean {np.mean(num_negatives):.1f}, "
                f"Max {np.max(num_negatives):.1f}"
            )
        pad = " " * len(str(k))
        if base_mrr_scores:
            mean_base_mrr, mean_base_ndcg = mean(base_mrr_scores), mean(base_ndcg_scores)
            mean_base_ap = mean(base_ap_scores)
            logger.info(f"{pad}       Base  -> Reranked")
            logger.info(f"MAP:{pad}   {mean_base_ap * 100:.2f} -> {mean_ap * 100:.2f}")
            logger.info(f"MRR@{k}:  {mean_base_mrr * 100:.2f} -> {mean_mrr * 100:.2f}")
            logger.info(f"NDCG@{k}: {mean_base_ndcg * 100:.2f} -> {mean_ndcg * 100:.2f}")

            model_card_metrics = {
                "map": f"{mean_ap:.4f} ({mean_ap - mean_base_ap:+.4f})",
                f"mrr@{k}": f"{mean_mrr:.4f} ({mean_mrr - mean_base_mrr:+.4f})",
                f"ndcg@{k}": f"{mean_ndcg:.4f} ({mean_ndcg - mean_base_ndcg:+.4f})",
            }
            model_card_metrics = self.prefix_name_to_metrics(model_card_metrics, self.name)
            self.store_metrics_in_model_card_data(model, model_card_metrics, epoch, steps)

            metrics.update(
                {"base_map": mean_base_ap, f"base_mrr@{k}": mean_base_mrr, f"base_ndcg@{k}": mean_base_ndcg}
            )
            metrics = self.prefix_name_to_metrics(metrics, self.name)
        else:
            logger.info(f"MAP:{pad}   {mean_ap * 100:.2f}")
            logger.info(f"MRR@{k}:  {mean_mrr * 100:.2f}")
            logger.info(f"NDCG@{k}: {mean_ndcg * 100:.2f}")
            metrics = self.prefix_name_to_metrics(metrics, self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)

        self.write_csv_row(output_path, [epoch, steps, mean_ap, mean_mrr, mean_ndcg])
        return metrics

    def get_config_dict(self) -> dict[str, Any]:
        """``at_k`` (and ``always_rerank_positives`` with ranked ``documents``) for model cards."""
        config_dict: dict[str, Any] = {"at_k": self.at_k}
        if self.samples and "documents" in self.samples[0]:
            config_dict["always_rerank_positives"] = self.always_rerank_positives
        return config_dict


class CERerankingEvaluator(CrossEncoderRerankingEvaluator):
    """The classic re-ranking evaluator: MRR@k is the primary score, as in sentence-transformers < 4.

    Identical to :class:`CrossEncoderRerankingEvaluator` (same metrics, keys and CSV file) except that
    ``primary_metric`` is ``mrr@{at_k}``, so ``fit(evaluator=...)`` keeps the best model by MRR@10 as legacy
    scripts expect. sentence-transformers 6 turned this name into an alias whose primary metric is NDCG@k;
    use ``CrossEncoderRerankingEvaluator`` for that behaviour.
    """

    primary_kind = "mrr"
