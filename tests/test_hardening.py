"""Issue 7's hardening: what fit promises even when a run is interrupted, arguments that must never be silently
dropped, resume fingerprints, float32 numerics on accelerators, data order, and the module structure.

Tiny random BERT checkpoints (shared with test_fit_behaviour) keep these fast; the oracles are
sentence-transformers 6 (prompts, saved files), a reference run, and the lowered XLA program.
"""

# ruff: noqa: F811 - the shared fixtures are imported from test_fit_behaviour and requested by name
from __future__ import annotations

import ast
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_fit_behaviour import (  # noqa: F401 - fixtures used by name
    NO_DROPOUT,
    QUIET,
    TRAIN,
    losses_of,
    make_examples,
    params_of,
    tiny_dir,
    tiny_dirs,
)

from crossjax import CrossEncoder, DataLoader, data, packing
from crossjax.checkpoint import CheckpointCorruptError, CheckpointMismatchError

SRC = Path(__file__).resolve().parents[1] / "src" / "crossjax"


class Stop(Exception):
    """Raised by callbacks/evaluators to interrupt a run."""


class RecordingEvaluator:
    """Returns a fixed score and records (epoch, steps); raises Stop at the given call."""

    primary_metric = "dev_score"

    def __init__(self, stop_at: tuple[int, int] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.stop_at = stop_at

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.calls.append((epoch, steps))
        if (epoch, steps) == self.stop_at:
            raise Stop(f"stopped at {(epoch, steps)}")
        return {"dev_score": float(len(self.calls))}


# ------------------------------------------------------------------- 2. an interrupted fit keeps a model
def test_exception_in_callback_leaves_model_of_last_completed_step(tiny_dir, tmp_path):
    examples = make_examples(8, seed=21)

    def stop(score, epoch, steps):
        raise Stop("callback failed")

    interrupted = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    with pytest.raises(Stop):
        interrupted.fit(
            DataLoader(examples, batch_size=2),
            evaluator=RecordingEvaluator(),
            evaluation_steps=2,
            callback=stop,
            **TRAIN,
        )
    # The reference: a run that ends normally after the same two steps (constant lr, same order).
    reference = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    reference.fit(DataLoader(examples[:4], batch_size=2), **TRAIN)
    for got, want in zip(params_of(interrupted), params_of(reference), strict=True):
        np.testing.assert_array_equal(got, want)
    probe = [tuple(e.texts) for e in examples]
    np.testing.assert_array_equal(interrupted.predict(probe), reference.predict(probe))
    interrupted.save(tmp_path / "saved")  # no deleted (donated) arrays behind the model
    np.testing.assert_allclose(CrossEncoder(tmp_path / "saved").predict(probe), reference.predict(probe), atol=1e-6)
    assert len(interrupted.training_history) == 2  # the history of the completed steps is kept too


# --------------------------------------------------------------------------- 3. no argument is dropped
def test_unknown_constructor_argument_is_a_type_error(tiny_dir):
    with pytest.raises(TypeError, match="automodel_argz"):
        CrossEncoder(tiny_dir, automodel_argz={})


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_model_name_is_refused_not_read_as_the_working_directory(name):
    with pytest.raises(ValueError, match="name a model folder or a hub id"):
        CrossEncoder(name)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"backend": "onnx"}, ValueError, "backend='onnx'"),
        ({"backend": "tensorflow"}, ValueError, "always runs the model in JAX"),
        ({"model_kwargs": {"device_map": "auto"}}, ValueError, "device_map"),
        ({"model_kwargs": {"torch_dtype": "float16"}}, ValueError, "float32 or bfloat16"),
        ({"model_kwargs": {"dtype": "bfloat16"}, "compute_dtype": "float32"}, ValueError, "contradicts"),
        ({"device": "mps"}, ValueError, "no JAX backend"),
        ({"device": "cuda"}, RuntimeError, "no GPU backend"),
        ({"device": "cpu:7"}, ValueError, "numbered from 0"),
        ({"cache_folder": "/a", "cache_dir": "/b"}, TypeError, "got both .cache_dir. .the deprecated name."),
        ({"prompts": {"q": "query: "}, "default_prompt_name": "p"}, ValueError, "not among the prompts"),
    ],
)
def test_sentence_transformers_arguments_are_honoured_or_refused(tiny_dir, kwargs, error, message):
    with pytest.raises(error, match=message):
        CrossEncoder(tiny_dir, **kwargs)


