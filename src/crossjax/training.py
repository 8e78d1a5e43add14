"""The trainer core: a pure ``train_step(state, batch) -> (state, metrics)`` jitted once per bucket shape.

Optimisation follows sentence-transformers' legacy ``fit`` exactly: ``torch.optim.AdamW`` (betas, eps,
amsgrad as given) with no weight decay where the Hugging Face name contains "bias", "LayerNorm.bias" or
"LayerNorm.weight", torch's global-norm clipping, a per-step learning-rate schedule.
A non-finite loss or gradient leaves the state untouched, and so does every later step (the ``healthy`` flag
threads through the steps on the device, so nothing waits for the host), until the host fetches the metrics
and stops the run: the parameters stay those of the last finite step. An update that overflows although loss
and gradient were finite (a learning rate near float32's limit, or Adam eps 0) is applied, reported and stops
the run the same way; checking the updated parameters before applying them would cost the in-place update.

Compiling is paid once per process and model: every number of a run (learning rate, warm-up and total
steps, weight decay, betas, eps, clipping norm) reaches the jitted step as a traced scalar
(:func:`optimizer_hparams`), only structural choices are static (:class:`OptimizerSpec`, the loss, the
activation, the accumulation steps, the model graph, the shardings), and the jitted steps are kept per
process keyed by those (:func:`train_program`, :func:`predict_program`). A second ``fit`` of the same model
with other numbers traces and compiles nothing.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import hashlib
import logging
import re
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from crossjax import losses, optimizers, packing
from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.params import hf_name_of, hf_slots_of
from crossjax.packing import PackedBatch
from crossjax.parallel import MeshPlan, global_batch_array, process_rows
from crossjax.schedules import Options, schedule_fn, scheduler_key

logger = logging.getLogger("crossjax")

PACKED_INPUTS = ("input_ids", "token_type_ids", "segment_ids", "position_ids", "pair_row", "pair_start")
# sentence-transformers' legacy fit rule, applied to Hugging Face parameter names (substrings).
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")
# Hugging Face Trainer's rule (``Trainer.get_decay_parameter_names``, which sentence-transformers' trainers use):
# these patterns searched in the lower-cased name; its other test, parameters of ``nn.LayerNorm`` modules, adds
# nothing for crossjax's families, whose LayerNorms all have names matching them.
HF_NO_DECAY_PATTERNS = tuple(
    re.compile(p) for p in (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")
)


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    rest: Any  # non-parameter model state: dropout RNG streams
    opt_state: Any


def _key_name(key) -> str:
    """One element of a jax tree path as the name nnx gives it (a dict key, a list index, an attribute)."""
    if isinstance(key, jax.tree_util.DictKey):
        return str(key.key)
    if isinstance(key, jax.tree_util.SequenceKey):
        return str(key.idx)
    if isinstance(key, jax.tree_util.GetAttrKey):
        return key.name
    if isinstance(key, jax.tree_util.FlattenedIndexKey):
        return str(key.key)
    raise TypeError(f"unexpected tree path element {key!r}")


def decay_mask(model: FlaxPreTrainedModel, params, rule: str = "fit") -> Any:
    """True where AdamW applies weight decay, by the parameter's Hugging Face name. ``rule="fit"``: the legacy
    ``fit``'s, every name that contains none of ``NO_DECAY`` (so DistilBERT's ``sa_layer_norm.weight`` IS
    decayed, as in sentence-transformers' ``old_fit``); ``"trainer"``: Hugging Face Trainer's, no name matching
    ``HF_NO_DECAY_PATTERNS`` (every norm and bias). Same tree structure as ``params`` (an ``nnx.State``).

    A parameter the family's table cannot name is a bug in the family, so it raises instead of being decayed.
    """
    if rule not in ("fit", "trainer"):
        raise ValueError(f"decay_mask rule must be 'fit' or 'trainer', got {rule!r}")
    table = model.param_table(model.config)
    known = {".".join(map(str, path)) for path, _ in nnx.to_flat_state(params)}

    def decays(path, variable):
        # The path stops at the nnx.Variable (is_leaf below), so it holds only module/attribute names.
        dotted = ".".join(_key_name(k) for k in path)
        if dotted not in known:
            raise RuntimeError(f"decay_mask: tree path {path} does not name a parameter ({dotted})")
        name = hf_name_of(table, dotted)
        if name is None:
            raise RuntimeError(f"{type(model).__name__}: no Hugging Face name for parameter {dotted}")
        if rule == "fit":
            decay = not any(nd in name for nd in NO_DECAY)
        else:
            decay = not any(pattern.search(name.lower()) for pattern in HF_NO_DECAY_PATTERNS)
        return jax.tree.map(lambda _: decay, variable)

    return jax.tree_util.tree_map_with_path(
        decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


# The prefix sentence-transformers 6's losses give a cross-encoder's Hugging Face parameter names
# (``loss.named_parameters()``), which ``learning_rate_mapping``'s patterns are searched in, as there.
ST_PARAMETER_PREFIX = "model.0.model."


def learning_rate_scales(
    model: FlaxPreTrainedModel, params, mapping: Any, learning_rate: float
) -> tuple[Any, dict[str, int]]:
    """sentence-transformers' ``learning_rate_mapping`` (parameter-name regex -> learning rate) as multipliers of
    each parameter's update: ``rate / learning_rate`` where a pattern ``re.search``-es the parameter's name
    (``ST_PARAMETER_PREFIX`` + its Hugging Face name; the last matching pattern wins, as its optimizer groups do),
    else 1. A stack of scanned layers gets one multiplier per layer (shape (layers, 1, ...)). Returns the tree
    (``params``' structure) and how many Hugging Face tensors each pattern took.

    Why a multiplier: every update crossjax's optimizers make is proportional to the learning rate (AdamW's step
    and decoupled decay, SGD, Adafactor without its relative step), and every schedule multiplies each group's own
    rate by the same factor (transformers' ``LambdaLR``), so a group's update is the model's times its ratio."""
    patterns = [(str(pattern), re.compile(str(pattern)), float(rate)) for pattern, rate in dict(mapping).items()]
    if patterns and not learning_rate:
        raise ValueError(
            "learning_rate_mapping needs a nonzero learning_rate: crossjax scales each group's update by its rate "
            "over learning_rate"
        )
    table = model.param_table(model.config)
    taken = {pattern: 0 for pattern, _, _ in patterns}

    def rate_of(name: str) -> float:
        rate = learning_rate
        for pattern, compiled, value in patterns:
            if compiled.search(ST_PARAMETER_PREFIX + name):
                rate = value
                taken[pattern] += 1
        return rate / learning_rate  # nonzero where there are patterns (above)

    def scales(path, variable):
        dotted = ".".join(_key_name(k) for k in path)
        value = jax.tree.leaves(variable)[0]
        slots = hf_slots_of(table, dotted, value.shape[0] if value.ndim else 0)
        if not slots:
            raise RuntimeError(f"{type(model).__name__}: no Hugging Face name for parameter {dotted}")
        if slots[0][2] is None:  # one tensor
            scale = np.float32(rate_of(slots[0][0]))
        else:  # a stack: one multiplier per layer (a layer below the row's first_layer holds no tensor: 1)
            per_layer = np.ones(value.shape[0], np.float32)
            for name, _, layer in slots:
                per_layer[layer] = rate_of(name)
            scale = per_layer.reshape((-1,) + (1,) * (value.ndim - 1))
        return jax.tree.map(lambda _: scale, variable)

    tree = jax.tree_util.tree_map_with_path(scales, params, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return tree, taken


def scale_updates_by(scales) -> optax.GradientTransformation:
    """Multiply each update by its leaf of ``scales`` (the tree of :func:`learning_rate_scales`); no state."""

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, k: u * k.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def hf_layouts(model: FlaxPreTrainedModel, params) -> Any:
    """How each parameter holds its Hugging Face tensor, as :mod:`crossjax.optimizers` codes: ``STACKED`` for a
    stack of scanned layers (one tensor per slice of axis 0), ``TRANSPOSED`` for a reversed one (the family
    table's ``transpose``). Same tree structure as ``params``; what Adafactor needs to treat each Hugging Face
    tensor as transformers' does."""
    table = model.param_table(model.config)

    def layout(path, variable):
        dotted = ".".join(_key_name(k) for k in path)
        for rule in table:
            code = optimizers.TRANSPOSED if rule.transpose else 0
            if rule.stacked_ours == dotted:
                return jax.tree.map(lambda _, c=code | optimizers.STACKED: c, variable)
            if rule.match_ours(dotted) is not None:
                return jax.tree.map(lambda _, c=code: c, variable)
        raise RuntimeError(f"{type(model).__name__}: no Hugging Face tensor for parameter {dotted}")

    return jax.tree_util.tree_map_with_path(layout, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def clip_by_global_norm_like_torch(max_norm) -> optax.GradientTransformationExtraArgs:
    """``torch.nn.utils.clip_grad_norm_``: scale by min(1, max_norm / (norm + 1e-6)).

    ``max_norm`` is a number or a (traced) float32 scalar. ``update(..., global_norm=n)`` takes the norm of
    ``updates`` computed already (the train step reports it): computing it again inside the step's conditional
    update, where XLA cannot reuse it, cost a second pass over every gradient and ~50 more compiled kernels."""

    def update(updates, state, params=None, *, global_norm=None, **extra_args):
        del params, extra_args
        norm = global_norm_of(updates) if global_norm is None else global_norm
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def global_norm_of(tree) -> jax.Array:
    """The float32 L2 norm of all of ``tree``'s leaves, as ``optax.tree.norm``, but each leaf's sum of squares
    is a dot product: on a CPU a reduction compiles into two or three kernels a leaf, a dot into a library call
    (the MiniLM train step: 24 fewer kernels, ~0.35 s less compile, same step time)."""
    squares = [
        jnp.vdot(x.ravel(), x.ravel(), preferred_element_type=jnp.float32).astype(jnp.float32)
        for x in jax.tree.leaves(tree)
    ]
    return jnp.sqrt(sum(squares, jnp.zeros((), jnp.float32)))


def _one_minus(b, one_minus_b):
    """``1 - b`` as optax computes it from a Python float (in float64, rounded once to float32 when applied).
    For traced betas the host passes it in, computed the same way: ``1 - b`` in float32 on the device
    rounds differently (``1 - f32(0.9) != f32(1 - 0.9)``)."""
    return 1 - b if one_minus_b is None else one_minus_b


def scale_by_adam_like_optax(b1, b2, eps, one_minus_b1=None, one_minus_b2=None) -> optax.GradientTransformation:
    """``optax.scale_by_adam(b1, b2, eps)`` (``eps_root`` 0, no nesterov), operation for operation, with the
    same state (``optax.ScaleByAdamState``), but ``b1``, ``b2``, ``eps`` may be traced float32 scalars: then
    ``one_minus_b1`` / ``one_minus_b2`` carry ``1 - b`` as computed on the host (see :func:`_one_minus`)."""
    c1, c2 = _one_minus(b1, one_minus_b1), _one_minus(b2, one_minus_b2)

    def init(params):
        mu = optax.tree.zeros_like(params)
        nu = optax.tree.zeros_like(params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=mu, nu=nu)

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda g, t: c1 * (g**1) + b1 * t, updates, state.mu)
        nu = jax.tree.map(lambda g, t: c2 * (g**2) + b2 * t, updates, state.nu)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + 0.0) + eps), mu_hat, nu_hat)
        return out, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


