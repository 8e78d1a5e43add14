"""The crossjax evaluators must give sentence-transformers' numbers, keys and CSV files.

Every check runs our evaluator and the installed sentence-transformers one on the SAME stub model (fixed
scores derived from the text), then cross-checks the numbers against scipy / scikit-learn.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import warnings
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shared_data
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    ndcg_score,
    precision_score,
    recall_score,
)

import crossjax.evaluation as cje
from crossjax.evaluation import base as cje_base

st_eval = pytest.importorskip("sentence_transformers.cross_encoder.evaluation")
from sentence_transformers import InputExample  # noqa: E402

# ----------------------------------------------------------------------------------------------------------
# Stub model and helpers
# ----------------------------------------------------------------------------------------------------------


class _Card:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict, int, int]] = []

    def set_evaluation_metrics(self, evaluator: Any, metrics: dict, epoch: int = 0, step: int = 0) -> None:
        self.calls.append((evaluator, metrics, epoch, step))


class StubModel:
    """A fake cross-encoder: ``predict`` returns fixed scores, from ``table`` or a hash of the pair."""

    def __init__(self, table: dict[tuple[str, str], Any] | None = None, num_labels: int = 1, levels: int = 0):
        self.table = table or {}
        self.num_labels = num_labels
        self.levels = levels  # >0: round hashed scores to this many values, producing ties
        self.model_card_data = _Card()
        self.calls: list[dict[str, Any]] = []

    def _hashed(self, a: str, b: str, i: int) -> float:
        value = zlib.crc32(f"{i}\x1f{a}\x1f{b}".encode()) / 2**32
        return round(value * self.levels) / self.levels if self.levels else value

    def score(self, a: str, b: str) -> Any:
        if (a, b) in self.table:
            return self.table[(a, b)]
        if self.num_labels == 1:
            return self._hashed(a, b, 0)
        return [self._hashed(a, b, i) for i in range(self.num_labels)]

    def predict(
        self,
        sentences: list[tuple[str, str]] | list[list[str]],
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Any = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        prompt_name: str | None = None,
    ) -> np.ndarray:
        self.calls.append(
            {"batch_size": batch_size, "show_progress_bar": show_progress_bar, "prompt_name": prompt_name}
        )
        return np.asarray([self.score(a, b) for a, b in sentences], dtype=np.float32)


def run_both(ours: Any, theirs: Any, model: StubModel, tmp_path: Path, epoch: int = -1, steps: int = -1):
    """Call both evaluators (twice, to check CSV appends) and return their metrics and output folders."""
    our_dir, st_dir = tmp_path / "ours", tmp_path / "st"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ST deprecation notices, sklearn/scipy degenerate-input warnings
        for _ in range(2):
            our_metrics = ours(model, output_path=str(our_dir), epoch=epoch, steps=steps)
            st_metrics = theirs(model, output_path=str(st_dir), epoch=epoch, steps=steps)
    return our_metrics, st_metrics, our_dir, st_dir


def make_st(cls_name: str, *args: Any, **kwargs: Any) -> Any:
    """Build a sentence-transformers evaluator, silencing its deprecation notice for the CE* names."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return getattr(st_eval, cls_name)(*args, **kwargs)


def assert_same_metrics(ours: dict[str, float], theirs: dict[str, float], tol: float = 1e-9) -> None:
    assert list(ours) == list(theirs)
    for key in theirs:
        assert isinstance(ours[key], float), key
        a, b = ours[key], float(theirs[key])
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=tol, rel=tol), (key, a, b)


def read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def assert_same_csv(our_dir: Path, st_dir: Path) -> None:
    """Same file names, same header, one header plus one row per call, same values."""
    our_files = sorted(p.name for p in our_dir.iterdir())
    assert our_files == sorted(p.name for p in st_dir.iterdir())
    for name in our_files:
        ours, theirs = read_csv_rows(our_dir / name), read_csv_rows(st_dir / name)
        assert ours[0] == theirs[0]
        assert len(ours) == len(theirs) == 3  # header written once, then one row per call
        for our_row, st_row in zip(ours[1:], theirs[1:], strict=True):
            assert our_row[:2] == st_row[:2]
            np.testing.assert_allclose(
                [float(v) for v in our_row[2:]], [float(v) for v in st_row[2:]], rtol=1e-6, atol=1e-9
            )
    # Byte-identical line endings/quoting: the header line is the same bytes.
    for name in our_files:
        assert (our_dir / name).read_bytes().splitlines()[0] == (st_dir / name).read_bytes().splitlines()[0]


