"""sentence-transformers 6's ``CrossEncoder`` call forms, checked against sentence-transformers 6.2 itself on the
same saved model: its positional and deprecated arguments, ``max_length`` / ``max_seq_length`` /
``tokenizer.model_max_length``, activations assigned or saved by name, which saved prompts apply, and the
errors bad pairs get (never a NaN, never a silently wrong pair).
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fit_behaviour import make_examples, tiny_dir, tiny_dirs  # noqa: F401 - fixtures used by name

from crossjax import CrossEncoder

torch = pytest.importorskip("torch")
st = pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def saved(tiny_dir, tmp_path_factory) -> Path:
    """A crossjax save of the tiny model: both libraries load the same weights, head and activation."""
    return CrossEncoder(tiny_dir).save(tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, str]]:
    pairs = [tuple(e.texts) for e in make_examples(5, seed=41)]
    return pairs + [(" ".join(["long"] * 300), "text")]  # past the tiny model's 128 positions untruncated


def test_max_length_lives_in_the_tokenizer_as_in_sentence_transformers(saved, pairs):
    ours, theirs = CrossEncoder(saved), st.CrossEncoder(str(saved))
    assert ours.max_length == ours.max_seq_length == ours.tokenizer.model_max_length == theirs.max_seq_length
    for set_limit in (
        lambda m: setattr(m, "max_seq_length", 9),
        lambda m: setattr(m.tokenizer, "model_max_length", 12),
    ):
        set_limit(ours)
        set_limit(theirs)
        assert ours.max_length == theirs.max_seq_length
        np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5)
    ours.max_length = 16
    assert ours.tokenizer.model_max_length == 16


@pytest.mark.parametrize("value", [0, 3, 129, 600])
def test_a_max_length_the_model_cannot_take_is_refused_when_set_and_when_used(saved, pairs, value):
    # 3 = BERT's pair special tokens (the tokenizer cannot truncate below them); 128 = the tiny model's positions
    with pytest.raises(ValueError, match="must be between 4 .* and the model's position limit 128"):
        CrossEncoder(saved, max_length=value)
    model = CrossEncoder(saved)
    with pytest.raises(ValueError, match="must be between 4"):
        model.max_seq_length = value
    model.tokenizer.model_max_length = value  # unchecked there: the next use refuses it, no NaN scores
    with pytest.raises(ValueError, match=r"max_length \(tokenizer.model_max_length\)"):
        model.predict(pairs)


def test_legacy_positional_and_renamed_constructor_arguments(saved, pairs):
    reference = CrossEncoder(saved, max_length=32)
    legacy = CrossEncoder(saved, 1, 32, None, "cpu")  # num_labels, max_length, activation_fn, device
    assert legacy.max_length == 32 and legacy.device == "cpu"
    renamed = CrossEncoder(model_name=str(saved), tokenizer_args={}, automodel_args={}, config_args={}, max_length=32)
    np.testing.assert_array_equal(legacy.predict(pairs), reference.predict(pairs))
    np.testing.assert_array_equal(renamed.predict(pairs), reference.predict(pairs))
    with pytest.raises(TypeError, match="got both 'tokenizer_args'"):
        CrossEncoder(saved, tokenizer_args={"a": 1}, tokenizer_kwargs={"a": 2})
    same = CrossEncoder(saved, tokenizer_args={"use_fast": True}, tokenizer_kwargs={"use_fast": True}, max_length=32)
    np.testing.assert_array_equal(same.predict(pairs), reference.predict(pairs))  # equal values under both names
    with pytest.raises(TypeError, match="device must be a string .*tokenizer_kwargs=... and config_kwargs=... by name"):
        CrossEncoder(saved, 1, 32, None, {"use_fast": True})  # crossjax < 0.14's fifth positional argument
    with pytest.raises(ValueError, match=r"activation_fn='cuda:0' is a device: .* pass device='cuda:0' by name"):
        CrossEncoder(saved, 1, 32, "cuda:0")  # sentence-transformers < 4's fourth positional argument
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_labels must be an integer >= 1"):
            CrossEncoder(saved, num_labels=bad)


def test_predict_and_rank_take_sentence_transformers_6_arguments(saved, pairs):
    ours, theirs = CrossEncoder(saved), st.CrossEncoder(str(saved))
    expected = theirs.predict(pairs, activation_fn=torch.nn.Tanh())
    np.testing.assert_allclose(ours.predict(pairs, None, None, 2, activation_fct=torch.nn.Tanh()), expected, atol=1e-5)
    np.testing.assert_allclose(
        ours.predict(sentences=pairs, num_workers=4, activation_fn=torch.tanh), expected, atol=1e-5
    )
    for legacy in ((32,), (32, True), (32, False)):  # crossjax < 0.14's predict(pairs, batch_size, show_progress_bar)
        with pytest.raises(TypeError, match="must be a string, got .*batch_size="):
            ours.predict(pairs, *legacy)
    query, documents = pairs[0][0], [b for _, b in pairs]
    assert [r["corpus_id"] for r in ours.rank(query, documents, 3, True, None, None, 2, apply_softmax=True)] == [
        r["corpus_id"] for r in theirs.rank(query, documents, top_k=3)
    ]
    assert ours.rank(query, documents, convert_to_tensor=True)[0]["score"] == pytest.approx(
        theirs.rank(query, documents)[0]["score"], abs=1e-5
    )
    # An empty call keeps the requested output type.
    assert isinstance(ours.predict([], convert_to_tensor=True), jax.Array)
    assert ours.predict([], convert_to_numpy=False) == theirs.predict([], convert_to_numpy=False) == []


def test_a_progress_bar_asked_for_is_drawn_for_one_batch_too(saved, pairs, capsys):
    """sentence-transformers draws the bar it is asked for whatever the number of batches; crossjax drew none
    for a call of one batch."""
    ours, theirs = CrossEncoder(saved), st.CrossEncoder(str(saved))
    for model in (theirs, ours):
        model.predict(pairs[:2], show_progress_bar=True)
        assert "Batches: 100%" in capsys.readouterr().err, type(model).__module__
        model.predict(pairs[:2], show_progress_bar=False)
        assert "Batches" not in capsys.readouterr().err


def test_pairs_are_ordered_pairs_of_texts(saved, pairs):
    model = CrossEncoder(saved)
    np.testing.assert_array_equal(model.predict(p for p in pairs), model.predict(pairs))  # any iterable
    np.testing.assert_array_equal(model.predict(np.array(pairs)), model.predict(pairs))
    with pytest.raises(ValueError, match="Pair 0: expected two texts"):
        model.predict([{"query": "who", "document": "someone"}])  # not scored on its keys
    for unordered in ({"a b", "c d"}, {"query": "who", "document": "someone"}, "a b"):
        with pytest.raises(ValueError, match="takes one .text_a, text_b. pair or a list of them"):
            model.predict(unordered)


def test_activation_assigned_like_sentence_transformers(saved, pairs, tmp_path):
    ours, theirs = CrossEncoder(saved), st.CrossEncoder(str(saved))
    for activation in (torch.nn.Tanh(), torch.nn.Softplus(), torch.nn.GELU()):
        ours.activation_fn = activation
        theirs.activation_fn = activation
        np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5)
    assert ours.default_activation_function is ours.activation_fn
    ours.activation_fn = "identity"
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs, activation_fn=torch.nn.Identity()), atol=1e-5)
    # A model sentence-transformers saved with an activation outside the first five loads with it here.
    theirs.activation_fn = torch.nn.LeakyReLU()
    theirs.save(str(tmp_path / "leaky"))
    reloaded = CrossEncoder(tmp_path / "leaky")
    np.testing.assert_allclose(
        reloaded.predict(pairs), st.CrossEncoder(str(tmp_path / "leaky")).predict(pairs), atol=1e-5
    )


def test_a_saved_activation_path_outside_torch_falls_back_as_in_sentence_transformers(saved, pairs, tmp_path):
    folder = shutil.copytree(saved, tmp_path / "custom")
    for name in ("config_sentence_transformers.json", "config.json"):
        content = json.loads((folder / name).read_text())
        if name == "config.json":
            content["sentence_transformers"]["activation_fn"] = "mypackage.activations.Scaled"
        else:
            content["activation_fn"] = "mypackage.activations.Scaled"
        (folder / name).write_text(json.dumps(content))
    np.testing.assert_allclose(
        CrossEncoder(folder).predict(pairs), st.CrossEncoder(str(folder)).predict(pairs), atol=1e-5
    )
    content = json.loads((folder / "config_sentence_transformers.json").read_text())
    content["activation_fn"] = "torch.nn.modules.activation.PReLU"  # a torch module without a JAX form here
    (folder / "config_sentence_transformers.json").write_text(json.dumps(content))
    assert type(st.CrossEncoder(str(folder)).activation_fn).__name__ == "PReLU"
    with pytest.raises(ValueError, match="PReLU.*activation_fn="):
        CrossEncoder(folder)


def _torch_path(activation) -> str:
    return f"{type(activation).__module__}.{type(activation).__name__}"


def test_the_saved_activation_is_read_where_sentence_transformers_reads_it(saved, tmp_path):
    """Its own file's activation counts only in a CrossEncoder save, and one outside torch there falls back to
    config.json's, as sentence-transformers 6.2 does (not straight to the default)."""
    from crossjax.losses import activation_name_for_export

    tanh, identity = "torch.nn.modules.activation.Tanh", "torch.nn.modules.linear.Identity"
    cases = {"bi": ("SentenceTransformer", tanh), "untrusted": ("CrossEncoder", "mypackage.activations.Scaled")}
    for name, (model_type, in_file) in cases.items():
        folder = shutil.copytree(saved, tmp_path / name)
        st_config = json.loads((folder / "config_sentence_transformers.json").read_text())
        st_config.update(model_type=model_type, activation_fn=in_file)
        (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))
        config = json.loads((folder / "config.json").read_text())
        config["sentence_transformers"]["activation_fn"] = identity
        (folder / "config.json").write_text(json.dumps(config))
        theirs = _torch_path(st.CrossEncoder(str(folder)).activation_fn)
        assert theirs == identity, name
        assert activation_name_for_export(CrossEncoder(folder).activation_fn) == theirs, name