class ScaleByTorchAmsgradState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_amsgrad_like_torch(
    b1, b2, eps, one_minus_b1=None, one_minus_b2=None
) -> optax.GradientTransformation:
    """``torch.optim.AdamW(amsgrad=True)``'s direction: the running maximum is taken over the raw second
    moment, and only then bias-corrected with the current step, ``m_hat / (sqrt(max_v) / sqrt(1 - b2^t) + eps)``
    (``optax.scale_by_amsgrad`` takes the maximum of the bias-corrected moments instead). Traced betas as in
    :func:`scale_by_adam_like_optax`."""
    c1, c2 = _one_minus(b1, one_minus_b1), _one_minus(b2, one_minus_b2)

    def init(params):
        zeros = optax.tree.zeros_like(params)
        return ScaleByTorchAmsgradState(jnp.zeros([], jnp.int32), zeros, zeros, zeros)

    def update(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda g, t: c1 * (g**1) + b1 * t, updates, state.mu)
        nu = jax.tree.map(lambda g, t: c2 * (g**2) + b2 * t, updates, state.nu)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        sqrt_bc2 = jnp.sqrt(1.0 - jnp.asarray(b2, jnp.float32) ** count.astype(jnp.float32))
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) / sqrt_bc2.astype(v.dtype) + eps), mu_hat, nu_max)
        return out, ScaleByTorchAmsgradState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def _adamw_chain(
    schedule: optax.Schedule,
    weight_decay,
    mask,
    max_grad_norm,
    eps,
    b1,
    b2,
    one_minus_b1=None,
    one_minus_b2=None,
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """Clipping (when ``max_grad_norm`` is not None), then AdamW with decoupled decay where ``mask`` is True.

    The state has exactly the tree of the former ``optax.chain(clip, optax.adamw(...))`` (so checkpoints written
    before restore), and its structure never depends on the numbers, only on clipping and amsgrad."""
    parts = []
    if max_grad_norm is not None:
        parts.append(clip_by_global_norm_like_torch(max_grad_norm))
    if amsgrad:
        parts += [
            scale_by_amsgrad_like_torch(b1, b2, eps, one_minus_b1, one_minus_b2),
            optax.add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(schedule),
        ]
    else:
        parts.append(
            optax.chain(
                scale_by_adam_like_optax(b1, b2, eps, one_minus_b1, one_minus_b2),
                optax.add_decayed_weights(weight_decay, mask),
                optax.scale_by_learning_rate(schedule),
            )
        )
    return optax.chain(*parts)


def make_optimizer(
    schedule: optax.Schedule,
    weight_decay: float,
    mask,
    max_grad_norm: float | None,
    adam_eps: float = 1e-8,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """torch's clipping then ``torch.optim.AdamW``: decoupled decay ``lr * wd * p`` where ``mask`` is True.

    The numbers are fixed here (Python floats); ``fit`` uses :func:`optimizer_for` instead, which takes them
    as traced scalars so the compiled step does not depend on them. Both compute the same values."""
    b1, b2 = (float(b) for b in adam_betas)
    clip = float(max_grad_norm) if max_grad_norm is not None and max_grad_norm > 0 else None
    return _adamw_chain(schedule, weight_decay, mask, clip, adam_eps, b1, b2, amsgrad=amsgrad)


@dataclass(frozen=True)
class OptimizerSpec:
    """What is static in the optimizer (changing it changes the program): the scheduler's name and options
    (transformers' ``lr_scheduler_kwargs``), whether gradients are clipped, and amsgrad. Every other number is
    in :func:`optimizer_hparams` instead."""

    scheduler: str
    clipping: bool
    amsgrad: bool = False
    schedule_options: Options = ()
    optimizer: str = "adamw"  # or a key of crossjax.optimizers (sgd, adagrad, rmsprop, adafactor)
    optimizer_options: Options = ()

    @classmethod
    def create(
        cls,
        scheduler: str,
        max_grad_norm: float | None,
        amsgrad: bool = False,
        schedule_options: Options = (),
        optimizer: str = "adamw",
        optimizer_options: Options = (),
    ) -> OptimizerSpec:
        clipping = max_grad_norm is not None and max_grad_norm > 0
        if optimizer != "adamw" and amsgrad:
            raise ValueError(f"amsgrad is AdamW's option, not {optimizer!r}'s")
        options = tuple(optimizer_options) or optimizers.optimizer_options(optimizer)
        return cls(
            scheduler_key(scheduler), bool(clipping), bool(amsgrad), tuple(schedule_options), optimizer, options
        )

    @property
    def needs_layouts(self) -> bool:
        """Whether the optimizer reads which parameters are stacks of layers (Adafactor's per-tensor factors)."""
        return self.optimizer == "adafactor"


def optimizer_hparams(
    learning_rate: float,
    warmup_steps: int,
    total_steps: int,
    weight_decay: float,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    max_grad_norm: float | None = None,
) -> dict[str, np.ndarray]:
    """A run's numbers as numpy scalars (float32, the step counts int32): the traced argument of the step.

    ``one_minus_b1``/``one_minus_b2`` are ``1 - b`` computed in float64 as optax does for Python floats, so the
    traced optimizer rounds exactly like the one built from Python floats (:func:`make_optimizer`)."""
    b1, b2 = (float(b) for b in adam_betas)
    steps = {"warmup_steps": int(warmup_steps), "total_steps": int(total_steps)}
    for name, value in steps.items():
        if not 0 <= value <= np.iinfo(np.int32).max:
            raise ValueError(f"{name} must be between 0 and 2**31 - 1, got {value}")
    return {
        "learning_rate": np.float32(learning_rate),
        "warmup_steps": np.int32(steps["warmup_steps"]),
        "total_steps": np.int32(steps["total_steps"]),
        "weight_decay": np.float32(weight_decay),
        "b1": np.float32(b1),
        "b2": np.float32(b2),
        "one_minus_b1": np.float32(1 - b1),
        "one_minus_b2": np.float32(1 - b2),
        "eps": np.float32(adam_eps),
        "max_grad_norm": np.float32(max_grad_norm if max_grad_norm is not None and max_grad_norm > 0 else 0.0),
    }


def optimizer_for(spec: OptimizerSpec, mask, hparams: dict, layouts: Any = None) -> optax.GradientTransformation:
    """The optimizer of ``spec`` with the numbers of ``hparams`` (numpy or traced scalars): what the step
    applies. Equal, value for value, to :func:`make_optimizer` with the same numbers as Python floats.
    ``layouts`` (:func:`hf_layouts`) is read by the optimizers whose spec ``needs_layouts``."""
    fn = schedule_fn(spec.scheduler, spec.schedule_options)

    def schedule(count):
        return fn(count, hparams["learning_rate"], hparams["warmup_steps"], hparams["total_steps"])

    # learning_rate_mapping's per-parameter multipliers (:func:`learning_rate_scales`), applied last; a run
    # without one keeps the optimizer state's tree of before (its checkpoints restore)
    per_group = [scale_updates_by(hparams["lr_scales"])] if "lr_scales" in hparams else []
    if spec.optimizer != "adamw":
        clip = [clip_by_global_norm_like_torch(hparams["max_grad_norm"])] if spec.clipping else []
        decay = optax.add_decayed_weights(hparams["weight_decay"], mask)
        move = optimizers.direction(spec.optimizer, spec.optimizer_options, layouts)
        # torch's SGD/Adagrad/RMSprop add weight_decay * p to the gradient; Adafactor decays after its direction
        steps = [move, decay] if optimizers.decoupled_decay(spec.optimizer) else [decay, move]
        return optax.chain(*clip, *steps, optax.scale_by_learning_rate(schedule), *per_group)

    adamw = _adamw_chain(
        schedule,
        hparams["weight_decay"],
        mask,
        hparams["max_grad_norm"] if spec.clipping else None,
        hparams["eps"],
        hparams["b1"],
        hparams["b2"],
        hparams["one_minus_b1"],
        hparams["one_minus_b2"],
        amsgrad=spec.amsgrad,
    )
    return optax.chain(adamw, *per_group) if per_group else adamw


class CompileCounter:
    """Counts traces (= compilations) of a jitted function: the Python body only runs while tracing, in the
    thread that called it. ``count`` and ``shapes`` are the process's; :meth:`shapes_here` lists a thread's
    own, so a call measures what it compiled whatever other threads compile meanwhile."""

    def __init__(self) -> None:
        self.shapes: list[tuple] = []
        self._by_thread: dict[int, list[tuple]] = {}
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return len(self.shapes)

    def tick(self, shape) -> None:
        with self._lock:
            self.shapes.append(tuple(shape))
            self._by_thread.setdefault(threading.get_ident(), []).append(tuple(shape))

    def forget_shapes(self) -> None:
        """Forget the process's shapes (their programs were dropped); each thread's own list stays, so a call in
        flight still counts what it traces."""
        with self._lock:
            self.shapes = []

    def shapes_here(self) -> list[tuple]:
        """The shapes this thread traced, oldest first (a call's: the entries past their count before it)."""
        return self._by_thread.get(threading.get_ident(), [])


def init_train_state(model: FlaxPreTrainedModel, tx: optax.GradientTransformation, plan: MeshPlan):
    """The model's parameters and a fresh optimizer state, placed on the mesh; returns (state, shardings).

    Parameters and optimizer moments follow ``plan``'s mode (replicated or fsdp); the step counter and the
    dropout RNG state are replicated.
    """
    from crossjax.parallel import put_global

    params = nnx.state(model, nnx.Param)
    rest = nnx.state(model, nnx.Not(nnx.Param))
    param_shardings = plan.state_shardings(params)
    opt_shardings = plan.state_shardings(jax.eval_shape(tx.init, params))
    shardings = TrainState(
        step=plan.replicated,
        params=param_shardings,
        rest=jax.tree.map(lambda _: plan.replicated, rest),
        opt_state=opt_shardings,
    )
    state = TrainState(
        step=put_global(np.zeros((), np.int32), plan.replicated),
        params=put_global(params, param_shardings),
        rest=put_global(rest, plan.replicated),
        opt_state=jax.jit(tx.init, out_shardings=opt_shardings)(params),
    )
    return state, shardings


def make_train_step(
    graphdef,
    tx: optax.GradientTransformation | Callable[[Any], optax.GradientTransformation],
    loss_fn: Callable,
    activation: Callable,
    accumulation_steps: int = 1,
    counter: CompileCounter | None = None,
    gradient_buffer: bool = False,
):
    """The pure step ``(state, batch, healthy, hparams) -> (state, metrics)`` on a packed batch
    (:mod:`crossjax.packing`). ``tx`` is the optimizer, or a function of ``hparams`` (a pytree of traced
    scalars) returning it, as :func:`optimizer_for` with its first two arguments bound; with a fixed optimizer
    ``hparams`` is unused (and may be omitted).

    With ``gradient_buffer`` the step is ``(state, batch, healthy, hparams, gradients) -> (state, metrics,
    gradients)``: it returns the step's gradient, so that jitted with ``gradients`` donated (as
    :func:`train_program` does; see :func:`new_gradient_buffer`) XLA computes it into the previous step's
    buffer, whose values it never reads.

    With accumulation, the batch's groups {i*k + j} form micro-batch j, so the split stays local to each data
    shard. ``healthy`` is the previous step's ``metrics["finite"]`` (True at the start): once a step was not
    finite, no later step changes the parameters or optimizer state either. A step without a single real pair
    (the last, empty step of a multi-host stream whose shards are all used up), or with a nonzero ``abort``
    (a multi-host stream step in which some process's shard failed), changes nothing, RNG included.

    The loss of a step is ``sum(numerators) / sum(denominators)`` over its micro-batches, and its gradient
    ``sum(grad numerators) / sum(denominators)``: for the losses crossjax ships (:func:`losses.loss_parts`:
    BCE with ``pos_weight``, cross-entropy with class weights and label smoothing, MSE) that is exactly the
    loss of the whole batch. Any other callable is taken as a mean over its real rows: its numerator is
    ``loss * max(rows, 1)`` and its denominator the row count, exact for per-row means only.
    """
    k = int(accumulation_steps)
    tx_for = (lambda _: tx) if isinstance(tx, optax.GradientTransformation) else tx
    batch_loss = make_batch_loss(loss_fn, activation)

    def micro_numerator(params, rest, micro):
        model = nnx.merge(graphdef, params, rest, copy=True)
        numerator, denominator = batch_loss(model, micro)
        return numerator, (denominator, nnx.state(model, nnx.Not(nnx.Param)))

    grad_fn = jax.value_and_grad(micro_numerator, has_aux=True)

    def mean_loss(params, rest, batch):
        numerator, (denominator, rest) = micro_numerator(params, rest, batch)
        return numerator * (1.0 / jnp.where(denominator == 0.0, 1.0, denominator)), rest

    # One micro-batch: differentiate the mean itself, so the gradient needs no scaling pass over every leaf.
    mean_grad_fn = jax.value_and_grad(mean_loss, has_aux=True)

    def step_and_gradients(state: TrainState, batch: dict, healthy: jax.Array, hparams) -> tuple[TrainState, dict, Any]:
        if counter is not None:
            counter.tick(batch["input_ids"].shape)
        # A multi-host stream's steps carry ``abort`` [groups]: 1 + the index of a process whose shard failed
        # (see crossjax.fit_loop), else 0. Such a step changes nothing, and every process reads the flag.
        batch = dict(batch)
        abort = batch.pop("abort", None)
        if k == 1:
            (loss, rest), grads = mean_grad_fn(state.params, state.rest, batch)
        else:
            micro_batches = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1), batch
            )

            def body(carry, micro):
                grads_sum, num_sum, den_sum, rest = carry
                (num, (den, rest)), grads = grad_fn(state.params, rest, micro)
                return (jax.tree.map(jnp.add, grads_sum, grads), num_sum + num, den_sum + den, rest), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            scalar = jnp.zeros((), jnp.float32)
            (grads, numerator, denominator, rest), _ = jax.lax.scan(
                body, (zeros, scalar, scalar, state.rest), micro_batches
            )
            scale = 1.0 / jnp.where(denominator == 0.0, 1.0, denominator)
            loss = numerator * scale
            grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        grad_norm = global_norm_of(grads)
        pairs = jnp.sum(batch["example_mask"])
        trains = pairs > 0
        extra_metrics = {}
        if abort is not None:
            extra_metrics["abort"] = jnp.max(abort)
            trains = trains & (extra_metrics["abort"] == 0)
        # A non-finite loss or gradient (or a step that does not train) applies no update. Gating the update itself
        # (not selecting between old and new state afterwards) lets XLA update the donated buffers in place:
        # on a CPU the select cost 35 ms and doubled AdamW's 31 ms of a 320 ms MiniLM step
        # (benchmarks/step_profile.py); on an H200 the gated BERT-base bf16 step took 32.9 ms against the
        # select's 36.0 ms (benchmarks/train_step.py --pairs stsb, RESULTS.md "Session 6").
        finite_gradient = healthy & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        apply = finite_gradient & trains

        def update(params, opt_state):
            optimizer = optax.with_extra_args_support(tx_for(hparams))  # clipping reuses grad_norm
            updates, opt_state = optimizer.update(grads, opt_state, params, global_norm=grad_norm)
            return optax.apply_updates(params, updates), opt_state

        params, opt_state = jax.lax.cond(apply, update, lambda p, o: (p, o), state.params, state.opt_state)
        finite = finite_gradient & _all_finite(params)
        new_state = TrainState(
            step=state.step + trains.astype(state.step.dtype),
            params=params,
            rest=_keep_unless(trains, rest, state.rest),
            opt_state=opt_state,
        )
        step_metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "pairs": pairs, **extra_metrics}
        return new_state, step_metrics, grads

    if gradient_buffer:

        def buffered_train_step(state, batch, healthy, hparams, gradients):
            del gradients  # donated: its memory receives this step's gradient
            return step_and_gradients(state, batch, healthy, hparams)

        return buffered_train_step

    def train_step(state: TrainState, batch: dict, healthy: jax.Array, hparams=None) -> tuple[TrainState, dict]:
        return step_and_gradients(state, batch, healthy, hparams)[:2]

    return train_step


