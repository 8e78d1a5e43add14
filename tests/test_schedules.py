"""The optax schedules must give the learning rates PyTorch's LambdaLR gives in sentence-transformers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossjax.schedules import SCHEDULER_NAMES, make_schedule, schedule_fn

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

LR = 2e-5
COMBOS = [(0, 10), (3, 10), (10, 10), (15, 10), (7, 100), (0, 1), (1, 0), (0, 0), (100, 1000), (37, 413)]


def _torch_lrs(name: str, warmup: int, total: int, n_steps: int) -> np.ndarray:
    """The lr PyTorch uses at each optimizer step, built exactly as ``SentenceTransformer._get_scheduler``."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=LR)
    tf = transformers
    builders = {
        "constantlr": lambda: tf.get_constant_schedule(opt),
        "warmupconstant": lambda: tf.get_constant_schedule_with_warmup(opt, num_warmup_steps=warmup),
        "warmuplinear": lambda: tf.get_linear_schedule_with_warmup(
            opt, num_warmup_steps=warmup, num_training_steps=total
        ),
        "warmupcosine": lambda: tf.get_cosine_schedule_with_warmup(
            opt, num_warmup_steps=warmup, num_training_steps=total
        ),
        "warmupcosinewithhardrestarts": lambda: tf.get_cosine_with_hard_restarts_schedule_with_warmup(
            opt, num_warmup_steps=warmup, num_training_steps=total
        ),
    }
    sched = builders[name]()
    lrs = []
    for _ in range(n_steps):
        lrs.append(opt.param_groups[0]["lr"])  # the lr this optimizer step uses
        opt.step()
        sched.step()
    return np.asarray(lrs, dtype=np.float64)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
@pytest.mark.parametrize("warmup,total", COMBOS)
def test_matches_torch(name: str, warmup: int, total: int) -> None:
    n = total + 3
    expected = _torch_lrs(name, warmup, total, n)
    schedule = make_schedule(name, LR, warmup, total)
    got_vector = np.asarray(jax.jit(schedule)(jnp.arange(n)), dtype=np.float64)
    np.testing.assert_allclose(got_vector, expected, rtol=1e-6, atol=LR * 1e-12)
    # Scalar Python ints (what optax passes outside jit) give the same values.
    few = min(n, 16)
    got_scalar = np.asarray([float(schedule(k)) for k in range(few)], dtype=np.float64)
    np.testing.assert_allclose(got_scalar, expected[:few], rtol=1e-6, atol=LR * 1e-12)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_traced_numbers_match_torch_with_one_trace(name: str) -> None:
    """The form the train step uses: learning rate, warm-up and total steps are traced arguments, so one
    compiled function serves every run; its values are make_schedule's, bit for bit, as evaluated eagerly
    (what fit's history reports). Jitting make_schedule itself can differ by an ulp: XLA folds its constants
    (pi * 0.5 / total into one factor, say)."""
    traces = []

    def lrs(steps, lr, warmup, total):
        traces.append(1)
        return schedule_fn(name)(steps, lr, warmup, total)

    jitted = jax.jit(lrs)
    for warmup, total in COMBOS:
        n = total + 3
        steps = jnp.arange(16, dtype=jnp.int32)
        steps = steps.at[:].set(jnp.minimum(steps, n - 1))  # one shape for every combination
        got = np.asarray(jitted(steps, np.float32(LR), np.int32(warmup), np.int32(total)), dtype=np.float64)
        expected = _torch_lrs(name, warmup, total, n)[np.asarray(steps)]
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=LR * 1e-12, err_msg=f"{warmup}, {total}")
        eager = np.asarray(make_schedule(name, LR, warmup, total)(steps), dtype=np.float64)
        np.testing.assert_array_equal(got, eager)
    assert len(traces) == 1


def test_large_step_counts_match_torch() -> None:
    warmup, total = 5000, 200_000
    steps = np.array([0, 1, 4999, 5000, 5001, 100_000, 199_990, 199_999, 200_000, 200_001])
    for name in SCHEDULER_NAMES:
        schedule = make_schedule(name, LR, warmup, total)
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=LR)
        from sentence_transformers import SentenceTransformer

        sched = SentenceTransformer._get_scheduler(opt, name, warmup_steps=warmup, t_total=total)
        lam = sched.lr_lambdas[0]
        expected = np.array([LR * lam(int(k)) for k in steps])
        got = np.asarray(schedule(jnp.asarray(steps)), dtype=np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=LR * 1e-12, err_msg=name)


def test_case_insensitive_and_jit_with_optax_count() -> None:
    import optax

    schedule = make_schedule("WarmupLinear", 1.0, 2, 4)
    opt = optax.sgd(schedule)
    params = jnp.zeros(())
    state = opt.init(params)
    seen = []

    @jax.jit
    def step(state):
        updates, state = opt.update(jnp.ones(()), state, params)
        return updates, state

    for _ in range(5):
        updates, state = step(state)
        seen.append(-float(updates))
    np.testing.assert_allclose(seen, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-7)


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        make_schedule("warmuppolynomial", LR, 0, 10)
    for name in SCHEDULER_NAMES:
        assert name in str(err.value)