def test_a_bi_encoder_folder_s_prompts_are_not_applied(saved, pairs, tmp_path):
    """sentence-transformers 6 reads prompts only from a CrossEncoder save; a bi-encoder's query prompt would
    otherwise be prepended to every pair."""
    folder = shutil.copytree(saved, tmp_path / "bi")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    config.update(model_type="SentenceTransformer", prompts={"query": "query: "}, default_prompt_name="query")
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    ours, theirs = CrossEncoder(folder), st.CrossEncoder(str(folder))
    assert (ours.prompts, ours.default_prompt_name) == (theirs.prompts, theirs.default_prompt_name) == ({}, None)
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5)


def test_save_takes_sentence_transformers_arguments(saved, tmp_path):
    model = CrossEncoder(saved)
    model.save(tmp_path / "no_card", create_model_card=False)
    assert not (tmp_path / "no_card" / "README.md").exists()
    model.save(tmp_path / "named", model_name="my-org/my-reranker")
    assert "my-org/my-reranker" in (tmp_path / "named" / "README.md").read_text()
    model.save(tmp_path / "bin", safe_serialization=False)  # safetensors, as sentence-transformers 6.2 writes
    assert (tmp_path / "bin" / "model.safetensors").is_file() and not (tmp_path / "bin" / "pytorch_model.bin").exists()
    with pytest.raises(TypeError, match="bogus"):
        model.save(tmp_path / "x", bogus=1)
    with pytest.raises(TypeError, match="model_name must be a string"):
        model.save(tmp_path / "x", model_name=12345)
    assert not (tmp_path / "x").exists()


