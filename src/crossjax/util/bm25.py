"""BM25 candidate retrieval, the one place both the hard-negative miner and the BEIR evaluator get it from.

Scoring is delegated to ``bm25s`` (Lucene's BM25 by default: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``,
``tf / (tf + k1 * (1 - b + b * |d| / avgdl))``, k1=1.5, b=0.75), with scikit-learn's tokenization (lower case,
``\\b\\w\\w+\\b``) and English stop words removed. What this module adds is a deterministic top-k: documents
with equal scores are ranked by their position in the corpus, so candidate lists do not depend on how a
partial sort breaks ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest ``scores`` (1-D), best first; equal scores keep the lower index first.

    ``k`` larger than ``len(scores)`` returns every index. Costs a partition plus a sort of ``k`` items, not a
    sort of the whole row.
    """
    n = scores.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        kth_value = np.partition(scores, n - k)[n - k]  # the k-th largest value
        above = np.flatnonzero(scores > kth_value)
        tied = np.flatnonzero(scores == kth_value)[: k - above.size]
        candidates = np.sort(np.concatenate([above, tied]))
    else:
        candidates = np.arange(n)
    return candidates[np.argsort(-scores[candidates], kind="stable")]


class BM25:
    """A BM25 index over a list of texts, built by ``index(corpus)``; ``scores(query)`` scores every document.

    Args:
        k1, b: BM25's term-frequency saturation and length normalisation.
        method: the bm25s variant: "lucene" (default), "robertson", "atire", "bm25l" or "bm25+".
        stopwords: a language code bm25s knows ("en", the default), a list of words, or None to keep all.
        stemmer: an optional stemmer (e.g. ``Stemmer.Stemmer("english")`` from PyStemmer, or any callable
            mapping a list of words to a list of stems); applied to corpus and queries alike.

    Requires the ``bm25s`` package (a crossjax dependency; it needs only numpy).
    """

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | Sequence[str] | None = "en",
        stemmer: Callable[[list[str]], list[str]] | None = None,
    ) -> None:
        import bm25s

        self._bm25s = bm25s
        self.k1, self.b, self.method = float(k1), float(b), method
        self.stopwords = stopwords if stopwords is None or isinstance(stopwords, str) else list(stopwords)
        self.stemmer = stemmer
        self._retriever = None
        self.num_documents = 0

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"BM25 needs text, got {type(text).__name__} at position {i}: {text!r:.80}")
        return self._bm25s.tokenize(
            list(texts), stopwords=self.stopwords or [], stemmer=self.stemmer, return_ids=False, show_progress=False
        )

    def index(self, corpus: Sequence[str]) -> BM25:
        """Build the index over ``corpus`` (document i is ``corpus[i]``); returns ``self``."""
        if len(corpus) == 0:
            raise ValueError("BM25 cannot index an empty corpus")
        tokens = self._tokenize(corpus)
        if not any(len(document) for document in tokens):
            raise ValueError(
                f"BM25 found no terms to index in the corpus of {len(corpus)} text(s): all are empty or stopwords"
            )
        retriever = self._bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index(tokens, show_progress=False)
        self._retriever = retriever
        self.num_documents = len(corpus)
        return self

    def scores(self, query: str) -> np.ndarray:
        """BM25 scores (float32) of ``query`` against every indexed document; 0 for documents sharing no term."""
        if self._retriever is None:
            raise RuntimeError("BM25.scores() before BM25.index(corpus)")
        tokens = [token for token in self._tokenize([query])[0] if token in self._retriever.vocab_dict]
        if not tokens:
            return np.zeros(self.num_documents, dtype=np.float32)
        return np.asarray(self._retriever.get_scores(tokens), dtype=np.float32)

    def search(self, queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, document indices) per query, best first, shaped (len(queries), k).

        When the corpus has fewer than ``k`` documents the rows are padded with score -inf and index -1.
        """
        top_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        top_indices = np.full((len(queries), k), -1, dtype=np.int64)
        for row, query in enumerate(queries):
            scores = self.scores(query)
            best = top_k_indices(scores, k)
            top_scores[row, : best.size] = scores[best]
            top_indices[row, : best.size] = best
        return top_scores, top_indices
