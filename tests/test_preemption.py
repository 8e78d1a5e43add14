"""A preemption notice (SIGTERM) never loses the steps since the last checkpoint: the run checkpoints the step it
reached, stops with ``TrainingPreempted`` (a ``SystemExit``, status 143), and the same call again resumes it.

Oracle: the run that was never interrupted (bit for bit). The two-process form (JAX's preemption service agreeing
on one step for every process) is in ``test_scale_out.py``.
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_fit_behaviour import (  # noqa: F401 - fixtures used by name
    TRAIN,
    make_examples,
    params_of,
    tiny_dir,
    tiny_dirs,
)

from crossjax import CrossEncoder, DataLoader, TrainingPreempted, fit_loop, losses
from crossjax.trainer import CrossEncoderTrainer, get_last_checkpoint
from crossjax.training_args import CrossEncoderTrainingArguments

SETTINGS = dict(TRAIN, epochs=2, checkpoint_save_steps=100)  # no periodic checkpoint before the notice


def _terminating_after(monkeypatch, step: int, seen: list) -> None:
    """The run's train step sends this process SIGTERM once its ``step``-th call returns; ``seen`` records the
    SIGTERM handler each call found."""
    real = fit_loop.training.train_program

    def program_that_terminates(*args, **kwargs):
        program, fresh = real(*args, **kwargs)
        call = program.fn

        def fn(*step_args):
            out = call(*step_args)
            seen.append(signal.getsignal(signal.SIGTERM))
            if len(seen) == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return out

        return dataclasses.replace(program, fn=fn), fresh

    monkeypatch.setattr(fit_loop.training, "train_program", program_that_terminates)


def _one_epoch_to_its_end(tiny_dir, tmp_path, pairs: int) -> TrainingPreempted:
    """One checkpointed epoch of ``pairs`` pairs (2 a step) with an output_path, which must end in a stop."""
    model = CrossEncoder(str(tiny_dir), max_length=32)
    with pytest.raises(TrainingPreempted) as stopped:
        model.fit(
            DataLoader(make_examples(pairs), batch_size=2),
            checkpoint_path=str(tmp_path / "run"),
            output_path=str(tmp_path / "out"),
            **dict(SETTINGS, epochs=1),
        )
    return stopped.value


def test_sigterm_checkpoints_the_step_reached_and_the_same_fit_resumes_it_exactly(tiny_dir, tmp_path, monkeypatch):
    examples = DataLoader(make_examples(8), batch_size=2)  # 4 steps an epoch, 8 in all
    whole = CrossEncoder(str(tiny_dir), max_length=32)
    whole.fit(examples, checkpoint_path=str(tmp_path / "whole"), **SETTINGS)

    seen: list = []
    _terminating_after(monkeypatch, 3, seen)
    model = CrossEncoder(str(tiny_dir), max_length=32)
    with pytest.raises(TrainingPreempted) as stopped:
        model.fit(examples, checkpoint_path=str(tmp_path / "run"), output_path=str(tmp_path / "out"), **SETTINGS)
    error = stopped.value
    assert isinstance(error, SystemExit) and error.code == 143 and not error.finished
    assert error.global_step == 3 and error.checkpoint == str(tmp_path / "run")
    assert "stopped the run after step 3" in str(error) and "run the same fit again to resume" in str(error)
    assert len(seen) == 3  # the step in flight finished; no later step ran
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.isdigit()) == ["3"]
    assert not (tmp_path / "out" / "model.safetensors").exists()  # a stopped run is no trained model (logs are there)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the default handler back after the run

    monkeypatch.undo()
    again = CrossEncoder(str(tiny_dir), max_length=32)  # as a new process would load it
    summary = again.fit(examples, checkpoint_path=str(tmp_path / "run"), **SETTINGS)
    assert summary["resumed_from_step"] == 3 and summary["global_step"] == 8
    for a, b in zip(params_of(again), params_of(whole), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_notice_during_the_last_step_completes_and_saves_the_run_then_stops(tiny_dir, tmp_path, monkeypatch):
    _terminating_after(monkeypatch, 4, [])
    stopped = _one_epoch_to_its_end(tiny_dir, tmp_path, 8)
    assert stopped.finished and stopped.global_step == 4 and stopped.code == 143
    assert (tmp_path / "out" / "model.safetensors").is_file()  # the final model, as a run without the notice
    assert (tmp_path / "run" / "4").is_dir()


def test_a_run_without_checkpoints_or_with_the_program_s_own_handler_leaves_sigterm_alone(
    tiny_dir, tmp_path, monkeypatch
):
    """Without checkpoints there is nothing to save: SIGTERM ends the process as before. A program's own handler
    is kept."""
    seen: list = []
    _terminating_after(monkeypatch, 100, seen)  # records the handler, sends nothing
    model = CrossEncoder(str(tiny_dir), max_length=32)
    model.fit(DataLoader(make_examples(4), batch_size=2), **dict(SETTINGS, epochs=1))
    assert seen == [signal.SIG_DFL] * 2

    def own(signum, frame):  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        seen.clear()
        model.fit(DataLoader(make_examples(4), batch_size=2), checkpoint_path=str(tmp_path / "c"), **SETTINGS)
        assert seen == [own] * 4 and signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_the_trainer_stops_on_sigterm_and_resumes_exactly(tiny_dir, tmp_path):
    """The trainer's flow (Hugging Face's callbacks) checkpoints the step too: resume_from_checkpoint=True then
    ends where the uninterrupted run ends."""
    rng = np.random.default_rng(0)
    words = "red blue dog cat runs sings river tree".split()
    text = lambda n: " ".join(rng.choice(words, n))  # noqa: E731
    data = {"query": [text(3) for _ in range(12)], "answer": [text(5) for _ in range(12)]}
    data["label"] = [float(i % 2) for i in range(12)]

    class Terminate:
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    def run(output, callbacks=(), resume=None, **settings):
        model = CrossEncoder(str(tiny_dir), num_labels=1, max_length=32)
        args = CrossEncoderTrainingArguments(
            str(output), per_device_train_batch_size=3, max_steps=4, save_steps=100, learning_rate=1e-3,
            disable_tqdm=True, report_to=[], resume_from_checkpoint=resume, **settings,
        )  # fmt: skip
        loss = losses.BinaryCrossEntropyLoss(model)
        trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=list(callbacks))
        return model, trainer.train()

    whole, _ = run(tmp_path / "whole")
    assert get_last_checkpoint(tmp_path / "split") is None  # a script that starts and resumes: nothing yet
    with pytest.raises(TrainingPreempted) as stopped:
        run(tmp_path / "split", [Terminate()], resume=get_last_checkpoint(tmp_path / "split"))
    assert stopped.value.global_step == 2 and "resume_from_checkpoint=True" in str(stopped.value)
    assert get_last_checkpoint(tmp_path / "split") == str(tmp_path / "split" / "checkpoints" / "2")
    resumed, output = run(tmp_path / "split", resume=get_last_checkpoint(tmp_path / "split"))
    assert output.global_step == 4 and output.metrics["resumed_from_step"] == 2
    for a, b in zip(params_of(resumed), params_of(whole), strict=True):
        np.testing.assert_array_equal(a, b)
    # save_only_model checkpoints cannot be resumed (as Hugging Face's): the message says so and where the model is
    with pytest.raises(TrainingPreempted) as stopped:
        run(tmp_path / "model_only", [Terminate()], save_only_model=True)
    model_folder = tmp_path / "model_only" / "checkpoints" / "2" / "model"
    assert "which no run resumes from" in str(stopped.value) and str(model_folder) in str(stopped.value)
    assert (model_folder / "config.json").is_file()


def test_the_stop_travels_between_processes_as_itself():
    """A process pool passes a worker's exception back pickled: SystemExit's own args would lose the fields."""
    import copy
    import pickle

    error = TrainingPreempted(7, "/ckpt", how_to_resume="resume it")
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert isinstance(again, TrainingPreempted) and again.code == 143
        assert (again.global_step, again.checkpoint, again.finished, str(again)) == (7, "/ckpt", False, str(error))


def test_a_second_sigterm_ends_the_process_at_once():
    """The first notice asks for a checkpoint; a second one (a checkpoint that hangs, an impatient operator) ends
    the process as SIGTERM does without crossjax."""
    script = textwrap.dedent(
        """
        import os, signal, time
        from crossjax.runtime import PreemptionNotice
        notice = PreemptionNotice()
        notice.install(watch=True)
        os.kill(os.getpid(), signal.SIGTERM)
        assert notice.reached(1), "the first SIGTERM is noted"
        print("noted", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)
        print("still running", flush=True)
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert done.stdout.split() == ["noted"]


def test_a_notice_while_the_run_ends_lets_it_save_its_model_then_stops(tiny_dir, tmp_path, monkeypatch):
    """After the last step, the run still commits its checkpoint, closes its logs and saves its model: a notice
    then (a probe sent one during the final save) waits for that, then stops the process."""
    from crossjax import logs

    real = logs.TrainingLog.on_train_end

    def ending(self, completed):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, completed)

    monkeypatch.setattr(logs.TrainingLog, "on_train_end", ending)
    stopped = _one_epoch_to_its_end(tiny_dir, tmp_path, 4)
    assert stopped.finished and stopped.global_step == 2
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "run" / "2").is_dir()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
