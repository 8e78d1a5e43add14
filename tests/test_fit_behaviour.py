"""``CrossEncoder.fit``/``predict``/``rank`` behaviour on a tiny random BERT (fast), MiniLM only where needed.

Each test checks the library against an expectation computed independently of it: the Hugging Face
tokenizer for bucket shapes, a separate reference run for "what the parameters should be", PyTorch
transformers for the logits, sentence-transformers' file names for evaluator output.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import save_tiny_bert
from flax import nnx

from crossjax import CrossEncoder, DataLoader, InputExample, losses, training
from crossjax.evaluation import CECorrelationEvaluator

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
QUIET = {"show_progress_bar": False}
# Shared by most fits: a constant schedule makes the step program independent of the run's length, so fits
# with the same batch shape and dropout setting reuse one compiled program
# (and the run's shared XLA cache: conftest's `crossjax_compilation_cache`).
TRAIN = {"scheduler": "constantlr", "optimizer_params": {"lr": 1e-3}, **QUIET}
WORDS = (
    "the a man woman dog cat plays runs guitar field music park red blue small large quickly slowly "
    "house car child ball water tree sings eats bread river city green old young"
).split()


# --------------------------------------------------------------------------------------------- fixtures
def _save_tiny(directory: Path, tokenizer, num_labels: int) -> Path:
    # initializer_range 0.2: visibly different scores per pair, so order/equality checks mean something
    return save_tiny_bert(directory, tokenizer, num_labels, seed=num_labels, initializer_range=0.2)


@pytest.fixture(scope="module")
def tiny_dirs(minilm_dir, tmp_path_factory) -> dict[int, Path]:
    """Random 2-layer BertForSequenceClassification checkpoints (1 and 3 labels) with MiniLM's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    return {n: _save_tiny(tmp_path_factory.mktemp(f"tiny{n}"), tokenizer, n) for n in (1, 3)}


@pytest.fixture(scope="module")
def tiny_dir(tiny_dirs) -> Path:
    return tiny_dirs[1]


def sentence(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(rng.choice(WORDS, size=n_words))


def make_examples(n: int, seed: int = 0, min_words: int = 2, max_words: int = 6) -> list[InputExample]:
    rng = np.random.default_rng(seed)
    return [
        InputExample(
            texts=[sentence(rng, rng.integers(min_words, max_words + 1)), sentence(rng, rng.integers(1, 4))],
            label=float(rng.integers(0, 2)),
        )
        for _ in range(n)
    ]


def params_of(ce: CrossEncoder) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(ce.model, nnx.Param))]


def params_with_a_gradient(ce: CrossEncoder) -> list[np.ndarray]:
    """:func:`params_of` without the attention key biases: their true gradient is exactly 0 (``q . b_k`` shifts
    every score of a query alike, and softmax ignores that), so Adam steps them by float32 rounding noise, which
    differs with the order of any summation."""
    flat = list(nnx.state(ce.model, nnx.Param).flat_state())
    kept = [np.asarray(v[...]) for path, v in flat if not ("key" in map(str, path) and str(path[-1]) == "bias")]
    assert len(kept) < len(flat), "no attention key bias found"
    return kept


def losses_of(ce: CrossEncoder) -> list[float]:
    return [h["loss"] for h in ce.training_history]


