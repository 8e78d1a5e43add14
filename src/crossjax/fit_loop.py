"""The ``fit`` loop: data plan -> jitted train step -> evaluation, saving and checkpoints.

It keeps sentence-transformers' legacy semantics (steps = batches per epoch x epochs, evaluation every
``evaluation_steps`` batches of an epoch and at each epoch's end, best model to ``output_path``), and the JAX
habits: the step is compiled once per bucket shape, metrics stay on the device until ``logging_steps``
steps have run, the state's buffers are donated. The data comes from one of two sources with the same
interface: examples in memory (tokenized once, the whole run planned up front) or a stream
(``datasets.IterableDataset``, generators: read lazily for ``max_steps`` steps, see :mod:`crossjax.streaming`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import numbers
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax import data as data_lib
from crossjax import logs, losses, packing, streaming, training
from crossjax.data import FLOAT32_MAX
from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.export import atomic_directory_write, check_local_path, ensure_writable_directory
from crossjax.parallel import MeshPlan, global_batch_array, process_rows, processes_differing, put_global
from crossjax.runtime import PreemptionNotice, StepInterrupts, TrainingPreempted, is_main_process, progress_bar
from crossjax.schedules import make_schedule, scheduler_options
from crossjax.step_folders import holds_checkpoints

logger = logging.getLogger("crossjax")


class ParametersOverflowError(FloatingPointError):
    """A step's update made parameters non-finite although its loss and gradient were finite: the model
    object holds those parameters (see :mod:`crossjax.training`), so it must not train or predict on."""


@dataclass
class FitConfig:
    epochs: int = 1
    scheduler: str = "WarmupLinear"
    scheduler_kwargs: dict[str, Any] | None = None  # transformers' lr_scheduler_kwargs (the trainer's schedules)
    warmup_steps: int = 10000
    learning_rate: float = 2e-5
    adam_eps: float = 1e-8
    adam_betas: tuple[float, float] = (0.9, 0.999)
    amsgrad: bool = False
    optimizer: str = "adamw"  # or sgd, adagrad, rmsprop, adafactor (crossjax.optimizers)
    optimizer_options: tuple[tuple[str, Any], ...] = ()  # crossjax.optimizers.optimizer_options
    weight_decay: float = 0.01
    decay_rule: str = "fit"  # which parameters weight_decay applies to (training.decay_mask): "fit" or "trainer"
    # (regex, learning rate) pairs: sentence-transformers' learning_rate_mapping (training.learning_rate_scales)
    learning_rate_mapping: tuple[tuple[str, float], ...] = ()
    # fit's evaluation cadence: every evaluation_steps steps of an epoch (counted from the epoch's start) and at
    # each epoch's end. A facade with its own flow (FitTarget.on_step: the trainer's) decides instead.
    evaluation_steps: int = 0
    output_path: str | None = None
    save_best_model: bool = True
    max_grad_norm: float | None = 1.0
    compute_dtype: Any = jnp.float32
    show_progress_bar: bool = True
    gradient_accumulation_steps: int = 1
    seed: int = 0
    logging_steps: int = 10
    checkpoint_path: str | None = None
    checkpoint_save_steps: int = 500
    checkpoint_save_total_limit: int | None = 2
    # checkpoints of the model only (the trainer's save_only_model): no optimizer state, so no resume from them
    checkpoint_model_only: bool = False
    # checkpoints only where the trainer's flow asks (its save_strategy="no"), none at the run's end, no resume
    checkpoint_on_request: bool = False
    group_by_length: bool = False
    max_steps: int | None = None  # optimizer steps: required for streams, a cap otherwise
    batch_size: int | None = None  # a stream's batch size (default 16); overrides a loader's otherwise
    shuffle_buffer_size: int = 0  # streams only: seeded block shuffle of this many examples (0: off)
    # In-memory only: steps of one packed shape holding about this many tokens (all devices), pairs per step
    # varying (fairseq's max_tokens); None: batch_size pairs a step.
    max_tokens_per_step: int | None = None
    evaluate_on_start: bool = False  # the Trainer's eval_on_start: once before the first step
    log_dir: str | None = None  # metrics.jsonl, TensorBoard events, curves PNG (see crossjax.logs); default output_path

    def validate(self) -> None:
        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

        for name in ("warmup_steps", "evaluation_steps"):  # a whole number computed as a float (len(dl) * 0.1 * 10)
            value = getattr(self, name)
            if isinstance(value, (float, np.floating)) and float(value).is_integer():
                setattr(self, name, int(value))
        positive_int("epochs", self.epochs)
        positive_int("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps > np.iinfo(np.int32).max:
            raise ValueError(f"warmup_steps must be at most 2**31 - 1 (steps count in int32), got {self.warmup_steps}")
        positive_int("evaluation_steps", self.evaluation_steps, 0)
        positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        positive_int("logging_steps", self.logging_steps)
        positive_int("checkpoint_save_steps", self.checkpoint_save_steps)
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps)
        if self.batch_size is not None:
            positive_int("batch_size", self.batch_size)
        positive_int("shuffle_buffer_size", self.shuffle_buffer_size, 0)
        if self.max_tokens_per_step is not None:
            positive_int("max_tokens_per_step", self.max_tokens_per_step)
            if self.group_by_length:
                raise ValueError("max_tokens_per_step and group_by_length cannot be combined")
        if self.max_grad_norm is not None and not (_is_real(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(
                f"max_grad_norm must be > 0, or None for no clipping; got {self.max_grad_norm!r} (torch's "
                "clip_grad_norm_ with 0 zeroes every gradient, and a negative norm flips them)"
            )
        if not (math.isfinite(self.learning_rate) and 0 <= self.learning_rate <= FLOAT32_MAX) or (
            # below float32's smallest normal number XLA computes 0 (subnormals are flushed): would train nothing
            0 < self.learning_rate < np.finfo(np.float32).tiny
        ):
            raise ValueError(
                f"optimizer_params['lr'] must be a number >= 0 that float32 can hold (the step computes in "
                f"float32), got {self.learning_rate!r}"
            )
        # "~/out" once for every writer (the logs and evaluators' CSVs as well as the model's save)
        if isinstance(self.output_path, str | os.PathLike):
            self.output_path = os.path.expanduser(self.output_path)
        if isinstance(self.log_dir, str | os.PathLike):
            self.log_dir = os.path.expanduser(self.log_dir)
        if isinstance(self.checkpoint_path, str | os.PathLike) and "://" not in str(self.checkpoint_path):
            self.checkpoint_path = os.path.expanduser(self.checkpoint_path)
        check_local_path(self.output_path, "output_path")
        check_local_path(self.log_dir, "log_dir")
        if not (_is_real(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not (math.isfinite(self.adam_eps) and self.adam_eps >= 0):
            raise ValueError(f"optimizer_params['eps'] must be >= 0, got {self.adam_eps!r}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"optimizer_params['betas'] must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not isinstance(self.amsgrad, bool):
            raise ValueError(f"optimizer_params['amsgrad'] must be True or False, got {self.amsgrad!r}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# torch.optim.AdamW's keyword arguments that only choose an implementation, not the arithmetic.
_IMPLEMENTATION_SWITCHES = ("foreach", "fused", "capturable", "differentiable")
# torch.optim.AdamW's defaults, used where optimizer_params leaves a key out (as torch does).
_TORCH_ADAMW_DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}


def _torch_optimizer_classes() -> dict[str, list[Any]]:
    """The torch optimizer classes crossjax implements, by crossjax's optimizer key: torch.optim's AdamW, SGD,
    Adagrad and RMSprop, transformers' Adafactor and old AdamW (gone in transformers 5). Looked up only where
    already imported: a class the caller holds comes from an imported module, and crossjax never imports torch."""
    import sys

    classes: dict[str, list[Any]] = {key: [] for key in ("adamw", "sgd", "adagrad", "rmsprop", "adafactor")}
    torch = sys.modules.get("torch")  # (None where a process blocked its import)
    if torch is not None:
        optim = torch.optim
        for key, name in (("adamw", "AdamW"), ("sgd", "SGD"), ("adagrad", "Adagrad"), ("rmsprop", "RMSprop")):
            classes[key].append(getattr(optim, name))
    module = sys.modules.get("transformers.optimization")
    for key, name in (("adamw", "AdamW"), ("adafactor", "Adafactor")):
        found = getattr(module, name, None)
        if found is not None:
            classes[key].append(found)
    return classes


# torch's default learning rates of the other optimizers (fit passes optimizer_params to the class as torch does).
_TORCH_DEFAULT_LR = {"sgd": 1e-3, "adagrad": 1e-2, "rmsprop": 1e-2}


def optimizer_settings(optimizer_class: Any, optimizer_params: dict[str, Any] | None) -> dict[str, Any]:
    """``fit``'s ``optimizer_class``/``optimizer_params`` as FitConfig fields, checked before any work:
    :func:`adamw_settings` for AdamW (and ``None``); for ``torch.optim.SGD``, ``Adagrad``, ``RMSprop`` and
    transformers' ``Adafactor`` (``relative_step=False, scale_parameter=False``, no ``beta1``), their ``lr`` and
    options (:func:`crossjax.optimizers.optimizer_options`), weight decay set per parameter group by fit as in
    sentence-transformers' ``old_fit``."""
    key = next((k for k, found in _torch_optimizer_classes().items() if any(optimizer_class is c for c in found)), None)
    if optimizer_class is None or key == "adamw":
        return {"optimizer": "adamw", **adamw_settings(optimizer_class, optimizer_params)}
    if key is None:
        name = getattr(optimizer_class, "__qualname__", None) or repr(optimizer_class)
        raise ValueError(
            f"optimizer_class={name} is not supported: crossjax implements torch.optim.AdamW, SGD, Adagrad, RMSprop "
            "and transformers' Adafactor (pass one of those, or None for AdamW)"
        )
    params = {"lr": 2e-5} if optimizer_params is None else dict(optimizer_params)
    for switch in _IMPLEMENTATION_SWITCHES:
        params.pop(switch, None)
    if params.pop("maximize", False):
        raise ValueError("optimizer_params['maximize']=True is not supported: fit minimises the loss")
    if key == "adafactor":
        if params.pop("relative_step", True) or params.pop("warmup_init", False) or params.pop("beta1", None):
            raise ValueError(
                "Adafactor in crossjax takes a learning rate and fit's schedule: pass optimizer_params with lr, "
                "relative_step=False, scale_parameter=False (and no warmup_init or beta1), as Hugging Face's "
                "Trainer does"
            )
        params.setdefault("scale_parameter", True)  # transformers' default, refused by optimizer_options
    learning_rate = params.pop("lr", _TORCH_DEFAULT_LR.get(key))
    if learning_rate is None:
        raise ValueError(f"optimizer_params needs an lr for {optimizer_class.__qualname__}")
    if "weight_decay" in params and _real("weight_decay", params["weight_decay"]) < 0:
        raise ValueError(f"optimizer_params['weight_decay'] must be >= 0, got {params['weight_decay']!r}")
    from crossjax.optimizers import optimizer_options

    return {
        "learning_rate": _real("lr", learning_rate),
        "optimizer": key,
        "optimizer_options": optimizer_options(key, params),
    }


