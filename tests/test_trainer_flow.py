"""The run around CrossEncoderTrainer's steps, against sentence-transformers 6.2's own trainer on the same tiny
checkpoint and arguments: when it evaluates (eval_on_start, eval_delay), logs (logging_first_step) and saves,
what callbacks see, what train() returns; resume paths, up-front errors, the model card of several datasets,
and NO_DUPLICATES epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import save_tiny_bert
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from crossjax import CrossEncoder, losses
from crossjax.checkpoint import CheckpointMismatchError
from crossjax.list_batches import no_duplicates_batches
from crossjax.models.checkpoints import CheckpointError
from crossjax.trainer import CrossEncoderTrainer
from crossjax.training_args import BatchSamplers, CrossEncoderTrainingArguments

WORDS = "apple river stone cloud music table green quick slow bright dark paper glass ocean forest city".split()
ROWS = 8
# A schedule that exercises every rule: an evaluation before the first step and every step from step 3
# on (eval_delay), a log at step 1 and every 2, checkpoints every 2 steps.
SCHEDULE = dict(
    max_steps=5, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
    eval_delay=3, eval_on_start=True, logging_steps=2, logging_first_step=True, save_steps=2, seed=0,
)  # fmt: skip
# The end of a run: evaluation steps (3) that miss the last step (5) evaluate there too, and logging by
# epoch logs the partial last epoch (8 rows in batches of 2: 1.25 epochs, 5 steps).
RUN_END = dict(
    num_train_epochs=1.25, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=3,
    logging_strategy="epoch", save_steps=2, seed=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny(minilm_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    return save_tiny_bert(tmp_path_factory.mktemp("tiny"), tokenizer, 1, seed=5, dropout=0.0, initializer_range=0.2)


def _pairs(seed: int = 3) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(rng.choice(WORDS, size=n))  # noqa: E731
    return {
        "q": [text(3) for _ in range(ROWS)],
        "d": [text(int(rng.integers(3, 8))) for _ in range(ROWS)],
        "label": [float(x) for x in rng.uniform(0, 1, ROWS)],
    }


class Recorder:
    """The events a Hugging Face TrainerCallback sees, with the state's global step at each."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        kind = "eval" if any(k.startswith("eval_") for k in logs) else "train" if "loss" in logs else "end"
        self.events.append((f"log:{kind}", state.global_step))

    def on_evaluate(self, args, state, control, **kwargs):
        self.events.append(("evaluate", state.global_step))

    def on_save(self, args, state, control, **kwargs):
        self.events.append(("save", state.global_step))

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.events.append(("epoch_begin", state.global_step))

    def on_step_begin(self, args, state, control, **kwargs):
        self.events.append(("step_begin", state.global_step))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.events.append(("pre_optimizer_step", state.global_step))

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.events.append(("optimizer_step", state.global_step))

    def on_substep_end(self, args, state, control, **kwargs):
        self.events.append(("substep_end", state.global_step))

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(("step_end", state.global_step))

    def on_prediction_step(self, args, state, control, **kwargs):
        self.events.append(("prediction_step", state.global_step))

    def on_epoch_end(self, args, state, control, **kwargs):
        self.events.append(("epoch_end", state.global_step))


def _kinds(log_history: list[dict]) -> list[tuple[str, int]]:
    def kind(entry: dict) -> str:
        return "eval" if "eval_loss" in entry else "train" if "loss" in entry else "end"

    return [(kind(h), h["step"]) for h in log_history]


def _theirs(directory: Path, tmp: Path, schedule: dict, evaluator=None, steer=None, callbacks=()):
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs
    from transformers import TrainerCallback

    class STRecorder(Recorder, TrainerCallback):
        pass

    torch.manual_seed(0)
    model = STCrossEncoder(str(directory), device="cpu")
    args = STArgs(output_dir=str(tmp), report_to="none", disable_tqdm=True, use_cpu=True, **schedule)
    if evaluator is not None:  # sentence-transformers takes its own evaluator class only
        from sentence_transformers.base.evaluation import BaseEvaluator

        scripted = evaluator
        evaluator = type("STScripted", (BaseEvaluator,), {"__call__": lambda self, *a, **k: scripted(*a, **k)})()
    recorder = STRecorder()
    callbacks = [*callbacks, recorder]
    if steer is not None:
        callbacks.insert(0, type("STSteer", (_Steer, TrainerCallback), {})(steer))
    data = Dataset.from_dict(_pairs())
    trainer = STTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, evaluator=evaluator, callbacks=callbacks
    )
    return trainer.train(), trainer.state, recorder.events


# All by epoch: an epoch's log, then its evaluation, then its save (Hugging Face's on_epoch_end order).
BY_EPOCH = dict(
    num_train_epochs=2, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="epoch",
    logging_strategy="epoch", save_strategy="epoch", seed=0,
)  # fmt: skip
# Gradient accumulation over 3 of an epoch's 4 batches, then the last one alone: Hugging Face's substeps (each
# accumulated batch but a step's last); an evaluation of 8 rows in batches of 3 (its prediction steps).
ACCUMULATED = dict(
    num_train_epochs=2, per_device_train_batch_size=2, gradient_accumulation_steps=3, per_device_eval_batch_size=3,
    learning_rate=1e-3, eval_strategy="epoch", logging_strategy="epoch", save_strategy="no", seed=0,
)  # fmt: skip
# No logging: nothing but the end's entry, whatever the saves.
NO_LOGS = dict(max_steps=4, per_device_train_batch_size=2, logging_strategy="no", logging_steps=2, save_steps=2, seed=0)
# Asked for explicitly, the evaluation before the first step and the first step's log come whatever the strategies.
FIRST_ONLY = dict(
    max_steps=3, per_device_train_batch_size=2, eval_strategy="no", eval_on_start=True, logging_strategy="no",
    logging_first_step=True, save_strategy="no", metric_for_best_model="loss", seed=0,
)  # fmt: skip


