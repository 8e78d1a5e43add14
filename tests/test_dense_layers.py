"""The model's Linear layers (``crossjax.models.layers.Linear``) apply ``nnx.Linear`` to a 2-D view of a packed
batch. Checked against numpy (outputs and gradients, hand-computed) and, in XLA:CPU's compiled gradient
program, by the absence of the transposed copy of the output gradient that a 4-D input used to cost."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax.models.layers import dense

GROUPS, ROWS, TOKENS, IN, OUT = 1, 6, 40, 32, 48


def _loss_and_grads(layer, x: np.ndarray, weights: np.ndarray):
    graphdef, state = nnx.split(layer)

    def loss(st, inputs):
        return (nnx.merge(graphdef, st)(inputs) * weights).sum()

    return jax.value_and_grad(loss, argnums=(0, 1)), state


def test_linear_on_a_packed_batch_equals_the_hand_computed_matmul_and_gradients():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((GROUPS, ROWS, TOKENS, IN)).astype(np.float32)
    weights = rng.standard_normal((GROUPS, ROWS, TOKENS, OUT)).astype(np.float32)
    layer = dense(IN, OUT, std=0.5, dtype=jnp.float32, rngs=nnx.Rngs(0))
    layer.bias[...] = jnp.asarray(rng.standard_normal(OUT).astype(np.float32))
    kernel, bias = np.asarray(layer.kernel[...], np.float64), np.asarray(layer.bias[...], np.float64)

    out = np.asarray(layer(jnp.asarray(x)))
    assert out.shape == (GROUPS, ROWS, TOKENS, OUT)
    np.testing.assert_allclose(out, x.astype(np.float64) @ kernel + bias, rtol=1e-5, atol=1e-5)

    grad_fn, state = _loss_and_grads(layer, x, weights)
    _, (grads, grad_x) = jax.jit(grad_fn)(state, jnp.asarray(x))
    flat_x, flat_w = x.reshape(-1, IN).astype(np.float64), weights.reshape(-1, OUT).astype(np.float64)
    np.testing.assert_allclose(np.asarray(grads["kernel"][...]), flat_x.T @ flat_w, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grads["bias"][...]), flat_w.sum(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(grad_x), weights.astype(np.float64) @ kernel.T, rtol=1e-4, atol=1e-4)


def test_weight_gradient_of_a_packed_batch_needs_no_transposed_copy():
    """A 4-D input made XLA:CPU write the (tokens x out) output gradient out as (out x tokens) before the
    weight-gradient dot: 169 ms of a 3.4 s MiniLM step of 61 x 104 tokens (benchmarks/RESULTS.md, Session 11)."""
    x = np.ones((GROUPS, ROWS, TOKENS, IN), np.float32)
    weights = np.ones((GROUPS, ROWS, TOKENS, OUT), np.float32)

    def compiled_text(layer) -> str:
        grad_fn, state = _loss_and_grads(layer, x, weights)
        return jax.jit(grad_fn).lower(state, jnp.asarray(x)).compile().as_text()

    transposed = re.compile(rf"f32\[{OUT},{GROUPS * ROWS * TOKENS}\]")
    plain = nnx.Linear(IN, OUT, rngs=nnx.Rngs(0))  # the layout this layer replaces: the copy is there
    if jax.default_backend() == "cpu":
        assert transposed.search(compiled_text(plain))
    assert not transposed.search(compiled_text(dense(IN, OUT, std=0.5, dtype=jnp.float32, rngs=nnx.Rngs(0))))