def new_gradient_buffer(params, shardings):
    """Zeros shaped, typed and placed like ``params``: the first ``gradients`` of a step built with
    ``make_train_step(..., gradient_buffer=True)``; each step returns the next one.

    Why: without it the gradient (as large as the parameters) is a temporary of every step. XLA:CPU allocates a
    step's temporaries afresh each time, and glibc maps allocations over 32 MB from the kernel anew, which
    zeroes every page on first touch: a MiniLM step took 39,000 page faults and ~70 ms of system time (of 240
    ms), half of it for the gradient (``benchmarks/compile_time.py`` prints faults per step). Reusing one
    buffer costs no memory at the step's peak; between steps it keeps one parameter-sized buffer.

    The zeros are made on the devices: an array put there from numpy may share numpy's memory (XLA:CPU takes
    an aligned host buffer without a copy), and such a buffer cannot be donated, so the first step copied it.
    """
    return jax.jit(_zeros_like_tree, out_shardings=shardings)(params)  # one program, not one per shape


def weights_digest(params) -> str:
    """A digest of the parameters' bits, the same on every process, mesh and device count: the wrapping uint32
    sum (exact and order-free, unlike a float sum) of each element's bits times an odd factor of its position
    (so any one changed element changes it). Why: a checkpointed fit resumes by itself, and must tell the weights
    its run started from (see fit_loop). Computed on the host where every array is whole there (no compile),
    else as one program over the mesh."""
    leaves = jax.tree.leaves(params)
    if all(getattr(leaf, "is_fully_addressable", True) for leaf in leaves):
        total = _digest_sum([np.asarray(leaf) for leaf in jax.device_get(leaves)], np)
    else:  # a multi-host run's sharded parameters: no process holds them whole
        total = jax.device_get(jax.jit(functools.partial(_digest_sum, xp=jnp))(leaves))
    return f"{int(total):08x}"