@pytest.mark.parametrize(
    "schedule",
    [SCHEDULE, RUN_END, BY_EPOCH, ACCUMULATED, NO_LOGS, FIRST_ONLY],
    ids=["schedule", "run_end", "by_epoch", "accumulated", "no_logs", "first_only"],
)
def test_evaluation_logging_and_saving_follow_sentence_transformers(tiny, tmp_path, capsys, schedule):
    import ast

    theirs, their_state, their_events = _theirs(tiny, tmp_path / "st", schedule)
    their_history = their_state.log_history
    their_printed = capsys.readouterr().out
    recorder = Recorder()
    args = CrossEncoderTrainingArguments(str(tmp_path / "ours"), disable_tqdm=True, **schedule)
    trainer = CrossEncoderTrainer(
        model=CrossEncoder(str(tiny)), args=args, train_dataset=_pairs(), eval_dataset=_pairs(), callbacks=[recorder]
    )
    ours = trainer.train()
    assert _kinds(trainer.state.log_history) == _kinds(their_history)
    expected = {  # what the oracle does, written out: the comparison above is not vacuous
        id(SCHEDULE): [("eval", 0), ("train", 1), ("train", 2), ("eval", 3)],
        id(RUN_END): [("eval", 3), ("train", 4), ("eval", 5), ("train", 5), ("end", 5)],
        id(BY_EPOCH): [("train", 4), ("eval", 4), ("train", 8), ("eval", 8), ("end", 8)],
        id(ACCUMULATED): [("train", 2), ("eval", 2), ("train", 4), ("eval", 4), ("end", 4)],
        id(NO_LOGS): [("end", 4)],
        id(FIRST_ONLY): [("eval", 0), ("train", 1), ("end", 3)],
    }[id(schedule)]
    assert _kinds(their_history)[: len(expected)] == expected
    assert recorder.events == their_events, (recorder.events, their_events)
    assert ("epoch_begin", 0) in recorder.events and ("step_begin", ours.global_step - 1) in recorder.events
    if schedule is ACCUMULATED:  # not vacuous: 2 substeps before each epoch's first step, 3 prediction steps an eval
        assert recorder.events.count(("substep_end", 0)) == recorder.events.count(("substep_end", 2)) == 2
        assert recorder.events.count(("prediction_step", 2)) == 3 and ("substep_end", 1) not in recorder.events
    assert ours.global_step == theirs.global_step
    for name in ("global_step", "epoch", "max_steps", "logging_steps", "eval_steps", "save_steps", "best_global_step"):
        assert getattr(trainer.state, name) == getattr(their_state, name), name
    # Each log entry is printed as Hugging Face's progress or printer callback prints it (the values differ)
    printed = [ast.literal_eval(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    theirs_printed = [ast.literal_eval(line) for line in their_printed.splitlines() if line.startswith("{")]
    assert [sorted(d) for d in printed] == [sorted(d) for d in theirs_printed] and len(printed) == len(their_history)
    # train() returns the mean loss of all steps, and its metrics say the same (not the last step's loss); the
    # batches are drawn by other generators (README), so only the evaluation before any step is the same number
    step_losses = [h["loss"] for h in trainer.model.training_history]
    assert ours.metrics["train_loss"] == ours.training_loss == pytest.approx(np.mean(step_losses), rel=1e-6)
    assert theirs.metrics["train_loss"] == theirs.training_loss
    assert "best_score" not in ours.metrics
    if schedule is SCHEDULE:  # an evaluation before the first step
        assert trainer.state.log_history[0]["eval_loss"] == pytest.approx(their_history[0]["eval_loss"], abs=1e-5)


def test_resume_from_a_step_folder_or_refuse(tiny, tmp_path):
    def trainer(output: Path, data: dict | None = None, **extra) -> CrossEncoderTrainer:
        args = CrossEncoderTrainingArguments(
            str(output), max_steps=4, per_device_train_batch_size=2, save_steps=2, disable_tqdm=True, **extra
        )
        return CrossEncoderTrainer(model=CrossEncoder(str(tiny)), args=args, train_dataset=data or _pairs())

    whole = trainer(tmp_path / "run").train()
    steps = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in steps.iterdir()) == ["2", "4"]
    # Hugging Face's habit: the latest step's own folder resumes that step (nothing left to train here)
    resumed = trainer(tmp_path / "run").train(resume_from_checkpoint=str(steps / "4"))
    assert resumed.metrics["resumed_from_step"] == 4 and resumed.global_step == whole.global_step
    with pytest.raises(ValueError, match=r"is step 2, but .* holds later steps \[4\]"):
        trainer(tmp_path / "run").train(resume_from_checkpoint=str(steps / "2"))
    with pytest.raises(FileNotFoundError, match="holds no crossjax checkpoint"):
        trainer(tmp_path / "other").train(resume_from_checkpoint=str(tmp_path / "run"))  # not a checkpoints folder
    assert sorted(p.name for p in steps.iterdir()) == ["2", "4"]  # nothing was written into the folders
    # Other data of the same shapes (labels reversed, columns swapped) is another run: refused, as fit refuses it
    pairs = _pairs()
    for changed in ({**pairs, "label": pairs["label"][::-1]}, {**pairs, "q": pairs["d"], "d": pairs["q"]}):
        with pytest.raises(CheckpointMismatchError, match="data: checkpoint"):
            trainer(tmp_path / "run", changed).train(resume_from_checkpoint=True)
    # Hugging Face: asked to resume where no complete checkpoint is, a ValueError, never a silent fresh start
    (tmp_path / "empty" / "checkpoints" / "2.orbax-checkpoint-tmp").mkdir(parents=True)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        trainer(tmp_path / "empty").train(resume_from_checkpoint=True)
    assert trainer(tmp_path / "empty").train().global_step == 4  # and a fresh start is not refused there


def test_evaluation_without_anything_to_evaluate_is_refused_up_front(tiny, tmp_path):
    model = CrossEncoder(str(tiny))
    args = CrossEncoderTrainingArguments(str(tmp_path), eval_strategy="steps", eval_steps=1, disable_tqdm=True)
    with pytest.raises(ValueError, match="neither eval_dataset nor evaluator"):
        CrossEncoderTrainer(model=model, args=args, train_dataset=_pairs())
    plain = CrossEncoderTrainer(model=model, args=CrossEncoderTrainingArguments(str(tmp_path)), train_dataset=_pairs())
    with pytest.raises(ValueError, match="evaluate.. needs an eval_dataset"):
        plain.evaluate()
    with pytest.raises(ValueError, match="eval_dataset is empty"):
        plain.evaluate({"q": [], "d": [], "label": []})
    for bad in ({"logging_steps": 0}, {"save_steps": 0}, {"eval_strategy": "steps", "eval_steps": -1}):
        with pytest.raises(ValueError, match="needs .*_steps > 0"):
            CrossEncoderTrainingArguments(str(tmp_path), **bad)


def test_an_evaluators_values_beside_its_scores_are_skipped_its_primary_metric_must_be_a_number(tiny, tmp_path, caplog):
    """As sentence-transformers trains on: a note, a list or a None beside the scores is not logged (a warning
    names it); the primary metric (or metric_for_best_model) that is not a number is a TypeError naming it."""

    class Noted:
        primary_metric = "score"

        def __init__(self, score):
            self.score = score

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            return {"score": self.score, "note": "x", "per_query": [0.1, 0.2], "missing": None}

    model = CrossEncoder(str(tiny))
    args = CrossEncoderTrainingArguments(str(tmp_path), disable_tqdm=True)
    with caplog.at_level("WARNING", logger="crossjax"):
        metrics = CrossEncoderTrainer(model=model, args=args, evaluator=Noted(0.5)).evaluate()
    assert metrics["eval_score"] == 0.5 and not {"eval_note", "eval_per_query", "eval_missing"} & set(metrics)
    assert "returned 'note'" in caplog.text and "returned 'per_query'" in caplog.text
    with pytest.raises(TypeError, match="the evaluator Noted returned 'score': 'high'"):
        CrossEncoderTrainer(model=model, args=args, evaluator=Noted("high")).evaluate()
    best_is_note = CrossEncoderTrainingArguments(str(tmp_path), metric_for_best_model="note", disable_tqdm=True)
    with pytest.raises(TypeError, match="returned 'note': 'x'"):
        CrossEncoderTrainer(model=model, args=best_is_note, evaluator=Noted(0.5)).evaluate()


def test_the_trainer_puts_its_model_into_losses_made_for_another(tiny, minilm_dir, tmp_path):
    """As sentence-transformers' trainer: a loss made for another model computes with the trainer's. Its checks
    then hold for the model that trains: a one-label loss on a 3-label model is refused (it trained logit 0
    only, silently), cross-entropy on a one-label model too (nothing trains: it ended in a NaN-loss error)."""
    from transformers import AutoTokenizer

    three = save_tiny_bert(tmp_path / "three", AutoTokenizer.from_pretrained(str(minilm_dir)), 3)
    one_label, three_labels = CrossEncoder(str(tiny)), CrossEncoder(str(three))
    args = CrossEncoderTrainingArguments(str(tmp_path / "out"), disable_tqdm=True)
    with pytest.raises(ValueError, match="BinaryCrossEntropyLoss expects a model with 1 output label, but got .* 3"):
        CrossEncoderTrainer(model=three_labels, args=args, train_dataset=_pairs(),
                            loss=losses.BinaryCrossEntropyLoss(one_label))  # fmt: skip
    with pytest.raises(ValueError, match="CrossEntropyLoss over a model's one output is 0"):
        CrossEncoderTrainer(model=one_label, args=args, train_dataset=_pairs(),
                            loss={"a": losses.CrossEntropyLoss(three_labels)})  # fmt: skip
    other = CrossEncoder(str(tiny))
    loss = losses.BinaryCrossEntropyLoss(other)
    CrossEncoderTrainer(model=one_label, args=args, train_dataset=_pairs(), loss=loss)
    assert loss.model is one_label


def test_an_overflowed_update_marks_the_model_instead_of_a_misleading_next_error(tiny, tmp_path):
    from crossjax.fit_loop import ParametersOverflowError

    model = CrossEncoder(str(tiny))
    args = CrossEncoderTrainingArguments(
        str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e30, save_strategy="no",
        disable_tqdm=True,
    )  # fmt: skip
    with pytest.raises(ParametersOverflowError, match="load it again"):
        CrossEncoderTrainer(model=model, args=args, train_dataset=_pairs()).train()
    with pytest.raises(ValueError, match="not finite since an earlier run's update overflowed"):
        CrossEncoderTrainer(model=model, args=args, train_dataset=_pairs()).train()


def test_model_card_lists_every_training_dataset_with_its_loss(tiny, tmp_path):
    from datasets import Dataset

    model = CrossEncoder(str(tiny))
    datasets = {"scored": Dataset.from_dict(_pairs(1)), "triplets": Dataset.from_dict(_triplets())}
    loss = {"scored": losses.BinaryCrossEntropyLoss(model), "triplets": losses.MultipleNegativesRankingLoss(model)}
    args = CrossEncoderTrainingArguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True
    )
    CrossEncoderTrainer(model=model, args=args, train_dataset=datasets, loss=loss).train()
    card = (model.save(tmp_path / "model") / "README.md").read_text()
    for name in ("#### scored", "#### triplets", "BinaryCrossEntropyLoss", "MultipleNegativesRankingLoss"):
        assert name in card
    assert "loss:BinaryCrossEntropyLoss" in card and "loss:MultipleNegativesRankingLoss" in card
    assert card.count(f"* Size: {ROWS:,} training samples") == 2
    # A later run of the same model is what its card describes.
    CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(_pairs(4))).train()
    card = (model.save(tmp_path / "again") / "README.md").read_text()
    assert "#### scored" not in card and "#### triplets" not in card and "#### Unnamed Dataset" in card


