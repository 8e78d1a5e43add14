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
