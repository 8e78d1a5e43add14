"""Preemption-safe training checkpoints with orbax: parameters, optimizer state, step, RNG, data position.

For in-memory data the data position needs no storage of its own: the batch plan is a pure function of
(seed, epoch), so the global step says exactly where in which epoch to continue. A stream
(:mod:`crossjax.streaming`) stores its position (examples consumed) and its packing plan in the JSON meta.
A fingerprint of the run (dataset size, batch size, epochs, seed, a hash of the tokenized data, ...; for a
stream what is known of it) is stored beside the state; resuming a different run
is refused with a clear error instead of silently training on a mismatched plan. Orbax writes each step to a
temporary directory and renames it when complete, so an interrupted save never replaces the last good
checkpoint. Orbax does not verify the bytes it reads back, so each save also stores exact per-array checksums
(integer sums of the bit patterns, independent of sharding and device count) that a restore checks: a
damaged checkpoint is reported, never silently trained on, and the earlier steps are left untouched.

Saves are asynchronous, but ``save`` returns only after the state was copied to host memory (orbax's default:
every array's device-to-host transfer is synchronous), so the caller may donate the state's buffers to the
next step right away.

Each step's folder also holds the model of that step as a Hugging Face folder (``<step>/model``: config,
safetensors, tokenizer, sentence-transformers' files), written inside orbax's atomic save, so a checkpoint is
loadable as a model (``CrossEncoder("<dir>/<step>")``, or ``<step>/model`` by transformers and
sentence-transformers), as sentence-transformers' and Hugging Face's checkpoint folders are.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from crossjax.parallel import processes_flagged
from crossjax.step_folders import MODEL_FOLDER
from crossjax.training import TrainState

logger = logging.getLogger("crossjax")


class _OrbaxWarningsOnly(logging.Filter):
    """orbax's own INFO lines (a dozen a checkpoint, through absl's logger) are left out of a script's
    ``logging.basicConfig(level=logging.INFO)``; its warnings and errors stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


logging.getLogger("absl").addFilter(_OrbaxWarningsOnly())


def _write_model_folder(write: Callable[[str], Any], directory: Any) -> None:
    """``write`` into ``directory`` (an orbax item folder, local or ``gs://``: a remote one gets a local export
    copied file by file). A model that cannot be written is a warning, never a lost checkpoint: the step's state
    is what a resume needs, and on several processes a failed commit would leave the others waiting for it."""
    import tempfile

    from etils import epath

    try:
        if "://" not in str(directory):
            write(str(directory))
            return
        with tempfile.TemporaryDirectory(prefix="crossjax-model-") as local:
            write(local)
            for file in Path(local).rglob("*"):
                if file.is_file():
                    target = epath.Path(directory) / str(file.relative_to(local))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(file.read_bytes())
    except Exception as e:  # noqa: BLE001 - the checkpoint's state is kept whatever the export's problem
        logger.warning("Checkpoint model folder %s not written (%s); the training state is saved", directory, e)


class _ModelFolderHandler(ocp.AsyncCheckpointHandler):
    """Writes a step's exported model into its item folder, inside orbax's atomic step save (a step folder
    that exists holds its model), in orbax's background commit like the state's arrays: ``write`` holds host
    copies of the parameters, so the next step may run meanwhile. Restoring returns the folder's path: the
    model is read by the loaders."""

    async def async_save(self, directory, args: ModelFolderSave) -> list[Any]:
        if args.write is None:
            return []

        async def write() -> None:
            _write_model_folder(args.write, directory)

        # waits for orbax's signals (the item folder created) before it writes
        return [ocp.future.CommitFutureAwaitingContractedSignals(write(), name="crossjax_model_folder")]

    def save(self, directory, args: ModelFolderSave) -> None:
        if args.write is not None:
            _write_model_folder(args.write, directory)

    def restore(self, directory, args=None) -> str:
        return str(directory)

    def metadata(self, directory) -> None:
        return None


@ocp.args.register_with_handler(_ModelFolderHandler, for_save=True, for_restore=True)
@dataclasses.dataclass
class ModelFolderSave(ocp.args.CheckpointArgs):
    """``write(folder)`` exports the model into ``folder`` (None on processes that do not write)."""

    write: Callable[[str], Any] | None = None


@dataclasses.dataclass
class _LatestAndBest:
    """orbax's preservation rule for Hugging Face's ``save_total_limit`` (``n``; None keeps all): the latest ``n``
    steps, where the step ``best()`` names (the best model's) is never deleted and counts among them, with at
    least the latest step beside it (Hugging Face's ``_sorted_checkpoints`` / ``_rotate_checkpoints``)."""

    n: int | None
    best: Callable[[], int | None]

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        steps = [info.step for info in checkpoints]
        if self.n is None:
            return [True] * len(steps)
        best = self.best()
        latest = sorted(steps)[-self.n :]
        if best in steps and best not in latest:
            latest = [best, *sorted(steps)[-max(self.n - 1, 1) :]]
        return [step in latest for step in steps]


