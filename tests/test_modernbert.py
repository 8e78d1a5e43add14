"""ModernBERT against transformers 5's PyTorch ``ModernBertForSequenceClassification``, the oracle: the same
logits from the same weights (cls and mean pooling, global layers every 1, 2 or 3, sliding windows shorter and
longer than the input, with and without biases), packed rows, exports, and a fit step against
sentence-transformers' ``old_fit``."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch
import transformers
from conftest import read_stsb
from test_fit_parity import TWO_STEPS, fit_both
from test_packing import tokenized_pairs
from transformers import AutoModelForSequenceClassification

from crossjax import CrossEncoder, packing, training
from crossjax.models import FlaxAutoModelForSequenceClassification
from crossjax.models.modernbert import attention_layout

VOCAB = 200
SPECIAL = dict(pad_token_id=0, cls_token_id=1, bos_token_id=1, sep_token_id=2, eos_token_id=2)
NO_DROPOUT = dict(embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0)
ALL_BIASES = dict(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True)


def tiny_config(num_labels: int = 1, **overrides) -> transformers.ModernBertConfig:
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=40,
        max_position_embeddings=128,
        initializer_range=0.3,  # large weights: logits depend strongly on every token, window and angle
        num_labels=num_labels,
        global_rope_theta=500.0,  # small bases: the rotary angles vary a lot over a few dozen tokens
        local_rope_theta=50.0,
        **SPECIAL,
    )
    settings.update(overrides)
    return transformers.ModernBertConfig(**settings)


# (name, settings, num_labels). The input's longest row is 40 tokens; a window of 8 covers |i - j| <= 4.
VARIANTS = [
    ("cls-all-global", dict(global_attn_every_n_layers=1, local_attention=8), 3),
    ("cls-every2-window8-biases", dict(global_attn_every_n_layers=2, local_attention=8, **ALL_BIASES), 1),
    ("cls-every3-window-longer-than-input", dict(global_attn_every_n_layers=3, local_attention=128), 3),
    ("mean-every2-window6", dict(classifier_pooling="mean", global_attn_every_n_layers=2, local_attention=6), 1),
    (
        "mean-every3-window10-biases",
        dict(classifier_pooling="mean", global_attn_every_n_layers=3, local_attention=10, **ALL_BIASES),
        3,
    ),
    (
        "mean-every2-window-longer-than-input-sdpa",
        dict(classifier_pooling="mean", global_attn_every_n_layers=2, local_attention=96, attn_implementation="sdpa"),
        1,
    ),
]


def perturbed_torch_model(config) -> torch.nn.Module:
    """A random PyTorch model whose norms and biases are not at their init values (ones, zeros), so a table
    row that swapped or dropped them would show."""
    torch.manual_seed(0)
    if getattr(config, "_attn_implementation", None) is None:
        config._attn_implementation = "eager"
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def padded_batch(lengths=(40, 23, 5, 31), seed: int = 0):
    rng = np.random.RandomState(seed)
    ids = np.full((len(lengths), max(lengths)), SPECIAL["pad_token_id"], dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.randint(3, VOCAB, n)
        ids[row, 0] = SPECIAL["cls_token_id"]
        mask[row, :n] = 1
    return ids, mask


def torch_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: f"{v[0]}-{v[2]}")
def saved(request, tmp_path_factory):
    variant, settings, num_labels = request.param
    pt = perturbed_torch_model(tiny_config(num_labels, **settings))
    directory = tmp_path_factory.mktemp(f"modernbert-{variant}-{num_labels}")
    pt.save_pretrained(directory)
    return pt, directory


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_logits_equal_pytorch_float32(saved, scan_layers):
    pt, directory = saved
    model, info = FlaxAutoModelForSequenceClassification.from_pretrained(
        directory, output_loading_info=True, scan_layers=scan_layers
    )
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    model.eval()
    for exclude in (False, True):  # transformers' counts (nn.Embedding tables left out: the trainer's total_flos)
        assert model.num_parameters(exclude_embeddings=exclude) == pt.num_parameters(exclude_embeddings=exclude)
    ids, mask = padded_batch()
    ours = np.asarray(model(ids, mask))
    assert ours.shape == (ids.shape[0], pt.config.num_labels)
    np.testing.assert_allclose(ours, torch_logits(pt, ids, mask), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="not torch tensors: tokenize with return_tensors='np'"):
        model(torch.tensor(ids), torch.tensor(mask))  # called as the PyTorch model is


def test_packed_logits_equal_unpacked_and_pytorch(saved):
    """Several pairs a row, positions restarting at each pair: each pair's logits are those of the pair alone
    (windows stay inside the pair, mean pooling averages the pair's own tokens)."""
    pt, directory = saved
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory)
    model.eval()
    lengths = np.random.default_rng(4).integers(3, 30, size=14)
    tokenized = tokenized_pairs(lengths, vocab=VOCAB, seed=5)
    plan = packing.plan_packing([np.arange(14)], lengths, 2, 8, hidden_size=32, max_shapes=1, rows=2)
    batch = packing.pack(tokenized, np.arange(14), None, plan, pad_token_id=SPECIAL["pad_token_id"])
    assert (batch.segment_ids.max(axis=-1) >= 3).any()  # rows really hold several pairs
    packed = np.asarray(training.packed_logits(model, batch.device_fields()))
    ids, mask = padded_batch(lengths)
    for row, example in enumerate(range(14)):
        ids[row, : lengths[example]] = tokenized.input_ids[example]
    unpacked = np.asarray(model(ids, mask))
    reference = torch_logits(pt, ids, mask)
    np.testing.assert_allclose(unpacked, reference, atol=1e-5, rtol=0)
    slots = batch.indices.reshape(-1)
    real = slots >= 0
    np.testing.assert_allclose(packed[real], unpacked[slots[real]], atol=1e-5, rtol=0)