def hf_state(directory: Path) -> dict[str, np.ndarray]:
    """The checkpoint's parameters as PyTorch transformers loads them."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(directory)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def hf_logits(directory: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Logits from PyTorch transformers: the independent reference for crossjax's forward pass."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    enc = tok([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy()


# ------------------------------------------------------------------------- 1. bad input, before compiling
def _with_bad(index: int, bad: InputExample, n: int = 4) -> list[InputExample]:
    examples = make_examples(n)
    examples[index] = bad
    return examples


BAD_EXAMPLES = {
    "three texts": (1, InputExample(texts=["a", "b", "c"], label=1.0), "exactly 2 texts"),
    "one text": (1, InputExample(texts=["a"], label=1.0), "exactly 2 texts"),
    "None text": (1, InputExample(texts=["a", None], label=1.0), "None"),
    "non-string text": (1, InputExample(texts=["a", 5], label=1.0), "string"),
    "missing label": (1, InputExample(texts=["a", "b"], label=None), "missing label"),
    "NaN label": (1, InputExample(texts=["a", "b"], label=float("nan")), "finite"),
    "float label for classification": (3, InputExample(texts=["a", "b"], label=1.5), "class index"),
    "label >= num_labels": (3, InputExample(texts=["a", "b"], label=3), "out of range"),
}


@pytest.fixture(scope="module")
def untrained(tiny_dirs) -> dict[int, CrossEncoder]:
    return {n: CrossEncoder(d) for n, d in tiny_dirs.items()}


@pytest.mark.parametrize("case", sorted(BAD_EXAMPLES))
def test_bad_examples_rejected_before_compilation(case, untrained, spies):
    num_labels, bad, message = BAD_EXAMPLES[case]
    ce = untrained[num_labels]
    before = params_of(ce)
    examples = _with_bad(2, bad)
    if num_labels == 3:
        for i, ex in enumerate(examples):
            if i != 2:
                ex.label = i % 3
    with pytest.raises(ValueError, match=message) as err:
        ce.fit(DataLoader(examples, batch_size=4), **QUIET)
    assert "Example 2" in str(err.value)
    assert spies == [], f"fit went on to {spies} before rejecting the input"
    assert ce.compilations["train"] == 0
    for a, b in zip(before, params_of(ce), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "loader, kwargs, message",
    [
        (DataLoader([], batch_size=4), {}, "empty"),
        ([], {}, "empty"),
        (DataLoader(make_examples(4), batch_size=4), {"epochs": 0}, "epochs"),
        (DataLoader(make_examples(4), batch_size=4), {"scheduler": "NoSuchSchedule"}, "Unknown scheduler"),
        # the trainer's schedules are not fit's (sentence-transformers' fit knows five)
        (DataLoader(make_examples(4), batch_size=4), {"scheduler": "polynomial"}, "Unknown scheduler"),
        (DataLoader(make_examples(4), batch_size=4), {"gradient_accumulation_steps": 0}, "accumulation"),
        (DataLoader(make_examples(4), batch_size=4), {"optimizer_params": {"lr": -1.0}}, "lr"),
        (DataLoader(make_examples(4), batch_size=4), {"weight_decay": None}, "weight_decay must be a number"),
        (DataLoader(make_examples(4), batch_size=4), {"output_path": ""}, "output_path is an empty string"),
        (DataLoader(make_examples(4), batch_size=4), {"output_path": __file__}, "is an existing file"),
    ],
    ids=[
        "empty DataLoader", "empty list", "epochs=0", "unknown scheduler", "trainer scheduler", "accumulation 0",
        "negative lr",
        "weight_decay None", "empty output_path", "output_path a file",
    ],
)  # fmt: skip
def test_bad_fit_arguments_rejected_before_compilation(loader, kwargs, message, untrained, spies):
    ce = untrained[1]
    with pytest.raises(ValueError, match=message):
        ce.fit(loader, **QUIET, **kwargs)
    assert spies == []
    assert ce.compilations["train"] == 0


@pytest.mark.parametrize(
    "loss, message",
    [
        ("ignore", "CrossEntropyLoss\\(ignore_index=0\\) names a real class of num_labels=3"),
        ("two weights", "needs one weight per class, shape \\(3,\\)"),
        ("four weights", "holds 4 class weights"),
    ],
)
def test_cross_entropy_settings_torch_would_apply_otherwise_are_refused(untrained, spies, loss, message):
    """An ``ignore_index`` naming a real class is refused (crossjax could not tell those rows from unlabelled
    ones when it checks labels), as is a weight per class of another count, which torch refuses (JAX would clamp
    the index and train on made-up weights)."""
    import torch

    torch_loss = {
        "ignore": torch.nn.CrossEntropyLoss(ignore_index=0),
        "two weights": torch.nn.CrossEntropyLoss(weight=torch.ones(2)),
        "four weights": torch.nn.CrossEntropyLoss(weight=torch.ones(4)),
    }[loss]
    examples = make_examples(6)
    for i, example in enumerate(examples):
        example.label = i % 3
    with pytest.raises(ValueError, match=message):
        untrained[3].fit(DataLoader(examples, batch_size=3), loss_fct=torch_loss, **QUIET)
    assert spies == []


class FallingLossEvaluator:
    """A lower-is-better evaluator (``greater_is_better = False``) whose score is lowest at its 2nd call."""

    greater_is_better = False
    primary_metric = "loss"

    def __init__(self, probe):
        # far beyond any sentinel "worst score" a loop might start from (sentence-transformers starts from None)
        self.probe, self.scores, self.predictions = probe, [5e7, 1e7, 3e7, 2e7], []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.predictions.append(model.predict(self.probe))
        return {"loss": self.scores[len(self.predictions) - 1]}


def test_a_lower_is_better_evaluator_keeps_its_lowest_score_s_model(tiny_dir, tmp_path):
    """As sentence-transformers 6's fit (its SaveModelCallback reads ``greater_is_better``)."""
    probe = [tuple(e.texts) for e in make_examples(5, seed=7)]
    evaluator = FallingLossEvaluator(probe)
    summary = CrossEncoder(tiny_dir).fit(
        DataLoader(make_examples(16, seed=8), batch_size=8),
        evaluator=evaluator,
        epochs=4,  # evaluated at each epoch's end
        output_path=str(tmp_path / "out"),
        **TRAIN,
    )
    assert len(evaluator.predictions) == 4 and summary["best_score"] == 1e7
    np.testing.assert_allclose(CrossEncoder(tmp_path / "out").predict(probe), evaluator.predictions[1], atol=1e-6)
    assert np.abs(evaluator.predictions[1] - evaluator.predictions[3]).max() > 1e-4  # another model at the end


# ----------------------------------------------------------------------------------- 2. non-finite loss
SENTINEL = 7.0  # a finite label (so validation accepts it) that makes the loss below NaN


def nan_on_sentinel(logits, labels, example_mask):
    loss = losses.binary_cross_entropy_with_logits(logits, jnp.clip(labels, 0.0, 1.0), example_mask)
    return jnp.where(jnp.any((labels == SENTINEL) & (example_mask > 0)), jnp.nan, loss)


def _snapshot(directory: Path) -> dict[str, bytes]:
    """The model files of an output folder (not the run's logs, which every run writes there)."""
    logs = ("metrics.jsonl", "training_curves.png", "runs")
    files = [p for p in sorted(directory.rglob("*")) if p.is_file() and p.relative_to(directory).parts[0] not in logs]
    return {str(p.relative_to(directory)): p.read_bytes() for p in files}


