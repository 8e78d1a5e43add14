"""Never lost work: folders that cannot take a checkpoint or a model fail before the first step, a resumed
run keeps its best model in a new output folder, and bad evaluator results or labels are named clearly.

Oracles: sentence-transformers 6.2's ``old_fit`` (an evaluator's ``None`` score is a TypeError there too), the
files the first run wrote (byte for byte), and the untouched model (no step was trained).
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import numpy as np
import pytest
from test_fit_behaviour import (  # noqa: F401 - fixtures used by name
    TRAIN,
    make_examples,
    params_of,
    tiny_dir,
    tiny_dirs,
)

from crossjax import CrossEncoder, DataLoader, InputExample
from crossjax.checkpoint import CheckpointMismatchError


def test_an_unusable_checkpoint_path_fails_before_the_first_step(tiny_dir, tmp_path):
    """Checkpoints are written in the background: a bad folder used to surface two saves later (1,000 steps at
    the default), and the run then ended without its model."""
    model = CrossEncoder(str(tiny_dir), max_length=32)
    before = params_of(model)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    for bad in (a_file, a_file / "checkpoints", ""):  # "" would silently turn checkpoints off
        with pytest.raises(ValueError, match="checkpoint_path"):
            model.fit(DataLoader(make_examples(8), batch_size=4), checkpoint_path=str(bad), **TRAIN)
    assert model.training_history == []
    for got, want in zip(params_of(model), before, strict=True):
        np.testing.assert_array_equal(got, want)


class Evaluator:
    """An evaluator whose scores fall after its second call (the best model is step 2's)."""

    primary_metric = "score"

    def __init__(self, interrupt_at: int | None = None, value=None) -> None:
        self.calls, self.interrupt_at, self.value = 0, interrupt_at, value

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.calls += 1
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if self.value is not None:
            return {"score": self.value()}
        return {"score": 1.0 if self.calls == 2 else 0.5 - 0.01 * self.calls}


def test_a_run_resumed_into_another_output_path_gets_the_best_model(tiny_dir, tmp_path):
    """The resumed run keeps the best score of before the interruption, so it saves a model only when a later
    evaluation beats it: the best model is copied from the first run's folder into the new one."""
    settings = dict(TRAIN, epochs=4, evaluation_steps=1, checkpoint_path=str(tmp_path / "ckpt"))
    settings["checkpoint_save_steps"] = 2

    def loader():
        return DataLoader(make_examples(8), batch_size=4, shuffle=True)

    with pytest.raises(KeyboardInterrupt):
        CrossEncoder(str(tiny_dir), max_length=32).fit(
            loader(), evaluator=Evaluator(interrupt_at=6), output_path=str(tmp_path / "first"), **settings
        )
    best = (tmp_path / "first" / "model.safetensors").read_bytes()
    summary = CrossEncoder(str(tiny_dir), max_length=32).fit(
        loader(), evaluator=Evaluator(), output_path=str(tmp_path / "second"), **settings
    )
    assert summary["resumed_from_step"] == 2 and summary["best_score"] == 1.0
    assert (tmp_path / "second" / "model.safetensors").read_bytes() == best
    assert CrossEncoder(str(tmp_path / "second")).predict([("a", "b")]).shape == (1,)


class Unnamed(Evaluator):
    primary_metric = None  # a one-key dict is its score


def test_an_evaluator_returning_none_is_named(tiny_dir):
    model = CrossEncoder(str(tiny_dir), max_length=32)
    for kind in (Evaluator, Unnamed):
        for value in (lambda: None, lambda: "high"):
            with pytest.raises(TypeError, match=rf"the evaluator {kind.__name__} returned 'score': "):
                model.fit(DataLoader(make_examples(8), batch_size=8), evaluator=kind(value=value), **TRAIN)


def test_a_run_whose_evaluations_never_scored_saves_its_final_model(tiny_dir, tmp_path, caplog):
    """All-NaN evaluations (constant predictions' correlation) save no best model; the run used to end with an
    output_path holding logs and no model, without a word (sentence-transformers' fit leaves it empty too)."""
    model = CrossEncoder(str(tiny_dir), max_length=32)
    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="crossjax"):
        model.fit(DataLoader(make_examples(8), batch_size=4), evaluator=Evaluator(value=lambda: float("nan")),
                  evaluation_steps=1, output_path=str(out), **TRAIN)  # fmt: skip
    assert "No evaluation gave a finite score" in caplog.text
    saved = CrossEncoder(str(out), max_length=32)
    for got, want in zip(params_of(saved), params_of(model), strict=True):
        np.testing.assert_array_equal(got, want)