def pairs_for(n: int, prefix: str = "s") -> list[list[str]]:
    return [[f"{prefix}a{i}", f"{prefix}b{i}"] for i in range(n)]


# ----------------------------------------------------------------------------------------------------------
# Package hygiene
# ----------------------------------------------------------------------------------------------------------


def test_import_needs_no_torch_scipy_sklearn() -> None:
    code = (
        "import sys, crossjax.evaluation\n"
        "heavy = ('torch', 'scipy', 'sklearn', 'sentence_transformers', 'jax')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names_and_st6_aliases() -> None:
    for name in [
        "CECorrelationEvaluator",
        "CEBinaryClassificationEvaluator",
        "CEBinaryAccuracyEvaluator",
        "CESoftmaxAccuracyEvaluator",
        "CEF1Evaluator",
        "CERerankingEvaluator",
        "CrossEncoderCorrelationEvaluator",
        "CrossEncoderClassificationEvaluator",
        "CrossEncoderRerankingEvaluator",
    ]:
        assert name in cje.__all__
        assert hasattr(st_eval, name), f"sentence-transformers has no {name}"
        assert issubclass(getattr(cje, name), cje.CrossEncoderEvaluator)
    assert issubclass(cje.CECorrelationEvaluator, cje.CrossEncoderCorrelationEvaluator)
    assert issubclass(cje.CERerankingEvaluator, cje.CrossEncoderRerankingEvaluator)
    for name in ["CEBinaryClassificationEvaluator", "CESoftmaxAccuracyEvaluator", "CEF1Evaluator"]:
        assert issubclass(getattr(cje, name), cje.CrossEncoderClassificationEvaluator)
    assert cje.is_main_process() is True  # single-process JAX


def test_a_custom_evaluator_on_sentence_transformers_base_class_runs_on_crossjax_s(tmp_path: Path) -> None:
    """sentence-transformers' docs subclass ``BaseEvaluator`` (``SentenceEvaluator`` at older paths): the same
    class body on crossjax's base gives the same metrics, primary metric, card records and description."""
    from crossjax.base.evaluation import BaseEvaluator
    from sentence_transformers.base.evaluation import BaseEvaluator as TheirBase

    def custom(base: type) -> Any:
        class MeanScoreEvaluator(base):
            def __init__(self, pairs: list[list[str]], name: str = "dev") -> None:
                super().__init__()
                self.pairs, self.name, self.primary_metric = pairs, name, "mean"

            def __call__(self, model, output_path=None, epoch=-1, steps=-1):
                scores = np.asarray(model.predict(self.pairs))
                metrics = self.prefix_name_to_metrics({"mean": scores.mean(), "top": scores.max()}, self.name)
                self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
                return metrics

        return MeanScoreEvaluator(pairs_for(5))

    ours, theirs, model = custom(BaseEvaluator), custom(TheirBase), StubModel()
    assert_same_metrics(ours(model, epoch=1, steps=3), theirs(model, epoch=1, steps=3))
    assert ours.primary_metric == theirs.primary_metric == "dev_mean" and ours.greater_is_better
    assert ours.description == theirs.description == "Mean Score"
    calls = model.model_card_data.calls
    assert [call[1:] for call in calls[:1]] == [call[1:] for call in calls[1:]]


def test_constructor_defaults_match_st() -> None:
    import inspect

    pairs = [
        (cje.CrossEncoderCorrelationEvaluator, st_eval.CrossEncoderCorrelationEvaluator),
        (cje.CrossEncoderClassificationEvaluator, st_eval.CrossEncoderClassificationEvaluator),
        (cje.CrossEncoderRerankingEvaluator, st_eval.CrossEncoderRerankingEvaluator),
    ]
    for ours, theirs in pairs:
        our_params = inspect.signature(ours.__init__).parameters
        st_params = inspect.signature(theirs.__init__).parameters
        assert list(our_params) == list(st_params)
        for name, param in st_params.items():
            assert our_params[name].default == param.default, (ours, name)
            assert our_params[name].kind == param.kind, (ours, name)


# ----------------------------------------------------------------------------------------------------------
# Correlation
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "sts-dev"])
@pytest.mark.parametrize("levels", [0, 7])  # 7 levels: many tied predictions
def test_correlation_matches_st_and_scipy(tmp_path: Path, name: str, levels: int) -> None:
    n = 60
    sentence_pairs = pairs_for(n)
    gold = [float(i % 6) for i in range(n)]  # ties in the gold scores too
    model = StubModel(levels=levels)
    ours = cje.CECorrelationEvaluator(sentence_pairs, gold, name=name)
    theirs = st_eval.CrossEncoderCorrelationEvaluator(sentence_pairs, gold, name=name)
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path, epoch=1, steps=10)

    assert_same_metrics(our_metrics, st_metrics)
    assert ours.primary_metric == theirs.primary_metric == (f"{name}_spearman" if name else "spearman")
    assert_same_csv(our_dir, st_dir)
    assert (our_dir / f"CrossEncoderCorrelationEvaluator{'_' + name if name else ''}_results.csv").exists()

    pred = model.predict(sentence_pairs)
    prefix = f"{name}_" if name else ""
    assert our_metrics[prefix + "pearson"] == pytest.approx(pearsonr(gold, pred)[0], abs=1e-9)
    assert our_metrics[prefix + "spearman"] == pytest.approx(spearmanr(gold, pred)[0], abs=1e-9)
    # Same predict kwargs as ST, except prompt_name which crossjax models don't take.
    assert model.calls[0] == {**model.calls[1], "prompt_name": None}
    assert ours.greater_is_better is True


