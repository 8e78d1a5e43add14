"""crossjax's Flax encoders against PyTorch transformers, the oracle: same logits from the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoModelForSequenceClassification

from crossjax.models import FlaxAutoModelForSequenceClassification

TINY = dict(vocab_size=101, max_position_embeddings=70)

FAMILIES = {
    "bert": lambda n: transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=n, **TINY
    ),
    "roberta": lambda n: transformers.RobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=n,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        **TINY,
    ),
    "xlm-roberta": lambda n: transformers.XLMRobertaConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=n,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
        **TINY,
    ),
    "distilbert": lambda n: transformers.DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=37, num_labels=n, pad_token_id=0, **TINY
    ),
    # DeBERTa-v3's layout (shared keys, c2p + p2c, log buckets, rel LayerNorm, no token types) plus the conv
    # layer; initializer_range 0.1 so that attention is not uniform and relative positions matter.
    "deberta-v2": lambda n: transformers.DebertaV2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=n,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        conv_kernel_size=3,
        initializer_range=0.1,
        **TINY,
    ),
    "electra": lambda n: transformers.ElectraConfig(
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=n,
        **TINY,
    ),
    "modernbert": lambda n: transformers.ModernBertConfig(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=37,
        num_labels=n,
        pad_token_id=0,
        bos_token_id=1,
        cls_token_id=1,
        eos_token_id=2,
        sep_token_id=2,
        global_attn_every_n_layers=2,
        local_attention=6,  # windows shorter than most inputs (more in tests/test_modernbert.py)
        classifier_pooling="mean",
        embedding_dropout=0.1,
        mlp_dropout=0.1,
        **TINY,
    ),
}


def padded_batch(pad_id: int, seed: int = 0):
    """A batch of varied lengths (3..14 tokens) padded on the right, with two token types."""
    rng = np.random.RandomState(seed)
    lengths = [14, 9, 3, 12]
    ids = np.full((len(lengths), 14), pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.randint(3, TINY["vocab_size"], n)
        mask[row, :n] = 1
        types[row, n // 2 : n] = 1
    return ids, mask, types


def torch_logits(model, ids, mask, types):
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if model.config.model_type == "bert" or model.config.model_type == "electra":
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        return model(**kwargs).logits.numpy()


@pytest.fixture(
    scope="module", params=[(f, n) for f in FAMILIES for n in (1, 3)], ids=lambda p: f"{p[0]}-{p[1]}"
)
def saved_pair(request, tmp_path_factory):
    family, num_labels = request.param
    torch.manual_seed(0)
    config = FAMILIES[family](num_labels)
    pt = AutoModelForSequenceClassification.from_config(config).eval()
    directory = tmp_path_factory.mktemp(f"{family}{num_labels}")
    pt.save_pretrained(directory)
    return family, pt, directory


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_logits_equal_pytorch_float32(saved_pair, scan_layers):
    family, pt, directory = saved_pair
    model, info = FlaxAutoModelForSequenceClassification.from_pretrained(
        directory, output_loading_info=True, scan_layers=scan_layers
    )
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    model.eval()
    ids, mask, types = padded_batch(pt.config.pad_token_id)
    ours = np.asarray(model(input_ids=ids, attention_mask=mask, token_type_ids=types))
    assert ours.shape == (ids.shape[0], pt.config.num_labels)
    np.testing.assert_allclose(ours, torch_logits(pt, ids, mask, types), atol=1e-5, rtol=0)
    # transformers' counts (the trainer's total_flos uses the count without embeddings)
    for exclude in (False, True):
        assert model.num_parameters(exclude_embeddings=exclude) == pt.num_parameters(exclude_embeddings=exclude)


def test_logits_close_in_bfloat16(saved_pair):
    import jax.numpy as jnp

    _, pt, directory = saved_pair
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory, dtype=jnp.bfloat16)
    model.eval()
    ids, mask, types = padded_batch(pt.config.pad_token_id)
    ours = np.asarray(model(input_ids=ids, attention_mask=mask, token_type_ids=types), dtype=np.float32)
    ref = torch_logits(pt, ids, mask, types)
    assert np.abs(ours - ref).max() <= 2e-2 * max(np.abs(ref).max(), 1.0)


def test_logits_do_not_depend_on_batch_neighbours(saved_pair):
    _, pt, directory = saved_pair
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory)
    model.eval()
    ids, mask, types = padded_batch(pt.config.pad_token_id)
    together = np.asarray(model(input_ids=ids, attention_mask=mask, token_type_ids=types))
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        alone = np.asarray(
            model(
                input_ids=ids[row : row + 1, :n],
                attention_mask=mask[row : row + 1, :n],
                token_type_ids=types[row : row + 1, :n],
            )
        )
        np.testing.assert_allclose(alone[0], together[row], atol=1e-5, rtol=0)


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_export_round_trip_loads_in_pytorch(saved_pair, tmp_path, scan_layers):
    _, pt, directory = saved_pair
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory, scan_layers=scan_layers)
    model.eval()
    out = model.save_pretrained(tmp_path / "export")
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(reloaded).__name__ == type(pt).__name__
    ids, mask, types = padded_batch(pt.config.pad_token_id)
    ours = np.asarray(model(input_ids=ids, attention_mask=mask, token_type_ids=types))
    np.testing.assert_allclose(torch_logits(reloaded.eval(), ids, mask, types), ours, atol=1e-5, rtol=0)


def test_scanned_layers_are_stacked_and_each_layer_slice_is_one_checkpoint_tensor(saved_pair, tmp_path):
    """The key table maps every per-layer tensor to one slice of a stacked array, in both directions."""
    import jax
    from flax import nnx
    from safetensors.numpy import load_file, save_file

    _, pt, directory = saved_pair
    layers = pt.config.num_hidden_layers if hasattr(pt.config, "num_hidden_layers") else pt.config.n_layers
    scanned = FlaxAutoModelForSequenceClassification.from_pretrained(directory)
    stacked = nnx.state(scanned.encoder, nnx.Param)
    assert all(leaf.shape[0] == layers for leaf in jax.tree.leaves(stacked))
    exported = scanned.hf_state_dict()
    reference = {k: v.numpy() for k, v in pt.state_dict().items() if "position_ids" not in k}
    assert sorted(exported) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)

    # A checkpoint without one layer's tensor: exactly that name is reported missing, the others load.
    tensors = load_file(str(directory / "model.safetensors"))
    dropped = next(k for k in tensors if ".1." in k and k.endswith("weight") and "layer" in k)
    del tensors[dropped]
    partial = tmp_path / "partial"
    partial.mkdir()
    save_file(tensors, str(partial / "model.safetensors"))
    (partial / "config.json").write_text((directory / "config.json").read_text())
    _, info = FlaxAutoModelForSequenceClassification.from_pretrained(partial, output_loading_info=True)
    assert info["missing_keys"] == [dropped] and info["unexpected_keys"] == []


def test_every_activation_name_equals_transformers_in_value_and_gradient():
    """Each Hugging Face activation name crossjax builds (``hidden_act`` and the families' other activation keys)
    is transformers' ``ACT2FN`` function: values and gradients on both sides of 0 and far out."""
    import jax
    import jax.numpy as jnp
    from transformers.activations import ACT2FN

    from crossjax.models.layers import ACTIVATIONS

    assert len(ACTIVATIONS) >= 20
    x = np.concatenate([np.random.default_rng(3).normal(size=400) * 4, [-40.0, -12.0, -0.3, 0.3, 12.0, 40.0]])
    x = x.astype(np.float32)
    for name, ours in ACTIVATIONS.items():
        value, grad = jax.value_and_grad(lambda v, f=ours: f(v).sum())(jnp.asarray(x))
        reference = torch.tensor(x, requires_grad=True)
        expected = ACT2FN[name](reference)
        expected.sum().backward()
        np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), expected.detach().numpy(), rtol=2e-6,
                                   atol=2e-6, err_msg=name)  # fmt: skip
        np.testing.assert_allclose(np.asarray(grad), reference.grad.numpy(), rtol=2e-5, atol=1e-5, err_msg=name)
        assert np.isfinite(float(value)), name