def adamw_settings(optimizer_class: Any, optimizer_params: dict[str, Any] | None) -> dict[str, Any]:
    """``fit``'s ``optimizer_class``/``optimizer_params`` as FitConfig fields, checked before any work.

    For ``torch.optim.AdamW`` (or ``None``; transformers' old AdamW too where it still exists, see
    :func:`optimizer_settings`), which crossjax implements exactly. ``optimizer_params`` takes AdamW's
    ``lr``, ``betas``, ``eps`` and ``amsgrad`` (torch's defaults where missing: lr 1e-3, betas (0.9, 0.999),
    eps 1e-8); ``weight_decay`` is checked but has no effect, exactly as in sentence-transformers' fit, which
    sets it per parameter group (``fit``'s ``weight_decay`` / 0.0) and so overrides AdamW's own default; the
    implementation switches ``foreach``, ``fused``, ``capturable``, ``differentiable`` are accepted and
    ignored; ``maximize=True`` and any other key raise ``ValueError``. ``None`` means fit's default
    ``{"lr": 2e-5}``.
    """
    params = {"lr": 2e-5} if optimizer_params is None else dict(optimizer_params)
    accepted = {*_TORCH_ADAMW_DEFAULTS, "weight_decay", "maximize", *_IMPLEMENTATION_SWITCHES}
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"optimizer_params {unknown} not supported: crossjax's AdamW takes lr, betas, eps, amsgrad, "
            "weight_decay (overridden by fit's weight_decay, as in torch) and the implementation switches "
            f"{', '.join(_IMPLEMENTATION_SWITCHES)}"
        )
    if params.get("maximize", False):
        raise ValueError("optimizer_params['maximize']=True is not supported: fit minimises the loss")
    if _real("weight_decay", params.get("weight_decay", 0.0)) < 0:
        raise ValueError(f"optimizer_params['weight_decay'] must be >= 0, got {params['weight_decay']!r}")
    if "weight_decay" in params:
        logger.warning(
            "optimizer_params['weight_decay'] has no effect: as in sentence-transformers' fit (torch param "
            "groups), fit's weight_decay argument decays the weights and biases/LayerNorm weights get 0"
        )
    merged = {**_TORCH_ADAMW_DEFAULTS, **{k: params[k] for k in _TORCH_ADAMW_DEFAULTS if k in params}}
    betas = merged["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"optimizer_params['betas'] must be two numbers in [0, 1), got {betas!r}")
    return {
        "learning_rate": _real("lr", merged["lr"]),
        "adam_betas": (_real("betas", betas[0]), _real("betas", betas[1])),
        "adam_eps": _real("eps", merged["eps"]),
        "amsgrad": merged["amsgrad"],
    }


def _real(key: str, value: Any) -> float:
    if not _is_real(value):
        raise ValueError(f"optimizer_params[{key!r}] must be a number, got {value!r}")
    return float(value)


@dataclass
class FitTarget:
    """What the loop trains, and how: the model, its tokenizer and mesh, and the facade's hooks.

    ``evaluate(output_path, epoch, steps)`` runs the user's evaluator on the (synced) model; ``save(path)``
    exports it. The loop knows nothing else about the object that called it.
    """

    model: FlaxPreTrainedModel
    tokenizer: Any
    plan: MeshPlan
    max_length: int
    pad_id: int
    save: Callable[[str], Any]
    max_shapes: int = 2
    evaluate: Callable[[str | None, int, int], Any] | None = None
    # A facade's own flow after every step (the trainer's: Hugging Face's on_step_end, log, evaluation, save,
    # then the epoch's end), in place of fit's cadence: it gets a StepEnd, acts through it, and returns True to
    # stop the run. Also called once with ``resumed=True`` when a run resumes, before its first step.
    on_step: Callable[[StepEnd], bool | None] | None = None
    # Called before a step is dispatched with (steps done, epoch, whether the step opens the epoch or the run)
    on_step_begin: Callable[[int, int, bool], None] | None = None
    callbacks: list[logs.RunCallback] = field(default_factory=list)  # e.g. the model card's recorder
    # Shared with the facade's predict and save, which other threads may call while the model trains
    guard: training.ArraysGuard = field(default_factory=training.ArraysGuard)
    # The facade's own run state, kept in checkpoints (the trainer's TrainerState and best model):
    # ``checkpoint_state(step) -> (JSON dict, host parameters or None)`` when a checkpoint is saved, and
    # ``resume_state(meta)`` with the restored checkpoint's meta (``meta["best_params"]``: those parameters).
    checkpoint_state: Callable[[int], tuple[dict[str, Any], Any]] | None = None
    resume_state: Callable[[dict[str, Any]], None] | None = None
    # ``model_writer()`` (on the synced model, every process) -> ``write(folder)`` exporting it, or None on the
    # processes that do not write: each checkpoint step's folder holds its model (``<step>/model``)
    model_writer: Callable[[], Callable[[str], Any] | None] | None = None
    # The checkpoint step that ``checkpoint_save_total_limit`` never deletes (the trainer's best model's)
    kept_checkpoint: Callable[[], int | None] | None = None
    # Whether a resume must start from the weights the checkpointed run started from (or ended with): fit
    # resumes by itself, so a model trained since (in a notebook) would silently lose that training. The trainer
    # resumes when asked (resume_from_checkpoint), and like Hugging Face's takes the checkpoint's weights then.
    resume_needs_own_weights: bool = False


@dataclass
class StepEnd:
    """A finished step as the loop hands it to ``FitTarget.on_step``: the facade logs, evaluates and saves through
    these, in the order its rules say (the loop's own cadence does nothing then)."""

    global_step: int
    resumed: bool  # the run resumed at global_step: no step was trained yet in this call
    sync: Callable[[], None]  # the model up to date with the step (its arrays valid until the next step runs)
    flush: Callable[[], None]  # the run's step records (FitResult.history) complete through this step
    evaluate: Callable[[bool], None]  # the evaluator at this step; True: as the epoch's end
    # a checkpoint of this step (a second ask at the step keeps the first): whether the run keeps checkpoints
    save: Callable[[], bool]
    # waits until the checkpoints saved so far are on disk (orbax commits them in the background)
    committed: Callable[[], None] = lambda: None
    micro_batches: int = 1  # the per-device batches the step accumulated
    real_tokens: int = 0  # the tokens of the pairs trained so far in this call (a multi-host stream: this process's)


@dataclass
class FitResult:
    """What a run produced: per-logged-step history, the best evaluator score, and a summary of the run."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float | None = None
    compilations: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


# FitConfig fields that do not change the trained parameters: a resume may change them freely.
_NOT_IN_FINGERPRINT = (
    "evaluation_steps",
    "output_path",
    "save_best_model",
    "show_progress_bar",
    "logging_steps",
    "checkpoint_path",
    "checkpoint_save_steps",
    "checkpoint_save_total_limit",
    "checkpoint_model_only",
    "checkpoint_on_request",
    "batch_size",  # fingerprinted as the batch size actually used
    "shuffle_buffer_size",  # fingerprinted for streams, where it applies
    "log_dir",
    "evaluate_on_start",
)


def run_settings(cfg: FitConfig) -> dict[str, Any]:
    """Every setting that shapes the training trajectory, JSON-friendly (for resume fingerprints)."""
    # tuples become lists, as they come back from JSON
    return {k: v for k, v in _settings(cfg).items() if k not in _NOT_IN_FINGERPRINT}


def _settings(cfg: FitConfig) -> dict[str, Any]:
    """Every FitConfig field, JSON-friendly (the dtype by name), for logs and the model card."""
    settings = asdict(cfg)
    settings["compute_dtype"] = jnp.dtype(cfg.compute_dtype).name
    return json.loads(json.dumps(settings, default=repr))


# The files of an exported model's folder that are not the model: the run's logs and evaluation results.
_NOT_MODEL_FILES = frozenset({"metrics.jsonl", "training_curves.png"})


def _carry_best_model(best_score: float, earlier: str | None, cfg: FitConfig) -> str | None:
    """A resumed run keeps its best score, so it saves a model only when a later evaluation beats it. When it
    saves to another ``output_path`` than the run that reached that score, the best model is copied there
    (returns the new folder), so that folder never ends without a model; a warning says when it cannot be."""
    if cfg.output_path is None or not cfg.save_best_model or not is_main_process():
        return None
    here = Path(cfg.output_path).resolve()
    source = Path(earlier) if earlier else None
    if source == here:
        return None
    if (here / "config.json").is_file():
        logger.warning(
            "Resumed with best score %s: %s already holds a model, which is kept until a later evaluation beats "
            "that score%s",
            best_score,
            here,
            f" (the best model is in {source})" if source else "",
        )
        return None
    if source is not None and (source / "config.json").is_file():

        def copy_model(folder: Path) -> None:
            for file in source.iterdir():
                if file.is_file() and file.name not in _NOT_MODEL_FILES:
                    shutil.copy2(file, folder / file.name)

        atomic_directory_write(here, copy_model, last=("config.json",))  # each file whole, config.json last
        logger.warning("Resumed with best score %s: its model was copied from %s to %s", best_score, source, here)
        return str(here)
    logger.warning(
        "Resumed with best score %s, whose model %s: %s gets a model only when a later evaluation beats that score",
        best_score,
        f"was saved to {source}, which no longer holds it" if source else "the earlier run did not save",
        here,
    )
    return None


# A file the main process writes into a folder every process must share (a multi-process run's checkpoints)
SHARED_FOLDER_MARK = ".crossjax-shared-folder-check"


def ensure_writable_folders(folders: list[tuple[str, Any]]) -> None:
    """The main process makes and test-writes each ``(name, folder)`` (None: skipped), so that a folder which
    cannot take files fails now, not at its first save hours later. In a multi-process run every process
    learns of a failure (one all-gather), so none is left waiting in the run's first collective; and the
    ``checkpoint_path`` folder (orbax checkpoints, which every process writes its shards into) must be the same folder
    for every process: a path on each worker's own disk would leave the first checkpoint waiting forever for
    files the other processes wrote elsewhere. The main process writes a mark there that every other one must
    read back (two more all-gathers)."""
    error = None
    marks = [Path(folder) for what, folder in folders if what == "checkpoint_path" and folder is not None]
    token = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF  # the main process's is compared (int32: JAX's)
    if is_main_process():
        try:
            for what, folder in folders:
                if folder is not None:
                    ensure_writable_directory(folder, what)
            if jax.process_count() > 1:
                for folder in marks:
                    (folder / SHARED_FOLDER_MARK).write_text(str(token))
        except (ValueError, OSError) as e:
            error = e if isinstance(e, ValueError) else ValueError(f"cannot write into {marks}: {e}")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        gathered = multihost_utils.process_allgather(np.array([error is not None, token], np.int32))
        gathered = np.asarray(gathered).reshape(jax.process_count(), 2)
        if error is None and gathered[:, 0].any():
            raise ValueError("the main process cannot write this run's folders (its own error says which)")
        if error is None and marks:
            token = int(gathered[0, 1])
            sees = all(_reads_mark(folder, token) for folder in marks)
            seen = np.asarray(multihost_utils.process_allgather(np.array([sees], np.int32))).reshape(-1)
            if is_main_process():
                for folder in marks:
                    (folder / SHARED_FOLDER_MARK).unlink(missing_ok=True)
            if not seen.all():
                blind = [i for i, ok in enumerate(seen.tolist()) if not ok]
                raise ValueError(
                    f"{', '.join(str(m) for m in marks)} is not one folder for every process: process(es) {blind} "
                    "do not see the file the main process wrote there (a path on each worker's own disk?). Every "
                    "process writes its shards of a checkpoint into it: give a folder all of them share (a network "
                    "file system, or a gs:// bucket path)"
                )
    if error is not None:
        raise error


def _reads_mark(folder: Path, token: int) -> bool:
    try:
        return (folder / SHARED_FOLDER_MARK).read_text() == str(token)
    except OSError:
        return False


# The config fields that shape a model's parameters (a checkpoint holds arrays of these sizes).
_MODEL_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads")


# Settings each process may set for itself (only the main process writes files; whether there is an
# output_path at all must agree, since saving the model is collective); every other one must agree.
_PER_PROCESS_SETTINGS = ("output_path", "log_dir", "show_progress_bar")


def _check_processes_agree(data: Any, cfg: FitConfig, loss_fn: Any, evaluator: Any) -> None:
    """In a multi-process run every process must train the same steps on the same data and settings: one that
    was given other ones would wait forever in a collective (or silently train on a mix). One all-gather of a
    few hashes before anything is compiled says which of them differ."""
    if jax.process_count() == 1:
        return
    parts = {
        "numbers of steps": data.total_steps,
        "settings": {
            **{k: v for k, v in _settings(cfg).items() if k not in _PER_PROCESS_SETTINGS},
            "saves a model": cfg.output_path is not None,
        },
        "losses": describe_callable(loss_fn),
        # evaluating runs predict, a collective: every process evaluates, or none
        "evaluators": None if evaluator is None else type(getattr(evaluator, "evaluator", evaluator)).__qualname__,
        # in-memory data is the whole set in every process; a stream is one stream every process splits itself
        # (what is known of it: description, files, shuffle): each process's own files would be planned apart
        "training data": data.run_fingerprint(),
    }
    texts = [json.dumps(v, sort_keys=True, default=_stable_repr).encode() for v in parts.values()]
    codes = [int.from_bytes(hashlib.sha256(t).digest()[:4], "little") for t in texts]
    differ = [name for name, who in zip(parts, processes_differing(codes), strict=True) if who]
    if differ:
        raise ValueError(
            f"the {jax.process_count()} processes of this run were given different {' and '.join(differ)}: every "
            "process must call fit (or train) with the same data and settings; each trains on its own share of "
            "every batch by itself"
        )


def _stable_repr(value: Any) -> str:
    """A value as text that is the same in every process and run: an object's address is left out."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"array{tuple(value.shape)}:{np.asarray(value).dtype}"
    text = repr(value)
    return f"<{type(value).__qualname__}>" if " at 0x" in text else text


def describe_callable(fn: Any) -> str:
    """A stable description of a loss or activation (name and bound arguments), to tell two runs apart."""
    if callable(getattr(fn, "get_config_dict", None)):  # a trainer loss object: its class and arguments
        config = json.dumps(fn.get_config_dict(), sort_keys=True, default=repr)
        return f"{type(fn).__module__}.{type(fn).__qualname__}({config})"
    if isinstance(fn, functools.partial):
        args = {k: np.asarray(v).tolist() if hasattr(v, "shape") else v for k, v in sorted(fn.keywords.items())}
        return f"{describe_callable(fn.func)}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    if training.is_stateful_object(fn):  # a user's loss object: its settings too (``loss.scale = 10`` differs)
        try:
            state = json.dumps(vars(fn), sort_keys=True, default=_stable_repr)
        except ValueError:  # a circular reference
            state = "..."
        return f"{type(fn).__module__}.{type(fn).__qualname__}({state})"
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _warn_of_bce_labels_outside_0_1(loss_fn: Any, labels: np.ndarray | None) -> None:
    """sentence-transformers' ``fit`` (and so crossjax's) takes BCE labels outside [0, 1], which train towards
    nothing (STS-B's unscaled 0-5 scores); the trainer's ``BinaryCrossEntropyLoss`` refuses them. Say so here."""
    if loss_fn is not losses.binary_cross_entropy_with_logits or labels is None or not len(labels):
        return
    low, high = float(np.min(labels)), float(np.max(labels))
    if low < 0.0 or high > 1.0:
        logger.warning(
            "The labels lie in [%g, %g], but binary cross-entropy takes labels in [0, 1] (probabilities): a label "
            "above 1 or below 0 has no logit to train towards (raw STS-B scores 0-5? divide them by 5). Pass "
            "loss_fct=MSELoss() to regress on them as they are.",
            low,
            high,
        )


def card_loss(loss_fct: Any, loss_fn: Any, activation_fct: Any, activation: Any) -> tuple[str, dict[str, Any]]:
    """How ``fit``'s model card names its loss and settings. sentence-transformers' ``fit`` trains its default
    loss as a ``BinaryCrossEntropyLoss`` (one label) or ``CrossEntropyLoss`` object, and its card names that
    class (and tags ``loss:BinaryCrossEntropyLoss``); crossjax's card names its own classes of those names. A
    loss the caller gives is named by its description."""
    if loss_fct is None:
        one_label = loss_fn is losses.binary_cross_entropy_with_logits
        kind = losses.BinaryCrossEntropyLoss if one_label else losses.CrossEntropyLoss
        config = {"activation_fn": losses.activation_config_name(activation_fct, activation)}
        if one_label:
            config["pos_weight"] = None
        return f"{kind.__module__}.{kind.__qualname__}", config
    return describe_callable(loss_fn), {"activation_fct": describe_callable(activation)}


class _Metrics:
    """Device-side metrics of recent steps, fetched to the host only when flushed.

    Each flushed step's record gets the throughput of its window (pairs trained since the last flush over the
    wall time since then, evaluations and checkpoints excluded via :meth:`restart_clock`) and goes to
    ``history`` and to ``on_record`` (the run's callbacks)."""

    def __init__(self, history: list[dict[str, float]], schedule, on_record: Callable[[dict], None]) -> None:
        self.pending: list[tuple[int, int, dict]] = []
        self.history = history
        self.schedule = schedule
        self.on_record = on_record
        self.last_loss = float("nan")
        self.loss_sum, self.loss_steps = 0.0, 0  # over this fit's recorded steps: the mean train_loss
        self.pairs_per_second = float("nan")
        self.restart_clock()

    def restart_clock(self) -> None:
        self.window_start = time.perf_counter()
        self.window_pairs = 0

    def add(self, step: int, epoch: int, metrics: dict, pairs: int) -> None:
        self.pending.append((step, epoch, metrics))
        self.window_pairs += pairs

    def drop_from(self, step: int) -> None:
        """Forget the pending records of ``step`` and later (steps that trained nothing)."""
        self.pending = [record for record in self.pending if record[0] < step]

    def flush(self, finished_only: bool = False) -> None:
        """Record the pending steps (waiting for them); ``finished_only``: only those already finished, never
        waiting (an interrupted run, where a step may wait on a process that is gone)."""
        if finished_only:
            ready = 0
            while ready < len(self.pending) and all(
                leaf.is_ready() for leaf in jax.tree.leaves(self.pending[ready][2])
            ):
                ready += 1
            self.pending = self.pending[:ready]
        if not self.pending:
            return
        fetched = jax.device_get([m for _, _, m in self.pending])  # waits for the window's steps to finish
        self.pairs_per_second = self.window_pairs / max(time.perf_counter() - self.window_start, 1e-9)
        self.restart_clock()
        for (step, epoch, _), m in zip(self.pending, fetched, strict=True):
            loss = float(m["loss"])
            if not bool(m["finite"]):
                self.pending = []
                grad_norm = float(m["grad_norm"])
                if not math.isfinite(loss):
                    what = f"the loss became {loss}"
                elif not math.isfinite(grad_norm):
                    what = f"the gradient norm became {grad_norm} (loss {loss})"
                else:  # loss and gradient were finite, so the update was applied (see training.make_train_step)
                    raise ParametersOverflowError(
                        f"Training stopped: the parameter update of step {step} (epoch {epoch}) overflowed "
                        f"(loss {loss}, gradient norm {grad_norm}): some of this model's parameters are no longer "
                        "finite (or beyond 1.8e19), so load it again (or its last checkpoint) before using it. No "
                        "later update was applied, and what this run saved before (the output folder, "
                        "checkpoints) is untouched. Lower the learning rate, or use an Adam eps > 0 (with eps 0, "
                        "a parameter whose gradient is 0 divides 0 by 0)."
                    )
                raise FloatingPointError(
                    f"Training stopped: {what} at step {step} (epoch {epoch}); neither that update nor any "
                    "later one was applied, so the model keeps the parameters of the last step whose loss was "
                    "finite (after a learning rate that diverged they may already score NaN: check "
                    "model.predict, or load the last checkpoint), and what this run saved before (the output "
                    "folder, checkpoints) is untouched. Lower the learning rate, check the labels, or use float32 "
                    "compute."
                )
            record = {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "grad_norm": float(m["grad_norm"]),
                "learning_rate": float(self.schedule(step - 1)),
                "pairs_per_second": self.pairs_per_second,
            }
            self.history.append(record)
            self.on_record(record)
            self.last_loss = loss
            self.loss_sum, self.loss_steps = self.loss_sum + loss, self.loss_steps + 1
        self.pending = []


def run_fit(
    target: FitTarget,
    train_dataloader: Any,
    loss_fct: Any,
    activation_fct: Any,
    callback: Callable | None,
    cfg: FitConfig,
    result: FitResult | None = None,
    data_source: Any = None,
) -> FitResult:
    """Train ``target.model`` in place; return (or fill ``result`` with) the history, best score and summary.

    Whatever stops the run (the end, Ctrl-C, an exception in an evaluator or callback, an out-of-memory or
    checkpoint error), the model holds the parameters of the last completed step afterwards.

    The summary's ``compilations`` counts the train-step programs traced in this run: 0 when an earlier fit of
    the process already compiled the same model, loss, optimizer structure and batch shapes (the numbers of
    the run do not count, see :func:`crossjax.training.train_program`). ``compile_seconds`` is the time JAX
    spent tracing and compiling during the run and ``cache_hits`` the programs it loaded from the persistent
    compilation cache (:func:`crossjax.runtime.enable_compilation_cache`).
    ``data_source`` replaces ``train_dataloader`` with a prepared source (the trainer's list batches, see
    :class:`crossjax.list_batches.ListData`); ``loss_fct`` is then its list loss.
    """
    with training.CompileMonitor() as monitor:
        return _run_fit(target, train_dataloader, loss_fct, activation_fct, callback, cfg, result, monitor, data_source)


@dataclass
class TrainStep:
    """One optimizer step's packed batch and where it stands: ``steps_in_epoch`` counts from 1."""

    epoch: int
    steps_in_epoch: int
    last_in_epoch: bool
    batch: packing.PackedBatch
    pairs: int
    source: int = 0  # which of the data source's (loss, chunks) trains this step (several datasets)
    global_groups: int | None = None  # set: ``batch`` holds only this process's groups (a multi-host stream)
    probe: bool = False  # this process had nothing to feed: the run ends if no process had (see streaming)
    abort: int = 0  # multi-host stream: 1 + this process's index once its shard failed (the step trains nothing)
    micro_batches: int = 1  # the trainer's per-device batches in the step (Hugging Face's substeps)


class ShardedStream:
    """What the multi-host streams of ``fit`` (examples) and of the trainer (rows) share: each process trains
    its own shard in the one shape every process planned, and no process may leave the others waiting in a
    step's collectives.

    An error reading or checking the shard (a bad item past the planned steps, an I/O error) is not raised
    where it happens: the other processes would wait for this one in the next step's collectives until JAX's
    coordination timed out. This process feeds empty steps flagged ``abort`` instead; the fit loop reads each
    step's flag before it dispatches the next one, and every process stops there (:meth:`abort`). A process
    whose shard is used up feeds empty *probe* steps; the fit loop ends the run where no process had a pair
    (:meth:`stream_ended`)."""

    processes: int
    process: int
    position_unit: str  # what the data position counts ("examples", "rows")
    failure: Exception | None
    start_step: int
    total_steps: int
    groups: int  # the global step's groups

    def shard_train_steps(
        self, shard: Any, pack_step: Callable[[Any | None], tuple[packing.PackedBatch, int]], micro_batches: int = 1
    ) -> Any:
        """The remaining steps of ``shard`` (an iterator of this process's steps), each packed by ``pack_step``
        (None: an empty step) into this process's groups of the global step; ``micro_batches`` is every step's
        (the same on every process: callbacks see the same events)."""
        length = None
        for taken in range(1, self.total_steps - self.start_step + 1):
            item = None
            if self.failure is None:
                try:
                    item = next(shard, None)
                except Exception as error:  # noqa: BLE001 - raised by abort() once every process knows
                    self.failure = error
            batch, pairs = pack_step(item)
            length = batch.input_ids.shape[-1] if length is None else length
            if batch.input_ids.shape[-1] != length:  # the packer guarantees it; a mismatch would hang
                raise RuntimeError(f"multi-host stream step of row length {batch.input_ids.shape[-1]}, not {length}")
            failed = self.failure is not None
            yield TrainStep(
                0,
                self.start_step + taken,
                self.start_step + taken == self.total_steps,
                batch,
                pairs,
                global_groups=self.groups,
                probe=item is None and not failed,
                abort=self.process + 1 if failed else 0,
                micro_batches=micro_batches,
            )

    def stream_position(self) -> int:
        """This process's data position: the items of its shard (of the stream) trained on."""
        raise NotImplementedError

    def positions_of_processes(self) -> list[int]:
        """Every process's data position, in process order (a checkpoint's save is collective anyway)."""
        from jax.experimental import multihost_utils

        positions = multihost_utils.process_allgather(np.array([self.stream_position()], np.int64), tiled=True)
        return [int(x) for x in np.asarray(positions)]

    def own_position(self, meta: dict[str, Any], key: str) -> int:
        """This process's data position in a checkpoint's ``meta`` (``key``: the sum over processes,
        ``key + "_per_process"``: each one's), refused where another number of processes wrote it."""
        per_process = meta.get(f"{key}_per_process")
        saved_processes = 1 if per_process is None else len(per_process)
        if saved_processes != self.processes:
            from crossjax.checkpoint import CheckpointMismatchError

            raise CheckpointMismatchError(
                f"The checkpoint was written by a stream run of {saved_processes} process(es), this run has "
                f"{self.processes}: each process's data position is in its own shard. Resume with "
                f"{saved_processes} process(es), or use another checkpoint folder."
            )
        return int(meta[key] if per_process is None else per_process[self.process])

    def abort(self, flag: int, step: int) -> None:
        """Every process read a nonzero ``abort`` of ``step`` (that step and later ones trained nothing): stop
        with this process's own error, or name the process that failed."""
        if self.failure is not None:
            self.failure.add_note(
                f"(process {self.process} of {self.processes}: every process stopped at step {step}, which trained "
                f"nothing; steps up to {step - 1} trained)"
            )
            raise self.failure
        raise RuntimeError(
            f"Training stopped at step {step} of a multi-host stream: process {flag - 1} could not read or check "
            f"its shard (its own error says why). Steps up to {step - 1} trained and the model holds them (the "
            "checkpoints hold the last one saved); this process stops with the others instead of waiting for it."
        )

    def stream_ended(self, step: int) -> None:
        """The fit loop found a probe step empty on every process: all shards are used up."""
        logger.warning(
            "The stream ended (this process trained on %d %s of its shard), before max_steps=%d: training stops at "
            "step %d",
            self.stream_position(),
            self.position_unit,
            self.total_steps,
            step,
        )


# Checkpoint folder (TrainCheckpointer.directory) -> weights_digest of the weights a run into it stopped at in this
# process (Ctrl-C, an evaluator's error): the model keeps its last finished step, a step of that run, so running the
# cell again may resume.
_STOPPED_RUNS: dict[str, str] = {}


def _check_resumed_weights(restored: tuple[Any, dict[str, Any]], start_weights: str, folder: str) -> None:
    """Refuse a resume that would replace weights the model gained elsewhere: the model must hold the weights the
    checkpointed run started from (a script run again after an interruption), those of its checkpoint (a run
    already resumed or finished here), or those it stopped at in this process (a notebook cell run again after
    Ctrl-C). Checkpoints written before the digest was kept are resumed as before."""
    from crossjax.checkpoint import CheckpointMismatchError

    state, meta = restored
    started = meta.get("start_weights")
    if started is None or start_weights in (started, _STOPPED_RUNS.get(folder)):
        return
    if start_weights == training.weights_digest(state.params):
        return
    raise CheckpointMismatchError(
        f"checkpoint_path={str(folder)!r} holds a run at step {int(meta['step'])}, and this model holds other weights "
        "than the ones that run started from, stopped at or saved: resuming it would replace them (and any training "
        "they hold) with the checkpoint's. Give this run another checkpoint_path, or load the model the run "
        "started from to resume it"
    )


class _InMemoryData:
    """A run over examples held in memory: tokenized once, every epoch planned up front (pure functions of the
    seed and the epoch, so the global step is the data position), packed shapes planned over the whole run."""

    def __init__(
        self, target: FitTarget, train_dataloader: Any, cfg: FitConfig, ignored_label: int | None = None
    ) -> None:
        model, plan = target.model, target.plan
        if cfg.shuffle_buffer_size:
            raise ValueError(
                f"shuffle_buffer_size={cfg.shuffle_buffer_size} applies to streams; data in memory is shuffled whole "
                "each epoch (DataLoader(..., shuffle=True)): leave it at 0"
            )
        examples, batch_size, shuffle, drop_last, loader_seed = data_lib.collect_examples(
            train_dataloader, batch_size=cfg.batch_size
        )
        data_seed = cfg.seed if loader_seed is None else loader_seed  # DataLoader(seed=...) orders the data
        texts_a, texts_b, self.labels = data_lib.validate_examples(
            examples, model.num_labels, ignored_label=ignored_label
        )
        if not cfg.max_tokens_per_step:  # token-budget steps take pairs by tokens, not batch_size
            plan.check_batch_size(batch_size)
        step_rows = batch_size * cfg.gradient_accumulation_steps
        n = len(self.labels)
        k = CARD_SAMPLES
        self.samples = [([a, b], y) for a, b, y in zip(texts_a[:k], texts_b[:k], self.labels[:k].tolist(), strict=True)]
        unordered = np.zeros(n, np.int32)  # lengths do not change how many steps an epoch has
        self.steps_per_epoch = len(
            data_lib.plan_batches(unordered, step_rows, False, 0, 0, drop_last, loader_batch_size=batch_size)
        )
        if self.steps_per_epoch == 0:
            raise ValueError(f"no full batch of {batch_size} examples with drop_last=True: {n} examples only")
        self.total_steps = self.steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:  # a cap: the run (and its schedule) ends after max_steps steps
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.batch_size, self.pad_id, self.max_length = batch_size, target.pad_id, target.max_length
        # Tokenize once; then every epoch's batches are known: plan the packed shapes of the whole run.
        self.tokenized = data_lib.tokenize_pairs(
            target.tokenizer,
            texts_a,
            texts_b,
            target.max_length,
            limits=data_lib.token_limits(target.model.config),
            progress=cfg.show_progress_bar,
        )
        groups = plan.data_shards * cfg.gradient_accumulation_steps  # packing never crosses a shard/micro-batch
        self.dealt: list[list[list[np.ndarray]]] | None = None  # token budget: each step's examples per group
        if cfg.max_tokens_per_step is not None:
            self._plan_token_budget(cfg, groups, shuffle, data_seed)
        else:
            epochs = math.ceil(self.total_steps / self.steps_per_epoch)
            self.run_batches = [
                data_lib.plan_batches(
                    self.tokenized.lengths,
                    step_rows,
                    shuffle,
                    data_seed,
                    epoch,
                    drop_last,
                    cfg.group_by_length,
                    loader_batch_size=batch_size,
                )
                for epoch in range(epochs)
            ]
            self.run_batches[-1] = self.run_batches[-1][: self.total_steps - self.steps_per_epoch * (epochs - 1)]
            self.packing_plan = packing.plan_packing(
                [b for batches in self.run_batches for b in batches],
                self.tokenized.lengths,
                groups,
                step_rows // groups,
                hidden_size=packing.model_width(model.config),
                max_shapes=target.max_shapes,
                compile_cost=packing.train_compile_cost(model.config, cfg.gradient_accumulation_steps),
            )
        self.fingerprint = {
            "examples": n,
            "batch_size": batch_size,
            "shuffle": shuffle,
            "drop_last": drop_last,
            "data_seed": data_seed,
            "steps_per_epoch": self.steps_per_epoch,
            "packed_shapes": [list(shape) for shape in self.packing_plan.shapes],  # the layout sets dropout's masks
        }

    def run_fingerprint(self) -> dict[str, Any]:
        from crossjax.checkpoint import data_fingerprint

        # Hashed only when checkpointing: same size but other pairs or labels is another run. max_length is named
        # (it truncates the pairs, so it changes the data and the shapes too, which say less to the user).
        return {
            "max_length": self.max_length,
            **self.fingerprint,
            "data": data_fingerprint(self.tokenized, self.labels),
        }

    def resume(self, meta: dict[str, Any]) -> None:
        """Nothing to restore: the global step says where the plan continues."""

    def start(self, start_step: int) -> None:
        self.start_step = start_step

    def _plan_token_budget(self, cfg: FitConfig, groups: int, shuffle: bool, seed: int) -> None:
        """Steps of one shape (:func:`crossjax.packing.token_budget_shape`), each pair once an epoch."""
        lengths = self.tokenized.lengths
        rows, row_length = packing.token_budget_shape(lengths, groups, cfg.max_tokens_per_step)
        self.dealt, epoch_steps = [], []
        for epoch in range(cfg.epochs):
            n = len(lengths)
            order = np.random.default_rng((seed, epoch)).permutation(n) if shuffle else np.arange(n)
            steps = packing.token_budget_steps(order, lengths, groups, rows, row_length)
            self.dealt.extend(steps)
            epoch_steps.append(len(steps))
            if cfg.max_steps is not None and len(self.dealt) >= cfg.max_steps:
                break
        self.epoch_starts = np.concatenate([[0], np.cumsum(epoch_steps)])
        self.total_steps = min(len(self.dealt), cfg.max_steps or len(self.dealt))
        self.steps_per_epoch = epoch_steps[0]  # the first epoch's (they vary a little with the order)
        slots = max(len(g) for step in self.dealt for g in step)
        self.packing_plan = packing.PackingPlan(rows, (row_length,), groups, slots)

    def _token_budget_steps(self) -> Any:
        for step in range(self.start_step, self.total_steps):
            epoch = int(np.searchsorted(self.epoch_starts, step, side="right") - 1)
            index = step - int(self.epoch_starts[epoch])
            dealt = self.dealt[step]
            indices = np.concatenate(dealt)
            batch = packing.pack(self.tokenized, indices, self.labels, self.packing_plan, self.pad_id, dealt=dealt)
            last = step + 1 == int(self.epoch_starts[epoch + 1]) or step + 1 == self.total_steps
            yield TrainStep(epoch, index + 1, last, batch, len(indices))

    def steps(self) -> Any:
        if self.dealt is not None:
            yield from self._token_budget_steps()
            return
        first_epoch = self.start_step // self.steps_per_epoch
        for epoch in range(first_epoch, len(self.run_batches)):
            batches = self.run_batches[epoch]
            first = self.start_step - epoch * self.steps_per_epoch if epoch == first_epoch else 0
            for batch_index in range(first, len(batches)):
                indices = batches[batch_index]
                batch = packing.pack(self.tokenized, indices, self.labels, self.packing_plan, self.pad_id)
                yield TrainStep(epoch, batch_index + 1, batch_index + 1 == len(batches), batch, len(indices))

    def checkpoint_meta(self) -> dict[str, Any]:
        return {}

    def summary(self) -> dict[str, Any]:
        return {}

    def describe(self) -> tuple[int | None, list[tuple[list[str], Any]]]:
        """The number of training examples and the first few (texts, label), for logs and the model card."""
        return len(self.labels), self.samples

    def close(self) -> None:
        pass


CARD_SAMPLES = 3  # training examples shown in the model card
STREAM_LOOKAHEAD = 32  # a stream's first steps, held to plan the packed shapes (R and the row lengths)


class _StreamData(ShardedStream):
    """A run over a stream (see :mod:`crossjax.streaming`): ``max_steps`` optimizer steps, one pass at most,
    tokenized lazily in a background thread. The packed shapes are planned from the first
    :data:`STREAM_LOOKAHEAD` steps (a later step that needs a longer row gets one more shape); the plan and the
    data position (examples consumed) go into every checkpoint. In a multi-host run each process reads and
    packs only its own shard, in the one shape all processes plan from the global stream's first steps."""

    def __init__(
        self, target: FitTarget, stream: streaming.StreamSource, cfg: FitConfig, ignored_label: int | None = None
    ) -> None:
        if cfg.max_steps is None:
            raise ValueError(
                f"fit got a stream ({stream.description}) of unknown length: pass max_steps=... (the number of "
                "optimizer steps to train; epochs is ignored for streams)"
            )
        if cfg.epochs != 1:
            logger.warning("epochs=%d is ignored for a stream: it is read once, for max_steps steps", cfg.epochs)
        for name, value in (("max_tokens_per_step", cfg.max_tokens_per_step), ("group_by_length", cfg.group_by_length)):
            if value:
                raise ValueError(
                    f"{name}={value!r} needs the whole training set in memory (it plans every epoch's batches up "
                    f"front); a stream ({stream.description}) is read once, in batches of batch_size"
                )
        self.target, self.stream, self.cfg, self.ignored_label = target, stream, cfg, ignored_label
        self.batch_size = int(cfg.batch_size or stream.batch_size or 16)
        target.plan.check_batch_size(self.batch_size)
        self.step_rows = self.batch_size * cfg.gradient_accumulation_steps
        self.groups = target.plan.data_shards * cfg.gradient_accumulation_steps
        self.total_steps = int(cfg.max_steps)
        self.processes, self.process = jax.process_count(), jax.process_index()
        self.position = 0  # examples of the stream (of this process's shard) trained on so far
        self.position_unit = "examples"
        self.packing_plan: packing.PackingPlan | None = None
        self.reader: streaming.StreamReader | None = None
        self.failure: Exception | None = None  # multi-host: why this process's shard stopped (bad example, I/O)

    def run_fingerprint(self) -> dict[str, Any]:
        fingerprint = {
            "stream": self.stream.description,  # the data itself cannot be hashed: what is known of it
            "batch_size": self.batch_size,
            "shuffle_buffer_size": self.cfg.shuffle_buffer_size,
            "data_seed": self.cfg.seed,
            # how a step's examples are dealt (devices x accumulation) and truncated: both shape the steps
            "groups": self.groups,
            "max_length": self.target.max_length,
            "stream_files": streaming.data_file_names(self.stream.source),
            "stream_shuffle": streaming.shuffle_fingerprint(self.stream.source),
        }
        if self.processes > 1:  # each process's position is in its own shard: P fixes the shards
            fingerprint["processes"] = self.processes
        return fingerprint

    def resume(self, meta: dict[str, Any]) -> None:
        self.position = self.own_position(meta, "stream_examples")
        saved = meta["packing_plan"]
        self.packing_plan = packing.PackingPlan(
            int(saved["rows"]), tuple(int(t) for t in saved["row_lengths"]), self.groups, self.step_rows // self.groups
        )
        logger.info("Skipping the %d examples of the stream trained on before the checkpoint", self.position)

    def _reader(self, source: streaming.StreamSource, step_size: int, steps: int, **kwargs) -> streaming.StreamReader:
        return streaming.StreamReader(
            source,
            self.target.tokenizer,
            self.target.max_length,
            self.target.model.num_labels,
            step_size,
            steps,
            shuffle_buffer_size=self.cfg.shuffle_buffer_size,
            limits=data_lib.token_limits(self.target.model.config),
            accumulated_batches=self.cfg.gradient_accumulation_steps,
            ignored_label=self.ignored_label,
            **kwargs,
        )

    def _plan(self, steps: list[streaming.StreamStep], max_shapes: int, min_row_length: int = 0) -> packing.PackingPlan:
        config = self.target.model.config
        planned = len(steps) / max(1, self.remaining)  # the compile is weighed against the lookahead's steps
        return streaming.plan_from_steps(
            steps,
            self.groups,
            self.step_rows // self.groups,
            packing.model_width(config),
            max_shapes,
            min_row_length,
            packing.train_compile_cost(config, self.cfg.gradient_accumulation_steps, min(1.0, planned)),
        )

    def start(self, start_step: int) -> None:
        """Start the reader and read the lookahead: a bad example among it is reported before compiling."""
        self.remaining = max(0, self.total_steps - start_step)
        self.start_step = start_step
        if self.processes > 1:
            self._start_shard(start_step)
            return
        self.reader = self._reader(self.stream, self.step_rows, self.remaining, start=self.position, seed=self.cfg.seed)
        try:
            self.lookahead: list[streaming.StreamStep] = self.reader.take(min(STREAM_LOOKAHEAD, self.remaining))
            if not self.lookahead and start_step == 0:
                if self.reader.dropped:
                    raise ValueError(
                        f"no full batch of {self.batch_size} examples with drop_last=True: the stream "
                        f"({self.stream.description}) holds {self.reader.dropped} only"
                    )
                raise ValueError(f"train_dataloader is empty: the stream ({self.stream.description}) holds no examples")
            if self.packing_plan is None:
                self.packing_plan = self._plan(self.lookahead, self.target.max_shapes)
        except BaseException:
            self.reader.close()
            raise

    def _start_shard(self, start_step: int) -> None:
        """Multi-host: plan from the global stream's first steps (every process reads the same ones), then read
        this process's shard."""
        stream = self.stream
        if self.packing_plan is None:
            planning, stream = stream.read_twice()
            reader = self._reader(
                planning,
                self.step_rows,
                min(STREAM_LOOKAHEAD, self.remaining),
                seed=self.cfg.seed,
                name="crossjax-stream-plan",
            )
            try:
                lookahead = reader.take(min(STREAM_LOOKAHEAD, self.remaining))
            finally:
                reader.close()
            if not lookahead and start_step == 0:
                raise ValueError(f"train_dataloader is empty: the stream ({self.stream.description}) holds no examples")
            # One shape, with rows of at least max_length tokens: no process can know which shape another needs,
            # and no later pair can be too long for a row.
            self.packing_plan = self._plan(lookahead, 1, self.target.max_length)
        self.local_groups = len(process_rows(self.target.plan.batch, self.groups))
        plan = self.packing_plan
        self.local_plan = packing.PackingPlan(plan.rows, plan.row_lengths, self.local_groups, plan.pairs)
        self.reader = self._reader(
            stream.sharded(self.process, self.processes),
            self.step_rows // self.processes,
            self.remaining,
            start=self.position,
            seed=(self.cfg.seed, self.process),
        )

    def _next(self) -> streaming.StreamStep | None:
        return self.lookahead.pop(0) if self.lookahead else self.reader.next_step()

    def stream_position(self) -> int:
        return self.position

    def steps(self) -> Any:
        """One epoch (0) of up to ``max_steps`` steps; the last one (known by reading one step ahead) ends it."""
        if self.processes > 1:
            yield from self._shard_steps()
            return
        taken = 0
        for step, last, failure in streaming.read_ahead(self._next, self.remaining):
            taken += 1
            if last and taken < self.remaining:
                logger.warning(
                    "The stream ended after %d examples, before max_steps=%d: training stops at step %d",
                    step.end,
                    self.total_steps,
                    self.start_step + taken,
                )
            indices = np.arange(len(step.tokenized), dtype=np.int64)
            batch = packing.pack(step.tokenized, indices, step.labels, self.packing_plan, self.target.pad_id)
            self.position = step.end
            yield TrainStep(0, self.start_step + taken, last, batch, len(indices))
            if failure is not None:  # raised before the step that would hold the bad example, as documented
                raise failure
        if taken == 0 and self.remaining and self.start_step > 0:
            logger.warning(
                "The stream has no examples past the data position of the checkpoint it resumes (%d examples "
                "trained on by step %d): nothing is trained. A stream that ended there is done; a shorter one is "
                "not the stream of that run.",
                self.position,
                self.start_step,
            )

    def _shard_steps(self) -> Any:
        """Multi-host: this process's share of each step in the agreed shape, the suffix that does not fit
        deferred (see :class:`ShardedStream` for the empty and aborted steps)."""
        plan = self.local_plan
        length = plan.row_lengths[-1]

        def fitting(lengths: np.ndarray) -> int:
            return packing.fitting_prefix(lengths, plan.groups, plan.pairs, plan.rows, length)

        chunks = iter(self.reader.next_step, None)
        shard = streaming.deferring_steps(chunks, self.step_rows // self.processes, fitting)
        empty = streaming.concat_pairs([])
        no_labels = data_lib.validate_examples([], self.target.model.num_labels)[2]  # the label dtype of all

        def pack_step(step: streaming.ShardStep | None) -> tuple[packing.PackedBatch, int]:
            if step is None:
                tokenized, labels, n = empty, no_labels, 0
            else:
                tokenized, labels, n = step.tokenized, step.labels, step.fitting
            batch = packing.pack(tokenized, np.arange(n, dtype=np.int64), labels, plan, self.target.pad_id)
            self.position += n
            return batch, n

        yield from self.shard_train_steps(shard, pack_step)

    def checkpoint_meta(self) -> dict[str, Any]:
        plan = {"rows": self.packing_plan.rows, "row_lengths": list(self.packing_plan.row_lengths)}
        meta: dict[str, Any] = {"stream_examples": self.position, "packing_plan": plan}  # a resume skips these
        if self.processes > 1:  # saving is collective anyway: every process's position, in process order
            meta["stream_examples_per_process"] = self.positions_of_processes()
            meta["stream_examples"] = sum(meta["stream_examples_per_process"])
        return meta

    def summary(self) -> dict[str, Any]:
        return {"stream_examples": self.position}  # examples of the stream (this process's shard) trained on

    def describe(self) -> tuple[int | None, list[tuple[list[str], Any]]]:
        """A stream's length is unknown; its first few examples (this process's shard's), once read."""
        return None, list(self.reader.first_examples) if self.reader is not None else []

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()


def global_real_tokens(data: Any, real_tokens: int) -> int:
    """The tokens every process trained: a multi-host stream's processes each count their own shard's (the
    others' batches hold the global step)."""
    if isinstance(data, ShardedStream) and data.processes > 1:
        from jax.experimental import multihost_utils

        return int(np.sum(multihost_utils.process_allgather(np.array([real_tokens], np.int64), tiled=True)))
    return int(real_tokens)


def _run_fit(
    target: FitTarget,
    train_dataloader: Any,
    loss_fct: Any,
    activation_fct: Any,
    callback: Callable | None,
    cfg: FitConfig,
    result: FitResult | None,
    monitor: training.CompileMonitor,
    data_source: Any = None,
) -> FitResult:
    result = FitResult() if result is None else result
    model = target.model
    # 1. Everything that can be wrong with the input is checked before any tokenization or compilation (a
    #    stream's examples as they are read: its first steps before compiling).
    cfg.validate()
    # an unknown scheduler name or option is reported before tokenizing anything
    schedule_options = scheduler_options(cfg.scheduler, cfg.scheduler_kwargs, cfg.learning_rate)
    local_checkpoints = cfg.checkpoint_path if "://" not in str(cfg.checkpoint_path) else None  # orbax: gs:// too
    if cfg.checkpoint_on_request:
        local_checkpoints = None  # made at the first save asked for
    ensure_writable_folders(
        [("output_path", cfg.output_path), ("log_dir", cfg.log_dir), ("checkpoint_path", local_checkpoints)]
    )
    if data_source is not None:  # prepared (and checked) by the caller
        stream, data = None, data_source
        loss_fn, activation = loss_fct, losses.identity
    else:
        stream = streaming.as_stream(train_dataloader, cfg.batch_size)
        loss_fn = losses.resolve_loss(loss_fct, model.num_labels)
        activation = losses.resolve_training_activation(activation_fct)
        ignored = losses.ignored_label(loss_fn)  # rows labelled so (torch's -100) are kept for the loss to skip
        data = (
            _StreamData(target, stream, cfg, ignored)
            if stream is not None
            else _InMemoryData(target, train_dataloader, cfg, ignored)
        )
        _warn_of_bce_labels_outside_0_1(loss_fn, getattr(data, "labels", None))
    _check_processes_agree(data, cfg, loss_fn, target.evaluate)
    plan = target.plan
    k = cfg.gradient_accumulation_steps
    total_steps = data.total_steps
    schedule = make_schedule(cfg.scheduler, cfg.learning_rate, cfg.warmup_steps, total_steps, schedule_options)

    # 2. The train state, placed on the mesh.
    nnx.reseed(model, dropout=cfg.seed, policy="match_shape")  # scanned layers hold one stream per layer
    params = nnx.state(model, nnx.Param)
    # Only structure is static in the compiled step (spec, mask, loss, activation, k, graph, shardings); the
    # numbers are traced arguments, so a later fit with other numbers reuses the program.
    spec = training.OptimizerSpec.create(
        cfg.scheduler, cfg.max_grad_norm, cfg.amsgrad, schedule_options, cfg.optimizer, cfg.optimizer_options
    )
    numbers = training.optimizer_hparams(
        cfg.learning_rate,
        cfg.warmup_steps,
        total_steps,
        cfg.weight_decay,
        tuple(cfg.adam_betas),
        cfg.adam_eps,
        cfg.max_grad_norm,
    )
    if cfg.learning_rate_mapping:
        numbers["lr_scales"], taken = training.learning_rate_scales(
            model, params, cfg.learning_rate_mapping, cfg.learning_rate
        )
        for pattern, count in taken.items():
            if not count:
                raise ValueError(
                    f"No parameters found matching the pattern '{pattern}' in the model. Please check the pattern "
                    f"and ensure it matches some of the model's parameters (their names: "
                    f"'{training.ST_PARAMETER_PREFIX}' + the Hugging Face name, as sentence-transformers names them)"
                )
    mask = training.decay_mask(model, params, cfg.decay_rule)
    layouts = training.hf_layouts(model, params) if spec.needs_layouts else None
    state, state_shardings = training.init_train_state(
        model, training.optimizer_for(spec, mask, numbers, layouts), plan
    )

    checkpointer = None
    start_step = 0
    resumed_epoch = 0  # the epoch of the step a run resumes at
    best_score = None
    best_model_path = None  # the folder holding the best model saved so far (kept across resumes)

    def open_checkpointer() -> Any:
        from crossjax.checkpoint import TrainCheckpointer

        fingerprint = {
            **data.run_fingerprint(),
            "num_labels": model.num_labels,
            "model_type": model.config.model_type,
            # another model's arrays would fail to restore as if the files were damaged: say it is another run
            "model_shape": {k: getattr(model.config, k, None) for k in _MODEL_SHAPE_KEYS},
            # stacked (scanned) and per-layer parameters are other trees: restoring one as the other would
            # fail as if the files were damaged
            "scan_layers": bool(getattr(getattr(model, "encoder", None), "scan", True)),
            "loss": describe_callable(loss_fn),
            "activation_fct": describe_callable(activation),
            **run_settings(cfg),
        }
        if stream is not None:
            fingerprint.pop("epochs", None)  # ignored for streams
        return TrainCheckpointer(
            cfg.checkpoint_path,
            cfg.checkpoint_save_steps,
            cfg.checkpoint_save_total_limit,
            fingerprint,
            target.kept_checkpoint or (lambda: None),
            model_only=cfg.checkpoint_model_only,
        )

    # training.weights_digest of the run's first step's parameters, kept in its checkpoints: only where a resume
    # checks it (fit's), since it reads every parameter once
    start_weights = None
    if cfg.checkpoint_path and not cfg.checkpoint_on_request:
        checkpointer = open_checkpointer()
        if target.resume_needs_own_weights:
            start_weights = training.weights_digest(state.params)
        try:
            restored = checkpointer.restore_latest(state, state_shardings)
            if restored is not None and start_weights is not None:
                _check_resumed_weights(restored, start_weights, checkpointer.directory)
        except BaseException:  # a refused resume leaves no orbax thread behind
            checkpointer.close()
            raise
        if restored is not None:
            state, meta = restored
            if start_weights is not None:
                start_weights = meta.get("start_weights", start_weights)
            start_step = int(meta["step"])
            resumed_epoch = int(meta.get("epoch", 0))
            best_score = meta.get("best_score")
            if best_score in (-9999999, 9999999):  # older checkpoints' "nothing evaluated yet"
                best_score = None
            best_model_path = meta.get("best_model_path")
            evaluates_here = target.evaluate is not None and not getattr(target.evaluate, "tracks_best", False)
            if best_score is not None and evaluates_here:
                best_model_path = _carry_best_model(best_score, best_model_path, cfg) or best_model_path
            data.resume(meta)
            # A checkpoint written before decay_rule was fingerprinted decayed with fit's rule: keep it, so the
            # resumed run continues as it started (the rules differ on DistilBERT's and ModernBERT's norms).
            rule = meta.get("fingerprint", {}).get("decay_rule", "fit")
            if rule != cfg.decay_rule:
                logger.warning("The resumed run decayed with %r's weight-decay rule: it keeps that rule", rule)
                mask = training.decay_mask(model, params, rule)
                checkpointer.fingerprint["decay_rule"] = rule
            if target.resume_state is not None:
                target.resume_state(meta)
            logger.info("Resuming from checkpoint step %d in %s", start_step, cfg.checkpoint_path)
            if start_step >= total_steps:
                logger.warning(
                    "The run in %s had finished (step %d of %d): nothing is left to train, and the model holds "
                    "that run's last weights. To train again, use another folder (fit's checkpoint_path, the "
                    "trainer's output_dir)",
                    cfg.checkpoint_path,
                    start_step,
                    total_steps,
                )
    try:
        data.start(start_step)
    except BaseException:
        if checkpointer is not None:
            checkpointer.close()
        raise

    graphdef = training.graphdef_with_dtype(model, cfg.compute_dtype, train=True)
    # One program per (loss, chunks) the data trains with (several datasets may have several losses); a list
    # loss's mini_batch_size splits each micro-batch into chunks of whole queries.
    step_losses = getattr(data, "step_losses", None) or [(loss_fn, 1)]
    programs = [
        training.train_program(graphdef, spec, mask, loss, activation, k * chunks, state_shardings, plan, layouts)[0]
        for loss, chunks in step_losses
    ]
    # A program may be shared with earlier fits: count this fit's traces only.
    traced_before = [len(program.counter.shapes_here()) for program in programs]
    hparams = put_global(numbers, plan.replicated)
    healthy = put_global(np.array(True), plan.replicated)
    gradients = training.new_gradient_buffer(state.params, state_shardings.params)
    used_shapes: set[tuple[int, ...]] = set()

    log_dir = cfg.log_dir if cfg.log_dir is not None else cfg.output_path
    training_log = logs.TrainingLog(log_dir) if log_dir is not None else None
    events = logs.RunCallbacks([training_log, *target.callbacks] if training_log else target.callbacks)
    metrics = _Metrics(result.history, schedule, events.on_log)
    stats = data_lib.PaddingStats()
    # A lower-is-better evaluator (``greater_is_better=False``, e.g. a loss) keeps its lowest score's model, as
    # sentence-transformers 6's fit does (old_fit kept the highest whatever the evaluator said).
    # The first finite evaluation always saves (no sentinel score a real one could fail to beat).
    greater_is_better = bool(getattr(target.evaluate, "greater_is_better", True))
    result.best_score = best_score
    bar = progress_bar(
        enabled=cfg.show_progress_bar,
        total=total_steps,
        initial=start_step,
        desc="Training",
        unit="step",
        smoothing=0.05,
    )
    global_step = start_step
    last_epoch = resumed_epoch
    started = time.perf_counter()
    trained_pairs = 0
    evaluate_fn = target.evaluate
    guard = target.guard

    def sync_model() -> None:
        # The step donates the state: the model's own arrays are stale (deleted) until synced back.
        try:
            nnx.update(model, state.params)
            nnx.update(model, state.rest)
        finally:
            guard.synced()

    unread_abort = None  # (flag, step): a multi-host stream step's abort flag (_StreamData._shard_steps), unread

    def stop_if_aborted() -> None:
        # Called before the next step is dispatched and before anything reads the last step's results (log,
        # evaluation, checkpoint, callbacks); a rule of the step count alone, so all processes stop after the
        # same steps and none is left in a collective. The read comes after the next batch is packed.
        nonlocal unread_abort
        if unread_abort is not None:
            (flag, aborted_step), unread_abort = unread_abort, None
            flag = int(jax.device_get(flag))
            if flag:
                metrics.drop_from(aborted_step)  # the aborted step trained nothing: no record of it
                data.abort(flag, aborted_step)

    def synced_model() -> None:
        stop_if_aborted()
        sync_model()

    def evaluate(epoch: int, steps: int) -> None:
        nonlocal best_model_path
        stop_if_aborted()
        metrics.flush()
        sync_model()
        if getattr(evaluate_fn, "takes_global_step", False):  # the trainer's hook logs by global step
            score = evaluate_fn(cfg.output_path, epoch, steps, global_step=global_step)
        else:
            score = evaluate_fn(cfg.output_path, epoch, steps)
        primary = getattr(evaluate_fn, "primary_metric", None)
        returned = score
        if getattr(evaluate_fn, "tracks_best", False):  # the trainer keeps its own best model
            score = None
        else:
            key = None
            if isinstance(score, dict):
                if primary in score:
                    key = primary
                elif len(score) == 1:
                    key = next(iter(score))
                else:
                    raise ValueError(f"evaluator returned {sorted(score)} but no primary_metric among them")
                score = score[key]
            score = logs.check_evaluator_number(score, getattr(evaluate_fn, "evaluator", evaluate_fn), key)
        events.on_evaluate(global_step, epoch, logs.evaluation_metrics(returned, primary))
        if callback is not None:  # the primary score, as sentence-transformers' fit passes it (and 3.x's did)
            callback(score, epoch, steps)
        best = result.best_score
        # a NaN (e.g. a correlation of constant scores) or an infinite score (a broken evaluator) is no best
        if score is None or not math.isfinite(score):
            better = False
        else:
            better = best is None or (score > best if greater_is_better else score < best)
        if better:
            result.best_score = float(score)
            if cfg.save_best_model and cfg.output_path is not None:
                events.on_save(global_step)
                target.save(cfg.output_path)
                best_model_path = str(Path(cfg.output_path).resolve())
        metrics.restart_clock()  # the throughput of the next logged steps leaves evaluation time out

    saved_step = start_step  # the last step checkpointed (or resumed from)

    def save_checkpoint(epoch: int) -> None:
        nonlocal saved_step
        stop_if_aborted()  # nor one whose data positions count pairs an aborted step did not train
        metrics.flush()  # never checkpoint a state whose last loss was not finite
        sync_model()  # the checkpoint holds the model of this step; callbacks after it see that model too
        own, best_params = target.checkpoint_state(global_step) if target.checkpoint_state else ({}, None)
        checkpointer.save(
            global_step,
            state,
            {
                "best_score": result.best_score,
                "best_model_path": best_model_path,
                "start_weights": start_weights,
                "epoch": epoch,
                **data.checkpoint_meta(),
                **own,
            },
            best_params=best_params,
            write_model=target.model_writer() if target.model_writer else None,
        )
        saved_step = global_step
        events.on_checkpoint(global_step)
        metrics.restart_clock()

    refused_folder = False  # checkpoints on request: the folder held another run's checkpoints

    def checkpointer_on_request() -> Any:
        """The checkpointer of a run that saves only when asked (the trainer's save_strategy="no": Hugging Face
        saves where a callback sets should_save), opened at the first ask, so that a run never asked makes no
        folder. A folder holding another run's checkpoints is left alone (a warning): its steps are never mixed
        with this run's, nor rotated away by save_total_limit."""
        nonlocal checkpointer, refused_folder
        if checkpointer is None and not refused_folder:
            folder = Path(cfg.checkpoint_path)
            if holds_checkpoints(folder):
                refused_folder = True
                logger.warning(
                    "A save was asked for at step %d, but %s holds checkpoints of an earlier run: nothing is saved "
                    "there in this run (choose another output_dir to keep this run's)",
                    global_step,
                    folder,
                )
            else:
                checkpointer = open_checkpointer()
        return checkpointer

    def checkpoint_step(epoch: int, requested: bool = False) -> bool:
        """Checkpoints this step unless it already is (a second ask at a step keeps its first checkpoint: orbax
        writes a step once); returns whether the run keeps checkpoints. ``requested``: the trainer's flow asks for
        this save (a run with ``checkpoint_on_request`` saves only then)."""
        if cfg.checkpoint_on_request and (not requested or checkpointer_on_request() is None):
            return False
        if checkpointer is not None and global_step != saved_step:
            save_checkpoint(epoch)
        return checkpointer is not None

    def maybe_checkpoint(epoch: int) -> None:
        # Every checkpoint_save_steps, and the run's last step
        if global_step % cfg.checkpoint_save_steps == 0 or global_step == total_steps:
            checkpoint_step(epoch)

    def flush_records() -> None:
        stop_if_aborted()
        metrics.flush()

    def step_end(epoch: int, steps_in_epoch: int, resumed: bool = False, micro_batches: int = 1) -> StepEnd:
        return StepEnd(
            global_step=global_step,
            resumed=resumed,
            sync=synced_model,
            flush=flush_records,
            evaluate=lambda epoch_end: evaluate(epoch, -1 if epoch_end else steps_in_epoch),
            save=lambda: checkpoint_step(epoch, requested=True),
            committed=lambda: checkpointer.wait() if checkpointer is not None else None,
            micro_batches=micro_batches,
            real_tokens=stats.real_tokens,
        )

    def stop_preempted(epoch: int) -> None:
        # This step checkpointed (committed) where the run keeps checkpoints, then a stop every process makes
        kept = checkpointer is not None and checkpoint_step(epoch)
        if kept:
            checkpointer.wait()
        if kept and cfg.checkpoint_model_only:  # the trainer's save_only_model: no optimizer state, no data position
            how = (
                f"its checkpoints hold the model only (save_only_model=True), which no run resumes from; this step's "
                f"model is in {Path(str(checkpointer.directory)) / str(global_step) / 'model'}"
            )
        elif target.resume_needs_own_weights:  # fit resumes by itself; the trainer when asked, as Hugging Face's
            how = "run the same fit again to resume from there"
        else:
            how = (
                "run the trainer again with resume_from_checkpoint=True (or, in a script that also starts the run, "
                "crossjax.trainer.get_last_checkpoint(output_dir), None before any checkpoint) to resume from there"
            )
        error = TrainingPreempted(global_step, str(checkpointer.directory) if kept else None, how_to_resume=how)
        logger.warning("%s", error)
        raise error

    completed = False
    end_error: Exception | None = None
    card_name, card_config = card_loss(loss_fct, loss_fn, activation_fct, activation)
    interrupts = StepInterrupts()
    preemption = PreemptionNotice()
    preemption.install(watch=checkpointer is not None)
    try:  # the notice is watched until the run's model is saved: one meanwhile stops it after that
        try:
            interrupts.install()
            train_examples, train_samples = data.describe()
            events.on_train_begin(
                logs.RunInfo(
                    total_steps=total_steps,
                    start_step=start_step,
                    steps_per_epoch=getattr(data, "steps_per_epoch", None),
                    train_examples=train_examples,
                    train_samples=train_samples,
                    loss=card_name,
                    loss_config=card_config,
                    activation=describe_callable(activation),
                    config={**_settings(cfg), "batch_size": data.batch_size},
                    default_config=_settings(FitConfig()),
                    devices=logs.describe_devices(plan.mesh.devices.flat),
                    previous_records=training_log.previous_records(start_step) if training_log else [],
                    log_dir=str(log_dir) if training_log else None,
                )
            )
            if cfg.evaluate_on_start and evaluate_fn is not None:
                evaluate(0, 0)
            # a resumed run's flow may end it before its first step (a stop asked for at the epoch end it redoes)
            stopped = target.on_step is not None and start_step > 0 and target.on_step(step_end(last_epoch, -1, True))
            for step in () if stopped else data.steps():
                stats.add(step.batch)
                used_shapes.add(tuple(step.batch.input_ids.shape))
                program = programs[step.source]
                global_batch = (
                    training.batch_to_global(step.batch, plan)
                    if step.global_groups is None
                    else training.batch_to_global(step.batch, plan, step.global_groups)
                )
                if step.global_groups is not None:
                    global_batch["abort"] = global_batch_array(
                        np.full(len(step.batch.input_ids), step.abort, np.int32), plan.batch, step.global_groups
                    )
                    stop_if_aborted()
                if target.on_step_begin is not None:
                    stop_if_aborted()
                    target.on_step_begin(global_step, step.epoch, step.steps_in_epoch == 1 or global_step == start_step)
                guard.step()  # waits while another thread's predict dispatches work on the model's arrays
                interrupts.inside = True  # the old state is donated: the new one must be assigned
                state, step_metrics, gradients = program.fn(state, global_batch, healthy, hparams, gradients)
                interrupts.step_done()
                healthy = step_metrics["finite"]  # stays on the device: a bad step freezes all later ones
                if "abort" in step_metrics:
                    unread_abort = (step_metrics["abort"], global_step + 1)
                if step.probe:
                    stop_if_aborted()
                if step.probe and float(jax.device_get(step_metrics["pairs"])) == 0:
                    # No process had a pair (every process reads the same count): the step changed nothing and
                    # the run ends here on all of them; fit's epoch end is evaluated as a stream's end would be (the
                    # trainer's flow has no epoch end for a stream that ends before max_steps, on one process or many).
                    data.stream_ended(global_step)
                    if evaluate_fn is not None and target.on_step is None:
                        evaluate(last_epoch, -1)
                    break
                global_step += 1
                last_epoch = step.epoch
                trained_pairs += step.pairs
                metrics.add(global_step, step.epoch, step_metrics, step.pairs)
                if global_step % cfg.logging_steps == 0:
                    flush_records()
                    if bar is not None:
                        bar.set_postfix(loss=f"{metrics.last_loss:.4f}", pairs_per_s=f"{metrics.pairs_per_second:.1f}")
                if bar is not None:
                    bar.update(1)
                if target.on_step is not None:
                    if target.on_step(step_end(step.epoch, step.steps_in_epoch, micro_batches=step.micro_batches)):
                        break
                else:
                    evaluates = evaluate_fn is not None and cfg.evaluation_steps > 0
                    if evaluates and step.steps_in_epoch % cfg.evaluation_steps == 0:
                        evaluate(step.epoch, step.steps_in_epoch)
                    # An epoch's last step is checkpointed after the epoch's evaluation, so a preemption between the
                    # two never skips that evaluation and its best-model save on resume.
                    if step.last_in_epoch and evaluate_fn is not None:
                        evaluate(step.epoch, -1)
                    maybe_checkpoint(step.epoch)
                if preemption.reached(global_step) and global_step < total_steps:  # the last step: the run completes
                    stop_preempted(step.epoch)
            stop_if_aborted()
            metrics.flush()
            checkpoint_step(last_epoch)  # a run that stopped early
            completed = True
        finally:
            interrupts.uninstall()
            # Ctrl-C, an evaluator or callback error, OOM, a checkpoint error or a non-finite loss: the model keeps
            # the last completed step's parameters (the state was only ever replaced by finished steps), and the
            # records of its steps not yet logged (a failing step's own error, or a non-finite loss, is not masked).
            try:
                sync_model()
            finally:
                if not completed:  # in a multi-process run a pending step may wait on a process that is gone
                    if unread_abort is not None:  # a step whose stream-abort flag was never read may not have trained
                        metrics.drop_from(unread_abort[1])
                    with contextlib.suppress(Exception):
                        metrics.flush(finished_only=jax.process_count() > 1)
                data.close()
            if not completed and start_weights is not None and jax.process_count() == 1:
                with contextlib.suppress(Exception):  # never masks the run's own error
                    _STOPPED_RUNS[checkpointer.directory] = training.weights_digest(state.params)
            if bar is not None:
                bar.close()
            if checkpointer is not None:
                checkpointer.close()
            try:
                events.on_train_end(completed)  # closes the logs (a killed run keeps them) and draws the curves
            except Exception as error:  # noqa: BLE001 - raised only after a completed run: the model is saved first
                end_error = error
        # Without an evaluator the trained model is saved at the end (sentence-transformers' fit saves nothing then:
        # an output_path given would end empty); save_best_model=False saves nothing, as there
        # Nor does it when no evaluation scored (all NaN: e.g. a correlation of constant predictions); crossjax saves
        # the trained model then too, and says why
        if cfg.output_path is not None and cfg.save_best_model and (evaluate_fn is None or result.best_score is None):
            if evaluate_fn is not None:
                logger.warning(
                    "No evaluation gave a finite score, so no best model was saved during training; saving the final "
                    "model to %s",
                    cfg.output_path,
                )
            events.on_save(global_step)
            target.save(cfg.output_path)
        if end_error is not None:  # a log writer or callback failed at the end: the trained model is saved by now
            raise end_error
    finally:
        preemption.uninstall()
    elapsed = time.perf_counter() - started
    traced = sum(len(p.counter.shapes_here()) - before for p, before in zip(programs, traced_before, strict=True))
    compiled_shapes = sorted(
        {shape for p, before in zip(programs, traced_before, strict=True) for shape in p.counter.shapes_here()[before:]}
    )
    result.compilations = traced
    result.summary = {
        "global_step": global_step,
        "resumed_from_step": start_step,  # 0 unless a checkpoint was restored
        **data.summary(),
        # Hugging Face's train_loss: the mean over the steps this call trained (a resumed run's, its own)
        "train_loss": metrics.loss_sum / metrics.loss_steps if metrics.loss_steps else float("nan"),
        "last_loss": metrics.last_loss,
        "compilations": traced,  # train-step programs traced (and compiled or loaded) in this fit
        "compiled_shapes": compiled_shapes,
        # batch shapes whose train step an earlier fit of this process had already compiled
        "reused_programs": len(used_shapes - set(compiled_shapes)),
        # wall time JAX spent tracing, lowering and compiling (or loading from the persistent cache) in this
        # fit, every program included (the optimizer state's init, evaluators' predict steps)
        "compile_seconds": monitor.seconds,
        "cache_hits": monitor.cache_hits,  # programs loaded from the persistent compilation cache
        "padding_efficiency": stats.efficiency,
        "real_tokens": global_real_tokens(data, stats.real_tokens),  # of the pairs trained in this fit
        "pairs_per_second": trained_pairs / elapsed if elapsed > 0 else float("nan"),
        "best_score": None if evaluate_fn is None else result.best_score,
        "config": {k: v for k, v in asdict(cfg).items() if k != "compute_dtype"},
    }
    logger.info(
        "fit done: %d steps, %d compilations (packed shapes %s, %.1f s compiling, %d persistent-cache hits), "
        "padding efficiency %.1f%%, %.1f pairs/s",
        global_step,
        traced,
        compiled_shapes,
        monitor.seconds,
        monitor.cache_hits,
        100 * stats.efficiency,
        result.summary["pairs_per_second"],
    )
    if preemption.noticed:  # SIGTERM as the run ended: it completed and saved; the process still has to stop
        error = TrainingPreempted(global_step, None, finished=True)
        logger.warning("%s", error)
        raise error
    return result