def test_correlation_from_input_examples_and_degenerate_input(tmp_path: Path) -> None:
    examples = [InputExample(texts=[f"q{i}", f"d{i}"], label=float(i % 4)) for i in range(20)]
    model = StubModel()
    ours = cje.CECorrelationEvaluator.from_input_examples(examples, name="x")
    theirs = st_eval.CrossEncoderCorrelationEvaluator.from_input_examples(examples, name="x")
    our_metrics, st_metrics, *_ = run_both(ours, theirs, model, tmp_path)
    assert_same_metrics(our_metrics, st_metrics)

    # Constant predictions: scipy gives NaN, so do we.
    const = StubModel(table={(f"q{i}", f"d{i}"): 0.5 for i in range(20)})
    ours2 = cje.CECorrelationEvaluator.from_input_examples(examples)
    theirs2 = st_eval.CrossEncoderCorrelationEvaluator.from_input_examples(examples)
    our_metrics, st_metrics, *_ = run_both(ours2, theirs2, const, tmp_path / "const")
    assert np.isnan(our_metrics["spearman"]) and np.isnan(our_metrics["pearson"])
    assert_same_metrics(our_metrics, st_metrics)

    # Gold values as a torch tensor, a JAX array or 0-d numpy arrays (a torch-formatted dataset's column), as
    # sentence-transformers reads them
    import jax.numpy as jnp
    import torch

    pairs, gold = [e.texts for e in examples], [e.label for e in examples]
    for given in (torch.tensor(gold), jnp.asarray(gold), [np.array(g) for g in gold]):
        ours3 = cje.CrossEncoderCorrelationEvaluator(pairs, given)
        theirs3 = st_eval.CrossEncoderCorrelationEvaluator(pairs, given)
        our_metrics, st_metrics, *_ = run_both(ours3, theirs3, model, tmp_path / "arrays")
        assert_same_metrics(our_metrics, st_metrics, tol=1e-6)  # scipy in float32 for float32 gold
    labels = torch.tensor([i % 2 for i in range(20)])
    ours4 = cje.CrossEncoderClassificationEvaluator(pairs, labels)
    theirs4 = st_eval.CrossEncoderClassificationEvaluator(pairs, labels)
    assert_same_metrics(*run_both(ours4, theirs4, model, tmp_path / "classes")[:2])


