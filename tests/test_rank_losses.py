"""crossjax.losses' sentence-transformers-style losses equal sentence-transformers 6.2's losses.

No real model: the oracle is ST's own loss ``forward`` run on a stand-in ``CrossEncoder`` whose score for a
(query, document) pair is an entry of a torch Parameter, one per pair crossjax's ``layout`` chose. crossjax's
``parts`` gets the same scores gathered by the layout's index; the loss value and its gradient with respect
to every pair's score must match (float32, rtol 1e-5). Padding rows/slots (with NaN logits) must change
nothing, and the parts of a split of the rows must add up to the whole batch's loss.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossjax import CrossEncoder
from crossjax import losses as cj
from crossjax.losses import ratio, resolve_activation

torch = pytest.importorskip("torch")
st_losses = pytest.importorskip("sentence_transformers.cross_encoder.losses")
from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder  # noqa: E402

nn = torch.nn
RTOL = 1e-5


class ScoreTable(STCrossEncoder):
    """sentence-transformers' CrossEncoder as far as its losses see it: ``preprocess`` maps each pair to its
    row of a Parameter of scores, ``forward`` returns those scores. Built without ST's model loading."""

    def __init__(self, pairs: list[tuple[str, str]], scores: np.ndarray, num_labels: int = 1) -> None:
        nn.Module.__init__(self)
        self.position = {pair: i for i, pair in enumerate(pairs)}
        self.table = nn.Parameter(torch.tensor(scores, dtype=torch.float32))
        self._num_labels = num_labels

    @property
    def num_labels(self) -> int:
        return self._num_labels

    @property
    def device(self):
        return torch.device("cpu")

    def preprocess(self, pairs, prompt=None, task=None):
        return {"rows": torch.tensor([self.position[tuple(pair)] for pair in pairs], dtype=torch.long)}

    def forward(self, features, **kwargs):
        scores = self.table[features["rows"]]
        return {"scores": scores[:, None] if scores.ndim == 1 else scores}


def crossjax_model(num_labels: int = 1) -> CrossEncoder:
    """A crossjax CrossEncoder the losses accept (they only read ``num_labels``), without weights."""
    model = CrossEncoder.__new__(CrossEncoder)
    model.__dict__["model"] = SimpleNamespace(num_labels=num_labels)  # past the setter, which takes crossjax models
    return model


# --- batches -----------------------------------------------------------------------------------------


def pair_rows(kind: str, seed: int) -> tuple[list[list], list]:
    rng = np.random.default_rng(seed)
    queries = [f"q{i % 5}" for i in range(8)]
    docs = [f"d{i}" for i in range(8)]
    docs[6], queries[6] = docs[1], queries[1]  # a repeated pair: scored once, used twice
    if kind == "binary":
        labels = [float(v) for v in rng.integers(0, 2, 8)]
        labels[3] = 0.3  # a soft target
    elif kind == "class":
        labels = [int(v) for v in rng.integers(0, 3, 8)]
    elif kind == "class_probabilities":  # a teacher's, as torch's cross-entropy takes them
        labels = rng.dirichlet(np.ones(3), 8).tolist()
    else:
        labels = [float(v) for v in rng.normal(size=8)]
    return [queries, docs], labels


def margin_rows(kind: str, seed: int) -> tuple[list[list], list]:
    rng = np.random.default_rng(seed)
    negatives = 1 if kind == "single" else 2
    columns = [[f"q{i}" for i in range(6)], [f"p{i}" for i in range(6)]]
    columns += [[f"n{j}_{i}" for i in range(6)] for j in range(negatives)]
    if kind == "single":
        labels = [float(v) for v in rng.normal(size=6)]
    elif kind == "scores":
        labels = rng.normal(size=(6, negatives + 1)).tolist()
    else:
        labels = rng.normal(size=(6, negatives)).tolist()
    return columns, labels


