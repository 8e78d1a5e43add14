"""Loading real and tricky Hugging Face checkpoints, exporting them, and the errors for bad ones."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
import transformers
from conftest import minilm_checkpoint, read_stsb
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
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary dirs left behind"
    with pytest.raises(KeyboardInterrupt):  # a first save that fails leaves no directory behind
        model.save_pretrained(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()
    monkeypatch.undo()
    model.save_pretrained(out)  # a normal save keeps unrelated files such as evaluation CSVs
    assert (out / "eval_results.csv").exists()


def test_export_has_normal_permissions(tiny_dir, tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    model = FlaxAutoModelForSequenceClassification.from_pretrained(tiny_dir[0])
    tokenizer = _word_tokenizer()
    out = model.save_pretrained(tmp_path / "a" / "new", tokenizer)
    for directory in (out, out.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o777 & ~umask, directory
    files = sorted(p for p in out.iterdir())
    assert "tokenizer_config.json" in [p.name for p in files]
    for path in files:
        assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def _word_tokenizer():
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]
    return transformers.BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def _random_bert(seed: int, num_labels: int = 2):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_bert(num_labels)).eval()


def _assert_same_tensors(ours: dict, reference) -> None:
    theirs = {k: v.detach().numpy() for k, v in reference.state_dict().items()}
    assert sorted(ours) == sorted(theirs)
    for key, value in ours.items():
        np.testing.assert_array_equal(np.asarray(value), theirs[key], err_msg=key)


def test_export_over_sharded_checkpoint_removes_its_weight_files(tmp_path):
    """A sharded model X (plus a torch pickle of it) overwritten by an export of model Y: only Y's weights
    remain, and crossjax and transformers both load Y."""
    from crossjax.models.checkpoints import read_state_dict

    x, y = _random_bert(1), _random_bert(2)
    out = tmp_path / "out"
    x.save_pretrained(out, max_shard_size="4KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    x_shards = sorted(set(index["weight_map"].values()))
    assert len(x_shards) > 1
    torch.save(x.state_dict(), out / "pytorch_model.bin")
    (out / "tf_model.h5").write_bytes(b"stale")
    (out / "eval_results.csv").write_text("epoch,steps,score\n")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "model-00001-of-00002.safetensors").write_bytes(b"not mine")  # nested: untouched

    y.save_pretrained(tmp_path / "y")
    FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path / "y").save_pretrained(out)

    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "checkpoints",
        "config.json",
        "config_sentence_transformers.json",
        "eval_results.csv",
        "model.safetensors",
        "modules.json",
        "sentence_bert_config.json",
    ]
    assert (out / "checkpoints" / "model-00001-of-00002.safetensors").read_bytes() == b"not mine"
    tensors, source = read_state_dict(out)
    assert source == out / "model.safetensors"
    _assert_same_tensors(tensors, y)
    reloaded = FlaxAutoModelForSequenceClassification.from_pretrained(out)
    _assert_same_tensors(reloaded.hf_state_dict(), y)
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    _assert_same_tensors({k: v.detach().numpy() for k, v in hf.state_dict().items()}, y)


def test_single_safetensors_file_wins_over_index_as_in_transformers(tmp_path):
    from crossjax.models.checkpoints import read_state_dict

    x, y = _random_bert(1), _random_bert(2)
    both = tmp_path / "both"
    x.save_pretrained(both, max_shard_size="4KB")  # index + shards of X
    y.save_pretrained(tmp_path / "y")
    shutil.copy(tmp_path / "y" / "model.safetensors", both)  # and the single file of Y
    assert (both / "model.safetensors.index.json").is_file()
    tensors, source = read_state_dict(both)
    assert source == both / "model.safetensors"
    _assert_same_tensors(tensors, y)
    hf = AutoModelForSequenceClassification.from_pretrained(both)  # transformers chooses the same file
    _assert_same_tensors({k: v.detach().numpy() for k, v in hf.state_dict().items()}, y)
    # And safetensors (even sharded) wins over a torch pickle.
    (both / "model.safetensors").unlink()
    torch.save(y.state_dict(), both / "pytorch_model.bin")
    tensors, source = read_state_dict(both)
    assert source == both / "model.safetensors.index.json"
    _assert_same_tensors(tensors, x)


def test_save_never_moves_the_directory_or_its_other_entries(tiny_dir, tmp_path):
    """A checkpoint folder inside the export directory (fit(output_path=out, checkpoint_path=out/ckpt)) is
    written by another thread while the model is saved: nothing of it may be moved, copied or lost."""
    import os
    import threading

    model = FlaxAutoModelForSequenceClassification.from_pretrained(tiny_dir[0])
    out = model.save_pretrained(tmp_path / "out")
    nested = out / "checkpoints"
    nested.mkdir()
    (out / "eval_results.csv").write_text("epoch,steps,score\n")
    identity = {p: os.stat(p).st_ino for p in (out, nested, out / "eval_results.csv")}
    stop = threading.Event()
    written: list[str] = []

    def writer():  # appends through an open file and creates new files by path, as orbax does
        with open(nested / "log.txt", "a") as log:
            i = 0
            while not stop.is_set() or i < 20:
                name = f"part-{i}"
                (nested / f"{name}.tmp").write_text(name)
                os.replace(nested / f"{name}.tmp", nested / name)
                log.write(name + "\n")
                log.flush()
                written.append(name)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(5):
            model.save_pretrained(out)
    finally:
        stop.set()
        thread.join()
    assert {p: os.stat(p).st_ino for p in identity} == identity
    assert (nested / "log.txt").read_text().split() == written
    for name in written:
        assert (nested / name).read_text() == name
    assert sorted(p.name for p in nested.iterdir()) == sorted([*written, "log.txt"])


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


def test_head_of_other_size_is_refused_or_reinitialised_with_warning_as_in_transformers(tiny_dir, caplog):
    """transformers refuses a head of another size than asked for (sentence-transformers 6.2 too: a 3-class NLI
    head loaded with num_labels=1 scored with a random head here, with only a warning); with
    ignore_mismatched_sizes=True it is initialised anew."""
    from crossjax import CrossEncoder

    directory, reference = tiny_dir
    AutoTokenizer.from_pretrained(minilm_checkpoint()).save_pretrained(directory)  # a CrossEncoder needs one
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(str(directory), num_labels=3)  # the oracle
    with pytest.raises(CheckpointError, match=r"head of another size than the 3 labels asked for.*ignore_mismatched"):
        FlaxAutoModelForSequenceClassification.from_pretrained(directory, num_labels=3)
    with pytest.raises(CheckpointError, match=r"model_kwargs=\{'ignore_mismatched_sizes': True\}"):
        CrossEncoder(directory, num_labels=1)
    assert CrossEncoder(directory, num_labels=3, model_kwargs={"ignore_mismatched_sizes": True}).num_labels == 3
    with caplog.at_level(logging.WARNING, logger="crossjax"):
        model, info = FlaxAutoModelForSequenceClassification.from_pretrained(
            directory, num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True
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


def test_inputs_past_the_models_tables_are_refused_as_in_transformers_not_scored_nan(tmp_path):
    """A raw call with rows longer than the position table, or ids past the vocabulary / token types: transformers
    raises; a JAX lookup out of range would give NaN logits silently."""
    from transformers import BertConfig

    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=16, num_labels=1,
    )  # fmt: skip
    theirs = AutoModelForSequenceClassification.from_config(config).eval()
    theirs.save_pretrained(tmp_path)
    ours = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    fine = np.array([[1, 5, 7, 2]])
    np.testing.assert_allclose(
        np.asarray(ours(fine, np.ones_like(fine))), theirs(torch.tensor(fine)).logits.detach().numpy(), atol=1e-5
    )
    cases = [
        ((np.full((1, 20), 5), np.ones((1, 20))), "20 tokens a row.*holds 16 .max_position_embeddings"),
        ((np.array([[1, 150, 2]]), np.ones((1, 3))), "input_ids holds 150.*100 .vocab_size"),
        ((fine, np.ones_like(fine), np.array([[0, 2, 0, 0]])), "token_type_ids holds 2.*type_vocab_size"),
    ]
    for arrays, message in cases:
        with pytest.raises((RuntimeError, IndexError)):
            theirs(*(torch.tensor(a, dtype=torch.long) for a in arrays))
        with pytest.raises(ValueError, match=message):
            ours(*arrays)


@pytest.mark.parametrize("family", ["bert", "modernbert"])  # modernbert: a call of its own (no token types)
def test_raw_calls_with_misshapen_or_additive_inputs_are_named_and_bad_ids_never_wrap_under_jit(family, tmp_path):
    """A JAX user's raw call: arrays of the wrong rank, shape or dtype are refused by name, eagerly and under
    ``nnx.jit`` (shapes are static), not left to a broadcasting error deep in JAX or broadcast silently; an
    additive mask (0 / -1e9) is refused where its values are concrete (read as 0/1 it inverts the mask); nested
    lists are read as arrays. Under jit ids cannot be checked: a negative one gives NaN as a too-large one does
    (a JAX gather would wrap it to the table's last row and score it), where transformers raises."""
    from flax import nnx
    from test_models_parity import FAMILIES

    theirs = AutoModelForSequenceClassification.from_config(FAMILIES[family](2)).eval()
    theirs.save_pretrained(tmp_path)
    ours = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)
    jitted = nnx.jit(lambda model, *arrays: model(*arrays))
    ids = np.array([[1, 5, 7, 2], [1, 9, 2, 0]])
    mask = (ids > 0).astype(np.int64)
    expected = theirs(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.detach().numpy()
    for call in (ours, lambda *arrays: jitted(ours, *arrays)):
        np.testing.assert_allclose(np.asarray(call(ids.tolist(), mask.tolist())), expected, atol=1e-5)
        cases = [
            ((ids[0], mask[0]), r"input_ids must be an integer array \(batch, tokens\).*got shape \(4,\)"),
            ((ids[:, :0], mask[:, :0]), r"at least one token, got shape \(2, 0\)"),
            ((ids, mask[:1]), r"attention_mask has shape \(1, 4\), input_ids \(2, 4\)"),
            ((ids, mask.T), r"attention_mask has shape \(4, 2\)"),
            ((ids, mask, ids[:, :3]), r"token_type_ids has shape \(2, 3\)"),
            ((ids.astype(np.float32), mask), "input_ids must hold integers, got float32"),
        ]
        for arrays, message in cases:
            with pytest.raises(ValueError, match=message):
                call(*arrays)
    with pytest.raises(ValueError, match="attention_mask holds -1000000000.0: .* 0/1 padding mask"):
        ours(ids, np.where(mask > 0, 0.0, -1e9).astype(np.float32))
    wrong = ids.copy()
    wrong[0, 1] = -1
    with pytest.raises(ValueError, match="input_ids holds -1"):
        ours(wrong, mask)
    logits = np.asarray(jitted(ours, wrong, mask))
    assert np.isnan(logits[0]).all()  # not row vocab_size - 1's score
    np.testing.assert_allclose(logits[1], expected[1], atol=1e-5)  # the other row is untouched


@pytest.mark.parametrize(
    "family, change, message",
    [
        ("deberta-v2", {"pooler_hidden_size": 16}, "pooler_hidden_size=16 differs from hidden_size=32"),
        ("modernbert", {"hidden_size": 36, "intermediate_size": 40}, "heads of 9 dimensions.*even head size"),
    ],
)
def test_configs_transformers_fails_on_in_its_forward_are_refused_by_name_at_load(family, change, message, tmp_path):
    from test_models_parity import FAMILIES

    config = FAMILIES[family](1)
    for name, value in change.items():
        setattr(config, name, value)
    theirs = AutoModelForSequenceClassification.from_config(config).eval()
    with pytest.raises(RuntimeError):  # a shape error deep in its forward
        theirs(torch.tensor([[1, 5, 7, 2]]))
    theirs.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_a_head_that_contradicts_the_checkpoints_own_config_is_refused_as_in_transformers(tiny_dir, tmp_path):
    """A 2-label head whose config.json lists 3 labels is a broken checkpoint: transformers refuses it; crossjax
    too (it re-initialises a head only at a size the caller asks for)."""
    directory, _ = tiny_dir
    broken = tmp_path / "broken"
    shutil.copytree(directory, broken)
    config = json.loads((broken / "config.json").read_text())
    config["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}
    config["label2id"] = {f"LABEL_{i}": i for i in range(3)}
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(str(broken))  # the oracle
    with pytest.raises(CheckpointError, match=r"do not fit the checkpoint's own config.*classifier.weight: \(2, 16\)"):
        FlaxAutoModelForSequenceClassification.from_pretrained(broken)
    asked = FlaxAutoModelForSequenceClassification.from_pretrained(broken, num_labels=4, ignore_mismatched_sizes=True)
    assert asked.num_labels == 4


@pytest.mark.parametrize("mapped", ["AutoModelForSequenceClassification", "AutoModel", "AutoConfig"])
def test_a_checkpoint_that_needs_its_own_code_is_refused_without_a_prompt(tiny_dir, tmp_path, mapped):
    """A config whose auto_map points a model (or config) class at the checkpoint's own code (jina-reranker v1:
    model_type "bert" with JinaBert layers) is refused by name: loaded into transformers' class, as transformers
    does without trust_remote_code, its weights would not fit. transformers' interactive prompt never runs."""
    import time

    from crossjax import CrossEncoder

    directory, _ = tiny_dir
    custom = tmp_path / "custom"
    shutil.copytree(directory, custom)
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {mapped: "modeling_jina.JinaBertForSequenceClassification", "AutoTokenizer": "x.Tok"}
    (custom / "config.json").write_text(json.dumps(config))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match=rf"needs its own modelling code \({mapped} -> modeling_jina"):
        CrossEncoder(str(custom))
    assert time.perf_counter() - started < 5  # transformers' prompt waits 15 s for an answer
    config["auto_map"] = {"AutoTokenizer": "x.Tok"}  # a custom tokenizer alone: the model is transformers'
    (custom / "config.json").write_text(json.dumps(config))
    assert FlaxAutoModelForSequenceClassification.from_pretrained(custom).num_labels == 2


def test_classifier_loaded_with_one_output_exports_a_folder_transformers_reads(tmp_path):
    """An NLI classifier made a reranker (num_labels=1): its problem_type was the replaced head's, and
    transformers refuses to read "single_label_classification" next to num_labels=1."""
    config = tiny_bert(3)
    config.problem_type = "single_label_classification"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp_path / "nli")
    model = FlaxAutoModelForSequenceClassification.from_pretrained(
        tmp_path / "nli", num_labels=1, ignore_mismatched_sizes=True
    )
    assert model.config.problem_type is None
    model.save_pretrained(tmp_path / "reranker")
    reloaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reranker", output_loading_info=True)
    assert reloaded.config.num_labels == 1 and reloaded.config.problem_type is None
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # A config transformers itself refuses is its error, not "unknown model type".
    saved = tmp_path / "reranker" / "config.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "problem_type": "single_label_classification"}))
    with pytest.raises(CheckpointError, match="Could not read the config.*requires `num_labels > 1`"):
        FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path / "reranker")