def test_sliding_window_and_rotary_bases_change_the_logits():
    """The parity tests are not vacuous: the same weights with a wider window or other rotary bases give
    other logits, so the window and both thetas are really exercised."""
    ids, mask = padded_batch()
    base = dict(global_attn_every_n_layers=2, local_attention=8)
    reference = torch_logits(perturbed_torch_model(tiny_config(3, **base)), ids, mask)
    for change in (dict(local_attention=128), dict(local_rope_theta=10_000.0), dict(global_rope_theta=10_000.0)):
        other = torch_logits(perturbed_torch_model(tiny_config(3, **{**base, **change})), ids, mask)
        assert np.abs(other - reference).max() > 1e-3, change


def test_old_and_new_config_spellings_give_the_same_layout(tmp_path):
    """transformers 5's ``layer_types`` / ``rope_parameters`` and the older keys, whichever a config.json
    holds, and the old keys on a plain object (a config transformers did not convert)."""
    pt = perturbed_torch_model(tiny_config(2, global_attn_every_n_layers=3, local_attention=8))
    pt.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    del config["layer_types"], config["rope_parameters"]
    config.update(global_attn_every_n_layers=2, global_rope_theta=300.0, local_rope_theta=30.0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = AutoModelForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert old.config.layer_types == ["full_attention", "sliding_attention"] * 2
    model = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    model.eval()
    ids, mask = padded_batch()
    np.testing.assert_allclose(np.asarray(model(ids, mask)), torch_logits(old, ids, mask), atol=1e-5, rtol=0)

    plain = types.SimpleNamespace(
        num_hidden_layers=5,
        global_attn_every_n_layers=2,
        global_rope_theta=300.0,
        local_rope_theta=30.0,
        local_attention=9,
    )
    layout = attention_layout(plain)
    assert layout.is_global == (True, False, True, False, True)
    assert (layout.global_theta, layout.local_theta, layout.half_window) == (300.0, 30.0, 4)
    with pytest.raises(ValueError, match="rope_type 'linear'"):
        attention_layout(
            types.SimpleNamespace(**vars(plain), rope_parameters={"full_attention": {"rope_type": "linear"}})
        )


def test_bfloat16_logits_close_to_float32(tmp_path):
    import jax.numpy as jnp

    config = tiny_config(3, classifier_pooling="mean", global_attn_every_n_layers=2, local_attention=8, **ALL_BIASES)
    pt = perturbed_torch_model(config)
    pt.save_pretrained(tmp_path)
    model = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    model.eval()
    ids, mask = padded_batch()
    ours = np.asarray(model(ids, mask), dtype=np.float32)
    reference = torch_logits(pt, ids, mask)
    error = np.abs(ours - reference).max()
    assert 0 < error <= 5e-2 * max(np.abs(reference).max(), 1.0)  # really bfloat16, and close


# ------------------------------------------------------------------------------ export, CrossEncoder, fit
def word_tokenizer(texts, directory) -> transformers.PreTrainedTokenizerFast:
    """A word-level fast tokenizer over the most frequent words of ``texts`` (vocab ``VOCAB``), with
    ModernBERT's pair template ``[CLS] a [SEP] b [SEP]`` and no token types."""
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    counts = Counter(w for t in texts for w in t.lower().replace(".", " .").replace(",", " ,").split())
    words = [w for w, _ in counts.most_common(VOCAB - len(specials))]
    vocab = {w: i for i, w in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        model_max_length=64,
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(directory)
    return fast


@pytest.fixture(scope="module")
def stsb_checkpoint(tmp_path_factory):
    """A tiny ModernBERT (mean pooling, windows shorter than most pairs) with a word tokenizer of STS-B."""
    rows = read_stsb("train", limit=24)
    directory = tmp_path_factory.mktemp("modernbert-stsb")
    tokenizer = word_tokenizer([t for a, b, _ in rows for t in (a, b)], directory)
    config = tiny_config(
        1, classifier_pooling="mean", global_attn_every_n_layers=2, local_attention=8, embedding_dropout=0.1
    )
    perturbed_torch_model(config).save_pretrained(directory)
    return directory, tokenizer, rows


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "unrolled"])
def test_export_reloads_in_transformers_and_sentence_transformers(stsb_checkpoint, tmp_path, scan_layers):
    from sentence_transformers import CrossEncoder as TorchCrossEncoder

    directory, tokenizer, rows = stsb_checkpoint
    pairs = [(a, b) for a, b, _ in rows[:12]]
    ours = CrossEncoder(directory, scan_layers=scan_layers)
    scores = ours.predict(pairs)
    out = tmp_path / "export"
    ours.save(out)

    reloaded, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert type(reloaded).__name__ == "ModernBertForSequenceClassification"
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="np")
    assert "token_type_ids" not in enc
    with torch.no_grad():
        logits = reloaded.eval()(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()[:, 0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), scores, atol=1e-5, rtol=0)

    theirs = TorchCrossEncoder(str(out), device="cpu")
    np.testing.assert_allclose(theirs.predict(pairs), scores, atol=1e-5, rtol=0)
    assert np.std(scores) > 1e-4  # different pairs, different scores