def _triplets() -> dict[str, list]:
    pairs = _pairs(2)
    return {"q": pairs["q"], "pos": pairs["d"], "neg": list(reversed(pairs["d"]))}


def test_no_duplicates_epochs_train_every_row_once_a_pass(tiny, tmp_path):
    """A NO_DUPLICATES pass makes as many batches as its clashes need, so epochs (sentence-transformers'
    advertised length, rows / batch size) are cut from the passes laid end to end: no row repeats or is
    dropped within a pass, where padding or cutting each pass to the epoch length would."""
    texts = [WORDS[i % 3] for i in range(20)]  # three distinct queries: a batch of 4 always clashes
    data = {"q": texts, "pos": [f"document {i}" for i in range(20)]}
    seen: list[np.ndarray] = []
    model = CrossEncoder(str(tiny))
    args = CrossEncoderTrainingArguments(
        str(tmp_path), num_train_epochs=3, per_device_train_batch_size=4, batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no", disable_tqdm=True, seed=1,
    )  # fmt: skip
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=data, loss=losses.MultipleNegativesRankingLoss(model)
    )
    source = trainer._list_data(data, "train_dataset", train=True)
    assert source.steps_per_epoch == 5  # ceil(20 rows / 4), as sentence-transformers advertises
    for epoch in range(3):
        seen.extend(rows for step in source._epoch_steps(epoch) for rows in step)
    orders = [np.random.default_rng((1, p)).permutation(20) for p in range(3)]
    passes = [no_duplicates_batches([texts, data["pos"]], order, 4) for order in orders]
    stream = [b for batches in passes for b in batches]
    assert all(len(p) > 5 for p in passes)  # each pass needs more batches than the advertised five
    for got, expected in zip(seen, stream, strict=False):
        np.testing.assert_array_equal(got, expected)
    for batch in seen:  # no text twice in a batch
        assert len({texts[i] for i in batch}) == len(batch)
    assert trainer.train().global_step == 15


def test_no_duplicates_compares_a_list_of_texts_as_one_value():
    """sentence-transformers' sampler compares each column's value whole (``_sample_value_str``): rows whose
    document lists share one hard negative do not clash. Its own value function is the oracle."""
    from sentence_transformers.base.sampler import _sample_value_str

    queries = [f"query {i}" for i in range(8)]
    lists = [[f"doc {i}a", f"doc {i}b", "shared negative"] for i in range(8)]
    batches = no_duplicates_batches([queries, lists], np.arange(8), 4)
    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert len({_sample_value_str(lists[i]) for i in range(8)}) == 8  # no two rows' values are equal there
    lists[5] = lists[4]  # a whole list repeated is a clash: row 5 waits for a later batch
    assert [b.tolist() for b in no_duplicates_batches([queries, lists], np.arange(8), 4)] == [
        [0, 1, 2, 3],
        [4, 6, 7],
        [5],
    ]


class _ScriptedEvaluator:
    """A score fixed by the step (best at step 2, before the run below is interrupted), so which step is best does
    not depend on how training went."""

    SCORES = {2: 0.9, 4: 0.5, 6: 0.7, 8: 0.6}

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {"score": np.float32(self.SCORES[steps])}  # a numpy scalar, as evaluators return


class _StopAt:
    """Ends the run after ``step`` (as a preemption right after that step's checkpoint would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resumed_run_keeps_the_log_history_and_the_best_model_of_before(tiny, tmp_path):
    """Hugging Face keeps trainer_state.json (log history, best metric and step) and the best checkpoint: a run
    resumed after its best evaluation still ends with that model and the whole history, as if never stopped."""
    from flax import nnx

    def train(output: Path, callbacks=(), resume=None):
        args = CrossEncoderTrainingArguments(
            str(output), max_steps=8, per_device_train_batch_size=2, learning_rate=1e-2, eval_strategy="steps",
            eval_steps=2, save_steps=2, save_total_limit=1, logging_steps=2, load_best_model_at_end=True,
            metric_for_best_model="score", disable_tqdm=True, seed=0,
        )  # fmt: skip
        model = CrossEncoder(str(tiny))
        trainer = CrossEncoderTrainer(
            model=model, args=args, train_dataset=_pairs(), evaluator=_ScriptedEvaluator(), callbacks=list(callbacks)
        )
        trainer.train(resume_from_checkpoint=resume)
        params = jax.tree.leaves(jax.device_get(nnx.state(model.model, nnx.Param)))
        return trainer, params

    class Begins:
        """Where a resumed run's callbacks begin: Hugging Face restores the state before on_train_begin."""

        def __init__(self) -> None:
            self.events = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.events.append(("train_begin", state.global_step, state.epoch))

        def on_epoch_begin(self, args, state, control, **kwargs):
            self.events.append(("epoch_begin", state.global_step, state.epoch))

        def on_step_begin(self, args, state, control, **kwargs):
            self.events.append(("step_begin", state.global_step, state.epoch))

    whole, whole_params = train(tmp_path / "whole")
    train(tmp_path / "stopped", callbacks=[_StopAt(4)])
    begins = Begins()
    resumed, resumed_params = train(tmp_path / "stopped", callbacks=[begins], resume=True)
    assert begins.events[:4] == [("train_begin", 4, 1.0), ("epoch_begin", 4, 1.0), ("step_begin", 4, 1.0),
                                 ("step_begin", 5, 1.25)]  # fmt: skip
    assert whole.state.best_global_step == resumed.state.best_global_step == 2
    assert whole.state.best_metric == resumed.state.best_metric == pytest.approx(0.9)
    kept = json.loads((tmp_path / "stopped" / "checkpoints" / "8" / "meta" / "metadata").read_text())["trainer_state"]
    assert kept["best_global_step"] == 2 and kept["best_metric"] == pytest.approx(0.9)  # Hugging Face's names
    # The best model is step 2's, trained before the interruption (save_total_limit=1 kept only step 4's
    # checkpoint, which carries it); training resumed bit-exactly, so the models are equal.
    for a, b in zip(whole_params, resumed_params, strict=True):
        np.testing.assert_array_equal(a, b)
    # The log history is the uninterrupted run's, entry by entry (the end-of-run entries report timings).
    timed = ("_runtime", "_samples_per_second", "_steps_per_second", "train_loss")

    def untimed_of(history):
        return [{k: v for k, v in h.items() if not k.endswith(timed)} for h in history]

    untimed, resumed_untimed = untimed_of(whole.state.log_history), untimed_of(resumed.state.log_history)
    assert [h["step"] for h in untimed] == [2, 2, 4, 4, 6, 6, 8, 8, 8], untimed
    assert len(resumed_untimed) == len(untimed)
    for ours, uninterrupted in zip(resumed_untimed, untimed, strict=True):
        assert ours == pytest.approx(uninterrupted, rel=1e-6), (ours, uninterrupted)


