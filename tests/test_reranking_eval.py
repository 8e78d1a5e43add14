"""Reranking evaluation against sentence-transformers 6.2 on one real model, and the BEIR-folder evaluator.

The "same model" is all-MiniLM-L6-v2 with a seeded random one-label head: built in crossjax, saved, and loaded
by ``sentence_transformers.CrossEncoder``, so both libraries score the same pairs (to float32 round-off) and
their evaluators must report the same metrics. Each model predicts every distinct pair list once (memoised),
which keeps the file fast while every evaluator still consumes real model scores.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_bert, shared_data

from crossjax import CrossEncoder, DataLoader, InputExample
from crossjax.evaluation import CrossEncoderBEIREvaluator, CrossEncoderRerankingEvaluator, load_beir_folder
from crossjax.util import BM25


class MemoPredict:
    """Forwards ``predict`` to a real model, computing each distinct list of pairs once."""

    def __init__(self, model) -> None:
        self.model = model
        self.cache: dict[tuple, np.ndarray] = {}

    def predict(self, pairs, **kwargs):
        key = tuple(tuple(pair) for pair in pairs)
        if key not in self.cache:
            self.cache[key] = np.asarray(self.model.predict(pairs, batch_size=kwargs.get("batch_size", 32)))
        return self.cache[key]

    def __getattr__(self, name: str):
        return getattr(self.model, name)  # model_card_data and the like


@pytest.fixture(scope="module")
def models(minilm_dir, tmp_path_factory):
    """(crossjax, sentence-transformers) views of one MiniLM cross-encoder with a seeded random head."""
    from sentence_transformers import CrossEncoder as STCrossEncoder

    ours = CrossEncoder(minilm_dir, num_labels=1, seed=11)
    export = tmp_path_factory.mktemp("minilm_rerank")
    ours.save(str(export))
    theirs = STCrossEncoder(str(export), device="cpu")
    return MemoPredict(ours), MemoPredict(theirs)


def trecqa_samples(n_queries: int = 6, max_docs: int = 9) -> list[dict]:
    """TrecQA dev questions with their candidate answers in file order (the data set's own ranking)."""
    grouped: dict[str, list[tuple[str, int]]] = defaultdict(list)
    with open(shared_data("trecqa", "dev.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            grouped[row["qtext"]].append((row["atext"], int(row["label"])))
    samples = []
    for query, candidates in grouped.items():
        candidates = candidates[:max_docs]
        positives = [doc for doc, label in candidates if label == 1]
        if positives and len(positives) < len(candidates):
            negatives = [doc for doc, label in candidates if label == 0]
            samples.append({"query": query, "positive": positives, "negative": negatives})
        if len(samples) == n_queries:
            break
    return samples


def with_documents(samples: list[dict]) -> list[dict]:
    """The same queries as ranked ``documents``: one drops its first positive (a first-stage miss), one has
    no positive at all, and the others interleave positives and negatives."""
    ranked = []
    for i, sample in enumerate(samples):
        docs = sample["negative"][:2] + sample["positive"] + sample["negative"][2:]
        if i == 0:
            docs = [doc for doc in docs if doc != sample["positive"][0]]
        positive = ["an answer no retriever found"] if i == 1 else sample["positive"]
        ranked.append({"query": sample["query"], "positive": positive, "documents": docs})
    return ranked


def assert_same_metrics(ours: dict[str, float], theirs: dict[str, float]) -> None:
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-6), key


def test_model_views_score_alike(models) -> None:
    ours, theirs = models
    pairs = [[s["query"], doc] for s in trecqa_samples(2) for doc in s["positive"] + s["negative"]]
    scores = ours.predict(pairs)
    np.testing.assert_allclose(scores, theirs.predict(pairs), atol=2e-6)
    assert np.ptp(scores) > 1e-3  # the random head separates the pairs: rankings mean something


@pytest.mark.parametrize("kind", ["negative", "documents"])
@pytest.mark.parametrize("always_rerank_positives", [True, False])
@pytest.mark.parametrize("at_k", [10, 3])
def test_reranking_evaluator_matches_sentence_transformers(models, tmp_path, kind, always_rerank_positives, at_k):
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as STEvaluator

    ours_model, theirs_model = models
    samples = trecqa_samples() if kind == "negative" else with_documents(trecqa_samples())
    kwargs = {"at_k": at_k, "always_rerank_positives": always_rerank_positives, "name": "trecqa-dev"}
    ours = CrossEncoderRerankingEvaluator(samples, **kwargs)
    theirs = STEvaluator(samples, **kwargs)
    our_metrics = ours(ours_model, output_path=str(tmp_path / "ours"))
    their_metrics = theirs(theirs_model, output_path=str(tmp_path / "theirs"))
    assert_same_metrics(our_metrics, their_metrics)
    expected_keys = {"map", f"mrr@{at_k}", f"ndcg@{at_k}"}
    if kind == "documents":
        expected_keys |= {"base_map", f"base_mrr@{at_k}", f"base_ndcg@{at_k}"}
    assert set(our_metrics) == {f"trecqa-dev_{key}" for key in expected_keys}
    assert ours.primary_metric == theirs.primary_metric == f"trecqa-dev_ndcg@{at_k}"
    csv_name = f"CrossEncoderRerankingEvaluator_trecqa-dev_results_@{at_k}.csv"
    with open(tmp_path / "ours" / csv_name) as a, open(tmp_path / "theirs" / csv_name) as b:
        our_rows, their_rows = list(csv.reader(a)), list(csv.reader(b))
    assert our_rows[0] == their_rows[0] == ["epoch", "steps", "MAP", f"MRR@{at_k}", f"NDCG@{at_k}"]
    np.testing.assert_allclose(np.float64(our_rows[1]), np.float64(their_rows[1]), atol=1e-6)


# -- BEIR folders --------------------------------------------------------------------------------------------

# Reranking only BM25's candidates (always_rerank_positives=False): MS MARCO queries here have up to 341 positives.
BEIR_KWARGS = {"rerank_k": 20, "at_k": 10, "max_queries": 3, "always_rerank_positives": False}


@pytest.fixture(scope="module")
def beir_evaluator() -> CrossEncoderBEIREvaluator:
    return CrossEncoderBEIREvaluator([shared_data("msmarco"), shared_data("dbpedia-entity")], **BEIR_KWARGS)


def test_beir_reranked_metrics_match_sentence_transformers_on_the_same_candidates(models, beir_evaluator):
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as STEvaluator

    ours_model, theirs_model = models
    results = beir_evaluator(ours_model)
    metrics = ["map", "mrr@10", "ndcg@10", "base_map", "base_mrr@10", "base_ndcg@10"]
    per_dataset = {}
    for dataset, evaluator in zip(["msmarco", "dbpedia-entity"], beir_evaluator.evaluators, strict=True):
        assert len(evaluator.samples) == 3 and all(len(s["documents"]) == 20 for s in evaluator.samples)
        theirs = STEvaluator(evaluator.samples, at_k=10, always_rerank_positives=False, name=f"{dataset}_R20")
        theirs = theirs(theirs_model)
        assert_same_metrics({key: results[key] for key in theirs}, theirs)
        per_dataset[dataset] = theirs
    for metric in metrics:
        mean = np.mean([per_dataset[d][f"{d}_R20_{metric}"] for d in per_dataset])
        assert results[f"BEIR_R20_mean_{metric}"] == pytest.approx(mean, abs=1e-6)
    assert beir_evaluator.primary_metric == "BEIR_R20_mean_ndcg@10"
    assert len(results) == 3 * len(metrics)


def test_beir_base_metrics_equal_a_trec_style_computation_on_the_bm25_run(beir_evaluator):
    """BM25's NDCG@10 (sklearn's ndcg_score over the whole corpus), reciprocal rank at 10 and sentence-
    transformers' base MAP, computed by hand from a fresh BM25 ranking of every document."""
    from sklearn.metrics import ndcg_score

    class Constant:
        def predict(self, pairs, **kwargs):
            return np.zeros(len(pairs))

    results = beir_evaluator(Constant())
    for folder, evaluator in zip(beir_evaluator.folders, beir_evaluator.evaluators, strict=True):
        bm25 = BM25().index(folder.corpus_texts)
        ndcgs, rrs, aps = [], [], []
        for sample in evaluator.samples:
            relevant = {doc for doc, grade in folder.qrels[sample["query_id"]].items() if grade >= 1}
            scores = bm25.scores(sample["query"])
            is_relevant = np.array([doc in relevant for doc in folder.corpus_ids], dtype=float)
            ndcgs.append(ndcg_score([is_relevant], [scores], k=10))
            ranking = np.argsort(-scores, kind="stable")[:20]
            assert [folder.corpus_ids[i] for i in ranking] == sample["corpus_ids"]
            hits = is_relevant[ranking]
            first = np.flatnonzero(hits[:10])
            rrs.append(1 / (first[0] + 1) if first.size else 0.0)
            # Relevant documents BM25 missed count as ranked right after the 20 candidates.
            hits = np.concatenate([hits, np.ones(len(relevant) - int(hits.sum()))])
            precision_at_hits = np.cumsum(hits)[hits == 1] / (np.flatnonzero(hits) + 1)
            aps.append(precision_at_hits.mean())
        prefix = f"{folder.name}_R20_"
        assert results[prefix + "base_ndcg@10"] == pytest.approx(np.mean(ndcgs), abs=1e-6)
        assert results[prefix + "base_mrr@10"] == pytest.approx(np.mean(rrs), abs=1e-12)
        assert results[prefix + "base_map"] == pytest.approx(np.mean(aps), abs=1e-12)


def test_beir_evaluation_reaches_the_model_card_at_its_epoch_and_step(beir_evaluator):
    """sentence-transformers' NanoBEIR evaluator passes (epoch, steps) to the card, which places the metrics in
    the training logs by step."""

    class Recording:
        def __init__(self) -> None:
            self.calls = []
            self.model_card_data = self

        def set_evaluation_metrics(self, evaluator, metrics, epoch=0, step=0):
            self.calls.append((type(evaluator).__name__, epoch, step))

        def predict(self, pairs, **kwargs):
            return np.arange(len(pairs), dtype=np.float32)

    model = Recording()
    beir_evaluator(model, None, 3, 7)
    assert model.calls[-1] == ("CrossEncoderBEIREvaluator", 3, 7)
    assert all(call[1:] == (3, 7) for call in model.calls), model.calls


def test_beir_folder_reading_and_bad_input(tmp_path):
    msmarco = load_beir_folder(shared_data("msmarco"))
    assert (len(msmarco.corpus_texts), len(msmarco.queries)) == (5000, 50)
    assert sum(len(judged) for judged in msmarco.qrels.values()) == 4102
    dbpedia = load_beir_folder(shared_data("dbpedia-entity"))  # qrels with a header row and graded 0s
    assert sum(len(judged) for judged in dbpedia.qrels.values()) == 3709
    assert dbpedia.corpus_texts[0].startswith("Oceanic Airlines Oceanic Airlines and")  # title + text

    with pytest.raises(FileNotFoundError, match=r"qrels/dev.tsv does not exist; qrels splits in .*\['test'\]"):
        load_beir_folder(shared_data("msmarco"), split="dev")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CrossEncoderBEIREvaluator(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    (broken / "qrels").mkdir(parents=True)
    (broken / "corpus.jsonl").write_text('{"_id": "d1", "text": "a doc"}\n{"_id": "d2"}\n')
    (broken / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (broken / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    with pytest.raises(ValueError, match=r"corpus.jsonl, line 2: missing key\(s\) \['text'\]"):
        load_beir_folder(broken)
    (broken / "corpus.jsonl").write_text('{"_id": "d1", "text": "a doc"}\n')
    (broken / "qrels" / "test.tsv").write_text("q1\td9\t1\n")
    with pytest.raises(ValueError, match="corpus id 'd9' .* absent from the corpus"):
        CrossEncoderBEIREvaluator(broken)
    with pytest.raises(ValueError, match="rerank_k must be a positive integer"):
        CrossEncoderBEIREvaluator(broken, rerank_k=0)


def _tiny_checkpoint(directory: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    return save_tiny_bert(directory, AutoTokenizer.from_pretrained(tokenizer_dir), seed=0)


def test_beir_evaluator_drives_fit_best_model(minilm_dir, tmp_path):
    evaluator = CrossEncoderBEIREvaluator(
        shared_data("dbpedia-entity"), rerank_k=5, max_queries=2, always_rerank_positives=False, name="local"
    )
    model = CrossEncoder(_tiny_checkpoint(tmp_path / "tiny", minilm_dir), max_length=64)
    sample = evaluator.evaluators[0].samples[0]
    train = [
        InputExample(texts=[sample["query"], doc], label=float(doc in sample["positive"]))
        for doc in sample["documents"][:4]
    ]
    model.fit(DataLoader(train, batch_size=2), evaluator=evaluator, epochs=1, output_path=str(tmp_path / "out"))
    final = evaluator(model)
    assert model.best_score == pytest.approx(final["local_R5_mean_ndcg@10"], abs=1e-6)
    assert math.isfinite(model.best_score)
    with open(tmp_path / "out" / "local_evaluation_mean_results.csv") as f:
        assert next(csv.reader(f)) == ["epoch", "steps", "MAP", "MRR@10", "NDCG@10"]


def test_reranking_evaluators_name_what_they_cannot_use(minilm_dir):
    """A model of several labels gives no ranking score, and crossjax's InputExample label defaults to None:
    both are named, not a numpy error from inside a metric."""
    from crossjax.evaluation import CERerankingEvaluator

    samples = trecqa_samples(2)
    with pytest.raises(ValueError, match=r"ranks by one score a pair, but the model gives \(3,\)"):
        CrossEncoderRerankingEvaluator(samples)(CrossEncoder(minilm_dir, num_labels=3))
    examples = [InputExample(texts=["q", "a"], label=1), InputExample(texts=["q", "b"])]
    with pytest.raises(ValueError, match=r"labels\[1\] is None.*defaults to None"):
        CERerankingEvaluator.from_input_examples(examples)


def test_an_empty_candidate_list_is_a_retriever_that_found_nothing(models, tmp_path):
    """``documents=[]``: with ``always_rerank_positives=False`` the query scores 0 reranked and 0 as retrieved,
    as sentence-transformers scores a list that holds no positive (its own evaluator fails on an empty list);
    with ``always_rerank_positives=True`` its positives alone are reranked (a perfect ranking of one)."""
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator as STEvaluator

    ours_model, theirs_model = models
    samples = with_documents(trecqa_samples(3))
    empty = [{**samples[0], "positive": samples[0]["positive"][:1], "documents": []}, *samples[1:]]
    missed = [{**empty[0], "documents": ["a candidate that answers nothing"]}, *samples[1:]]
    ours = CrossEncoderRerankingEvaluator(empty, always_rerank_positives=False)(ours_model)
    theirs = STEvaluator(missed, always_rerank_positives=False)(theirs_model)
    assert_same_metrics(ours, theirs)
    both = CrossEncoderRerankingEvaluator(empty, always_rerank_positives=True)(ours_model)
    rest = CrossEncoderRerankingEvaluator(samples[1:], always_rerank_positives=True)(ours_model)
    for key in ("map", "mrr@10", "ndcg@10"):
        assert both[key] == pytest.approx((1.0 + 2 * rest[key]) / 3), key
        assert both[f"base_{key}"] == pytest.approx(2 * rest[f"base_{key}"] / 3), key


@pytest.mark.parametrize("at_k", [0, -1, 2.5, True])
def test_at_k_below_one_is_refused(at_k):
    with pytest.raises(ValueError, match="at_k"):
        CrossEncoderRerankingEvaluator(trecqa_samples(1), at_k=at_k)


def test_evaluators_without_pairs_are_refused():
    from crossjax.evaluation import CrossEncoderClassificationEvaluator

    with pytest.raises(ValueError, match="at least one sentence pair"):
        CrossEncoderClassificationEvaluator([], [])