def test_nan_loss_stops_training_and_keeps_last_good_model(tiny_dir, tmp_path):
    out = tmp_path / "best"
    # eps 1e-6: the reference run below packs its 2 steps into another row length than the 5-step run, and with
    # a tiny eps Adam turns the rounding noise of the key biases' zero gradient into lr-sized steps.
    settings = dict(loss_fct=nan_on_sentinel, **{**TRAIN, "optimizer_params": {"lr": 1e-3, "eps": 1e-6}})
    ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    dev = make_examples(6, seed=9)
    evaluator = CECorrelationEvaluator([e.texts for e in dev], [e.label for e in dev])
    ce.fit(DataLoader(make_examples(16, seed=1), batch_size=8), evaluator=evaluator, output_path=str(out), **settings)
    saved = _snapshot(out)
    assert "model.safetensors" in saved

    # Second run: 5 steps of 8, step 3's batch has the sentinel -> NaN loss at step 3.
    examples = make_examples(40, seed=2)
    examples[19].label = SENTINEL
    with pytest.raises(FloatingPointError, match=r"step 3 \(epoch 0\)"):
        ce.fit(DataLoader(examples, batch_size=8), output_path=str(out), **settings)
    assert _snapshot(out) == saved, "a failed run must not overwrite the last good model"
    after = params_of(ce)
    assert all(np.isfinite(p).all() for p in after)

    # Training stopped at the bad step: the parameters are those after the 2 good steps, nothing later.
    reference = CrossEncoder(out, config_kwargs=NO_DROPOUT)  # the state the second run started from
    reference.fit(DataLoader(examples[:16], batch_size=8), **settings)
    assert len(reference.training_history) == 2
    for a, b in zip(params_with_a_gradient(ce), params_with_a_gradient(reference), strict=True):  # the other
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # layout's float32 round-off
    assert [h["step"] for h in ce.training_history] == [1, 2]


def test_exploding_learning_rate_raises_with_finite_parameters(tiny_dir):
    ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    loader = DataLoader(make_examples(24), batch_size=8)
    # Step 1's update leaves parameters of ~1e30: finite, but beyond what the step's check accepts (1.8e19,
    # where a square overflows), so the run stops there instead of at step 2's NaN loss.
    with pytest.raises(FloatingPointError, match=r"the parameter update of step 1 \(epoch 0\) overflowed"):
        ce.fit(loader, scheduler="constantlr", optimizer_params={"lr": 1e30}, **QUIET)
    after = params_of(ce)
    assert all(np.isfinite(p).all() for p in after)
    assert max(float(np.abs(p).max()) for p in after) > 1e19
    assert [h["step"] for h in ce.training_history] == []


def test_learning_rate_beyond_float32_is_refused_before_training(tiny_dir):
    ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    initial = params_of(ce)
    for lr in (1e39, 1e-50, 1e-40):  # too large; positive but 0 in float32, or a subnormal XLA flushes to 0
        with pytest.raises(ValueError, match=r"optimizer_params\['lr'\] must be a number >= 0 that float32 can hold"):
            ce.fit(DataLoader(make_examples(8), batch_size=8), optimizer_params={"lr": lr}, **QUIET)
    assert np.float32(1e-50) == 0 and np.float32(1e-40) > 0
    assert float(jax.jit(lambda lr, g: lr * g)(np.float32(1e-40), np.float32(1.0))) == 0.0  # flushed
    assert ce.compilations["train"] == 0
    for a, b in zip(initial, params_of(ce), strict=True):
        np.testing.assert_array_equal(a, b)


def test_overflowing_update_is_reported_at_its_step(tiny_dir):
    # Adam with eps 0 divides 0 by 0 for every parameter whose gradient is exactly 0 (token embeddings the
    # batch does not use), as torch.optim.AdamW does: loss and gradient are finite, the update is not.
    ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    with pytest.raises(FloatingPointError, match=r"the parameter update of step 1 \(epoch 0\) overflowed"):
        ce.fit(DataLoader(make_examples(24), batch_size=8), optimizer_params={"lr": 2e-5, "eps": 0.0}, **QUIET)
    assert ce.training_history == []


# ------------------------------------------------------------------------------- 3. compilations/packing
def test_compilations_bounded_by_max_shapes(tiny_dir):
    rng = np.random.default_rng(3)
    # Random lengths from 5 to ~60 tokens: padding each batch to its longest pair would waste most tokens.
    examples = [
        InputExample(texts=[sentence(rng, rng.integers(2, 40)), sentence(rng, rng.integers(1, 12))], label=1.0)
        for _ in range(96)
    ]
    pairs = [tuple(e.texts) for e in examples]
    efficiency = {}
    for max_shapes in (1, 2):
        # Jitted steps are shared by the whole process: start cold, so the counts below are this test's own
        # (a second fit compiling nothing: tests/test_compile_cache.py).
        training.clear_program_cache()
        ce = CrossEncoder(tiny_dir, max_length=64, max_shapes=max_shapes)
        summary = ce.fit(DataLoader(examples, batch_size=8, shuffle=True), epochs=2, **TRAIN)
        assert summary["global_step"] == 24
        assert 1 <= summary["compilations"] == len(summary["compiled_shapes"]) <= max_shapes
        assert ce.compilations["train"] == summary["compilations"]
        first = ce.predict(pairs, batch_size=8)
        assert 1 <= ce.compilations["predict"] <= max_shapes
        np.testing.assert_array_equal(ce.predict(pairs, batch_size=8), first)  # a second call compiles nothing
        assert ce.compilations["predict"] <= max_shapes
        efficiency[max_shapes] = (summary["padding_efficiency"], summary["compiled_shapes"])
    lengths = ce.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=64)["input_ids"]
    real = 2 * sum(len(ids) for ids in lengths)  # 2 epochs
    (groups, rows, row_length), = efficiency[1][1]
    # One shape: every step computes groups x rows x row_length tokens, and packing beats padding each pair to
    # the longest (what one static shape costs without packing).
    assert efficiency[1][0] == pytest.approx(real / (24 * groups * rows * row_length))
    assert efficiency[1][0] > np.mean([len(ids) for ids in lengths]) / max(len(ids) for ids in lengths)
    # This model is tiny: a second shape's compile costs more than the compute it would save, so max_shapes=2
    # plans one shape too (crossjax.packing.train_compile_cost).
    assert efficiency[2] == efficiency[1]


