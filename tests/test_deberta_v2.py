"""DeBERTa-v2/v3 against its oracles: transformers 5's ``DebertaV2ForSequenceClassification`` (logits, hidden
states, relative-position buckets, export) and sentence-transformers 6.2.0 (scores of the export, old_fit).

The random configs use ``initializer_range=0.2``: with transformers' 0.02 the attention of a tiny model is
nearly uniform, and a wrong relative-position index moves the logits by less than 1e-6 (measured), so the
1e-5 comparisons below could not fail. At 0.2 the logits are O(1) and such a mistake moves them by ~0.5.
"""

from __future__ import annotations

import string

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
from crossjax.models.deberta_v2 import DebertaV2ForSequenceClassification, log_bucket_position

VOCAB = 200


def deberta_config(num_labels: int = 3, **overrides) -> transformers.DebertaV2Config:
    """A tiny DeBERTa-v3-like config: shared attention keys, c2p + p2c, 8 buckets over distances up to 16
    (so 40-token inputs reach the log buckets and the clamp), LayerNorm on the relative embeddings, no
    absolute positions, no token types."""
    settings = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_buckets=8,
        max_relative_positions=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        position_biased_input=False,
        type_vocab_size=0,
        initializer_range=0.2,
        num_labels=num_labels,
    )
    settings.update(overrides)
    return transformers.DebertaV2Config(**settings)


VARIANTS = {
    "v3-shared-keys-8-buckets": dict(),
    "separate-keys-256-buckets": dict(
        share_att_key=False, position_buckets=256, max_relative_positions=512, max_position_embeddings=512, num_labels=1
    ),
    "c2p-unbucketed-absolute-positions-token-types": dict(
        pos_att_type=["c2p"],
        share_att_key=False,
        position_buckets=0,
        max_relative_positions=-1,  # -> max_position_embeddings
        position_biased_input=True,
        type_vocab_size=2,
        norm_rel_ebd="none",
    ),
    "p2c-conv-embed-proj": dict(pos_att_type=["p2c"], share_att_key=False, conv_kernel_size=3, embedding_size=24),
    "conv-groups-gelu-4-buckets": dict(
        conv_kernel_size=3, conv_groups=2, conv_act="gelu", position_buckets=4, max_relative_positions=10, num_labels=1
    ),
    "no-relative-attention": dict(relative_attention=False, position_biased_input=True, pos_att_type=["c2p"]),
}


def long_padded_batch(seed: int = 0):
    """Four rows of 40, 23, 5 and 31 tokens, right-padded, with token types 0 then 1."""
    rng = np.random.RandomState(seed)
    lengths = [40, 23, 5, 31]
    ids = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = rng.randint(5, VOCAB, n)
        mask[row, :n] = 1
        types[row, n // 2 : n] = 1
    return ids, mask, types


def torch_forward(pt, ids, mask, types):
    """Logits and last hidden states of the PyTorch model (token types only where it has them)."""
    kwargs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if pt.config.type_vocab_size > 0:
        kwargs["token_type_ids"] = torch.tensor(types)
    with torch.no_grad():
        out = pt(**kwargs, output_hidden_states=True)
    return out.logits.numpy(), out.hidden_states[-1].numpy()


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def saved(request, tmp_path_factory):
    torch.manual_seed(0)
    pt = AutoModelForSequenceClassification.from_config(deberta_config(**VARIANTS[request.param])).eval()
    directory = tmp_path_factory.mktemp(request.param)
    pt.save_pretrained(directory)
    return pt, directory


def test_logits_and_hidden_states_equal_pytorch_float32(saved):
    """Scanned layers; the unrolled layout is compared by the FAMILIES config of test_models_parity."""
    pt, directory = saved
    model, info = FlaxAutoModelForSequenceClassification.from_pretrained(directory, output_loading_info=True)
    assert isinstance(model, DebertaV2ForSequenceClassification)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    model.eval()
    for exclude in (False, True):  # transformers' counts (nn.Embedding tables left out: the trainer's total_flos)
        assert model.num_parameters(exclude_embeddings=exclude) == pt.num_parameters(exclude_embeddings=exclude)
    ids, mask, types = long_padded_batch()
    logits, hidden = torch_forward(pt, ids, mask, types)
    assert np.abs(logits).max() > 0.1  # O(1) logits: the comparison below can fail
    np.testing.assert_allclose(np.asarray(model(ids, mask, types)), logits, atol=1e-5, rtol=0)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model.encode(ids, mask, types))[real], hidden[real], atol=1e-5, rtol=0)