def _digest_sum(leaves: list, xp: Any) -> Any:
    """:func:`weights_digest`'s sum, with numpy or jax.numpy (``xp``): the same number."""
    total = xp.zeros((1,), xp.uint32)  # arrays wrap silently where numpy's scalars warn of the overflow
    offset = 0
    for leaf in leaves:
        if leaf.dtype.itemsize == 1:
            bits = leaf.astype(xp.uint32)
        else:  # 2-byte elements widened, 4-byte ones as they are, 8-byte ones as two words each
            word = xp.uint16 if leaf.dtype.itemsize == 2 else xp.uint32
            bits = (leaf.view(word) if xp is np else jax.lax.bitcast_convert_type(leaf, word)).astype(xp.uint32)
        bits = bits.reshape(1) if bits.ndim == 0 else bits
        position = xp.arange(bits.size, dtype=xp.uint32).reshape(bits.shape) + xp.uint32(offset % 2**32)
        # a full contraction sums in uint32 (wrapping, as every integer op here), and fast in numpy too
        total = total + xp.tensordot(bits, position * xp.uint32(2) + xp.uint32(1), axes=bits.ndim)
        offset += bits.size
    return total[0]


def _zeros_like_tree(tree):
    return jax.tree.map(jnp.zeros_like, tree)