@pytest.mark.parametrize("drop_last", [False, True])
def test_evaluate_logs_and_reports_as_sentence_transformers(tiny, tmp_path, drop_last):
    """A standalone evaluate(): one log entry (and on_log, on_evaluate) per named eval dataset, Hugging Face's
    speed metrics and epoch, and with dataloader_drop_last the last partial eval batch left out, as there."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs
    from transformers import TrainerCallback

    class STRecorder(Recorder, TrainerCallback):
        pass

    settings = dict(per_device_eval_batch_size=3, dataloader_drop_last=drop_last, seed=0)
    named = {"first": _pairs(4), "second": _pairs(5)}

    def st_trainer(named, **overrides):
        torch.manual_seed(0)
        recorder = STRecorder()
        options = {**settings, **overrides}
        args = STArgs(str(tmp_path / "st"), report_to="none", disable_tqdm=True, use_cpu=True, **options)
        trainer = STTrainer(
            model=STCrossEncoder(str(tiny), device="cpu"),
            args=args,
            train_dataset=Dataset.from_dict(_pairs()),
            eval_dataset={name: Dataset.from_dict(rows) for name, rows in named.items()},
            callbacks=[recorder],
        )
        return trainer, recorder

    theirs, their_recorder = st_trainer(named)
    their_metrics = theirs.evaluate()
    if drop_last:
        # sentence-transformers drops a seeded random partial batch (its batch sampler shuffles evaluation too);
        # crossjax evaluates in order and drops the last one: compare with its loss on the rows crossjax keeps
        kept = {name: {k: v[: ROWS // 3 * 3] for k, v in rows.items()} for name, rows in named.items()}
        losses = st_trainer(kept, dataloader_drop_last=False)[0].evaluate()
        their_metrics.update({k: v for k, v in losses.items() if k.endswith("_loss")})
    our_recorder = Recorder()
    ours = CrossEncoderTrainer(
        model=CrossEncoder(str(tiny)),
        args=CrossEncoderTrainingArguments(str(tmp_path / "ours"), disable_tqdm=True, **settings),
        train_dataset=_pairs(),
        eval_dataset=named,
        callbacks=[our_recorder],
    )
    our_metrics = ours.evaluate()
    # transformers times its first move of the torch model onto the device: nothing of the kind here
    their_metrics = {k: v for k, v in their_metrics.items() if not k.endswith("_model_preparation_time")}
    assert set(our_metrics) == set(their_metrics), (sorted(our_metrics), sorted(their_metrics))
    for name in named:
        key = f"eval_{name}_loss"
        assert our_metrics[key] == pytest.approx(their_metrics[key], abs=1e-5), key
    batches = ROWS // 3 if drop_last else -(-ROWS // 3)  # the rows in batches of 3: a prediction step each
    expected = ([("prediction_step", 0)] * batches + [("log:eval", 0), ("evaluate", 0)]) * 2
    assert our_recorder.events == their_recorder.events == expected
    their_keys = [sorted(k for k in h if not k.endswith("_model_preparation_time")) for h in theirs.state.log_history]
    assert [sorted(h) for h in ours.state.log_history] == their_keys


def test_evaluating_fewer_rows_than_a_dropped_batch_reports_no_loss(tiny, tmp_path):
    """Hugging Face evaluates no batch then, and logs its timings without a loss (training goes on)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer as STTrainer
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments as STArgs

    settings = dict(per_device_eval_batch_size=16, dataloader_drop_last=True, per_device_train_batch_size=2)
    torch.manual_seed(0)
    theirs = STTrainer(
        model=STCrossEncoder(str(tiny), device="cpu"),
        args=STArgs(str(tmp_path / "st"), report_to="none", disable_tqdm=True, use_cpu=True, **settings),
        train_dataset=Dataset.from_dict(_pairs()),
        eval_dataset=Dataset.from_dict(_pairs(4)),
    ).evaluate()
    args = CrossEncoderTrainingArguments(str(tmp_path / "ours"), disable_tqdm=True, **settings)
    ours = CrossEncoderTrainer(model=CrossEncoder(str(tiny)), args=args, train_dataset=_pairs(), eval_dataset=_pairs(4))
    metrics = ours.evaluate()
    theirs = {k for k in theirs if not k.endswith("_model_preparation_time")}
    assert set(metrics) == theirs and "eval_loss" not in theirs, (sorted(metrics), sorted(theirs))


def test_resuming_a_checkpoint_from_before_the_trainer_decay_rule_keeps_its_rule(tiny, tmp_path, caplog):
    """Trainer checkpoints written before the trainer took Hugging Face's weight-decay rule decayed with fit's:
    their resume continues with it (and says so) instead of switching rules mid-run."""
    import json
    import logging

    def trainer(callbacks=()):
        args = CrossEncoderTrainingArguments(
            str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=2, save_steps=2, weight_decay=0.1,
            disable_tqdm=True,
        )  # fmt: skip
        model = CrossEncoder(str(tiny))
        return CrossEncoderTrainer(model=model, args=args, train_dataset=_pairs(), callbacks=list(callbacks))

    trainer([_StopAt(2)]).train()
    meta_file = tmp_path / "run" / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert meta["fingerprint"].pop("decay_rule") == "trainer"
    meta_file.write_text(json.dumps(meta))  # as an older crossjax wrote it
    with caplog.at_level(logging.WARNING, logger="crossjax"):
        assert trainer().train(resume_from_checkpoint=True).global_step == 4
    assert "decayed with 'fit''s weight-decay rule: it keeps that rule" in caplog.text
    later = json.loads((tmp_path / "run" / "checkpoints" / "4" / "meta" / "metadata").read_text())
    assert later["fingerprint"]["decay_rule"] == "fit"


class _StartScores:
    """The untrained model scores best (evaluation at step 0), then steps 1-3 score 0.5, 0.7, 0.6."""

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {"score": {0: 0.9, 1: 0.5, 2: 0.7, 3: 0.6}[steps]}


class _HuggingFaceKwargs:
    """Reads what Hugging Face's CallbackHandler passes to every event, and stops the run by returning a new
    control (call_event replaces the trainer's control with a callback's return value)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, bool]] = []

    def _record(self, event, kwargs):
        self.seen.append((event, kwargs["model"] is not None, kwargs["processing_class"] is not None))

    def on_evaluate(self, args, state, control, **kwargs):
        self._record("on_evaluate", kwargs)
        kwargs["model"].predict([("apple river", "stone cloud")])

    def on_save(self, args, state, control, **kwargs):
        self._record("on_save", kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        self._record("on_train_end", kwargs)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 3:
            return type(control)(should_training_stop=True)
        return None


def test_callbacks_get_hugging_faces_arguments_and_eval_on_start_is_no_best_candidate(tiny, tmp_path):
    """As Hugging Face's Trainer (and sentence-transformers 6.2's, which the probe compared): the evaluation on
    start is not a best-model candidate, every event gets model= and processing_class=, a returned control
    replaces the trainer's, and its own DefaultFlowCallback (which reads state.logging_steps) runs."""
    from transformers import DefaultFlowCallback

    model = CrossEncoder(str(tiny))
    before = model.predict([("apple river", "stone cloud")])
    recorder = _HuggingFaceKwargs()
    args = CrossEncoderTrainingArguments(
        str(tmp_path), max_steps=6, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps",
        eval_steps=1, eval_on_start=True, save_steps=2, metric_for_best_model="score", load_best_model_at_end=True,
    )  # fmt: skip
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=_pairs(), evaluator=_StartScores(),
        callbacks=[recorder, DefaultFlowCallback()],
    )  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 3  # stopped by the returned control
    assert (trainer.state.best_metric, trainer.state.best_global_step) == (0.7, 2)
    assert not np.allclose(model.predict([("apple river", "stone cloud")]), before)  # step 2's model, not step 0's
    assert {event for event, _, _ in recorder.seen} == {"on_evaluate", "on_save", "on_train_end"}
    assert all(has_model and has_tokenizer for _, has_model, has_tokenizer in recorder.seen)
    assert trainer.state.logging_steps == 500 and trainer.state.eval_steps == 1 and trainer.state.save_steps == 2
    trainer.remove_callback(recorder)
    with pytest.raises(ValueError, match="is not among the trainer's callbacks"):  # Hugging Face: list.remove
        trainer.remove_callback(recorder)
    trainer.remove_callback(DefaultFlowCallback)
    trainer.remove_callback(DefaultFlowCallback)  # a class that is not there: nothing to do, as there


