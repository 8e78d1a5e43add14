"""Training logs of ``fit`` (metrics.jsonl, TensorBoard events, the curves PNG) on a tiny random BERT.

Oracles: fit's own returned history and the evaluator's CSV file for the numbers, TensorBoard's event reader
(the ``tensorboard`` package, not the writer that produced them) for the event files, matplotlib's PNG reader.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_fit_behaviour import _save_tiny, make_examples  # noqa: F401 (module fixture)

from crossjax import CrossEncoder, DataLoader
from crossjax.evaluation import CECorrelationEvaluator
from crossjax.logs import CURVES_FILE, METRICS_FILE, TENSORBOARD_DIR, read_metrics

FAST = {"scheduler": "constantlr", "optimizer_params": {"lr": 1e-3}, "show_progress_bar": False}


@pytest.fixture(scope="module")
def tiny_dir(minilm_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    return _save_tiny(tmp_path_factory.mktemp("tiny_logs"), AutoTokenizer.from_pretrained(minilm_dir), 1)


def _evaluator() -> CECorrelationEvaluator:
    return CECorrelationEvaluator.from_input_examples(make_examples(12, seed=5), name="dev")


@pytest.fixture(scope="module")
def logged_run(tiny_dir, tmp_path_factory):
    """2 epochs of 4 steps, evaluated every 2 steps and at each epoch's end, best model to output_path."""
    out = tmp_path_factory.mktemp("logged") / "model"
    model = CrossEncoder(tiny_dir, max_length=32)
    summary = model.fit(
        DataLoader(make_examples(16, seed=3), batch_size=4, shuffle=True),
        evaluator=_evaluator(),
        epochs=2,
        evaluation_steps=2,
        logging_steps=3,
        output_path=str(out),
        **FAST,
    )
    return model, summary, out


def _step_records(records):
    return [r for r in records if "loss" in r]


def _eval_records(records):
    return [r for r in records if any(k.startswith("eval_") for k in r)]