def test_train_step_computes_its_gradient_into_the_donated_buffer(tiny_dir):
    """fit's step returns its gradient in the memory of the buffer it was given (donated, never read), so XLA
    allocates no parameter-sized temporary each step; the gradient it returns is jax.grad's of the loss."""
    from crossjax import packing
    from crossjax.parallel import put_global

    ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT, max_length=32)
    model, plan = ce.model, ce.mesh_plan
    params = nnx.state(model, nnx.Param)
    spec = training.OptimizerSpec.create("constantlr", max_grad_norm=1.0)
    numbers = training.optimizer_hparams(1e-3, 0, 10, 0.01, max_grad_norm=1.0)
    mask = training.decay_mask(model, params)
    state, shardings = training.init_train_state(model, training.optimizer_for(spec, mask, numbers), plan)
    graphdef = training.graphdef_with_dtype(model, jnp.float32, train=True)
    loss, activation = losses.binary_cross_entropy_with_logits, losses.identity
    training.clear_program_cache()
    program, _ = training.train_program(graphdef, spec, mask, loss, activation, 1, shardings, plan)
    rng = np.random.default_rng(0)
    rows, length = 2 * plan.data_shards, 16
    labels = rng.random(rows, dtype=np.float32)
    packed = packing.one_pair_per_row(
        rng.integers(1000, 2000, size=(rows, length)), np.zeros((rows, length), np.int32), labels, plan.data_shards
    )
    batch = training.batch_to_global(packed, plan)
    hparams = put_global(numbers, plan.replicated)
    healthy = put_global(np.array(True), plan.replicated)

    def mean_loss(p):
        logits = training.packed_logits(nnx.merge(graphdef, p, state.rest, copy=True), batch)[:, 0]
        order = packed.indices.reshape(-1)
        return jnp.mean(optax_bce(logits[order >= 0], labels[order[order >= 0]]))

    expected = jax.jit(jax.grad(mean_loss))(state.params)  # one program (eager: one per operation, ~15 s)
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    buffer = training.new_gradient_buffer(state.params, shardings.params)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(buffer)]
    compiled = program.fn.lower(state, batch, healthy, hparams, buffer).compile()
    _, metrics, gradients = program.fn(state, batch, healthy, hparams, buffer)

    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(buffer))
    # Every leaf is computed in place, from the first step on: the buffer was made on the device (one put there
    # from numpy may share numpy's memory, cannot be donated, and was copied in about a third of the runs).
    in_place = [leaf.nbytes for leaf in jax.tree.leaves(gradients) if leaf.unsafe_buffer_pointer() in pointers]
    param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    assert sum(in_place) == param_bytes
    for got, want in zip(jax.tree.leaves(gradients), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    norm = np.sqrt(sum(float(np.sum(np.square(np.asarray(g, np.float64)))) for g in jax.tree.leaves(expected)))
    assert float(metrics["grad_norm"]) == pytest.approx(norm, rel=1e-5)
    # The same step without the buffer holds the gradient among its temporaries.
    plain = jax.jit(training.make_train_step(graphdef, training.optimizer_for(spec, mask, numbers), loss, activation))
    plain_temp = plain.lower(abstract_state, batch, healthy, hparams).compile().memory_analysis().temp_size_in_bytes
    assert plain_temp - compiled.memory_analysis().temp_size_in_bytes >= 0.9 * param_bytes


def optax_bce(logits, labels):
    """Binary cross-entropy with logits, written out (the oracle for the train step's loss)."""
    return jnp.maximum(logits, 0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits)))