def test_token_ids_outside_the_model_s_tables_are_named_not_nan(minilm_dir, tmp_path, spies):
    """A tokenizer that does not match its model (ids past the embedding table, or second-segment token types
    for a model with one type) is an IndexError in PyTorch; JAX would read NaN rows, and packed attention would
    spread the NaN to every pair of the batch."""
    from conftest import save_tiny_bert
    from transformers import AutoTokenizer

    from crossjax import DataLoader

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    small = CrossEncoder(save_tiny_bert(tmp_path / "small", tokenizer, vocab_size=2000))
    fine = [("a b", "c d")]  # single letters: ids below 2000
    assert np.isfinite(small.predict(fine)).all()
    with pytest.raises(ValueError, match="pair 1: token id .* outside the model's table of 2000"):
        small.predict(fine + [("a", "xylophone quartz")])
    one_type = CrossEncoder(save_tiny_bert(tmp_path / "one_type", tokenizer, type_vocab_size=1))
    with pytest.raises(ValueError, match="pair 0: token type id 1 is outside the model's table of 1"):
        one_type.predict(fine)
    with pytest.raises(IndexError):  # the oracle: transformers' PyTorch model refuses it too
        one_type_pt = __import__("transformers").AutoModelForSequenceClassification.from_pretrained(
            tmp_path / "one_type"
        )
        one_type_pt(**tokenizer(["the man"], ["a man"], return_tensors="pt"))
    spies.clear()
    from crossjax import InputExample

    examples = [InputExample(texts=["a b", "c"], label=1.0)] * 4 + [InputExample(texts=["xylophone", "a"], label=1.0)]
    with pytest.raises(ValueError, match="pair 4: token id"):
        small.fit(DataLoader(examples, batch_size=2), epochs=1, show_progress_bar=False)
    assert spies == ["tokenize"]  # refused while tokenizing, before any step was built


def test_config_kwargs_num_labels_sizes_a_new_head_as_in_sentence_transformers(minilm_dir, tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=37)  # fmt: skip
    BertModel(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    ours = CrossEncoder(tmp_path / "base", config_kwargs={"num_labels": 3})
    theirs = st.CrossEncoder(str(tmp_path / "base"), config_kwargs={"num_labels": 3})
    assert ours.num_labels == theirs.num_labels == 3
    assert ours.predict([("a", "b"), ("c", "d")]).shape == (2, 3)


def test_a_tokenizer_without_token_types_feeds_type_zero_as_sentence_transformers(saved, pairs, tmp_path):
    """A BERT checkpoint whose tokenizer does not return ``token_type_ids`` (its ``model_input_names``): the
    model sees type 0 everywhere, as transformers defaults it; the second text's type 1 would move the scores."""
    folder = Path(shutil.copytree(saved, tmp_path / "no_types"))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["model_input_names"] = ["input_ids", "attention_mask"]
    config_file.write_text(json.dumps(config))
    theirs = st.CrossEncoder(str(folder))
    assert "token_type_ids" not in theirs.tokenizer(["a"], ["b"])
    ours = CrossEncoder(folder)
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5)
    assert np.abs(CrossEncoder(saved).predict(pairs) - ours.predict(pairs)).max() > 1e-3  # the types mattered


def test_a_decoder_config_is_refused_not_scored_bidirectionally(saved, tmp_path):
    """transformers masks attention causally when ``is_decoder`` is set; crossjax's encoders cannot."""
    folder = Path(shutil.copytree(saved, tmp_path / "decoder"))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "is_decoder": True}))
    with pytest.raises(ValueError, match="is_decoder=True"):
        CrossEncoder(folder)


def test_activations_that_reshape_the_scores_as_in_sentence_transformers(tiny_dirs, pairs):
    """An activation may drop the label axis (sentence-transformers squeezes only a remaining axis of one), and
    torch's functional softmax family takes the labels axis of the (pairs, labels) logits."""
    one, three = tiny_dirs[1], tiny_dirs[3]
    for folder, activation in [
        (one, lambda x: x[:, 0] * 2),
        (one, lambda x: x.sum(-1)),
        (three, torch.nn.functional.softmax),
        (three, torch.nn.functional.log_softmax),
        (three, torch.nn.functional.softmin),
    ]:
        theirs = st.CrossEncoder(str(folder)).predict(pairs, activation_fn=activation)
        ours = CrossEncoder(folder).predict(pairs, activation_fn=activation)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    theirs = st.CrossEncoder(str(three)).predict(pairs, activation_fn=lambda x: x[:, 0], apply_softmax=True)
    np.testing.assert_allclose(CrossEncoder(three).predict(pairs, activation_fn=lambda x: x[:, 0], apply_softmax=True),
                               theirs, atol=1e-5)  # fmt: skip
    # A function across the pairs sees exactly the call's scores (9 pairs: not a padded size), and one written
    # for torch tensors, as a sentence-transformers user writes it, works too
    nine = (pairs * 2)[:9]
    across = CrossEncoder(one).predict(nine, activation_fn=lambda x: jax.nn.softmax(x, axis=0))
    np.testing.assert_allclose(
        across, st.CrossEncoder(str(one)).predict(nine, activation_fn=lambda x: torch.softmax(x, dim=0)), atol=1e-6
    )
    # Functions and modules get what sentence-transformers gives them, a torch tensor: methods that JAX has too
    # mean torch's (std and var unbiased: on a JAX array they were silently biased), and torch modules without
    # a JAX form (other arguments, containers, a user's module) run on torch
    class Tempered(torch.nn.Module):
        def forward(self, x):
            return torch.sigmoid(x / 3)

    for activation in (
        lambda x: torch.sigmoid(x / 2) - x.mean(),
        lambda x: (x - x.mean()) / x.std(),
        lambda x: x / x.var(),
        torch.nn.Softmax(dim=0),
        torch.nn.GELU(approximate="tanh"),
        torch.nn.Sequential(torch.nn.Identity(), torch.nn.Sigmoid()),
        Tempered(),
    ):
        np.testing.assert_allclose(
            CrossEncoder(one).predict(nine, activation_fn=activation),
            st.CrossEncoder(str(one)).predict(nine, activation_fn=activation),
            rtol=1e-5,  # x / x.var() scales float32 round-off of the logits up to ~12
            atol=1e-5,
            err_msg=repr(activation),
        )
    model = CrossEncoder(one, activation_fn=Tempered())  # kept by the constructor, as sentence-transformers keeps it
    logits = CrossEncoder(one).predict(nine, activation_fn="identity")
    np.testing.assert_allclose(model.predict(nine), 1 / (1 + np.exp(-logits / 3)), atol=1e-6)