def test_numpy_correlations_match_scipy() -> None:
    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(2, 200))
        x = rng.integers(0, 5, n).astype(float) if trial % 2 else rng.normal(size=n)
        y = rng.integers(0, 3, n).astype(np.float32) if trial % 3 == 0 else rng.normal(size=n)
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            continue
        assert cje.pearson_correlation(x, y) == pytest.approx(pearsonr(x, y)[0], abs=1e-12)
        assert cje.spearman_correlation(x, y) == pytest.approx(spearmanr(x, y)[0], abs=1e-12)
    from scipy.stats import rankdata

    v = np.array([3.0, 1.0, 3.0, 2.0, 1.0, 3.0])
    np.testing.assert_array_equal(cje.rankdata_average(v), rankdata(v))


# ----------------------------------------------------------------------------------------------------------
# Binary classification (1-label models)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls_name", ["CEBinaryClassificationEvaluator", "CrossEncoderClassificationEvaluator"]
)
@pytest.mark.parametrize("levels", [0, 5])
def test_binary_classification_matches_st_and_sklearn(tmp_path: Path, cls_name: str, levels: int) -> None:
    n = 80
    sentence_pairs = pairs_for(n)
    labels = [int(zlib.crc32(f"l{i}".encode()) % 3 == 0) for i in range(n)]
    model = StubModel(levels=levels)
    ours = getattr(cje, cls_name)(sentence_pairs, labels, name="bin")
    theirs = make_st(cls_name, sentence_pairs, labels, name="bin")
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path, epoch=2)

    assert_same_metrics(our_metrics, st_metrics)
    assert ours.primary_metric == theirs.primary_metric == "bin_average_precision"
    assert ours.csv_headers == theirs.csv_headers
    assert_same_csv(our_dir, st_dir)
    assert (our_dir / "CrossEncoderClassificationEvaluator_bin_results.csv").exists()

    scores = model.predict(sentence_pairs)
    m = {k.removeprefix("bin_"): v for k, v in our_metrics.items()}
    y = np.asarray(labels)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, scores), abs=1e-12)
    # The reported thresholds reproduce the reported numbers under sklearn.
    assert m["accuracy"] == pytest.approx(accuracy_score(y, scores >= np.float32(m["accuracy_threshold"])))
    f1_pred = scores >= np.float32(m["f1_threshold"])
    assert m["f1"] == pytest.approx(f1_score(y, f1_pred), abs=1e-12)
    assert m["precision"] == pytest.approx(precision_score(y, f1_pred), abs=1e-12)
    assert m["recall"] == pytest.approx(recall_score(y, f1_pred), abs=1e-12)
    # And they are the best over every possible cut.
    cuts = [np.inf, *np.unique(scores)]
    assert m["accuracy"] == pytest.approx(max(accuracy_score(y, scores >= c) for c in cuts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m["f1"] == pytest.approx(max(f1_score(y, scores >= c, zero_division=0) for c in cuts))


def test_binary_edge_cases_match_st() -> None:
    bce = pytest.importorskip(
        "sentence_transformers.sentence_transformer.evaluation"
    ).BinaryClassificationEvaluator
    rng = np.random.default_rng(1)
    cases = [
        (np.array([0.5, 0.5, 0.5], dtype=np.float32), [1, 0, 1]),  # one tie group
        (np.array([0.9, 0.1], dtype=np.float32), [0, 0]),  # no positives
        (np.array([0.9, 0.1, 0.3]), [1, 1, 1]),  # no negatives
        (
            np.array([1.0, np.nextafter(np.float32(1.0), np.float32(2.0))], dtype=np.float32),
            [0, 1],
        ),  # rounding
    ]
    for _ in range(40):
        n = int(rng.integers(1, 50))
        s = rng.integers(0, 6, n).astype(np.float32) / 5 if rng.random() < 0.5 else rng.normal(size=n)
        cases.append((s, list(rng.integers(0, 2, n))))
    for scores, labels in cases:
        assert cje.find_best_acc_and_threshold(scores, labels, True) == pytest.approx(
            tuple(float(v) for v in bce.find_best_acc_and_threshold(scores, labels, True)), abs=0
        )
        assert cje.find_best_f1_and_threshold(scores, labels, True) == pytest.approx(
            tuple(float(v) for v in bce.find_best_f1_and_threshold(scores, labels, True)), abs=0
        )
        assert cje.find_best_acc_and_threshold(scores, labels, False) == pytest.approx(
            tuple(float(v) for v in bce.find_best_acc_and_threshold(scores, labels, False)), abs=0
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert cje.average_precision(labels, scores) == pytest.approx(
                average_precision_score(labels, scores), abs=1e-12
            )


# ----------------------------------------------------------------------------------------------------------
# Multi-class classification (softmax accuracy / F1)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls_name", ["CESoftmaxAccuracyEvaluator", "CEF1Evaluator", "CrossEncoderClassificationEvaluator"]
)
def test_multiclass_matches_st_and_sklearn(tmp_path: Path, cls_name: str) -> None:
    n = 90
    sentence_pairs = pairs_for(n, "nli")
    labels = [i % 3 for i in range(n)]
    labels[0] = 3  # a gold class the model can never predict (num_labels=3 -> argmax in 0..2)
    model = StubModel(num_labels=3)
    ours = getattr(cje, cls_name)(sentence_pairs, labels)
    theirs = make_st(cls_name, sentence_pairs, labels)
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path, epoch=0, steps=5)

    assert_same_metrics(our_metrics, st_metrics)
    assert ours.primary_metric == theirs.primary_metric == "f1_macro"
    assert_same_csv(our_dir, st_dir)
    assert (our_dir / "CrossEncoderClassificationEvaluator_results.csv").exists()

    pred = model.predict(sentence_pairs).argmax(axis=1)
    for avg in ["macro", "micro", "weighted"]:
        assert our_metrics[f"f1_{avg}"] == pytest.approx(f1_score(labels, pred, average=avg), abs=1e-12)
    assert our_metrics["f1_micro"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)


def test_classification_from_input_examples_and_legacy_kwargs(tmp_path: Path, caplog) -> None:
    examples = [InputExample(texts=[f"p{i}", f"h{i}"], label=i % 2) for i in range(30)]
    model = StubModel()
    for cls_name in ["CEBinaryClassificationEvaluator", "CEF1Evaluator", "CESoftmaxAccuracyEvaluator"]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours = getattr(cje, cls_name).from_input_examples(examples, name="ie")
            theirs = getattr(st_eval, cls_name).from_input_examples(examples, name="ie")
        our_metrics, st_metrics, *_ = run_both(ours, theirs, model, tmp_path / cls_name)
        assert_same_metrics(our_metrics, st_metrics)

    with caplog.at_level("WARNING"):
        cje.CEBinaryAccuracyEvaluator([["a", "b"]], [1], threshold=0.5)
    assert "threshold" in caplog.text
    with pytest.raises(ValueError):
        cje.CrossEncoderClassificationEvaluator([["a", "b"]], [1, 0])


def test_numpy_f1_scores_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    for _ in range(30):
        n = int(rng.integers(1, 60))
        y_true, y_pred = rng.integers(0, 4, n), rng.integers(0, 5, n)
        ours = cje.f1_scores(y_true, y_pred)
        theirs = [f1_score(y_true, y_pred, average=a) for a in ("macro", "micro", "weighted")]
        assert ours == pytest.approx(theirs, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Re-ranking
# ----------------------------------------------------------------------------------------------------------


def _negative_samples() -> list[dict[str, Any]]:
    return [
        {"query": "q1", "positive": ["p1a"], "negative": ["n1a", "n1b", "n1c"]},
        {"query": "q2", "positive": ["p2a", "p2b"], "negative": [f"n2{i}" for i in range(14)]},
        {"query": "q3", "positive": [], "negative": ["n3a", "n3b"]},  # no positive: counts as 0
        {"query": "q4", "positive": "p4a", "negative": ["n4a"]},  # str positive
        {"query": "q5", "positive": ["p5a", "p5b"], "negative": ["n5a", "n5b", "n5c"]},
    ]


def _tied_table() -> dict[tuple[str, str], float]:
    # q1: positive tied with two negatives at the top; q5: everything tied.
    table = {("q1", "p1a"): 0.8, ("q1", "n1a"): 0.8, ("q1", "n1b"): 0.8, ("q1", "n1c"): 0.1}
    table.update({("q5", d): 0.5 for d in ["p5a", "p5b", "n5a", "n5b", "n5c"]})
    table[("q4", "p4a")] = 0.2
    table[("q4", "n4a")] = 0.9
    return table


@pytest.mark.parametrize("at_k", [10, 3, None])  # None: no cut-off, keys "mrr@None", as sentence-transformers
@pytest.mark.parametrize("levels", [0, 4])
def test_reranking_negatives_match_st_and_sklearn(tmp_path: Path, at_k: int | None, levels: int) -> None:
    samples = _negative_samples()
    model = StubModel(table=_tied_table(), levels=levels)
    ours = cje.CrossEncoderRerankingEvaluator(samples, at_k=at_k, name="rr")
    theirs = st_eval.CrossEncoderRerankingEvaluator(samples, at_k=at_k, name="rr")
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path, epoch=1, steps=3)

    assert_same_metrics(our_metrics, st_metrics)
    assert set(our_metrics) == {"rr_map", f"rr_mrr@{at_k}", f"rr_ndcg@{at_k}"}
    assert ours.primary_metric == theirs.primary_metric == f"rr_ndcg@{at_k}"
    assert ours.csv_headers == theirs.csv_headers
    assert_same_csv(our_dir, st_dir)
    assert (our_dir / f"CrossEncoderRerankingEvaluator_rr_results_@{at_k}.csv").exists()
    assert len(model.calls) == 4  # one batched predict call per evaluation, for both implementations

    # Independent oracle: per-query sklearn metrics, queries without positives contribute 0.
    ndcgs, aps = [], []
    for sample in samples:
        positive = [sample["positive"]] if isinstance(sample["positive"], str) else sample["positive"]
        docs = positive + sample["negative"]
        y = [1] * len(positive) + [0] * len(sample["negative"])
        scores = model.predict([[sample["query"], d] for d in docs])
        ndcgs.append(ndcg_score([y], [scores], k=at_k) if positive else 0.0)
        aps.append(average_precision_score(y, scores) if positive else 0.0)
    assert our_metrics[f"rr_ndcg@{at_k}"] == pytest.approx(np.mean(ndcgs), abs=1e-12)
    assert our_metrics["rr_map"] == pytest.approx(np.mean(aps), abs=1e-12)


@pytest.mark.parametrize("always_rerank_positives", [True, False])
def test_reranking_documents_match_st(tmp_path: Path, always_rerank_positives: bool) -> None:
    samples = [
        {"query": "q1", "positive": ["d3", "dX"], "documents": ["d1", "d2", "d3", "d4"]},  # dX not retrieved
        {"query": "q2", "positive": ["e1"], "documents": ["e1", "e2", "e3"]},
        {"query": "q3", "positive": ["zz"], "documents": ["f1", "f2", "f3"]},  # positive never retrieved
        {"query": "q4", "positive": [], "documents": ["g1", "g2"]},
    ]
    model = StubModel(levels=3)
    kwargs = {"always_rerank_positives": always_rerank_positives, "at_k": 2}
    ours = cje.CrossEncoderRerankingEvaluator(samples, **kwargs)
    theirs = st_eval.CrossEncoderRerankingEvaluator(samples, **kwargs)
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path)
    assert_same_metrics(our_metrics, st_metrics)
    assert {"base_map", "base_mrr@2", "base_ndcg@2"} <= set(our_metrics)
    assert_same_csv(our_dir, st_dir)
    assert ours.get_config_dict() == theirs.get_config_dict()
    # Model-card metrics carry the base -> reranked delta strings, like ST.
    assert model.model_card_data.calls[0][1] == model.model_card_data.calls[1][1]