def _keep_unless(flag: jax.Array, new, old):
    """``new`` where ``flag``, else ``old``, leaf by leaf."""
    return jax.tree.map(lambda n, o: _select(flag, n, o), new, old)


def _all_finite(tree) -> jax.Array:
    """Whether every element is finite (and below 1.8e19 in magnitude, where a square overflows): one dot a
    leaf instead of an is-finite pass and a reduction (see :func:`global_norm_of`)."""
    return jnp.isfinite(global_norm_of(tree))


def _select(flag: jax.Array, new: jax.Array, old: jax.Array) -> jax.Array:
    """``where(flag, new, old)``, also for typed PRNG keys (selected on their key data)."""
    if jnp.issubdtype(new.dtype, jax.dtypes.prng_key):
        data = jnp.where(flag, jax.random.key_data(new), jax.random.key_data(old))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(new))
    return jnp.where(flag, new, old)


def is_list_loss(loss: Any) -> bool:
    """A sentence-transformers 4+ style loss (:class:`crossjax.losses.base.CrossEncoderLoss`): it lays a step's
    rows out as (query, documents) lists on the host and reads the logits gathered into them."""
    return callable(getattr(loss, "parts", None)) and callable(getattr(loss, "layout", None))


def gather_lists(logits: jax.Array, batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Per-pair logits (G * P, C) -> (logits [G*Q, D, C], doc mask [G*Q, D], labels [G*Q, K], query mask [G*Q])
    by the batch's ``list_index`` [G, Q, D] (each group gathers from its own P pair slots only)."""
    index = batch["list_index"]
    groups, queries, docs = index.shape
    slots = batch["pair_row"].shape[1]
    flat = jnp.where(index >= 0, index + (jnp.arange(groups, dtype=index.dtype) * slots)[:, None, None], 0)
    gathered = logits[flat.reshape(-1)].reshape(groups * queries, docs, logits.shape[-1])
    labels = batch["list_labels"]
    return (
        gathered,
        (index >= 0).reshape(groups * queries, docs),
        labels.reshape(groups * queries, labels.shape[-1]),
        batch["query_mask"].reshape(groups * queries),
    )


def make_batch_loss(loss_fn: Any, activation: Callable) -> Callable:
    """``(model, batch) -> (numerator, denominator)`` of a packed batch: the legacy per-pair losses (``fit``) or
    a list loss (the trainer's). The denominator never depends on the parameters."""
    if is_list_loss(loss_fn):
        # The compiled program is cached for the process and shared by every equal loss (callable_key leaves the
        # model out): it holds a copy of the loss without its model, or it would keep the first trainer's
        # CrossEncoder (weights, tokenizer, programs) alive after the user let it go.
        device_loss = copy.copy(loss_fn)
        if "model" in getattr(device_loss, "__dict__", {}):  # (a subclass's own model property is left alone)
            device_loss.model = None

        def list_parts(model, batch):
            logits = packed_logits(model, batch)  # the loss applies its own activation_fn
            numerator, denominator = device_loss.parts(*gather_lists(logits, batch))
            return _as_parts(numerator, denominator)

        return list_parts
    parts_fn = losses.loss_parts(loss_fn)

    def pair_parts(model, batch):
        logits = activation(packed_logits(model, batch))  # (pair slots, num_labels)
        labels, mask = batch["labels"].reshape(-1), batch["example_mask"].reshape(-1)
        if parts_fn is not None:
            numerator, denominator = parts_fn(logits, labels, mask)
        else:
            count = jnp.sum(mask).astype(jnp.float32)
            numerator = loss_fn(logits, labels, mask) * jnp.maximum(count, 1.0)
            denominator = count
        return _as_parts(numerator, denominator)

    return pair_parts


def _as_parts(numerator, denominator) -> tuple[jax.Array, jax.Array]:
    # The denominator depends on labels and masks only (class weights, row counts), never on parameters.
    return jnp.asarray(numerator, jnp.float32), jax.lax.stop_gradient(jnp.asarray(denominator, jnp.float32))


def make_eval_loss_step(graphdef, loss_fn: Any, activation: Callable, counter: CompileCounter | None = None):
    """``(params, rest, batch) -> (numerator, denominator)`` with the model in eval mode (an eval dataset's loss)."""
    batch_loss = make_batch_loss(loss_fn, activation)

    def eval_loss_step(params, rest, batch: dict):
        if counter is not None:
            counter.tick(tuple(leaf.shape for leaf in jax.tree.leaves(batch)))
        return batch_loss(nnx.merge(graphdef, params, rest, copy=True), batch)

    return eval_loss_step


def packed_logits(model: FlaxPreTrainedModel, batch: dict) -> jax.Array:
    """Logits (pair slots, num_labels) of a packed batch (the device fields of a ``PackedBatch``)."""
    return model.packed_logits(*(batch[name] for name in PACKED_INPUTS))


def make_predict_step(graphdef, counter: CompileCounter | None = None):
    """Logits (float32, one row per pair slot) of a packed batch with the model in eval mode."""

    def predict_step(params, rest, batch: dict) -> jax.Array:
        if counter is not None:  # (groups, rows, row length, pair slots): what the packer may reuse
            counter.tick((*batch["input_ids"].shape, batch["pair_row"].shape[1]))
        return packed_logits(nnx.merge(graphdef, params, rest, copy=True), batch)

    return predict_step


# ------------------------------------------------------------------------------ per-process program cache
_gc_pause = {"depth": 0, "was_enabled": False}
_gc_pause_lock = threading.Lock()


@contextlib.contextmanager
def garbage_collection_paused():
    """Python's cyclic garbage collector off for the block (as it was after it). Tracing a step allocates
    millions of short-lived objects, and each full collection meanwhile walks every object of the process (the
    user's data, torch, transformers): a paused collector traced and lowered a MiniLM train step in 0.40-0.45 s
    instead of 0.52-0.64 s. Nothing is lost: collection resumes at the next allocation after the block.

    Pauses overlap when threads call steps concurrently: the first to enter records the collector's state, the
    last to leave restores it (a pause that read another's "off" would otherwise leave it off for good)."""
    with _gc_pause_lock:
        if _gc_pause["depth"] == 0:
            _gc_pause["was_enabled"] = gc.isenabled()
            gc.disable()
        _gc_pause["depth"] += 1
    try:
        yield
    finally:
        with _gc_pause_lock:
            _gc_pause["depth"] -= 1
            if _gc_pause["depth"] == 0 and _gc_pause["was_enabled"]:
                gc.enable()


class GcPausedJit:
    """A ``jax.jit`` function called (and lowered) with :func:`garbage_collection_paused`: a call that traces
    and compiles runs without collections, a call that hits JAX's cache pays two function calls."""

    def __init__(self, jitted: Callable) -> None:
        self.jitted = jitted

    def __call__(self, *args, **kwargs):
        with garbage_collection_paused():
            return self.jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        with garbage_collection_paused():
            return self.jitted.lower(*args, **kwargs)

    def clear_cache(self) -> None:
        """Drop the compiled executables of every shape (the next call of a shape traces and compiles again)."""
        self.jitted.clear_cache()


@dataclass
class StepProgram:
    """A jitted step kept for the process (a :class:`GcPausedJit`), and the counter its traces tick."""

    fn: GcPausedJit
    counter: CompileCounter
    # what its calls measured: the price of a compile in compute (crossjax.packing.plan_call, predict only)
    economy: packing.CompileEconomy = field(default_factory=packing.CompileEconomy)

    def forget_shapes(self) -> None:
        """Drop the executables of every compiled shape (the next call of each compiles again)."""
        self.fn.clear_cache()
        self.counter.forget_shapes()

    def forget_shapes_past(self, cap: int) -> None:
        """:meth:`forget_shapes` once the program holds ``cap`` of them."""
        if len(set(self.counter.shapes)) >= cap:
            self.forget_shapes()


class _FreshWhenCopied:
    """Process-local state of a model (compiled programs, locks): a copy or pickle of the model gets a new one."""

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return (type(self), ())


class HeldPrograms(_FreshWhenCopied, dict):
    """A model's own compiled programs (key -> program), kept as long as the model lives, so that a server
    holding more models than the process-wide cache keeps (``PROGRAM_CACHE_SIZE``) never recompiles;
    :func:`clear_program_cache` empties them too. A copy or pickle of the model starts empty: it finds the
    programs again in the process cache or compiles them."""

    def __init__(self) -> None:
        super().__init__()
        _held_programs[id(self)] = self


class ArraysGuard(_FreshWhenCopied):
    """Who may read a model's arrays while ``fit`` trains it in place. A train step donates the training state,
    so the model's arrays are freed from the first step until the loop syncs the model back (evaluations,
    callbacks, checkpoints, the end). Readers (``predict``, ``save``, in any thread) run side by side while the
    arrays are valid; a step waits until the readers have dispatched their work (JAX keeps what was
    dispatched), then marks the arrays stale, and a reader that comes then gets an error that says why."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._readers = 0
        self._step_waiting = False
        self.stale = False
        self._trainer_thread: int | None = None

    @contextlib.contextmanager
    def reading(self, what: str):
        with self._changed:
            if self.stale or self._step_waiting:  # a waiting step is not starved by a stream of requests
                where = (
                    "in the training loop between two steps (outside the run's evaluations and callbacks)"
                    if threading.get_ident() == self._trainer_thread
                    else "from another thread while fit() trains this model"
                )
                raise RuntimeError(
                    f"{what}() was called {where}: each step replaces its parameters and frees the old arrays, "
                    "so there is no consistent model to read until fit returns. Call it after fit, from the "
                    "run's evaluator or callbacks (the model is synced there), or on a copy made before fit "
                    "(copy.deepcopy(model))."
                )
            self._readers += 1
        try:
            yield
        finally:
            with self._changed:
                self._readers -= 1
                self._changed.notify_all()

    def step(self) -> None:
        """Before a train step's dispatch: wait for the readers, then the model's arrays are stale until
        :meth:`synced`."""
        with self._changed:
            self._step_waiting = True
            self._trainer_thread = threading.get_ident()
            try:
                self._changed.wait_for(lambda: self._readers == 0)
            finally:
                self._step_waiting = False
            self.stale = True

    def synced(self) -> None:
        with self._changed:
            self.stale = False

# At most this many jitted train steps (and as many predict steps) are kept: each holds its compiled
# executables, one per batch shape.
PROGRAM_CACHE_SIZE = 8
# A jitted train step that holds this many compiled shapes forgets them when a fit takes it (train_program), so a
# process that fits ever other data (a notebook, a server fine-tuning per request) holds a bounded number of
# executables: tens of MB each even for a tiny model. A fit plans at most ``max_shapes`` shapes, so this
# forgets nothing in runs that repeat their data.
MAX_TRAIN_SHAPES = 16
_programs: dict[str, list[tuple[tuple, StepProgram]]] = {"train": [], "predict": [], "eval_loss": []}
_programs_lock = threading.Lock()
# every model's own programs (by id: a dict is unhashable), cleared with the process cache
_held_programs: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class _Unkeyable(Exception):
    pass


def _value_key(value: Any) -> Any:
    """A value as part of a cache key, compared by value (arrays by dtype, shape and bytes)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return (type(value).__name__, value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            array = np.asarray(value)
        except RuntimeError as e:  # a jax.Array spanning other processes' devices
            raise _Unkeyable(type(value).__name__) from e
        data = array.tobytes()
        if len(data) > 1024:  # a cached key need not hold a large array's copy
            data = hashlib.sha256(data).digest()
        return ("array", array.dtype.str, array.shape, data)
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_value_key(v) for v in value))
    raise _Unkeyable(type(value).__name__)