def test_a_metric_a_callback_adds_in_on_evaluate_counts_for_the_best_model(tiny, tmp_path):
    """Hugging Face passes one metrics dict around: a callback's added score (named by metric_for_best_model)
    picks the best model and is returned by evaluate(); it was a KeyError at the first evaluation."""
    from transformers import TrainerCallback

    combined = iter([0.2, 0.9, 0.4])

    class Combine(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            metrics["eval_combined"] = next(combined)

    args = CrossEncoderTrainingArguments(
        str(tmp_path), max_steps=3, per_device_train_batch_size=2, eval_strategy="steps", eval_steps=1,
        save_steps=1, metric_for_best_model="combined", load_best_model_at_end=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = CrossEncoderTrainer(model=CrossEncoder(str(tiny)), args=args, train_dataset=_pairs(),
                                  eval_dataset=_pairs(4), callbacks=[Combine()])  # fmt: skip
    trainer.train()
    assert (trainer.state.best_metric, trainer.state.best_global_step) == (0.9, 2)
    combined = iter([0.5])
    assert trainer.evaluate()["eval_combined"] == 0.5
    # Hugging Face's Trainer.log, which scripts call to log their own numbers
    seen = []

    class Seen(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer.add_callback(Seen())
    trainer.log({"custom": 1.5})
    assert trainer.state.log_history[-1] == {"custom": 1.5, "epoch": trainer.state.epoch, "step": 3}
    assert seen == [{"custom": 1.5, "epoch": trainer.state.epoch}]


def test_finished_run_resume_and_metric_files_as_hugging_face(tiny, tmp_path, capsys):
    """A resume of a run that has nothing left to train ends at the run's step with a loss of 0 (Hugging Face's
    state and value); log_metrics / save_metrics / save_state print and write what Hugging Face's do."""
    from transformers import TrainerState as HFState
    from transformers.trainer_pt_utils import log_metrics, save_metrics

    def trainer(**evaluation) -> CrossEncoderTrainer:
        args = CrossEncoderTrainingArguments(
            str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=2, save_steps=2, disable_tqdm=True,
            **evaluation,
        )  # fmt: skip
        data = _pairs()
        return CrossEncoderTrainer(model=CrossEncoder(str(tiny)), args=args, train_dataset=data, eval_dataset=data)

    first = trainer().train()
    again = trainer(eval_strategy="epoch")  # how often to evaluate does not change the run: it resumes
    output = again.train(resume_from_checkpoint=True)
    assert output.global_step == again.state.global_step == 4 and again.state.epoch == first.metrics["epoch"]
    assert output.training_loss == output.metrics["train_loss"] == 0.0
    assert again.state.log_history[-1]["step"] == 4
    capsys.readouterr()

    metrics = {"train_runtime": 3725.257, "train_loss": 0.123456789, "epoch": 2.0, "total_flos": 3 * 2**30, "n": 7}
    again.log_metrics("train", metrics)
    ours = capsys.readouterr().out
    log_metrics(again, "train", metrics)  # Hugging Face's, on the same object
    assert ours == capsys.readouterr().out and "train_runtime = 1:02:05.25" in ours
    again.save_metrics("train", metrics)
    again.save_metrics("eval", {"eval_loss": np.float32(0.5)})
    ours_files = {p.name: p.read_text() for p in (tmp_path / "run").glob("*_results.json")}
    for name in ours_files:
        (tmp_path / "run" / name).unlink()
    save_metrics(again, "train", metrics)
    save_metrics(again, "eval", {"eval_loss": 0.5})
    assert ours_files == {p.name: p.read_text() for p in (tmp_path / "run").glob("*_results.json")}
    assert set(ours_files) == {"train_results.json", "eval_results.json", "all_results.json"}
    again.save_state()
    theirs = HFState.load_from_json(str(tmp_path / "run" / "trainer_state.json"))  # Hugging Face reads it
    assert theirs.global_step == 4 and theirs.log_history == again.state.log_history


class _Steer:
    """Sets control flags at given (event, step)s, as a user's callback may: Hugging Face acts on them after the
    event (log, evaluate, save, stop)."""

    def __init__(self, plan: dict[tuple[str, int], dict[str, bool]]) -> None:
        self.plan = plan

    def _apply(self, event: str, state, control) -> None:
        for flag, value in self.plan.get((event, state.global_step), {}).items():
            setattr(control, flag, value)

    def on_step_end(self, args, state, control, **kwargs):
        self._apply("step_end", state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._apply("epoch_end", state, control)

    def on_evaluate(self, args, state, control, **kwargs):
        self._apply("evaluate", state, control)

    def on_log(self, args, state, control, **kwargs):
        self._apply("log", state, control)

    def on_save(self, args, state, control, **kwargs):
        self._apply("save", state, control)


def _ours(tiny: Path, output: Path, *callbacks, eval_dataset: bool = True, evaluator=None, **arguments):
    """crossjax's trainer of the tiny model on ``_pairs()`` (also its eval data unless ``eval_dataset=False``),
    the progress bar off and seed 0 unless the arguments say otherwise."""
    args = CrossEncoderTrainingArguments(str(output), **{"disable_tqdm": True, "seed": 0, **arguments})
    return CrossEncoderTrainer(
        model=CrossEncoder(str(tiny)), args=args, train_dataset=_pairs(),
        eval_dataset=_pairs() if eval_dataset else None, evaluator=evaluator, callbacks=list(callbacks),
    )  # fmt: skip


class _StepScores:
    """A score fixed by the step (so which evaluations are best does not depend on training)."""

    SCORES = {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.8, 5: 0.8, 6: 0.9, 7: 0.1, 8: 0.95, 9: 0.3, 10: 0.2}

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {"score": self.SCORES[steps]}


# A callback steering the run (8 rows in batches of 2: 4 steps an epoch): an evaluation asked for at step 1
# although evaluation is by epoch, a log and a save at step 2 although logging is off and saving by epoch, the
# first epoch's evaluation vetoed at its end, and the run stopped mid-epoch at step 6, whose epoch end still
# evaluates and saves (Hugging Face ends the epoch's loop).
STEERED = dict(
    max_steps=10, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="epoch", logging_strategy="no",
    save_strategy="epoch", seed=0,
)  # fmt: skip
STEER = {
    ("step_end", 1): {"should_evaluate": True},
    ("step_end", 2): {"should_log": True, "should_save": True},
    ("epoch_end", 4): {"should_evaluate": False},
    ("step_end", 6): {"should_training_stop": True},
}
# save_strategy="best": a checkpoint after each evaluation that beats the best so far (0.5, 0.7, 0.8, 0.9, 0.95;
# not 0.6, the second 0.8 or 0.1), and no save at the run's end.
BEST = dict(
    max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
    logging_steps=3, save_strategy="best", metric_for_best_model="score", seed=0,
)  # fmt: skip
# Evaluation by steps and saving by epoch with a save vetoed at step 4's epoch end and one forced at step 3.
VETO = dict(
    max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=2,
    logging_steps=2, save_strategy="epoch", seed=0,
)  # fmt: skip
VETOES = {("epoch_end", 4): {"should_save": False}, ("step_end", 3): {"should_save": True}}
# An epoch ended early at step 2 (control.should_epoch_stop): its end is logged, evaluated and saved, the next
# step opens the next epoch, and the run ends at max_steps (10, in epoch 2) or when its epochs run out (2
# epochs: step 6), as Hugging Face's does.
EPOCH_STOP = dict(
    max_steps=10, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="epoch", logging_steps=1,
    save_strategy="epoch", seed=0,
)  # fmt: skip
EPOCHS_STOP = {**{k: v for k, v in EPOCH_STOP.items() if k != "max_steps"}, "num_train_epochs": 2}
STOP_EPOCH = {("step_end", 2): {"should_epoch_stop": True}}
# A stop asked for while the step logs, evaluates or saves still ends the epoch there (its log, evaluation and
# save by epoch); one vetoed at on_epoch_end goes on with the next epoch (the run ends when the epochs run out).
BY_EPOCH_FIRST_LOG = {**BY_EPOCH, "logging_first_step": True}
STOP_IN_LOG = {("log", 1): {"should_training_stop": True}}
PER_STEP = dict(
    max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
    logging_steps=1, save_steps=1, seed=0,
)  # fmt: skip
STOP_IN_EVALUATE = {("evaluate", 2): {"should_training_stop": True}}
STOP_VETOED = {("step_end", 2): {"should_training_stop": True}, ("epoch_end", 2): {"should_training_stop": False}}


@pytest.mark.parametrize(
    "schedule, steer, saved",
    [
        (STEERED, STEER, [2, 4, 6]),
        (BEST, None, [1, 2, 4, 6, 8]),
        (VETO, VETOES, [3, 8]),
        (EPOCH_STOP, STOP_EPOCH, [2, 6, 10]),
        (EPOCHS_STOP, STOP_EPOCH, [2, 6]),
        (BY_EPOCH_FIRST_LOG, STOP_IN_LOG, [1]),
        (PER_STEP, STOP_IN_EVALUATE, [1, 2]),
        ({**PER_STEP, "save_strategy": "no"}, STOP_VETOED, []),
    ],
    ids=["steered", "best", "veto", "epoch_stop", "epochs_run_out", "stop_in_log", "stop_in_evaluate", "vetoed"],
)
def test_callbacks_steer_logging_evaluation_and_saving_as_in_hugging_face(tiny, tmp_path, schedule, steer, saved):
    """Hugging Face's flow after a step: on_step_end (its DefaultFlowCallback first sets what the arguments
    schedule, then a user's callback may change it), the step's log, evaluation and save as the control says;
    at an epoch's end or a stop, on_epoch_end and the same. Events, log entries and the steps saved equal
    sentence-transformers' trainer's."""
    theirs, their_state, their_events = _theirs(tiny, tmp_path / "st", schedule, _StepScores(), steer)
    their_saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "st").glob("checkpoint-*"))
    recorder = Recorder()
    callbacks = [recorder] if steer is None else [_Steer(steer), recorder]
    args = CrossEncoderTrainingArguments(str(tmp_path / "ours"), disable_tqdm=True, **schedule)
    trainer = CrossEncoderTrainer(
        model=CrossEncoder(str(tiny)), args=args, train_dataset=_pairs(), eval_dataset=_pairs(),
        evaluator=_StepScores(), callbacks=callbacks,
    )  # fmt: skip
    ours = trainer.train()
    assert their_saved == saved  # what the oracle does, written out
    assert recorder.events == their_events, (recorder.events, their_events)
    assert _kinds(trainer.state.log_history) == _kinds(their_state.log_history)
    epochs = [h["epoch"] for h in trainer.state.log_history]
    assert epochs == pytest.approx([h["epoch"] for h in their_state.log_history])
    assert ours.global_step == theirs.global_step and trainer.state.epoch == pytest.approx(their_state.epoch)
    assert (trainer.state.best_metric, trainer.state.best_global_step) == (
        their_state.best_metric,
        their_state.best_global_step,
    )
    # crossjax keeps a checkpoint of the last step too (for a resume), without an on_save
    folder = tmp_path / "ours" / "checkpoints"
    ours_saved = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
    assert ours_saved == (sorted({*saved, ours.global_step}) if args.save_strategy != "no" else [])


class _FirstBest:
    """The first evaluation scores best, so the best model's checkpoint is the oldest."""

    SCORES = {1: 0.9, 2: 0.1, 3: 0.2, 4: 0.3}

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {"score": self.SCORES[steps]}


def test_the_best_models_checkpoint_is_kept_named_and_loads_as_in_hugging_face(tiny, tmp_path):
    """``state.best_model_checkpoint`` names the best step's checkpoint, which ``save_total_limit`` never deletes
    (Hugging Face's rotation); each checkpoint holds its model, which crossjax loads from the step's folder and
    sentence-transformers from its ``model`` folder, with the scores of the best model."""
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder

    schedule = dict(
        max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
        logging_steps=1, save_steps=1, save_total_limit=2, metric_for_best_model="score",
        load_best_model_at_end=True, seed=0,
    )  # fmt: skip
    _, their_state, _ = _theirs(tiny, tmp_path / "st", schedule, _FirstBest())
    their_saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "st").glob("checkpoint-*"))
    assert their_saved == [1, 4] and Path(their_state.best_model_checkpoint).name == "checkpoint-1"  # the oracle
    folder = tmp_path / "ours" / "checkpoints"
    seen = []

    class OnSave:  # as in Hugging Face's Trainer, the step's folder and the best's are complete in on_save
        def on_save(self, args, state, control, **kwargs):
            assert (folder / str(state.global_step) / "model" / "config.json").is_file()
            assert (Path(state.best_model_checkpoint) / "model" / "config.json").is_file()
            seen.append((state.global_step, Path(state.best_model_checkpoint).name))

    trainer = _ours(tiny, tmp_path / "ours", OnSave(), evaluator=_FirstBest(), **schedule)
    trainer.train()
    assert seen == [(1, "1"), (2, "1"), (3, "1"), (4, "1")]
    assert sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) == their_saved
    assert trainer.state.best_model_checkpoint == str(folder / "1")
    pairs = list(zip(_pairs()["q"], _pairs()["d"], strict=True))
    best = trainer.model.predict(pairs)  # load_best_model_at_end: step 1's model
    np.testing.assert_allclose(CrossEncoder(trainer.state.best_model_checkpoint).predict(pairs), best, atol=1e-6)
    theirs = STCrossEncoder(str(folder / "1" / "model"), device="cpu").predict(pairs)
    np.testing.assert_allclose(theirs, best, atol=1e-5)
    assert np.abs(CrossEncoder(str(folder / "4")).predict(pairs) - best).max() > 1e-4  # another model there
    with pytest.raises(CheckpointError, match=r"pass one step's folder, e\.g\. .*4"):
        CrossEncoder(str(folder))
    # A resumed run (nothing left to train) keeps it
    again = _ours(tiny, tmp_path / "ours", evaluator=_FirstBest(), **schedule)
    again.train(resume_from_checkpoint=True)
    assert again.state.best_model_checkpoint == trainer.state.best_model_checkpoint


