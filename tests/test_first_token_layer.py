"""The last layer computed for the pairs' first tokens only (what the heads read) against the whole layer:
the same logits and gradients, the same dropout streams afterwards, and the rule that picks it."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_models_parity import FAMILIES
from test_packing import tokenized_pairs

from crossjax import packing, training
from crossjax.models import FlaxAutoModelForSequenceClassification, base

FIRST_TOKEN_FAMILIES = ["bert", "distilbert", "electra", "roberta", "xlm-roberta"]


def tiny_model(family: str, scan_layers: bool, dropout: float, layers: int = 3):
    """The parity tests' tiny config of ``family`` with ``layers`` layers and the given dropout."""
    config = FAMILIES[family](2)
    config.num_hidden_layers = layers  # DistilBERT's n_layers, through its attribute map
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(config, name):
            setattr(config, name, dropout)
    return FlaxAutoModelForSequenceClassification.from_config(config, seed=3, scan_layers=scan_layers)


def packed_batch(model, groups: int = 2, pairs: int = 22) -> dict:
    rng = np.random.default_rng(4)
    lengths = rng.integers(3, 30, size=pairs)
    tokenized = tokenized_pairs(lengths, vocab=model.config.vocab_size, seed=5)
    if not model.uses_token_types or getattr(model.config, "type_vocab_size", 2) < 2:
        tokenized.flat_token_type_ids[:] = 0
    indices = np.arange(pairs)
    plan = packing.plan_packing([indices], lengths, groups, -(-pairs // groups), hidden_size=32, max_shapes=1, rows=3)
    batch = packing.pack(tokenized, indices, None, plan, pad_token_id=model.config.pad_token_id or 0)
    assert (batch.segment_ids.max(axis=-1) >= 2).any()  # rows really hold several pairs
    return batch.device_fields()


def logits_and_grads(model, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    weights = jnp.asarray(np.random.default_rng(6).standard_normal((batch["pair_row"].size, 2)), jnp.float32)

    def loss(params):
        logits = training.packed_logits(nnx.merge(graphdef, params, rest, copy=True), batch)
        return (logits * weights).sum(), logits

    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return np.asarray(logits), grads


@pytest.mark.parametrize(
    "scan_layers, family, layers",
    [(True, family, 3) for family in FIRST_TOKEN_FAMILIES]
    + [(True, "bert", 1), (False, "bert", 3), (False, "bert", 1)],
    ids=lambda v: {True: "scanned", False: "unrolled"}.get(v, str(v)) if isinstance(v, bool) else str(v),
)
def test_first_token_last_layer_gives_the_whole_layers_logits_and_gradients(family, layers, scan_layers, monkeypatch):
    """Three layers of each family, and BERT with one (its last layer is its only one: nothing is scanned). The
    unrolled stack splits off its last layer the same way for every family (``layers[-1]``), so BERT stands for
    them there; the families differ in their embeddings and heads, which the scanned cases cover."""
    model = tiny_model(family, scan_layers, dropout=0.0, layers=layers)
    assert type(model).last_layer_for_first_tokens
    batch = packed_batch(model)
    pairs, rows, length = batch["pair_row"].shape[1], *batch["input_ids"].shape[1:]
    assert base.first_tokens_pay(model.encoder, pairs, rows, length)
    logits, grads = logits_and_grads(model, batch)
    monkeypatch.setattr(base, "first_tokens_pay", lambda *args: False)
    whole_logits, whole_grads = logits_and_grads(model, batch)
    np.testing.assert_allclose(logits, whole_logits, rtol=0, atol=1e-5)
    for (path, got), want in zip(jax.tree.leaves_with_path(grads), jax.tree.leaves(whole_grads), strict=True):
        scale = max(float(np.abs(want).max()), 1e-6)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=2e-5 * scale, err_msg=str(path))
    # the last layer's feed-forward block does get a gradient (it would be zero if the layer were skipped)
    stacked = grads["encoder"]["layers"]
    last_ffn = stacked["ffn_in"]["kernel"][...][-1] if scan_layers else stacked[layers - 1]["ffn_in"]["kernel"][...]
    assert float(np.abs(np.asarray(last_ffn)).max()) > 0


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_first_token_last_layer_advances_every_dropout_stream_as_the_whole_layer_does(scan_layers, monkeypatch):
    """In training the streams' counts are state carried from step to step; the last layer called alone must
    leave them where the whole stack would, or the next step's masks would repeat."""
    batch = packed_batch(tiny_model("bert", scan_layers, dropout=0.1))

    def after_call(first_tokens: bool):
        model = tiny_model("bert", scan_layers, dropout=0.1)
        model.train()
        if not first_tokens:
            monkeypatch.setattr(base, "first_tokens_pay", lambda *args: False)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        @jax.jit
        def call(params, rest):
            module = nnx.merge(graphdef, params, rest, copy=True)
            return training.packed_logits(module, batch), nnx.state(module, nnx.Not(nnx.Param))

        first, rest_after = call(params, rest)
        second, _ = call(params, rest_after)
        monkeypatch.undo()
        return rest, rest_after, np.asarray(first), np.asarray(second)

    before, pruned, first, second = after_call(True)
    _, whole, _, _ = after_call(False)
    counts = lambda state: [  # noqa: E731
        np.asarray(leaf) for leaf in jax.tree.leaves(state) if not jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
    ]
    for got, want, old in zip(counts(pruned), counts(whole), counts(before), strict=True):
        np.testing.assert_array_equal(got, want)
        assert (got > old).any()  # every stream drew
    assert not np.allclose(first, second)  # the next call draws new masks


def test_the_rule_keeps_the_whole_layer_where_the_pairs_attention_would_cost_more():
    # a stacked MiniLM-sized layer (384 x 1536): the rule reads only the feed-forward kernel's shape
    kernel = SimpleNamespace(shape=(6, 384, 1536))
    encoder = SimpleNamespace(scan=True, layers=SimpleNamespace(ffn_in=SimpleNamespace(kernel=kernel)))
    assert base.first_tokens_pay(encoder, 32, 5, 128)  # STS-B predict: 32 pairs in 5 x 128 tokens
    assert base.first_tokens_pay(encoder, 320, 63, 104)  # MNRL: 320 pairs in 63 x 104 tokens
    # Hand count (forward multiply-adds, H = 384, I = 1536, 4 x 128 = 512 tokens): the whole layer costs
    # 512 (4 H^2 + 2 H I) + 2 * 512 * 128 H = 956.3M; first tokens cost 512 * 2 H^2 = 151.0M for keys and
    # values, plus P (2 H^2 + 2 H I + 2 * 512 H) = 1.868M a pair: more than the whole layer from P = 432 on.
    assert base.first_tokens_pay(encoder, 431, 4, 128)
    assert not base.first_tokens_pay(encoder, 432, 4, 128)
    assert not base.first_tokens_pay(encoder, 0, 4, 128)


def test_families_whose_heads_read_more_than_the_first_token_keep_the_whole_layer():
    from crossjax.models.deberta_v2 import DebertaV2ForSequenceClassification
    from crossjax.models.modernbert import ModernBertForSequenceClassification

    assert not base.FlaxPreTrainedModel.last_layer_for_first_tokens
    assert not DebertaV2ForSequenceClassification.last_layer_for_first_tokens  # relative positions per query
    assert not ModernBertForSequenceClassification.last_layer_for_first_tokens  # mean pooling, final norm
