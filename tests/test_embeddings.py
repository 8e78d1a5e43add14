"""Embedding tables with few rows (token types, positions) train without a scatter-add: their gradient is a
one-hot matmul (``crossjax.models.layers.Embed``). Checked against a hand-computed gradient (``np.add.at``:
each row gets the sum of its tokens' output gradients) and, in the model, by the scatters left in its
gradient's program."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from crossjax.models.auto import FlaxAutoModelForSequenceClassification
from crossjax.models.layers import SMALL_TABLE_ROWS, embedding


def _gradient_of_weighted_sum(emb, ids: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lookup's output, and the table's gradient of sum(output * weights)."""
    graphdef, state = nnx.split(emb)

    def loss(st):
        out = nnx.merge(graphdef, st)(jnp.asarray(ids)).astype(jnp.float32)
        return (out * weights).sum()

    grads = jax.grad(loss)(state)
    return np.asarray(emb(jnp.asarray(ids)).astype(jnp.float32)), np.asarray(grads["embedding"][...])


@pytest.mark.parametrize("rows", [2, 512, 30522], ids=["types", "positions", "words"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_lookup_and_gradient_equal_the_hand_computed_ones(rows, dtype):
    rng = np.random.default_rng(rows)
    # Heavy duplication, as in a batch: most tokens hit the first rows (type 0, early positions, [CLS]/[SEP]).
    ids = np.minimum(rng.geometric(0.05, size=(6, 160)) - 1, rows - 1).astype(np.int32)
    weights = rng.standard_normal((6, 160, 32)).astype(np.float32)
    emb = embedding(rows, 32, std=0.02, dtype=dtype, rngs=nnx.Rngs(0))
    table = np.asarray(emb.embedding[...])

    out, grad = _gradient_of_weighted_sum(emb, ids, weights)

    expected_out = table.astype(dtype).astype(np.float32)[ids]  # the gather, in the compute dtype
    np.testing.assert_array_equal(out, expected_out)
    g = weights.astype(dtype).astype(np.float64)  # the output gradient as the compute dtype holds it
    expected = np.zeros((rows, 32))
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 32))
    # float32: sums of up to ~1,000 terms in float32; bfloat16: the small-table path sums in float32 and
    # rounds once to bfloat16 (a relative step of 2^-8), the scatter of the word table adds in bfloat16.
    tol = 1e-5 if dtype == jnp.float32 else (8e-3 if rows <= SMALL_TABLE_ROWS else 6e-2)
    scale = np.abs(expected).max()
    assert np.abs(grad - expected).max() <= tol * scale, (rows, dtype, np.abs(grad - expected).max(), scale)
    assert np.all(grad[ids.max() + 1 :] == 0.0)  # rows no token used get exactly nothing


def _scatter_targets(jaxpr) -> list[tuple[int, ...]]:
    shapes = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name.startswith("scatter"):
            shapes.append(tuple(eqn.outvars[0].aval.shape))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            shapes.extend(_scatter_targets(sub))
    return shapes


def test_model_gradient_scatters_only_into_the_word_table():
    config = transformers.BertConfig(
        vocab_size=1500, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, type_vocab_size=2, num_labels=1,
    )  # fmt: skip
    model = FlaxAutoModelForSequenceClassification.from_config(config, seed=0)
    model.eval()  # no dropout: the gradient's program is traced once, without RNG state to update
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(5, 1500, (3, 40)), jnp.int32)
    types = jnp.asarray(np.repeat([[0] * 20 + [1] * 20], 3, axis=0), jnp.int32)

    def loss(p, r):
        return nnx.merge(graphdef, p, r, copy=True)(ids, jnp.ones_like(ids), types).sum()

    targets = _scatter_targets(jax.make_jaxpr(jax.grad(loss))(params, rest).jaxpr)
    assert (1500, 32) in targets  # the word table keeps its scatter-add (one-hot would cost 1500 x 32 a token)
    small = [shape for shape in targets if shape in ((512, 32), (2, 32))]  # the position and token-type tables
    assert small == [], f"scatter-adds into small tables: {small}"