class _LaterBest:
    """The best evaluation at step 2, then at step 4."""

    SCORES = {1: 0.1, 2: 0.5, 3: 0.2, 4: 0.6, 5: 0.3}

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        return {"score": self.SCORES[steps]}


def test_a_new_best_releases_the_old_ones_checkpoint(tiny, tmp_path):
    """save_total_limit=1, saves at steps 2, 4 and 5 (the run's end): the best at step 2, then at 4, whose save
    deletes step 2's folder; step 5's save keeps the best's beside it, as Hugging Face's rotation does. (Hugging
    Face's end of a limit-1 run then deletes all but the best; crossjax keeps its last step for a resume,
    README.)"""
    schedule = dict(
        max_steps=5, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
        logging_steps=1, save_steps=2, save_total_limit=1, metric_for_best_model="score", seed=0,
    )  # fmt: skip
    _, their_state, _ = _theirs(tiny, tmp_path / "st", schedule, _LaterBest())
    their_saved = sorted(int(p.name.split("-")[1]) for p in (tmp_path / "st").glob("checkpoint-*"))
    assert their_saved == [4] and their_state.best_global_step == 4  # the oracle
    trainer = _ours(tiny, tmp_path / "ours", evaluator=_LaterBest(), **schedule)
    trainer.train()
    folder = tmp_path / "ours" / "checkpoints"
    assert sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) == [4, 5]
    assert trainer.state.best_global_step == their_state.best_global_step
    assert Path(their_state.best_model_checkpoint).name == "checkpoint-4"
    assert trainer.state.best_model_checkpoint == str(folder / "4")


