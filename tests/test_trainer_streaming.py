"""The trainer over a stream (issue 8, item 4): a ``datasets.IterableDataset`` train dataset with ``max_steps`` is
read as the run goes, never whole.

The oracle is the trainer's in-memory path on the same rows in the same order: the in-memory run draws epoch 0's
batches by a seeded permutation (Hugging Face's sampler), so a stream of the rows in that permuted order must
train the same steps, bit for bit (the two share the train step and the loss layout, not the data pipeline).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, IterableDataset
from test_trainer import KEY_BIAS, _compare, _dataset, _text
from test_trainer import tiny_dirs as tiny_dirs  # a fixture, found by name

from crossjax import CrossEncoder, losses
from crossjax.checkpoint import CheckpointMismatchError
from crossjax.list_batches import ListData
from crossjax.trainer import CrossEncoderTrainer
from crossjax.training_args import CrossEncoderTrainingArguments

LR = 1e-3


def _rows(kind: str, copies: int = 2) -> dict[str, list]:
    data = _dataset(kind)  # 6 rows
    return {k: v * copies for k, v in data.items()}


def _args(output: Path, **settings) -> CrossEncoderTrainingArguments:
    defaults = dict(per_device_train_batch_size=3, learning_rate=LR, seed=0, disable_tqdm=True, save_strategy="no")
    return CrossEncoderTrainingArguments(str(output), **{**defaults, **settings})


def _train(directory: Path, dataset, loss_of, output: Path, callbacks=(), **settings):
    model = CrossEncoder(str(directory))
    args = _args(output, **settings)
    trainer = CrossEncoderTrainer(model, args, train_dataset=dataset, loss=loss_of(model), callbacks=list(callbacks))
    result = trainer.train()
    return model, result


def _epoch_zero_order(rows: int, seed: int = 0) -> list[int]:
    """The in-memory run's first epoch order (its sampler: a permutation seeded by (data seed, epoch))."""
    return [int(i) for i in np.random.default_rng((seed, 0)).permutation(rows)]


def _assert_same_run(a: CrossEncoder, b: CrossEncoder) -> None:
    assert [h["loss"] for h in a.training_history] == [h["loss"] for h in b.training_history]
    ours, theirs = a.model.hf_state_dict(), b.model.hf_state_dict()
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


@pytest.mark.parametrize(
    "kind, loss_of, settings",
    [
        ("triplets", lambda m: losses.MultipleNegativesRankingLoss(m, num_negatives=1), {}),
        ("lists", lambda m: losses.ListNetLoss(m), {"gradient_accumulation_steps": 2}),
        ("pairs", lambda m: losses.BinaryCrossEntropyLoss(m), {}),
    ],
    ids=["in-batch negatives", "lists, accumulation", "pairs"],
)
def test_a_stream_trains_the_steps_of_the_same_rows_in_memory(kind, loss_of, settings, tiny_dirs, tmp_path):
    data = _rows(kind)
    order = _epoch_zero_order(len(next(iter(data.values()))))
    stream = Dataset.from_dict(data).select(order).to_iterable_dataset()
    steps = 4 // settings.get("gradient_accumulation_steps", 1)  # one epoch: 12 rows in batches of 3
    in_memory, _ = _train(tiny_dirs[1], Dataset.from_dict(data), loss_of, tmp_path / "a", max_steps=steps, **settings)
    streamed, result = _train(tiny_dirs[1], stream, loss_of, tmp_path / "b", max_steps=steps, **settings)
    assert result.global_step == steps and result.metrics["stream_rows"] == 12
    _assert_same_run(streamed, in_memory)


def test_a_resumed_stream_run_equals_the_uninterrupted_one(tiny_dirs, tmp_path):
    """Stopped after step 2 and resumed from its checkpoint, a stream run skips the rows it trained on and ends
    bit-identical to one that never stopped (in-batch negatives drawn with the step's generator, the stream
    shuffled with a seed). A stream shuffled without a seed is another order each time: its resume is refused."""
    rows = Dataset.from_dict(_rows("triplets", copies=3))
    stream = rows.to_iterable_dataset().shuffle(seed=3, buffer_size=4)

    def loss_of(model):
        return losses.MultipleNegativesRankingLoss(model, num_negatives=1)

    class Stop:
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    settings = dict(max_steps=5, save_strategy="steps", save_steps=2)
    whole, _ = _train(tiny_dirs[1], stream, loss_of, tmp_path / "whole", **settings)
    _, stopped = _train(tiny_dirs[1], stream, loss_of, tmp_path / "split", callbacks=[Stop()], **settings)
    assert stopped.global_step == 2 and stopped.metrics["stream_rows"] == 6
    resumed, result = _train(tiny_dirs[1], stream, loss_of, tmp_path / "split", resume_from_checkpoint=True, **settings)
    assert result.global_step == 5 and result.metrics["stream_rows"] == 15
    assert [h["loss"] for h in resumed.training_history] == [h["loss"] for h in whole.training_history][2:]
    ours, theirs = resumed.model.hf_state_dict(), whole.model.hf_state_dict()
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    unseeded = rows.to_iterable_dataset().shuffle(buffer_size=4)
    _train(tiny_dirs[1], unseeded, loss_of, tmp_path / "unseeded", callbacks=[Stop()], **settings)
    unseeded = rows.to_iterable_dataset().shuffle(buffer_size=4)  # made again, as a resumed script makes it
    with pytest.raises(CheckpointMismatchError, match="stream_shuffle.*shuffle it with a seed"):
        _train(tiny_dirs[1], unseeded, loss_of, tmp_path / "unseeded", resume_from_checkpoint=True, **settings)


