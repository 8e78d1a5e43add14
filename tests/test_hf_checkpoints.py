"""Loading real and tricky Hugging Face checkpoints, exporting them, and the errors for bad ones."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
import transformers
from conftest import read_stsb
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from crossjax.models import CheckpointError, FlaxAutoModelForSequenceClassification


def tiny_bert(num_labels: int = 2) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=20,
        max_position_embeddings=32,
        num_labels=num_labels,
    )


@pytest.fixture()
def tiny_dir(tmp_path):
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_config(tiny_bert(2)).eval()
    model.save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny", model


def batch_of(tokenizer, pairs):
    enc = tokenizer(
        [a for a, _ in pairs],
        [b for _, b in pairs],
        padding=True,
        truncation=True,
        max_length=128,
        return_tensors="np",
    )
    return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_minilm_encoder_matches_transformers_on_stsb(minilm_dir):
    pairs = [(a, b) for a, b, _ in read_stsb("dev", limit=16)]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    batch = batch_of(tokenizer, pairs)
    model, info = FlaxAutoModelForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=1, output_loading_info=True
    )
    # A bi-encoder checkpoint: no "bert." prefix, no head. Only the head is new, as in transformers.
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert info["unexpected_keys"] == []
    model.eval()
    ours = np.asarray(model.encode(**batch))
    reference = AutoModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        theirs = reference(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
    real = batch["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)


def test_minilm_export_scores_equal_in_sentence_transformers(minilm_dir, tmp_path):
    from sentence_transformers import CrossEncoder as TorchCrossEncoder

    pairs = [(a, b) for a, b, _ in read_stsb("dev", limit=12)]
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = FlaxAutoModelForSequenceClassification.from_pretrained(minilm_dir, num_labels=1, seed=3)
    model.eval()
    out = model.save_pretrained(tmp_path / "ce", tokenizer, max_length=96)
    ours = 1 / (1 + np.exp(-np.asarray(model(**batch_of(tokenizer, pairs)))[:, 0]))

    ce = TorchCrossEncoder(str(out), device="cpu")
    assert type(ce.activation_fn).__name__ == "Sigmoid"
    assert ce.max_seq_length == 96
    np.testing.assert_allclose(ce.predict(pairs, batch_size=5), ours, atol=1e-5, rtol=0)
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))


def test_export_writes_identity_activation_for_classifiers(tiny_dir, tmp_path):
    directory, _ = tiny_dir
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory)
    out = model.save_pretrained(tmp_path / "x")
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["model_type"] == "CrossEncoder"
    assert st_config["activation_fn"] == "torch.nn.modules.linear.Identity"
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"}
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype("float32")}
        assert f.get_tensor("bert.encoder.layer.0.attention.self.query.weight").shape == (16, 16)


def test_interrupted_save_keeps_previous_model(tiny_dir, tmp_path, monkeypatch):
    directory, _ = tiny_dir
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory)
    out = model.save_pretrained(tmp_path / "keep")
    (out / "eval_results.csv").write_text("epoch,steps,score\n")
    before = (out / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(type(model), "hf_state_dict", boom)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(out)
    assert (out / "model.safetensors").read_bytes() == before
    assert (out / "eval_results.csv").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".keep")], "temporary dirs left behind"
    monkeypatch.undo()
    model.save_pretrained(out)  # a normal save keeps unrelated files such as evaluation CSVs
    assert (out / "eval_results.csv").exists()


def test_sharded_safetensors_and_prefixless_and_pytorch_bin(tiny_dir, tmp_path):
    directory, reference = tiny_dir
    ids = np.array([[2, 5, 9, 3, 0]])
    mask = np.array([[1, 1, 1, 1, 0]])
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()

    sharded = tmp_path / "sharded"
    reference.save_pretrained(sharded, max_shard_size="4KB")
    assert (sharded / "model.safetensors.index.json").exists()
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(directory / "config.json", binary)
    torch.save(reference.state_dict(), binary / "pytorch_model.bin")
    for source in (sharded, binary):
        model = FlaxAutoModelForSequenceClassification.from_pretrained(source)
        model.eval()
        np.testing.assert_allclose(np.asarray(model(ids, mask)), expected, atol=1e-5)


def test_missing_config_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"empty has no config\.json"):
        FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path / "empty")


def test_truncated_safetensors_is_a_clear_error(tiny_dir, tmp_path):
    directory, _ = tiny_dir
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        FlaxAutoModelForSequenceClassification.from_pretrained(broken)


def test_unknown_model_type_lists_supported(tmp_path):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(CheckpointError, match=r"'gpt2' is not supported.*bert.*distilbert.*electra.*roberta"):
        FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path / "odd")
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "no-such-arch"}))
    with pytest.raises(CheckpointError, match=r"'no-such-arch' is not supported.*bert"):
        FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path / "odd")


def test_head_of_other_size_is_reinitialised_with_warning(tiny_dir, caplog):
    directory, reference = tiny_dir
    with caplog.at_level(logging.WARNING, logger="crossjax"):
        model, info = FlaxAutoModelForSequenceClassification.from_pretrained(
            directory, num_labels=3, output_loading_info=True
        )
    assert model.num_labels == 3
    assert {k for k, _, _ in info["mismatched_keys"]} == {"classifier.weight", "classifier.bias"}
    assert "shapes did not match" in caplog.text and "classifier.weight" in caplog.text
    assert "(2, 16)" in caplog.text and "(3, 16)" in caplog.text
    # The encoder itself was still loaded.
    np.testing.assert_array_equal(
        np.asarray(model.embeddings.word.embedding[...]),
        reference.bert.embeddings.word_embeddings.weight.detach().numpy(),
    )
    head = np.asarray(model.classifier.kernel[...])
    assert head.shape == (16, 3) and 0.005 < head.std() < 0.05  # normal(0, initializer_range=0.02)
    np.testing.assert_array_equal(np.asarray(model.classifier.bias[...]), 0.0)


def test_import_crossjax_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, crossjax, crossjax.models, crossjax.data; assert 'torch' not in sys.modules, 'torch!'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_url_save_directory_is_refused(tiny_dir):
    directory, _ = tiny_dir
    model = FlaxAutoModelForSequenceClassification.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"'gs://bucket/run' is a URL.*local directory"):
        model.save_pretrained("gs://bucket/run")