def test_a_tokenizer_limit_beyond_the_position_table_is_capped_with_a_warning(tiny_dir, caplog):
    """sentence-transformers keeps model_max_length=2000 and fails on the first longer pair; crossjax truncates at
    the position limit, and says so (it did silently)."""
    with caplog.at_level("WARNING", logger="crossjax"):
        model = CrossEncoder(tiny_dir, tokenizer_kwargs={"model_max_length": 2000})
    limit = model.model.position_limit
    assert model.max_length == limit and f"truncated at {limit}" in caplog.text


def test_options_without_a_meaning_in_jax_are_taken_as_in_sentence_transformers(tiny_dir):
    """trust_remote_code on a checkpoint without code of its own (one with is refused when its config is read),
    PyTorch's attention and memory options: sentence-transformers users pass them; they change nothing here."""
    reference = CrossEncoder(tiny_dir).predict([("a b", "c d")])
    for kwargs in ({"trust_remote_code": True}, {"model_kwargs": {"attn_implementation": "sdpa"}},
                   {"model_kwargs": {"attn_implementation": "eager", "low_cpu_mem_usage": True}}):  # fmt: skip
        np.testing.assert_array_equal(CrossEncoder(tiny_dir, **kwargs).predict([("a b", "c d")]), reference)


def test_model_kwargs_dtype_device_and_processor_kwargs(tiny_dir):
    import torch

    assert CrossEncoder(tiny_dir, model_kwargs={"torch_dtype": torch.bfloat16}).compute_dtype == jnp.bfloat16
    assert CrossEncoder(tiny_dir, model_kwargs={"dtype": "auto"}).compute_dtype == jnp.float32
    ce = CrossEncoder(tiny_dir, device="cpu", processor_kwargs={"model_max_length": 40})
    assert [d.platform for d in ce.mesh_plan.mesh.devices.flat] == ["cpu"] * jax.device_count("cpu")
    assert ce.max_length == 40  # the tokenizer was built with the processor kwargs
    assert CrossEncoder(tiny_dir, device="cpu:0").mesh_plan.data_shards == 1


def test_cache_folder_reaches_the_hub_download(tiny_dir, monkeypatch):
    import crossjax.cross_encoder as ce_module

    seen = {}

    def fake_resolve(name, **hub):
        seen.update(hub, name=name)
        return Path(tiny_dir)

    monkeypatch.setattr(ce_module, "resolve_checkpoint_dir", fake_resolve)
    CrossEncoder("org/some-reranker", cache_folder="/tmp/hf-cache", revision="v1", local_files_only=True)
    assert seen == {
        "name": "org/some-reranker",
        "cache_dir": "/tmp/hf-cache",
        "revision": "v1",
        "local_files_only": True,
    }


def test_prompts_saved_loaded_and_applied_like_sentence_transformers(tiny_dir, tmp_path):
    from sentence_transformers import CrossEncoder as STCrossEncoder

    pairs = [tuple(e.texts) for e in make_examples(6, seed=22)]
    ours = CrossEncoder(tiny_dir, prompts={"query": "query: ", "other": "find: "}, default_prompt_name="query")
    plain = CrossEncoder(tiny_dir)
    with_prompt = [("query: " + a, b) for a, b in pairs]
    np.testing.assert_array_equal(ours.predict(pairs), plain.predict(with_prompt))  # the default prompt
    np.testing.assert_array_equal(
        ours.predict(pairs, prompt_name="other"), plain.predict([("find: " + a, b) for a, b in pairs])
    )
    np.testing.assert_array_equal(ours.predict(pairs, prompt=""), plain.predict(pairs))  # explicit empty prompt
    with pytest.raises(ValueError, match="not found in the configured prompts"):
        ours.predict(pairs, prompt_name="missing")
    assert ours.rank("q", ["a b", "c d"], prompt_name="other") == plain.rank("find: q", ["a b", "c d"])

    ours.save(tmp_path / "prompted")
    theirs = STCrossEncoder(str(tmp_path / "prompted"), device="cpu")
    assert theirs.prompts == ours.prompts and theirs.default_prompt_name == "query"
    np.testing.assert_allclose(theirs.predict(pairs), ours.predict(pairs), atol=1e-5)
    np.testing.assert_allclose(
        theirs.predict(pairs, prompt_name="other"), ours.predict(pairs, prompt_name="other"), atol=1e-5
    )
    reloaded = CrossEncoder(tmp_path / "prompted")
    assert reloaded.prompts == ours.prompts and reloaded.default_prompt_name == "query"