def test_a_batch_size_far_beyond_the_pairs_plans_slots_for_the_pairs_there_are(saved, pairs):
    model = CrossEncoder(saved)
    reference = model.predict(pairs, batch_size=32)
    program = model._predict_program(model.compute_dtype)
    before = len(program.counter.shapes)
    np.testing.assert_allclose(model.predict(pairs, batch_size=10**7), reference, atol=1e-6)  # no 10**7 slots
    assert all(shape[-1] <= 1024 for shape in program.counter.shapes[before:]), program.counter.shapes
    many = [(a, f"{b} {i}") for i, (a, b) in enumerate(pairs * 20)]  # 120 distinct pairs (repeats score once)
    scores = model.predict(many, batch_size=10**6)
    np.testing.assert_allclose(scores, model.predict(many, batch_size=64), atol=1e-6)


@pytest.mark.parametrize("pair", [("a", None), ["a", 3], np.array(["a", None], dtype=object)])
def test_a_single_pair_with_a_text_that_is_not_a_string_is_named(saved, pair):
    with pytest.raises(ValueError, match="the pair's texts must be strings, got str, (NoneType|int)"):
        CrossEncoder(saved).predict(pair)


def test_torch_module_habits_work_or_name_the_jax_way(saved, pairs, tmp_path):
    """Calls written for sentence-transformers' CrossEncoder (a torch module): the ones with a JAX meaning work
    and return the model, the others are errors that say what to do instead."""
    model = CrossEncoder(saved)
    reference = model.predict(pairs)
    assert model.eval() is model and model.train() is model and model.cpu() is model and model.to("cpu") is model
    np.testing.assert_array_equal(model.predict(pairs), reference)
    assert model.old_fit == model.fit and model.get_max_seq_length() == model.max_length
    in_bf16 = model.bfloat16().predict(pairs)
    assert model.compute_dtype == jax.numpy.bfloat16 and 0 < np.abs(in_bf16 - reference).max() < 3e-2
    np.testing.assert_array_equal(model.float().predict(pairs), reference)
    assert model.to(torch.bfloat16).compute_dtype == jax.numpy.bfloat16 and model.to("float32") is model
    assert model.to("cpu", non_blocking=True) is model and model.to(device="cpu", dtype=torch.float32) is model
    with pytest.raises(ValueError, match="must be float32 or bfloat16"):
        model.to(torch.float64)
    with pytest.raises(ValueError, match="must be float32 or bfloat16, got float64"):
        model.double()
    with pytest.raises(ValueError, match="float16 is not a crossjax compute dtype"):
        model.half()
    with pytest.raises(ValueError, match="runs on cpu.*CrossEncoder\\(..., device='cuda'\\)"):
        model.cuda()
    with pytest.raises(ValueError, match="already runs on every device"):
        model.start_multi_process_pool()
    with pytest.raises(AttributeError, match="not a torch module"):
        sum(p.numel() for p in model.parameters())
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        model.no_such_thing  # noqa: B018
    encoded = model.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
    with pytest.raises(TypeError, match="return_tensors='np'"):
        model.model(**encoded)
    logits = model.model(**model.tokenizer(*map(list, zip(*pairs[:2], strict=True)), padding=True, return_tensors="np"))
    np.testing.assert_allclose(1 / (1 + np.exp(-np.asarray(logits)[:, 0])), reference[:2], atol=1e-5)

    def evaluator(m, output_path=None, epoch=-1, steps=-1):
        return {"output_path": output_path, "scores": m.predict(pairs)}

    result = model.evaluate(evaluator, output_path=str(tmp_path / "eval"))
    assert (tmp_path / "eval").is_dir() and result["output_path"] == str(tmp_path / "eval")
    np.testing.assert_array_equal(result["scores"], reference)


