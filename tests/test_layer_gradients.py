"""What a scanned encoder's training step computes around its matmuls: GELU's derivative against PyTorch's
autograd, and no attention-sized array built outside the layer loop (the mask, the dropout counter and the
select's zeros were: benchmarks/RESULTS.md, "Session 12")."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crossjax.models.layers import Encoder, gelu

ROWS, TOKENS, HIDDEN, HEADS, LAYERS = 3, 24, 32, 4, 2


def _gelu_inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    edges = np.array([-12.0, -8.0, -5.0, -0.7517916, -1e-3, 0.0, 1e-3, 3.0, 9.0], np.float32)
    return np.concatenate([edges, (rng.standard_normal(4096) * 3).astype(np.float32)])


def test_gelu_forward_is_jax_exact_gelu_and_its_gradient_is_pytorchs():
    torch = pytest.importorskip("torch")
    x = _gelu_inputs()
    weights = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(gelu(jnp.asarray(x))), np.asarray(jax.nn.gelu(x, approximate=False)))

    grad = np.asarray(jax.jit(jax.grad(lambda t: (gelu(t) * weights).sum()))(jnp.asarray(x)))
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (torch.nn.functional.gelu(xt) * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=0, atol=2e-6)
    # where the derivative vanishes (x ~ -0.75) and far in both tails
    assert abs(grad[3]) < 1e-6 and abs(grad[0]) < 1e-6 and grad[8] == pytest.approx(weights[8], rel=1e-6)


def test_gelu_gradient_keeps_a_bfloat16_input_in_bfloat16():
    torch = pytest.importorskip("torch")
    x = jnp.asarray(_gelu_inputs()[:64], jnp.bfloat16)
    grad = jax.grad(lambda t: gelu(t).astype(jnp.float32).sum())(x)
    assert grad.dtype == jnp.bfloat16
    xt = torch.tensor(np.asarray(x, np.float32), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.gelu(xt).sum().backward()
    np.testing.assert_allclose(np.asarray(grad, np.float32), xt.grad.numpy(), rtol=1e-2, atol=1e-2)


def _entry_computation(hlo: str) -> str:
    """The text of the ENTRY computation: what runs once a call, outside every while loop."""
    start = hlo.index("\nENTRY ")
    return hlo[start : hlo.index("\n}", start)]


def test_scanned_encoder_gradient_builds_no_attention_sized_array_outside_the_layer_loop():
    """Every (rows, heads, T, T) array belongs inside the loop over layers. Loop-invariant ones (the packed
    rows' block-diagonal mask broadcast over heads, the dropout hash's element index, zeros for a select's
    gradient) were built once outside it: 25-31 MB each at 14 x 192 tokens, written every step and read by
    every layer forward and backward."""
    encoder = Encoder(
        LAYERS,
        rngs=nnx.Rngs(params=0, dropout=1),
        hidden=HIDDEN,
        heads=HEADS,
        intermediate=4 * HIDDEN,
        act="gelu",
        eps=1e-12,
        hidden_dropout=0.1,
        attention_dropout=0.1,
        std=0.02,
        dtype=jnp.float32,
    )
    encoder.train()
    graphdef, state, rest = nnx.split(encoder, nnx.Param, ...)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((ROWS, TOKENS, HIDDEN)).astype(np.float32))
    segments = np.repeat(np.arange(4), TOKENS // 4)[None].repeat(ROWS, 0)  # four pairs a row
    mask = jnp.asarray(segments[:, :, None] == segments[:, None, :])  # block-diagonal (rows, T, T)

    def loss(st, inputs, other):
        return nnx.merge(graphdef, st, other, copy=True)(inputs, mask).sum()

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
    grads = grad_fn(state, x, rest)
    assert all(bool(jnp.isfinite(g).all()) for g in jax.tree.leaves(grads))
    entry = _entry_computation(grad_fn.lower(state, x, rest).compile().as_text())
    attention_sized = re.compile(rf"\b[a-z]+\d*\[{ROWS},{HEADS},{TOKENS},{TOKENS}\]")
    assert "while(" in entry  # the layers are a loop
    assert not attention_sized.findall(entry), [line for line in entry.splitlines() if attention_sized.search(line)]