def test_reranking_samples_from_a_generator_are_read_at_every_evaluation(tmp_path: Path) -> None:
    """A generator of samples was read once: the second evaluation (of a training run's many) had no query and
    returned NaN metrics (sentence-transformers raises at every call). It is now read into a list when made."""
    model = StubModel(table=_tied_table(), levels=4)
    listed = cje.CrossEncoderRerankingEvaluator(_negative_samples(), at_k=3)(model)
    streamed = cje.CrossEncoderRerankingEvaluator((sample for sample in _negative_samples()), at_k=3)
    assert streamed(model) == streamed(model) == listed
    with pytest.raises(ValueError, match="needs at least one sample"):
        cje.CrossEncoderRerankingEvaluator(sample for sample in [])


def test_reranking_dict_samples_and_mrr_at_k_alias(tmp_path: Path) -> None:
    samples = {f"id{i}": s for i, s in enumerate(_negative_samples())}
    model = StubModel()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = cje.CERerankingEvaluator(samples, mrr_at_k=5)
        theirs = st_eval.CERerankingEvaluator(samples, mrr_at_k=5)
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path)
    assert_same_metrics(our_metrics, st_metrics)
    assert "mrr@5" in our_metrics
    assert_same_csv(our_dir, st_dir)


def test_reranking_differences_from_st() -> None:
    model = StubModel()
    # A query whose only document is its positive: ST (via sklearn) raises, we score it as a perfect ranking.
    single = [{"query": "q", "positive": ["p"], "negative": []}]
    assert cje.CERerankingEvaluator(single)(model) == {"map": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}
    with pytest.raises(ValueError):
        st_eval.CrossEncoderRerankingEvaluator(single)(model)
    # No samples: an error when the evaluator is made (sentence-transformers fails when it is called).
    with pytest.raises(ValueError, match="at least one sample"):
        cje.CERerankingEvaluator([])
    with pytest.raises(ValueError):
        cje.CERerankingEvaluator([{"query": "q", "positive": ["p"]}])(model)


