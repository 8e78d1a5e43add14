"""The trainer core: a pure ``train_step(state, batch) -> (state, metrics)`` jitted once per bucket shape.

Optimisation follows sentence-transformers' legacy ``fit`` exactly: ``torch.optim.AdamW`` (betas, eps,
amsgrad as given) with no weight decay where the Hugging Face name contains "bias", "LayerNorm.bias" or
"LayerNorm.weight", torch's global-norm clipping, a per-step learning-rate schedule.
A non-finite loss, gradient or updated parameter leaves the state untouched, and so does every later step
(the ``healthy`` flag threads through the steps on the device, so nothing waits for the host), until the
host fetches the metrics and stops the run: the parameters stay those of the last finite step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct

from crossjax import losses
from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.params import hf_name_of
from crossjax.packing import PackedBatch
from crossjax.parallel import MeshPlan, global_batch_array, process_rows

logger = logging.getLogger("crossjax")

PACKED_INPUTS = ("input_ids", "token_type_ids", "segment_ids", "position_ids", "pair_row", "pair_start")
# sentence-transformers' rule, applied to Hugging Face parameter names.
NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


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


def decay_mask(model: FlaxPreTrainedModel, params) -> Any:
    """True where AdamW applies weight decay: sentence-transformers' rule on the Hugging Face names, i.e.
    every parameter whose HF name contains none of ``NO_DECAY`` (so DistilBERT's ``sa_layer_norm.weight``
    IS decayed, as in sentence-transformers). Same tree structure as ``params`` (an ``nnx.State``).

    A parameter the family's table cannot name is a bug in the family, so it raises instead of being decayed.
    """
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
        decay = not any(nd in name for nd in NO_DECAY)
        return jax.tree.map(lambda _: decay, variable)

    return jax.tree_util.tree_map_with_path(
        decays, params, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def clip_by_global_norm_like_torch(max_norm: float) -> optax.GradientTransformation:
    """``torch.nn.utils.clip_grad_norm_``: scale by min(1, max_norm / (norm + 1e-6))."""

    def update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class ScaleByTorchAmsgradState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any
    nu_max: Any


def scale_by_amsgrad_like_torch(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """``torch.optim.AdamW(amsgrad=True)``'s direction: the running maximum is taken over the raw second
    moment, and only then bias-corrected with the current step, ``m_hat / (sqrt(max_v) / sqrt(1 - b2^t) + eps)``
    (``optax.scale_by_amsgrad`` takes the maximum of the bias-corrected moments instead)."""

    def init(params):
        zeros = optax.tree.zeros_like(params)
        return ScaleByTorchAmsgradState(jnp.zeros([], jnp.int32), zeros, zeros, zeros)

    def update(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
        count = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        sqrt_bc2 = jnp.sqrt(1.0 - jnp.asarray(b2, jnp.float32) ** count.astype(jnp.float32))
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) / sqrt_bc2.astype(v.dtype) + eps), mu_hat, nu_max)
        return out, ScaleByTorchAmsgradState(count, mu, nu, nu_max)

    return optax.GradientTransformation(init, update)


def make_optimizer(
    schedule: optax.Schedule,
    weight_decay: float,
    mask,
    max_grad_norm: float | None,
    adam_eps: float = 1e-8,
    adam_betas: tuple[float, float] = (0.9, 0.999),
    amsgrad: bool = False,
) -> optax.GradientTransformation:
    """torch's clipping then ``torch.optim.AdamW``: decoupled decay ``lr * wd * p`` where ``mask`` is True."""
    b1, b2 = (float(b) for b in adam_betas)
    parts = []
    if max_grad_norm is not None and max_grad_norm > 0:
        parts.append(clip_by_global_norm_like_torch(float(max_grad_norm)))
    if amsgrad:
        parts += [
            scale_by_amsgrad_like_torch(b1, b2, adam_eps),
            optax.add_decayed_weights(weight_decay, mask),
            optax.scale_by_learning_rate(schedule),
        ]
    else:
        parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=adam_eps, weight_decay=weight_decay, mask=mask))
    return optax.chain(*parts)