@pytest.mark.parametrize(
    "family, key", [("bert", "hidden_act"), ("distilbert", "activation"), ("deberta-v2", "pooler_hidden_act"),
                    ("modernbert", "classifier_activation"), ("modernbert", "hidden_activation")],  # fmt: skip
)
def test_an_activation_crossjax_lacks_is_refused_naming_its_config_key(family, key):
    """``prelu`` (an activation with a learned parameter) is refused before anything is built, naming the key
    (a family has up to three activation keys)."""
    from crossjax.models import FlaxAutoModelForSequenceClassification

    config = FAMILIES[family](1)
    setattr(config, key, "prelu")
    with pytest.raises(ValueError, match=f"config {key}='prelu' is not an activation crossjax implements"):
        FlaxAutoModelForSequenceClassification.from_config(config)


@pytest.mark.parametrize("family", ["bert", "roberta", "electra"])
def test_relative_position_embeddings_of_transformers_4_are_named_where_ignored(family, tmp_path, caplog):
    """transformers 5 dropped BERT-style ``position_embedding_type="relative_key(_query)"``: it loads such a
    checkpoint with absolute positions and warns only of unused weights. crossjax scores as transformers 5 does
    (the oracle here) and says why the scores differ from the model's training."""
    config = FAMILIES[family](1)
    config.position_embedding_type = "relative_key_query"
    torch.manual_seed(0)
    reference = AutoModelForSequenceClassification.from_config(config).eval()
    reference.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="crossjax"):
        ours = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert "position_embedding_type='relative_key_query'" in caplog.text
    ids, mask, types = padded_batch(config.pad_token_id)
    np.testing.assert_allclose(
        np.asarray(ours(ids, mask, types)), torch_logits(reference, ids, mask, types), rtol=1e-5, atol=1e-6
    )