def test_loading_report_names_keys_as_transformers_does(tiny_dir, tmp_path):
    """A re-sized head is listed as mismatched only (not also missing), and a base checkpoint's unused
    tensors (RoBERTa's pooler) by the names in its file."""

    def names(info):
        kinds = ("missing_keys", "unexpected_keys", "mismatched_keys")
        return {kind: sorted(k[0] if isinstance(k, tuple) else k for k in info[kind]) for kind in kinds}

    directory, _ = tiny_dir
    _, ours = FlaxAutoModelForSequenceClassification.from_pretrained(
        directory, num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True
    )
    _, theirs = AutoModelForSequenceClassification.from_pretrained(
        directory, num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert names(ours) == names(theirs) and names(ours)["mismatched_keys"], names(ours)

    config = transformers.RobertaConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
        max_position_embeddings=40, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.RobertaModel(config).save_pretrained(tmp_path / "base")  # with its pooler
    _, ours = FlaxAutoModelForSequenceClassification.from_pretrained(tmp_path / "base", output_loading_info=True)
    _, theirs = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base", output_loading_info=True)
    assert names(ours)["unexpected_keys"] == names(theirs)["unexpected_keys"] == [
        "pooler.dense.bias", "pooler.dense.weight"
    ]
    assert names(ours)["missing_keys"] == names(theirs)["missing_keys"]


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


@pytest.mark.parametrize("layers", [1, 3])
def test_config_with_other_layer_count_loads_what_the_checkpoint_has(tiny_dir, layers):
    """The checkpoint has 1 layer; a config asking for 3 loads layer 0 and initialises 1 and 2 (missing keys as
    transformers names them), one asking for 1 of a 3-layer checkpoint ignores the rest (unexpected keys)."""
    directory, reference = tiny_dir
    if layers == 1:  # a 3-layer checkpoint read with a 1-layer config
        torch.manual_seed(2)
        reference = AutoModelForSequenceClassification.from_config(
            transformers.BertConfig(**{**tiny_bert(2).to_dict(), "num_hidden_layers": 3})
        ).eval()
        reference.save_pretrained(directory.parent / "deep")
        directory = directory.parent / "deep"
    kwargs = {"num_hidden_layers": layers}
    _, theirs = AutoModelForSequenceClassification.from_pretrained(directory, output_loading_info=True, **kwargs)
    for scan_layers in (True, False):
        model, ours = FlaxAutoModelForSequenceClassification.from_pretrained(
            directory, config_kwargs=kwargs, scan_layers=scan_layers, output_loading_info=True
        )
        assert sorted(ours["missing_keys"]) == sorted(theirs["missing_keys"])
        assert sorted(ours["unexpected_keys"]) == sorted(theirs["unexpected_keys"])
        state = model.hf_state_dict()
        torch_state = reference.state_dict()
        loaded = [k for k in state if k in torch_state and k not in theirs["missing_keys"]]
        assert "bert.encoder.layer.0.attention.self.query.weight" in loaded
        for key in loaded:
            np.testing.assert_array_equal(state[key], torch_state[key].numpy(), err_msg=key)
        for key in theirs["missing_keys"]:  # newly initialised: normal(0, 0.02) weights, zero biases, unit norms
            value = state[key]
            if key.endswith("LayerNorm.weight"):
                np.testing.assert_array_equal(value, 1.0)
            elif key.endswith("bias"):
                np.testing.assert_array_equal(value, 0.0)
            else:
                assert 0.01 < value.std() < 0.03, key


def test_loading_compiles_one_initialiser_for_what_the_checkpoint_lacks(tiny_dir):
    """Eagerly, every initialiser was a program of its own (47 compiles for MiniLM); loading now compiles one,
    whose initialisers are only those of the missing head, and a random model is one program too."""
    import jax

    directory, reference = tiny_dir
    compiles = []

    def listen(event, duration, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    cache = jax.config.jax_enable_compilation_cache
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        jax.config.update("jax_enable_compilation_cache", False)  # count compiles, not cache loads
        model = FlaxAutoModelForSequenceClassification.from_pretrained(
            directory, num_labels=3, seed=5, ignore_mismatched_sizes=True
        )
        loaded = len(compiles)
        again = FlaxAutoModelForSequenceClassification.from_config(model.config, seed=5)
        fresh = len(compiles) - loaded
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
        jax.monitoring.unregister_event_duration_listener(listen)
    assert loaded <= 1 and fresh <= 1, (loaded, fresh)
    # The head drawn for the missing classifier is the one a random model of the same seed draws.
    np.testing.assert_array_equal(np.asarray(model.classifier.kernel[...]), np.asarray(again.classifier.kernel[...]))
    np.testing.assert_array_equal(
        np.asarray(model.embeddings.word.embedding[...]),
        reference.bert.embeddings.word_embeddings.weight.detach().numpy(),
    )


def test_from_pretrained_returns_an_eval_model_and_takes_transformers_dtype_forms(tiny_dir):
    """transformers' from_pretrained returns the model in eval mode: dropout off, the same logits every call.
    Its dtype forms (torch dtypes, "auto") name the compute dtype; others are refused before any forward pass."""
    import jax.numpy as jnp

    path, pt_model = tiny_dir
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, size=(3, 9)).astype(np.int32)
    mask = np.ones_like(ids)
    with torch.no_grad():
        expected = pt_model(input_ids=torch.from_numpy(ids).long()).logits.numpy()
    for dtype in (jnp.float32, "auto", None, torch.float32):
        model = FlaxAutoModelForSequenceClassification.from_pretrained(path, dtype=dtype)
        np.testing.assert_allclose(np.asarray(model(ids, mask)), expected, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(np.asarray(model(ids, mask)), np.asarray(model(ids, mask)))
    bf16 = FlaxAutoModelForSequenceClassification.from_pretrained(path, dtype=torch.bfloat16)
    assert jnp.dtype(bf16.dtype) == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf16(ids, mask)), expected, atol=5e-2, rtol=0)
    for bad in (torch.float64, "int8", np.float64):
        with pytest.raises(ValueError, match="not one crossjax computes in"):
            FlaxAutoModelForSequenceClassification.from_pretrained(path, dtype=bad)


