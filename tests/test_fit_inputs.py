"""What legacy ``fit`` and the evaluators do with the inputs sentence-transformers users pass: torch samplers,
``InputExample``'s positional order, losses and clipping norms that cannot train, evaluators with missing or
wrong gold values, several evaluators at once, and copies of a pair. The oracles are sentence-transformers
6.2 (its ``InputExample``, ``SequentialEvaluator`` and reranking evaluator on the same saved model) and
hand counts; bad input must fail before anything is tokenized or compiled.
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import json

import numpy as np
import pytest
from test_fit_behaviour import TRAIN, make_examples, tiny_dir, tiny_dirs  # noqa: F401 - fixtures used by name

from crossjax import CrossEncoder, InputExample
from crossjax import evaluation as ev

torch = pytest.importorskip("torch")
st = pytest.importorskip("sentence_transformers")
from torch.utils.data import (  # noqa: E402
    BatchSampler,
    DataLoader,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)


def test_input_example_fields_in_sentence_transformers_order():
    ours, theirs = InputExample("id0", ["a b", "c d"], 0.5), st.InputExample("id0", ["a b", "c d"], 0.5)
    assert (ours.guid, list(ours.texts), ours.label) == (theirs.guid, theirs.texts, theirs.label)
    assert InputExample(texts=["a", "b"]).label is None  # still no silent 0 label


def test_torch_samplers_are_followed_or_refused(tiny_dir, spies):
    examples = make_examples(12, seed=5)
    subset = DataLoader(examples, batch_size=2, sampler=SubsetRandomSampler(range(4)))
    assert CrossEncoder(tiny_dir).fit(subset, epochs=1, **TRAIN)["global_step"] == 2  # 4 rows, not 12
    ordered = DataLoader(examples, batch_size=3, sampler=SequentialSampler(examples))
    assert CrossEncoder(tiny_dir).fit(ordered, epochs=1, **TRAIN)["global_step"] == 4
    whole = DataLoader(examples[:10], batch_sampler=BatchSampler(SequentialSampler(examples[:10]), 3, True))
    assert CrossEncoder(tiny_dir).fit(whole, epochs=1, **TRAIN)["global_step"] == 3  # its drop_last: 3 + 3 + 3
    spies.clear()
    weighted = DataLoader(examples, batch_size=2, sampler=WeightedRandomSampler([1.0] * 12, num_samples=4))
    with pytest.raises(ValueError, match="sampler=WeightedRandomSampler"):
        CrossEncoder(tiny_dir).fit(weighted, epochs=1, **TRAIN)
    part = DataLoader(examples, batch_sampler=BatchSampler(SequentialSampler(range(6)), 3, False))
    with pytest.raises(ValueError, match="sampler=SequentialSampler"):  # six of the twelve rows
        CrossEncoder(tiny_dir).fit(part, epochs=1, **TRAIN)

    class Pairs:  # a custom batch sampler
        def __iter__(self):
            return iter([[0, 1], [2, 3]])

        def __len__(self):
            return 2

    with pytest.raises(ValueError, match="batch_sampler=Pairs"):
        CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_sampler=Pairs()), epochs=1, **TRAIN)
    assert spies == []


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"loss_fct": torch.nn.CrossEntropyLoss()}, "cross-entropy needs num_labels >= 2"),
        ({"loss_fct": lambda logits, labels: (logits - labels).mean()}, r"must take \(logits, labels, example_mask\)"),
        ({"loss_fct": torch.nn.functional.mse_loss}, "is a torch function"),
        ({"max_grad_norm": 0}, "max_grad_norm must be > 0"),
        ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
        ({"max_grad_norm": "0.5"}, "max_grad_norm must be > 0, or None for no clipping; got '0.5'"),
        ({"warmup_steps": 2**31}, r"warmup_steps must be at most 2\*\*31 - 1"),
        ({"warmup_steps": 2.5}, "warmup_steps must be an integer >= 0, got 2.5"),
        ({"evaluator": ev.CECorrelationEvaluator}, "evaluator must be an evaluator instance"),
        ({"evaluator": []}, "SequentialEvaluator"),
    ],
)
def test_fit_settings_that_cannot_train_are_refused_first(tiny_dir, spies, settings, message):
    with pytest.raises((ValueError, TypeError), match=message):
        CrossEncoder(tiny_dir).fit(DataLoader(make_examples(4), batch_size=2), epochs=1, **{**TRAIN, **settings})
    assert spies == []


def test_evaluators_name_missing_or_wrong_gold_values_when_made():
    pairs = [["a b", "c"], ["d", "e f"], ["g", "h"]]
    with pytest.raises(ValueError, match=r"scores\[1\] is None: .*label defaults to None"):
        ev.CECorrelationEvaluator.from_input_examples([InputExample(texts=p, label=0.5 if i != 1 else None)
                                                       for i, p in enumerate(pairs)])  # fmt: skip
    with pytest.raises(ValueError, match="2 values for 3 sentence pairs"):
        ev.CECorrelationEvaluator(pairs, [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2 sentence pairs"):
        ev.CECorrelationEvaluator(pairs[:1], [0.3])
    with pytest.raises(ValueError, match=r"labels\[0\] is 'entailment': every pair needs a class index"):
        ev.CESoftmaxAccuracyEvaluator(pairs, ["entailment", 1, 2])
    with pytest.raises(ValueError, match=r"labels\[2\] is 0.3"):
        ev.CEBinaryClassificationEvaluator(pairs, [0, 1, 0.3])
    with pytest.raises(ValueError, match=r"labels\[1\] is -100: .*ignore_index, marks an unlabelled pair: fit's"):
        ev.CrossEncoderClassificationEvaluator(pairs, [0, -100, 2])
    with pytest.raises(ValueError, match="at least one sample"):
        ev.CrossEncoderRerankingEvaluator([])
    np.testing.assert_array_equal(ev.CEBinaryClassificationEvaluator(pairs, np.array([True, False, True])).labels,
                                  [1, 0, 1])  # fmt: skip


def test_evaluators_refuse_a_model_of_the_wrong_shape(tiny_dirs):
    pairs = [["a b", "c"], ["d", "e f"], ["g", "h"]]
    with pytest.raises(ValueError, match="a model with num_labels=1 is needed"):
        ev.CECorrelationEvaluator(pairs, [0.1, 0.5, 0.9])(CrossEncoder(tiny_dirs[3]))
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got \[0, 2\]"):
        ev.CEBinaryClassificationEvaluator(pairs, [0, 2, 0])(CrossEncoder(tiny_dirs[1]))


def test_copies_of_a_pair_get_one_score_and_reranking_ties_match_sentence_transformers(tiny_dir, tmp_path):
    saved = CrossEncoder(tiny_dir).save(tmp_path / "model")
    model = CrossEncoder(saved)
    red = {"query": "red car", "positive": ["a red car"] * 2, "negative": ["blue sky", "a red car x", "blue sky"]}
    old = {"query": "old tree", "positive": ["the old tree"], "negative": ["the old tree"] + ["green park"] * 2}
    samples = [red, old]
    pairs = [(s["query"], d) for s in samples for d in s["positive"] + s["negative"]]
    scores = model.predict(pairs)
    assert scores[0] == scores[1] and scores[2] == scores[4] and scores[5] == scores[6]
    ours = ev.CrossEncoderRerankingEvaluator(samples, name="dup")(model)
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator

    theirs = CrossEncoderRerankingEvaluator(samples, name="dup")(st.CrossEncoder(str(saved)))
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6), key


def test_sequential_evaluator_equals_sentence_transformers(tiny_dir, tmp_path):
    from sentence_transformers.evaluation import SequentialEvaluator as STSequential

    saved = CrossEncoder(tiny_dir).save(tmp_path / "model")
    pairs = [[e.texts[0], e.texts[1]] for e in make_examples(8, seed=9)]
    gold = [float(x) for x in np.linspace(0, 1, 8)]
    binary = [int(x > 0.5) for x in gold]
    ours = ev.SequentialEvaluator(
        [ev.CECorrelationEvaluator(pairs, gold, name="sts"), ev.CEBinaryClassificationEvaluator(pairs, binary)]
    )(CrossEncoder(saved))
    from sentence_transformers.cross_encoder import evaluation as st_ev

    theirs = STSequential(
        [st_ev.CrossEncoderCorrelationEvaluator(pairs, gold, name="sts"),
         st_ev.CrossEncoderClassificationEvaluator(pairs, binary)]
    )(st.CrossEncoder(str(saved)))  # fmt: skip
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-5), key


def test_checkpoint_save_total_limit_of_zero_keeps_every_checkpoint(tiny_dir, tmp_path):
    """sentence-transformers' fit deletes old checkpoints only for a limit > 0 (the oldest first); orbax's
    max_to_keep=0 would delete them all."""
    examples = make_examples(8)
    for limit, kept in ((0, [1, 2, 3, 4]), (2, [3, 4])):  # a negative limit is the same branch as 0 (limit > 0)
        path = tmp_path / f"limit{limit}"
        model = CrossEncoder(tiny_dir)
        model.fit(
            DataLoader(examples, batch_size=2), epochs=1, checkpoint_path=str(path), checkpoint_save_steps=1,
            checkpoint_save_total_limit=limit, **TRAIN,
        )  # fmt: skip
        assert sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) == kept, limit
    # Each step's folder holds that step's model, as sentence-transformers' checkpoint folders do: crossjax loads
    # the step's folder, sentence-transformers its "model" folder; the last step's is the trained model
    pairs = [e.texts for e in examples]
    trained = model.predict(pairs)
    np.testing.assert_allclose(CrossEncoder(str(path / "4")).predict(pairs), trained, atol=1e-6)
    np.testing.assert_allclose(st.CrossEncoder(str(path / "4" / "model")).predict(pairs), trained, atol=1e-5)
    assert np.abs(CrossEncoder(str(path / "3")).predict(pairs) - trained).max() > 1e-5


def test_a_checkpoint_whose_model_cannot_be_exported_keeps_its_training_state(tiny_dir, tmp_path, caplog):
    """The model folder is a convenience: an export that fails is a warning, and the step's state is saved and
    resumed as before (a failed orbax item would have discarded the whole step)."""

    def failing_writer(self):
        def write(path):
            raise OSError("No space left on device")

        return write

    examples, path = make_examples(8), tmp_path / "ckpt"
    run = dict(epochs=1, checkpoint_path=str(path), checkpoint_save_steps=1, **TRAIN)
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("WARNING", logger="crossjax"):
        patch.setattr(CrossEncoder, "_model_writer", failing_writer)
        CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=2), **run)
    assert "No space left on device" in caplog.text and "the training state is saved" in caplog.text
    assert sorted(int(p.name) for p in path.iterdir() if p.name.isdigit())[-1] == 4
    assert not any((path / "4" / "model").glob("*.json"))
    with pytest.raises(ValueError, match="training checkpoint without a model folder .* resume the run from it"):
        CrossEncoder(str(path / "4"))  # (as one written before checkpoints held their model)
    resumed = CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=2), **run)
    assert resumed["resumed_from_step"] == 4


def test_rows_of_texts_and_label_are_named_not_split_into_examples(tiny_dir, spies):
    rows = [("a b", "c", 1.0)] * 4
    for data in (rows, (row for row in rows)):  # in memory, and a stream
        with pytest.raises(ValueError, match=r"yielded tuple \('a b', 'c', 1.0\): expected InputExample"):
            CrossEncoder(tiny_dir).fit(data, max_steps=2, **TRAIN)
    assert spies == []


def test_non_examples_and_untokenizable_texts_are_named_before_any_work(tiny_dir, spies):
    """A None among a plain list's examples, and a lone surrogate (``json.loads('"caf\\\\ud800e"')``, which the
    tokenizer fails on with ``TextInputSequence must be str`` and no pair named; sentence-transformers too) are
    named by example or pair, in fit (in memory and streamed), predict, and a direct tokenization."""
    from transformers import AutoTokenizer

    from crossjax import data

    good = InputExample(texts=["a b", "c"], label=1.0)
    broken = json.loads('"caf\\ud800e"')
    with pytest.raises(ValueError, match="Example 1: expected an InputExample with .texts and .label, got NoneType"):
        CrossEncoder(tiny_dir).fit([good, None, good], **TRAIN)
    bad = InputExample(texts=[broken, "c"], label=0.0)
    for examples in ([good, good, bad, good], (e for e in [good, good, bad, good])):
        with pytest.raises(ValueError, match=r"Example 2: text 0 holds '\\ud800' at character 3, a lone surrogate"):
            CrossEncoder(tiny_dir).fit(examples, max_steps=2, **TRAIN)
    assert spies == []
    with pytest.raises(ValueError, match=r"Pair 1: text 1 holds '\\ud800' at character 3"):
        CrossEncoder(tiny_dir).predict([("a", "b"), ("a", broken)])
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    with pytest.raises(ValueError, match=r"pair 2: text 0 holds '\\ud800'"):
        data.tokenize_pairs(tokenizer, ["a", "b", broken], ["x", "y", "z"], 16)
    assert data.unencodable("café, 東京, 🙂") is None


def test_rank_reads_documents_by_position_whatever_their_container(tiny_dir):
    """``corpus_id`` is a document's position: a pandas Series with another index gave each score the text at
    that index label (sentence-transformers 6.2 too), and a set or dict failed after scoring."""
    import pandas as pd

    docs = ["Faust is a play.", "Goethe wrote Faust.", "Paris is in France."]
    model = CrossEncoder(tiny_dir)
    expected = model.rank("Who wrote Faust?", docs, return_documents=True)
    for container in (pd.Series(docs, index=[2, 1, 0]), pd.Series(docs, index=[10, 20, 30]), np.array(docs)):
        ranked = model.rank("Who wrote Faust?", container, return_documents=True)
        assert ranked == expected
    assert {r["corpus_id"]: r["text"] for r in expected} == dict(enumerate(docs))
    for container in (set(docs), dict.fromkeys(docs, 1)):
        with pytest.raises(ValueError, match="documents must be a sequence of texts"):
            model.rank("Who wrote Faust?", container)


def test_fit_summary_train_loss_is_the_mean_of_its_steps(tiny_dir):
    """``train_loss`` means what Hugging Face's ``training_loss`` does (the CLI printed the last step's as it):
    the mean over the steps the call trained; ``last_loss`` is the last one's."""
    model = CrossEncoder(tiny_dir)
    summary = model.fit(make_examples(24, seed=4), batch_size=4, max_steps=5, **{**TRAIN, "logging_steps": 1})
    losses = [record["loss"] for record in model.training_history if "loss" in record]
    assert len(losses) == 5 and len(set(losses)) > 1
    np.testing.assert_allclose(summary["train_loss"], np.mean(losses), rtol=1e-12)
    assert summary["last_loss"] == losses[-1]


