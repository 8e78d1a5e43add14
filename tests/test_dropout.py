"""crossjax's dropout mask (a counter-based hash instead of threefry): rate, independence, determinism,
sharding invariance, and the nnx.Dropout contract it keeps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import xla_flags
from flax import nnx

from crossjax.models.layers import Dropout, dropout_keep_mask

SHAPE = (6, 4, 64, 64)  # rows x heads x T x T, as attention probabilities
N = int(np.prod(SHAPE))


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.02])
def test_keep_rate_is_binomial(rate):
    for seed in range(3):
        kept = np.asarray(dropout_keep_mask(jax.random.key(seed), SHAPE, rate)).mean()
        sigma = np.sqrt(rate * (1 - rate) / N)
        assert abs(kept - (1 - rate)) < 5 * sigma, (seed, kept)


def test_masks_look_independent():
    m = np.asarray(dropout_keep_mask(jax.random.key(0), SHAPE, 0.5)).astype(np.float64)
    other = np.asarray(dropout_keep_mask(jax.random.key(1), SHAPE, 0.5)).astype(np.float64)
    bound = 5 / np.sqrt(N)  # |correlation| of independent fair bits is ~N(0, 1/N)
    pairs = {
        "other key": (m, other),
        "next column": (m[..., :-1], m[..., 1:]),
        "next row": (m[:, :, :-1], m[:, :, 1:]),
        "next head": (m[:, :-1], m[:, 1:]),
        "next packed row": (m[:-1], m[1:]),
    }
    for name, (a, b) in pairs.items():
        assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < bound, name
    # Each (row, head) slice keeps about half: no slice is degenerate.
    per_slice = m.reshape(-1, SHAPE[-2] * SHAPE[-1]).mean(axis=1)
    assert np.all(np.abs(per_slice - 0.5) < 5 * 0.5 / np.sqrt(SHAPE[-2] * SHAPE[-1]))


def test_same_key_same_mask_and_keys_differ():
    a = dropout_keep_mask(jax.random.key(7), SHAPE, 0.1)
    b = jax.jit(dropout_keep_mask, static_argnums=(1, 2))(jax.random.key(7), SHAPE, 0.1)
    c = dropout_keep_mask(jax.random.key(8), SHAPE, 0.1)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_dropout_module_contract():
    layer = Dropout(0.25, rngs=nnx.Rngs(dropout=3))
    x = jnp.ones((8, 16, 32))
    y = np.asarray(layer(x))
    assert np.all((y == 0) | np.isclose(y, 1.0 / 0.75))
    assert abs((y > 0).mean() - 0.75) < 0.02
    assert not np.array_equal(y, np.asarray(layer(x)))  # the stream advances: a new mask each call
    layer.eval()
    assert np.array_equal(np.asarray(layer(x)), np.asarray(x))
    assert np.array_equal(np.asarray(Dropout(0.0, rngs=nnx.Rngs(0))(x)), np.asarray(x))
    assert not np.asarray(Dropout(1.0, rngs=nnx.Rngs(0))(x)).any()
    shared = np.asarray(Dropout(0.5, broadcast_dims=(0,), rngs=nnx.Rngs(dropout=1))(x))
    assert np.array_equal(shared[0], shared[5])  # one mask broadcast over axis 0
    with pytest.raises(TypeError, match="needs rngs"):
        Dropout(0.5)(x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kept_values_are_scaled_by_exactly_one_over_keep_probability(dtype):
    """Kept elements are x / (1 - rate), rounded once to x's dtype. Rounding the factor to bfloat16 first biased
    every kept bfloat16 value: dividing by 0.9 -> 0.8984375 made them 0.17% too large, multiplying by
    1 / 0.9 -> 1.109375 0.16% too small."""
    x = jnp.asarray(np.random.default_rng(0).uniform(0.5, 2.0, 65536), dtype)
    y = np.asarray(Dropout(0.1, rngs=nnx.Rngs(dropout=3))(x), np.float32)
    kept = y != 0
    assert abs(kept.mean() - 0.9) < 0.01
    ratios = y[kept] / np.asarray(x, np.float32)[kept]
    np.testing.assert_allclose(ratios.mean(), 1 / 0.9, rtol=2e-4)
    step = 2.0**-8 if dtype == jnp.bfloat16 else 2.0**-23  # bfloat16 / float32 relative rounding
    assert np.abs(ratios * 0.9 - 1).max() <= step


def test_sharded_mask_equals_unsharded(tmp_path):
    """The mask is a function of each element's global index: 8 devices give the single device's mask."""
    script = textwrap.dedent(
        """
        import jax, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from crossjax.models.layers import dropout_keep_mask
        shape = (8, 4, 32, 32)
        key = jax.random.key(5)
        single = np.asarray(dropout_keep_mask(key, shape, 0.1))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharded = jax.jit(
            lambda k: dropout_keep_mask(k, shape, 0.1), out_shardings=NamedSharding(mesh, P("data"))
        )(key)
        assert len(sharded.sharding.device_set) == 8
        assert np.array_equal(single, np.asarray(sharded))
        print("ok")
        """
    )
    env = dict(os.environ, XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=8"), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


# Each family's dropout sites (config fields), one switched on at a time. ELECTRA's head and BERT's share
# `classifier_dropout` (None falls back to the hidden rate, so it is set to 0 for the other sites).
DROPOUT_SITES = {
    "bert": {"hidden": ["hidden_dropout_prob"], "attention": ["attention_probs_dropout_prob"],
             "head": ["classifier_dropout"]},
    "distilbert": {"hidden": ["dropout"], "attention": ["attention_dropout"], "head": ["seq_classif_dropout"]},
    "deberta-v2": {"hidden": ["hidden_dropout_prob"], "attention": ["attention_probs_dropout_prob"],
                   "head": ["pooler_dropout", "cls_dropout"]},
    "modernbert": {"embeddings": ["embedding_dropout"], "attention": ["attention_dropout"], "mlp": ["mlp_dropout"],
                   "head": ["classifier_dropout"]},
}
DROPOUT_FIELDS = sorted({name for sites in DROPOUT_SITES.values() for names in sites.values() for name in names})
COPIES = 1024


# RoBERTa / XLM-R: BERT's layers and embeddings' dropout, ELECTRA's head (FirstTokenClassificationHead)
@pytest.mark.parametrize("family", ["bert", "distilbert", "deberta-v2", "electra", "modernbert"])
def test_each_dropout_site_adds_the_noise_pytorch_adds(family, tmp_path):
    """Dropout where transformers has it, at its rate: with one site on at a time (rate 0.3), the variance of the
    train-mode logits over 1,024 copies of a batch (independent masks) is PyTorch's within sampling error
    (~3%; measured 0.94-1.05). A missing site gives zero; hidden dropout moved after the feed-forward LayerNorm
    gives 1.31-1.59. Both draws are seeded, so the test is deterministic."""
    import torch
    from test_models_parity import FAMILIES, padded_batch
    from transformers import AutoModelForSequenceClassification

    from crossjax.models import FlaxAutoModelForSequenceClassification

    for site, fields in DROPOUT_SITES.get(family, DROPOUT_SITES["bert"]).items():
        config = FAMILIES[family](2)
        config.initializer_range = 0.2  # larger activations than the default 0.02: every site's noise shows
        for name in DROPOUT_FIELDS:
            if hasattr(config, name):
                setattr(config, name, 0.3 if name in fields else 0.0)
        torch.manual_seed(0)
        reference = AutoModelForSequenceClassification.from_config(config, attn_implementation="eager")
        reference.save_pretrained(tmp_path / site)
        ids, mask, types = (np.tile(a, (COPIES, 1)) for a in padded_batch(config.pad_token_id))
        inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
        if config.model_type in ("bert", "electra"):
            inputs["token_type_ids"] = torch.tensor(types)
        with torch.no_grad():
            expected = reference.train()(**inputs).logits.numpy().reshape(COPIES, -1)
        model = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path / site)
        model.train()
        ours = np.asarray(model(input_ids=ids, attention_mask=mask, token_type_ids=types)).reshape(COPIES, -1)
        ratio = ours.var(axis=0).sum() / expected.var(axis=0).sum()
        assert 0.85 < ratio < 1.18, f"{family} {site} dropout: logit variance {ratio:.3f}x PyTorch's"


HEAD_DROPOUT_KEYS = {"bert": "classifier_dropout", "distilbert": "seq_classif_dropout", "deberta-v2": "cls_dropout",
                     "electra": "classifier_dropout", "modernbert": "classifier_dropout"}  # fmt: skip


@pytest.mark.parametrize("family", sorted(HEAD_DROPOUT_KEYS))
def test_cross_encoder_classifier_dropout_is_the_heads_rate_in_every_family(family, minilm_dir, tmp_path):
    """``CrossEncoder(classifier_dropout=p)`` (sentence-transformers < 4's argument) sets the head's rate under the
    family's own config key: DistilBERT's head reads ``seq_classif_dropout`` and DeBERTa-v2's ``cls_dropout``, and
    both ignored p (two fits with p = 0 and 0.95 were bit-identical). The saved config gives transformers' head
    the same rate, and the model's only dropout of that rate is its head's."""
    import torch
    from test_models_parity import FAMILIES
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from crossjax import CrossEncoder

    config = FAMILIES[family](1)
    config.vocab_size = 30522  # MiniLM's tokenizer
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "model")
    key = HEAD_DROPOUT_KEYS[family]
    before = getattr(config, key, None)
    ce = CrossEncoder(tmp_path / "model", classifier_dropout=0.37)
    assert getattr(ce.config, key) == 0.37 != before
    rates = {
        ".".join(map(str, path)): module.rate
        for path, module in nnx.iter_graph(ce.model)
        if isinstance(module, Dropout) and module.rate == 0.37
    }
    assert rates and all(("classifier" in p or "head" in p or p == "dropout") for p in rates), rates
    ce.save(tmp_path / "saved")
    assert getattr(AutoConfig.from_pretrained(tmp_path / "saved"), key) == 0.37
