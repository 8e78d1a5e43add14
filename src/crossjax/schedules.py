"""Learning-rate schedules named like sentence-transformers' ``fit(scheduler=...)`` argument, and the rest of
Hugging Face Trainer's ``lr_scheduler_type`` values with their ``lr_scheduler_kwargs``.

Each schedule reproduces, step for step, the ``LambdaLR`` that sentence-transformers builds with
``transformers.get_*_schedule*`` (see ``SentenceTransformer._get_scheduler`` and ``transformers.get_scheduler``),
so a run ported from ``CrossEncoder.fit`` or a Trainer script sees the same learning rates. PyTorch uses
``lr * lr_lambda(k)`` at optimizer step ``k`` (0-based) and optax calls the schedule with the optimizer's update
count, which also starts at 0, so ``schedule(k) == lr * lr_lambda(k)`` here.

The schedules are pure ``jnp`` functions of the step and of their numbers (no Python branching on
either), so they trace under ``jit`` and accept arrays of steps; :func:`schedule_fn` takes the learning
rate and the step counts as (traced) arguments, so the train step is compiled once per scheduler name,
not once per run. Near-zero values are computed in a cancellation-free form (``sin^2`` of the distance to
the end instead of ``0.5 * (1 + cos(...))``) so float32 stays within a relative 1e-6 of PyTorch's float64
values.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

logger = logging.getLogger("crossjax")

__all__ = [
    "SCHEDULER_NAMES",
    "TRAINER_SCHEDULER_NAMES",
    "make_schedule",
    "schedule_fn",
    "scheduler_key",
    "scheduler_options",
]

# (step, learning_rate, warmup_steps, total_steps) -> learning rate at that step.
ScheduleFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]

SCHEDULER_NAMES: tuple[str, ...] = (
    "constantlr",
    "warmupconstant",
    "warmuplinear",
    "warmupcosine",
    "warmupcosinewithhardrestarts",
)
# Hugging Face Trainer's schedules beyond those five (``lr_scheduler_type``), by their own names.
TRAINER_SCHEDULER_NAMES: tuple[str, ...] = (
    "polynomial",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
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


def _sin2_decay(q: jnp.ndarray, cycles: float) -> jnp.ndarray:
    """``0.5 * (1 + cos(2 pi c p))`` for ``p = 1 - q``, as ``sin^2(pi * ((0.5 - c) + c q))``: no cancellation
    where it nears 0 (the end of a half cosine)."""
    return jnp.square(jnp.sin(jnp.float32(math.pi) * (jnp.float32(0.5 - cycles) + jnp.float32(cycles) * q)))


def _cosine_with_warmup(step, warmup_steps, total_steps, *, num_cycles: float = _COSINE_CYCLES):
    # Not clamped at the end: like transformers, it rises again after total_steps (max(0, .) only clips
    # round-off, the square is never negative).
    q = _remaining_fraction(step, warmup_steps, total_steps)
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), _sin2_decay(q, num_cycles))


def _cosine_hard_restarts_with_warmup(step, warmup_steps, total_steps, *, num_cycles: float = _HARD_RESTART_CYCLES):
    # 0.5 * (1 + cos(pi * frac(c p))) == sin^2(pi/2 * (1 - frac(c p))); for integer c and p = 1 - q,
    # 1 - frac(c p) == frac(c q), or 1 where c q is an integer (exact near the end of each cycle).
    q = _remaining_fraction(step, warmup_steps, total_steps)
    if float(num_cycles).is_integer():
        cq = jnp.float32(num_cycles) * q
        r = cq - jnp.floor(cq)
        r = jnp.where(r == 0.0, jnp.float32(1.0), r)
    else:
        cp = jnp.float32(num_cycles) * (jnp.float32(1.0) - q)
        r = jnp.float32(1.0) - (cp - jnp.floor(cp))
    decay = jnp.square(jnp.sin(jnp.float32(math.pi / 2) * r))
    decay = jnp.where(q <= 0.0, jnp.float32(0.0), decay)  # progress >= 1 -> 0
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), decay)


def _inverse_sqrt(step, warmup_steps, total_steps, *, timescale: int | None = None):
    del total_steps
    # transformers: timescale defaults to num_warmup_steps, or 10,000 without warm-up
    scale = jnp.where(warmup_steps > 0, warmup_steps, 10_000) if timescale is None else jnp.int32(timescale)
    shifted = (step + scale - warmup_steps).astype(jnp.float32) / scale.astype(jnp.float32)
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), jax.lax.rsqrt(shifted))


def _min_rate_cosine(q: jnp.ndarray, num_cycles: float, min_lr_rate) -> jnp.ndarray:
    return jnp.maximum(_sin2_decay(q, num_cycles) * (1.0 - min_lr_rate) + min_lr_rate, 0.0)


def _cosine_with_min_lr(step, warmup_steps, total_steps, *, num_cycles: float = 0.5, min_lr_rate=0.0):
    q = _remaining_fraction(step, warmup_steps, total_steps)
    return jnp.where(step < warmup_steps, _warmup(step, warmup_steps), _min_rate_cosine(q, num_cycles, min_lr_rate))


def _cosine_warmup_with_min_lr(
    step, warmup_steps, total_steps, *, num_cycles: float = 0.5, min_lr_rate=0.0, warmup_lr_rate: float | None = None
):
    # transformers' "lr rate" variant: the warm-up ends one step earlier and the decay starts one step later
    if warmup_lr_rate is None:
        ramp = (step + 1).astype(jnp.float32) / jnp.maximum(warmup_steps, 1).astype(jnp.float32)
    else:
        progress = step.astype(jnp.float32) / jnp.maximum(warmup_steps - 1, 1).astype(jnp.float32)
        ramp = jnp.float32(warmup_lr_rate) + jnp.float32(1.0 - warmup_lr_rate) * progress
    denom = jnp.maximum(total_steps - warmup_steps, 1)
    q = (denom - (step - warmup_steps + 1)).astype(jnp.float32) / denom.astype(jnp.float32)
    return jnp.where(step < warmup_steps, ramp, _min_rate_cosine(q, num_cycles, min_lr_rate))


_WSD_SHAPES = ("linear", "cosine", "1-sqrt")


def _warmup_stable_decay(
    step,
    warmup_steps,
    total_steps,
    *,
    num_decay_steps: int,
    num_stable_steps: int | None = None,
    warmup_type: str = "linear",
    decay_type: str = "cosine",
    min_lr_ratio: float = 0.0,
    num_cycles: float = 0.5,
):
    stable = total_steps - warmup_steps - num_decay_steps if num_stable_steps is None else jnp.int32(num_stable_steps)
    decay_steps = jnp.int32(num_decay_steps)
    p = _warmup(step, warmup_steps)
    rising = {  # 1 - sqrt(1 - p) as p / (1 + sqrt(1 - p)): no cancellation at small p
        "linear": p,
        "cosine": jnp.square(jnp.sin(jnp.float32(math.pi / 2) * p)),
        "1-sqrt": p / (1.0 + jnp.sqrt(jnp.maximum(1.0 - p, 0.0))),
    }[warmup_type]
    into = step - warmup_steps - stable
    d = into.astype(jnp.float32) / jnp.maximum(decay_steps, 1).astype(jnp.float32)
    q = (jnp.maximum(decay_steps, 1) - into).astype(jnp.float32) / jnp.maximum(decay_steps, 1).astype(jnp.float32)
    falling = {
        "linear": q,
        "cosine": _sin2_decay(q, num_cycles),
        "1-sqrt": q / (1.0 + jnp.sqrt(jnp.maximum(d, 0.0))),
    }[decay_type]

    def floor(factor):
        return jnp.maximum(factor * (1.0 - min_lr_ratio) + min_lr_ratio, 0.0)

    return jnp.where(
        step < warmup_steps,
        floor(rising),
        jnp.where(
            step < warmup_steps + stable,
            jnp.float32(1.0),
            jnp.where(step < warmup_steps + stable + decay_steps, floor(falling), jnp.float32(min_lr_ratio)),
        ),
    )


# name -> lr_lambda(step, warmup_steps, total_steps, **options), the three int32 arrays (traced or not); the
# options are transformers' ``lr_scheduler_kwargs`` (static: Python numbers and strings).
_LAMBDAS: dict[str, Callable[..., jnp.ndarray]] = {
    "constantlr": _constant,
    "warmupconstant": _constant_with_warmup,
    "warmuplinear": _linear_with_warmup,
    "warmupcosine": _cosine_with_warmup,
    "warmupcosinewithhardrestarts": _cosine_hard_restarts_with_warmup,
    "inverse_sqrt": _inverse_sqrt,
    "cosine_with_min_lr": _cosine_with_min_lr,
    "cosine_warmup_with_min_lr": _cosine_warmup_with_min_lr,
    "warmup_stable_decay": _warmup_stable_decay,
}
# The options transformers' schedule function of each takes (beyond the step counts), and their defaults;
# constant schedules ignore any (transformers does not pass them on).
_OPTIONS: dict[str, dict[str, Any]] = {
    "constantlr": {},
    "warmupconstant": {},
    "warmuplinear": {},
    "warmupcosine": {"num_cycles": _COSINE_CYCLES},
    "warmupcosinewithhardrestarts": {"num_cycles": _HARD_RESTART_CYCLES},
    "polynomial": {"lr_end": 1e-7, "power": 1.0},
    "inverse_sqrt": {"timescale": None},
    "cosine_with_min_lr": {"num_cycles": 0.5, "min_lr": None, "min_lr_rate": None},
    "cosine_warmup_with_min_lr": {"num_cycles": 0.5, "min_lr": None, "min_lr_rate": None, "warmup_lr_rate": None},
    "warmup_stable_decay": {
        "num_decay_steps": None,
        "num_stable_steps": None,
        "warmup_type": "linear",
        "decay_type": "cosine",
        "min_lr_ratio": 0.0,
        "num_cycles": 0.5,
    },
}
_IGNORES_OPTIONS = ("constantlr", "warmupconstant")


def scheduler_key(name: str) -> str:
    """The canonical (lower-case) scheduler name; ``ValueError`` listing the valid ones for any other."""
    key = str(name).lower()
    if key not in _OPTIONS:
        valid = ", ".join(SCHEDULER_NAMES + TRAINER_SCHEDULER_NAMES)
        raise ValueError(f"Unknown scheduler {name!r}; valid schedulers are: {valid}")
    return key


Options = tuple[tuple[str, Any], ...]


def scheduler_options(
    name: str, kwargs: Mapping[str, Any] | None = None, learning_rate: float | None = None, complete: bool = True
) -> Options:
    """transformers' ``lr_scheduler_kwargs`` for schedule ``name``, checked as transformers checks them, as the
    static (hashable) options :func:`schedule_fn` takes. An option the schedule does not take is a
    ``TypeError`` (transformers: an unexpected keyword argument), except for the constant schedules, which
    ignore them as transformers does; values that would give a NaN or infinite learning rate are refused
    (transformers divides by zero there). ``learning_rate`` is needed to check ``polynomial``'s ``lr_end`` and
    ``min_lr``; ``complete=False`` leaves out the check that required options are there (arguments still being
    set)."""
    key = scheduler_key(name)
    kwargs = dict(kwargs or {})
    if key in _IGNORES_OPTIONS:
        if kwargs:
            logger.warning("lr_scheduler_kwargs %s are ignored by the %r schedule (as in transformers)", kwargs, name)
        return ()
    allowed = _OPTIONS[key]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise TypeError(
            f"lr_scheduler_kwargs {unknown} are not options of the {name!r} schedule; it takes "
            f"{sorted(allowed) or 'none'}"
        )
    for option, value in kwargs.items():
        if isinstance(value, str) and option not in ("warmup_type", "decay_type"):
            raise TypeError(f"lr_scheduler_kwargs[{option!r}] must be a number, got {value!r}")
    for option in ("num_decay_steps", "num_stable_steps", "timescale"):
        value = kwargs.get(option)
        if value is not None and (isinstance(value, bool) or not float(value).is_integer()):
            raise TypeError(f"lr_scheduler_kwargs[{option!r}] must be a whole number of steps, got {value!r}")
        if value is not None:
            kwargs[option] = int(value)
    if kwargs.get("timescale") is not None and kwargs["timescale"] < 1:
        raise ValueError(f"lr_scheduler_kwargs['timescale'] must be >= 1 step, got {kwargs['timescale']}")
    if key == "polynomial":
        lr_end = float(kwargs.get("lr_end", allowed["lr_end"]))
        if learning_rate is not None and not learning_rate > lr_end:
            raise ValueError(f"lr_end ({lr_end}) must be smaller than initial lr ({learning_rate})")
    if key in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
        if kwargs.get("min_lr") is not None and kwargs.get("min_lr_rate") is not None:
            raise ValueError("Only one of min_lr or min_lr_rate should be set")
        if complete and kwargs.get("min_lr") is None and kwargs.get("min_lr_rate") is None:
            raise ValueError(f"{name!r} needs one of min_lr or min_lr_rate in lr_scheduler_kwargs")
        if kwargs.get("min_lr") is not None and learning_rate is not None and not learning_rate > 0:
            raise ValueError(
                f"min_lr is divided by the learning rate (min_lr_rate), which must be > 0, not {learning_rate}"
            )
    if key == "warmup_stable_decay":
        if complete and kwargs.get("num_decay_steps") is None:
            raise ValueError("lr_scheduler_type='warmup_stable_decay' needs lr_scheduler_kwargs={'num_decay_steps': N}")
        for option in ("warmup_type", "decay_type"):
            if kwargs.get(option, "linear") not in _WSD_SHAPES:
                kind = option.split("_")[0]
                raise ValueError(f"Unknown {kind} type: {kwargs[option]}, expected 'linear', 'cosine' or '1-sqrt'")
    return tuple(sorted(kwargs.items()))


def schedule_fn(name: str, options: Options = ()) -> ScheduleFn:
    """The schedule with its numbers as arguments: ``fn(step, learning_rate, warmup_steps, total_steps)``.

    Only the name and its ``options`` (:func:`scheduler_options`) are fixed; the learning rate (float32) and the
    step counts (int32) may be traced values, so one jitted train step serves runs of any length and learning
    rate without being traced again. ``fn(k, lr, warmup, total) == make_schedule(name, lr, warmup, total)(k)``,
    bit for bit.
    """
    key = scheduler_key(name)
    lam = _LAMBDAS.get(key)
    opts = dict(options)

    def schedule(step, learning_rate, warmup_steps, total_steps) -> jnp.ndarray:
        step = jnp.asarray(step, dtype=jnp.int32)
        warmup = jnp.asarray(warmup_steps, dtype=jnp.int32)
        total = jnp.asarray(total_steps, dtype=jnp.int32)
        lr = jnp.asarray(learning_rate, dtype=jnp.float32)
        if key == "polynomial":
            return _polynomial_lr(step, lr, warmup, total, float(opts.get("lr_end", 1e-7)), opts.get("power", 1.0))
        if "min_lr" in opts:  # an absolute floor: as a rate of this run's learning rate
            rate_opts = {k: v for k, v in opts.items() if k != "min_lr"}
            return lr * lam(step, warmup, total, min_lr_rate=jnp.float32(opts["min_lr"]) / lr, **rate_opts)
        return lr * lam(step, warmup, total, **opts)

    return schedule


def _polynomial_lr(step, lr, warmup, total, lr_end: float, power: float) -> jnp.ndarray:
    """transformers' polynomial decay from ``lr`` to ``lr_end`` (absolute), after the linear warm-up."""
    decay_steps = jnp.maximum(total - warmup, 1)
    remaining = (decay_steps - (step - warmup)).astype(jnp.float32) / decay_steps.astype(jnp.float32)
    decayed = (lr - lr_end) * jnp.power(jnp.maximum(remaining, 0.0), jnp.float32(power)) + lr_end
    after = jnp.where(step > total, jnp.float32(lr_end), decayed)
    return jnp.where(step < warmup, lr * _warmup(step, warmup), after)