def triplet_rows(hard_negatives: int) -> tuple[list[list], None]:
    columns = [[f"a{i}" for i in range(5)], [f"p{i}" for i in range(5)]]
    columns += [[f"h{j}_{i}" for i in range(5)] for j in range(hard_negatives)]
    columns[1][3] = columns[1][0]  # two anchors share a positive text: still a negative for the other row
    return columns, None


def list_rows(seed: int, continuous: bool = False) -> tuple[list[list], list]:
    rng = np.random.default_rng(seed)
    sizes = [4, 1, 6, 3, 5, 2]
    queries = [f"q{i}" for i in range(len(sizes))]
    docs = [[f"d{i}_{j}" for j in range(n)] for i, n in enumerate(sizes)]
    if continuous:
        labels = [[float(v) for v in rng.normal(size=n)] for n in sizes]
    else:
        labels = [[float(v) for v in rng.integers(0, 4, n)] for n in sizes]
    labels[3] = [0.0, 0.0, 0.0]  # a query without any relevant document
    return [queries, docs], labels


def long_list_rows() -> tuple[list[list], list]:
    """A 130-document list: PListMLE's default weights reach 2^126 there (rescaled per row)."""
    rng = np.random.default_rng(8)
    sizes = [130, 3]
    docs = [[f"d{i}_{j}" for j in range(n)] for i, n in enumerate(sizes)]
    return [["q0", "q1"], docs], [rng.normal(size=n).tolist() for n in sizes]


BATCHES = {
    "binary": lambda: pair_rows("binary", 0),
    "class": lambda: pair_rows("class", 1),
    "class_probabilities": lambda: pair_rows("class_probabilities", 9),
    "score": lambda: pair_rows("score", 2),
    "margin": lambda: margin_rows("margins", 3),
    "margin_scores": lambda: margin_rows("scores", 4),
    "margin_single": lambda: margin_rows("single", 5),
    "anchor_positive": lambda: triplet_rows(0),
    "triplets": lambda: triplet_rows(2),
    "lists": lambda: list_rows(6),
    "lists_continuous": lambda: list_rows(7, continuous=True),
    "long_list": long_list_rows,
}


def st_labels(kind: str, labels):
    if labels is None:
        return None
    if kind.startswith("lists") or kind == "long_list":
        return [torch.tensor(row, dtype=torch.float32) for row in labels]
    if kind == "class":
        return torch.tensor(labels, dtype=torch.long)
    return torch.tensor(labels, dtype=torch.float32)


def st_columns(columns: list[list]) -> list[list]:
    return [list(column) for column in columns]  # ST's cached loss extends its input lists in place