def test_from_pretrained_reads_transformers_keywords_as_transformers_does(tiny_dir):
    """Keywords that name config attributes override the checkpoint's config, ``config=`` replaces it, and
    ``torch_dtype`` is dtype's old name, each giving transformers' config; a keyword that is none of those is
    a TypeError in both libraries, and PyTorch loading options are refused by name."""
    import jax.numpy as jnp
    from transformers import AutoConfig

    path, _ = tiny_dir
    overrides = dict(hidden_dropout_prob=0.0, classifier_dropout=0.3, id2label={0: "relevant"})
    overrides["ignore_mismatched_sizes"] = True  # one label where the checkpoint has two
    theirs = AutoModelForSequenceClassification.from_pretrained(path, **overrides).config
    ours = FlaxAutoModelForSequenceClassification.from_pretrained(path, **overrides)
    for key in ("hidden_dropout_prob", "classifier_dropout", "num_labels", "id2label"):
        assert getattr(ours.config, key) == getattr(theirs, key), key
    assert ours.num_labels == 1 and ours.dropout.rate == 0.3

    three = AutoConfig.from_pretrained(path, num_labels=3, attention_probs_dropout_prob=0.0)
    theirs = AutoModelForSequenceClassification.from_pretrained(path, config=three, ignore_mismatched_sizes=True)
    ours = FlaxAutoModelForSequenceClassification.from_pretrained(path, config=three, ignore_mismatched_sizes=True)
    assert ours.num_labels == theirs.config.num_labels == 3
    assert ours.config.attention_probs_dropout_prob == 0.0 and three.num_labels == 3  # the caller's config kept
    assert jnp.dtype(FlaxAutoModelForSequenceClassification.from_pretrained(path, torch_dtype="bfloat16").dtype) == (
        jnp.bfloat16
    )
    for call in (dict(not_a_setting=1), dict(config=three, hidden_dropout_prob=0.0)):
        with pytest.raises(TypeError):
            AutoModelForSequenceClassification.from_pretrained(path, **call)
        with pytest.raises(TypeError, match="unexpected keyword arguments"):
            FlaxAutoModelForSequenceClassification.from_pretrained(path, **call)
    with pytest.raises(ValueError, match=r"\['device_map'\] are PyTorch loading options"):
        FlaxAutoModelForSequenceClassification.from_pretrained(path, device_map="auto")
    # transformers' Flax classes' keywords: from_pt (read PyTorch weights: what crossjax does) is taken; outputs
    # the call does not return and parameters kept apart from the model are refused by name
    assert FlaxAutoModelForSequenceClassification.from_pretrained(path, from_pt=True).num_labels == 2
    for call, message in [
        (dict(output_hidden_states=True), r"\['output_hidden_states'\]: a crossjax model's call returns the logits"),
        (dict(config_kwargs={"output_attentions": True}), r"\['output_attentions'\]"),
        (dict(_do_init=False), "_do_init=False .* nnx.split"),
    ]:
        with pytest.raises(ValueError, match=message):
            FlaxAutoModelForSequenceClassification.from_pretrained(path, **call)
    # transformers' defaults and the keywords it retired are accepted; a config file; ST's config_kwargs labels
    same = dict(weights_only=True, use_safetensors=True, subfolder="", low_cpu_mem_usage=True)
    same["config"] = path / "config.json"
    assert AutoModelForSequenceClassification.from_pretrained(path, **same).config.num_labels == 2
    assert FlaxAutoModelForSequenceClassification.from_pretrained(path, **same).num_labels == 2
    resized = FlaxAutoModelForSequenceClassification.from_pretrained(
        path, config_kwargs={"num_labels": 3}, ignore_mismatched_sizes=True
    )
    assert resized.num_labels == 3