class _FailOnSave:
    """Raises in on_save at ``step``: a preemption right after that step's checkpoint, before what follows."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("preempted")


@pytest.mark.parametrize("restore", [False, True])
def test_a_resume_does_the_epoch_end_its_checkpoint_came_before(tiny, tmp_path, restore):
    """A step's own save (by steps) comes before its epoch's end (Hugging Face's order); a run preempted
    between the two does that epoch's evaluation when resumed (Hugging Face's would skip it), so its log history
    and best model are the uninterrupted run's. A control restored from the checkpoint (written while its save
    was asked for) asks for no second save there."""
    schedule = dict(
        max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="epoch", save_steps=2,
        logging_steps=2, metric_for_best_model="loss", disable_tqdm=True, seed=0,
        restore_callback_states_from_checkpoint=restore,
    )  # fmt: skip
    whole = _ours(tiny, tmp_path / "whole", **schedule)
    whole.train()
    with pytest.raises(KeyboardInterrupt, match="preempted"):
        _ours(tiny, tmp_path / "cut", _FailOnSave(4), **schedule).train()
    recorder = Recorder()
    resumed = _ours(tiny, tmp_path / "cut", recorder, **schedule)
    output = resumed.train(resume_from_checkpoint=True)
    # Hugging Face's total_flos estimate, kept in the checkpoint: 6 x transformers' parameter count without the
    # embeddings x the tokens trained (8 steps of 2 rows: every row twice; its tokenizer's count of each pair)
    data = _pairs()
    tokens = sum(len(ids) for ids in AutoTokenizer.from_pretrained(str(tiny))(data["q"], data["d"])["input_ids"])
    params = AutoModelForSequenceClassification.from_pretrained(str(tiny)).num_parameters(exclude_embeddings=True)
    assert output.metrics["total_flos"] == resumed.state.total_flos == whole.state.total_flos == 6 * params * tokens * 2
    assert recorder.events[:6] == [("epoch_end", 4), ("prediction_step", 4), ("log:eval", 4), ("evaluate", 4),
                                   ("epoch_begin", 4), ("step_begin", 4)], recorder.events  # fmt: skip
    timed = ("_runtime", "_samples_per_second", "_steps_per_second", "train_loss")
    histories = (whole.state.log_history, resumed.state.log_history)
    untimed = [[{k: v for k, v in h.items() if not k.endswith(timed)} for h in history] for history in histories]
    assert [(h["step"], "eval_loss" in h) for h in untimed[0]] == [
        (2, False), (4, False), (4, True), (6, False), (8, False), (8, True), (8, False)
    ]  # fmt: skip
    assert len(untimed[1]) == len(untimed[0])
    for ours, uninterrupted in zip(untimed[1], untimed[0], strict=True):
        assert ours == pytest.approx(uninterrupted, rel=1e-6), (ours, uninterrupted)
    assert resumed.state.best_global_step == whole.state.best_global_step


def test_a_save_asked_for_without_a_save_strategy_is_made_as_hugging_face_makes_it(tiny, tmp_path, caplog):
    """save_strategy="no" saves only where a callback sets should_save, as Hugging Face's trainer does (its
    checkpoint-2): the same events, a folder holding step 2's whole state (a resume from it ends with the
    uninterrupted run's model), none at the run's end; a run never asked makes no folder. A folder holding an
    earlier run's checkpoints is left as it was, with a warning (never mixed with this run's or rotated away)."""
    schedule = dict(max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3, save_strategy="no", seed=0)
    asked = {("step_end", 2): {"should_save": True}}
    _, _, their_events = _theirs(tiny, tmp_path / "st", schedule, steer=asked)
    assert sorted(p.name for p in (tmp_path / "st").iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    recorder = Recorder()
    trainer = _ours(tiny, tmp_path / "ours", _Steer(asked), recorder, eval_dataset=False, **schedule)
    trainer.train()
    assert recorder.events == their_events and ("save", 2) in recorder.events
    checkpoints = tmp_path / "ours" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["2"]
    pairs = list(zip(_pairs()["q"], _pairs()["d"], strict=True))
    step_two = CrossEncoder(str(checkpoints / "2")).predict(pairs)
    assert np.abs(step_two - trainer.model.predict(pairs)).max() > 1e-5  # an earlier model than the last
    resumed = _ours(tiny, tmp_path / "resumed", eval_dataset=False, **schedule)
    resumed.train(resume_from_checkpoint=str(checkpoints / "2"))
    np.testing.assert_array_equal(resumed.model.predict(pairs), trainer.model.predict(pairs))

    never_asked = _ours(tiny, tmp_path / "never", eval_dataset=False, **schedule)
    never_asked.train()
    assert not (tmp_path / "never" / "checkpoints").exists()

    earlier = sorted(p.name for p in checkpoints.iterdir())
    again = _ours(tiny, tmp_path / "ours", _Steer(asked), eval_dataset=False, **schedule)
    with caplog.at_level("WARNING", logger="crossjax"):
        again.train()
    assert "A save was asked for at step 2, but" in caplog.text and "holds checkpoints of an earlier run" in caplog.text
    assert sorted(p.name for p in checkpoints.iterdir()) == earlier


def test_hugging_faces_early_stopping_callback_stops_where_it_does_there(tiny, tmp_path):
    """transformers' EarlyStoppingCallback (it reads the best metric before the evaluation updates it, and sets
    should_training_stop in on_evaluate): scores 0.5, 0.7, 0.6, 0.65 end the run at step 4 with patience 2, and
    the best model is step 2's, in both trainers."""
    from transformers import EarlyStoppingCallback

    schedule = dict(
        max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
        save_steps=1, logging_steps=2, load_best_model_at_end=True, metric_for_best_model="score", seed=0,
    )  # fmt: skip
    scores = type("Scores", (_StepScores,), {"SCORES": {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.65, 5: 0.9}})
    theirs, their_state, their_events = _theirs(
        tiny, tmp_path / "st", schedule, scores(), callbacks=[EarlyStoppingCallback(early_stopping_patience=2)]
    )
    recorder = Recorder()
    args = CrossEncoderTrainingArguments(str(tmp_path / "ours"), disable_tqdm=True, **schedule)
    trainer = CrossEncoderTrainer(
        model=CrossEncoder(str(tiny)), args=args, train_dataset=_pairs(), eval_dataset=_pairs(), evaluator=scores(),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2), recorder],
    )  # fmt: skip
    ours = trainer.train()
    assert ours.global_step == theirs.global_step == 4
    assert recorder.events == their_events, (recorder.events, their_events)
    assert (trainer.state.best_metric, trainer.state.best_global_step) == (0.7, 2)
    assert (their_state.best_metric, their_state.best_global_step) == (0.7, 2)


@pytest.mark.parametrize("restore", [True, False])
def test_stateful_callbacks_are_checkpointed_and_restored_when_asked(tiny, tmp_path, restore):
    """Hugging Face keeps each ExportableState callback's state() in its checkpoints (state.stateful_callbacks) and,
    with restore_callback_states_from_checkpoint, a resumed run continues with it: EarlyStoppingCallback's
    patience count survives an interruption, so the run stops where the uninterrupted one does (step 5); without
    it the count restarts at the resume (step 6), as there."""
    from transformers import EarlyStoppingCallback

    scores = type("Scores", (_StepScores,), {"SCORES": {1: 0.5, 2: 0.7, 3: 0.6, 4: 0.65, 5: 0.66, 6: 0.62, 7: 0.6}})

    def trainer(output: Path, *callbacks, **more) -> CrossEncoderTrainer:
        return _ours(
            tiny, output, *callbacks, eval_dataset=False, evaluator=scores(), max_steps=8,
            per_device_train_batch_size=2, eval_strategy="steps", eval_steps=1, save_steps=1,
            metric_for_best_model="score", load_best_model_at_end=True, **more,
        )  # fmt: skip

    assert trainer(tmp_path / "whole", EarlyStoppingCallback(3)).train().global_step == 5
    cut = trainer(tmp_path / "cut", EarlyStoppingCallback(3), _StopAt(3))
    cut.train()
    saved = cut.state.stateful_callbacks
    assert saved["EarlyStoppingCallback"]["attributes"] == {"early_stopping_patience_counter": 1}
    assert saved["TrainerControl"]["args"]["should_training_stop"] is True  # as Hugging Face's at that save
    given = EarlyStoppingCallback(3)
    resumed = trainer(tmp_path / "cut", given, restore_callback_states_from_checkpoint=restore)
    assert resumed.train(resume_from_checkpoint=True).global_step == (5 if restore else 6)
    restored = next(c for c in resumed.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback))
    assert (restored is given) is not restore  # Hugging Face replaces it with one made from the saved state


