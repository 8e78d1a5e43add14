"""A CrossEncoder in a long-lived server: calls from several threads, several models, and requests that
arrive while the model trains.

Oracles: the same calls made one after another in one thread, the state Python's garbage collector was in
before, and counts of what each call itself compiled.
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_fit_behaviour import TRAIN, make_examples, tiny_dir, tiny_dirs  # noqa: F401 - fixtures used by name

from crossjax import CrossEncoder, DataLoader, training

PAIRS = [("a man plays a guitar", "music in the park"), ("the dog runs", "a red car"), ("old city", "young tree")]


def test_overlapping_collector_pauses_restore_the_collector_when_the_last_one_ends():
    """Two threads' steps overlap: the collector stays off until both end, then is on again (the first pause
    to end used to turn it on under the other, and a pause that read the other's "off" left it off for good)."""
    assert gc.isenabled()
    first, second = training.garbage_collection_paused(), training.garbage_collection_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()
    second.__exit__(None, None, None)
    assert gc.isenabled()
    gc.disable()
    try:  # a collector the user turned off stays off
        with training.garbage_collection_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_compile_accounting_counts_only_the_calling_threads_compiles():
    """What another thread compiles meanwhile is not this thread's: neither its seconds nor its traces."""
    counter = training.CompileCounter()
    started, release = threading.Event(), threading.Event()

    def other_thread():
        with training.CompileMonitor() as theirs:
            counter.tick((1, 2))
            jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
        started.set()
        release.wait(10)
        return theirs

    with training.CompileMonitor() as mine, ThreadPoolExecutor(1) as pool:
        theirs = pool.submit(other_thread)
        assert started.wait(60)
        release.set()
        theirs = theirs.result()
    assert counter.count == 1 and counter.shapes == [(1, 2)] and counter.shapes_here() == []
    assert mine.seconds == 0.0 and theirs.seconds > 0.0