class CheckpointMismatchError(ValueError):
    """The checkpoint directory holds a checkpoint of another run, or one that cannot be read."""


class CheckpointCorruptError(CheckpointMismatchError):
    """The latest checkpoint is damaged or incomplete: unreadable files, or data failing its checksums."""


class CheckpointInUseError(ValueError):
    """Another process is writing checkpoints into the same directory now."""


# The checkpoint directories this process writes into: path -> [open directory descriptor (holding the lock), users]
_locked_directories: dict[str, list[int]] = {}
_locked_directories_guard = threading.Lock()


def _lock_directory(directory: str) -> str | None:
    """Hold an exclusive ``flock`` on a local checkpoint directory while a run writes into it, so a second run
    of another process is refused up front: two runs' orbax saves into one directory deleted each other's
    temporary folders and one run died in a 300-line orbax traceback. Runs of one process share the lock (a
    run interrupted before it closed its checkpointer must not block the next one); only process 0 of a
    multi-process run takes it (all of them write into one directory). Where the file system has no locks, or
    the directory is a URL, nothing is locked."""
    if "://" in directory or jax.process_index() != 0:
        return None
    import fcntl

    with _locked_directories_guard:
        held = _locked_directories.get(directory)
        if held is not None:
            held[1] += 1
            return directory
        try:
            os.makedirs(directory, exist_ok=True)
            descriptor = os.open(directory, os.O_RDONLY)
        except OSError:  # an unusable folder is refused by the run's own checks, with their message
            return None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise CheckpointInUseError(
                f"Another process is writing checkpoints into {directory} now (its run holds the directory's lock): "
                "give each run its own checkpoint folder (checkpoint_path, or the trainer's output_dir), or wait "
                "for that run to end before resuming from it"
            ) from None
        except OSError:  # no locks on this file system (some network mounts): run unlocked
            os.close(descriptor)
            return None
        _locked_directories[directory] = [descriptor, 1]
        return directory


def _unlock_directory(directory: str | None) -> None:
    if directory is None:
        return
    with _locked_directories_guard:
        held = _locked_directories.get(directory)
        if held is None:
            return
        held[1] -= 1
        if held[1] == 0:
            del _locked_directories[directory]
            os.close(held[0])  # (closing the descriptor releases the lock)


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


def data_fingerprint(tokenized, labels) -> str:
    """A short hash of the tokenized pairs and labels: resuming on other data is refused even at equal size."""
    digest = hashlib.sha256()
    for part in (tokenized.offsets, tokenized.flat_input_ids, tokenized.flat_token_type_ids, labels):
        part = np.ascontiguousarray(part)
        digest.update(f"{part.dtype.str}{part.shape}".encode())
        digest.update(part.tobytes())
    return digest.hexdigest()[:16]