# A list loss's attributes that do not shape its computation: the model it was built for, and the activation
# as the user spelled it (``activation``, the resolved function, is keyed instead).
_LOSS_ATTRIBUTES_NOT_KEYED = frozenset({"model", "_activation_arg"})


def _state_key(value: Any, depth: int = 0) -> Any:
    """A loss attribute as part of a cache key: values by value, crossjax's own objects (weighting schemes,
    lambda weights) by type and attributes, other hashable callables by identity."""
    try:
        return _value_key(value)
    except _Unkeyable:
        pass
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _state_key(v, depth)) for k, v in value.items())))
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_state_key(v, depth) for v in value))
    if depth < 4 and type(value).__module__.startswith("crossjax.") and hasattr(value, "__dict__"):
        items = sorted((k, _state_key(v, depth + 1)) for k, v in vars(value).items())
        return ("object", type(value), tuple(items))
    key = callable_key(value, depth + 1) if callable(value) and depth < 4 else None
    if key is None:
        raise _Unkeyable(type(value).__name__)
    return key


def callable_key(fn: Callable, depth: int = 0) -> Any:
    """A loss or activation as a cache key: a function by identity, a ``functools.partial`` by its function and
    the values of its arguments (so ``partial(cross_entropy, class_weights=array)`` built twice from equal
    weights is the same key), a list loss (``crossjax.losses``) by its class and settings, whatever model it
    was built for (so a second trainer with an equal loss reuses the compiled step). None when it cannot be
    keyed (an unhashable callable): then nothing is reused. A user's callable object is keyed by itself and the
    values of its attributes (``loss.scale = 10`` between two fits is another program); an attribute that has
    no value key (a logger, a module) by its identity."""
    try:
        if is_list_loss(fn):
            settings = {k: v for k, v in vars(fn).items() if k not in _LOSS_ATTRIBUTES_NOT_KEYED}
            return ("loss", type(fn), _state_key(settings, depth))
        if isinstance(fn, functools.partial):
            inner = callable_key(fn.func, depth)
            if inner is None:
                return None
            args = tuple(_value_key(a) for a in fn.args)
            kwargs = tuple(sorted((k, _value_key(v)) for k, v in fn.keywords.items()))
            return ("partial", inner, args, kwargs)
        if is_stateful_object(fn):
            return ("object", fn, tuple(sorted((k, _attribute_key(v, depth)) for k, v in vars(fn).items())))
        hash(fn)
    except (_Unkeyable, TypeError):
        return None
    return ("callable", fn)