# name: (crossjax class, crossjax kwargs, ST class, ST kwargs, batch, num_labels)
CASES = {
    "bce": (cj.BinaryCrossEntropyLoss, {}, st_losses.BinaryCrossEntropyLoss, {}, "binary", 1),
    "bce_pos_weight_sigmoid": (
        cj.BinaryCrossEntropyLoss,
        {"pos_weight": torch.tensor(3.0), "activation_fn": nn.Sigmoid()},
        st_losses.BinaryCrossEntropyLoss,
        {"pos_weight": torch.tensor(3.0), "activation_fn": nn.Sigmoid()},
        "binary",
        1,
    ),
    "cross_entropy": (cj.CrossEntropyLoss, {}, st_losses.CrossEntropyLoss, {}, "class", 3),
    "cross_entropy_weight_smoothing": (
        cj.CrossEntropyLoss,
        {"weight": np.array([1.0, 2.0, 0.5]), "label_smoothing": 0.1},
        st_losses.CrossEntropyLoss,
        {"weight": torch.tensor([1.0, 2.0, 0.5]), "label_smoothing": 0.1},
        "class",
        3,
    ),
    # class probabilities as targets: the loss called directly (sentence-transformers' collator hands its
    # trainer list labels as Python lists, which its CrossEntropyLoss cannot take)
    "cross_entropy_probabilities": (
        cj.CrossEntropyLoss,
        {"weight": np.array([1.0, 2.0, 0.5]), "label_smoothing": 0.1},
        st_losses.CrossEntropyLoss,
        {"weight": torch.tensor([1.0, 2.0, 0.5]), "label_smoothing": 0.1},
        "class_probabilities",
        3,
    ),
    "mse": (cj.MSELoss, {}, st_losses.MSELoss, {}, "score", 1),
    "mse_tanh": (cj.MSELoss, {"activation_fn": nn.Tanh()}, st_losses.MSELoss, {"activation_fn": nn.Tanh()}, "score", 1),
    "margin_mse": (cj.MarginMSELoss, {}, st_losses.MarginMSELoss, {}, "margin", 1),
    "margin_mse_scores": (cj.MarginMSELoss, {}, st_losses.MarginMSELoss, {}, "margin_scores", 1),
    "margin_mse_single": (cj.MarginMSELoss, {}, st_losses.MarginMSELoss, {}, "margin_single", 1),
    "mnrl_all": (
        cj.MultipleNegativesRankingLoss,
        {"num_negatives": None},
        st_losses.MultipleNegativesRankingLoss,
        {"num_negatives": None},
        "triplets",
        1,
    ),
    "mnrl_pairs_tanh": (
        cj.MultipleNegativesRankingLoss,
        {"num_negatives": None, "scale": 20.0, "activation_fn": nn.Tanh()},
        st_losses.MultipleNegativesRankingLoss,
        {"num_negatives": None, "scale": 20.0, "activation_fn": nn.Tanh()},
        "anchor_positive",
        1,
    ),
    "mnrl_no_activation": (
        cj.MultipleNegativesRankingLoss,
        {"num_negatives": 50, "activation_fn": None},
        st_losses.MultipleNegativesRankingLoss,
        {"num_negatives": 50, "activation_fn": None},
        "triplets",
        1,
    ),
    "cached_mnrl": (
        cj.CachedMultipleNegativesRankingLoss,
        {"num_negatives": None, "mini_batch_size": 4},
        st_losses.CachedMultipleNegativesRankingLoss,
        {"num_negatives": None, "mini_batch_size": 4},
        "triplets",
        1,
    ),
    "listnet": (cj.ListNetLoss, {}, st_losses.ListNetLoss, {}, "lists_continuous", 1),
    "listmle": (cj.ListMLELoss, {}, st_losses.ListMLELoss, {}, "lists", 1),
    "listmle_by_label": (
        cj.ListMLELoss,
        {"respect_input_order": False},
        st_losses.ListMLELoss,
        {"respect_input_order": False},
        "lists",  # tied labels keep their input order, as torch's sort does up to 16 items (see the README)
        1,
    ),
    "plistmle": (cj.PListMLELoss, {}, st_losses.PListMLELoss, {}, "lists", 1),
    "plistmle_long_list": (cj.PListMLELoss, {}, st_losses.PListMLELoss, {}, "long_list", 1),
    "plistmle_custom_discount": (  # a DCG-style discount, written once with jax.numpy and once with torch
        cj.PListMLELoss,
        {"lambda_weight": cj.PListMLELambdaWeight(lambda m: m / jnp.log2(jnp.arange(2.0, m.shape[1] + 2)))},
        st_losses.PListMLELoss,
        {"lambda_weight": st_losses.PListMLELambdaWeight(lambda m: m / torch.log2(torch.arange(2.0, m.shape[1] + 2)))},
        "lists",
        1,
    ),
    "plistmle_by_label_sigmoid": (
        cj.PListMLELoss,
        {"respect_input_order": False, "activation_fn": nn.Sigmoid()},
        st_losses.PListMLELoss,
        {"respect_input_order": False, "activation_fn": nn.Sigmoid()},
        "lists_continuous",
        1,
    ),
    "lambda_ndcg2pp": (cj.LambdaLoss, {}, st_losses.LambdaLoss, {}, "lists", 1),
    "lambda_ndcg2pp_mu_k": (
        cj.LambdaLoss,
        {"weighting_scheme": cj.NDCGLoss2PPScheme(mu=3.0), "k": 2},
        st_losses.LambdaLoss,
        {"weighting_scheme": st_losses.NDCGLoss2PPScheme(mu=3.0), "k": 2},
        "lists",
        1,
    ),
    "lambda_no_weighting": (
        cj.LambdaLoss,
        {"weighting_scheme": None, "reduction_log": "natural"},
        st_losses.LambdaLoss,
        {"weighting_scheme": None, "reduction_log": "natural"},
        "lists",
        1,
    ),
    "lambda_ndcg1": (
        cj.LambdaLoss,
        {"weighting_scheme": st_losses.NDCGLoss1Scheme()},  # the torch scheme is mapped to crossjax's
        st_losses.LambdaLoss,
        {"weighting_scheme": st_losses.NDCGLoss1Scheme()},
        "lists",
        1,
    ),
    "lambda_ndcg2_sigma": (
        cj.LambdaLoss,
        {"weighting_scheme": cj.NDCGLoss2Scheme(), "sigma": 0.5},
        st_losses.LambdaLoss,
        {"weighting_scheme": st_losses.NDCGLoss2Scheme(), "sigma": 0.5},
        "lists",
        1,
    ),
    "lambda_lambdarank_k3": (
        cj.LambdaLoss,
        {"weighting_scheme": cj.LambdaRankScheme(), "k": 3},
        st_losses.LambdaLoss,
        {"weighting_scheme": st_losses.LambdaRankScheme(), "k": 3},
        "lists_continuous",
        1,
    ),
    "ranknet": (cj.RankNetLoss, {}, st_losses.RankNetLoss, {}, "lists", 1),
    "adrmse": (cj.ADRMSELoss, {"alpha": 2.0}, st_losses.ADRMSELoss, {"alpha": 2.0}, "lists", 1),
}


