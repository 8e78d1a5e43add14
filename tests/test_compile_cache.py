"""Issue 8, part 3: few compiles. A second ``fit`` (or ``predict``) in the process reuses the jitted step, and
the persistent XLA cache (on by default, in a directory crossjax picks) serves a fresh process.

The oracle for "reuse changes nothing" is a run after :func:`crossjax.training.clear_program_cache`, which
traces and compiles its own step; the persistent cache is checked in fresh Python processes, with the cache
directory, ``XDG_CACHE_HOME`` and ``HOME`` pointing into the test's tmp_path.
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from conftest import REPO
from test_fit_behaviour import (  # noqa: F401 - fixtures used by name
    QUIET,
    WORDS,
    losses_of,
    params_of,
    tiny_dir,
    tiny_dirs,
)

from crossjax import CrossEncoder, DataLoader, InputExample, training

# One packed shape per run, and pairs of equal length (below), so every batch packs to the same shape:
# "compiles nothing" cannot depend on the data order.
SHAPE = {"max_length": 32, "max_shapes": 1}


def make_examples(n: int, seed: int) -> list[InputExample]:
    """Pairs of 4 + 2 words from a small vocabulary (one token each): every pair has the same token count."""
    rng = np.random.default_rng(seed)
    return [
        InputExample(texts=[" ".join(rng.choice(WORDS, 4)), " ".join(rng.choice(WORDS, 2))], label=float(i % 2))
        for i in range(n)
    ]


def fit(directory: Path, examples, **kwargs) -> tuple[CrossEncoder, dict]:
    ce = CrossEncoder(directory, **SHAPE)
    summary = ce.fit(DataLoader(examples, batch_size=8, shuffle=True), logging_steps=1, **QUIET, **kwargs)
    return ce, summary


# ----------------------------------------------------------------------------------- 1. in the process
def test_second_fit_with_other_numbers_compiles_nothing_and_trains_identically(tiny_dir):
    examples = make_examples(24, seed=31)
    training.clear_program_cache()
    _, first = fit(tiny_dir, examples, scheduler="WarmupLinear", warmup_steps=2, optimizer_params={"lr": 1e-3})
    assert first["compilations"] == 1
    assert len(first["compiled_shapes"]) == 1
    assert first["reused_programs"] == 0
    assert first["compile_seconds"] > 0

    # Every number differs: learning rate, warm-up, epochs (so total steps), weight decay, betas, eps, clipping.
    other = dict(
        scheduler="WarmupLinear",
        warmup_steps=5,
        epochs=2,
        weight_decay=0.3,
        max_grad_norm=0.5,
        optimizer_params={"lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-7},
    )
    reused, second = fit(tiny_dir, examples, **other)
    assert second["global_step"] == 6
    assert second["compilations"] == 0
    assert second["compiled_shapes"] == []
    assert second["reused_programs"] == 1
    assert second["compile_seconds"] < first["compile_seconds"]
    assert reused.compilations["train"] == 0

    training.clear_program_cache()  # the oracle: the same run with a step traced and compiled for it
    fresh, reference = fit(tiny_dir, examples, **other)
    assert reference["compilations"] == 1
    assert losses_of(reused) == losses_of(fresh)
    assert [h["learning_rate"] for h in reused.training_history] == [
        h["learning_rate"] for h in fresh.training_history
    ]
    for a, b in zip(params_of(reused), params_of(fresh), strict=True):
        np.testing.assert_array_equal(a, b)
    assert abs(losses_of(fresh)[-1] - losses_of(fresh)[0]) > 1e-4  # it did train


def test_structural_changes_compile_a_new_step(tiny_dir):
    examples = make_examples(16, seed=32)
    training.clear_program_cache()
    base = dict(scheduler="constantlr", optimizer_params={"lr": 1e-3})
    assert fit(tiny_dir, examples, **base)[1]["compilations"] == 1
    assert fit(tiny_dir, examples, **base)[1]["compilations"] == 0
    # Another schedule, clipping off (so are amsgrad, the loss, the activation): each is another program.
    assert fit(tiny_dir, examples, **{**base, "scheduler": "warmupcosine"})[1]["compilations"] == 1
    assert fit(tiny_dir, examples, **base, max_grad_norm=None)[1]["compilations"] == 1


def test_class_weighted_loss_is_reused_by_value(tiny_dirs):
    """A torch loss with weights becomes a functools.partial holding an array: equal weights (a new tensor,
    a new partial) reuse the step, other weights compile their own (and train differently)."""
    rng = np.random.default_rng(33)
    examples = [InputExample(texts=e.texts, label=int(rng.integers(0, 3))) for e in make_examples(16, seed=33)]
    training.clear_program_cache()

    def weighted(weights):
        loss = torch.nn.CrossEntropyLoss(weight=torch.tensor(weights))
        return fit(tiny_dirs[3], examples, scheduler="constantlr", optimizer_params={"lr": 1e-2}, loss_fct=loss)

    first, s1 = weighted([1.0, 2.0, 0.5])
    same, s2 = weighted([1.0, 2.0, 0.5])
    other, s3 = weighted([1.0, 0.5, 2.0])
    assert (s1["compilations"], s2["compilations"], s3["compilations"]) == (1, 0, 1)
    assert losses_of(first) == losses_of(same)
    assert losses_of(other) != losses_of(first)


def test_second_cross_encoder_reuses_the_predict_step(tiny_dir):
    pairs = [tuple(e.texts) for e in make_examples(12, seed=34)]
    training.clear_program_cache()
    one = CrossEncoder(tiny_dir, **SHAPE)
    scores = one.predict(pairs, batch_size=8)
    assert one.compilations["predict"] == 1
    two = CrossEncoder(tiny_dir, **SHAPE)
    np.testing.assert_array_equal(two.predict(pairs, batch_size=8), scores)
    assert two.compilations["predict"] == 0
    # Another compute dtype is another program.
    three = CrossEncoder(tiny_dir, compute_dtype="bfloat16", **SHAPE)
    three.predict(pairs, batch_size=8)
    assert three.compilations["predict"] == 1


def test_a_first_predict_compiles_only_the_predict_step(tiny_dir):
    """A cold first predict compiles one program: the default activations (Sigmoid here, one label) are applied in
    numpy, where an eager JAX sigmoid compiled a program of its own (~30 ms of a first call)."""
    pairs = [tuple(e.texts) for e in make_examples(12, seed=35)]
    names = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(kwargs.get("fun_name"))

    model = CrossEncoder(tiny_dir, **SHAPE)
    logits = model.predict(pairs, batch_size=8, activation_fn="identity")
    training.clear_program_cache()
    jax.clear_caches()  # eager ops' programs too
    model = CrossEncoder(tiny_dir, **SHAPE)
    cache = jax.config.jax_enable_compilation_cache
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        jax.config.update("jax_enable_compilation_cache", False)  # count compiles, not cache loads
        scores = model.predict(pairs, batch_size=8)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
        jax.monitoring.unregister_event_duration_listener(listen)
    assert names == ["jit(predict_step)"], names
    np.testing.assert_array_max_ulp(scores, torch.sigmoid(torch.from_numpy(logits)).numpy(), maxulp=2)


def test_steps_trace_with_the_garbage_collector_paused_and_restore_it():
    import gc

    import jax.numpy as jnp

    seen = []

    def traced(x):
        seen.append(gc.isenabled())  # runs while JAX traces
        if x.shape[0] == 3:
            raise ValueError("bad shape")
        return x * 2

    step = training.GcPausedJit(jax.jit(traced))
    assert gc.isenabled()
    np.testing.assert_array_equal(step(jnp.ones(2)), [2.0, 2.0])
    assert seen == [False] and gc.isenabled()
    with pytest.raises(ValueError, match="bad shape"):
        step(jnp.ones(3))
    assert seen == [False, False] and gc.isenabled()  # restored after an error too
    step.lower(jnp.ones(4))
    assert seen == [False, False, False]
    gc.disable()  # a user who turned it off keeps it off
    try:
        step(jnp.ones(5))
        assert not gc.isenabled()
    finally:
        gc.enable()


# --------------------------------------------------------------------------- 2. the persistent XLA cache
FIT_SCRIPT = """
import json, sys
import jax
from crossjax import CrossEncoder, DataLoader, InputExample
from crossjax.runtime import enable_compilation_cache

