"""Learning-rate schedules named like sentence-transformers' ``fit(scheduler=...)`` argument.

Each schedule reproduces, step for step, the ``LambdaLR`` that sentence-transformers builds with
``transformers.get_*_schedule*`` (see ``SentenceTransformer._get_scheduler``), so a run ported from
``CrossEncoder.fit`` sees the same learning rates. PyTorch uses ``lr * lr_lambda(k)`` at optimizer step
``k`` (0-based) and optax calls the schedule with the optimizer's update count, which also starts at 0,
so ``schedule(k) == lr * lr_lambda(k)`` here.

The schedules are pure ``jnp`` functions of the step and of their numbers (no Python branching on
either), so they trace under ``jit`` and accept arrays of steps; :func:`schedule_fn` takes the learning
rate and the step counts as (traced) arguments, so the train step is compiled once per scheduler name,
not once per run. Near-zero values are computed in a cancellation-free form (``sin^2`` of the distance to
the end instead of ``0.5 * (1 + cos(...))``) so float32 stays within a relative 1e-6 of PyTorch's float64
values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import optax

__all__ = ["SCHEDULER_NAMES", "make_schedule", "schedule_fn", "scheduler_key"]

# (step, learning_rate, warmup_steps, total_steps) -> learning rate at that step.
ScheduleFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]

SCHEDULER_NAMES: tuple[str, ...] = (
    "constantlr",
    "warmupconstant",
    "warmuplinear",
    "warmupcosine",
    "warmupcosinewithhardrestarts",
)

# num_cycles exactly as sentence-transformers leaves them: the transformers defaults.
_COSINE_CYCLES = 0.5
_HARD_RESTART_CYCLES = 1


def _warmup(step: jnp.ndarray, warmup_steps: jnp.ndarray) -> jnp.ndarray:
    """``step / max(1, warmup)`` — the shared linear warm-up ramp."""
    return step.astype(jnp.float32) / jnp.maximum(warmup_steps, 1).astype(jnp.float32)


def _remaining_fraction(step: jnp.ndarray, warmup_steps: jnp.ndarray, total_steps: jnp.ndarray) -> jnp.ndarray:
    """``1 - progress`` computed from integers, so it is exact in the numerator (no cancellation)."""
    denom = jnp.maximum(total_steps - warmup_steps, 1)
    return (denom - (step - warmup_steps)).astype(jnp.float32) / denom.astype(jnp.float32)


def _constant(step: jnp.ndarray, warmup_steps: jnp.ndarray, total_steps: jnp.ndarray) -> jnp.ndarray:
    del warmup_steps, total_steps
    return jnp.ones_like(step, dtype=jnp.float32)


def _constant_with_warmup(step: jnp.ndarray, warmup_steps: jnp.ndarray, total_steps: jnp.ndarray) -> jnp.ndarray:
    del total_steps
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), jnp.float32(1.0))


def _linear_with_warmup(step: jnp.ndarray, warmup_steps: jnp.ndarray, total_steps: jnp.ndarray) -> jnp.ndarray:
    # transformers: (total - step) / max(1, total - warmup); equals 1 - progress only when warmup < total.
    denom = jnp.maximum(total_steps - warmup_steps, 1).astype(jnp.float32)
    remaining = (total_steps - step).astype(jnp.float32) / denom
    decay = jnp.maximum(jnp.float32(0.0), remaining)
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), decay)


def _cosine_with_warmup(step: jnp.ndarray, warmup_steps: jnp.ndarray, total_steps: jnp.ndarray) -> jnp.ndarray:
    cycles = _COSINE_CYCLES
    # 0.5 * (1 + cos(2 pi c p)) == sin^2(pi * (0.5 - c p)) and 0.5 - c p == (0.5 - c) + c (1 - p).
    # Not clamped at the end: like transformers, it rises again after total_steps.
    q = _remaining_fraction(step, warmup_steps, total_steps)
    angle = jnp.float32(math.pi) * (jnp.float32(0.5 - cycles) + jnp.float32(cycles) * q)
    decay = jnp.square(jnp.sin(angle))
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), decay)


def _cosine_hard_restarts_with_warmup(
    step: jnp.ndarray, warmup_steps: jnp.ndarray, total_steps: jnp.ndarray
) -> jnp.ndarray:
    cycles = _HARD_RESTART_CYCLES
    # 0.5 * (1 + cos(pi * frac(c p))) == sin^2(pi/2 * (1 - frac(c p))); for integer c and p = 1 - q,
    # 1 - frac(c p) == frac(c q), or 1 where c q is an integer.
    q = _remaining_fraction(step, warmup_steps, total_steps)
    cq = jnp.float32(cycles) * q
    r = cq - jnp.floor(cq)
    r = jnp.where(r == 0.0, jnp.float32(1.0), r)
    decay = jnp.square(jnp.sin(jnp.float32(math.pi / 2) * r))
    decay = jnp.where(q <= 0.0, jnp.float32(0.0), decay)  # progress >= 1 -> 0
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), decay)


# name -> lr_lambda(step, warmup_steps, total_steps), all three int32 arrays (traced or not).
_LAMBDAS: dict[str, Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]] = {
    "constantlr": _constant,
    "warmupconstant": _constant_with_warmup,
    "warmuplinear": _linear_with_warmup,
    "warmupcosine": _cosine_with_warmup,
    "warmupcosinewithhardrestarts": _cosine_hard_restarts_with_warmup,
}


def scheduler_key(name: str) -> str:
    """The canonical (lower-case) scheduler name; ``ValueError`` listing the valid ones for any other."""
    key = str(name).lower()
    if key not in _LAMBDAS:
        raise ValueError(f"Unknown scheduler {name!r}; valid schedulers are: {', '.join(SCHEDULER_NAMES)}")
    return key


def schedule_fn(name: str) -> ScheduleFn:
    """The schedule with its numbers as arguments: ``fn(step, learning_rate, warmup_steps, total_steps)``.

    Only the name is fixed; the learning rate (float32) and the step counts (int32) may be traced values,
    so one jitted train step serves runs of any length and learning rate without being traced again.
    ``fn(k, lr, warmup, total) == make_schedule(name, lr, warmup, total)(k)``, bit for bit.
    """
    lam = _LAMBDAS[scheduler_key(name)]

    def schedule(step, learning_rate, warmup_steps, total_steps) -> jnp.ndarray:
        step = jnp.asarray(step, dtype=jnp.int32)
        warmup = jnp.asarray(warmup_steps, dtype=jnp.int32)
        total = jnp.asarray(total_steps, dtype=jnp.int32)
        return jnp.asarray(learning_rate, dtype=jnp.float32) * lam(step, warmup, total)

    return schedule


def make_schedule(name: str, learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Build the optax schedule for a sentence-transformers scheduler name (case-insensitive).

    ``schedule(k)`` equals the learning rate PyTorch uses at optimizer step ``k`` (0-based) under
    ``SentenceTransformer._get_scheduler(optimizer, name, warmup_steps, total_steps)``.
    """
    fn = schedule_fn(name)
    warmup_steps = int(warmup_steps)
    total_steps = int(total_steps)
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps and total_steps must be >= 0, got {warmup_steps} and {total_steps}")
    lr = jnp.float32(learning_rate)
    warmup = jnp.int32(warmup_steps)
    total = jnp.int32(total_steps)

    def schedule(count: jnp.ndarray | int) -> jnp.ndarray:
        return fn(count, lr, warmup, total)

    return schedule
