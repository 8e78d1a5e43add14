"""State kept across objects and calls: copies and pickles of a CrossEncoder, and compiled programs cached
per loss, which must follow a loss object whose settings change between calls.

Oracles: the original object's own scores, and hand-computed multiples of a first step's loss (a loss scaled
by 10 from the same parameters is exactly 10 times the first one).
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import copy
import logging
import pickle

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_fit_behaviour import (  # noqa: F401 - fixtures used by name
    TRAIN,
    losses_of,
    make_examples,
    tiny_dir,
    tiny_dirs,
)

from crossjax import CrossEncoder, DataLoader, losses
from crossjax.trainer import CrossEncoderTrainer
from crossjax.training_args import CrossEncoderTrainingArguments

PAIRS = [("a man plays a guitar", "music in the park"), ("the dog runs", "a red car"), ("old city", "young tree")]


def test_deepcopy_and_pickle_give_an_independent_model_with_the_same_scores(tiny_dir):
    """``best = copy.deepcopy(model)`` is a common idiom (sentence-transformers' models copy and pickle); the
    tiny model's GELU is a ``jax.custom_vjp`` function, which neither copies nor pickles by itself."""
    model = CrossEncoder(str(tiny_dir), max_length=32)
    before = model.predict(PAIRS)
    copied = copy.deepcopy(model)
    unpickled = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(copied.predict(PAIRS), before)
    np.testing.assert_array_equal(unpickled.predict(PAIRS), before)
    assert unpickled.mesh_plan.mesh.devices.tolist() == model.mesh_plan.mesh.devices.tolist()

    copied.fit(DataLoader(make_examples(8), batch_size=4), epochs=1, **TRAIN)
    assert np.abs(copied.predict(PAIRS) - before).max() > 1e-4  # the copy trained ...
    np.testing.assert_array_equal(model.predict(PAIRS), before)  # ... and the original did not move


class ScaledBCE:
    """A user's loss object with a setting (``loss_fct`` takes any callable)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, logits, labels, example_mask):
        per_pair = optax.sigmoid_binary_cross_entropy(logits[:, 0], labels)
        return self.scale * jnp.sum(per_pair * example_mask) / jnp.maximum(jnp.sum(example_mask), 1)


def test_a_loss_object_changed_between_fits_is_not_served_the_old_compiled_step(tiny_dir):
    examples = make_examples(8)
    loss = ScaledBCE(1.0)
    first = CrossEncoder(str(tiny_dir), max_length=32)
    first.fit(DataLoader(examples, batch_size=8), loss_fct=loss, epochs=1, logging_steps=1, **TRAIN)
    loss.scale = 10.0
    second = CrossEncoder(str(tiny_dir), max_length=32)
    summary = second.fit(DataLoader(examples, batch_size=8), loss_fct=loss, epochs=1, logging_steps=1, **TRAIN)
    assert summary["compilations"] == 1
    # Same start, same batch, same dropout: the first step's loss is exactly ten times the first run's.
    assert losses_of(second)[0] == pytest.approx(10 * losses_of(first)[0], rel=1e-6)


def test_a_loss_object_holding_a_logger_and_itself_is_keyed_and_reused(tiny_dir):
    """Attributes without a value key (a logger, the object itself) are keyed by identity: the step is still
    reused by a second fit with the same object, and a changed number still gets its own step."""
    loss = ScaledBCE(1.0)
    loss.log, loss.me = logging.getLogger("crossjax.test"), loss
    fits = []
    for scale in (1.0, 1.0, 3.0):
        loss.scale = scale
        model = CrossEncoder(str(tiny_dir), max_length=32)
        summary = model.fit(DataLoader(make_examples(8), batch_size=8), loss_fct=loss, logging_steps=1, **TRAIN)
        fits.append((summary["compilations"], losses_of(model)[0]))
    assert [compilations for compilations, _ in fits] == [1, 0, 1]
    assert fits[2][1] == pytest.approx(3 * fits[0][1], rel=1e-6)


def test_trainer_evaluate_follows_a_loss_setting_changed_between_calls(tiny_dir, tmp_path):
    from datasets import Dataset

    words = "apple banana cherry dog eagle fish goat house".split()
    queries = [f"{words[i]} {words[(i + 1) % 8]}" for i in range(8)]
    dataset = Dataset.from_dict({"query": queries, "answer": [words[(3 * i) % 8] for i in range(8)]})
    model = CrossEncoder(str(tiny_dir), max_length=32)
    args = CrossEncoderTrainingArguments(str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8)

    def trainer(loss):
        return CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, eval_dataset=dataset, loss=loss)

    loss = losses.MultipleNegativesRankingLoss(model, num_negatives=3, scale=10.0)
    changed = trainer(loss)
    at_ten = changed.evaluate()["eval_loss"]
    loss.scale = 50.0
    at_fifty = changed.evaluate()["eval_loss"]
    fresh = trainer(losses.MultipleNegativesRankingLoss(model, num_negatives=3, scale=50.0)).evaluate()["eval_loss"]
    assert at_fifty == pytest.approx(fresh, rel=1e-6)
    assert abs(at_fifty - at_ten) > 1e-3