def _attribute_key(value: Any, depth: int) -> Any:
    try:
        return _state_key(value, depth + 1)
    except (_Unkeyable, TypeError):
        return ("identity", id(value))


def is_stateful_object(fn: Callable) -> bool:
    """A callable instance of a user's class (``loss.scale = 10`` may change what it computes), not a function,
    a builtin, a class or a jax-wrapped function."""
    return (
        hasattr(fn, "__dict__")
        and not isinstance(fn, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType))
        and not type(fn).__module__.startswith(("jax", "jaxlib", "numpy", "crossjax.models"))
    )


def _tree_key(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple(leaves))


def _program(kind: str, key: tuple | None, build: Callable[[], StepProgram]) -> tuple[StepProgram, bool]:
    """The cached program for ``key`` (and True), or a new one from ``build`` (and False). Keys are compared
    with ``==`` (a model's graph holds its config, which is not hashable), most recently used kept last."""
    if key is None:
        return build(), False
    with _programs_lock:
        cache = _programs[kind]
        for i, (cached_key, program) in enumerate(cache):
            if cached_key == key:
                cache.append(cache.pop(i))
                return program, True
        program = build()
        cache.append((key, program))
        del cache[:-PROGRAM_CACHE_SIZE]
        return program, False


def clear_program_cache() -> None:
    """Forget every jitted train and predict step of this process (the next fit or predict traces again),
    those that models hold too (:class:`HeldPrograms`)."""
    with _programs_lock:
        for cache in _programs.values():
            cache.clear()
        for held in list(_held_programs.values()):
            held.clear()