@functools.cache
def _compiled(name: str, options: Options) -> Callable:
    """:func:`schedule_fn` jitted with its numbers as arguments: the train step's own arithmetic (bit for bit),
    one compile per name and options (evaluated eagerly, every ``jnp`` operation compiled a program of its own:
    ~10 on each first use in a process)."""
    return jax.jit(schedule_fn(name, options))


def make_schedule(
    name: str, learning_rate: float, warmup_steps: int, total_steps: int, options: Options = ()
) -> optax.Schedule:
    """Build the optax schedule for a scheduler name (case-insensitive) and its :func:`scheduler_options`.

    ``schedule(k)`` equals the learning rate PyTorch uses at optimizer step ``k`` (0-based) under
    ``SentenceTransformer._get_scheduler(optimizer, name, warmup_steps, total_steps)`` (or
    ``transformers.get_scheduler`` with the options as ``scheduler_specific_kwargs``), and, bit for bit, what
    the train step computes (:func:`schedule_fn` with the numbers as traced arguments).
    """
    fn = _compiled(scheduler_key(name), tuple(options))
    warmup_steps = int(warmup_steps)
    total_steps = int(total_steps)
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps and total_steps must be >= 0, got {warmup_steps} and {total_steps}")
    lr = np.float32(learning_rate)
    warmup = np.int32(warmup_steps)
    total = np.int32(total_steps)

    def schedule(count: jnp.ndarray | int) -> jnp.ndarray:
        return fn(count, lr, warmup, total)

    return schedule