def build(name: str, seed: int = 0):
    """(crossjax loss, ST loss factory, columns, labels, layout, pair scores) for one case."""
    ours_cls, ours_kwargs, st_cls, st_kwargs, batch, num_labels = CASES[name]
    columns, labels = BATCHES[batch]()
    loss = ours_cls(crossjax_model(num_labels), **ours_kwargs)
    loss.validate(columns, labels)
    layout = loss.layout(columns, labels, np.random.default_rng(seed))
    shape = (len(layout.pairs),) if num_labels == 1 else (len(layout.pairs), num_labels)
    scores = (np.random.default_rng(seed + 100).normal(size=shape) * 2.0).astype(np.float32)
    return loss, (st_cls, st_kwargs, batch, num_labels), columns, labels, layout, scores


def padded_inputs(layout, extra_rows: int, extra_slots: int):
    """(index, labels, query_mask) with padding rows that repeat real rows under query_mask False and padding
    slots (index -1, labels 0)."""
    q, d = layout.index.shape
    index = np.pad(layout.index, ((0, 0), (0, extra_slots)), constant_values=-1)
    index = np.concatenate([index, index[:extra_rows]], axis=0)
    k = layout.labels.shape[1]
    labels = np.pad(layout.labels, ((0, 0), (0, extra_slots if k == d else 0)))
    labels = np.concatenate([labels, labels[:extra_rows]], axis=0)
    return index, labels, np.arange(index.shape[0]) < q