def test_non_finite_scores_are_an_error_as_in_st() -> None:
    """A NaN score used to sort first: a diverged model got accuracy, MAP and MRR 1.0. sentence-transformers
    raises (scikit-learn's "Input contains NaN"); crossjax names the pair."""
    pairs = [["a", "b"], ["c", "d"], ["e", "f"]]
    table = {("a", "b"): float("nan"), ("c", "d"): 0.2, ("e", "f"): 0.8}
    samples = [{"query": "a", "positive": ["b"], "negative": ["d", "f"]}]
    rerank_table = {("a", "b"): float("nan"), ("a", "d"): 0.9, ("a", "f"): 0.1}
    for ours, theirs, model in (
        (cje.CrossEncoderClassificationEvaluator, st_eval.CrossEncoderClassificationEvaluator, StubModel(table)),
        (cje.CrossEncoderRerankingEvaluator, st_eval.CrossEncoderRerankingEvaluator, StubModel(rerank_table)),
    ):
        args = (pairs, [1, 0, 1]) if ours is cje.CrossEncoderClassificationEvaluator else (samples,)
        with pytest.raises(ValueError, match="NaN"):
            theirs(*args)(model)
        message = r"scored 1 of 3 pairs nan, not a finite number \(first: pair 0, \['a', 'b'\]\)"
        with pytest.raises(ValueError, match=message):
            ours(*args)(model)