def test_predict_arguments(tiny_dir):
    ce = CrossEncoder(tiny_dir)
    pairs = [tuple(e.texts) for e in make_examples(3, seed=23)]
    np.testing.assert_array_equal(ce.predict(inputs=pairs), ce.predict(pairs))  # sentence-transformers 6 name
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            ce.predict(pairs, batch_size=bad)
    with pytest.raises(TypeError, match="unexpected keyword argument 'normalize'"):
        ce.predict(pairs, normalize=True)
    with pytest.raises(TypeError, match="both"):
        ce.predict(sentences=pairs, inputs=pairs[:1])
    np.testing.assert_array_equal(ce.predict(sentences=pairs), ce.predict(pairs))  # the legacy name
    with pytest.raises(ValueError, match="multi-process"):
        ce.predict(pairs, device="cuda:1")
    # a DataFrame iterates its column names: sentence-transformers refuses it, and so does crossjax (naming the fix)
    import pandas as pd

    frame = pd.DataFrame({"query": [a for a, _ in pairs], "doc": [b for _, b in pairs]})
    with pytest.raises(ValueError, match=r"does not take a DataFrame.*values\.tolist\(\)"):
        ce.predict(frame)
    np.testing.assert_array_equal(ce.predict(frame.values.tolist()), ce.predict(pairs))
    with pytest.raises(ValueError, match="got 5"):
        ce.predict(5)
    assert len(ce.rank("q", ["a b", "c", "d"], top_k=np.array(2))) == 2  # what a slice takes
    for top_k in ("2", -1, 1.5):  # sentence-transformers: a slice error, or silently one result short for -1
        with pytest.raises(ValueError, match="top_k"):
            ce.rank("q", ["a b", "c"], top_k=top_k)
    with pytest.raises(ValueError, match="documents must be a list"):
        ce.rank("q", "a b c")  # sentence-transformers ranks its characters
    generated = ce.rank("q", (d for d in ["a b", "c"]), return_documents=True)  # sentence-transformers: fails
    assert sorted(r["text"] for r in generated) == ["a b", "c"]


# -------------------------------------------------------------------- 4. unexportable activation, early
def test_custom_activation_with_output_path_fails_before_compilation(tiny_dir, tmp_path, spies):
    ce = CrossEncoder(tiny_dir, activation_fn=lambda x: 2.0 * x)
    with pytest.raises(ValueError, match="activation_fn"):
        ce.fit(DataLoader(make_examples(8), batch_size=4), output_path=str(tmp_path / "out"), **TRAIN)
    assert spies == []  # nothing was tokenized or compiled
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- 7. resume fingerprint
@pytest.mark.parametrize(
    "change, field",
    [
        ({"optimizer_params": {"lr": 5e-4}}, "learning_rate"),
        ({"weight_decay": 0.5}, "weight_decay"),
        ({"max_grad_norm": 0.5}, "max_grad_norm"),
        ({"scheduler": "warmuplinear"}, "scheduler"),
        ({"warmup_steps": 3}, "warmup_steps"),
        ({"loss_fct": "mse"}, "loss"),
        ({"activation_fct": "sigmoid"}, "activation_fct"),
        ({"use_amp": True}, "compute_dtype"),
        ({"group_by_length": True}, "group_by_length"),
    ],
)
def test_resuming_with_other_training_settings_is_refused(tiny_dir, tmp_path, change, field):
    examples = make_examples(8, seed=24)
    ckpt = str(tmp_path / "ckpt")
    base = {**TRAIN, "checkpoint_path": ckpt, "checkpoint_save_steps": 1}
    CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4, shuffle=True), **base)
    with pytest.raises(CheckpointMismatchError, match=rf"{field}: checkpoint"):
        CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4, shuffle=True), **{**base, **change})