def test_an_endless_stream_is_read_only_as_far_as_max_steps_needs(tiny_dirs, tmp_path, caplog):
    """The stream is never read whole (an endless one would hang the run): the generator below fails the test
    if read far past the steps asked for; its rows are checked as they come, the bad one named by number."""
    rng = np.random.default_rng(1)
    read = []

    def endless(bad_at: int | None = None):
        for i in range(10_000):
            read.append(i)
            if i > 400:
                raise AssertionError("the stream was read far past max_steps")
            label = "x" if i == bad_at else float(i % 2)
            yield {"q": _text(rng, 3), "d": _text(rng, 5), "label": label}

    stream = IterableDataset.from_generator(endless)
    model, result = _train(tiny_dirs[1], stream, losses.BinaryCrossEntropyLoss, tmp_path / "a", max_steps=3)
    assert result.global_step == 3 and result.metrics["stream_rows"] == 9 and len(model.training_history) == 3
    samples = model.model_card_data.training.datasets[0].samples  # the card shows the first rows, as in memory
    assert [list(row) for row in samples] == [["q", "d", "label"]] * 3 and samples[1]["label"] == 1.0
    # the plain in-memory reading is what a stream without max_steps gets, with a warning that says so
    finite = Dataset.from_dict(_rows("pairs")).to_iterable_dataset()
    with caplog.at_level(logging.WARNING, logger="crossjax"):
        _, result = _train(tiny_dirs[1], finite, losses.BinaryCrossEntropyLoss, tmp_path / "b", num_train_epochs=1)
    assert "read whole into memory: max_steps is not set" in caplog.text and result.global_step == 4
    # so are an evaluation stream and a stream among several training datasets, said before they are read
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="crossjax"):
        model = CrossEncoder(str(tiny_dirs[1]))
        CrossEncoderTrainer(model, _args(tmp_path / "c"), {"a": finite}, eval_dataset=finite)
    assert "train_dataset['a'] is a datasets.IterableDataset; it is read whole into memory: several" in caplog.text
    assert "eval_dataset is a datasets.IterableDataset; it is read whole into memory: an evaluation" in caplog.text
    # a bad row past the planned steps: the steps before it train, then the row is named by its number
    bad = IterableDataset.from_generator(endless, gen_kwargs={"bad_at": 5})
    with pytest.raises(ValueError, match=r"row 5: label 'x'"):
        _train(tiny_dirs[1], bad, losses.BinaryCrossEntropyLoss, tmp_path / "d", max_steps=3)


def test_a_stream_that_ends_early_or_outgrows_its_planned_lists_says_so(tiny_dirs, tmp_path, caplog, monkeypatch):
    data = _rows("pairs")  # 12 rows: 4 steps of 3
    stream = Dataset.from_dict(data).to_iterable_dataset()
    with caplog.at_level(logging.WARNING, logger="crossjax"):
        _, result = _train(tiny_dirs[1], stream, losses.BinaryCrossEntropyLoss, tmp_path / "a", max_steps=10)
    assert result.global_step == 4 and "ended after 12 rows, before max_steps=10" in caplog.text
    # drop_last drops the last partial batch (13 rows: 4 batches of 3)
    odd = Dataset.from_dict({k: [*v, v[0]] for k, v in data.items()}).to_iterable_dataset()
    _, result = _train(
        tiny_dirs[1], odd, losses.BinaryCrossEntropyLoss, tmp_path / "b", max_steps=10, dataloader_drop_last=True
    )
    assert result.global_step == 4 and result.metrics["stream_rows"] == 12
    # lists longer than the planning steps saw: the run's lists widen (one more shape), trained as in memory
    monkeypatch.setattr(ListData, "PLAN_SAMPLE_STEPS", 1)
    order = _epoch_zero_order(6)
    counts = [0] * 6
    for slot, row in enumerate(order):  # the stream's first step has at most 2 documents a row, its second 4
        counts[row] = [2, 1, 2, 4, 2, 1][slot]
    rng = np.random.default_rng(2)
    lists = {
        "q": [_text(rng, 3) for _ in counts],
        "docs": [[_text(rng, 3) for _ in range(c)] for c in counts],
        "labels": [[1.0] + [0.5] * (c - 1) for c in counts],
    }
    stream = Dataset.from_dict(lists).select(order).to_iterable_dataset()
    in_memory, _ = _train(tiny_dirs[1], Dataset.from_dict(lists), losses.ListNetLoss, tmp_path / "c", max_steps=2)
    with caplog.at_level(logging.INFO, logger="crossjax"):
        streamed, result = _train(tiny_dirs[1], stream, losses.ListNetLoss, tmp_path / "d", max_steps=2)
    assert "lists widen from 2 to 4" in caplog.text and result.metrics["docs_per_query"] == 4
    np.testing.assert_allclose(
        [h["loss"] for h in streamed.training_history], [h["loss"] for h in in_memory.training_history], rtol=1e-6
    )
    # the lists are padded otherwise (D = 2, then 4, against 4 throughout): the parameters whose true gradient is
    # zero (ListNet ignores a shift of a query's logits) move by Adam-normalised round-off, so they are loose
    _compare(
        streamed.model.hf_state_dict(), in_memory.model.hf_state_dict(), 1e-5, 1e-7, (KEY_BIAS, "classifier.bias")
    )
    # unless mini_batch_size would then split a micro-batch into more chunks (another program): refused by name
    with pytest.raises(ValueError, match=r"step 2 .* need 4 documents .* planned for 2 .* another number of chunks"):
        _train(tiny_dirs[1], stream, lambda m: losses.ListNetLoss(m, mini_batch_size=4), tmp_path / "e", max_steps=2)