def ours_values_and_grads(loss, layout, scores, paddings=((0, 0), (2, 3))):
    """crossjax's loss and d loss / d pair scores, once per (extra rows, extra slots) padding, in one compile;
    padding slots get NaN logits."""
    batches = [padded_inputs(layout, rows, slots) for rows, slots in paddings]

    def value(pair_scores, index, labels, query_mask):
        table = pair_scores if pair_scores.ndim == 2 else pair_scores[:, None]
        doc_mask = index >= 0
        gathered = jnp.where(doc_mask[..., None], table[np.maximum(index, 0)], jnp.nan)
        return loss.value(gathered, jnp.asarray(doc_mask), jnp.asarray(labels), jnp.asarray(query_mask))

    @jax.jit
    def all_paddings(pair_scores):
        return [jax.value_and_grad(value)(pair_scores, *batch) for batch in batches]

    return [(float(v), np.asarray(g)) for v, g in all_paddings(jnp.asarray(scores))]


def st_value_and_grad(st_spec, columns, labels, layout, scores):
    st_cls, st_kwargs, batch, num_labels = st_spec
    model = ScoreTable(layout.pairs, scores, num_labels)
    st_loss = st_cls(model, **st_kwargs)
    value = st_loss(st_columns(columns), st_labels(batch, labels))
    value.backward()
    return value.item(), model.table.grad.numpy(), st_loss


@pytest.mark.parametrize("name", list(CASES))
def test_loss_and_gradient_equal_sentence_transformers(name: str) -> None:
    loss, st_spec, columns, labels, layout, scores = build(name)
    theirs, their_grad, st_loss = st_value_and_grad(st_spec, columns, labels, layout, scores)
    (ours, our_grad), (padded, padded_grad) = ours_values_and_grads(loss, layout, scores)
    assert abs(their_grad).max() > 1e-4, "a vanishing gradient would make the comparison vacuous"
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)
    np.testing.assert_allclose(our_grad, their_grad, rtol=RTOL, atol=RTOL * abs(their_grad).max())
    # Padding rows (real pairs, query_mask False) and NaN padding slots change neither value nor gradient.
    np.testing.assert_allclose(padded, ours, rtol=1e-6)
    np.testing.assert_allclose(padded_grad, our_grad, rtol=1e-6, atol=1e-7 * abs(our_grad).max())
    # Model-card metadata as sentence-transformers writes it.
    if hasattr(st_loss, "get_config_dict"):
        assert loss.get_config_dict() == st_loss.get_config_dict()
    assert getattr(loss, "citation", None) == getattr(st_loss, "citation", None)


@pytest.mark.parametrize("name", ["cross_entropy_weight_smoothing", "margin_mse", "mnrl_all", "plistmle",
                                  "lambda_ndcg2pp_mu_k"])
def test_parts_of_a_row_split_add_up_to_the_batch_loss(name: str) -> None:
    loss, _, _, _, layout, scores = build(name)
    q = layout.index.shape[0]
    doc_mask = layout.index >= 0

    def total(pair_scores, row_groups):
        table = pair_scores if pair_scores.ndim == 2 else pair_scores[:, None]
        numerator = denominator = 0.0
        for rows in row_groups:
            gathered = jnp.where(doc_mask[rows][..., None], table[np.maximum(layout.index[rows], 0)], 0.0)
            num, den = loss.parts(gathered, doc_mask[rows], layout.labels[rows], np.ones(len(rows), bool))
            numerator, denominator = numerator + num, denominator + den
        return ratio(numerator, denominator)

    @jax.jit
    def whole_and_split(pair_scores):
        whole = jax.value_and_grad(total)(pair_scores, [np.arange(q)])
        return whole, jax.value_and_grad(total)(pair_scores, [np.arange(0, 2), np.arange(2, q)])

    (whole, whole_grad), (split, split_grad) = whole_and_split(jnp.asarray(scores))
    np.testing.assert_allclose(float(split), float(whole), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(split_grad), np.asarray(whole_grad), rtol=1e-5, atol=1e-7)