# ----------------------------------------------------------------------------- 4. gradient accumulation
def test_gradient_accumulation_matches_large_batch(tiny_dir):
    examples = make_examples(30, seed=4, max_words=20)  # 30 = 3 full steps of 8 + a partial one
    # eps 1e-6 rather than 1e-8: the attention key biases have an exactly-zero true gradient, and Adam with a
    # tiny eps turns their float32 rounding noise (different for the two summation orders) into lr-sized steps.
    settings = dict(scheduler="constantlr", optimizer_params={"lr": 1e-3, "eps": 1e-6}, epochs=1, **QUIET)
    big = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    big.fit(DataLoader(examples, batch_size=8), **settings)
    accumulated = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    summary = accumulated.fit(DataLoader(examples, batch_size=4), gradient_accumulation_steps=2, **settings)
    assert summary["global_step"] == 4
    np.testing.assert_allclose(losses_of(accumulated), losses_of(big), rtol=1e-5, atol=1e-6)
    assert abs(losses_of(big)[-1] - losses_of(big)[0]) > 1e-4
    for a, b in zip(params_with_a_gradient(accumulated), params_with_a_gradient(big), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_drop_last_with_accumulation_drops_only_the_loaders_partial_batch(tiny_dir):
    """A DataLoader's drop_last drops its last partial batch; a last optimizer step of fewer accumulated batches
    keeps its full ones (Hugging Face's rule). Oracle: the same run over the loader's full batches alone."""
    examples = make_examples(14, seed=6, max_words=10)  # batches of 4: 4, 4, 4 and a partial 2
    settings = dict(epochs=2, gradient_accumulation_steps=2, **TRAIN)
    dropped = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    summary = dropped.fit(DataLoader(examples, batch_size=4, drop_last=True), **settings)
    assert summary["global_step"] == 4  # steps of 8 and 4 rows, twice
    full = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    full.fit(DataLoader(examples[:12], batch_size=4), **settings)
    np.testing.assert_array_equal(losses_of(dropped), losses_of(full))
    for a, b in zip(dropped.model.hf_state_dict().values(), full.model.hf_state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b)
    # fewer rows than one step but whole batches of the loader: one step of them, not an error
    few = CrossEncoder(tiny_dir).fit(DataLoader(examples[:9], batch_size=2, drop_last=True), epochs=1,
                                     gradient_accumulation_steps=6, **TRAIN)
    assert few["global_step"] == 1
    with pytest.raises(ValueError, match="no full batch of 4 examples with drop_last=True: 3 examples only"):
        CrossEncoder(tiny_dir).fit(DataLoader(examples[:3], batch_size=4, drop_last=True), epochs=1,
                                   gradient_accumulation_steps=2, **TRAIN)


def test_gradient_accumulation_exact_for_class_weighted_cross_entropy(tiny_dirs):
    """torch's CrossEntropyLoss(weight=w) is sum(w[y] * nll) / sum(w[y]) over the whole batch: 4 accumulated
    micro-batches of 4 must give the parameters of one batch of 16, and both those of sentence-transformers'
    old_fit on the batch of 16 (the oracle). Weighting each micro-batch's loss by its row count does not.

    One Adam step moves each parameter by ~lr * g / (|g| + eps), so where the true gradient is ~eps or below
    (the attention key biases: exactly zero) float32 round-off alone moves it by up to lr: those entries,
    found from the oracle's own gradient, are left out (eps is not loosened to hide them).
    """
    import torch
    from sentence_transformers import CrossEncoder as TorchCrossEncoder
    from sentence_transformers import InputExample as TorchInputExample

    examples = make_examples(16, seed=11, max_words=12)
    for ex, label in zip(examples, [0, 0, 0, 1] * 2 + [0, 2, 1, 2] + [1, 0, 0, 0], strict=True):
        ex.label = label  # micro-batches (rows j, j+4, j+8, j+12) with very different class-weight sums
    weight = torch.tensor([0.2, 1.0, 5.0])
    lr, eps = 1e-4, 1e-8
    settings = dict(scheduler="constantlr", optimizer_params={"lr": lr, "eps": eps}, epochs=1, **QUIET)
    no_dropout = {**NO_DROPOUT, "classifier_dropout": 0.0}

    def ours(batch_size: int, k: int) -> dict[str, np.ndarray]:
        ce = CrossEncoder(tiny_dirs[3], config_kwargs=no_dropout)
        loader = DataLoader(examples, batch_size=batch_size, shuffle=False)
        loss = torch.nn.CrossEntropyLoss(weight=weight)
        assert ce.fit(loader, loss_fct=loss, gradient_accumulation_steps=k, **settings)["global_step"] == 1
        return ce.model.hf_state_dict()

    big, accumulated = ours(16, 1), ours(4, 4)

    class RecordingAdamW(torch.optim.AdamW):
        """torch's AdamW that keeps the (clipped) gradient of its step: the oracle's gradient."""

        def step(self, closure=None):
            self.grads = {id(p): p.grad.detach().clone() for g in self.param_groups for p in g["params"]}
            RecordingAdamW.last = self
            return super().step(closure)

    theirs = TorchCrossEncoder(str(tiny_dirs[3]), device="cpu", config_kwargs=no_dropout)
    torch_examples = [TorchInputExample(texts=ex.texts, label=ex.label) for ex in examples]
    loader = torch.utils.data.DataLoader(torch_examples, batch_size=16, shuffle=False)
    theirs.old_fit(
        loader, loss_fct=torch.nn.CrossEntropyLoss(weight=weight), optimizer_class=RecordingAdamW, **settings
    )
    grads = {n: RecordingAdamW.last.grads[id(p)].numpy() for n, p in theirs.model.named_parameters()}
    reference = {n: p.detach().numpy() for n, p in theirs.model.named_parameters()}
    assert set(reference) == set(big) == set(accumulated)
    start = hf_state(tiny_dirs[3])
    # Exactly-zero gradients (unused embedding rows) stay in: no update on either side.
    conditioned = {n: (np.abs(g) >= 100 * eps) | (g == 0) for n, g in grads.items()}
    left_out = sorted(n for n, c in conditioned.items() if not c.all())
    nonzero = sum(int((g != 0).sum()) for g in grads.values())
    assert sum(int((~c).sum()) for c in conditioned.values()) <= 0.01 * nonzero  # 69 of 16493 measured
    assert {n for n in reference if n.endswith("attention.self.key.bias")} <= set(left_out)

    def worst(a: dict, b: dict) -> float:
        return max(float(np.max(np.abs(a[n] - b[n])[conditioned[n]], initial=0.0)) for n in reference)

    diffs = {
        "accumulated vs batch 16": worst(accumulated, big),
        "batch 16 vs old_fit": worst(big, reference),
        "accumulated vs old_fit": worst(accumulated, reference),
    }
    print({k: f"{v:.3e}" for k, v in diffs.items()}, f"(entries with |g| < 100 eps left out of {left_out})")
    assert worst(big, start) > 0.5 * lr  # the step moved the parameters
    assert all(v <= 1e-6 for v in diffs.values()), diffs


# --------------------------------------------------------------------------------------- 5. seeds
def test_seed_makes_runs_reproducible(tiny_dir):
    examples = make_examples(24, seed=5)

    def run(seed: int, shuffle: bool) -> list[float]:
        ce = CrossEncoder(tiny_dir)  # dropout on (the checkpoint's 0.1)
        loader = DataLoader(examples, batch_size=8, shuffle=shuffle)
        ce.fit(loader, seed=seed, **TRAIN)
        return losses_of(ce)

    first = run(1, shuffle=True)
    assert run(1, shuffle=True) == first
    assert run(2, shuffle=True) != first
    # Without shuffling only dropout depends on the seed; it must still change the losses.
    assert run(1, shuffle=False) != run(2, shuffle=False)


# ------------------------------------------------------------------------------------------ 6. evaluator
class RecordingEvaluator(CECorrelationEvaluator):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[int, int]] = []
        self.returned: list[dict] = []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        result = super().__call__(model, output_path=output_path, epoch=epoch, steps=steps)
        self.calls.append((epoch, steps))
        self.returned.append(result)
        return result