def test_resuming_with_another_max_length_names_it(tiny_dir, tmp_path):
    """A shorter max_length truncates the pairs, so the data and the packed shapes differ too; the refusal named
    only those (a probe), not the setting to undo."""
    loader = DataLoader(make_examples(8, seed=24), batch_size=4)
    base = {**TRAIN, "checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 1}
    CrossEncoder(tiny_dir, max_length=32).fit(loader, **base)
    with pytest.raises(CheckpointMismatchError, match=r"\(max_length: checkpoint 32 vs now 8, "):
        CrossEncoder(tiny_dir, max_length=8).fit(loader, **base)


def test_resuming_with_the_other_layer_layout_is_a_mismatch_not_corruption(tiny_dir, tmp_path):
    examples = make_examples(8, seed=24)
    base = {**TRAIN, "checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 1}
    CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4, shuffle=True), **base)
    with pytest.raises(CheckpointMismatchError, match="scan_layers: checkpoint True vs now False") as caught:
        CrossEncoder(tiny_dir, scan_layers=False).fit(DataLoader(examples, batch_size=4, shuffle=True), **base)
    assert not isinstance(caught.value, CheckpointCorruptError)
    # A checkpoint written before the fingerprint named the layout (no such key) still resumes.
    import json

    from crossjax.checkpoint import LATER_FINGERPRINT_KEYS

    ckpt = tmp_path / "ckpt"
    meta_file = ckpt / str(max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())) / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    assert "scan_layers" in LATER_FINGERPRINT_KEYS and meta["fingerprint"].pop("scan_layers") is True
    meta_file.write_text(json.dumps(meta))
    summary = CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4, shuffle=True), **base)
    assert summary["resumed_from_step"] == 2


def test_checkpoint_whose_data_fails_its_checksums_is_refused_and_kept(tiny_dir, tmp_path):
    """Silent corruption (readable bytes, other values) is caught by the checksums stored at save time. Here the
    stored checksum of one array is changed instead of the array's bytes: the same mismatch, placed exactly."""
    import json

    examples = make_examples(8, seed=24)
    ckpt = tmp_path / "ckpt"
    settings = {**TRAIN, "epochs": 2, "checkpoint_path": str(ckpt), "checkpoint_save_steps": 1}
    CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4, shuffle=True), **settings)
    latest = max(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    meta_file = ckpt / str(latest) / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    name = sorted(meta["checksums"])[0]
    meta["checksums"][name][1] += 1
    meta_file.write_text(json.dumps(meta))
    before = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}

    with pytest.raises(CheckpointCorruptError, match="does not match the checksums") as caught:
        CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4, shuffle=True), **settings)
    assert f"step {latest}" in str(caught.value) and "Nothing was deleted" in str(caught.value)
    assert name in str(caught.value)
    assert {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()} == before  # nothing written or removed


def test_a_remote_checkpoints_model_folder_is_exported_locally_and_copied(tmp_path, monkeypatch, caplog):
    """A gs:// checkpoint's item folder is not a local path (the export's atomic write and its checks are
    local): the model is written to a local folder, then each file copied through etils' epath, as orbax writes
    there. The bucket is a local folder here (epath.Path mapped onto it)."""
    from etils import epath

    from crossjax.checkpoint import _write_model_folder

    bucket = tmp_path / "bucket"

    class Bucket(type(epath.Path(tmp_path))):  # gs://bucket/... -> tmp_path/bucket/...
        def __new__(cls, *parts):
            text = "/".join(str(p) for p in parts)
            return super().__new__(cls, text.replace("gs://bucket", str(bucket)))

    monkeypatch.setattr(epath, "Path", Bucket)

    def write(folder: str) -> None:
        assert "://" not in folder  # a local folder
        (Path(folder) / "config.json").write_text("{}")
        (Path(folder) / "sub").mkdir()
        (Path(folder) / "sub" / "vocab.txt").write_text("a\nb")

    _write_model_folder(write, "gs://bucket/ckpt/5/model")
    assert (bucket / "ckpt/5/model/config.json").read_text() == "{}"
    assert (bucket / "ckpt/5/model/sub/vocab.txt").read_text() == "a\nb"

    def failing(folder: str) -> None:
        raise OSError("quota exceeded")

    with caplog.at_level("WARNING", logger="crossjax"):
        _write_model_folder(failing, "gs://bucket/ckpt/6/model")  # a warning, not an exception
    assert "quota exceeded" in caplog.text