def test_fit_warns_of_binary_cross_entropy_labels_outside_0_1(tiny_dir, caplog):
    """sentence-transformers' ``fit`` trains BCE on labels outside [0, 1] (raw STS-B scores, which train towards
    nothing) without a word; crossjax's does too, for compatibility, but says so (the CLI's train runs it)."""
    scaled = make_examples(8, seed=5)
    raw = [InputExample(texts=e.texts, label=5.0 * e.label) for e in scaled]
    with caplog.at_level("WARNING", logger="crossjax"):
        CrossEncoder(tiny_dir).fit(scaled, batch_size=4, max_steps=1, **TRAIN)
    assert "binary cross-entropy takes labels in [0, 1]" not in caplog.text
    with caplog.at_level("WARNING", logger="crossjax"):
        CrossEncoder(tiny_dir).fit(raw, batch_size=4, max_steps=1, **TRAIN)
    assert "The labels lie in [0, 5], but binary cross-entropy takes labels in [0, 1]" in caplog.text


def test_fit_refuses_trainer_losses_and_torch_code_in_its_activation(tiny_dirs) -> None:
    """A CrossEncoderTrainer loss (``CrossEntropyLoss(model, weight=w)``, ``MSELoss(model, activation_fn=...)``)
    given to fit's loss_fct trained as the plain loss, its settings dropped (its class name matched torch's):
    refused, naming the trainer. An activation whose code uses torch (``lambda x: torch.sigmoid(x) * 2``, an
    old_fit habit) failed inside JAX's trace with torch's message about a tracer: refused by name, in fit and in
    the trainer's losses; JAX code and torch modules are taken."""
    import jax
    from torch import nn

    from crossjax import losses as crossjax_losses
    from crossjax.losses import resolve_loss, resolve_training_activation

    model, classifier = CrossEncoder(str(tiny_dirs[1])), CrossEncoder(str(tiny_dirs[3]))
    for loss in (
        crossjax_losses.CrossEntropyLoss(classifier, weight=torch.tensor([1.0, 2.0, 3.0])),
        crossjax_losses.MSELoss(model, activation_fn=nn.Sigmoid()),
        crossjax_losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(3.0)),
    ):
        trainer_loss = rf"loss_fct={type(loss).__name__}\(model, \.\.\.\) is a CrossEncoderTrainer loss"
        with pytest.raises(ValueError, match=trainer_loss):
            resolve_loss(loss, loss.model.num_labels)
    scaled = lambda x: torch.sigmoid(x) * 2  # noqa: E731
    with pytest.raises(ValueError, match="'<lambda>' uses torch, but training computes the logits as JAX arrays"):
        resolve_training_activation(scaled)
    with pytest.raises(ValueError, match="uses torch"):
        crossjax_losses.MSELoss(model, activation_fn=scaled)
    jax_scaled = lambda x: jax.nn.sigmoid(x) * 2  # noqa: E731
    assert resolve_training_activation(jax_scaled) is jax_scaled
    assert resolve_training_activation(nn.Sigmoid()) is resolve_training_activation("sigmoid")