def test_evaluator_schedule_callback_and_best_model(tiny_dir, tmp_path):
    out = tmp_path / "out"
    dev = make_examples(8, seed=6)
    probe = [tuple(e.texts) for e in make_examples(5, seed=7)]
    evaluator = RecordingEvaluator([e.texts for e in dev], [e.label for e in dev], name="dev")
    ce = CrossEncoder(tiny_dir)
    seen = []

    def callback(score, epoch, steps):
        seen.append((score, epoch, steps, ce.predict(probe)))

    summary = ce.fit(
        DataLoader(make_examples(40, seed=8), batch_size=8),
        evaluator=evaluator,
        epochs=2,
        evaluation_steps=2,
        output_path=str(out),
        callback=callback,
        **TRAIN,
    )
    # 5 batches per epoch: after batches 2 and 4 of each epoch, and at each epoch's end (steps=-1).
    expected_calls = [(0, 2), (0, 4), (0, -1), (1, 2), (1, 4), (1, -1)]
    assert evaluator.calls == expected_calls
    assert [(e, s) for _, e, s, _ in seen] == expected_calls
    # the callback gets the primary score, as sentence-transformers 6.2's fit passes it (its old_fit: the dict)
    assert [score for score, *_ in seen] == [r["dev_spearman"] for r in evaluator.returned]

    # sentence-transformers' CSV file name and one row per evaluation.
    with open(out / "CrossEncoderCorrelationEvaluator_dev_results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["epoch", "steps", "Pearson_Correlation", "Spearman_Correlation"]
    assert [(int(r[0]), int(r[1])) for r in rows[1:]] == expected_calls

    # The saved model is the first evaluation with the highest primary metric (strictly better wins).
    scores = [r["dev_spearman"] for r in evaluator.returned]
    best = int(np.argmax([-math.inf if math.isnan(s) else s for s in scores]))
    assert summary["best_score"] == pytest.approx(scores[best])
    np.testing.assert_allclose(CrossEncoder(out).predict(probe), seen[best][3], rtol=0, atol=1e-6)


class RisingEvaluator:
    """A better score at every call, so every evaluation saves the best model; writes a CSV row like ST's."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        self.calls += 1
        with open(Path(output_path) / "rising.csv", "a") as f:
            f.write(f"{epoch},{steps},{self.calls}\n")
        return float(self.calls)


def test_best_model_saves_leave_checkpoints_nested_in_output_path_alone(tiny_dir, tmp_path):
    """fit(output_path=out, checkpoint_path=out/ckpt): orbax writes checkpoints asynchronously into out/ckpt
    while each evaluation saves the best model to out. The save must not move (rename, copy back) out or
    out/ckpt, and the checkpoints must restore."""
    import os

    out = tmp_path / "out"
    ckpt = out / "ckpt"
    examples = make_examples(24, seed=21)
    probe = [tuple(e.texts) for e in make_examples(5, seed=22)]
    evaluator = RisingEvaluator()
    ce = CrossEncoder(tiny_dir)
    identities = []

    def callback(score, epoch, steps):  # before this evaluation's save, after the previous one's
        identities.append((os.stat(out).st_ino, os.stat(ckpt).st_ino))

    kwargs = dict(checkpoint_path=str(ckpt), checkpoint_save_steps=1, checkpoint_save_total_limit=3, epochs=2)
    summary = ce.fit(
        DataLoader(examples, batch_size=8),
        evaluator=evaluator,
        evaluation_steps=1,
        output_path=str(out),
        callback=callback,
        **kwargs,
        **TRAIN,
    )
    assert summary["global_step"] == 6 and evaluator.calls == 8  # 3 steps + the epoch's end, twice
    identities.append((os.stat(out).st_ino, os.stat(ckpt).st_ino))
    assert len(set(identities)) == 1, "a save moved the output directory or the checkpoint folder in it"
    assert len((out / "rising.csv").read_text().splitlines()) == 8
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["4", "5", "6"]
    # The best (last) model was saved, and the last checkpoint restores the same parameters.
    np.testing.assert_allclose(CrossEncoder(out).predict(probe), ce.predict(probe), rtol=0, atol=1e-6)
    resumed = CrossEncoder(tiny_dir)
    summary = resumed.fit(DataLoader(examples, batch_size=8), **kwargs, **TRAIN)
    assert summary["resumed_from_step"] == 6 and summary["global_step"] == 6
    for a, b in zip(params_of(resumed), params_of(ce), strict=True):
        np.testing.assert_array_equal(a, b)


def test_without_evaluator_final_model_saved_and_reloads(tiny_dir, tmp_path):
    out = tmp_path / "final"
    ce = CrossEncoder(tiny_dir)
    ce.fit(DataLoader(make_examples(16), batch_size=8), output_path=str(out), **TRAIN)
    probe = [tuple(e.texts) for e in make_examples(6, seed=11)]
    reloaded = CrossEncoder(out)
    np.testing.assert_allclose(reloaded.predict(probe), ce.predict(probe), rtol=0, atol=1e-6)
    assert not np.allclose(CrossEncoder(tiny_dir).predict(probe), ce.predict(probe), rtol=0, atol=1e-6)
    # save_best_model=False saves no model, as in sentence-transformers
    loader = DataLoader(make_examples(16), batch_size=8)
    ce.fit(loader, output_path=str(tmp_path / "none"), save_best_model=False, warmup_steps=2.0, **TRAIN)
    assert not (tmp_path / "none" / "config.json").exists()


# --------------------------------------------------------------------------------------- 7. loader kinds
def test_dataloader_kinds(tiny_dir):
    import datasets
    import torch
    from sentence_transformers import InputExample as STInputExample

    examples = make_examples(32, seed=12, max_words=20)
    st_examples = [STInputExample(texts=list(e.texts), label=e.label) for e in examples]
    loaders = {
        "crossjax": DataLoader(examples, batch_size=16, shuffle=False),
        "torch": torch.utils.data.DataLoader(st_examples, batch_size=16, shuffle=False),
        "list of lists": [examples[:16], examples[16:]],
    }
    results = {}
    for kind, loader in loaders.items():
        ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
        ce.fit(loader, **TRAIN)
        results[kind] = losses_of(ce)
    assert len(results["crossjax"]) == 2
    assert results["torch"] == results["crossjax"]
    assert results["list of lists"] == results["crossjax"]

    ds = datasets.Dataset.from_dict(
        {
            "sentence1": [e.texts[0] for e in examples],
            "sentence2": [e.texts[1] for e in examples],
            "label": [e.label for e in examples],
        }
    )
    ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    summary = ce.fit(ds, **TRAIN)
    assert summary["global_step"] == 2  # 32 rows, batch size 16 by default
    assert np.isfinite(losses_of(ce)).all()
    assert any(not np.array_equal(a, b) for a, b in zip(params_of(ce), params_of(CrossEncoder(tiny_dir)), strict=True))


# ---------------------------------------------------------------------------------------------- 8. AMP
def test_use_amp_trains_in_bfloat16_with_float32_master_weights(tiny_dir):
    examples = make_examples(32, seed=13, max_words=20)
    full = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    full.fit(DataLoader(examples, batch_size=16), **TRAIN)
    amp = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    before = params_of(amp)
    amp.fit(DataLoader(examples, batch_size=16), use_amp=True, **TRAIN)
    assert np.isfinite(losses_of(amp)).all() and len(losses_of(amp)) == 2
    assert all(p.dtype == np.float32 for p in params_of(amp))
    assert any(not np.array_equal(a, b) for a, b in zip(before, params_of(amp), strict=True))
    assert losses_of(amp)[0] == pytest.approx(losses_of(full)[0], rel=2e-2)
    assert losses_of(amp)[0] != losses_of(full)[0]  # really computed in bfloat16
    auto = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)  # compute_dtype="auto" leaves the choice to use_amp
    auto.fit(DataLoader(examples, batch_size=16), use_amp=True, compute_dtype="auto", **TRAIN)
    assert losses_of(auto) == losses_of(amp)


# ------------------------------------------------------------------------------------------- 9. predict
@pytest.fixture(scope="module")
def tiny_ce(tiny_dir) -> CrossEncoder:
    return CrossEncoder(tiny_dir)


def test_predict_single_pair_and_input_order(tiny_ce, tiny_dir):
    rng = np.random.default_rng(14)
    pairs = [(sentence(rng, int(n)), sentence(rng, 2)) for n in rng.integers(1, 40, size=10)]
    single = tiny_ce.predict(pairs[0])
    assert np.ndim(single) == 0
    scores = tiny_ce.predict(pairs, batch_size=4)
    assert scores.shape == (10,)
    alone = np.array([tiny_ce.predict(p, batch_size=1) for p in pairs])
    np.testing.assert_allclose(scores, alone, rtol=0, atol=1e-5)
    assert np.std(scores) > 1e-3
    reference = 1 / (1 + np.exp(-hf_logits(tiny_dir, pairs)[:, 0]))  # default Sigmoid for one label
    np.testing.assert_allclose(scores, reference, rtol=0, atol=1e-5)


def test_predict_apply_softmax_three_labels(tiny_dirs):
    ce = CrossEncoder(tiny_dirs[3])
    pairs = [tuple(e.texts) for e in make_examples(5, seed=15)]
    probs = ce.predict(pairs, apply_softmax=True)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    logits = hf_logits(tiny_dirs[3], pairs)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_rank(tiny_ce):
    query = "a man plays the guitar"
    documents = [tuple(e.texts)[0] for e in make_examples(7, seed=16)]
    scores = tiny_ce.predict([(query, d) for d in documents])
    ranked = tiny_ce.rank(query, documents, return_documents=True)
    assert [r["corpus_id"] for r in ranked] == list(np.argsort(-scores, kind="stable"))
    for r in ranked:
        assert r["text"] == documents[r["corpus_id"]]
        assert r["score"] == pytest.approx(float(scores[r["corpus_id"]]), abs=1e-6)
    top = tiny_ce.rank(query, documents, top_k=3)
    assert [r["corpus_id"] for r in top] == [r["corpus_id"] for r in ranked[:3]]
    assert all("text" not in r for r in top)


def test_rank_calls_of_other_sizes_share_compiled_shapes(tiny_dir):
    """One query's candidates after another (other counts, other lengths): packed shapes come from a grid and
    compiled ones are reused, so 12 calls compile a few programs instead of one each, with HF's scores."""
    ce = CrossEncoder(tiny_dir)
    rng = np.random.default_rng(18)
    calls = []
    for n in rng.integers(5, 41, size=12):
        query = sentence(rng, int(rng.integers(2, 8)))
        calls.append([(query, sentence(rng, int(k))) for k in rng.integers(1, 30, size=n)])
    before = ce.compilations["predict"]
    scores = [ce.predict(pairs) for pairs in calls]
    assert ce.compilations["predict"] - before <= 5, ce.compilations
    for pairs, got in zip(calls, scores, strict=True):
        expected = 1 / (1 + np.exp(-hf_logits(tiny_dir, pairs)[:, 0]))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_fits_of_ever_other_data_keep_a_bounded_number_of_compiled_train_shapes(tiny_dir, monkeypatch):
    """A notebook or server that fine-tunes on other data again and again: past the cap, a fit's train step
    forgets its compiled shapes before its first step, so the executables JAX holds stay bounded, and a fit after
    the forgetting trains exactly as one that found its shapes compiled."""
    from crossjax import training

    monkeypatch.setattr(training, "MAX_TRAIN_SHAPES", 2)
    settings = dict(epochs=1, **TRAIN)
    ce = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    program, forgotten = None, 0
    runs = [(16, 3, 4), (24, 20, 8), (8, 40, 2), (30, 6, 16), (16, 3, 4)]  # examples, words, batch size
    for i, (n, words, batch_size) in enumerate(runs):
        before = set(program.counter.shapes) if program is not None else set()
        ce.fit(DataLoader(make_examples(n, seed=i, max_words=words), batch_size=batch_size), **settings)
        program = training._programs["train"][-1][1]  # the step this fit used (most recently used)
        shapes = set(program.counter.shapes)
        forgotten += bool(before) and not before <= shapes
        assert program.fn.jitted._cache_size() == len(shapes) <= 2 - 1 + 3  # under the cap + one fit's shapes
    assert forgotten >= 1
    # the last fit (its shape compiled again after the forgetting) equals the same fit on a step that kept it
    monkeypatch.setattr(training, "MAX_TRAIN_SHAPES", 100)
    again = CrossEncoder(tiny_dir, config_kwargs=NO_DROPOUT)
    for i, (n, words, batch_size) in enumerate(runs):
        again.fit(DataLoader(make_examples(n, seed=i, max_words=words), batch_size=batch_size), **settings)
    for a, b in zip(ce.model.hf_state_dict().values(), again.model.hf_state_dict().values(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_predict_keeps_at_most_the_cap_of_compiled_shapes(tiny_dir, monkeypatch):
    """A server's calls of ever other sizes and lengths: past the cap, calls use the compiled shapes that hold
    their pairs, or the program forgets its shapes; the executables JAX holds never pass the cap, and scores
    stay HF's."""
    import crossjax.cross_encoder as cross_encoder_module

    monkeypatch.setattr(cross_encoder_module, "MAX_PREDICT_SHAPES", 2)
    ce = CrossEncoder(tiny_dir)
    program = ce._predict_program(ce.compute_dtype)
    program.fn.clear_cache()  # this program's shapes only (the process's other programs stay compiled)
    program.counter.forget_shapes()
    rng = np.random.default_rng(41)
    forgotten = 0
    for n, words in [(3, 4), (40, 6), (7, 30), (300, 3), (5, 4), (2, 45), (40, 6)]:
        pairs = [(sentence(rng, words), sentence(rng, int(k))) for k in rng.integers(1, words + 2, size=n)]
        before = len(set(program.counter.shapes))
        got = ce.predict(pairs)
        forgotten += len(set(program.counter.shapes)) < before
        assert len(set(program.counter.shapes)) <= 2 and program.fn.jitted._cache_size() <= 2
        expected = 1 / (1 + np.exp(-hf_logits(tiny_dir, pairs)[:, 0]))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert forgotten >= 1  # the calls above do not fit two shapes


# ------------------------------------------------------------------------------- 10. construction rules
def test_num_labels_and_default_activation(tiny_dirs, minilm_dir):
    pairs = [tuple(e.texts) for e in make_examples(4, seed=17)]
    three = CrossEncoder(tiny_dirs[3])
    assert three.num_labels == 3
    assert three.activation_fn is losses.identity
    np.testing.assert_allclose(three.predict(pairs), hf_logits(tiny_dirs[3], pairs), atol=1e-5)

    one = CrossEncoder(tiny_dirs[1])
    assert one.num_labels == 1 and one.activation_fn is losses.sigmoid
    scores = one.predict(pairs)
    assert ((scores >= 0) & (scores <= 1)).all()

    base = CrossEncoder(minilm_dir)  # a BertModel checkpoint: a fresh one-label head
    assert base.config.architectures == ["BertModel"]
    assert base.num_labels == 1 and base.activation_fn is losses.sigmoid


def test_saved_activation_is_read_back(tiny_dir, tmp_path):
    from sentence_transformers import CrossEncoder as TorchCrossEncoder

    pairs = [tuple(e.texts) for e in make_examples(4, seed=18)]
    CrossEncoder(tiny_dir, activation_fn="tanh").save(tmp_path / "tanh")
    reloaded = CrossEncoder(tmp_path / "tanh")
    assert reloaded.activation_fn is losses.tanh
    scores = reloaded.predict(pairs)
    np.testing.assert_allclose(scores, np.tanh(hf_logits(tiny_dir, pairs)[:, 0]), atol=1e-5)
    theirs = TorchCrossEncoder(str(tmp_path / "tanh"), device="cpu")
    assert type(theirs.activation_fn).__name__ == "Tanh"
    np.testing.assert_allclose(theirs.predict(pairs), scores, atol=1e-5)


def test_a_nan_evaluation_is_never_the_best_model(tiny_dir, tmp_path):
    """A correlation of constant scores is NaN: old_fit never saves it (NaN > best is False) and keeps looking;
    crossjax does the same even when the NaN comes first."""
    probe = [tuple(e.texts) for e in make_examples(5, seed=7)]
    evaluator = FallingLossEvaluator(probe)
    evaluator.greater_is_better, evaluator.scores = True, [float("nan"), 2.0, 1.0]
    summary = CrossEncoder(tiny_dir).fit(
        DataLoader(make_examples(16, seed=8), batch_size=8), evaluator=evaluator, epochs=3,
        output_path=str(tmp_path / "out"), **TRAIN,
    )  # fmt: skip
    assert summary["best_score"] == 2.0
    np.testing.assert_allclose(CrossEncoder(tmp_path / "out").predict(probe), evaluator.predictions[1], atol=1e-6)


def test_an_output_path_under_home_is_one_folder_for_the_model_and_the_logs(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    CrossEncoder(tiny_dir).fit(DataLoader(make_examples(8), batch_size=4), output_path="~/out", **TRAIN)
    out = tmp_path / "home" / "out"
    assert (out / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    assert not (tmp_path / "~").exists()
    assert "training_curves.png" in (out / "README.md").read_text()  # the card was finished at the run's end