def test_parameter_table_names_exactly_the_pytorch_state_dict(saved):
    """Flag-dependent tensors (pos_key_proj, pos_query_proj, conv, embed_proj, rel LayerNorm, position and
    token-type embeddings) appear in the table exactly when the PyTorch model has them."""
    pt, directory = saved
    for scan_layers in (True, False):
        model = FlaxAutoModelForSequenceClassification.from_pretrained(directory, scan_layers=scan_layers)
        exported = model.hf_state_dict()
        reference = {k: v.numpy() for k, v in pt.state_dict().items() if not k.endswith("position_ids")}
        assert sorted(exported) == sorted(reference)
        for name, value in reference.items():
            np.testing.assert_array_equal(exported[name], value, err_msg=name)


# test_packing covers the FAMILIES config (shared keys, buckets, conv); this adds absolute positions and token types.
@pytest.mark.parametrize("saved", ["c2p-unbucketed-absolute-positions-token-types"], indirect=True)
def test_packed_pairs_equal_pytorch_on_each_pair_alone_and_unpacked_logits(saved):
    """Several pairs per row: relative positions come from position_ids and the convolution stops at pair
    boundaries, so each pair's logits are those of the pair alone (PyTorch) and of the padded batch."""
    pt, directory = saved
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory)
    model.eval()
    lengths = np.random.default_rng(4).integers(3, 30, size=22)
    tokenized = tokenized_pairs(lengths, vocab=VOCAB, seed=5)
    indices = np.arange(22)
    plan = packing.plan_packing([indices], lengths, 2, 12, hidden_size=32, max_shapes=1, rows=3)
    batch = packing.pack(tokenized, indices, None, plan, pad_token_id=pt.config.pad_token_id)
    assert (batch.segment_ids.max(axis=-1) >= 3).any()  # some rows really hold several pairs
    packed = np.asarray(training.packed_logits(model, batch.device_fields()))
    ids = np.zeros((22, lengths.max()), dtype=np.int64)
    mask, types = np.zeros_like(ids), np.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n], types[i, :n], mask[i, :n] = tokenized.input_ids[i], tokenized.token_type_ids[i], 1
    unpacked = np.asarray(model(ids, mask, types))
    for slot, example in enumerate(batch.indices.reshape(-1)):
        if example < 0:
            continue
        n = lengths[example]
        alone, _ = torch_forward(
            pt, ids[example : example + 1, :n], mask[example : example + 1, :n], types[example : example + 1, :n]
        )
        np.testing.assert_allclose(packed[slot], alone[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(packed[slot], unpacked[example], atol=1e-5, rtol=0)


@pytest.mark.parametrize("buckets,max_position", [(256, 512), (256, 1024), (8, 16), (4, 10), (32, 128), (512, 4096)])
def test_log_buckets_equal_transformers(buckets, max_position):
    """Bit-exact buckets; (256, 512), DeBERTa-v3's, is where XLA's float32 log would move two distances."""
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    distance = np.arange(-20000, 20001)
    expected = make_log_bucket_position(torch.tensor(distance), buckets, max_position).long().numpy()
    np.testing.assert_array_equal(log_bucket_position(distance, buckets, max_position), expected)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match=r"position_buckets=8 with max_relative_positions=5"):
        DebertaV2ForSequenceClassification.from_config(deberta_config(max_relative_positions=5))
    with pytest.raises(ValueError, match=r"conv_kernel_size=4.*odd"):
        DebertaV2ForSequenceClassification.from_config(deberta_config(conv_kernel_size=4))


def test_v3_checkpoint_with_unused_position_embeddings_loads_like_transformers(tmp_path):
    """transformers drops ``position_embeddings`` silently (_keys_to_ignore_on_load_unexpected) when the
    config has no absolute positions; so does crossjax."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    pt = AutoModelForSequenceClassification.from_config(deberta_config()).eval()
    pt.save_pretrained(tmp_path)
    tensors = {k: v.contiguous() for k, v in pt.state_dict().items()}
    tensors["deberta.embeddings.position_embeddings.weight"] = torch.zeros(64, 32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    _, theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    _, ours = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not ours["unexpected_keys"] and not theirs["unexpected_keys"]
    assert not ours["missing_keys"] and not theirs["missing_keys"]


# ------------------------------------------------------------------------ tokenizer, export, training
def deberta_tokenizer() -> transformers.DebertaV2Tokenizer:
    """DeBERTa-v3's fast tokenizer class (a SentencePiece-style Unigram) on a tiny vocabulary built offline:
    special tokens, a few words, then single characters."""
    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    words = ["▁the", "▁a", "▁is", "▁man", "▁woman", "▁dog", "▁cat", "▁playing", "▁in", "▁on", "ing", "ed", "s"]
    chars = ["▁", *string.ascii_letters, *string.digits, *".,'!?-"]
    vocab = [(t, 0.0) for t in specials] + [(w, -2.0) for w in words] + [(c, -5.0) for c in chars]
    return transformers.DebertaV2Tokenizer(vocab=vocab, unk_token="[UNK]")


@pytest.fixture(scope="module")
def start_dir(tmp_path_factory):
    """A random DeBERTa-v3-like model with a conv layer, one label, and its tokenizer, saved by transformers."""
    torch.manual_seed(0)
    start = tmp_path_factory.mktemp("deberta_start")
    AutoModelForSequenceClassification.from_config(deberta_config(num_labels=1, conv_kernel_size=3)).save_pretrained(
        start
    )
    deberta_tokenizer().save_pretrained(start)
    return start


def test_export_reloads_in_transformers_and_sentence_transformers_with_same_scores(start_dir, tmp_path):
    from sentence_transformers import CrossEncoder as TorchCrossEncoder

    pairs = [(a, b) for a, b, _ in read_stsb("dev", limit=10)]
    ours = CrossEncoder(start_dir, seed=3, max_shapes=1)  # one program to compile
    scores = ours.predict(pairs, batch_size=4)  # packed rows, sigmoid of one label
    assert np.std(scores) > 1e-2
    out = ours.save(tmp_path / "export")
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert type(hf).__name__ == "DebertaV2ForSequenceClassification"
    enc = ours.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = hf.eval()(**enc).logits.numpy()[:, 0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits)), scores, atol=1e-5, rtol=0)
    st = TorchCrossEncoder(str(out), device="cpu")
    assert type(st.tokenizer).__name__ == "DebertaV2Tokenizer" and type(st.activation_fn).__name__ == "Sigmoid"
    np.testing.assert_allclose(st.predict(pairs, batch_size=4), scores, atol=1e-5, rtol=0)


def test_fit_steps_equal_sentence_transformers_old_fit(start_dir):
    """Two optimizer steps (warm-up then linear decay, weight decay, clipping) from the same weights, dropout
    off: the same losses and the same predictions afterwards."""
    rows = read_stsb("train", limit=16)
    pairs = [(a, b) for a, b, _ in rows]
    before = CrossEncoder(start_dir).predict(pairs)
    ours, theirs, history = fit_both(start_dir, rows, TWO_STEPS, max_shapes=1)  # one program to compile
    our_losses = [h["loss"] for h in ours.training_history]
    assert len(our_losses) == len(history) == 2
    np.testing.assert_allclose(our_losses, history, rtol=1e-5)
    after = theirs.predict(pairs)
    assert np.abs(after - before).max() > 1e-3  # the steps really moved the model
    np.testing.assert_allclose(ours.predict(pairs), after, atol=1e-5, rtol=0)


def test_without_absolute_positions_max_length_may_pass_max_position_embeddings(start_dir):
    """DeBERTa-v3 has no position table (relative positions only), so transformers and sentence-transformers
    score pairs longer than ``max_position_embeddings`` (64 here); crossjax takes the same ``max_length``."""
    from sentence_transformers import CrossEncoder as TorchCrossEncoder

    rows = read_stsb("dev", limit=6)
    pairs = [(a + " " + b, b + " " + a) for a, b, _ in rows]  # ~100+ character tokens a pair
    ours, theirs = CrossEncoder(start_dir, max_length=100), TorchCrossEncoder(str(start_dir), max_length=100)
    default = TorchCrossEncoder(str(start_dir)).max_seq_length
    assert CrossEncoder(start_dir).max_length == default == 64  # both cap the default at max_position_embeddings
    lengths = [len(ids) for ids in ours.tokenizer([a for a, _ in pairs], [b for _, b in pairs])["input_ids"]]
    assert max(lengths) > 64  # untruncated, these pairs run past max_position_embeddings
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5, rtol=0)
    # tokenizer_kwargs' model_max_length is taken as is there (no cap at max_position_embeddings): here too
    asked = {"tokenizer_kwargs": {"model_max_length": 100}}
    ours, theirs = CrossEncoder(start_dir, **asked), TorchCrossEncoder(str(start_dir), **asked)
    assert ours.max_length == theirs.max_seq_length == 100
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5, rtol=0)
