"""Preemption-safe training checkpoints with orbax: parameters, optimizer state, step, RNG, data position.

The data position needs no storage of its own: the batch plan is a pure function of (seed, epoch), so the
global step says exactly where in which epoch to continue. A fingerprint of the run (dataset size, batch
size, epochs, seed, ...) is stored beside the state; resuming a different run is refused with a clear
error instead of silently training on a mismatched plan. Orbax writes each step to a temporary directory
and renames it when complete, so an interrupted save never replaces the last good checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from crossjax.training import TrainState

logger = logging.getLogger("crossjax")


class CheckpointMismatchError(ValueError):
    """The checkpoint directory holds a checkpoint of another run, or one that cannot be read."""


def _keys_to_data(tree):
    return jax.tree.map(
        lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree
    )


def _data_to_keys(tree, like):
    return jax.tree.map(
        lambda x, ref: (
            jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
            if jnp.issubdtype(ref.dtype, jax.dtypes.prng_key)
            else x
        ),
        tree,
        like,
    )


def _as_pure(state: TrainState) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "rest": _keys_to_data(state.rest),
        "opt_state": state.opt_state,
    }


class TrainCheckpointer:
    def __init__(self, directory: str, save_steps: int, total_limit: int | None, fingerprint: dict[str, Any]):
        self.directory = directory if "://" in str(directory) else str(Path(directory).expanduser().resolve())
        self.fingerprint = fingerprint
        options = ocp.CheckpointManagerOptions(
            max_to_keep=total_limit, save_interval_steps=1, enable_async_checkpointing=True, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def restore_latest(self, state: TrainState, shardings: TrainState) -> tuple[TrainState, dict] | None:
        step = self.manager.latest_step()
        if step is None:
            return None
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {self.directory} cannot be read ({type(e).__name__}: {e}). "
                "Delete that step's folder to resume from an earlier one, or use a new checkpoint_path."
            ) from e
        saved = meta.get("fingerprint", {})
        diff = {k: (saved.get(k), v) for k, v in self.fingerprint.items() if saved.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise CheckpointMismatchError(
                f"The checkpoint in {self.directory} belongs to a different run ({details}). Use another "
                "checkpoint_path, or the same data and settings to resume."
            )
        pure = _as_pure(state)
        pure_shardings = {
            "step": shardings.step,
            "params": shardings.params,
            "rest": shardings.rest,
            "opt_state": shardings.opt_state,
        }
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), pure, pure_shardings
        )
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:  # noqa: BLE001
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {self.directory} does not fit this model and optimizer "
                f"({type(e).__name__}: {e})."
            ) from e
        new_state = TrainState(
            step=restored["step"],
            params=restored["params"],
            rest=_data_to_keys(restored["rest"], state.rest),
            opt_state=restored["opt_state"],
        )
        return new_state, meta

    def save(self, step: int, state: TrainState, extra: dict[str, Any]) -> None:
        meta = {"step": int(step), "fingerprint": self.fingerprint, **extra}
        self.manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(_as_pure(state)), meta=ocp.args.JsonSave(meta)
            ),
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