words = ["guitar", "piano", "drums", "music", "a ball", "the park", "water", "bread"]
examples = [InputExample(texts=[f"a man plays {w}", "music"], label=float(i % 2)) for i, w in enumerate(words * 2)]
ce = CrossEncoder(sys.argv[1], max_length=32, max_shapes=1)
summary = ce.fit(DataLoader(examples, batch_size=8), scheduler="constantlr", show_progress_bar=False)
print(json.dumps({
    **{k: summary[k] for k in ("compilations", "compile_seconds", "cache_hits")},
    "dir": enable_compilation_cache(),
    "min_compile_secs": jax.config.jax_persistent_cache_min_compile_time_secs,
}))
"""

CONFIG_SCRIPT = """
import json
import jax
from crossjax.runtime import enable_compilation_cache

print(json.dumps({
    "dir": enable_compilation_cache(),
    "jax_dir": jax.config.jax_compilation_cache_dir,
    "min_compile_secs": jax.config.jax_persistent_cache_min_compile_time_secs,
}))
"""


def run_python(script: str, tmp_path: Path, *args: str, **env_vars: str) -> dict:
    """``script`` in a fresh interpreter with HOME and XDG_CACHE_HOME inside tmp_path and no cache variables
    but ``env_vars``; returns the JSON it prints last."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("CROSSJAX_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME")
        and not k.startswith("JAX_PERSISTENT_CACHE")
    }
    env.update(
        HOME=str(tmp_path / "home"),
        JAX_PLATFORMS="cpu",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
        **env_vars,
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def cache_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


def test_persistent_cache_under_xdg_then_warm_start_from_it(tiny_dir, tmp_path):
    xdg = tmp_path / "xdg"
    cold = run_python(FIT_SCRIPT, tmp_path, str(tiny_dir), XDG_CACHE_HOME=str(xdg))
    directory = xdg / "crossjax" / "xla"
    assert cold["dir"] == str(directory)
    assert cold["min_compile_secs"] == 0.1
    assert cold["compilations"] == 1
    assert cold["cache_hits"] == 0
    assert cache_files(directory), "the train step was not written to the cache"
    assert not cache_files(tmp_path / "home")  # nothing under ~/.cache when XDG_CACHE_HOME is set

    # A fresh process naming the directory explicitly: the step is traced again but loaded, not compiled.
    warm = run_python(FIT_SCRIPT, tmp_path, str(tiny_dir), CROSSJAX_COMPILATION_CACHE=str(directory))
    assert warm["dir"] == str(directory)
    assert warm["compilations"] == 1  # traced in this process ...
    assert warm["cache_hits"] >= 1  # ... and loaded from the cache
    assert warm["compile_seconds"] < cold["compile_seconds"]


def test_persistent_cache_off_writes_nothing(tiny_dir, tmp_path):
    xdg = tmp_path / "xdg"
    off = run_python(FIT_SCRIPT, tmp_path, str(tiny_dir), XDG_CACHE_HOME=str(xdg), CROSSJAX_COMPILATION_CACHE="0")
    assert off["dir"] is None
    assert off["cache_hits"] == 0
    assert off["min_compile_secs"] == 1.0  # JAX's settings untouched
    assert not cache_files(xdg)
    assert not cache_files(tmp_path / "home")


PREDICT_SCRIPT = """
import json, sys
from crossjax import CrossEncoder, training

pairs = [("a man plays the guitar", "someone plays music"), ("a dog runs in the park", "the sky is blue")] * 8
ce = CrossEncoder(sys.argv[1], num_labels=1, max_length=64)
with training.CompileMonitor() as compiling:
    scores = ce.predict(pairs, batch_size=16)
print(json.dumps({"hits": compiling.cache_hits, "writes": compiling.cache_writes, "scores": scores.tolist()}))
"""


def test_predict_step_of_a_real_model_is_cached_too(minilm_dir, tmp_path):
    """A predict step compiles in a fraction of a second on a CPU (MiniLM's: ~0.3 s), yet it is most of a first
    predict call's overhead: the cache keeps it, and a new process loads it with the same scores."""
    directory = tmp_path / "cache"
    cold = run_python(PREDICT_SCRIPT, tmp_path, str(minilm_dir), CROSSJAX_COMPILATION_CACHE=str(directory))
    assert cold["writes"] >= 1 and cold["hits"] == 0
    warm = run_python(PREDICT_SCRIPT, tmp_path, str(minilm_dir), CROSSJAX_COMPILATION_CACHE=str(directory))
    # every program the cold process cached is loaded (a program compiled near the caching threshold, 0.1 s,
    # may be written by the warm process only, on a busy machine)
    assert warm["hits"] >= cold["writes"] >= 1
    np.testing.assert_array_equal(warm["scores"], cold["scores"])


@pytest.mark.parametrize(
    "env, expected_dir, expected_min",
    [
        ({}, "home/.cache/crossjax/xla", 0.1),  # no XDG_CACHE_HOME: ~/.cache
        ({"XDG_CACHE_HOME": ""}, "home/.cache/crossjax/xla", 0.1),
        ({"CROSSJAX_COMPILATION_CACHE": "1"}, "home/.cache/crossjax/xla", 0.1),
        ({"CROSSJAX_COMPILATION_CACHE": "mine"}, "mine", 0.1),  # relative to the working directory
        ({"JAX_COMPILATION_CACHE_DIR": "jax-own"}, "jax-own", 1.0),  # the user's JAX setting wins ...
        ({"JAX_COMPILATION_CACHE_DIR": "jax-own", "CROSSJAX_COMPILATION_CACHE": "mine"}, "jax-own", 1.0),
        ({"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "2"}, "home/.cache/crossjax/xla", 2.0),  # ... as here
        ({"JAX_ENABLE_COMPILATION_CACHE": "false"}, None, 1.0),
    ],
)
def test_where_the_cache_goes(tmp_path, env, expected_dir, expected_min):
    got = run_python(CONFIG_SCRIPT, tmp_path, **env)
    if expected_dir is None:
        assert got["dir"] is None
    else:
        # (a relative directory is relative to the process's working directory, tmp_path)
        assert (tmp_path / got["dir"]).resolve() == (tmp_path / expected_dir).resolve()
        assert (tmp_path / got["jax_dir"]).resolve() == (tmp_path / expected_dir).resolve()
    assert got["min_compile_secs"] == expected_min