def test_metrics_jsonl_holds_every_step_of_the_history_and_every_evaluation_of_the_csv(logged_run):
    model, summary, out = logged_run
    records = read_metrics(out / METRICS_FILE)
    steps = _step_records(records)
    assert steps == model.training_history  # the same numbers fit returned, one line per optimizer step
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert set(steps[0]) == {"step", "epoch", "learning_rate", "loss", "grad_norm", "pairs_per_second"}
    assert all(r["pairs_per_second"] > 0 and r["learning_rate"] == pytest.approx(1e-3) for r in steps)

    with open(out / "CrossEncoderCorrelationEvaluator_dev_results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    evaluations = _eval_records(records)
    # Evaluations after steps 2 and 4 of each epoch, and at each epoch's end (after step 4 again), as ST's fit.
    assert [r["step"] for r in evaluations] == [2, 4, 4, 6, 8, 8]
    assert len(rows) == len(evaluations)
    for row, record in zip(rows, evaluations, strict=True):
        assert record["eval_dev_spearman"] == float(row["Spearman_Correlation"])
        assert record["eval_dev_pearson"] == float(row["Pearson_Correlation"])
        assert record["epoch"] == int(row["epoch"])
    assert max(r["eval_dev_spearman"] for r in evaluations) == pytest.approx(summary["best_score"])


def test_tensorboard_events_read_back_with_tensorboards_reader(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, _, out = logged_run
    event_files = list((out / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    events = EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate", "train/grad_norm", "train/pairs_per_second"} <= tags
    assert {"eval/dev_spearman", "eval/dev_pearson"} <= tags
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [h["step"] for h in model.training_history]
    np.testing.assert_allclose([e.value for e in losses], [h["loss"] for h in model.training_history], rtol=1e-6)
    evaluations = _eval_records(read_metrics(out / METRICS_FILE))
    spearman = events.Scalars("eval/dev_spearman")
    assert [e.step for e in spearman] == [r["step"] for r in evaluations]
    np.testing.assert_allclose([e.value for e in spearman], [r["eval_dev_spearman"] for r in evaluations], rtol=1e-6)


def test_curves_png_is_a_real_image(logged_run):
    import matplotlib.image

    _, _, out = logged_run
    image = matplotlib.image.imread(out / CURVES_FILE)
    assert image.shape[:2] == (400, 1100)  # loss and evaluation side by side, 100 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas


def test_resumed_run_appends_without_duplicating_steps(tiny_dir, tmp_path, monkeypatch):
    """A run killed after step 6 (its last checkpoint: step 4) and resumed: every step and evaluation appears
    once in metrics.jsonl and in TensorBoard, and the lines of steps <= 4 are the first run's. tensorboardX's
    clock is frozen, as when both runs start within one second (its file names hold only the second)."""
    from types import SimpleNamespace

    import tensorboardX.event_file_writer
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(tensorboardX.event_file_writer, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))

    logs, checkpoints = tmp_path / "logs", tmp_path / "ckpt"
    settings = dict(
        evaluator=_evaluator(),
        epochs=2,
        evaluation_steps=2,
        logging_steps=1,
        log_dir=str(logs),
        checkpoint_path=str(checkpoints),
        checkpoint_save_steps=4,
        **FAST,
    )
    examples = make_examples(16, seed=3)  # the logged run's data and batches: its compiled programs are reused

    def killed_at_step_6(score, epoch, steps):
        if (epoch, steps) == (1, 2):
            raise KeyboardInterrupt("preempted")

    first = CrossEncoder(tiny_dir, max_length=32)
    with pytest.raises(KeyboardInterrupt):
        first.fit(DataLoader(examples, batch_size=4, shuffle=True), callback=killed_at_step_6, **settings)
    before = read_metrics(logs / METRICS_FILE)
    assert [r["step"] for r in _step_records(before)] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in _eval_records(before)] == [2, 4, 4, 6]  # step 6's is logged before the kill

    resumed = CrossEncoder(tiny_dir, max_length=32)
    summary = resumed.fit(DataLoader(examples, batch_size=4, shuffle=True), **settings)
    assert summary["resumed_from_step"] == 4
    after = read_metrics(logs / METRICS_FILE)
    assert [r["step"] for r in _step_records(after)] == list(range(1, 9))
    assert [r["step"] for r in _eval_records(after)] == [2, 4, 4, 6, 8, 8]
    assert _step_records(after)[:4] == _step_records(before)[:4]
    assert _eval_records(after)[:3] == _eval_records(before)[:3]
    assert _step_records(after)[4:] == resumed.training_history
    lines = (logs / METRICS_FILE).read_text().splitlines()
    assert all(json.loads(line) for line in lines) and len(lines) == len(after)

    events = EventAccumulator(str(logs / TENSORBOARD_DIR))  # purges the orphaned steps 5.. of the first run
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    np.testing.assert_allclose(
        [e.value for e in events.Scalars("train/loss")], [r["loss"] for r in _step_records(after)], rtol=1e-6
    )
    assert [e.step for e in events.Scalars("eval/dev_spearman")] == [2, 4, 4, 6, 8, 8]
    assert (logs / CURVES_FILE).is_file()


def test_interrupted_run_keeps_the_records_of_its_finished_steps(tiny_dir, tmp_path, monkeypatch):
    """Ctrl-C between two logging steps (here while step 4's batch is placed): the steps that finished still
    get their records, in the history and in metrics.jsonl, with the losses an uninterrupted run logs."""
    from crossjax import training

    examples = make_examples(24, seed=4)
    whole = CrossEncoder(tiny_dir, max_length=32)
    whole.fit(DataLoader(examples, batch_size=4), epochs=1, logging_steps=1, **FAST)

    placed = training.batch_to_global
    calls = []

    def interrupted_at_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt("Ctrl-C")
        return placed(*args, **kwargs)

    monkeypatch.setattr(training, "batch_to_global", interrupted_at_step_4)
    interrupted = CrossEncoder(tiny_dir, max_length=32)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(
            DataLoader(examples, batch_size=4), epochs=1, logging_steps=100, log_dir=str(tmp_path / "logs"), **FAST
        )
    assert [r["step"] for r in interrupted.training_history] == [1, 2, 3]
    np.testing.assert_allclose(
        [r["loss"] for r in interrupted.training_history], [r["loss"] for r in whole.training_history[:3]], rtol=1e-6
    )
    assert [r["step"] for r in _step_records(read_metrics(tmp_path / "logs" / METRICS_FILE))] == [1, 2, 3]


def test_no_log_files_without_output_path_or_log_dir(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = CrossEncoder(tiny_dir, max_length=32)
    model.fit(DataLoader(make_examples(8, seed=6), batch_size=4), **FAST)
    assert len(model.training_history) == 2
    assert list(tmp_path.iterdir()) == []


def test_only_the_main_process_writes_logs(tiny_dir, tmp_path, monkeypatch):
    import crossjax.fit_loop
    import crossjax.logs

    # as on process 1 of a multi-host run (fit_loop's up-front folder checks too)
    monkeypatch.setattr(crossjax.logs, "is_main_process", lambda: False)
    monkeypatch.setattr(crossjax.fit_loop, "is_main_process", lambda: False)
    model = CrossEncoder(tiny_dir, max_length=32)
    model.fit(DataLoader(make_examples(8, seed=6), batch_size=4), log_dir=str(tmp_path / "logs"), **FAST)
    assert len(model.training_history) == 2 and not (tmp_path / "logs").exists()


def test_a_fresh_run_in_the_same_folder_replaces_the_earlier_runs_logs(tiny_dir, tmp_path):
    """Trained afresh into the same output folder, TensorBoard shows only the new run's steps (as metrics.jsonl
    does), and a run that logs elsewhere does not embed the folder's old curves in its card."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboardX import SummaryWriter

    out = tmp_path / "model"
    with SummaryWriter(str(out / TENSORBOARD_DIR)) as earlier:  # an earlier run's step 0 (an eval_on_start)
        earlier.add_scalar("train/loss", 10.0, 0)
    histories = []
    for seed in (3, 4):
        model = CrossEncoder(tiny_dir, max_length=32)
        model.fit(DataLoader(make_examples(16, seed=seed), batch_size=4, shuffle=True), output_path=str(out), **FAST)
        histories.append(model.training_history)
    assert [h["loss"] for h in histories[0]] != [h["loss"] for h in histories[1]]
    events = EventAccumulator(str(out / TENSORBOARD_DIR))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    np.testing.assert_allclose([e.value for e in events.Scalars("train/loss")], [h["loss"] for h in histories[1]])
    assert [r["loss"] for r in read_metrics(out / METRICS_FILE)] == [h["loss"] for h in histories[1]]

    assert (out / CURVES_FILE).is_file()  # the second run's, in the output folder
    model = CrossEncoder(tiny_dir, max_length=32)
    elsewhere = tmp_path / "logs"
    model.fit(DataLoader(make_examples(16, seed=5), batch_size=4), output_path=str(out), log_dir=str(elsewhere), **FAST)
    assert (elsewhere / CURVES_FILE).is_file()
    assert CURVES_FILE not in (out / "README.md").read_text()


def test_logs_failing_at_the_end_of_a_run_leave_its_final_model_saved(tiny_dir, tmp_path, monkeypatch):
    """The curves PNG cannot be written (a full or read-only log folder) when the run ends: the error is raised,
    but only after the trained model is saved to output_path, as it would have been (no work lost)."""
    import crossjax.logs

    def no_space(records, path, required=False):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(crossjax.logs, "plot_training_curves", no_space)
    model = CrossEncoder(tiny_dir, max_length=32)
    out = tmp_path / "model"
    with pytest.raises(OSError, match="No space left"):
        model.fit(DataLoader(make_examples(8, seed=3), batch_size=4), epochs=1, output_path=str(out),
                  log_dir=str(tmp_path / "logs"), **FAST)  # fmt: skip
    saved = CrossEncoder(str(out), max_length=32)
    pairs = [e.texts for e in make_examples(4, seed=9)]
    np.testing.assert_array_equal(saved.predict(pairs), model.predict(pairs))
    assert len(model.training_history) == 2