def test_preemption_between_epoch_end_and_its_evaluation_redoes_the_evaluation(tiny_dir, tmp_path):
    examples = make_examples(8, seed=25)  # 2 steps per epoch
    settings = {**TRAIN, "epochs": 2, "checkpoint_path": str(tmp_path / "ckpt"), "checkpoint_save_steps": 2}
    first = RecordingEvaluator(stop_at=(1, -1))  # "preempted" during epoch 1's evaluation
    with pytest.raises(Stop):
        CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4), evaluator=first, **settings)
    assert first.calls == [(0, -1), (1, -1)]
    second = RecordingEvaluator()
    summary = CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4), evaluator=second, **settings)
    assert summary["resumed_from_step"] == 2  # epoch 0's checkpoint, written after its evaluation
    assert second.calls == [(1, -1)]  # epoch 1 and its evaluation ran again


# ------------------------------------------------------------------------------ 8. float32 means float32
def _dots(ce: CrossEncoder, dtype, train: bool) -> list[str]:
    from crossjax import training

    graphdef = training.graphdef_with_dtype(ce.model, dtype, train=train)
    params, rest = nnx.state(ce.model, nnx.Param), nnx.state(ce.model, nnx.Not(nnx.Param))

    def forward(params, rest, ids):
        return nnx.merge(graphdef, params, rest, copy=True)(ids, jnp.ones_like(ids))

    def loss(params, rest, ids):
        return forward(params, rest, ids).sum()

    ids = jnp.ones((2, 8), jnp.int32)
    text = jax.jit(jax.grad(loss) if train else forward).lower(params, rest, ids).as_text()
    return [line for line in text.splitlines() if "dot_general" in line]


@pytest.mark.parametrize("train", [False, True])
def test_float32_compute_asks_for_float32_matmuls(tiny_dir, train):
    dots = _dots(CrossEncoder(tiny_dir), jnp.float32, train)
    assert len(dots) >= 10
    # Every matmul (forward and, in training, backward) carries HIGHEST precision: no bf16 passes on TPU,
    # no TF32 on GPU, for float32 compute.
    assert all("precision = [HIGHEST, HIGHEST]" in d for d in dots), [d for d in dots if "HIGHEST" not in d][:2]


def test_bfloat16_attention_scores_accumulate_in_float32(tiny_dir):
    dots = _dots(CrossEncoder(tiny_dir), jnp.bfloat16, train=True)
    # QK^T: bf16 (batch, length, heads, dim) operands -> float32 (batch, heads, length, length) scores.
    scores = [d for d in dots if re.search(r"tensor<2x8x4x8xbf16>, tensor<2x8x4x8xbf16>\) -> tensor<2x4x8x8x?f32>", d)]
    assert scores, "the attention scores are not computed in float32"
    assert not any("HIGHEST" in d for d in dots)  # bf16 compute keeps the platform's fast default