@dataclass
class CompileCounter:
    """Counts traces (= compilations) of a jitted function: the Python body only runs while tracing."""

    count: int = 0
    shapes: list = None

    def __post_init__(self):
        self.shapes = []

    def tick(self, shape) -> None:
        self.count += 1
        self.shapes.append(tuple(shape))


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
    tx: optax.GradientTransformation,
    loss_fn: Callable,
    activation: Callable,
    accumulation_steps: int = 1,
    counter: CompileCounter | None = None,
):
    """The pure step ``(state, batch, healthy) -> (state, metrics)`` on a packed batch (:mod:`crossjax.packing`).
    With accumulation, the batch's groups {i*k + j} form micro-batch j, so the split stays local to each data
    shard. ``healthy`` is the previous
    step's ``metrics["finite"]`` (True at the start): once a step was not finite, no later step changes the
    parameters or optimizer state either.

    The loss of a step is ``sum(numerators) / sum(denominators)`` over its micro-batches, and its gradient
    ``sum(grad numerators) / sum(denominators)``: for the losses crossjax ships (:func:`losses.loss_parts`:
    BCE with ``pos_weight``, cross-entropy with class weights and label smoothing, MSE) that is exactly the
    loss of the whole batch. Any other callable is taken as a mean over its real rows: its numerator is
    ``loss * max(rows, 1)`` and its denominator the row count, exact for per-row means only.
    """
    k = int(accumulation_steps)
    parts_fn = losses.loss_parts(loss_fn)

    def micro_numerator(params, rest, micro):
        model = nnx.merge(graphdef, params, rest, copy=True)
        logits = activation(packed_logits(model, micro))  # (pair slots, num_labels)
        labels, mask = micro["labels"].reshape(-1), micro["example_mask"].reshape(-1)
        if parts_fn is not None:
            numerator, denominator = parts_fn(logits, labels, mask)
        else:
            count = jnp.sum(mask).astype(jnp.float32)
            numerator = loss_fn(logits, labels, mask) * jnp.maximum(count, 1.0)
            denominator = count
        # The denominator depends on labels and mask only (class weights, row counts), never on parameters.
        denominator = jax.lax.stop_gradient(jnp.asarray(denominator, jnp.float32))
        return jnp.asarray(numerator, jnp.float32), (denominator, nnx.state(model, nnx.Not(nnx.Param)))

    grad_fn = jax.value_and_grad(micro_numerator, has_aux=True)

    def train_step(state: TrainState, batch: dict, healthy: jax.Array) -> tuple[TrainState, dict]:
        if counter is not None:
            counter.tick(batch["input_ids"].shape)
        if k == 1:
            (numerator, (denominator, rest)), grads = grad_fn(state.params, state.rest, batch)
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
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params_finite = jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda p: jnp.isfinite(p).all(), params))
        finite = healthy & jnp.isfinite(loss) & jnp.isfinite(grad_norm) & params_finite

        def keep_if_finite(new, old):
            return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)

        new_state = TrainState(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            rest=rest,
            opt_state=keep_if_finite(opt_state, state.opt_state),
        )
        return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

    return train_step


def packed_logits(model: FlaxPreTrainedModel, batch: dict) -> jax.Array:
    """Logits (pair slots, num_labels) of a packed batch (the device fields of a ``PackedBatch``)."""
    return model.packed_logits(*(batch[name] for name in PACKED_INPUTS))


def make_predict_step(graphdef, counter: CompileCounter | None = None):
    """Logits (float32, one row per pair slot) of a packed batch with the model in eval mode."""

    def predict_step(params, rest, batch: dict) -> jax.Array:
        if counter is not None:
            counter.tick(batch["input_ids"].shape)
        return packed_logits(nnx.merge(graphdef, params, rest, copy=True), batch)

    return predict_step


def batch_to_global(batch: PackedBatch, plan: MeshPlan) -> dict:
    """This process's groups of a global packed batch -> global arrays sharded over the data axis."""
    groups = batch.input_ids.shape[0]
    if jax.process_count() > 1:
        # The groups this process's devices hold (contiguous or, on an interleaved mesh, not).
        batch = batch.take_groups(process_rows(plan.batch, groups))
    return {
        name: global_batch_array(np.asarray(value), plan.batch, groups) for name, value in batch.device_fields().items()
    }


def graphdef_with_dtype(model: FlaxPreTrainedModel, dtype, train: bool):
    """The graph of ``model`` rebuilt with another compute dtype and train/eval mode (same parameters)."""
    config = model.config
    abstract = nnx.eval_shape(
        lambda: type(model)(config, dtype=dtype, rngs=nnx.Rngs(0), scan_layers=model.scan_layers)
    )
    if train:
        abstract.train()
    else:
        abstract.eval()
    return nnx.graphdef(abstract)