FOUR_DEVICES = """
import json, sys, torch
import jax
from crossjax import CrossEncoder, DataLoader
from test_fit_behaviour import make_examples

folder, checkpoints = sys.argv[1], sys.argv[2]
pairs = [tuple(e.texts) for e in make_examples(5, seed=41)]
one = CrossEncoder(folder, device="cpu:2")
assert one.to("cpu:2") is one and one.to(torch.device("cpu:2")) is one
for other in ("cpu:3", "cpu"):
    try:
        one.to(other) if other != "cpu" else CrossEncoder(folder).to("cpu:1")
        raise SystemExit(f"to({other}) moved nothing and said nothing")
    except ValueError as e:
        assert "places a model on its devices when it is made" in str(e), e
scores = one.predict(pairs, convert_to_tensor=True)
assert scores.devices() == {jax.devices()[2]}, scores.devices()
assert CrossEncoder(folder, device=torch.device("cpu")).device == "cpu"
# A JAX user's devices: one, a list, or a Mesh of their own (crossjax's data mesh spans its devices in order)
import numpy as np
from jax.sharding import Mesh
reference = one.predict(pairs)
for given, expected in ((jax.devices()[3], jax.devices()[3:]), (jax.devices()[1:3], jax.devices()[1:3]),
                        (Mesh(np.array(jax.devices()[::-1]).reshape(2, 2), ("a", "b")), jax.devices()[::-1])):
    placed = CrossEncoder(folder, device=given)
    assert list(placed.mesh_plan.mesh.devices.flat) == list(expected), placed.mesh_plan.mesh
    assert np.abs(placed.predict(pairs) - reference).max() < 1e-6
examples = make_examples(12, seed=3)  # a DataLoader batch size the 4 devices do not divide, token budget steps
CrossEncoder(folder).fit(DataLoader(examples, batch_size=6), max_tokens_per_step=512, show_progress_bar=False)
CrossEncoder(folder).fit(DataLoader(examples, batch_size=4), max_steps=1, checkpoint_path=checkpoints,
                         show_progress_bar=False)
# The arguments' batch sizes count the devices the trainer's model trains on (Hugging Face's: per device x
# this process's devices)
from crossjax import CrossEncoderTrainer, CrossEncoderTrainingArguments
for model, devices in ((one, 1), (CrossEncoder(folder), 4)):
    args = CrossEncoderTrainingArguments(checkpoints + "-trainer", per_device_train_batch_size=3,
                                         per_device_eval_batch_size=2)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset={"a": ["x"], "b": ["y"], "label": [1.0]})
    assert (args.train_batch_size, args.eval_batch_size) == (3 * devices, 2 * devices), (args.train_batch_size, devices)
    assert trainer._global_batch_size(train=True) == args.train_batch_size
print("OK")
"""


def test_one_device_of_several_is_kept_by_to_and_predict(tiny_dir, tmp_path):
    """On 4 (forced) CPU devices: ``to()`` naming another device than the model's is an error, not a silent
    no-op; ``convert_to_tensor`` returns the scores on the model's device; ``device=torch.device(...)`` is taken,
    and so are a JAX user's ``jax.Device``, list of devices and ``Mesh``;
    token-budget steps do not need a batch size the devices divide; a checkpoint of 4 devices resumed on 1
    says why it cannot be; the training arguments' batch sizes count the trainer's model's devices."""
    import os
    import subprocess
    import sys

    from conftest import REPO, xla_flags

    from crossjax.checkpoint import CheckpointMismatchError

    env = {
        **os.environ,
        "XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=4"),
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, str(tiny_dir), str(tmp_path / "ckpt")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]
    with pytest.raises(CheckpointMismatchError, match="laid out for 4 groups .* this run has 1"):
        CrossEncoder(tiny_dir).fit(
            make_examples(12, seed=3), batch_size=4, max_steps=1, checkpoint_path=str(tmp_path / "ckpt"),
            show_progress_bar=False,
        )  # fmt: skip


def test_what_a_sentence_transformers_save_holds_besides_the_transformer(saved, pairs, tmp_path):
    """sentence-transformers 6.2 files read as it reads them: a ``max_seq_length`` of sentence_bert_config.json,
    a saved ``keep_in_fp32_modules`` (kept on re-save), a prompt given as None (the saved one); modules after the
    transformer or other truncation would change the scores, so they are refused, never silently dropped."""
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    transformer_file, st_file = folder / "sentence_bert_config.json", folder / "config_sentence_transformers.json"
    transformer_settings, st_config = json.loads(transformer_file.read_text()), json.loads(st_file.read_text())
    transformer_file.write_text(json.dumps({**transformer_settings, "max_seq_length": 16}))
    st_config.update(keep_in_fp32_modules=["0.model.classifier"], prompts={"q": "q: "})
    st_file.write_text(json.dumps(st_config))
    ours, theirs = CrossEncoder(folder, prompts={"q": None}), st.CrossEncoder(str(folder), prompts={"q": None})
    assert ours.max_length == theirs.max_seq_length == 16 and ours.prompts == theirs.prompts == {"q": "q: "}
    np.testing.assert_allclose(ours.predict(pairs, prompt_name="q"), theirs.predict(pairs, prompt_name="q"), atol=1e-5)
    resaved = ours.save(tmp_path / "resaved")
    assert st.CrossEncoder(str(resaved)).keep_in_fp32_modules == ["0.model.classifier"]
    with pytest.raises(ValueError, match="the saved model's setting"):
        CrossEncoder(folder, compute_dtype="bfloat16")
    with pytest.raises(ValueError, match="the saved model's setting"):
        ours.bfloat16()
    assert CrossEncoder(folder, keep_in_fp32_modules=[]).bfloat16().compute_dtype == jnp.bfloat16
    # ... and training in bfloat16 would ignore the selection too (sentence-transformers keeps those layers in
    # float32 under autocast): refused before anything is tokenized; fit's contradictory dtypes likewise
    from crossjax import CrossEncoderTrainer, CrossEncoderTrainingArguments, DataLoader, InputExample

    examples = [InputExample(texts=list(p), label=1.0) for p in pairs]
    with pytest.raises(ValueError, match="keep_in_fp32_modules.*bf16=True / use_amp=True"):
        ours.fit(DataLoader(examples, batch_size=2), epochs=1, use_amp=True, show_progress_bar=False)
    args = CrossEncoderTrainingArguments(str(tmp_path / "run"), bf16=True, max_steps=1, disable_tqdm=True)
    data = {"a": [p[0] for p in pairs], "b": [p[1] for p in pairs], "label": [1.0] * len(pairs)}
    with pytest.raises(ValueError, match="keep_in_fp32_modules.*bf16=True / use_amp=True"):
        CrossEncoderTrainer(model=ours, args=args, train_dataset=data).train()
    assert ours.training_history == [] and not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="contradicts itself"):
        CrossEncoder(folder, keep_in_fp32_modules=[]).fit(
            DataLoader(examples, batch_size=2), use_amp=True, compute_dtype="float32", show_progress_bar=False
        )
    assert CrossEncoder(folder, tokenizer_kwargs={"model_max_length": 20}).max_length == 20  # as there
    # sentence-transformers' own example of processing_kwargs: a limit and truncation, padding changes nothing
    example = {"processing_kwargs": {"text": {"max_length": 12, "truncation": True, "padding": "longest"}}}
    transformer_file.write_text(json.dumps({**transformer_settings, **example}))
    ours, theirs = CrossEncoder(folder), st.CrossEncoder(str(folder))
    assert ours.max_length == 12  # sentence-transformers passes it to every tokenizer call: the same scores
    np.testing.assert_allclose(ours.predict(pairs), theirs.predict(pairs), atol=1e-5)

    keep_query = {"processing_kwargs": {"text": {"truncation": "only_second"}}}  # a reranker keeping the query
    transformer_file.write_text(json.dumps({**transformer_settings, **keep_query}))
    with pytest.raises(ValueError, match="longest-first truncation only"):
        CrossEncoder(folder)
    transformer_file.write_text(json.dumps(transformer_settings))
    modules = json.loads((folder / "modules.json").read_text())
    dense = {"idx": 1, "name": "1", "path": "1_Dense", "type": "sentence_transformers.base.modules.dense.Dense"}
    (folder / "modules.json").write_text(json.dumps([*modules, dense]))
    with pytest.raises(ValueError, match=r"lists modules after the transformer \(\['sentence_transformers"):
        CrossEncoder(folder)


