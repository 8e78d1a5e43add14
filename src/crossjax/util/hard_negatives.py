"""Hard-negative mining with sentence-transformers 6.2's ``mine_hard_negatives`` semantics, without torch.

The function mirrors ``sentence_transformers.util.mine_hard_negatives`` argument for argument: the same corpus
and query de-duplication, the same candidate window (``range_min``/``range_max``), the same score filters
(margins against the *hardest* positive of a query, ``max_score``, ``min_score``), the same "top" / "random"
sampling (Python's ``random.sample``, so seeding ``random`` reproduces sentence-transformers' draws) and the
same output columns. What differs is where candidates come from:

- ``model=None`` (default): BM25 over the corpus (:class:`crossjax.util.bm25.BM25`), so mining needs no
  embedding model at all; a configured ``BM25`` instance may be passed as ``model`` too.
- ``model=`` a sentence-transformers ``SentenceTransformer``: embeddings and similarity exactly as
  sentence-transformers computes them (its ``encode_query``/``encode_document``, ``similarity``), so the output
  equals sentence-transformers' own. sentence-transformers is only needed for this path.
- ``model=`` precomputed embeddings: a mapping ``{text: vector}`` covering every anchor and every document
  (the ``corpus`` and the positives), or a callable ``encode(texts) -> array``; vectors are L2-normalised and
  compared by cosine similarity, as sentence-transformers does with ``normalize_embeddings=True``.

``cross_encoder`` (a crossjax ``CrossEncoder``, or anything with a ``predict(pairs)`` returning one score per
pair) rescores the candidates and positives when a margin or score filter is set, as in sentence-transformers.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from crossjax.data import column_values

from .bm25 import BM25, top_k_indices

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
SAMPLING_STRATEGIES = ("top", "random")


def _to_numpy(array: Any) -> np.ndarray:
    """A float32 numpy array from numpy, a list, a torch or a JAX array (torch is never imported here)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def _l2_normalize(embeddings: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.maximum(norms, 1e-12)


class _Retriever:
    """Scores every query against the corpus: the top-``k`` candidates per query and each positive's score."""

    def retrieve(
        self, queries: list[str], corpus: list[str], k: int, positive_indices: list[list[int]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top scores (q, k), top corpus indices (q, k), positive scores flat in query order), float32."""
        raise NotImplementedError


class _BM25Retriever(_Retriever):
    def __init__(self, bm25: BM25) -> None:
        self.bm25 = bm25

    def retrieve(self, queries, corpus, k, positive_indices):
        self.bm25.index(corpus)
        top_scores = np.empty((len(queries), k), dtype=np.float32)
        top_indices = np.empty((len(queries), k), dtype=np.int64)
        positive_scores = []
        for row, query in enumerate(queries):
            scores = self.bm25.scores(query)
            best = top_k_indices(scores, k)
            top_scores[row], top_indices[row] = scores[best], best
            positive_scores.extend(scores[positive_indices[row]])
        return top_scores, top_indices, np.asarray(positive_scores, dtype=np.float32)


class _EmbeddingRetriever(_Retriever):
    """Embeddings from a SentenceTransformer (its own similarity), or precomputed ones (cosine similarity)."""

    def __init__(
        self, model: Any, batch_size: int, chunk_size: int, verbose: bool, prompts: dict[str, str | None]
    ) -> None:
        self.model, self.batch_size, self.chunk_size = model, batch_size, chunk_size
        self.verbose, self.prompts = verbose, prompts
        self.is_sentence_transformer = hasattr(model, "encode") and hasattr(model, "similarity")

    def _encode(self, texts: list[str], role: Literal["query", "document"]) -> np.ndarray:
        model = self.model
        if self.is_sentence_transformer:
            encode = getattr(model, f"encode_{role}", None) or model.encode
            return encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=self.verbose,
                prompt_name=self.prompts[f"{role}_prompt_name"],
                prompt=self.prompts[f"{role}_prompt"],
            )
        if any(self.prompts.values()):
            raise ValueError("query/corpus prompts need a SentenceTransformer model; embeddings were precomputed")
        if isinstance(model, Mapping):
            missing = [text for text in texts if text not in model]
            if missing:
                raise KeyError(
                    f"the precomputed embeddings have no vector for {len(missing)} {role} text(s), e.g. "
                    f"{missing[0]!r:.120}; the mapping must cover every anchor, positive and corpus text"
                )
            vectors = [_to_numpy(model[text]) for text in texts]
            sizes = {vector.shape for vector in vectors}
            if len(sizes) > 1:
                first = vectors[0].shape
                odd = next(i for i, vector in enumerate(vectors) if vector.shape != first)
                raise ValueError(
                    f"the precomputed embeddings differ in shape: {texts[0]!r:.60} has {first}, {texts[odd]!r:.60} "
                    f"has {vectors[odd].shape}"
                )
            embeddings = np.stack(vectors) if texts else np.zeros((0, 0))
        else:
            embeddings = _to_numpy(model(texts))
        if embeddings.ndim != 2 or embeddings.shape[0] != len(texts):
            raise ValueError(
                f"precomputed {role} embeddings must have shape ({len(texts)}, dim), got {embeddings.shape}"
            )
        if not np.isfinite(embeddings).all():
            row = int(np.flatnonzero(~np.isfinite(embeddings).all(axis=1))[0])
            raise ValueError(f"the {role} embedding of {texts[row]!r:.80} is not finite (NaN or inf)")
        return _l2_normalize(embeddings)

    def _similarity(self, queries: np.ndarray, documents: Any) -> np.ndarray:
        if self.is_sentence_transformer:
            return _to_numpy(self.model.similarity(queries, documents))
        return queries @ documents.T

    def _similarity_pairwise(self, queries: np.ndarray, documents: np.ndarray) -> np.ndarray:
        if self.is_sentence_transformer:
            return _to_numpy(self.model.similarity_pairwise(queries, documents))
        return np.einsum("ij,ij->i", queries, documents)

    def retrieve(self, queries, corpus, k, positive_indices):
        corpus_embeddings = self._encode(corpus, "document")
        query_embeddings = self._encode(queries, "query")
        k_available = min(k, len(corpus))
        top_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        top_indices = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), self.chunk_size):
            chunk = self._similarity(query_embeddings[start : start + self.chunk_size], corpus_embeddings)
            for offset, row_scores in enumerate(chunk):
                best = top_k_indices(row_scores, k_available)
                top_scores[start + offset, :k_available] = row_scores[best]
                top_indices[start + offset, :k_available] = best
        repeated_queries = [q for q, positives in enumerate(positive_indices) for _ in positives]
        flat_positives = [p for positives in positive_indices for p in positives]
        positive_scores = self._similarity_pairwise(
            query_embeddings[repeated_queries], corpus_embeddings[flat_positives]
        )
        return top_scores, top_indices, _to_numpy(positive_scores)


def _make_retriever(model: Any, batch_size: int, chunk_size: int, verbose: bool, prompts: dict) -> _Retriever:
    if model is None:
        if any(prompts.values()):
            raise ValueError("query/corpus prompts need a SentenceTransformer model; BM25 (model=None) has none")
        return _BM25Retriever(BM25())
    if isinstance(model, BM25):
        return _BM25Retriever(model)
    if isinstance(model, type):
        raise TypeError(f"model must be an instance, got the class {model.__name__} (e.g. {model.__name__}())")
    if callable(getattr(model, "predict", None)) and callable(getattr(model, "rank", None)):
        raise TypeError(
            f"model is a cross-encoder ({type(model).__name__}): it rescores candidates, passed as cross_encoder=; "
            "model retrieves them (None for BM25, a SentenceTransformer, or embeddings)"
        )
    if (hasattr(model, "encode") and hasattr(model, "similarity")) or isinstance(model, Mapping) or callable(model):
        return _EmbeddingRetriever(model, batch_size, chunk_size, verbose, prompts)
    raise TypeError(
        f"model must be None (BM25), a crossjax.util.BM25, a SentenceTransformer, a mapping text -> embedding "
        f"or a callable texts -> embeddings; got {type(model).__name__}"
    )


def _cross_encoder_scores(cross_encoder: Any, pairs: list[tuple[str, str]], batch_size: int) -> np.ndarray:
    scores = _to_numpy(cross_encoder.predict(pairs, batch_size=batch_size, convert_to_numpy=True))
    if scores.ndim != 1:
        raise ValueError(
            f"cross_encoder must give one score per pair (num_labels=1), got predictions of shape {scores.shape}"
        )
    return scores


def _check_text_column(values: list[Any], column: str) -> None:
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise ValueError(
                f"column {column!r} must hold text; row {row} holds {type(value).__name__}: {value!r:.80}"
            )


def _lower_median(values: np.ndarray) -> float:
    """torch.median's median: the lower of the two middle values for an even count."""
    return float(np.sort(values)[(values.size - 1) // 2]) if values.size else float("nan")


def _print_statistics(positive: np.ndarray, negative: np.ndarray, difference: np.ndarray) -> None:
    row_format = "{:<6} {:>14} {:>14} {:>14}"
    print(row_format.format("Metric", "Positive", "Negative", "Difference"))
    print(row_format.format("Count", f"{positive.size:,}", f"{negative.size:,}", ""))

    def fmt(function: Callable[[np.ndarray], float], values: np.ndarray, empty: float) -> str:
        return f"{function(values) if values.size else empty:.4f}"

    rows = [
        ("Mean", np.mean, float("nan")),
        ("Median", _lower_median, float("nan")),
        ("Std", lambda v: np.std(v, ddof=1), float("nan")),
        ("Min", np.min, float("inf")),
        ("25%", lambda v: np.quantile(v, 0.25), float("inf")),
        ("50%", lambda v: np.quantile(v, 0.5), float("inf")),
        ("75%", lambda v: np.quantile(v, 0.75), float("inf")),
        ("Max", np.max, float("-inf")),
    ]
    with np.errstate(all="ignore"):
        for label, function, empty in rows:
            print(row_format.format(label, *(fmt(function, v, empty) for v in (positive, negative, difference))))


def mine_hard_negatives(
    dataset: Dataset,
    model: Any = None,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: list[str] | None = None,
    cross_encoder: Any = None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: Literal["random", "top"] = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: Literal["triplet", "n-tuple", "n-tuple-scores", "labeled-pair", "labeled-list"] = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: list[str] | bool = False,
    verbose: bool = True,
    cache_folder: str | None = None,
    as_triplets: bool | None = None,
    margin: float | None = None,
    *,
    random_seed: int | None = None,
) -> Dataset:
    """Add hard negatives to (anchor, positive) pairs: sentence-transformers 6.2's ``mine_hard_negatives``.

    Arguments, defaults, filtering, sampling and output formats are sentence-transformers' (see its docs):
    output ``"triplet"`` (anchor, positive, negative), ``"n-tuple"`` (anchor, positive, negative_1..n),
    ``"labeled-pair"`` (anchor, document, label), ``"labeled-list"`` (anchor, [documents], [labels]); with
    ``output_scores=True`` a ``scores`` column (or ``score``/``scores`` in place of the labels).

    ``model`` chooses the candidate retriever: None for BM25 (the default here; sentence-transformers requires
    a model), a :class:`crossjax.util.BM25` for a configured BM25, a ``SentenceTransformer``, a mapping
    ``{text: embedding}`` covering every anchor and document, or a callable ``texts -> embeddings``.
    ``cross_encoder`` is a crossjax ``CrossEncoder`` (one label). ``faiss_batch_size`` bounds how many queries
    are scored against the corpus at once (no FAISS is used). ``random_seed`` (crossjax addition) seeds the
    "random" strategy's draws; None draws from Python's global ``random``, as sentence-transformers does.

    Differences from sentence-transformers: a column name that is not in the dataset raises (instead of
    silently using the first/second column); unknown ``sampling_strategy`` raises; ``use_faiss``,
    ``use_multi_process`` and ``cache_folder`` have no effect (a warning says so: candidates are scored exactly,
    in this process, without an embedding cache).
    """
    from datasets import Dataset

    if isinstance(dataset, Mapping):
        dataset = Dataset.from_dict(dict(dataset))
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset (or a dict of columns), got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    for option, value in (("faiss_batch_size", faiss_batch_size), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{option} must be a positive integer, got {value!r}")
    if isinstance(corpus, str | bytes) or (corpus is not None and not hasattr(corpus, "__len__")):
        raise TypeError(f"corpus must be a list of texts, got {corpus!r:.60}")  # a string: one text a character
    for option, value in (("use_faiss", use_faiss), ("use_multi_process", use_multi_process),
                          ("cache_folder", cache_folder)):  # fmt: skip
        if value:  # how sentence-transformers computes, not what: the same candidates come out
            logger.warning(
                "%s=%r has no effect in crossjax: candidates are scored exactly with numpy, in chunks of "
                "faiss_batch_size queries, in this process, embeddings computed anew",
                option,
                value,
            )
    for option, value in (("range_min", range_min), ("range_max", range_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
            raise ValueError(f"{option} must be an integer, got {value!r} ({type(value).__name__})")
    for option, value in (("max_score", max_score), ("min_score", min_score), ("absolute_margin", absolute_margin),
                          ("relative_margin", relative_margin), ("margin", margin)):  # fmt: skip
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))):
            raise ValueError(f"{option} must be a number (or None), got {value!r} ({type(value).__name__})")
    if cross_encoder is not None and not callable(getattr(cross_encoder, "predict", None)):
        raise TypeError(
            f"cross_encoder must be a CrossEncoder (an object with predict), got {cross_encoder!r:.60}; load it "
            "first, e.g. cross_encoder=crossjax.CrossEncoder(path)"
        )

    columns = dataset.column_names
    named_columns = (("anchor_column_name", anchor_column_name), ("positive_column_name", positive_column_name))
    for argument, column in named_columns:
        if column and column not in columns:
            raise ValueError(f"{argument}={column!r} is not a column of the dataset; its columns are {columns}")
    anchor_column_name = anchor_column_name or columns[0]
    if not positive_column_name:
        if len(columns) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive_column_name = columns[1]
    if anchor_column_name == positive_column_name:
        raise ValueError(f"the anchor and positive columns are both {anchor_column_name!r}")

    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning(
            "The `as_triplets` parameter is deprecated. Use the `output_format` parameter instead. "
            f"Setting `output_format` to `{output_format}`."
        )
    if include_positives:
        if (
            range_min != 0
            or range_max is not None
            or max_score is not None
            or min_score is not None
            or absolute_margin is not None
            or relative_margin is not None
            or margin is not None
            or sampling_strategy != "top"
        ):
            logger.warning(
                "When using `include_positives=True`, updating `range_min`, `range_max`, `max_score`, `min_score`, "
                "`absolute_margin`, `relative_margin`, or `sampling_strategy` from the default values may still "
                "discard the positive values."
            )
        if output_format != "n-tuple":
            logger.warning(
                'When using `include_positives=True`, `output_format` will be set to `"n-tuple"` to ensure that '
                "the ranking order is preserved."
            )
            output_format = "n-tuple"
    if output_format == "n-tuple-scores":
        logger.warning(
            '`output_format="n-tuple-scores"` is deprecated. Use `output_format="n-tuple"` with '
            "`output_scores=True` instead for equivalent output formats."
        )
        output_format, output_scores = "n-tuple", True
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(
            f"Invalid output_format: {output_format}. Must be one of 'triplet', 'n-tuple', 'labeled-pair', or "
            "'labeled-list'."
        )
    if sampling_strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"Invalid sampling_strategy: {sampling_strategy!r}. Must be 'top' or 'random'.")
    if margin is not None:
        absolute_margin = margin
        logger.warning(
            "The `margin` parameter is deprecated. Use the `absolute_margin` and/or `relative_margin` parameter "
            f"instead. Setting `absolute_margin` to `{absolute_margin}`."
        )

    queries = list(column_values(dataset, anchor_column_name))
    positives = list(column_values(dataset, positive_column_name))
    _check_text_column(queries, anchor_column_name)
    _check_text_column(positives, positive_column_name)
    if corpus is not None:
        corpus = list(corpus)
        _check_text_column(corpus, "corpus")

    # Rows per anchor (duplicates included), as sentence-transformers' pandas groupby-count.
    positives_per_query = list(Counter(queries).values())
    max_positives = max(positives_per_query)

    if isinstance(num_negatives, bool) or not isinstance(num_negatives, (int, np.integer)) or num_negatives < 1:
        raise ValueError(f"num_negatives must be an integer >= 1, got num_negatives={num_negatives!r}.")
    if range_max is None:
        if (
            absolute_margin is not None
            or relative_margin is not None
            or max_score is not None
            or (cross_encoder is not None and min_score is not None)
        ):
            range_max = range_min + (num_negatives * 10) + max_positives  # room for skipped candidates
        else:
            range_max = range_min + num_negatives + max_positives
        if verbose:
            print(f"Setting range_max to {range_max} based on the provided parameters.")
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(
            f"range_min must be smaller than range_max, got range_min={range_min} and range_max={range_max}."
        )
    if num_negatives > range_max - range_min:
        raise ValueError(
            f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates remain after "
            f"skipping the first range_min={range_min} of range_max={range_max}. Consider decreasing num_negatives "
            "or range_min, or increasing range_max."
        )
    prompts = {
        "query_prompt_name": query_prompt_name,
        "query_prompt": query_prompt,
        "document_prompt_name": corpus_prompt_name,
        "document_prompt": corpus_prompt,
    }
    retriever = _make_retriever(model, batch_size, faiss_batch_size, verbose, prompts)
    rng = random.Random(random_seed) if random_seed is not None else random

    # De-duplicate the corpus (positives included) and the queries; a repeated anchor has several positives.
    corpus = list(dict.fromkeys((corpus if corpus is not None else positives) + positives))
    corpus_idx = {text: idx for idx, text in enumerate(corpus)}
    all_queries = queries
    queries = list(dict.fromkeys(all_queries))
    queries_idx = {query: idx for idx, query in enumerate(queries)}
    n_queries = len(queries)
    if n_queries != len(all_queries) and verbose:
        print(f"Found {n_queries} unique queries out of {len(all_queries)} total queries.")
    if max_positives > 1 and verbose:
        print(f"Found an average of {np.mean(positives_per_query):.3f} positives per query.")

    positive_indices: list[list[int]] = [[] for _ in range(n_queries)]
    for query, positive in zip(all_queries, positives, strict=True):
        query_positives = positive_indices[queries_idx[query]]
        if corpus_idx[positive] not in query_positives:
            query_positives.append(corpus_idx[positive])
    n_positives = [len(p) for p in positive_indices]
    positives = [corpus[doc_idx] for doc_idxs in positive_indices for doc_idx in doc_idxs]
    all_queries = [queries[idx] for idx in range(n_queries) for _ in range(n_positives[idx])]

    # Candidates: range_max + max_positives per query, leaving room for the positives themselves.
    num_columns = range_max + max_positives
    found_scores, found_indices, positive_scores = retriever.retrieve(
        queries, corpus, min(num_columns, len(corpus)), positive_indices
    )
    scores = np.full((n_queries, num_columns), -np.inf, dtype=np.float32)
    indices = np.full((n_queries, num_columns), -1, dtype=np.int64)
    scores[:, : found_scores.shape[1]] = found_scores
    indices[:, : found_indices.shape[1]] = found_indices

    if cross_encoder is not None and (
        absolute_margin is not None or relative_margin is not None or max_score is not None or min_score is not None
    ):
        rows, columns = np.nonzero(indices >= 0)
        pairs = [(queries[q], corpus[indices[q, c]]) for q, c in zip(rows, columns, strict=True)]
        scores[rows, columns] = _cross_encoder_scores(cross_encoder, pairs, batch_size)
        positive_pairs = list(zip(all_queries, positives, strict=True))
        positive_scores = _cross_encoder_scores(cross_encoder, positive_pairs, batch_size)
    scores[indices == -1] = -np.inf

    if not include_positives:
        positive_mask = np.stack([np.isin(indices[q], positive_indices[q]) for q in range(n_queries)])
        scores[positive_mask] = -np.inf

    log_counters: dict[str, dict[str, float]] = {}
    num_candidates = scores.size

    def drop(removed: np.ndarray, name: str) -> int:
        scores[removed] = -np.inf
        skipped = int(removed.sum())
        if skipped:
            log_counters[name] = {"skipped": skipped, "ratio": skipped / num_candidates}
        return skipped

    if absolute_margin is not None or relative_margin is not None:
        # Margins are taken against the hardest (lowest-scoring) positive of each query.
        offsets = np.cumsum([0] + n_positives)
        hardest_positive = np.array(
            [positive_scores[offsets[q] : offsets[q + 1]].min() for q in range(n_queries)], dtype=np.float32
        )
        if absolute_margin is not None:
            num_candidates -= drop(scores + absolute_margin > hardest_positive[:, None], "absolute_margin")
        if relative_margin is not None:
            threshold = hardest_positive - np.abs(hardest_positive) * relative_margin
            num_candidates -= drop(scores > threshold[:, None], "relative_margin")
    if max_score is not None:
        drop(scores > max_score, "max_score")
    if min_score is not None:
        drop(scores < min_score, "min_score")

    # The best range_max candidates left, then skip the first range_min of them.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :range_max]
    negative_scores = np.take_along_axis(scores, order, axis=1)[:, range_min:]
    indices = np.take_along_axis(indices, order, axis=1)[:, range_min:]

    if sampling_strategy == "top":
        indices = indices[:, :num_negatives]
        negative_scores = negative_scores[:, :num_negatives]
    else:
        num_options = np.maximum(indices.shape[1] - np.isinf(negative_scores).sum(1), num_negatives)
        sampled = np.array([rng.sample(range(int(options)), k=num_negatives) for options in num_options])
        negative_scores = np.take_along_axis(negative_scores, sampled, axis=1)
        indices = np.take_along_axis(indices, sampled, axis=1)
        resort = np.argsort(-negative_scores, axis=1, kind="stable")
        negative_scores = np.take_along_axis(negative_scores, resort, axis=1)
        indices = np.take_along_axis(indices, resort, axis=1)

    if verbose:
        print("Negative candidates mined, preparing dataset...")

    # One row of negatives per (query, positive) pair, as sentence-transformers repeats them.
    row_query = np.repeat(np.arange(n_queries), n_positives)
    row_indices = indices[row_query]
    row_scores = negative_scores[row_query]
    row_keep = np.isfinite(row_scores)
    positive_per_row = np.repeat(positive_scores[:, None], num_negatives, axis=1)
    flat_positive_idx = [p for doc_idxs in positive_indices for p in doc_idxs]

    data: dict[str, list[Any]]
    if output_format == "triplet":
        data = {anchor_column_name: [], positive_column_name: [], "negative": []}
        if output_scores:
            data["scores"] = []
        for row, column in zip(*np.nonzero(row_keep), strict=True):
            data[anchor_column_name].append(all_queries[row])
            data[positive_column_name].append(corpus[flat_positive_idx[row]])
            data["negative"].append(corpus[row_indices[row, column]])
            if output_scores:
                data["scores"].append([positive_scores[row].item(), row_scores[row, column].item()])
        kept_negative_scores = row_scores[row_keep]
        difference = positive_per_row[row_keep] - kept_negative_scores
        maximum_possible_samples = row_keep.size
    elif output_format == "labeled-pair":
        data = {anchor_column_name: [], positive_column_name: []}
        label_column = "score" if output_scores else "label"
        data[label_column] = []
        offsets = np.cumsum([0] + n_positives)
        for q in range(n_queries):
            for i, doc_idx in enumerate(positive_indices[q]):
                data[anchor_column_name].append(queries[q])
                data[positive_column_name].append(corpus[doc_idx])
                data[label_column].append(positive_scores[offsets[q] + i].item() if output_scores else 1)
            for doc_idx, score in zip(indices[q], negative_scores[q], strict=True):
                if score == -np.inf:
                    continue
                data[anchor_column_name].append(queries[q])
                data[positive_column_name].append(corpus[doc_idx])
                data[label_column].append(score.item() if output_scores else 0)
        kept_negative_scores = row_scores[row_keep]
        difference = positive_per_row[row_keep] - kept_negative_scores
        maximum_possible_samples = n_queries * num_negatives + len(dataset)
    elif output_format == "n-tuple":
        full_rows = row_keep.all(axis=1)
        data = {
            anchor_column_name: [all_queries[row] for row in np.flatnonzero(full_rows)],
            positive_column_name: [positives[row] for row in np.flatnonzero(full_rows)],
        }
        for i in range(num_negatives):
            data[f"negative_{i + 1}"] = [corpus[doc_idx] for doc_idx in row_indices[full_rows, i]]
        if output_scores:
            data["scores"] = np.concatenate(
                [positive_scores[full_rows][:, None], row_scores[full_rows]], axis=1
            ).tolist()
        kept_negative_scores = row_scores[full_rows].ravel()
        difference = positive_per_row[full_rows].ravel() - kept_negative_scores
        maximum_possible_samples = full_rows.size
    else:  # labeled-list
        any_rows = np.flatnonzero(row_keep.any(axis=1))
        data = {
            anchor_column_name: [all_queries[row] for row in any_rows],
            positive_column_name: [
                [positives[row]] + [corpus[doc_idx] for doc_idx in row_indices[row][row_keep[row]]] for row in any_rows
            ],
        }
        if output_scores:
            data["scores"] = [
                [positive_scores[row].item()] + row_scores[row][row_keep[row]].tolist() for row in any_rows
            ]
        else:
            data["labels"] = [[1] + [0] * int(row_keep[row].sum()) for row in any_rows]
        kept_negative_scores = row_scores[row_keep]
        difference = positive_per_row[row_keep] - kept_negative_scores
        maximum_possible_samples = row_keep.shape[0]

    output_dataset = Dataset.from_dict(data)

    if verbose:
        _print_statistics(positive_scores, kept_negative_scores, difference)
        for name, value in [
            ("absolute_margin", absolute_margin),
            ("relative_margin", relative_margin),
            ("max_score", max_score),
            ("min_score", min_score),
        ]:
            if name in log_counters:
                counter = log_counters[name]
                print(
                    f"Skipped {counter['skipped']:,} potential negatives ({counter['ratio']:.2%}) due to the "
                    f"{name} of {value}."
                )
        missing_samples = maximum_possible_samples - len(output_dataset)
        if missing_samples > 0:
            solutions = ["range_max"]
            if range_min > 0:
                solutions.append("range_min")
            for name, value in [
                ("absolute_margin", absolute_margin),
                ("relative_margin", relative_margin),
                ("max_score", max_score),
            ]:
                if value is not None:
                    solutions.append(name)
            considerations = (
                ", ".join(solutions[:-1]) + " and " + solutions[-1] if len(solutions) > 1 else solutions[0]
            )
            print(
                f"Could not find enough negatives for {missing_samples} samples "
                f"({missing_samples / maximum_possible_samples:.2%}). Consider adjusting the {considerations} "
                f"parameter{'s' if len(solutions) > 1 else ''} if you'd like to find more valid negatives."
            )
    return output_dataset
