"""Learning-rate schedules named like sentence-transformers' ``fit(scheduler=...)`` argument.

Each schedule reproduces, step for step, the ``LambdaLR`` that sentence-transformers builds with
``transformers.get_*_schedule*`` (see ``SentenceTransformer._get_scheduler``), so a run ported from
``CrossEncoder.fit`` sees the same learning rates. PyTorch uses ``lr * lr_lambda(k)`` at optimizer step
``k`` (0-based) and optax calls the schedule with the optimizer's update count, which also starts at 0,
so ``schedule(k) == lr * lr_lambda(k)`` here.

The schedules are pure ``jnp`` functions of the step (no Python branching on it), so they trace under
``jit`` and accept arrays of steps. Near-zero values are computed in a cancellation-free form
(``sin^2`` of the distance to the end instead of ``0.5 * (1 + cos(...))``) so float32 stays within a
relative 1e-6 of PyTorch's float64 values.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax.numpy as jnp
import optax

__all__ = ["SCHEDULER_NAMES", "make_schedule"]

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


def _warmup(step: jnp.ndarray, warmup_steps: int) -> jnp.ndarray:
    """``step / max(1, warmup)`` — the shared linear warm-up ramp."""
    return step.astype(jnp.float32) / jnp.float32(max(1, warmup_steps))


def _remaining_fraction(step: jnp.ndarray, warmup_steps: int, total_steps: int) -> jnp.ndarray:
    """``1 - progress`` computed from integers, so it is exact in the numerator (no cancellation)."""
    denom = max(1, total_steps - warmup_steps)
    return (denom - (step - warmup_steps)).astype(jnp.float32) / jnp.float32(denom)


def _constant(warmup_steps: int, total_steps: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
    del warmup_steps, total_steps

    def lam(step: jnp.ndarray) -> jnp.ndarray:
        return jnp.ones_like(step, dtype=jnp.float32)

    return lam


def _constant_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
    del total_steps

    def lam(step: jnp.ndarray) -> jnp.ndarray:
        return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), jnp.float32(1.0))

    return lam


def _linear_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
    def lam(step: jnp.ndarray) -> jnp.ndarray:
        # transformers: (total - step) / max(1, total - warmup); equals 1 - progress only when warmup < total.
        remaining = (total_steps - step).astype(jnp.float32) / jnp.float32(max(1, total_steps - warmup_steps))
        decay = jnp.maximum(jnp.float32(0.0), remaining)
        return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), decay)

    return lam


def _cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[jnp.ndarray], jnp.ndarray]:
    cycles = _COSINE_CYCLES

    def lam(step: jnp.ndarray) -> jnp.ndarray:
        # 0.5 * (1 + cos(2 pi c p)) == sin^2(pi * (0.5 - c p)) and 0.5 - c p == (0.5 - c) + c (1 - p).
        # Not clamped at the end: like transformers, it rises again after total_steps.
        q = _remaining_fraction(step, warmup_steps, total_steps)
        angle = jnp.float32(math.pi) * (jnp.float32(0.5 - cycles) + jnp.float32(cycles) * q)
        decay = jnp.square(jnp.sin(angle))
        return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), decay)

    return lam


def _cosine_hard_restarts_with_warmup(
    warmup_steps: int, total_steps: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    cycles = _HARD_RESTART_CYCLES

    def lam(step: jnp.ndarray) -> jnp.ndarray:
        # 0.5 * (1 + cos(pi * frac(c p))) == sin^2(pi/2 * (1 - frac(c p))); for integer c and p = 1 - q,
        # 1 - frac(c p) == frac(c q), or 1 where c q is an integer.
        q = _remaining_fraction(step, warmup_steps, total_steps)
        cq = jnp.float32(cycles) * q
        r = cq - jnp.floor(cq)
        r = jnp.where(r == 0.0, jnp.float32(1.0), r)
        decay = jnp.square(jnp.sin(jnp.float32(math.pi / 2) * r))
        decay = jnp.where(q <= 0.0, jnp.float32(0.0), decay)  # progress >= 1 -> 0
        return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), decay)

    return lam


_FACTORIES: dict[str, Callable[[int, int], Callable[[jnp.ndarray], jnp.ndarray]]] = {
    "constantlr": _constant,
    "warmupconstant": _constant_with_warmup,
    "warmuplinear": _linear_with_warmup,
    "warmupcosine": _cosine_with_warmup,
    "warmupcosinewithhardrestarts": _cosine_hard_restarts_with_warmup,
}


def make_schedule(name: str, learning_rate: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Build the optax schedule for a sentence-transformers scheduler name (case-insensitive).

    ``schedule(k)`` equals the learning rate PyTorch uses at optimizer step ``k`` (0-based) under
    ``SentenceTransformer._get_scheduler(optimizer, name, warmup_steps, total_steps)``.
    """
    key = str(name).lower()
    if key not in _FACTORIES:
        raise ValueError(f"Unknown scheduler {name!r}; valid schedulers are: {', '.join(SCHEDULER_NAMES)}")
    warmup_steps = int(warmup_steps)
    total_steps = int(total_steps)
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps and total_steps must be >= 0, got {warmup_steps} and {total_steps}")
    lam = _FACTORIES[key](warmup_steps, total_steps)
    lr = jnp.float32(learning_rate)

    def schedule(count: jnp.ndarray | int) -> jnp.ndarray:
        step = jnp.asarray(count, dtype=jnp.int32)
        return lr * lam(step)

    return schedule