def test_sentence_transformers_import_paths_have_crossjax_counterparts():
    """Every import path sentence-transformers 6.2 offers for its cross-encoder classes (its modules, and the
    older one-module-per-class aliases its example scripts use) works with the package name changed, and
    gives the class of the same name."""
    import importlib
    import importlib.util
    import inspect

    from sentence_transformers.util.deprecated_import import DEPRECATED_MODULE_PATHS

    import crossjax.evaluation
    import crossjax.losses

    ours_for = {  # sentence-transformers' package -> crossjax's
        "sentence_transformers.cross_encoder.losses": "crossjax.losses",
        "sentence_transformers.cross_encoder.evaluation": "crossjax.evaluation",
        "sentence_transformers.evaluation": "crossjax.evaluation",
        "sentence_transformers.readers": "crossjax.readers",
    }
    cross_encoder = ("sentence_transformers.cross_encoder.losses", "sentence_transformers.cross_encoder.evaluation")
    paths = [p for p in DEPRECATED_MODULE_PATHS if p.rsplit(".", 1)[0] in cross_encoder]  # the older aliases
    paths += ["sentence_transformers.evaluation.SequentialEvaluator", "sentence_transformers.readers.InputExample"]
    for package in cross_encoder:  # its own modules by topic
        paths += [m.__name__ for _, m in inspect.getmembers(importlib.import_module(package), inspect.ismodule)]
    checked = 0
    for path in sorted(set(paths)):
        theirs, last = path.rsplit(".", 1)
        their_module = importlib.import_module(path)
        our_package = importlib.import_module(ours_for[theirs])
        our_module = importlib.import_module(f"{ours_for[theirs]}.{last}")
        names = [last] if last[0].isupper() else [
            n for n, v in vars(their_module).items()
            if inspect.isclass(v) and v.__module__ == their_module.__name__ and n != "CrossEncoderDataCollator"
        ]  # fmt: skip
        for name in names:
            assert getattr(our_module, name) is getattr(our_package, name), (path, name)
            checked += 1
    assert checked >= 30
    # the same paths with only the package renamed: under crossjax.cross_encoder, as in sentence-transformers
    renamed = [p for p in sorted(set(paths)) if p.startswith("sentence_transformers.cross_encoder.")]
    for path in [*renamed, "sentence_transformers.cross_encoder.CrossEncoder"]:
        their_module, ours = importlib.import_module(path), importlib.import_module(path.replace(
            "sentence_transformers", "crossjax"))  # fmt: skip
        names = [
            n for n, v in vars(their_module).items()
            if inspect.isclass(v) and v.__module__.startswith("sentence_transformers") and hasattr(ours, n)
        ]  # fmt: skip
        assert names, path
        for name in names:
            assert getattr(ours, name).__module__.startswith("crossjax."), (path, name)
    assert len(renamed) >= 20
    # ``import X.Y.Z as m`` and attribute paths, whatever was imported before (a fresh process each)
    import subprocess
    import sys

    from conftest import REPO

    for code in (
        "import crossjax.losses; import crossjax.cross_encoder.losses as m; m.BinaryCrossEntropyLoss.__name__",
        "import crossjax.cross_encoder.evaluation; import crossjax; crossjax.cross_encoder.evaluation.CEF1Evaluator",
        "from crossjax.cross_encoder.losses.BinaryCrossEntropyLoss import BinaryCrossEntropyLoss as B; "
        "import crossjax.cross_encoder.losses as m; assert m.BinaryCrossEntropyLoss is B",
        "import sys, crossjax.cross_encoder.evaluation.deprecated; assert 'torch' not in sys.modules",
    ):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})  # fmt: skip
        assert done.returncode == 0, (code, done.stderr[-800:])
    # the package attributes stay the classes (an alias module never replaces them)
    assert isinstance(crossjax.losses.BinaryCrossEntropyLoss, type)
    assert isinstance(crossjax.evaluation.SequentialEvaluator, type)
    assert importlib.util.find_spec("crossjax.losses.mse").name == "crossjax.losses.mse"
    from crossjax import LoggingHandler
    from crossjax.cross_encoder import CrossEncoderModelCardData, CrossEncoderTrainer, CrossEncoderTrainingArguments

    assert LoggingHandler.__name__ == "LoggingHandler" and CrossEncoderTrainer and CrossEncoderTrainingArguments
    assert CrossEncoderModelCardData
    # sentence-transformers' cross-encoder modules, and the homes its 6.2 deprecation warnings give shared classes
    for path, names in {
        "cross_encoder.trainer": ["CrossEncoderTrainer"],
        "cross_encoder.training_args": ["CrossEncoderTrainingArguments"],
        "cross_encoder.model_card": ["CrossEncoderModelCardData"],
        "cross_encoder.model": ["CrossEncoder"],
        "sentence_transformer.training_args": ["BatchSamplers", "MultiDatasetBatchSamplers"],
        "sentence_transformer.evaluation": ["SequentialEvaluator", "SentenceEvaluator"],
        "base.evaluation.sequential": ["SequentialEvaluator"],
        "base.sampler": ["BatchSamplers"],
        "base.evaluation": ["BaseEvaluator", "SentenceEvaluator", "SequentialEvaluator"],
        "evaluation": ["SentenceEvaluator"],
        "": ["mine_hard_negatives", "CrossEncoder", "InputExample"],
    }.items():
        for name in names:
            module = ("." + path).rstrip(".")
            assert hasattr(importlib.import_module(f"sentence_transformers{module}"), name), (path, name)
            ours = getattr(importlib.import_module(f"crossjax{module}"), name)
            base = name in ("BaseEvaluator", "SentenceEvaluator")  # both names of crossjax's evaluator base class
            assert ours is crossjax.evaluation.CrossEncoderEvaluator if base else ours.__name__ == name, (path, name)
            assert ours.__module__.startswith("crossjax."), (path, name)
    with pytest.raises(NotImplementedError, match="CrossEncoderBEIREvaluator"):
        crossjax.evaluation.CrossEncoderNanoBEIREvaluator(dataset_names=["msmarco"])


