"""Reranking evaluation on local BEIR folders: BM25 top-``rerank_k`` candidates, reranked by the cross-encoder.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``) and
``qrels/{split}.tsv`` (``query-id``, ``corpus-id``, ``score``; a header row is optional). This is
sentence-transformers' ``CrossEncoderNanoBEIREvaluator`` for folders on disk instead of the NanoBEIR hub
datasets: BM25 is computed here (:mod:`crossjax.util.bm25`, the miner's retriever) rather than read from a
precomputed ``bm25`` subset, and every folder is scored by a :class:`CrossEncoderRerankingEvaluator` over
``documents`` samples, so the metrics (and their before/after ``base_*`` twins) are exactly that evaluator's.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossjax.util.bm25 import BM25

from .base import CrossEncoderEvaluator, PredictModel, epoch_text
from .reranking import CrossEncoderRerankingEvaluator

logger = logging.getLogger(__name__)


@dataclass
class BEIRFolder:
    """One BEIR data set in memory: document texts in corpus order, queries, and graded judgements."""

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    queries: dict[str, str]  # query id -> text, in file order
    qrels: dict[str, dict[str, int]]  # query id -> {corpus id: relevance}
    load_seconds: float


def _read_jsonl(path: Path, required: Sequence[str]) -> list[dict[str, Any]]:
    """Records of a JSON Lines file. Lines are split on '\\n' only (MS MARCO has U+2028 inside strings)."""
    records = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e})") from None
            missing = [key for key in required if key not in record]
            if missing:
                raise ValueError(f"{path}, line {number}: missing key(s) {missing}")
            records.append(record)
    return records


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``query-id<TAB>corpus-id<TAB>score`` rows (an optional header row is skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if number == 1 and fields[0] == "query-id":
                continue
            if fields == [""]:
                continue
            if len(fields) != 3:
                raise ValueError(f"{path}, line {number}: expected query-id, corpus-id and score separated by tabs")
            try:
                qrels.setdefault(fields[0], {})[fields[1]] = int(float(fields[2]))
            except ValueError:
                raise ValueError(f"{path}, line {number}: the score {fields[2]!r} is not a number") from None
    return qrels


def load_beir_folder(data_dir: str | os.PathLike, split: str = "test", name: str | None = None) -> BEIRFolder:
    """Read a BEIR folder; a document's text is ``title + " " + text`` when it has a title (as BEIR does)."""
    started = time.perf_counter()
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"BEIR folder {folder} does not exist")
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
        raise FileNotFoundError(f"{qrels_path} does not exist; qrels splits in {folder}: {available or 'none'}")
    for file in ("corpus.jsonl", "queries.jsonl"):
        if not (folder / file).is_file():
            raise FileNotFoundError(
                f"{folder / file} does not exist (a BEIR folder has corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
            )
    corpus = _read_jsonl(folder / "corpus.jsonl", ("_id", "text"))
    queries = {str(q["_id"]): q["text"] for q in _read_jsonl(folder / "queries.jsonl", ("_id", "text"))}
    corpus_ids = [str(doc["_id"]) for doc in corpus]
    corpus_texts = [f"{doc['title']} {doc['text']}" if doc.get("title") else doc["text"] for doc in corpus]
    return BEIRFolder(
        name=name or folder.name,
        corpus_ids=corpus_ids,
        corpus_texts=corpus_texts,
        queries=queries,
        qrels=_read_qrels(qrels_path),
        load_seconds=time.perf_counter() - started,
    )


def bm25_reranking_samples(
    folder: BEIRFolder,
    rerank_k: int = 100,
    min_relevance: int = 1,
    max_queries: int | None = None,
    bm25: BM25 | None = None,
) -> list[dict[str, Any]]:
    """``CrossEncoderRerankingEvaluator`` samples: per judged query, its relevant documents and BM25's top-k.

    Queries are taken in ``queries.jsonl`` order; those with no judgement of at least ``min_relevance`` are
    skipped (no relevant document: nothing to rank), then the first ``max_queries`` are kept.
    """
    index = {doc_id: i for i, doc_id in enumerate(folder.corpus_ids)}
    selected: list[tuple[str, list[str]]] = []
    for query_id in folder.queries:
        relevant = [doc for doc, grade in folder.qrels.get(query_id, {}).items() if grade >= min_relevance]
        if not relevant:
            continue
        unknown = [doc for doc in relevant if doc not in index]
        if unknown:
            raise ValueError(
                f"{folder.name}: the qrels judge corpus id {unknown[0]!r} (query {query_id}), absent from the corpus"
            )
        selected.append((query_id, relevant))
        if max_queries is not None and len(selected) >= max_queries:
            break
    if not selected:
        raise ValueError(f"{folder.name}: no query has a judgement >= {min_relevance}")
    retriever = (bm25 or BM25()).index(folder.corpus_texts)
    _, top_indices = retriever.search([folder.queries[q] for q, _ in selected], rerank_k)
    return [
        {
            "query": folder.queries[query_id],
            "positive": [folder.corpus_texts[index[doc]] for doc in relevant],
            "documents": [folder.corpus_texts[i] for i in row if i >= 0],
            "query_id": query_id,
            "corpus_ids": [folder.corpus_ids[i] for i in row if i >= 0],
        }
        for (query_id, relevant), row in zip(selected, top_indices, strict=True)
    ]