def test_numpy_ranking_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        if y.sum() == 0:
            y[0] = 1
        s = rng.integers(0, 4, n).astype(np.float32) if rng.random() < 0.5 else rng.normal(size=n)
        for k in (1, 3, 10, None):
            assert cje.ndcg_at_k(y, s, k) == pytest.approx(ndcg_score([y], [s], k=k), abs=1e-12)
        assert cje.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
        ranking = np.argsort(s)[::-1]
        first = next(r for r, i in enumerate(ranking) if y[i])
        assert cje.mrr_at_k(y, s, 10) == (1 / (first + 1) if first < 10 else 0.0)


def test_reranking_from_input_examples() -> None:
    examples = [
        InputExample(texts=["q1", "a"], label=1),
        InputExample(texts=["q2", "b"], label=0),
        InputExample(texts=["q1", "c"], label=0),
    ]
    ev = cje.CERerankingEvaluator.from_input_examples(examples, at_k=5)
    assert ev.samples == [
        {"query": "q1", "positive": ["a"], "negative": ["c"]},
        {"query": "q2", "positive": [], "negative": ["b"]},
    ]
    assert ev.at_k == 5


# ----------------------------------------------------------------------------------------------------------
# Base behaviour: process-0 CSV writing, prompt_name forwarding
# ----------------------------------------------------------------------------------------------------------