# Hugging Face Trainer's lr_scheduler_type values beyond fit's five, with lr_scheduler_kwargs, by crossjax key.
TRAINER_CASES = [
    ("cosine", "warmupcosine", {"num_cycles": 1.5}),
    ("cosine_with_restarts", "warmupcosinewithhardrestarts", {"num_cycles": 3}),
    ("cosine_with_restarts", "warmupcosinewithhardrestarts", {"num_cycles": 2.5}),
    ("polynomial", "polynomial", {}),
    ("polynomial", "polynomial", {"lr_end": 1e-6, "power": 2.0}),
    ("polynomial", "polynomial", {"power": 0.5}),
    ("inverse_sqrt", "inverse_sqrt", {}),
    ("inverse_sqrt", "inverse_sqrt", {"timescale": 7}),
    ("cosine_with_min_lr", "cosine_with_min_lr", {"min_lr": 1e-6}),
    ("cosine_with_min_lr", "cosine_with_min_lr", {"min_lr_rate": 0.1, "num_cycles": 0.25}),
    ("cosine_warmup_with_min_lr", "cosine_warmup_with_min_lr", {"min_lr_rate": 0.05}),
    ("cosine_warmup_with_min_lr", "cosine_warmup_with_min_lr", {"min_lr": 2e-6, "warmup_lr_rate": 0.2}),
    ("warmup_stable_decay", "warmup_stable_decay", {"num_decay_steps": 4}),
    ("warmup_stable_decay", "warmup_stable_decay", {"num_decay_steps": 5, "min_lr_ratio": 0.1, "decay_type": "linear"}),
    (
        "warmup_stable_decay",
        "warmup_stable_decay",
        {"num_decay_steps": 6, "num_stable_steps": 2, "warmup_type": "1-sqrt", "decay_type": "1-sqrt"},
    ),
    ("warmup_stable_decay", "warmup_stable_decay", {"num_decay_steps": 3, "warmup_type": "cosine"}),
]
TRAINER_COMBOS = [(0, 12), (3, 12), (4, 40), (12, 12), (1, 2), (37, 413)]


@pytest.mark.parametrize("hf_name,key,kwargs", TRAINER_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(TRAINER_CASES)])
def test_trainer_schedules_match_transformers_get_scheduler(hf_name: str, key: str, kwargs: dict) -> None:
    """Every schedule ``lr_scheduler_type`` names, with its ``lr_scheduler_kwargs``, gives the learning rates of
    ``transformers.get_scheduler(..., scheduler_specific_kwargs=kwargs)`` at each optimizer step (traced numbers,
    one trace for every run length)."""
    from crossjax.schedules import scheduler_options

    options = scheduler_options(key, kwargs, learning_rate=LR)
    jitted = jax.jit(schedule_fn(key, options))
    for warmup, total in TRAINER_COMBOS:
        n = total + 3
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=LR)
        sched = transformers.get_scheduler(
            hf_name, opt, num_warmup_steps=warmup, num_training_steps=total, scheduler_specific_kwargs=dict(kwargs)
        )
        expected = []
        try:
            for _ in range(n):
                expected.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
        except ZeroDivisionError:  # transformers' polynomial decay over zero steps (total == warmup)
            n = len(expected)
        steps = np.arange(n, dtype=np.int32)
        got = np.asarray(jitted(steps, np.float32(LR), np.int32(warmup), np.int32(total)), dtype=np.float64)
        # float32 against float64: a relative 2e-6, or 2e-7 of the peak where a cosine of several cycles dips to 0
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=LR * 2e-7, err_msg=f"{hf_name} {warmup}, {total}")
        eager = np.asarray(make_schedule(key, LR, warmup, total, options)(steps), dtype=np.float64)
        np.testing.assert_allclose(eager, got, rtol=1e-6, atol=LR * 2e-7)


@pytest.mark.parametrize(
    "key,kwargs,error,match",
    [
        ("warmuplinear", {"num_cycles": 2}, TypeError, "num_cycles"),
        ("polynomial", {"lr_end": 1.0}, ValueError, "lr_end"),
        ("cosine_with_min_lr", {}, ValueError, "min_lr"),
        ("cosine_with_min_lr", {"min_lr": 1e-6, "min_lr_rate": 0.1}, ValueError, "Only one"),
        ("warmup_stable_decay", {"min_lr_ratio": 0.1}, ValueError, "num_decay_steps"),
        ("warmup_stable_decay", {"num_decay_steps": 3, "decay_type": "exp"}, ValueError, "decay type"),
        ("inverse_sqrt", {"timescale": 2.5}, TypeError, "timescale"),
        ("warmupcosine", {"num_cycles": "two"}, TypeError, "num_cycles"),
        ("inverse_sqrt", {"timescale": 0}, ValueError, "timescale"),  # transformers: a division by zero
    ],
)
def test_trainer_schedule_options_are_checked_as_transformers_does(key, kwargs, error, match) -> None:
    """What transformers refuses (an option the schedule does not take, a missing required one) is refused
    before training, naming the option."""
    from crossjax.schedules import scheduler_options

    with pytest.raises(error, match=match):
        scheduler_options(key, kwargs, learning_rate=LR)


def test_options_that_would_make_nan_learning_rates_are_refused() -> None:
    from crossjax.schedules import scheduler_options

    with pytest.raises(ValueError, match="min_lr"):
        scheduler_options("cosine_with_min_lr", {"min_lr": 1e-6}, learning_rate=0.0)
    # arguments still being set (Hugging Face's set_lr_scheduler, then lr_scheduler_kwargs) pass until training
    assert scheduler_options("warmup_stable_decay", {}, complete=False) == ()


def test_constant_schedules_ignore_options_as_transformers_does(caplog) -> None:
    from crossjax.schedules import scheduler_options

    with caplog.at_level("WARNING", logger="crossjax"):
        assert scheduler_options("constantlr", {"num_cycles": 3}) == ()
    assert "ignored" in caplog.text