# ------------------------------------------------------------------------------------------ 9. data order
def test_dataloader_seed_orders_the_data_and_fit_seed_only_dropout(tiny_dir):
    examples = make_examples(24, seed=26, max_words=12)

    def run(loader_seed, fit_seed):
        ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
        ce.fit(DataLoader(examples, batch_size=4, shuffle=True, seed=loader_seed), seed=fit_seed, **TRAIN)
        return losses_of(ce)

    a = run(1, 0)
    assert run(1, 5) == a  # dropout off: the fit seed changes nothing once the loader fixes the order
    assert run(2, 0) != a  # another loader seed, another order
    # numpy's generators take no negative seed: each place names its seed, before any work
    with pytest.raises(ValueError, match=r"DataLoader seed must be an integer in \[0, 2\*\*32\), got -1"):
        DataLoader(examples, seed=-1)
    with pytest.raises(ValueError, match="CrossEncoder seed must be an integer"):
        CrossEncoder(tiny_dir, seed=2**32)  # JAX's 32-bit keys would fold it onto seed 0
    with pytest.raises(ValueError, match="fit seed must be an integer in .*, got 1.5"):
        CrossEncoder(tiny_dir).fit(DataLoader(examples, batch_size=4), seed=1.5, **TRAIN)
    assert DataLoader(examples, seed=np.int64(3)).seed == 3


def test_group_by_length_off_gives_plain_random_batches(tiny_dir, monkeypatch):
    examples = make_examples(64, seed=27, min_words=1, max_words=30)
    seen: list[np.ndarray] = []
    pack = packing.pack

    def spy(tokenized, indices, *args, **kwargs):
        seen.append(np.asarray(indices))
        return pack(tokenized, indices, *args, **kwargs)

    monkeypatch.setattr(packing, "pack", spy)
    ce = CrossEncoder(tiny_dir)
    lengths = data.tokenize_pairs(
        ce.tokenizer, [e.texts[0] for e in examples], [e.texts[1] for e in examples], ce.max_length
    ).lengths

    def sorted_batches(batches) -> int:
        return sum(bool(np.all(np.diff(lengths[b]) <= 0)) for b in batches)

    ce.fit(DataLoader(examples, batch_size=4, shuffle=True, seed=3), group_by_length=True, **TRAIN)
    grouped, seen[:] = list(seen), []
    assert sorted_batches(grouped) == 16  # grouped: every batch is a length-sorted slice of a megabatch
    ce.fit(DataLoader(examples, batch_size=4, shuffle=True, seed=3), group_by_length=False, **TRAIN)
    plain = list(seen)
    assert sorted_batches(plain) < 8  # random batches: a batch of 4 comes out sorted 1 time in 24
    order = np.random.default_rng((3, 0)).permutation(64)  # plain: consecutive slices of one permutation
    np.testing.assert_array_equal(np.concatenate(plain), order)