def test_only_main_process_writes_csv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ev = cje.CECorrelationEvaluator(pairs_for(5), [0.0, 1.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(cje_base, "is_main_process", lambda: False)
    metrics = ev(StubModel(), output_path=str(tmp_path / "p1"))
    assert "spearman" in metrics and not (tmp_path / "p1").exists()
    monkeypatch.setattr(cje_base, "is_main_process", lambda: True)
    ev(StubModel(), output_path=str(tmp_path / "p0"))
    assert (tmp_path / "p0" / ev.csv_file).exists()
    no_csv = cje.CECorrelationEvaluator(pairs_for(5), [0.0, 1.0, 2.0, 3.0, 4.0], write_csv=False)
    no_csv(StubModel(), output_path=str(tmp_path / "off"))
    assert not (tmp_path / "off").exists()


def test_prompt_name_forwarded_only_when_set() -> None:
    model = StubModel()
    cje.CECorrelationEvaluator(pairs_for(4), [0.0, 1.0, 2.0, 3.0], batch_size=7)(model)
    cje.CECorrelationEvaluator(pairs_for(4), [0.0, 1.0, 2.0, 3.0], prompt_name="query")(model)
    assert model.calls[0] == {"batch_size": 7, "show_progress_bar": False, "prompt_name": None}
    assert model.calls[1]["prompt_name"] == "query"


# ----------------------------------------------------------------------------------------------------------
# Real data (skipped when ../shared/data is absent, failed under CI=true: see conftest.missing_input)
# ----------------------------------------------------------------------------------------------------------


def _trecqa() -> list[dict[str, str]]:
    with open(shared_data("trecqa", "train.csv"), newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_trecqa_reranking_matches_st(tmp_path: Path) -> None:
    grouped: dict[str, dict[str, list[str]]] = defaultdict(lambda: {"positive": [], "negative": []})
    for row in _trecqa():
        grouped[row["qtext"]]["positive" if row["label"] == "1" else "negative"].append(row["atext"])
    # sklearn (hence ST) raises on a one-document query; TrecQA has queries with a single answer.
    samples = [
        {"query": q, **docs}
        for q, docs in grouped.items()
        if len(docs["positive"]) + len(docs["negative"]) > 1
    ]
    assert any(not s["positive"] for s in samples), (
        "expected TrecQA train to contain queries without positives"
    )
    model = StubModel(levels=50)
    ours = cje.CERerankingEvaluator(samples, name="trecqa")
    theirs = st_eval.CrossEncoderRerankingEvaluator(samples, name="trecqa")
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path)
    assert_same_metrics(our_metrics, st_metrics)
    assert_same_csv(our_dir, st_dir)


def test_trecqa_binary_classification_matches_st(tmp_path: Path) -> None:
    rows = _trecqa()
    examples = [InputExample(texts=[r["qtext"], r["atext"]], label=int(r["label"])) for r in rows]
    model = StubModel(levels=200)
    ours = cje.CEBinaryClassificationEvaluator.from_input_examples(examples, name="trecqa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = st_eval.CEBinaryClassificationEvaluator.from_input_examples(examples, name="trecqa")
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path)
    assert_same_metrics(our_metrics, st_metrics)
    assert_same_csv(our_dir, st_dir)
    scores = model.predict([e.texts for e in examples])
    labels = [e.label for e in examples]
    assert our_metrics["trecqa_average_precision"] == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


def test_stsb_correlation_matches_st(tmp_path: Path) -> None:
    with open(shared_data("stsb", "stsb-en-dev.csv"), newline="", encoding="utf-8") as f:
        rows = [(a, b, float(s)) for a, b, s in csv.reader(f)]
    pairs = [[a, b] for a, b, _ in rows]
    gold = [s for *_, s in rows]
    model = StubModel(levels=100)
    ours = cje.CECorrelationEvaluator(pairs, gold, name="sts-dev")
    theirs = st_eval.CrossEncoderCorrelationEvaluator(pairs, gold, name="sts-dev")
    our_metrics, st_metrics, our_dir, st_dir = run_both(ours, theirs, model, tmp_path)
    assert_same_metrics(our_metrics, st_metrics)
    assert_same_csv(our_dir, st_dir)


def test_classic_reranking_evaluator_scores_by_mrr(tmp_path: Path) -> None:
    samples = _negative_samples()
    model = StubModel(table=_tied_table(), levels=0)
    classic = cje.CERerankingEvaluator(samples, at_k=10, name="rr")
    modern = cje.CrossEncoderRerankingEvaluator(samples, at_k=10, name="rr")
    a = classic(model, output_path=str(tmp_path / "a"))
    b = modern(model, output_path=str(tmp_path / "b"))
    assert a == b
    assert classic.primary_metric == "rr_mrr@10" and modern.primary_metric == "rr_ndcg@10"