def test_cached_mnrl_equals_uncached_and_is_the_same_layout() -> None:
    columns, _ = triplet_rows(1)
    plain = cj.MultipleNegativesRankingLoss(crossjax_model(), num_negatives=3)
    cached = cj.CachedMultipleNegativesRankingLoss(crossjax_model(), num_negatives=3, mini_batch_size=2)
    a, b = plain.layout(columns, None, np.random.default_rng(5)), cached.layout(columns, None, np.random.default_rng(5))
    assert a.pairs == b.pairs and np.array_equal(a.index, b.index)
    scores = np.random.default_rng(0).normal(size=len(a.pairs)).astype(np.float32)
    [(plain_value, plain_grad)] = ours_values_and_grads(plain, a, scores, [(0, 0)])
    [(cached_value, cached_grad)] = ours_values_and_grads(cached, b, scores, [(0, 0)])
    assert plain_value == cached_value and np.array_equal(plain_grad, cached_grad)


def test_in_batch_negatives_are_sampled_reproducibly_from_other_rows_only() -> None:
    columns, _ = triplet_rows(1)  # 5 rows, candidates: positives + one hard negative column
    columns[1][3] = "p3"
    loss = cj.MultipleNegativesRankingLoss(crossjax_model(), num_negatives=3)
    first = loss.layout(columns, None, np.random.default_rng(11))
    again = loss.layout(columns, None, np.random.default_rng(11))
    other = loss.layout(columns, None, np.random.default_rng(12))
    assert first.pairs == again.pairs and np.array_equal(first.index, again.index)
    assert first.pairs != other.pairs
    assert first.index.shape == (5, 1 + 3 + 1) == (5, loss.width(columns, None)[0])
    for q, anchor in enumerate(columns[0]):
        docs = [first.pairs[i] for i in first.index[q]]
        assert all(query == anchor for query, _ in docs)
        assert docs[0][1] == columns[1][q] and docs[-1][1] == columns[2][q]
        sampled = [doc for _, doc in docs[1:-1]]
        own = {columns[1][q], columns[2][q]}
        others = {column[r] for column in columns[1:] for r in range(5) if r != q}
        assert len(set(sampled)) == 3 and set(sampled) <= others and not set(sampled) & own
    # Over many draws every other row's candidate is drawn, and only those.
    drawn = set()
    rng = np.random.default_rng(0)
    for _ in range(50):
        drawn |= set(loss.negative_indices(5, 2, rng)[0].tolist())
    assert drawn == {f for f in range(10) if f % 5 != 0}
    # With fewer candidates than num_negatives every one is used, in sentence-transformers' order.
    assert loss.width(columns, None, rows_per_step=2) == (1 + 2 + 1, 0)
    assert cj.MultipleNegativesRankingLoss(crossjax_model(), num_negatives=None).width(columns, None) == (10, 0)


def _error(loss, columns, labels, row_offset: int = 0) -> str:
    with pytest.raises(ValueError) as info:
        loss.validate(columns, labels, row_offset=row_offset)
    return str(info.value)