# ------------------------------------------------------------------------------------------- 11. structure
def _imports(path: Path, module: str) -> set[str]:
    """crossjax modules imported anywhere in ``path`` (top-level or inside functions)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("crossjax"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("crossjax"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)
    return found


def test_no_import_cycles_between_modules():
    modules = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {
        name: {m for m in _imports(path, name) if m in modules and m != name and not name.startswith(m + ".")}
        for name, path in modules.items()
    }
    packages = {n for n, p in modules.items() if p.name == "__init__.py"}
    cycles = []

    def visit(node, stack):
        for nxt in graph[node]:
            if nxt in packages:
                continue  # a package's __init__ re-exports its modules; importing it is not a module cycle
            if nxt in stack:
                cycles.append(stack[stack.index(nxt) :] + [nxt])
            elif len(stack) < 12:
                visit(nxt, stack + [nxt])

    for name in modules:
        visit(name, [name])
    assert not cycles, cycles[:3]


def test_one_is_main_process_and_no_private_jax_imports():
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    assert sum(len(re.findall(r"^def is_main_process\(", s, re.M)) for s in sources.values()) == 1
    assert not [p.name for p, s in sources.items() if "jax._src" in s]


def test_constructing_a_cross_encoder_never_joins_a_distributed_run(tiny_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.delenv("CROSSJAX_DISTRIBUTED", raising=False)
    # Launch environments the old heuristics took as "join now": only an explicit request may.
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "host-a,host-b")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    CrossEncoder(tiny_dir)
    assert calls == []
    monkeypatch.setenv("CROSSJAX_DISTRIBUTED", "1")
    CrossEncoder(tiny_dir)
    assert len(calls) == 1


def test_dropout_rates_and_label_counts_no_model_can_have_are_refused(tiny_dir):
    """torch refuses a dropout rate outside [0, 1] when it builds the layer; crossjax's failed in the first
    step (a uint32 overflow) or, above 1, trained nothing. ``num_labels=0`` through ``config_kwargs`` too."""
    for kwargs, message in (
        ({"config_kwargs": {"hidden_dropout_prob": -1.0}}, "hidden_dropout_prob=-1.0"),
        ({"classifier_dropout": 1.5}, "classifier_dropout=1.5"),
        ({"config_kwargs": {"num_labels": 0}}, "num_labels=0"),
        # torch's BERT builds a token-type table of 0 rows and fails reading it at the first forward
        ({"config_kwargs": {"type_vocab_size": 0}}, "type_vocab_size=0"),
    ):
        with pytest.raises(ValueError, match=message):
            CrossEncoder(tiny_dir, **kwargs)


def test_trainer_inputs_that_would_do_nothing_or_fail_deep_are_named(tiny_dir, tmp_path):
    from crossjax import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from crossjax.evaluation import CrossEncoderRerankingEvaluator
    from crossjax.util import mine_hard_negatives

    model = CrossEncoder(tiny_dir)
    data = {"a": ["x y", "z"], "b": ["w", "v u"], "label": [1.0, 0.0]}
    with pytest.raises(TypeError, match="TrainerCallback events"):
        CrossEncoderTrainer(model=model, train_dataset=data, callbacks=["x"])
    with pytest.raises(TypeError, match="CrossEncoderTrainingArguments"):
        CrossEncoderTrainer(model=model, args="out", train_dataset=data)
    args = CrossEncoderTrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=2)
    with pytest.raises(TypeError, match="resume_from_checkpoint"):
        CrossEncoderTrainer(model=model, args=args, train_dataset=data).train(resume_from_checkpoint=5)
    with pytest.raises(ValueError, match="logging_steps must be a whole number"):
        CrossEncoderTrainingArguments(str(tmp_path), logging_steps=2.5)  # Hugging Face refuses it too
    CrossEncoderTrainingArguments(str(tmp_path), eval_strategy="no", eval_steps=2.5)  # unused there: accepted
    with pytest.raises(ValueError, match="'no_duplicates'"):
        CrossEncoderTrainingArguments(str(tmp_path), batch_sampler="bogus")  # the choices are listed
    with pytest.raises(TypeError, match="'negative' must be a list"):
        CrossEncoderRerankingEvaluator([{"query": "q", "positive": ["a"], "negative": "bcd"}])(model)
    with pytest.raises(TypeError, match="corpus must be a list"):
        mine_hard_negatives(data, anchor_column_name="a", positive_column_name="b", corpus="xyz")
    with pytest.raises(ValueError, match="batch_size"):
        mine_hard_negatives(data, anchor_column_name="a", positive_column_name="b", batch_size=0)


def test_loss_numbers_that_are_not_numbers_are_named(tiny_dir):
    """A YAML config's ``scale: "10"`` reaches a loss as a string; sentence-transformers fails when the first
    batch multiplies by it, crossjax failed inside the first compiled step: each is named when the loss is made."""
    from crossjax import losses

    model = CrossEncoder(tiny_dir)
    for make, name in (
        (lambda: losses.MultipleNegativesRankingLoss(model, scale="10"), "scale"),
        (lambda: losses.CachedMultipleNegativesRankingLoss(model, scale=float("nan")), "scale"),
        (lambda: losses.LambdaLoss(model, sigma="1"), "sigma"),
        (lambda: losses.RankNetLoss(model, eps=True), "eps"),
        (lambda: losses.ADRMSELoss(model, alpha=None), "alpha"),
        (lambda: losses.NDCGLoss2PPScheme(mu="10"), "mu"),
    ):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            make()
    assert losses.LambdaLoss(model, sigma=np.float32(2.0)).sigma == 2.0  # numpy numbers are numbers
    assert losses.MultipleNegativesRankingLoss(model, scale=None).scale is None  # unscaled, as sentence-transformers