def test_checkpoint_path_expands_the_home_folder(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    CrossEncoder(str(tiny_dir), max_length=32).fit(
        DataLoader(make_examples(8), batch_size=8), checkpoint_path="~/ckpt", **TRAIN
    )
    assert (tmp_path / "ckpt" / "1").is_dir() and not (tmp_path / "~").exists()


def test_resuming_with_a_changed_loss_object_setting_is_refused(tiny_dir, tmp_path):
    """A user's loss object is fingerprinted with its settings, as its compiled step is keyed by them."""
    from test_object_state import ScaledBCE

    settings = dict(TRAIN, checkpoint_path=str(tmp_path / "ckpt"), checkpoint_save_steps=1)
    loss = ScaledBCE(1.0)

    def fit():
        model = CrossEncoder(str(tiny_dir), max_length=32)
        model.fit(DataLoader(make_examples(8), batch_size=8), loss_fct=loss, **settings)

    fit()
    fit()  # the same run: resumed at its end
    loss.scale = 10.0
    with pytest.raises(CheckpointMismatchError, match="loss: checkpoint"):
        fit()


def test_fit_does_not_resume_over_weights_trained_since_the_checkpointed_run(tiny_dir, tmp_path, caplog):
    """fit resumes a checkpoint_path's run by itself. A notebook's model that trained elsewhere after such a run
    lost that training to the checkpoint's weights (a probe: the parameters snapped back, 0.02 apart). Now a run
    started anew (the same weights as the checkpointed run's start) or run again (its checkpoint's weights)
    resumes; a model holding other weights is refused and left as it was."""
    settings = dict(TRAIN, checkpoint_path=str(tmp_path / "ckpt"), checkpoint_save_steps=2)
    examples = DataLoader(make_examples(8), batch_size=2)
    model = CrossEncoder(str(tiny_dir), max_length=32)
    model.fit(examples, **settings)
    finished = params_of(model)
    again = CrossEncoder(str(tiny_dir), max_length=32)
    assert again.fit(examples, **settings)["resumed_from_step"] == 4  # a script run again from the base model
    for a, b in zip(params_of(again), finished, strict=True):
        np.testing.assert_array_equal(a, b)
    with caplog.at_level("WARNING", logger="crossjax"):
        assert again.fit(examples, **settings)["resumed_from_step"] == 4  # a cell run again: nothing left to train
    assert "had finished (step 4 of 4): nothing is left to train" in caplog.text
    for a, b in zip(params_of(again), finished, strict=True):
        np.testing.assert_array_equal(a, b)
    again.fit(DataLoader(make_examples(8, seed=9), batch_size=4), **TRAIN)  # training elsewhere
    trained_elsewhere = params_of(again)
    with pytest.raises(CheckpointMismatchError, match="other weights than the ones that run started from, stopped at"):
        again.fit(examples, **settings)
    for a, b in zip(params_of(again), trained_elsewhere, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fit_run_again_after_it_stopped_on_an_error_resumes_it_exactly(tiny_dir, tmp_path):
    """A notebook cell whose checkpointed fit stopped on an error (here its evaluator's; Ctrl-C alike) leaves the
    model at its last finished step, past the last checkpoint: running the cell again resumes the run (a probe
    found it refused) and ends with the uninterrupted run's parameters, bit for bit."""

    class BreaksOnce:
        calls = 0

        def __call__(self, model, output_path=None, epoch=-1, steps=-1):
            type(self).calls += 1
            if type(self).calls == 2:
                raise RuntimeError("the evaluator broke")
            return 0.5

    examples = DataLoader(make_examples(8), batch_size=2)
    settings = dict(TRAIN, epochs=2, evaluation_steps=3, checkpoint_save_steps=2)
    whole = CrossEncoder(str(tiny_dir), max_length=32)
    whole.fit(examples, evaluator=lambda *a, **k: 0.5, checkpoint_path=str(tmp_path / "whole"), **settings)
    model = CrossEncoder(str(tiny_dir), max_length=32)
    with pytest.raises(RuntimeError, match="the evaluator broke"):
        model.fit(examples, evaluator=BreaksOnce(), checkpoint_path=str(tmp_path / "ckpt"), **settings)
    summary = model.fit(examples, evaluator=BreaksOnce(), checkpoint_path=str(tmp_path / "ckpt"), **settings)
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 8
    for a, b in zip(params_of(model), params_of(whole), strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_weights_digest_is_exact_and_the_same_on_the_host_and_on_a_mesh():
    """The resume check's digest: the host's numpy sum (one process) and the jitted one (a multi-host run's
    sharded arrays) give the same number, against a plain Python sum of bits times odd positions mod 2**32; one
    flipped bit anywhere changes it."""
    import functools

    import jax
    import jax.numpy as jnp

    from crossjax import training

    rng = np.random.default_rng(3)
    leaves = [
        jnp.asarray(rng.standard_normal((37, 5)), jnp.float32),
        jnp.float32(-2.5),
        jnp.asarray(rng.standard_normal(9), jnp.bfloat16),
        jnp.asarray(rng.integers(-9, 9, (2, 3)), jnp.int8),
    ]
    words = [np.asarray(x).reshape(-1).view(np.uint16 if x.dtype == jnp.bfloat16 else np.uint32) for x in leaves[:3]]
    words.append(np.asarray(leaves[3]).reshape(-1).astype(np.uint32))
    bits = [int(w) for part in words for w in part]
    expected = sum(b * (2 * i + 1) for i, b in enumerate(bits)) % 2**32
    assert training.weights_digest(leaves) == f"{expected:08x}"
    on_mesh = jax.jit(functools.partial(training._digest_sum, xp=jnp))(leaves)
    assert int(jax.device_get(on_mesh)) == expected
    flipped = np.asarray(leaves[0]).copy()
    flipped.view(np.uint32)[20, 3] ^= 1 << 17
    assert training.weights_digest([jnp.asarray(flipped), *leaves[1:]]) != f"{expected:08x}"


def test_a_label_float32_cannot_hold_is_refused_up_front(tiny_dir):
    examples = make_examples(8)
    examples[5] = InputExample(texts=examples[5].texts, label=1e39)  # finite in float64, inf in the step
    with pytest.raises(ValueError, match=r"Example 5: label is 1e\+39"):
        CrossEncoder(str(tiny_dir), max_length=32).fit(DataLoader(examples, batch_size=4), **TRAIN)


def test_a_refused_resume_closes_its_checkpoint_manager(tiny_dir, tiny_dirs, tmp_path, monkeypatch):
    """Left open, orbax's manager keeps a thread that prints a dozen tracebacks when the process exits."""
    from crossjax.checkpoint import TrainCheckpointer

    settings = dict(TRAIN, checkpoint_path=str(tmp_path / "ckpt"), checkpoint_save_steps=1)
    CrossEncoder(str(tiny_dir), max_length=32).fit(DataLoader(make_examples(8), batch_size=4), **settings)
    opened, closed = [], []
    real_init, real_close = TrainCheckpointer.__init__, TrainCheckpointer.close
    spy = lambda self, *a, **kw: (opened.append(self), real_init(self, *a, **kw))[1]  # noqa: E731
    monkeypatch.setattr(TrainCheckpointer, "__init__", spy)
    monkeypatch.setattr(TrainCheckpointer, "close", lambda self: (closed.append(self), real_close(self))[1])
    other = CrossEncoder(str(tiny_dirs[3]), max_length=32)  # 3 labels: another run
    with pytest.raises(CheckpointMismatchError):
        other.fit(DataLoader(make_examples(8, seed=1), batch_size=4), **settings)
    assert len(opened) == 1 and closed == opened


def test_a_device_index_is_refused_in_a_multi_process_run(monkeypatch):
    """torch's per-process ``cuda:0``: one JAX mesh spans every process's devices, so one index cannot work."""
    import jax

    from crossjax import parallel

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="names one device, but this run has 2 processes"):
        parallel.devices_for("cpu:0")
    assert parallel.devices_for("cpu") == jax.devices("cpu")


def test_a_checkpoint_of_another_model_width_is_another_run_not_a_damaged_one(tiny_dir, minilm_dir, tmp_path):
    from conftest import save_tiny_bert
    from transformers import AutoTokenizer

    wider = save_tiny_bert(tmp_path / "wider", AutoTokenizer.from_pretrained(minilm_dir), hidden_size=48)
    settings = dict(TRAIN, checkpoint_path=str(tmp_path / "ckpt"), checkpoint_save_steps=1)
    CrossEncoder(str(tiny_dir), max_length=32).fit(DataLoader(make_examples(8), batch_size=4), **settings)
    with pytest.raises(CheckpointMismatchError, match="belongs to a different run .*model_shape") as refused:
        CrossEncoder(str(wider), max_length=32).fit(DataLoader(make_examples(8), batch_size=4), **settings)
    assert type(refused.value) is CheckpointMismatchError  # not its subclass CheckpointCorruptError


def test_ctrl_c_inside_the_donating_step_leaves_a_usable_model(tiny_dir, monkeypatch):
    """A SIGINT that lands inside the jitted step's call (after it consumed the donated state, before its outputs
    were assigned) used to leave the model holding deleted arrays: predict, save and a second fit failed with
    "Array has been deleted" (a probe broke 15 of 25 interrupted fits, 2 of 15 trainer runs: the trainer trains
    in the same loop, fit_loop.run_fit). It is now raised once the new state is assigned; the model predicts,
    and trains again."""
    import dataclasses
    import os
    import signal

    from crossjax import fit_loop

    real = fit_loop.training.train_program
    calls = []

    def interrupting(*args, **kwargs):
        program, fresh = real(*args, **kwargs)
        step = program.fn

        def fn(*step_args):
            out = step(*step_args)  # the state passed in is donated (deleted) now
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGINT)
                [None for _ in range(1000)]  # the handler runs here, inside the call, as a real Ctrl-C may
            return out

        return dataclasses.replace(program, fn=fn), fresh

    monkeypatch.setattr(fit_loop.training, "train_program", interrupting)
    model = CrossEncoder(str(tiny_dir), max_length=32)
    before = params_of(model)
    examples = make_examples(16)
    with pytest.raises(KeyboardInterrupt):
        model.fit(DataLoader(examples, batch_size=4), **TRAIN)
    assert len(calls) == 3 and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    after = params_of(model)
    assert all(np.isfinite(p).all() for p in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before, strict=True))  # three steps trained
    assert np.isfinite(model.predict([("a b", "c d")], show_progress_bar=False)).all()
    monkeypatch.setattr(fit_loop.training, "train_program", real)
    model.fit(DataLoader(examples[:8], batch_size=4), **TRAIN)  # and it trains on