class CrossEncoderBEIREvaluator(CrossEncoderEvaluator):
    """NDCG@k / MRR@k / MAP of BM25's top-``rerank_k`` before and after reranking, on one or more BEIR folders.

    Each folder is read, BM25-indexed and retrieved once, at construction (retrieval does not depend on the
    model); every call reranks the candidates with ``model.predict``. Relevance is binary, as in
    sentence-transformers' reranking evaluators: a document is relevant when its qrels grade is at least
    ``min_relevance``. With ``always_rerank_positives=True`` (the default, as in sentence-transformers) the
    relevant documents BM25 missed are added to the candidates, so reranked scores can reach 1.

    The ``base_*`` metrics are sentence-transformers' before-reranking metrics: BM25's order, with relevant
    documents BM25 missed counted as ranked right after the ``rerank_k`` candidates. For ``ndcg@{at_k}`` and
    ``mrr@{at_k}`` (``at_k <= rerank_k``) this equals trec_eval's NDCG@k and reciprocal rank cut at k on the
    BM25 run; ``base_map`` is higher than trec_eval's MAP whenever BM25 misses a relevant document.

    Keys, like ``CrossEncoderNanoBEIREvaluator``'s: per folder ``{dataset}_R{rerank_k}_{metric}`` (``metric``:
    ``map``, ``mrr@{at_k}``, ``ndcg@{at_k}``, ``base_map``, ``base_mrr@{at_k}``, ``base_ndcg@{at_k}``), and
    the aggregate over folders ``{name}_R{rerank_k}_{aggregate_key}_{metric}``. ``primary_metric`` is
    ``{name}_R{rerank_k}_mean_ndcg@{at_k}``, so the evaluator plugs into ``fit(evaluator=...)`` and the trainer.

    Args:
        data_dirs: a BEIR folder or a list of them.
        rerank_k: BM25 candidates per query.
        at_k: cut-off of MRR and NDCG.
        always_rerank_positives: add relevant documents BM25 missed before reranking.
        split: which ``qrels/{split}.tsv`` to read.
        min_relevance: the lowest qrels grade that counts as relevant.
        max_queries: evaluate only the first judged queries of each folder (fast evaluation during training).
        dataset_names: names for the folders' keys (default: each folder's name).
        name: prefix of the aggregate keys.
        bm25: a configured :class:`crossjax.util.BM25` (default: Lucene BM25, k1=1.5, b=0.75, English stop words).
        batch_size, show_progress_bar, write_csv, aggregate_fn, aggregate_key: as in sentence-transformers.
    """

    def __init__(
        self,
        data_dirs: str | os.PathLike | Sequence[str | os.PathLike],
        rerank_k: int = 100,
        at_k: int = 10,
        always_rerank_positives: bool = True,
        split: str = "test",
        min_relevance: int = 1,
        max_queries: int | None = None,
        dataset_names: Sequence[str] | None = None,
        name: str = "BEIR",
        bm25: BM25 | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        write_csv: bool = True,
        aggregate_fn: Callable[[list[float]], float] = np.mean,
        aggregate_key: str = "mean",
    ) -> None:
        if isinstance(data_dirs, (str, os.PathLike)):
            data_dirs = [data_dirs]
        data_dirs = list(data_dirs)
        if not data_dirs:
            raise ValueError("data_dirs is empty: pass one BEIR folder or a list of them")
        for argument, value in (("rerank_k", rerank_k), ("at_k", at_k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{argument} must be a positive integer, got {value!r}")
        if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
            raise ValueError(f"max_queries must be None or a positive integer, got {max_queries!r}")
        if dataset_names is not None and len(dataset_names) != len(data_dirs):
            raise ValueError(f"{len(dataset_names)} dataset_names for {len(data_dirs)} data_dirs")
        super().__init__(name=f"{name}_R{rerank_k}_{aggregate_key}", write_csv=write_csv)
        self.data_dirs = [str(d) for d in data_dirs]
        self.rerank_k, self.at_k = rerank_k, at_k
        self.always_rerank_positives = always_rerank_positives
        self.split, self.min_relevance, self.max_queries = split, min_relevance, max_queries
        self.batch_size, self.show_progress_bar = batch_size, show_progress_bar
        self.aggregate_fn, self.aggregate_key = aggregate_fn, aggregate_key
        self.folders = [
            load_beir_folder(d, split=split, name=None if dataset_names is None else dataset_names[i])
            for i, d in enumerate(self.data_dirs)
        ]
        self.dataset_names = [folder.name for folder in self.folders]
        if len(set(self.dataset_names)) != len(self.dataset_names):
            raise ValueError(f"two folders have the same name {self.dataset_names}: pass dataset_names")
        self.evaluators: list[CrossEncoderRerankingEvaluator] = []
        for folder in self.folders:
            started = time.perf_counter()
            samples = bm25_reranking_samples(folder, rerank_k, min_relevance, max_queries, bm25)
            logger.info(
                f"{folder.name}: read {len(folder.corpus_texts):,} documents and {len(folder.queries):,} queries in "
                f"{folder.load_seconds:.2f} s; BM25 top-{rerank_k} of {len(samples)} queries in "
                f"{time.perf_counter() - started:.2f} s"
            )
            self.evaluators.append(
                CrossEncoderRerankingEvaluator(
                    samples,
                    at_k=at_k,
                    always_rerank_positives=always_rerank_positives,
                    name=f"{folder.name}_R{rerank_k}",
                    batch_size=batch_size,
                    show_progress_bar=show_progress_bar,
                    write_csv=write_csv,
                )
            )
        self.csv_file = f"{name}_evaluation_{aggregate_key}_results.csv"
        self.csv_headers = ["epoch", "steps", "MAP", f"MRR@{at_k}", f"NDCG@{at_k}"]
        self.primary_metric = f"{self.name}_ndcg@{at_k}"

    def __call__(
        self, model: PredictModel, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        """Rerank every folder's candidates; per-folder metrics plus their aggregate (``primary_metric``)."""
        logger.info(f"BEIR Evaluation of the model on {self.dataset_names}{epoch_text(epoch, steps)}:")
        results: dict[str, float] = {}
        per_metric: dict[str, list[float]] = {}
        for evaluator in self.evaluators:
            logger.info(f"Evaluating {evaluator.name}")
            evaluation = evaluator(model, output_path, epoch, steps)
            results.update(evaluation)
            for key, value in evaluation.items():
                per_metric.setdefault(key[len(evaluator.name) + 1 :], []).append(value)
        aggregate = {metric: float(self.aggregate_fn(values)) for metric, values in per_metric.items()}
        k = self.at_k
        pad = " " * len(str(k))
        logger.info(f"{type(self).__name__}: Aggregated Results:")
        logger.info(f"{pad}       Base  -> Reranked")
        logger.info(f"MAP:{pad}   {aggregate['base_map'] * 100:.2f} -> {aggregate['map'] * 100:.2f}")
        logger.info(f"MRR@{k}:  {aggregate[f'base_mrr@{k}'] * 100:.2f} -> {aggregate[f'mrr@{k}'] * 100:.2f}")
        logger.info(f"NDCG@{k}: {aggregate[f'base_ndcg@{k}'] * 100:.2f} -> {aggregate[f'ndcg@{k}'] * 100:.2f}")
        self.write_csv_row(output_path, [epoch, steps, aggregate["map"], aggregate[f"mrr@{k}"], aggregate[f"ndcg@{k}"]])
        model_card_metrics = {
            metric: f"{aggregate[metric]:.4f} ({aggregate[metric] - aggregate['base_' + metric]:+.4f})"
            for metric in ("map", f"mrr@{k}", f"ndcg@{k}")
        }
        self.store_metrics_in_model_card_data(
            model, self.prefix_name_to_metrics(model_card_metrics, self.name), epoch, steps
        )
        results.update({f"{self.name}_{metric}": value for metric, value in aggregate.items()})
        return results

    def get_config_dict(self) -> dict[str, Any]:
        """What a model card should record about this evaluation."""
        return {
            "dataset_names": self.dataset_names,
            "rerank_k": self.rerank_k,
            "at_k": self.at_k,
            "always_rerank_positives": self.always_rerank_positives,
            "split": self.split,
            "min_relevance": self.min_relevance,
            "max_queries": self.max_queries,
        }


class CrossEncoderNanoBEIREvaluator:
    """sentence-transformers' NanoBEIR evaluator, which downloads its datasets and BM25 candidates from the
    Hugging Face hub, is not in crossjax: :class:`CrossEncoderBEIREvaluator` reranks the BM25 candidates of
    local BEIR folders (a NanoBEIR dataset saved as one works) and reports the same metrics."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError(
            "CrossEncoderNanoBEIREvaluator is not in crossjax (it reads sentence-transformers' NanoBEIR datasets "
            "from the Hugging Face hub): use crossjax.evaluation.CrossEncoderBEIREvaluator([folder, ...], "
            "rerank_k=100) on BEIR folders (corpus.jsonl, queries.jsonl, qrels/*.tsv), e.g. NanoBEIR's datasets "
            "saved in that layout"
        )