def test_concurrent_predicts_equal_sequential_ones_and_count_their_own_compiles(tiny_dir):
    lists = [PAIRS[: 1 + i % 3] * (1 + i) for i in range(6)]
    sequential = CrossEncoder(tiny_dir, max_length=32)
    expected = [sequential.predict(pairs, batch_size=4) for pairs in lists]
    training.clear_program_cache()
    model = CrossEncoder(tiny_dir, max_length=32)
    with ThreadPoolExecutor(6) as pool:
        scores = list(pool.map(lambda pairs: model.predict(pairs, batch_size=4), lists))
    for got, want in zip(scores, expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    program = model._predict_program(model.compute_dtype)
    assert model.compilations["predict"] == len(program.counter.shapes)  # each trace counted once, by its caller


def test_a_model_keeps_its_compiled_predict_step_beyond_the_process_cache(tiny_dir, monkeypatch):
    """A server with more models than the process cache holds: each keeps its own program, none recompiles."""
    monkeypatch.setattr(training, "PROGRAM_CACHE_SIZE", 1)
    resized = {"ignore_mismatched_sizes": True}  # heads of three sizes from one checkpoint
    models = [CrossEncoder(tiny_dir, num_labels=n, max_length=32, model_kwargs=resized) for n in (1, 2, 3)]
    first = [model.predict(PAIRS) for model in models]
    for _ in range(2):
        for model, scores in zip(models, first, strict=True):
            np.testing.assert_array_equal(model.predict(PAIRS), scores)
    assert [model.compilations["predict"] for model in models] == [1, 1, 1]


def test_predict_from_another_thread_while_fit_trains_is_a_clear_error(tiny_dir, monkeypatch):
    """Between two evaluations the model's arrays are freed by each step (the state is donated): a request
    from another thread gets an error that says so, not XLA's "buffer deleted". In an evaluation the model is
    synced, so an evaluator may score from a thread pool; after fit everything works again."""
    model = CrossEncoder(tiny_dir, max_length=32)
    placed, seen = training.batch_to_global, {}

    def request_during_step_3(*args, **kwargs):
        seen["steps"] = seen.get("steps", 0) + 1
        if seen["steps"] == 3:
            with ThreadPoolExecutor(1) as pool:
                seen["error"] = pool.submit(lambda: model.predict(PAIRS)).exception()
        return placed(*args, **kwargs)

    def evaluator(model_, output_path=None, epoch=-1, steps=-1):
        with ThreadPoolExecutor(2) as pool:
            scores = list(pool.map(lambda pair: float(model_.predict([pair])[0]), PAIRS))
        np.testing.assert_allclose(scores, model_.predict(PAIRS), atol=1e-6, rtol=0)
        return {"score": -steps}

    monkeypatch.setattr(training, "batch_to_global", request_during_step_3)
    model.fit(DataLoader(make_examples(16), batch_size=4), evaluator=evaluator, evaluation_steps=4, **TRAIN)
    assert isinstance(seen["error"], RuntimeError)
    with pytest.raises(RuntimeError, match=r"predict\(\) was called from another thread while fit\(\) trains"):
        raise seen["error"]
    with ThreadPoolExecutor(2) as pool:
        after = list(pool.map(lambda pair: model.predict([pair])[0], PAIRS))
    np.testing.assert_allclose(after, model.predict(PAIRS), atol=1e-6, rtol=0)


def test_readers_run_side_by_side_and_a_step_waits_for_them():
    guard, inside, leave = training.ArraysGuard(), threading.Barrier(3, timeout=30), threading.Event()
    stepped = threading.Event()

    def reader():
        with guard.reading("predict"):
            inside.wait()  # both readers inside at once: a lock held by one would time this out
            leave.wait(30)

    def trainer():
        inside.wait()
        guard.step()
        stepped.set()

    threads = [threading.Thread(target=fn) for fn in (reader, reader, trainer)]
    for thread in threads:
        thread.start()
    assert not stepped.wait(0.3)  # the step waits while the readers dispatch
    with pytest.raises(RuntimeError, match="from another thread while fit"):  # a waiting step is not starved
        with guard.reading("predict"):
            pass
    leave.set()
    assert stepped.wait(30)
    for thread in threads:
        thread.join(30)
    with pytest.raises(RuntimeError, match="from another thread while fit"):
        with guard.reading("predict"):
            pass
    guard.step()  # the training thread itself, between two steps
    with pytest.raises(RuntimeError, match="in the training loop between two steps"):
        with guard.reading("predict"):
            pass
    guard.synced()
    with guard.reading("save"):
        pass


def test_trainer_callbacks_score_the_model_of_their_step(tiny_dir, tmp_path):
    """A TrainerCallback that scores in on_log (Hugging Face passes model=) sees the model after that step."""
    from datasets import Dataset
    from transformers import TrainerCallback

    from crossjax.trainer import CrossEncoderTrainer
    from crossjax.training_args import CrossEncoderTrainingArguments

    model = CrossEncoder(tiny_dir, max_length=32)
    examples = make_examples(12)
    dataset = Dataset.from_dict(
        {"a": [e.texts[0] for e in examples], "b": [e.texts[1] for e in examples], "label": [e.label for e in examples]}
    )
    scored = []

    class ScoreOnLog(TrainerCallback):
        def on_log(self, args, state, control, model=None, **kwargs):
            scored.append((state.global_step, model.predict(PAIRS)))

    args = CrossEncoderTrainingArguments(
        str(tmp_path), per_device_train_batch_size=4, max_steps=3, logging_steps=1, save_strategy="steps", save_steps=2
    )
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, callbacks=[ScoreOnLog()])
    trainer.train()
    assert [step for step, _ in scored[:3]] == [1, 2, 3]
    np.testing.assert_allclose(scored[2][1], model.predict(PAIRS), atol=1e-6, rtol=0)  # the last step's model


def test_old_pickles_and_a_cleared_program_cache_still_predict(tiny_dir):
    model = CrossEncoder(tiny_dir, max_length=32)
    expected = model.predict(PAIRS)
    assert model.config is model.model.config  # one config: what the CrossEncoder shows is what save() writes
    state = dict(model.__dict__, _predict_graphdefs={})
    del state["_predict_programs"], state["_arrays_guard"]  # as a pickle of the previous version holds it
    old = CrossEncoder.__new__(CrossEncoder)
    old.__setstate__(state)
    np.testing.assert_array_equal(old.predict(PAIRS), expected)
    compiled = model.compilations["predict"]
    training.clear_program_cache()
    assert len(model._predict_programs) == 0  # the compiled executables are freed, not only marked old
    # A fresh program plans afresh: where the first call reused a shape another test of this process had compiled,
    # the pairs may now be packed into another one (float32 round-off apart, as packing promises; seen in CI)
    np.testing.assert_allclose(model.predict(PAIRS), expected, rtol=1e-6, atol=1e-7)
    assert model.compilations["predict"] == compiled + 1  # the model's own program was forgotten too