def test_saves_into_one_folder_at_once_leave_each_other_s_temporary_folder_alone(tiny_dir, tmp_path):
    """A save removes the temporary folders that killed saves left, never one a save still writes: two saves
    into one folder at once (two jobs exporting to a "latest" folder, a server's threads) deleted each other's
    (10 of 30 failed in a probe; sentence-transformers' save: none). Here two threads save two models 8 times
    each, beside a live writer of another process and two leftovers of killed saves."""
    import os
    import socket
    import subprocess
    import sys
    import threading

    from crossjax.models.export import TMP_PREFIX

    target = tmp_path / "latest"
    target.mkdir()
    host = socket.gethostname().replace("-", "_")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = target / f"{TMP_PREFIX}{host}-{int(finished.stdout)}-killed"
        older = target / f"{TMP_PREFIX}abc123_x"  # an older crossjax's name: no writer in it
        writing = target / f"{TMP_PREFIX}{host}-{live.pid}-writing"
        for folder in (dead, older, writing):
            folder.mkdir()
            (folder / "config.json").write_text("{}")
        models = [CrossEncoder(str(tiny_dir)), CrossEncoder(str(tiny_dir), num_labels=1, seed=9)]
        models[1].model.classifier.bias[...] = models[1].model.classifier.bias[...] + 1.0  # other scores
        errors: list[BaseException] = []

        def save_often(model) -> None:
            try:
                for _ in range(8):
                    model.save(target, create_model_card=False)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=save_often, args=(m,)) for m in models]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert not dead.exists() and not older.exists() and writing.is_dir()
        assert sorted(p.name for p in target.glob(TMP_PREFIX + "*")) == [writing.name]
        pairs = [("a b", "c d"), ("e", "f g h")]
        scores = CrossEncoder(str(target)).predict(pairs)
        assert any(np.array_equal(scores, m.predict(pairs)) for m in models)  # one model's files, whole
    finally:
        live.kill()
        live.wait()
    assert os.path.isdir(writing)