def test_an_epoch_ended_early_resumes_where_it_went_on(tiny, tmp_path):
    """The positions an early-ended epoch skipped are checkpointed: a run interrupted after the skip resumes in
    the next epoch, bit for bit as the uninterrupted run (Hugging Face's resume assumes no skip and would train
    the skipped batches). Both end when the 2 epochs' positions run out, at step 6 of 8."""
    from flax import nnx

    def train(output: Path, *callbacks, resume=None):
        trainer = _ours(
            tiny, output, _Steer(STOP_EPOCH), *callbacks, eval_dataset=False, max_steps=8,
            per_device_train_batch_size=2, learning_rate=1e-2, save_steps=1, logging_steps=1,
        )  # fmt: skip
        output = trainer.train(resume_from_checkpoint=resume)
        return output, trainer, jax.tree.leaves(jax.device_get(nnx.state(trainer.model.model, nnx.Param)))

    whole, whole_trainer, whole_params = train(tmp_path / "whole")
    train(tmp_path / "cut", _StopAt(4))
    resumed, resumed_trainer, resumed_params = train(tmp_path / "cut", resume=True)
    assert whole.global_step == resumed.global_step == 6 and whole_trainer.state.epoch == 2.0
    for a, b in zip(whole_params, resumed_params, strict=True):
        np.testing.assert_array_equal(a, b)
    losses_of = lambda trainer: [h["loss"] for h in trainer.state.log_history if "loss" in h]  # noqa: E731
    assert losses_of(resumed_trainer) == losses_of(whole_trainer)


def test_a_run_stopped_mid_epoch_resumes_without_an_extra_epoch_end(tiny, tmp_path):
    """A callback's stop at step 3 of a 4-step epoch runs that epoch's end (an evaluation by epoch, as Hugging
    Face does at a stop); the resumed run goes on with the epoch and has the uninterrupted run's log entries,
    with no evaluation at step 3."""

    def trainer(output: Path, *callbacks) -> CrossEncoderTrainer:
        return _ours(
            tiny, output, *callbacks, max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3,
            eval_strategy="epoch", save_steps=1, logging_steps=1,
        )  # fmt: skip

    whole = trainer(tmp_path / "whole")
    whole.train()
    cut = trainer(tmp_path / "cut", _StopAt(3))
    cut.train()
    assert _kinds(cut.state.log_history)[-2:] == [("eval", 3), ("end", 3)]  # the stop's epoch end evaluated
    resumed = trainer(tmp_path / "cut")
    resumed.train(resume_from_checkpoint=True)
    expected = [("train", 1), ("train", 2), ("train", 3), ("train", 4), ("eval", 4), ("train", 5), ("train", 6),
                ("train", 7), ("train", 8), ("eval", 8), ("end", 8)]  # fmt: skip
    assert _kinds(whole.state.log_history) == _kinds(resumed.state.log_history) == expected


@pytest.mark.parametrize(
    "steer, last_step",
    [({("evaluate", 4): {"should_training_stop": True}}, 4), ({("evaluate", 2): {"should_epoch_stop": True}}, 6)],
    ids=["stop_in_the_redone_epoch_end", "epoch_stop_before_the_save"],
)
def test_what_a_callback_asks_around_an_interrupted_save_holds_after_the_resume(tiny, tmp_path, steer, last_step):
    """A run interrupted right after a step's save ends where the uninterrupted one does: a stop asked for while
    the resumed run redoes that step's epoch end (evaluating by epoch) ends it there, before any step; an epoch
    stop asked for by the step's evaluation, before its save, is in that checkpoint (the rest of the epoch
    stays skipped)."""
    step = next(iter(steer))[1]
    evaluation = {"eval_strategy": "epoch"} if step == 4 else {"eval_strategy": "steps", "eval_steps": 1}

    def trainer(output: Path, *callbacks) -> CrossEncoderTrainer:
        return _ours(
            tiny, output, _Steer(steer), *callbacks, max_steps=8, per_device_train_batch_size=2, learning_rate=1e-3,
            save_steps=step, logging_steps=1, **evaluation,
        )  # fmt: skip

    assert trainer(tmp_path / "whole").train().global_step == last_step
    with pytest.raises(KeyboardInterrupt, match="preempted"):
        trainer(tmp_path / "cut", _FailOnSave(step)).train()
    recorder = Recorder()
    assert trainer(tmp_path / "cut", recorder).train(resume_from_checkpoint=True).global_step == last_step
    assert ("step_end", last_step + 1) not in recorder.events


def test_a_loss_called_on_a_batch_gives_sentence_transformers_value(tiny):
    """sentence-transformers' ``loss(inputs, labels)`` (tests and custom loops call it): the same value from the
    same model, for pointwise, in-batch and listwise losses (was "object is not callable")."""
    import torch
    from sentence_transformers.cross_encoder import CrossEncoder as STCrossEncoder
    from sentence_transformers.cross_encoder import losses as st_losses

    ours, theirs = CrossEncoder(str(tiny)), STCrossEncoder(str(tiny))
    queries, documents = ["apple river", "stone cloud", "green music"], ["river apple", "cloud", "music of the sea"]
    lists = [["apple", "river stone", "sea"], ["cloud stone", "green"], ["music", "sea", "park", "red"]]
    scores = [[1.0, 0.0, 0.0], [0.0, 1.0], [1.0, 0.5, 0.0, 0.0]]
    tensors = [torch.tensor(s) for s in scores]
    cases = [
        ("BinaryCrossEntropyLoss", [queries, documents], torch.tensor([1.0, 0.0, 0.5])),
        ("MultipleNegativesRankingLoss", [queries, documents], torch.zeros(3)),
        ("ListNetLoss", [queries, lists], tensors),
        ("LambdaLoss", [queries, lists], tensors),
    ]
    for name, inputs, labels in cases:
        expected = float(getattr(st_losses, name)(theirs)(inputs, labels))
        got = getattr(losses, name)(ours)(inputs, labels)
        assert float(got) == pytest.approx(expected, abs=1e-5), name


def test_evaluations_of_ever_other_data_keep_a_bounded_number_of_compiled_eval_loss_shapes(tiny, tmp_path, monkeypatch):
    """A server that evaluates ever other datasets: past the cap, the eval-loss step forgets its compiled shapes
    when an evaluation takes it, so JAX's executables stay bounded, and the losses equal those of a step that
    kept every shape."""
    from crossjax import training

    def losses_of(cap: int) -> tuple[list[float], list[int]]:
        monkeypatch.setattr(training, "MAX_TRAIN_SHAPES", cap)
        output = str(tmp_path / f"cap{cap}")
        args = CrossEncoderTrainingArguments(output, disable_tqdm=True, per_device_eval_batch_size=4)
        trainer = CrossEncoderTrainer(model=CrossEncoder(str(tiny)), args=args, train_dataset=_pairs())
        got, held = [], []
        for seed, rows, words in [(4, 8, 4), (5, 3, 30), (6, 13, 12), (7, 5, 60), (8, 20, 25), (4, 8, 4)]:
            data = _long_pairs(seed, rows, words)
            got.append(trainer.evaluate(eval_dataset=data)["eval_loss"])
            program = training._programs["eval_loss"][-1][1]  # the step this evaluation used
            held.append(program.fn.jitted._cache_size())
            assert held[-1] == len(set(program.counter.shapes))
        return got, held

    capped, held = losses_of(2)
    assert max(held) <= 2 - 1 + 2, held  # under the cap + one evaluation's shapes (a full batch and a partial one)
    kept, held_all = losses_of(100)
    assert max(held_all) > max(held), held_all  # the cap did forget shapes
    np.testing.assert_array_equal(capped, kept)


def _long_pairs(seed: int, rows: int, words: int) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    text = lambda n: " ".join(rng.choice(WORDS, size=n))  # noqa: E731
    return {
        "q": [text(int(rng.integers(1, 6))) for _ in range(rows)],
        "d": [text(int(rng.integers(words // 2, words + 1))) for _ in range(rows)],
        "label": [float(x) for x in rng.uniform(0, 1, rows)],
    }