def test_sentence_transformers_attributes_and_helpers(saved, pairs, tmp_path, caplog):
    """The rest of sentence-transformers 6.2's CrossEncoder surface, against its own values: class attributes,
    the mode flag, the input test, keep_in_fp32_modules' checks, and a custom activation's save."""
    ours, theirs = CrossEncoder(saved), st.CrossEncoder(str(saved))
    for name in ("model_type", "default_huggingface_organization", "keep_in_fp32_modules"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.get_model_kwargs() == theirs.get_model_kwargs()
    logits = [-1.0, 2.0]
    np.testing.assert_allclose(
        ours.get_default_activation_fn()(jax.numpy.array(logits)),
        theirs.get_default_activation_fn()(torch.tensor(logits)).numpy(),
        atol=1e-7,
    )
    for inputs in [pairs[0], list(pairs[0]), pairs, [], np.array(pairs[0]), np.array(pairs), ("a",), "ab"]:
        assert ours.is_singular_input(inputs) == theirs.is_singular_input(inputs), inputs
    assert ours.dtype == np.float32 and ours.to(torch.bfloat16).dtype == jax.numpy.bfloat16
    ours.float()
    for mode in (True, False):
        assert ours.train(mode).training == theirs.train(mode).training == mode
    assert ours.eval().training == theirs.eval().training is False

    # keep_in_fp32_modules: sentence-transformers' module paths of linear layers, refused as it refuses them
    for bad in (["does.not.exist"], "model.classifier", [1], ["model.bert.embeddings.word_embeddings"]):
        with pytest.raises((ValueError, AttributeError)):
            st.CrossEncoder(str(saved), keep_in_fp32_modules=bad)
        with pytest.raises(ValueError, match="keep_in_fp32_modules"):
            CrossEncoder(saved, keep_in_fp32_modules=bad)
    chosen = ["model.classifier", "0.model.bert.encoder.layer.1.output.dense", "0.auto_model.bert.pooler.dense"]
    kept = CrossEncoder(saved, keep_in_fp32_modules=chosen)
    assert kept.keep_in_fp32_modules == chosen
    assert st.CrossEncoder(str(kept.save(tmp_path / "kept"))).keep_in_fp32_modules == chosen

    # a custom activation is saved as sentence-transformers saves one (a warning); both reload the default
    ours.activation_fn = lambda x: x * 3
    with caplog.at_level("WARNING"):
        folder = ours.save(tmp_path / "custom")
    assert "loads with the default activation" in caplog.text
    np.testing.assert_allclose(
        CrossEncoder(folder).predict(pairs), st.CrossEncoder(str(folder)).predict(pairs), atol=1e-6
    )
    np.testing.assert_allclose(CrossEncoder(folder).predict(pairs), CrossEncoder(saved).predict(pairs), atol=1e-6)


def test_a_config_assigned_to_the_model_is_the_one_saved(saved, tmp_path):
    """As sentence-transformers' ``config`` setter: a new config (relabelled) reaches the export; one that
    would reshape the model is refused by name. ``processor`` and ``get_backend()`` as sentence-transformers 6."""
    from transformers import AutoConfig

    model = CrossEncoder(saved)
    config = AutoConfig.from_pretrained(saved)
    config.id2label, config.label2id = {0: "relevance"}, {"relevance": 0}
    model.config = config
    model.save(tmp_path / "relabelled")
    assert json.loads((tmp_path / "relabelled" / "config.json").read_text())["id2label"] == {"0": "relevance"}
    with pytest.raises(ValueError, match="num_labels is 3"):
        model.config = AutoConfig.from_pretrained(saved, num_labels=3)
    assert model.processor is model.tokenizer and model.get_backend() == "torch"
    from crossjax.evaluation import CECorrelationEvaluator, CrossEncoderCorrelationEvaluator

    assert issubclass(CECorrelationEvaluator, CrossEncoderCorrelationEvaluator)  # the card names the class used
    assert CrossEncoderCorrelationEvaluator.__name__ == "CrossEncoderCorrelationEvaluator"


def test_a_model_assigned_after_predict_is_the_one_scored_and_saved(saved, pairs, tmp_path):
    """``ce.model = ...`` (a model trained or loaded by the user in JAX, here in the other layer layout with a
    moved head) after a first predict: crossjax scores and saves the new model, as sentence-transformers does
    with an assigned ``model.model`` (the compiled programs of the one before are dropped, not reused)."""
    from crossjax.models import FlaxAutoModelForSequenceClassification

    ours, theirs = CrossEncoder(saved), st.CrossEncoder(str(saved))
    before = ours.predict(pairs[:3])
    replacement = FlaxAutoModelForSequenceClassification.from_pretrained(saved, scan_layers=False)
    replacement.classifier.bias[...] = replacement.classifier.bias[...] + 1.0
    ours.model = replacement
    with torch.no_grad():
        theirs.model.classifier.bias += 1.0
    after = ours.predict(pairs[:3])
    assert np.abs(after - before).min() > 1e-3
    np.testing.assert_allclose(after, theirs.predict(pairs[:3]), atol=1e-5)
    ours.save(tmp_path / "assigned")
    np.testing.assert_allclose(st.CrossEncoder(str(tmp_path / "assigned")).predict(pairs[:3]), after, atol=1e-5)
    with pytest.raises(TypeError, match="CrossEncoder.model takes a crossjax model.*got transformers"):
        ours.model = theirs.model


def test_a_folder_without_tokenizer_files_is_refused_not_scored_as_unknown_words(saved, tmp_path):
    """A model saved without its tokenizer (``save_pretrained(path)`` alone): transformers 5 builds an empty
    tokenizer from config.json, so sentence-transformers reads every word as unknown and scores the pairs without
    a word; crossjax refuses the folder, saying what is missing."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved / name, bare / name)
    tokenizer = st.CrossEncoder(str(bare)).tokenizer
    unknown = {tokenizer.unk_token_id}
    assert set(tokenizer("a man plays guitar", add_special_tokens=False)["input_ids"]) == unknown
    with pytest.raises(ValueError, match="tokenizer has no vocabulary .*no tokenizer files"):
        CrossEncoder(bare)


@pytest.mark.parametrize("broken", ["tokenizer.json", "tokenizer_config.json"])
def test_a_tokenizer_file_that_is_not_json_is_named(saved, tmp_path, broken):
    """transformers' error is json's own ("Unterminated string ..."), naming no file; crossjax names it."""
    folder = tmp_path / "model"
    shutil.copytree(saved, folder)
    (folder / broken).write_text('{"version": "1.0", "trunc')
    with pytest.raises(ValueError, match=f"{broken} is not valid JSON: Unterminated string"):
        CrossEncoder(folder)


@pytest.mark.parametrize(
    "extra",
    [{"do_lower_case": True}, {"tokenizer_args": {"truncation_side": "left"}},
     {"processor_kwargs": {"truncation_side": "left"}, "config_args": {"layer_norm_eps": 1e-3}}],
    ids=["do_lower_case", "tokenizer_args", "processor_and_config_kwargs"],
)  # fmt: skip
def test_a_saved_transformer_config_s_tokenizer_and_config_arguments_apply_as_there(tmp_path, extra):
    """sentence-transformers' Transformer reads do_lower_case, tokenizer/processor and config arguments (and
    their older names) from sentence_bert_config.json: the same scores here (they were ignored); model
    arguments there are refused by name."""
    from conftest import read_stsb, save_tiny_bert
    from test_fit_parity import byte_level_tokenizer

    rows = read_stsb("train", limit=16)
    tokenizer = byte_level_tokenizer([t for a, b, _ in rows for t in (a, b)], tmp_path / "tiny")  # cased
    save_tiny_bert(tmp_path / "tiny", tokenizer, dropout=0.0, initializer_range=0.3)
    folder = CrossEncoder(tmp_path / "tiny", max_length=24).save(tmp_path / "saved")
    settings = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**settings, **extra}))
    pairs = [(a.upper(), b) for a, b, _ in rows[:4]] + [(" ".join(a for a, _, _ in rows), rows[0][1])]
    theirs = st.CrossEncoder(str(folder), device="cpu").predict(pairs)
    without = CrossEncoder(tmp_path / "tiny", max_length=24).predict(pairs)
    assert np.abs(theirs - without).max() > 1e-4  # the setting changes the scores there
    np.testing.assert_allclose(CrossEncoder(folder).predict(pairs), theirs, rtol=1e-5, atol=1e-6)
    (folder / "sentence_bert_config.json").write_text(json.dumps({**settings, "model_args": {"torch_dtype": "auto"}}))
    with pytest.raises(ValueError, match=r"sets model_kwargs \{'torch_dtype': 'auto'\}"):
        CrossEncoder(folder)