def values_fingerprint(columns: list[list[Any]]) -> str:
    """A short hash of columns of Python values (texts, lists of texts, labels) in order."""
    digest = hashlib.sha256()
    for column in columns:
        digest.update(f"column of {len(column)}".encode())
        for value in column:
            value = value.tolist() if hasattr(value, "tolist") else value  # numpy and torch values as Python's
            digest.update(repr(value).encode())
            digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _leaf_checksum(x) -> jax.Array:
    """Two uint32 sums over ``x``'s bit patterns: plain, and weighted by position (catches moved data).

    Integer sums wrap exactly, so the result does not depend on how ``x`` is sharded or reduced.
    """
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        bits = x.astype(jnp.uint32)
    else:
        unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[jnp.dtype(x.dtype).itemsize]
        bits = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
    position = jnp.zeros(x.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(x.ndim)):
        position = position + jax.lax.broadcasted_iota(jnp.uint32, x.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= x.shape[axis]
    weight = position * jnp.uint32(0x9E3779B1) + jnp.uint32(1)
    return jnp.stack([jnp.sum(bits, dtype=jnp.uint32), jnp.sum(bits * weight, dtype=jnp.uint32)])


@functools.lru_cache(maxsize=8)
def _checksum_fn(mesh: Mesh | None):
    # Replicated outputs: every process of a multi-process run can read them.
    out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
    return jax.jit(lambda tree: jax.tree.map(_leaf_checksum, tree), out_shardings=out)


def state_checksums(pure: dict) -> dict[str, list[int]]:
    """``{path: [sum, weighted sum]}`` of every array of a (pure, key-free) train state."""
    shardings = [getattr(x, "sharding", None) for x in jax.tree.leaves(pure)]
    mesh = next((s.mesh for s in shardings if isinstance(s, NamedSharding)), None)
    sums = jax.device_get(_checksum_fn(mesh)(pure))
    return {jax.tree_util.keystr(path): [int(v) for v in np.asarray(s)] for path, s in _flatten(sums)}


def _flatten(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


def _first_line(e: Exception, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = text if len(text) <= limit else text[:limit] + "..."
    return f"{type(e).__name__}: {text}"


def _as_pure(state: TrainState) -> dict:
    return {
        "step": state.step,
        "params": state.params,
        "rest": _keys_to_data(state.rest),
        "opt_state": state.opt_state,
    }


# Fingerprint keys newer than the first checkpoints (crossjax 0.x, session 14): absent from older ones.
# (decay_rule: an older checkpoint's run decayed with fit's rule, and its resume keeps that rule: see fit_loop)
LATER_FINGERPRINT_KEYS = frozenset(
    {"scan_layers", "groups", "max_length", "stream_files", "stream_shuffle", "decay_rule", "data", "model_shape"}
)
# Settings added later whose value before was fixed: a checkpoint without them was written with these values.
LATER_FINGERPRINT_DEFAULTS = {"scheduler_kwargs": None, "optimizer": "adamw", "optimizer_options": []}


class TrainCheckpointer:
    """``directory``'s step folders, the latest ``total_limit`` of them kept (all for None or <= 0), and the one
    ``keep_step()`` names (the trainer's best model's, as Hugging Face's rotation keeps it)."""

    def __init__(
        self,
        directory: str,
        save_steps: int,
        total_limit: int | None,
        fingerprint: dict[str, Any],
        keep_step: Callable[[], int | None] = lambda: None,
        model_only: bool = False,
    ):
        self.directory = directory if "://" in str(directory) else str(Path(directory).expanduser().resolve())
        self.fingerprint = fingerprint
        self.model_only = model_only  # steps of the exported model and the JSON meta only (no resume from them)
        # No ``save_device_host_concurrent_bytes``: with it orbax would copy some arrays to the host only after
        # ``save`` returned, while the train step may already have donated (overwritten) their buffers.
        # sentence-transformers' fit deletes old checkpoints only for a limit > 0: 0 or less keeps them all.
        keep = int(total_limit) if total_limit is not None and total_limit > 0 else None
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=1,
            enable_async_checkpointing=True,
            create=True,
            preservation_policy=_LatestAndBest(keep, keep_step),
        )
        self._locked = _lock_directory(self.directory)
        try:
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        except BaseException:
            _unlock_directory(self._locked)
            raise

    def restore_latest(self, state: TrainState, shardings: TrainState) -> tuple[TrainState, dict] | None:
        """The latest step's state and meta (``meta["best_params"]``: the host parameters saved with it, if any).
        A refusal is agreed between processes before orbax's restore, which waits for all of them: one process
        refusing alone left the others waiting there for ever."""
        step = self.manager.latest_step()
        if step is None:
            return None
        try:
            meta = self._resumable_meta(step)
            refusal = None
        except CheckpointMismatchError as e:
            refusal = e
        refusing = processes_flagged(refusal is not None)
        if refusal is not None:
            raise refusal
        if refusing:
            raise CheckpointMismatchError(
                f"process(es) {refusing} of this run refused to resume the checkpoint at step {step} in "
                f"{self.directory} (their error says why): every process must resume the same run"
            )
        return self._restore_state(step, meta, state, shardings)

    def _resumable_meta(self, step: int) -> dict:
        """The meta of checkpoint ``step``, or the error that says why this run cannot resume it."""
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - orbax raises many types for unreadable files
            raise CheckpointCorruptError(
                f"The checkpoint at step {step} in {self.directory} cannot be read ({_first_line(e)}). "
                + self._recovery_hint(step)
            ) from e
        if meta.get("model_only"):
            raise CheckpointMismatchError(
                f"The checkpoint at step {step} in {self.directory} was saved with save_only_model=True: it holds "
                f"the model ({self.directory}/{step}/{MODEL_FOLDER}), not the optimizer state and data position a "
                "resume needs (as Hugging Face's). Load it as a model, or train afresh in another output_dir."
            )
        saved = meta.get("fingerprint", {})
        # Keys added to the fingerprint later are compared only where the checkpoint has them, so checkpoints
        # written before still resume.
        saved = {**LATER_FINGERPRINT_DEFAULTS, **saved}
        diff = {
            k: (saved.get(k), v)
            for k, v in self.fingerprint.items()
            if saved.get(k) != v and (k in saved or k not in LATER_FINGERPRINT_KEYS)
        }
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            hint = ""
            shapes = diff.get("packed_shapes")
            if (
                shapes and shapes[0] and shapes[1] and shapes[0][0][0] != shapes[1][0][0]
                and "gradient_accumulation_steps" not in diff
            ):
                hint = (
                    f" Its steps were laid out for {shapes[0][0][0]} groups (data-parallel devices x gradient "
                    f"accumulation), this run has {shapes[1][0][0]}: resume on as many devices."
                )
            if "stream_shuffle" in diff:
                hint += (
                    " The stream is shuffled in another order than the checkpoint's: a stream shuffled without a "
                    "seed (shuffle(buffer_size=...)) draws a new order each time it is made; shuffle it with a seed "
                    "to resume it."
                )
            if {"epochs", "max_steps"} & set(diff):
                hint += (
                    " A resume continues the run the checkpoint belongs to, whose learning-rate schedule and data "
                    "order were laid out for its length (Hugging Face's Trainer lets a resume change it)."
                )
            raise CheckpointMismatchError(
                f"The checkpoint in {self.directory} belongs to a different run ({details}).{hint} Use another "
                "checkpoint folder (fit's checkpoint_path, the trainer's output_dir), or the same data and settings "
                "to resume."
            )
        return meta

    def _restore_state(self, step: int, meta: dict, state: TrainState, shardings: TrainState):
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
            raise CheckpointCorruptError(
                f"The checkpoint at step {step} in {self.directory} could not be restored: its files are damaged "
                f"or incomplete, or it was written for another model or optimizer ({_first_line(e)}). "
                + self._recovery_hint(step)
            ) from e
        expected = meta.get("checksums")
        if expected is not None:  # checkpoints of older crossjax versions have none
            actual = state_checksums(restored)
            bad = sorted(k for k in set(expected) | set(actual) if expected.get(k) != actual.get(k))
            if bad:
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                raise CheckpointCorruptError(
                    f"The checkpoint at step {step} in {self.directory} is corrupt: the data read back for "
                    f"{len(bad)} array(s) ({shown}) does not match the checksums stored when it was saved. "
                    + self._recovery_hint(step)
                )
        if meta.get("has_best_params"):
            like = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state.params)  # host arrays of its shapes
            try:
                meta["best_params"] = self.manager.restore(
                    step, args=ocp.args.Composite(best_params=ocp.args.StandardRestore(like))
                )["best_params"]
            except Exception as e:  # noqa: BLE001
                raise CheckpointCorruptError(
                    f"The best model's parameters saved with step {step} in {self.directory} could not be read "
                    f"({_first_line(e)}). " + self._recovery_hint(step)
                ) from e
        new_state = TrainState(
            step=restored["step"],
            params=restored["params"],
            rest=_data_to_keys(restored["rest"], state.rest),
            opt_state=restored["opt_state"],
        )
        return new_state, meta

    def _recovery_hint(self, step: int) -> str:
        earlier = [s for s in self.manager.all_steps() if s < step]
        where = f"{self.directory}/{step}"
        if earlier:
            return (
                f"Nothing was deleted; the earlier checkpoint step(s) {sorted(earlier)} are kept: delete the "
                f"folder {where} to resume from step {max(earlier)}, or use a new checkpoint_path."
            )
        return f"Nothing was deleted. Delete the folder {where} to start afresh, or use a new checkpoint_path."

    def save(
        self,
        step: int,
        state: TrainState,
        extra: dict[str, Any],
        best_params: Any = None,
        write_model: Callable[[str], Any] | None = None,
    ) -> None:
        """Save ``state`` and the JSON ``extra``; ``best_params`` (host arrays shaped as the parameters: the
        trainer's best model so far) go with it, so a resumed run still ends with that model. ``write_model``
        exports the step's model into the step's ``model`` folder (every process calls ``save``; pass None on
        those that do not write)."""
        meta = {"step": int(step), "fingerprint": self.fingerprint, **extra}
        items: dict[str, Any] = {MODEL_FOLDER: ModelFolderSave(write_model)}
        if self.model_only:
            meta["model_only"] = True
            self.manager.save(int(step), args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items))
            return
        pure = _as_pure(state)
        meta["checksums"] = state_checksums(pure)
        items["state"] = ocp.args.StandardSave(pure)
        if best_params is not None:
            meta["has_best_params"] = True
            items["best_params"] = ocp.args.StandardSave(best_params)
        self.manager.save(int(step), args=ocp.args.Composite(meta=ocp.args.JsonSave(meta), **items))

    def wait(self) -> None:
        """Until every save so far is complete on disk (its step folder exists, model included)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
            self.manager.close()
        finally:
            _unlock_directory(self._locked)
            self._locked = None