def test_bad_input_is_rejected_naming_the_row() -> None:
    lists = [["q0", "q1", "q2"], [["a", "b"], ["c"], ["d", "e"]]]
    for cls in (cj.ListNetLoss, cj.ListMLELoss, cj.PListMLELoss, cj.LambdaLoss, cj.RankNetLoss, cj.ADRMSELoss):
        loss = cls(crossjax_model())
        loss.validate(lists, [[1, 0], [1], [0.5, 2]])
        assert "row 102" in _error(loss, lists, [[1, 0], [1], [0.5]], row_offset=100)  # labels != docs
        assert "row 1" in _error(loss, [lists[0], [["a"], [], ["b"]]], [[1], [], [0]])  # empty list
        assert "row 2" in _error(loss, lists, [[1, 0], [1], [0, float("nan")]])
        assert "row 0" in _error(loss, lists, [1, 0, 1])  # one value per row
        assert "two inputs" in _error(loss, [*lists, lists[0]], [[1, 0], [1], [0, 1]])
        with pytest.raises(ValueError, match="1 output label, but got a model with 3"):
            cls(crossjax_model(3))
    pairs = [["q0", "q1", "q2"], ["a", "b", "c"]]
    bce = cj.BinaryCrossEntropyLoss(crossjax_model())
    assert "row 7" in _error(bce, pairs, [1, 0, 1.5], row_offset=5)
    assert "two non-label columns" in _error(bce, [*pairs, pairs[1]], [1, 0, 1])
    assert "row 1" in _error(bce, [pairs[0], ["a", None, "c"]], [1, 0, 1])
    ce = cj.CrossEntropyLoss(crossjax_model(3))
    assert "row 2" in _error(ce, pairs, [0, 2, 3]) and "[0, 3)" in _error(ce, pairs, [0, 2, 3])
    assert "row 0" in _error(ce, pairs, [0.5, 1, 2])
    assert "row 1" in _error(cj.MSELoss(crossjax_model()), pairs, [0.1, float("inf"), 2])
    margin = cj.MarginMSELoss(crossjax_model())
    triples = [*pairs, ["x", "y", "z"]]
    margin.validate(triples, [0.5, [1.0], [3.0, 1.0]])
    assert "row 2" in _error(margin, triples, [0.5, 1.0, [1.0, 2.0, 3.0]])
    assert "at least 3" in _error(margin, pairs, [1, 2, 3])
    with pytest.raises(ValueError, match="1 output label"):
        cj.MultipleNegativesRankingLoss(crossjax_model(2))
    with pytest.raises(ValueError, match="expects a model of type CrossEncoder"):
        cj.BinaryCrossEntropyLoss(SimpleNamespace(num_labels=1))
    with pytest.raises(ValueError, match="Softmax"):
        cj.ListNetLoss(crossjax_model(), activation_fn=nn.Softmax(dim=-1))
    # torch refuses this smoothing at its first forward pass; crossjax at construction
    for smoothing in (1.5, -0.2, float("nan")):
        with pytest.raises(ValueError, match="label_smoothing must be between 0.0 and 1.0"):
            cj.CrossEntropyLoss(crossjax_model(3), label_smoothing=smoothing)
    # numpy integers, as sentence-transformers takes them
    assert cj.LambdaLoss(crossjax_model(), k=np.int64(2)).k == 2
    assert cj.MultipleNegativesRankingLoss(crossjax_model(), num_negatives=np.int32(3)).num_negatives == 3
    assert cj.CachedMultipleNegativesRankingLoss(crossjax_model(), mini_batch_size=np.int64(4)).mini_batch_size == 4
    assert cj.ListNetLoss(crossjax_model(), mini_batch_size=np.int64(8)).mini_batch_size == 8


PAIRS = [
    (cj.BinaryCrossEntropyLoss, st_losses.BinaryCrossEntropyLoss),
    (cj.CrossEntropyLoss, st_losses.CrossEntropyLoss),
    (cj.MSELoss, st_losses.MSELoss),
    (cj.MarginMSELoss, st_losses.MarginMSELoss),
    (cj.MultipleNegativesRankingLoss, st_losses.MultipleNegativesRankingLoss),
    (cj.CachedMultipleNegativesRankingLoss, st_losses.CachedMultipleNegativesRankingLoss),
    (cj.RankNetLoss, st_losses.RankNetLoss),
    (cj.ListNetLoss, st_losses.ListNetLoss),
    (cj.ListMLELoss, st_losses.ListMLELoss),
    (cj.PListMLELoss, st_losses.PListMLELoss),
    (cj.PListMLELambdaWeight, st_losses.PListMLELambdaWeight),
    (cj.LambdaLoss, st_losses.LambdaLoss),
    (cj.NDCGLoss2PPScheme, st_losses.NDCGLoss2PPScheme),
    (cj.ADRMSELoss, st_losses.ADRMSELoss),
]


