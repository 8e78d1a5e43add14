# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
"""ONNX export: onnxruntime's logits equal crossjax's for every registered family, at shapes other than the
traced one; the layout is the one sentence-transformers' ONNX backend reads; serving with the tokenizer
reproduces ``CrossEncoder.predict``.

The tiny config builders are test_models_parity's ``FAMILIES``: a family registered in
``crossjax.models.auto.model_registry()`` is covered here as soon as it has one there.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_fit_behaviour import tiny_dir, tiny_dirs  # noqa: F401 - fixtures used by name
from test_models_parity import FAMILIES
from transformers import AutoModelForSequenceClassification

from crossjax.models import FlaxAutoModelForSequenceClassification
from crossjax.models.auto import model_registry
from crossjax.onnx import ONNX_FILE, ONNX_SUBFOLDER, example_inputs, export_onnx, onnx_feed

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

# Traced at (2, 7) inside export_onnx; checked here at other batch sizes and lengths, 1 included.
OTHER_SHAPES = [(5, 23), (1, 4)]


@pytest.mark.parametrize("model_type", sorted(model_registry()))
def test_onnxruntime_logits_equal_crossjax_for_every_family(model_type, tmp_path):
    if model_type not in FAMILIES:
        pytest.fail(f"no tiny config builder for {model_type!r}: add one to tests/test_models_parity.py FAMILIES")
    torch.manual_seed(0)
    config = FAMILIES[model_type](2)
    pt = AutoModelForSequenceClassification.from_config(config).eval()
    pt.save_pretrained(tmp_path)
    path = export_onnx(tmp_path, verify=False)  # checked below, against crossjax rather than PyTorch
    assert path == tmp_path.resolve() / ONNX_SUBFOLDER / ONNX_FILE

    graph = onnx.load(str(path)).graph
    inputs = [i.name for i in graph.input]
    # The oracle: the PyTorch model embeds several token types.
    has_types = any(k.endswith("token_type_embeddings.weight") and v.shape[0] > 1 for k, v in pt.state_dict().items())
    assert inputs == ["input_ids", "attention_mask"] + (["token_type_ids"] if has_types else [])
    assert [o.name for o in graph.output] == ["logits"]
    for graph_input in graph.input:  # both axes symbolic: any batch size and sequence length
        dims = graph_input.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims] == [True, True], graph_input

    crossjax_model = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    crossjax_model.eval()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, length in OTHER_SHAPES:
        feed = example_inputs(config, batch, length, seed=batch)
        (logits,) = session.run(["logits"], feed)
        ours = np.asarray(crossjax_model(feed["input_ids"], feed["attention_mask"], feed.get("token_type_ids")))
        assert logits.shape == (batch, 2)
        np.testing.assert_allclose(logits, ours, atol=1e-4, rtol=0)


def test_cross_encoder_export_served_with_its_tokenizer_matches_predict(tiny_dir, tmp_path):
    """The README recipe: the tokenizer from the export (truncating at the saved max_length) + onnxruntime + the
    saved activation = predict; the graph has the opset asked for; exported from a saved folder into another,
    the graph comes with the model's files (config, tokenizer). (A random 2-layer BERT with MiniLM's real
    tokenizer.)"""
    import onnx
    from transformers import AutoTokenizer

    from crossjax import CrossEncoder

    model = CrossEncoder(tiny_dir, max_length=16)  # the second pair is longer: truncated
    model.save(tmp_path / "saved")
    path = export_onnx(tmp_path / "saved", tmp_path / "export", opset=17)  # the lowest the exporter can write
    assert path.parent.name == "onnx" and not (tmp_path / "saved" / "onnx").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "config_sentence_transformers.json"):
        assert (tmp_path / "export" / name).read_bytes() == (tmp_path / "saved" / name).read_bytes(), name
    assert {e.domain: e.version for e in onnx.load(str(path)).opset_import}[""] == 17  # as asked

    pairs = [
        ("A man is eating food.", "A man eats something."),
        ("A woman plays the violin.", "Someone is playing an instrument on a stage in front of many people."),
        ("The cat sits.", "Stocks fell sharply on Monday."),
    ]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    encoded = tokenizer(first, second, padding=True, truncation=True, return_tensors="np")
    assert encoded["input_ids"].shape[1] == 16
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], onnx_feed(session, encoded))
    np.testing.assert_allclose(logits[:, 0], model.predict(pairs, activation_fn="identity"), atol=1e-4, rtol=0)
    # No activation in the graph: the saved one (sigmoid) applied outside gives predict's scores.
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[:, 0])), model.predict(pairs), atol=1e-5, rtol=0)


def test_export_onnx_rejects_what_it_cannot_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        export_onnx(tmp_path / "missing")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(tmp_path, opset=7)
    # torch's exporter writes opset 18 and cannot convert LayerNormalization below 17: 14-16 came out as 18
    with pytest.raises(ValueError, match=r"opset must be an integer >= 17 .*LayerNormalization.*got 16"):
        export_onnx(tmp_path, opset=16)
    with pytest.raises(ValueError, match=r"opset 999 is newer than the installed onnx"):
        export_onnx(tmp_path, opset=999)


def test_an_empty_output_dir_is_refused_not_read_as_the_working_directory(tiny_dir, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(ValueError, match="empty string"):
        export_onnx(tiny_dir, output_dir="")
    assert list(cwd.iterdir()) == []


def test_a_folder_with_missing_or_broken_weights_is_named(tiny_dir, tmp_path):
    from crossjax.models.checkpoints import CheckpointError

    folder = tmp_path / "model"
    shutil.copytree(tiny_dir, folder)
    weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors could not be read by transformers"):
        export_onnx(folder, tmp_path / "out")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        export_onnx(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_without_a_trained_head_is_refused(minilm_dir, tmp_path):
    """all-MiniLM-L6-v2 is a bi-encoder's base model: transformers would add a random 2-label head that neither
    crossjax nor sentence-transformers (1 label, their own random head) would read back."""
    with pytest.raises(ValueError, match="no trained classification head"):
        export_onnx(minilm_dir, tmp_path / "out")


def test_weights_kept_beside_a_large_graph_take_the_name_optimum_fetches(tiny_dir, tmp_path, monkeypatch):
    """Over protobuf's 2 GB limit (forced here) the weights go to ``model.onnx_data``, the one name Optimum
    requests from the hub, and the graph still runs (export_onnx's own check against PyTorch included)."""
    import crossjax.onnx
    from crossjax import CrossEncoder

    monkeypatch.setattr(crossjax.onnx, "_SINGLE_FILE_LIMIT_BYTES", 0)
    model = CrossEncoder(tiny_dir)
    path = export_onnx(model, tmp_path / "export")
    assert sorted(p.name for p in path.parent.iterdir()) == [ONNX_FILE, ONNX_FILE + "_data"]
    graph = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {ONNX_FILE + "_data"}
    inputs = example_inputs(model.model.config, 3, 11, seed=2)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], onnx_feed(session, inputs))
    pt = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        expected = pt(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)

    # Exported again under the limit, the graph holds its weights: the earlier export's weights file goes.
    monkeypatch.setattr(crossjax.onnx, "_SINGLE_FILE_LIMIT_BYTES", 2**31)
    path = export_onnx(tmp_path / "export")
    assert sorted(p.name for p in path.parent.iterdir()) == [ONNX_FILE]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], onnx_feed(session, inputs))[0], expected, atol=1e-5, rtol=0)