def test_one_fit_step_equals_sentence_transformers_old_fit(stsb_checkpoint, tmp_path):
    directory, _, rows = stsb_checkpoint
    rows = rows[:16]
    pairs = [(a, b) for a, b, _ in rows]
    before = CrossEncoder(directory).predict(pairs)
    ours, theirs, history = fit_both(directory, rows, TWO_STEPS, no_dropout=NO_DROPOUT)
    our_losses = [h["loss"] for h in ours.training_history]
    assert len(our_losses) == len(history) == 2
    np.testing.assert_allclose(our_losses, history, rtol=1e-4)
    after = ours.predict(pairs)
    assert np.abs(after - before).max() > 1e-3  # the steps really changed the model
    np.testing.assert_allclose(after, theirs.predict(pairs), rtol=1e-4, atol=1e-5)


def test_masked_lm_checkpoint_loads_like_transformers(tmp_path):
    """A pre-trained ModernBERT is a ``ModernBertForMaskedLM`` (rerankers start from one): its encoder and
    ``head`` load, ``classifier`` is new and ``decoder.bias`` unused, as transformers reports; the encoder's
    hidden states equal ``ModernBertModel``'s."""
    config = tiny_config(1, global_attn_every_n_layers=2, local_attention=8, **ALL_BIASES)
    torch.manual_seed(0)
    mlm = transformers.ModernBertForMaskedLM(config).eval()
    mlm.save_pretrained(tmp_path)
    _, theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    model, ours = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert sorted(ours["missing_keys"]) == sorted(theirs["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert sorted(ours["unexpected_keys"]) == sorted(theirs["unexpected_keys"]) == ["decoder.bias"]
    model.eval()
    ids, mask = padded_batch()
    with torch.no_grad():
        reference = mlm.model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model.encode(ids, mask))[real], reference.numpy()[real], atol=1e-5, rtol=0)


def test_single_layer_model_loads_and_exports_every_tensor(tmp_path):
    """One layer (layer 0, no attention norm) cannot be stacked: it is unrolled, and loads and exports exactly
    the checkpoint's tensors."""
    pt = perturbed_torch_model(tiny_config(3, num_hidden_layers=1, local_attention=8))
    pt.save_pretrained(tmp_path)
    model, info = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and not model.scan_layers
    assert sorted(model.hf_state_dict()) == sorted(pt.state_dict())
    model.eval()
    ids, mask = padded_batch()
    np.testing.assert_allclose(np.asarray(model(ids, mask)), torch_logits(pt, ids, mask), atol=1e-5, rtol=0)