@pytest.mark.parametrize(("ours", "theirs"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_arguments_and_defaults_match_sentence_transformers(ours, theirs) -> None:
    our_params = inspect.signature(ours.__init__).parameters
    their_params = inspect.signature(theirs.__init__).parameters
    assert list(our_params) == list(their_params)
    for name, theirs_param in their_params.items():
        default, our_default = theirs_param.default, our_params[name].default
        if name == "activation_fn":
            assert resolve_activation(default) is our_default
        elif name in ("weighting_scheme", "lambda_weight"):
            assert type(our_default).__name__ == type(default).__name__
            assert getattr(our_default, "mu", None) == getattr(default, "mu", None)
        else:
            assert our_default == default, name
    assert ours.__name__ in st_losses.__all__ and ours.__name__ in cj.__all__


def test_every_sentence_transformers_cross_encoder_loss_exists() -> None:
    for name in st_losses.__all__:
        assert name in cj.__all__, name


def test_equal_losses_share_one_compiled_step():
    """The train-step cache keys a list loss by its class and settings, not by the model object it was built
    for: a second trainer with an equal loss reuses the compiled step; any other setting is another program."""
    from crossjax.training import callable_key

    def key(loss):
        found = callable_key(loss)
        assert found is not None, type(loss).__name__
        return found

    first, second = crossjax_model(), crossjax_model()
    assert key(cj.LambdaLoss(first)) == key(cj.LambdaLoss(second))
    assert key(cj.LambdaLoss(first)) != key(cj.LambdaLoss(first, k=5))
    assert key(cj.LambdaLoss(first)) != key(cj.LambdaLoss(first, weighting_scheme=cj.NDCGLoss1Scheme()))
    assert key(cj.LambdaLoss(first)) != key(cj.RankNetLoss(first))
    assert key(cj.MultipleNegativesRankingLoss(first)) == key(cj.MultipleNegativesRankingLoss(second))
    assert key(cj.MultipleNegativesRankingLoss(first)) != key(cj.MultipleNegativesRankingLoss(first, scale=5.0))
    assert key(cj.PListMLELoss(first)) == key(cj.PListMLELoss(second))
    assert key(cj.CrossEntropyLoss(crossjax_model(3), weight=[1.0, 2.0, 3.0])) == key(
        cj.CrossEntropyLoss(crossjax_model(3), weight=[1.0, 2.0, 3.0])
    )
    assert key(cj.CrossEntropyLoss(crossjax_model(3), weight=[1.0, 2.0, 3.0])) != key(
        cj.CrossEntropyLoss(crossjax_model(3), weight=[1.0, 2.0, 4.0])
    )
    assert key(cj.BinaryCrossEntropyLoss(first)) != key(cj.BinaryCrossEntropyLoss(first, activation_fn="sigmoid"))


def test_a_torch_rank_discount_is_refused_where_it_is_written() -> None:
    """A ported script's torch discount fails when the weight is made, naming the argument, not inside the
    first compiled step; a JAX discount written for one list length is taken, and a failing or misshapen one
    is named when the step first runs it."""
    with pytest.raises(TypeError, match=r"rank_discount_fn=.*must be a JAX function.*but it calls torch"):
        cj.PListMLELambdaWeight(rank_discount_fn=lambda ranks: 1.0 / torch.log1p(ranks))
    discount = 1.0 / jnp.log2(jnp.arange(2.0, 6.0))  # lists of exactly 4 documents
    weight = cj.PListMLELambdaWeight(rank_discount_fn=lambda mask: mask * discount)
    np.testing.assert_allclose(weight(jnp.ones((2, 4), bool)), np.tile(discount, (2, 1)))
    with pytest.raises(TypeError, match=r"must be a JAX function.*shape \(2, 5\) it raised ValueError"):
        jax.jit(weight)(jnp.ones((2, 5), bool))
    with pytest.raises(ValueError, match="one weight per document"):
        cj.PListMLELambdaWeight(rank_discount_fn=lambda mask: mask.sum(axis=1))(jnp.ones((2, 3), bool))