def train_program(
    graphdef,
    spec: OptimizerSpec,
    mask,
    loss_fn: Callable,
    activation: Callable,
    accumulation_steps: int,
    state_shardings: TrainState,
    plan: MeshPlan,
    layouts: Any = None,
) -> tuple[StepProgram, bool]:
    """The jitted ``(state, batch, healthy, hparams, gradients) -> (state, metrics, gradients)`` for these
    static choices, shared by every fit in the process that makes the same ones; True when it was already there.
    A program holding ``MAX_TRAIN_SHAPES`` compiled shapes is handed out without them. ``state`` and
    ``gradients`` (from :func:`new_gradient_buffer`, then the previous step's) are donated.

    The step's numbers (``hparams`` from :func:`optimizer_hparams`) are traced arguments, so runs that differ in
    learning rate, warm-up, length, weight decay, betas, eps or clipping norm reuse one program per batch shape.
    """
    from crossjax.runtime import enable_compilation_cache

    enable_compilation_cache()
    loss_key, activation_key = callable_key(loss_fn), callable_key(activation)
    key = None
    if loss_key is not None and activation_key is not None:
        key = (
            graphdef,
            spec,
            _tree_key(mask),
            None if layouts is None else _tree_key(layouts),
            loss_key,
            activation_key,
            int(accumulation_steps),
            _tree_key(state_shardings),
            plan.batch,
            plan.replicated,
        )

    def build() -> StepProgram:
        counter = CompileCounter()
        step = make_train_step(
            graphdef,
            functools.partial(optimizer_for, spec, mask, layouts=layouts),
            loss_fn,
            activation,
            accumulation_steps,
            counter,
            gradient_buffer=True,
        )
        fn = jax.jit(
            step,
            in_shardings=(state_shardings, plan.batch, plan.replicated, plan.replicated, state_shardings.params),
            out_shardings=(state_shardings, plan.replicated, state_shardings.params),
            donate_argnums=(0, 4),
            keep_unused=True,  # the gradient buffer is only donated, never read
        )
        return StepProgram(GcPausedJit(fn), counter)

    program, cached = _program("train", key, build)
    program.forget_shapes_past(MAX_TRAIN_SHAPES)  # a run's steps come next: bound what fits of other data leave
    return program, cached


def predict_program(graphdef, plan: MeshPlan) -> tuple[StepProgram, bool]:
    """The jitted ``(params, rest, batch) -> logits`` of a model graph (compute dtype, eval mode) on a mesh,
    shared by every CrossEncoder of the process with the same model class and config."""
    from crossjax.runtime import enable_compilation_cache

    enable_compilation_cache()

    def build() -> StepProgram:
        counter = CompileCounter()
        fn = jax.jit(make_predict_step(graphdef, counter), out_shardings=plan.replicated)
        return StepProgram(GcPausedJit(fn), counter)

    return _program("predict", (graphdef, plan.replicated), build)



def eval_loss_program(graphdef, loss_fn: Callable, plan: MeshPlan) -> tuple[StepProgram, bool]:
    """The jitted ``(params, rest, batch) -> (loss numerator, denominator)`` of a model graph (compute dtype,
    eval mode) and a loss, keyed as :func:`train_program` keys its loss (``loss.scale = 20`` between two calls
    is a new program; a loss that cannot be keyed is traced anew on every call). Like :func:`train_program`'s,
    a program holding ``MAX_TRAIN_SHAPES`` compiled shapes is handed out without them."""
    from crossjax.runtime import enable_compilation_cache

    enable_compilation_cache()
    loss_key = callable_key(loss_fn)

    def build() -> StepProgram:
        counter = CompileCounter()
        fn = jax.jit(make_eval_loss_step(graphdef, loss_fn, losses.identity, counter), out_shardings=plan.replicated)
        return StepProgram(GcPausedJit(fn), counter)

    program, cached = _program("eval_loss", None if loss_key is None else (graphdef, loss_key, plan.replicated), build)
    program.forget_shapes_past(MAX_TRAIN_SHAPES)  # evaluations of ever other data keep a bounded number of shapes
    return program, cached

# JAX's spans for tracing to a jaxpr, lowering it to MLIR and compiling it (or loading it from the persistent
# cache) in the backend (jax/_src/dispatch.py).
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
CACHE_WRITE_EVENT = "/jax/compilation_cache/cache_misses"  # recorded when an entry is written


class CompileMonitor:
    """While active (a context manager): the wall time JAX spent tracing, lowering and compiling, as the union
    of the spans it reports (an inner jit traced inside an outer one counts once), and how many programs came
    from the persistent compilation cache (``cache_hits``) or were written to it (``cache_writes``).

    It listens through ``jax.monitoring``, which reports in the thread that compiles, and counts the compiles
    of the thread that entered it only (a server's other requests compile meanwhile)."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self.cache_hits = 0
        self.cache_writes = 0
        self.thread = threading.get_ident()

    def _on_span(self, event: str, start: float, end: float, **kwargs) -> None:
        if event in COMPILE_EVENTS and threading.get_ident() == self.thread:
            self.spans.append((start, end))

    def _on_event(self, event: str, **kwargs) -> None:
        if threading.get_ident() != self.thread:
            return
        if event == CACHE_HIT_EVENT:
            self.cache_hits += 1
        elif event == CACHE_WRITE_EVENT:
            self.cache_writes += 1

    def __enter__(self) -> CompileMonitor:
        jax.monitoring.register_event_time_span_listener(self._on_span)
        jax.monitoring.register_event_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        for unregister, listener in (
            (jax.monitoring.unregister_event_time_span_listener, self._on_span),
            (jax.monitoring.unregister_event_listener, self._on_event),
        ):
            try:
                unregister(listener)
            except (AssertionError, ValueError):  # someone cleared JAX's listeners meanwhile
                pass

    @property
    def seconds(self) -> float:
        total, end = 0.0, float("-inf")
        for start, stop in sorted(self.spans):
            if stop <= end:
                continue
            total += stop - max(start, end)
            end = stop
        return total


def batch_to_global(batch: PackedBatch, plan: MeshPlan, global_groups: int | None = None) -> dict:
    """This process's groups of a global packed batch -> global arrays sharded over the data axis.

    ``global_groups`` set: ``batch`` holds only this process's groups (a multi-host stream packs just its
    own share), in the order of :func:`crossjax.parallel.process_rows`, of ``global_groups`` in all."""
    if global_groups is not None:
        return {
            name: global_batch_array(np.asarray(value), plan.batch, global_groups)
            for name, value in batch.device_fields().items()
        }
    groups = batch.input_ids.shape[0]
    if jax.process_count() > 1:
        # The groups this process's devices hold (contiguous or, on an interleaved mesh, not).
        batch = batch.take_groups(process_rows(plan.batch, groups))
    return {
        name: global_batch_array(np.asarray(value), plan.batch, groups) for name, value in batch.device_fields().items()
    }


def graphdef_with_dtype(model: FlaxPreTrainedModel, dtype, train: bool):
    """The graph of ``model`` with a compute dtype and train/eval mode (same parameters); ``model`` is left as
    it is. In the model's own dtype its graph is copied onto abstract leaves (~4 ms); another dtype rebuilds
    the model abstractly (``nnx.eval_shape`` of its constructor: ~40 ms for MiniLM, paid by a first predict)."""
    if jnp.dtype(dtype) == jnp.dtype(model.dtype):
        graphdef, state = nnx.split(model)
        abstract = nnx.merge(graphdef, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
    else:
        config = model.config
        abstract = nnx.eval_shape(
            lambda: type(model)(config, dtype=dtype, rngs=nnx.Rngs(0), scan_layers=model.scan_layers)
        )
    if train:
        abstract.train()
    else:
        abstract.eval()
    return nnx.graphdef(abstract)