def test_a_second_process_writing_checkpoints_into_the_same_folder_is_refused_up_front(tiny_dir, tmp_path):
    """Two runs' checkpoints in one folder: orbax's saves deleted each other's temporary folders and one run died
    in a 300-line orbax traceback after training (a probe's two fits). A run of another process that writes
    into the folder now holds its lock: this fit is refused before its first step, with the model untouched,
    and runs once that process is gone; runs of one process share the folder as before."""
    import subprocess
    import sys

    from conftest import REPO

    from crossjax.checkpoint import CheckpointInUseError, _lock_directory, _unlock_directory

    folder = tmp_path / "ckpt"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from crossjax.checkpoint import _lock_directory; "
         f"_lock_directory({str(folder)!r}); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True, env={**__import__("os").environ, "PYTHONPATH": str(REPO / "src")},
    )  # fmt: skip
    model = CrossEncoder(str(tiny_dir), max_length=32)
    before = params_of(model)
    settings = dict(epochs=1, checkpoint_path=str(folder), checkpoint_save_steps=1, **TRAIN)
    loader = DataLoader(make_examples(8, seed=3), batch_size=4)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointInUseError, match=r"Another process is writing checkpoints into .*ckpt"):
            model.fit(loader, **settings)
        for a, b in zip(before, params_of(model), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        holder.kill()
        holder.wait()
    held = _lock_directory(str(folder.resolve()))  # this process's own hold (a run not closed yet) shares it
    try:
        model.fit(loader, **settings)  # the other process's lock went with it
    finally:
        _unlock_directory(held)
    assert held is not None and len(model.training_history) == 2
    assert sorted(p.name for p in folder.iterdir() if p.name.isdigit()) == ["1", "2"]
