"""``CrossEncoderTrainer``: sentence-transformers 4+'s trainer API over crossjax's one training loop.

A sentence-transformers 6 script runs after changing its imports: the same dataset column conventions (input
columns in order; the label from ``label``/``labels``/``score``/``scores``), the same losses
(:mod:`crossjax.losses`), arguments (:class:`crossjax.training_args.CrossEncoderTrainingArguments`) and
evaluators. Underneath, each step's rows are laid out by the loss into (query, documents) lists, packed
(:mod:`crossjax.list_batches`) and trained by the same jitted step, mesh and orbax checkpoints as ``fit``
(:func:`crossjax.fit_loop.run_fit`).

Differences from sentence-transformers, by design: batches are drawn with numpy's seeded generator (the same
rows per batch as a torch sampler cannot be promised); ``train()`` returns a ``TrainOutput`` whose ``metrics``
also hold crossjax's run summary (compilations, padding efficiency, pairs/s); checkpoints are orbax
checkpoints in ``output_dir/checkpoints`` (resumed bit-exactly), not ``checkpoint-N`` PyTorch folders.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax import logs, losses, parallel, training
from crossjax.cross_encoder import check_keep_in_fp32
from crossjax.data import LABEL_COLUMNS, column_values
from crossjax.list_batches import ListData, MultiListData, StreamListData
from crossjax.logs import RunCallback, epoch_at
from crossjax.model_card import CardRecorder
from crossjax.runtime import is_main_process
from crossjax.step_folders import checkpoint_steps, holds_checkpoints, is_checkpoint_step, step_model
from crossjax.streaming import is_datasets_stream
from crossjax.training_args import CrossEncoderTrainingArguments

if TYPE_CHECKING:
    from crossjax.fit_loop import StepEnd

logger = logging.getLogger("crossjax")

__all__ = ["CallbackHandler", "CrossEncoderTrainer", "TrainOutput", "TrainerState", "TrainerControl"]

# Hugging Face Trainer arguments without a crossjax meaning, and why (each is taken at its default).
_TOKENIZER = "is the model's tokenizer in crossjax: set CrossEncoder(..., tokenizer_kwargs=...) or model.tokenizer"
_UNUSED_TRAINER_ARGUMENTS = {
    "data_collator": "collates PyTorch batches; crossjax tokenizes and packs its own",
    "tokenizer": _TOKENIZER,
    "processing_class": _TOKENIZER,
    "model_init": "makes a model per hyper-parameter trial; crossjax trains the model= given",
    "compute_metrics": "scores Hugging Face's prediction loop; crossjax evaluates with evaluator=",
    "optimizers": "hands in a PyTorch optimizer and scheduler; crossjax's are optax's, set by the arguments",
    "optimizer_cls_and_kwargs": "names a PyTorch optimizer; crossjax's is optax's AdamW, set by the arguments",
    "preprocess_logits_for_metrics": "feeds compute_metrics, which crossjax has not (use evaluator=)",
}


class TrainOutput(NamedTuple):
    """What ``train()`` returns (Hugging Face's fields); ``metrics`` adds crossjax's run summary."""

    global_step: int
    training_loss: float
    metrics: dict[str, Any]


@dataclass
class TrainerState:
    """Hugging Face's ``TrainerState`` fields (so that its own callbacks, e.g. ``DefaultFlowCallback``, run).
    ``best_model_checkpoint`` is the checkpoint step folder of the best metric's step, once saved (as there;
    ``CrossEncoder(best_model_checkpoint)`` loads its model)."""

    global_step: int = 0
    max_steps: int = 0
    epoch: float = 0
    num_train_epochs: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_world_process_zero: bool = True
    is_local_process_zero: bool = True
    logging_steps: int | float = 500
    eval_steps: int | float = 500
    save_steps: int | float = 500
    train_batch_size: int | None = None
    total_flos: float = 0.0
    num_input_tokens_seen: int = 0
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainerControl:
    """Hugging Face's control: what the run does after ``on_step_end`` / ``on_epoch_end`` (log, evaluate, save,
    stop); the arguments' schedule sets it first, then callbacks may change it."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_log: bool = False
    should_evaluate: bool = False
    should_save: bool = False

    def state(self) -> dict[str, Any]:
        """Hugging Face's ``ExportableState``: what a checkpoint keeps of the control."""
        return {"args": asdict(self), "attributes": {}}


def _exportable(callback: Any) -> bool:
    """Hugging Face's stateful callbacks (``ExportableState``, e.g. ``EarlyStoppingCallback``) and the control."""
    from transformers.trainer_callback import ExportableState

    return isinstance(callback, ExportableState | TrainerControl)


def callback_states(callbacks: Sequence[Any]) -> dict[str, Any]:
    """``TrainerState.stateful_callbacks``: each stateful callback's ``state()`` by class name (a list where a
    class has several), as Hugging Face's ``TrainerState`` keeps them."""
    states: dict[str, Any] = {}
    for callback in filter(_exportable, callbacks):
        name, state = type(callback).__name__, callback.state()
        if name not in states:
            states[name] = state
        elif isinstance(states[name], list):
            states[name].append(state)
        else:
            states[name] = [states[name], state]
    return states


def dataset_columns(dataset: Any, name: str) -> tuple[list[str], list[list[Any]], list[Any] | None]:
    """(input column names, input columns, labels or None) of a ``datasets.Dataset`` or a dict of lists.

    A ``datasets.IterableDataset`` is read once, whole, into memory (the trainer streams a training dataset
    itself: :class:`~crossjax.list_batches.StreamListData`).
    A dataset formatted to some of its columns (``set_format(columns=...)``) gives those. The columns
    sentence-transformers reserves (``dataset_name``, ``return_loss``) are refused, as it refuses them."""
    dataset = in_memory(dataset)
    if hasattr(dataset, "column_names") and hasattr(dataset, "__getitem__"):
        names = _column_names(dataset)
    elif isinstance(dataset, dict) and all(_is_column(v) and not isinstance(v, str) for v in dataset.values()):
        names = list(dataset)
    else:
        raise TypeError(f"{name} must be a datasets.Dataset (or a dict of equal-length columns), got {type(dataset)}")
    inputs, label_name = _inputs_and_label(names, name)
    columns = [list(column_values(dataset, c)) for c in inputs]
    lengths = {len(c) for c in columns}
    if len(lengths) != 1:
        raise ValueError(f"{name}'s columns differ in length: {dict(zip(inputs, map(len, columns), strict=True))}")
    labels = None if label_name is None else list(column_values(dataset, label_name))
    return inputs, columns, labels


def _inputs_and_label(names: list[str], name: str) -> tuple[list[str], str | None]:
    """(input columns, label column or None) of a dataset with columns ``names``: the label is the first of
    :data:`LABEL_COLUMNS` there, every other column an input. The columns sentence-transformers reserves are
    refused, as it refuses them."""
    _refuse_reserved_columns(names, name)
    label_name = next((c for c in LABEL_COLUMNS if c in names), None)
    inputs = [c for c in names if c != label_name]
    if not inputs:
        raise ValueError(f"{name} has no input columns (columns: {names})")
    return inputs, label_name


class _StreamColumns:
    """A stream's rows (dicts) as the trainer's columns, named as :func:`dataset_columns` names a dataset's: from
    the stream's schema where it has one, else from its first row."""

    def __init__(self, stream: Any, name: str, prepare: Callable[[list[list[Any]]], list[list[Any]]]) -> None:
        self.name, self.prepare = name, prepare
        names = getattr(stream, "column_names", None)
        self.columns = _inputs_and_label(list(names), name) if names else None

    def __call__(self, rows: list[Any], first_row: int) -> tuple[list[list[Any]], list[Any] | None]:
        if not all(isinstance(row, dict) for row in rows):
            bad = next(i for i, row in enumerate(rows) if not isinstance(row, dict))
            kind = type(rows[bad]).__name__
            raise TypeError(f"{self.name}: row {first_row + bad} of the stream is a {kind}, not a dict of columns")
        if self.columns is None:
            self.columns = _inputs_and_label(list(rows[0]), self.name)
        inputs, label_name = self.columns
        columns = [[row.get(c) for row in rows] for c in inputs]
        labels = None if label_name is None else [row.get(label_name) for row in rows]
        return self.prepare(columns), labels


def in_memory(dataset: Any, what: str | None = None, why: str = "") -> Any:
    """``dataset`` with each ``datasets.IterableDataset`` in it read once, whole, into a ``datasets.Dataset``
    (a dict of datasets keeps its names); anything else as it is. With ``what`` (its name), a warning says
    that a stream is read, and ``why``, before reading it (a large or endless one takes long)."""
    if isinstance(dataset, dict) and _is_dataset_dict(dataset):
        if not _has_stream(dataset):
            return dataset
        return {name: in_memory(one, what and f"{what}[{name!r}]", why) for name, one in dataset.items()}
    if is_datasets_stream(dataset):
        from datasets import Dataset

        if what is not None:
            logger.warning("%s is a datasets.IterableDataset; it is read whole into memory: %s", what, why)
        rows, features = list(dataset), getattr(dataset, "features", None)
        if not rows and features:  # the stream's columns where known, so that it is named as empty
            return Dataset.from_dict({column: [] for column in features}, features=features)
        try:
            return Dataset.from_list(rows)
        except (TypeError, ValueError):  # pyarrow's ArrowTypeError / ArrowInvalid: mixed types in a column
            # plain columns instead, so that the row checks name the bad value as for data held in memory
            return {column: [row.get(column) for row in rows] for column in rows[0]}
    return dataset


def _has_stream(datasets: dict) -> bool:
    return any(is_datasets_stream(one) for one in datasets.values())


def _column_names(dataset: Any) -> list[str]:
    """The columns a dataset gives: those of its format (``set_format(columns=...)``), else all; a dict's keys."""
    if not hasattr(dataset, "column_names"):
        return list(dataset) if isinstance(dataset, dict) else []
    shown = (getattr(dataset, "format", None) or {}).get("columns")
    hidden = shown is not None and not dataset.format.get("output_all_columns")
    # in the dataset's column order, as a row's keys come (datasets lists a format's columns in its own order:
    # sorted after a select, shuffle or split), which sentence-transformers' collator reads
    return [c for c in dataset.column_names or [] if not hidden or c in shown]


def _refuse_reserved_columns(names: list[str], name: str) -> None:
    if reserved := sorted(set(names) & {"dataset_name", "return_loss"}):
        raise ValueError(
            f"The following column names are invalid in {name}: {reserved}. Avoid using these column names, as "
            "sentence-transformers reserves them for internal use"
        )


def _is_dataset_dict(value: dict) -> bool:
    """A dict of named datasets (``DatasetDict`` or ``{"name": Dataset}``), not a dict of columns."""
    return bool(value) and all(hasattr(v, "column_names") or not _is_column(v) for v in value.values())


def _is_column(value: Any) -> bool:
    """A dict's value that holds a column: a sequence, or an array or pandas Series (``tolist``)."""
    return isinstance(value, Sequence) or (hasattr(value, "tolist") and hasattr(value, "__len__"))


# The events of Hugging Face's TrainerCallback, and the control flags its CallbackHandler clears before one.
HF_EVENTS = (
    "on_init_end", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_step_begin",
    "on_pre_optimizer_step", "on_optimizer_step", "on_substep_end", "on_step_end", "on_evaluate", "on_predict",
    "on_save", "on_log", "on_prediction_step", "on_push_begin",
)  # fmt: skip
_EVENT_CLEARS = {
    "on_train_begin": ("should_training_stop",),
    "on_epoch_begin": ("should_epoch_stop",),
    "on_step_begin": ("should_log", "should_evaluate", "should_save"),
    "on_evaluate": ("should_evaluate",),
    "on_save": ("should_save",),
    "on_log": ("should_log",),
}


class CallbackHandler:
    """Hugging Face's ``CallbackHandler`` (``trainer.callback_handler``): the callbacks in order, and the event
    call. Every callback gets the model and its tokenizer; the PyTorch objects (optimizer, scheduler,
    dataloaders) are None here, so a callback method needs ``**kwargs``, as with Hugging Face's Trainer."""

    def __init__(self, callbacks: Sequence[Any], model: Any, processing_class: Any) -> None:
        self.callbacks: list[Any] = []
        for callback in callbacks:
            self.add_callback(callback)
        self.model, self.processing_class = model, processing_class
        self.optimizer = self.lr_scheduler = self.train_dataloader = self.eval_dataloader = None

    @property
    def callback_list(self) -> str:
        return "\n".join(type(callback).__name__ for callback in self.callbacks)

    def add_callback(self, callback: Any) -> None:
        """Add an instance, or a class (made with no arguments); a second of a class is added with a warning."""
        instance = callback() if isinstance(callback, type) else callback
        if not any(callable(getattr(instance, event, None)) for event in HF_EVENTS):
            raise TypeError(
                f"callback {callback!r} has none of Hugging Face's TrainerCallback events ({', '.join(HF_EVENTS[:4])}, "
                "...): pass a transformers.TrainerCallback (or any object with such methods), or its class"
            )
        if type(instance) in (type(present) for present in self.callbacks):
            logger.warning(
                "Adding a %s to the callbacks of this trainer, which already has one. The callbacks are:\n%s",
                type(instance).__name__,
                self.callback_list,
            )
        self.callbacks.append(instance)

    def pop_callback(self, callback: Any) -> Any:
        """Remove and return a callback (an instance, or the first of a class); None if there is none.
        Hugging Face's ``PrinterCallback`` / ``ProgressCallback`` classes name crossjax's log printers."""
        for i, present in enumerate(self.callbacks):
            if present is callback or (isinstance(callback, type) and _is_instance(present, callback)):
                return self.callbacks.pop(i)
        return None

    def remove_callback(self, callback: Any) -> None:
        """Remove a callback: the first of a class (if any), or an instance, which must be there (as Hugging
        Face's ``list.remove`` requires)."""
        if self.pop_callback(callback) is None and not isinstance(callback, type):
            raise ValueError(f"remove_callback: {callback!r} is not among the trainer's callbacks")

    def call_event(self, event: str, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        """Hugging Face's ``call_event``: each callback's ``event`` method in order; a control a callback
        returns replaces the one the next callback gets. Returns the last control."""
        objects = {
            "model": self.model,
            "processing_class": self.processing_class,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "train_dataloader": self.train_dataloader,
            "eval_dataloader": self.eval_dataloader,
        }
        for callback in self.callbacks:
            method = getattr(callback, event, None)
            if method is not None:
                returned = method(args, state, control, **{**objects, **kwargs})
                if returned is not None:
                    control = returned
        return control

    def user_callbacks(self) -> list[Any]:
        """The callbacks besides crossjax's log printer (those need the model synced at every step)."""
        return [callback for callback in self.callbacks if not isinstance(callback, _LogPrinter)]


def _event_method(event: str) -> Callable[..., Any]:
    """Hugging Face's ``CallbackHandler.on_*``: clear the control flags the event answers, then call it."""

    def call(self: CallbackHandler, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        for flag in _EVENT_CLEARS.get(event, ()):
            setattr(control, flag, False)
        return self.call_event(event, args, state, control, **kwargs)

    call.__name__ = event
    return call


for _event in HF_EVENTS:
    setattr(CallbackHandler, _event, _event_method(_event))


def _is_instance(callback: Any, cls: type) -> bool:
    return isinstance(callback, cls) or (
        isinstance(callback, _LogPrinter) and cls.__name__ == type(callback).__name__  # Hugging Face's class
    )


class _LogPrinter:
    """Prints each log entry as Hugging Face's default printer callbacks do (floats to 4 significant digits)."""

    def __init__(self) -> None:
        self.training = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.training = False

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is not None and self.prints() and is_main_process():
            from tqdm.auto import tqdm

            shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in logs.items() if k != "total_flos"}
            tqdm.write(str(shown))

    def prints(self) -> bool:
        return True


class PrinterCallback(_LogPrinter):
    """Hugging Face's ``PrinterCallback`` (with ``disable_tqdm``): every log entry, ``evaluate()``'s too."""


class ProgressCallback(_LogPrinter):
    """Hugging Face's ``ProgressCallback``'s log lines: the entries logged while training (above the bar)."""

    def prints(self) -> bool:
        return self.training


def _made_loss(loss: Any, model: Any) -> Any:
    """A loss object, or the one a loss class or factory makes for ``model`` (sentence-transformers' rule)."""
    from crossjax.losses.torch_compat import is_torch_module, is_torch_module_class

    if isinstance(loss, type):
        return loss if is_torch_module_class(loss) else loss(model)
    if callable(loss) and not training.is_list_loss(loss) and not is_torch_module(loss):
        return loss(model)
    return loss  # a sentence-transformers (torch) loss is named below


class CrossEncoderTrainer:
    """Train a :class:`crossjax.CrossEncoder` as sentence-transformers' ``CrossEncoderTrainer`` does.

    ``loss`` defaults to ``BinaryCrossEntropyLoss`` (one label) or ``CrossEntropyLoss``, as in
    sentence-transformers; ``evaluator`` is any crossjax evaluator (or a list of them), whose metrics are logged
    with the ``eval_`` prefix; ``callbacks`` are Hugging Face ``TrainerCallback``-like objects (``on_train_begin``,
    ``on_step_end``, ``on_log``, ``on_evaluate``, ``on_save``, ``on_epoch_end``, ``on_train_end`` are called with
    ``(args, state, control, ...)``; the control's ``should_log`` / ``should_evaluate`` / ``should_save`` /
    ``should_training_stop`` are acted on after ``on_step_end`` and ``on_epoch_end``, as Hugging Face does).
    """

    def __init__(
        self,
        model: Any = None,
        args: CrossEncoderTrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        loss: Any = None,
        evaluator: Any = None,
        data_collator: Any = None,
        processing_class: Any = None,
        model_init: Any = None,
        compute_metrics: Any = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        optimizer_cls_and_kwargs: Any = None,
        preprocess_logits_for_metrics: Any = None,
        **kwargs: Any,
    ) -> None:
        # sentence-transformers' parameters in its order (a positional callbacks= lands where it lands there);
        # those crossjax has no use for are accepted at their defaults only, as ``kwargs`` (legacy ``tokenizer=``)
        kwargs = {
            "data_collator": data_collator, "processing_class": processing_class, "model_init": model_init,
            "compute_metrics": compute_metrics, "optimizers": optimizers,
            "optimizer_cls_and_kwargs": optimizer_cls_and_kwargs,
            "preprocess_logits_for_metrics": preprocess_logits_for_metrics, **kwargs,
        }  # fmt: skip
        if model is None:
            raise ValueError("CrossEncoderTrainer needs model= (a crossjax.CrossEncoder)")
        if not hasattr(model, "mesh_plan") or not hasattr(model, "tokenizer"):
            raise TypeError(f"model must be a crossjax.CrossEncoder, got {type(model).__name__}")
        for key, value in kwargs.items():
            if key not in _UNUSED_TRAINER_ARGUMENTS:
                raise TypeError(f"CrossEncoderTrainer got an unexpected keyword argument {key!r}")
            if value is None or (key == "optimizers" and tuple(value) == (None, None)):  # their defaults
                continue
            if key in ("processing_class", "tokenizer") and value is model.tokenizer:  # what the trainer uses anyway
                continue
            raise ValueError(f"CrossEncoderTrainer: {key}= {_UNUSED_TRAINER_ARGUMENTS[key]}")
        self.model = model
        if args is not None and not isinstance(args, CrossEncoderTrainingArguments):
            raise TypeError(
                f"args must be a crossjax.CrossEncoderTrainingArguments, got {type(args).__name__} (sentence-"
                "transformers' arguments convert: CrossEncoderTrainingArguments(**their.to_dict()))"
            )
        # sentence-transformers' folder when no arguments are given (Hugging Face's when output_dir is unset)
        self.args = args if args is not None else CrossEncoderTrainingArguments(output_dir="tmp_trainer")
        if self.args.output_dir is None:
            self.args.output_dir = "trainer_output"
        # args.train_batch_size / eval_batch_size count the model's data-parallel devices here, as the run does
        self.args.__dict__["_model_data_devices"] = model.mesh_plan.local_data_shards
        if self.args.use_cpu and model.device != "cpu":
            raise ValueError(
                f"use_cpu=True but the model runs on {model.device}: crossjax trains where the model was placed; "
                "make it with CrossEncoder(..., device='cpu')"
            )
        # one stream is read as the run goes (_one_list_data); evaluation and several datasets read theirs whole
        several = "several training datasets are sampled by their lengths (stream one dataset with max_steps)"
        self.train_dataset = (
            train_dataset if is_datasets_stream(train_dataset) else in_memory(train_dataset, "train_dataset", several)
        )
        self.eval_dataset = in_memory(eval_dataset, "eval_dataset", "an evaluation reads every row")
        train_dataset, eval_dataset = self.train_dataset, self.eval_dataset
        for dataset, what in ((train_dataset, "train_dataset"), (eval_dataset, "eval_dataset")):
            named = dataset.items() if isinstance(dataset, dict) and _is_dataset_dict(dataset) else [(None, dataset)]
            for name, one in named:
                _refuse_reserved_columns(_column_names(one), what if name is None else f"{what}[{name!r}]")
        if loss is None:
            loss = losses.BinaryCrossEntropyLoss(model) if model.num_labels == 1 else losses.CrossEntropyLoss(model)
        # as sentence-transformers, a loss may also be given as its class or a factory of the model
        loss = {k: _made_loss(v, model) for k, v in loss.items()} if isinstance(loss, dict) else _made_loss(loss, model)
        for name, one in loss.items() if isinstance(loss, dict) else [("loss", loss)]:
            if not training.is_list_loss(one):
                raise TypeError(
                    f"{name} must be a crossjax.losses loss (e.g. crossjax.losses.BinaryCrossEntropyLoss(model)), "
                    f"got {one.__module__ + '.' + one.__name__ if isinstance(one, type) else type(one).__name__}"
                )
        for one in loss.values() if isinstance(loss, dict) else [loss]:
            if getattr(one, "model", model) is not model and hasattr(one, "bind_model"):
                one.bind_model(model)  # as sentence-transformers' trainer puts its model into its losses
        self.loss = loss
        for dataset, what in ((train_dataset, "train_dataset"), (eval_dataset, "eval_dataset")):
            self._check_losses_for(dataset, what)
        if isinstance(evaluator, list | tuple):  # as sentence-transformers: one evaluator, with sequential_score
            from crossjax.evaluation import SequentialEvaluator

            evaluator = SequentialEvaluator(evaluator) if evaluator else None
        self.evaluator = evaluator
        if self.args.eval_strategy != "no" and eval_dataset is None and evaluator is None:
            raise ValueError(
                f"args.eval_strategy={self.args.eval_strategy!r} but neither eval_dataset nor evaluator was given: "
                "pass one, or set eval_strategy='no'"
            )
        if self.args.eval_on_start and eval_dataset is None and evaluator is None:
            raise ValueError("args.eval_on_start=True but neither eval_dataset nor evaluator was given: pass one")
        # Hugging Face's printer goes last, after the user's callbacks (it prints what they changed in a log)
        printer = PrinterCallback if self.args.disable_tqdm else ProgressCallback
        self.callback_handler = CallbackHandler([*(callbacks or []), printer], model, model.tokenizer)
        self.state = TrainerState()
        self.control = TrainerControl()
        # As sentence-transformers' card callback at the trainer's creation: the model's card is now generated
        # anew at save (a card it was loaded with no longer describes it)
        model.model_card_data.add_tags("generated_from_trainer")
        self._in_train = False  # evaluate() during train(): the evaluator runs with the first eval dataset only
        self._call_back("on_init_end")

    def _check_losses_for(self, dataset: Any, what: str) -> None:
        """A dict of losses needs a dict of datasets, each named among the losses."""
        if not isinstance(self.loss, dict) or dataset is None:
            return
        if not (isinstance(dataset, dict) and _is_dataset_dict(dataset)):
            raise ValueError(f"loss is a dict of losses by dataset name, so {what} must be a dict of datasets")
        missing = sorted(set(dataset) - set(self.loss))
        if missing:
            raise ValueError(f"loss has no entry for the {what} dataset(s) {missing} (it has {sorted(self.loss)})")

    def loss_for(self, name: str | None):
        """The loss of dataset ``name`` (a dict of losses is keyed by the datasets' names)."""
        return self.loss[name] if isinstance(self.loss, dict) else self.loss

    @property
    def callbacks(self) -> list[Any]:
        """The callbacks, in the order they are called (``callback_handler.callbacks``)."""
        return self.callback_handler.callbacks

    @callbacks.setter
    def callbacks(self, callbacks: Sequence[Any]) -> None:
        self.callback_handler.callbacks = list(callbacks)

    def add_callback(self, callback: Any) -> None:
        """Add a callback: an instance, or a class (made with no arguments, as Hugging Face does)."""
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: Any) -> Any:
        """Remove and return a callback (an instance, or the first of a class); None if there is none."""
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: Any) -> None:
        """Remove a callback: the first of a class (if any), or an instance, which must be there."""
        self.callback_handler.remove_callback(callback)

    def log_metrics(self, split: str, metrics: dict[str, Any]) -> None:
        """Print ``metrics`` under a ``***** {split} metrics *****`` header, as Hugging Face's Trainer does
        (runtimes as h:mm:ss.cc, floats to 4 decimals); on the main process only."""
        if not self.is_world_process_zero():
            return
        print(f"***** {split} metrics *****")
        shown = {key: _metric_text(key, value) for key, value in metrics.items()}
        key_width = max((len(str(key)) for key in shown), default=0)
        value_width = max((len(str(value)) for value in shown.values()), default=0)
        for key in sorted(shown):
            print(f"  {key: <{key_width}} = {shown[key]:>{value_width}}")

    def save_metrics(self, split: str, metrics: dict[str, Any], combined: bool = True) -> None:
        """Write ``metrics`` to ``output_dir/{split}_results.json`` (and merge them into ``all_results.json``
        unless ``combined=False``), as Hugging Face's Trainer does; on the main process only."""
        plain = json.loads(_json_text(metrics))  # numpy numbers as Python numbers
        self._write_output(f"{split}_results.json", _json_text(plain, indent=4))
        if combined:
            path = Path(self.args.output_dir) / "all_results.json"
            merged = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
            self._write_output(path.name, _json_text({**merged, **plain}, indent=4))

    def save_state(self) -> None:
        """Write ``trainer.state`` to ``output_dir/trainer_state.json`` (Hugging Face's ``save_state``)."""
        self._write_output("trainer_state.json", _json_text(asdict(self.state), indent=2) + "\n")

    def _write_output(self, name: str, text: str) -> None:
        """Write a file of ``output_dir`` on the main process (the others write nothing)."""
        if self.is_world_process_zero():
            folder = Path(self.args.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8")

    @property
    def processing_class(self) -> Any:
        """The model's tokenizer (Hugging Face's name)."""
        return self.model.tokenizer

    def is_local_process_zero(self) -> bool:
        """Whether this is the first process of its machine (``args.local_process_index``: one JAX process a
        host unless a launcher sets ``LOCAL_RANK``)."""
        return self.args.local_process_index == 0

    def is_world_process_zero(self) -> bool:
        """Whether this is the main process of a multi-process (multi-host) run, as Hugging Face's Trainer."""
        return is_main_process()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (Hugging Face format, as :meth:`CrossEncoder.save`) to ``output_dir`` (default
        ``args.output_dir``), as sentence-transformers scripts call it after ``train()``; with ``push_to_hub``
        it is uploaded too ("Model save"), as Hugging Face's ``save_model`` does."""
        self.model.save(output_dir if output_dir is not None else self.args.output_dir)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    def _restore_callback_states(self) -> None:
        """Hugging Face's ``restore_callback_states_from_checkpoint``: each stateful callback (and the control) is
        replaced by one made from its checkpointed ``state()`` (made from its ``args``, then its ``attributes``
        set), in its place among the callbacks; a checkpointed class the trainer no longer has is a warning."""
        present = [*self.callback_handler.callbacks, self.control]
        missing = []
        for name, saved in self.state.stateful_callbacks.items():
            same = [callback for callback in present if type(callback).__name__ == name]
            if not same:
                missing.append(name)
            for callback, data in zip(same, saved if isinstance(saved, list) else [saved], strict=False):
                restored = type(callback)(**data.get("args", {}))
                for attribute, value in data.get("attributes", {}).items():
                    setattr(restored, attribute, value)
                if callback is self.control:
                    self.control = restored
                else:
                    callbacks = self.callback_handler.callbacks
                    callbacks[next(i for i, c in enumerate(callbacks) if c is callback)] = restored
        if missing:
            logger.warning("The checkpoint holds states of callbacks this trainer does not have, ignored: %s", missing)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Hugging Face's ``Trainer.log``: ``logs`` (with the epoch) into ``state.log_history`` at the current step,
        and to every callback's ``on_log``. ``start_time`` is accepted (it times token throughput there)."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._call_back("on_log", logs=logs)

    def _call_back(self, event: str, **kwargs: Any) -> None:
        """Call ``event`` on every callback; a control a callback returns replaces the trainer's."""
        self.control = getattr(self.callback_handler, event)(self.args, self.state, self.control, **kwargs)

    # ------------------------------------------------------------------------------------------ data
    def _prompted(self, columns: list[list[Any]], dataset_name: str | None) -> list[list[Any]]:
        """sentence-transformers' ``prompts``: one string for every dataset, or a dict by dataset name."""
        prompt = self.args.prompts
        if isinstance(prompt, dict):
            prompt = prompt.get(dataset_name)
        if prompt is None:
            return columns
        return [[prompt + str(t) for t in columns[0]], *columns[1:]]

    def _list_data(self, dataset: Any, what: str, train: bool) -> ListData | MultiListData:
        """The run's data: one dataset, or a dict of named datasets (one batch of one dataset a step)."""
        if isinstance(dataset, dict) and _is_dataset_dict(dataset):
            names = list(dataset)
            sources = [self._one_list_data(dataset[n], f"{what}[{n!r}]", train, n) for n in names]
            args = self.args
            return MultiListData(
                sources,
                names,
                args.multi_dataset_batch_sampler.value if train else "round_robin",
                seed=self._data_seed() if train else 0,  # the datasets' order too: data_seed, as each one's
                epochs=args.num_train_epochs if train else 1,
                max_steps=(args.max_steps if args.max_steps > 0 else None) if train else None,
            )
        return self._one_list_data(dataset, what, train, None)

    def _train_compute_dtype(self) -> jnp.dtype:
        """bfloat16 with ``bf16=True`` (Hugging Face's autocast), else float32; a model whose
        ``keep_in_fp32_modules`` bfloat16 would ignore is refused, as its constructor refuses it."""
        dtype = jnp.dtype(jnp.bfloat16 if self.args.bf16 else jnp.float32)
        check_keep_in_fp32(self.model.keep_in_fp32_modules, dtype)
        return dtype

    def _check_eval_data(self) -> None:
        """The eval datasets' rows checked as the train dataset's are, before any step: a bad label there would
        otherwise stop the run at its first evaluation (only when the run evaluates: as Hugging Face's, a trainer
        that never evaluates never reads them)."""
        dataset = self.eval_dataset
        if dataset is None or (self.args.eval_strategy == "no" and not self.args.eval_on_start):
            return
        named = dataset.items() if isinstance(dataset, dict) and _is_dataset_dict(dataset) else [(None, dataset)]
        for name, one in named:
            what = "eval_dataset" if name is None else f"eval_dataset[{name!r}]"
            _, columns, labels = dataset_columns(one, what)
            if not columns[0]:
                raise ValueError(f"{what} is empty")
            try:
                self.loss_for(name).validate(columns, None if labels is None else list(labels), 0)
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None

    def _one_list_data(self, dataset: Any, what: str, train: bool, name: str | None) -> ListData | StreamListData:
        if train and is_datasets_stream(dataset):
            if (why := self._why_not_streamed()) is None:
                return self._stream_list_data(dataset, what, name)
            dataset = in_memory(dataset, what, why)
        _, columns, labels = dataset_columns(dataset, what)
        if not columns[0]:
            raise ValueError(f"{what} is empty")
        args = self.args
        return ListData(
            self._fit_target(),
            self._prompted(columns, name),
            labels,
            self.loss_for(name),
            batch_size=self._global_batch_size(train),
            accumulation_steps=args.gradient_accumulation_steps if train else 1,
            epochs=args.num_train_epochs if train else 1,
            max_steps=(args.max_steps if args.max_steps > 0 else None) if train else None,
            seed=self._data_seed() if train else 0,
            drop_last=args.dataloader_drop_last,
            sampler=_sampler_algorithm(args.batch_sampler.value) if train else "sequential",
            name=what,
        )

    def _why_not_streamed(self) -> str | None:
        """Why a training stream is read whole into memory first, or None where it is read as the run goes:
        that needs ``max_steps`` (its length is unknown) and the plain batch sampler (the others draw batches
        from the whole dataset)."""
        if self.args.max_steps <= 0:
            return "max_steps is not set (a stream's length is unknown: set max_steps to stream it)"
        if self.args.batch_sampler.value != "batch_sampler":
            return f"batch_sampler={self.args.batch_sampler.value} draws its batches from the whole dataset"
        return None

    def _stream_list_data(self, dataset: Any, what: str, name: str | None) -> StreamListData:
        from crossjax.streaming import StreamSource

        args = self.args
        return StreamListData(
            self._fit_target(),
            StreamSource.of_datasets(dataset),
            _StreamColumns(dataset, what, lambda columns: self._prompted(columns, name)),
            self.loss_for(name),
            batch_size=self._global_batch_size(True),
            accumulation_steps=args.gradient_accumulation_steps,
            max_steps=args.max_steps,
            seed=self._data_seed(),
            drop_last=args.dataloader_drop_last,
            name=what,
        )

    def _data_seed(self) -> int:
        """The seed of the training data's order and layouts: Hugging Face's ``data_seed``, else ``seed``."""
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _global_batch_size(self, train: bool) -> int:
        """Rows a step (train) or an evaluation batch takes: per device x data-parallel devices."""
        per_device = self.args.per_device_train_batch_size if train else self.args.per_device_eval_batch_size
        return per_device * self.model.mesh_plan.data_shards

    def _fit_target(self, evaluate: Callable | None = None, on_step: Callable | None = None, callbacks=()):
        from crossjax.fit_loop import FitTarget

        model = self.model
        return FitTarget(
            model=model.model,
            tokenizer=model.tokenizer,
            plan=model.mesh_plan,
            max_length=model.max_length,
            max_shapes=model.max_shapes,
            pad_id=model._pad_id,
            save=model.save,
            model_writer=model._model_writer,
            evaluate=evaluate,
            on_step=on_step,
            callbacks=list(callbacks),
            guard=model._arrays_guard,
        )

    # ----------------------------------------------------------------------------------------- train
    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
    ) -> TrainOutput:
        """Train; returns ``TrainOutput(global_step, training_loss, metrics)``. Hugging Face's signature:
        ``ignore_keys_for_eval`` (keys of a model's output dict left out of gathered predictions) has nothing to
        act on here (evaluation computes the loss and the evaluators' metrics, never gathers model outputs)."""
        from crossjax.fit_loop import FitConfig, FitResult, ParametersOverflowError, ensure_writable_folders, run_fit
        from crossjax.runtime import TrainingPreempted

        if trial is not None:
            raise ValueError(
                "train(trial=...) is Hugging Face's hyperparameter search (Optuna/Ray trials), which crossjax's "
                "trainer does not run: build one trainer per trial's settings instead"
            )
        del ignore_keys_for_eval
        args = self.args
        if self.train_dataset is None:
            raise ValueError("CrossEncoderTrainer.train() needs train_dataset")
        scheduler_kwargs = args.scheduler_kwargs  # its required options, checked before any data is read
        if args.push_to_hub and args.hub_strategy in ("checkpoint", "all_checkpoints"):
            raise ValueError(
                f"hub_strategy={args.hub_strategy!r} uploads Hugging Face's checkpoint-N folders, which crossjax "
                "does not write (its checkpoints are orbax folders in output_dir/checkpoints): use 'every_save' (the "
                "model at each save) or 'end'"
            )
        self.model._check_parameters_finite()
        compute_dtype = self._train_compute_dtype()
        ensure_writable_folders([("output_dir", args.output_dir)])  # named as the user set it (fit: log_dir)
        resume = resume_from_checkpoint if resume_from_checkpoint is not None else args.resume_from_checkpoint
        data = self._list_data(self.train_dataset, "train_dataset", train=True)
        self._check_eval_data()
        total = data.total_steps
        checkpoint_path = self._checkpoint_path(resume)
        # When to log, evaluate and save is the run's flow (_RunHooks.on_step: Hugging Face's); these are what
        # the loop records, and how often it fetches step metrics for the progress bar and the training log.
        save_every = data.steps_per_epoch if args.save_strategy == "epoch" else args.save_interval(total)
        eval_every = args.eval_interval(total) if args.eval_strategy == "steps" else 0
        logging_every = data.steps_per_epoch if args.logging_strategy == "epoch" else args.logging_interval(total)
        cfg = FitConfig(
            epochs=data.epochs,
            scheduler=args.scheduler_name,
            scheduler_kwargs=scheduler_kwargs or None,
            **args.optimizer_settings,
            warmup_steps=args.get_warmup_steps(total),
            learning_rate=float(args.learning_rate),
            adam_eps=float(args.adam_epsilon),
            adam_betas=(float(args.adam_beta1), float(args.adam_beta2)),
            weight_decay=float(args.weight_decay),
            decay_rule="trainer",  # Hugging Face's: no norm or bias decays (DistilBERT's, ModernBERT's norms too)
            learning_rate_mapping=tuple(args.learning_rate_mapping.items()),
            evaluation_steps=eval_every,
            output_path=None,
            save_best_model=False,
            max_grad_norm=float(args.max_grad_norm) if args.max_grad_norm and args.max_grad_norm > 0 else None,
            compute_dtype=compute_dtype,
            show_progress_bar=not args.disable_tqdm,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            seed=int(args.seed),
            logging_steps=logging_every if args.logging_strategy != "no" else total + 1,
            checkpoint_path=checkpoint_path,
            checkpoint_save_steps=save_every,
            checkpoint_save_total_limit=args.save_total_limit,
            checkpoint_model_only=bool(args.save_only_model),
            checkpoint_on_request=args.save_strategy == "no" and not resume,
            max_steps=total,
            log_dir=args.logging_dir or args.output_dir,
            evaluate_on_start=bool(args.eval_on_start),  # whatever eval_strategy, as Hugging Face
        )
        self.state = TrainerState(
            max_steps=total,
            num_train_epochs=data.epochs,
            logging_steps=args.logging_interval(total),  # Hugging Face's: a ratio below 1 made a step count
            # Hugging Face keeps its default where eval_steps is unset and evaluation is not by steps
            eval_steps=args.eval_interval(total)
            if args.eval_strategy == "steps" or args.eval_steps is not None
            else TrainerState.eval_steps,
            save_steps=args.save_interval(total),
            train_batch_size=self._global_batch_size(train=True),
        )
        self.control = TrainerControl()
        self.state.stateful_callbacks = callback_states([*self.callback_handler.callbacks, self.control])
        self.callback_handler.model, self.callback_handler.processing_class = self.model, self.model.tokenizer
        result = FitResult(history=[])
        run = _RunHooks(self, data, result, checkpoint_path)
        data.target = self._fit_target(
            evaluate=run,  # when the flow says (a callback may ask for an evaluation whatever eval_strategy)
            on_step=run.on_step,
            callbacks=[CardRecorder(self.model, None, record_setup=False), run],
        )
        data.target.checkpoint_state, data.target.resume_state = run.checkpoint_state, run.resume_state
        data.target.kept_checkpoint = lambda: run.best_checkpoint_step
        if self.callback_handler.user_callbacks():
            data.target.on_step_begin = run.on_step_begin
        self._record_card(data)
        self.model.training_history = result.history
        started = time.perf_counter()
        self._in_train = True
        preempted = None
        try:
            run_fit(data.target, None, data.loss, None, None, cfg, result, data_source=data)
        except ParametersOverflowError as e:
            self.model._parameters_not_finite = str(e)
            raise
        except TrainingPreempted as e:
            if not e.finished:
                raise
            preempted = e  # the run completed as the notice came: end it as usual, then stop
        finally:
            self._in_train = False
            self.model.compilations["train"] = result.compilations
        runtime = time.perf_counter() - started
        if args.load_best_model_at_end and run.best_params is not None:
            nnx.update(self.model.model, run.best_params)
            self.model._place_parameters()
            card = self.model.model_card_data
            if run.best_eval_results is not None:  # the card describes the model loaded: its evaluation, its step
                card.eval_results_dict.clear()
                card.eval_results_dict.update(run.best_eval_results)
            if card.training is not None and self.state.best_global_step:
                card.training.best_step = self.state.best_global_step
            logger.info("Loaded the best model (step %s, %s)", self.state.best_global_step, self.state.best_metric)
        step_losses = [h["loss"] for h in result.history]
        training_loss = float(np.mean(step_losses)) if step_losses else 0.0  # Hugging Face's 0 for no step
        global_step = int(result.summary.get("global_step", 0))
        run._reach(global_step)  # a resumed run that had nothing left to train ends at its step too
        trained = global_step - int(result.summary.get("resumed_from_step", 0))
        # transformers' speed metrics: the schedule's samples (max_steps x global batch, or rows x epochs), for
        # the share of its steps this call trained
        if args.max_steps > 0:
            schedule_samples = args.max_steps * data.batch_size * data.k
        else:
            schedule_samples = data.rows * args.num_train_epochs
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(schedule_samples * trained / max(total, 1) / max(runtime, 1e-9), 3),
            "train_steps_per_second": round(trained / max(runtime, 1e-9), 3),
            "total_flos": run.total_flos(result.summary.get("real_tokens", 0)),
            "train_loss": training_loss,
            "epoch": run._epoch(global_step),
        }
        self.state.total_flos = metrics["total_flos"]
        self.state.log_history.append({**metrics, "step": global_step})
        self._call_back("on_log", logs=metrics)
        self._call_back("on_train_end")
        if args.push_to_hub:
            self.push_to_hub(commit_message="End of training")
        # The run's summary (packing, compiles) adds to Hugging Face's metrics; its last-step loss and the legacy
        # fit's best score do not replace them.
        summary = {k: v for k, v in result.summary.items() if k not in ("train_loss", "best_score")}
        if preempted is not None:
            raise preempted
        return TrainOutput(global_step, training_loss, {**summary, **metrics})

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> str | None:
        """Upload the model to ``args.hub_model_id`` (else the output folder's name), with the arguments'
        ``hub_token``, ``hub_private_repo`` and ``hub_revision`` unless given here, as Hugging Face's
        ``Trainer.push_to_hub``; ``kwargs`` go to :meth:`CrossEncoder.push_to_hub`. Every process calls it (the
        export gathers the parameters from all of them); the main process uploads. Returns the commit URL."""
        del blocking  # uploads are synchronous here
        args = self.args
        repo_id = args.hub_model_id or Path(args.output_dir).absolute().name
        return self.model.push_to_hub(
            repo_id,
            token=token if token is not None else args.hub_token,
            private=kwargs.pop("private", args.hub_private_repo),
            revision=revision if revision is not None else args.hub_revision,
            commit_message=commit_message,
            **kwargs,
        )

    def _record_card(self, data: Any) -> None:
        """The model card's training details: each dataset with its loss, and the arguments (the run adds logs
        and timing)."""
        card = getattr(self.model, "model_card_data", None)
        if card is None:
            return
        card.training = None  # the card describes this run, not an earlier one of the same model
        datasets = self.train_dataset
        named = isinstance(datasets, dict) and _is_dataset_dict(datasets)
        for name, dataset in datasets.items() if named else [(None, datasets)]:
            if hasattr(dataset, "column_names"):
                card.set_training(dataset=dataset, loss=self.loss_for(name), dataset_name=name)
            else:  # a dict of columns (lists, numpy arrays, pandas Series): its columns and first rows as a Dataset's
                head = {column: [_plain(v) for v in values[:3]] for column, values in dataset.items()}
                card.set_training(
                    dataset_size=len(next(iter(dataset.values()))),
                    columns=list(dataset),
                    samples=[dict(zip(head, row, strict=True)) for row in zip(*head.values(), strict=True)],
                    loss=self.loss_for(name),
                    dataset_name=name,
                )
        card.set_training(
            args=self.args.to_dict(),
            default_args=CrossEncoderTrainingArguments().to_dict(),
            steps_per_epoch=data.steps_per_epoch,
            batches_per_epoch=getattr(data, "batches_per_epoch", None),
            accumulation_steps=data.k,
        )

    def _checkpoint_path(self, resume: str | bool | None) -> str | None:
        """Where the orbax checkpoints go; an earlier run's checkpoints are resumed only when asked."""
        if resume is not None and not isinstance(resume, str | Path | bool):
            raise TypeError(f"resume_from_checkpoint must be True, False or a checkpoint folder, got {resume!r}")
        if isinstance(resume, str | Path) and resume:
            return str(_checkpoints_to_resume(Path(resume)))
        path = Path(self.args.output_dir) / "checkpoints"
        if self.args.save_strategy == "no" and not resume:
            return str(path)  # only where a callback asks (Hugging Face's should_save): fit_loop.checkpoint_step
        if resume:
            if not holds_checkpoints(path):
                # as Hugging Face: asked to resume, never a silent fresh start (an interrupted first save leaves
                # only a "*.orbax-checkpoint-tmp" folder)
                raise ValueError(f"resume_from_checkpoint=True but {path} holds no complete checkpoint")
        elif holds_checkpoints(path):  # not an unfinished first save
            raise FileExistsError(
                f"{path} holds checkpoints of an earlier run: pass resume_from_checkpoint=True to continue it, or "
                "choose another output_dir (nothing is overwritten)"
            )
        return str(path)

    # ---------------------------------------------------------------------------------------- evaluate
    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """The eval dataset's loss (``{prefix}_loss``), the evaluator's metrics (prefixed) and Hugging Face's
        ``{prefix}_runtime`` / ``_samples_per_second`` / ``_steps_per_second`` and ``epoch``; logged to
        ``state.log_history`` and the callbacks' ``on_log`` and ``on_evaluate``, as Hugging Face's Trainer does.
        A dict of datasets is evaluated (and logged) one by one, each prefixed ``{prefix}_{name}``; during
        training the evaluator runs with the first only, prefixed ``{prefix}``, as in sentence-transformers.
        ``eval_dataset`` may name one of the trainer's eval datasets, as in Hugging Face (its metrics keep
        ``metric_key_prefix``). ``ignore_keys`` (model outputs to drop) has nothing to act on: the step returns
        the loss only."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(eval_dataset, str):  # Hugging Face: the name of one of the trainer's eval datasets
            named = self.eval_dataset if isinstance(self.eval_dataset, dict) else {}
            if eval_dataset not in named:
                raise KeyError(f"evaluate(eval_dataset={eval_dataset!r}): the trainer's eval datasets: {list(named)}")
            return self._evaluate_one(named[eval_dataset], eval_dataset, metric_key_prefix, metric_key_prefix, True)
        if dataset is None and not self._evaluators():
            raise ValueError("evaluate() needs an eval_dataset (here or in the trainer) or an evaluator")
        if eval_dataset is not None:
            dataset = in_memory(eval_dataset, "evaluate()'s eval_dataset", "an evaluation reads every row")
            self._check_losses_for(dataset, "evaluate()'s eval_dataset")
        if isinstance(dataset, dict) and _is_dataset_dict(dataset):
            metrics: dict[str, float] = {}
            for i, (name, one) in enumerate(dataset.items()):
                with_evaluator = not self._in_train or i == 0
                prefix = metric_key_prefix if self._in_train and i == 0 else f"{metric_key_prefix}_{name}"
                metrics.update(self._evaluate_one(one, name, f"{metric_key_prefix}_{name}", prefix, with_evaluator))
            return metrics
        return self._evaluate_one(dataset, None, metric_key_prefix, metric_key_prefix, True)

    def _metric_needed(self, evaluator: Any, key: str, prefixed: str) -> bool:
        """Whether an evaluator's value must be a number: its primary metric, or the run's metric for the best
        model (Hugging Face's name, with or without ``eval_``)."""
        best = self.args.metric_for_best_model
        if key in (getattr(evaluator, "primary_metric", None), "evaluator"):  # "evaluator": a bare number returned
            return True
        return best is not None and prefixed in (best, f"eval_{best}")

    def _evaluators(self) -> list[Any]:
        return [] if self.evaluator is None else [self.evaluator]

    def _evaluate_one(
        self, dataset: Any, name: str | None, loss_prefix: str, evaluator_prefix: str, with_evaluator: bool
    ) -> dict[str, float]:
        """One dataset's evaluation, logged (see :meth:`evaluate`)."""
        started = time.time()
        metrics: dict[str, float] = {}
        rows = 0
        if dataset is not None:
            loss, rows = self._eval_loss(dataset, name)
            if loss is not None:
                metrics[f"{loss_prefix}_loss"] = loss
        # As sentence-transformers: evaluators write their CSV files to output_dir/eval, and a plain number is
        # logged as "{prefix}_evaluator".
        output_path = Path(self.args.output_dir) / "eval"
        if with_evaluator and is_main_process():
            output_path.mkdir(parents=True, exist_ok=True)
        for evaluator in self._evaluators() if with_evaluator else []:
            result = evaluator(
                self.model,
                output_path=str(output_path),
                epoch=self.state.epoch,
                steps=self.state.global_step,
            )
            if not isinstance(result, dict):
                result = {"evaluator": result}
            for key, value in result.items():
                prefixed = key if key.startswith(f"{evaluator_prefix}_") else f"{evaluator_prefix}_{key}"
                if not logs.is_number(value) and not self._metric_needed(evaluator, key, prefixed):
                    # as sentence-transformers trains on: a note or a list beside the scores (not logged here)
                    logger.warning("the evaluator %s returned %r: %.60r, not a number; not logged",
                                   type(evaluator).__name__, key, value)  # fmt: skip
                    continue
                metrics[prefixed] = logs.check_evaluator_number(value, evaluator, key)
        # transformers' speed_metrics: the dataset's rows, in steps of per_device_eval_batch_size x devices
        runtime = time.time() - started
        batch = self._global_batch_size(train=False)
        metrics[f"{loss_prefix}_runtime"] = round(runtime, 4)
        if runtime > 0:
            metrics[f"{loss_prefix}_samples_per_second"] = round(rows / runtime, 3)
            metrics[f"{loss_prefix}_steps_per_second"] = round(math.ceil(rows / batch) / runtime, 3)
        # The log entry has the epoch. sentence-transformers 6.2's log() adds it to the returned metrics too,
        # except where they hold "eval_loss" (it logs a copy of those): so evaluate() returns them there
        logged = {**metrics, "epoch": self.state.epoch}
        self.log(logged)
        self._call_back("on_evaluate", metrics=logged)
        # what callbacks added to the metrics in on_evaluate counts, as in Hugging Face (one dict goes around):
        # e.g. a combined score named by metric_for_best_model
        metrics.update({k: v for k, v in logged.items() if k not in metrics and k != "epoch"})
        return metrics if "eval_loss" in metrics else logged

    def _eval_loss(self, dataset: Any, name: str | None) -> tuple[float | None, int]:
        """Sum of the loss numerators over sum of denominators over the dataset (its last partial batch
        dropped with ``dataloader_drop_last``, as Hugging Face's eval dataloader does), dropout off, or None
        when that leaves no batch (Hugging Face then reports no loss); and the dataset's rows."""
        rows = dataset.num_rows if hasattr(dataset, "num_rows") else len(dataset_columns(dataset, "eval_dataset")[1][0])
        if self.args.dataloader_drop_last and rows < self._global_batch_size(train=False):
            return None, rows
        data = self._one_list_data(dataset, "eval_dataset", train=False, name=name)
        loss = self.loss_for(name)
        data.start(0)
        model, plan = self.model.model, self.model.mesh_plan
        graphdef = training.graphdef_with_dtype(model, self._train_compute_dtype(), train=False)
        step_fn = training.eval_loss_program(graphdef, loss, plan)[0].fn
        params, rest = nnx.state(model, nnx.Param), nnx.state(model, nnx.Not(nnx.Param))
        numerator, denominator = 0.0, 0.0
        called = bool(self.callback_handler.user_callbacks())
        for step in data.steps():
            num, den = step_fn(params, rest, training.batch_to_global(step.batch, plan))
            numerator, denominator = numerator + float(num), denominator + float(den)
            if called:  # Hugging Face's, after each evaluation batch
                self._call_back("on_prediction_step")
        return (numerator / denominator if denominator else float("nan")), rows


# Samplers that make the same batches as another one (sentence-transformers 6.2 compares texts by hash there).
_SAMPLER_ALGORITHMS = {"no_duplicates_hashed": "no_duplicates"}


def _sampler_algorithm(sampler: str) -> str:
    return _SAMPLER_ALGORITHMS.get(sampler, sampler)


def _json_text(value: Any, indent: int | None = None, sort_keys: bool = True) -> str:
    """JSON (sorted keys, as Hugging Face writes its files); numpy numbers as Python numbers, anything else JSON
    lacks as its text."""
    plain = lambda x: x.item() if hasattr(x, "item") else str(x)  # noqa: E731
    return json.dumps(value, indent=indent, sort_keys=sort_keys, default=plain)


def _metric_text(key: str, value: Any) -> Any:
    """A metric as Hugging Face's ``metrics_format`` shows it."""
    if "_runtime" in key and isinstance(value, numbers.Real):
        hundredths = int(abs(value - int(value)) * 100)
        return f"{datetime.timedelta(seconds=int(value))}.{hundredths:02d}"
    if key == "total_flos" and isinstance(value, numbers.Real):
        return f"{int(value) >> 30}GF"
    return round(value, 4) if isinstance(value, float) else value


def _plain(value: Any) -> Any:
    """A column's value as a Dataset row gives it: numpy arrays and scalars as Python lists and numbers."""
    return value.tolist() if isinstance(value, np.ndarray | np.generic) else value


def get_last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The latest complete checkpoint step of a trainer run into ``output_dir`` (``output_dir/checkpoints/N``), or
    None: Hugging Face's ``transformers.trainer_utils.get_last_checkpoint`` for crossjax's layout, so one script
    both starts a run and resumes it (``trainer.train(resume_from_checkpoint=get_last_checkpoint(output_dir))``,
    e.g. after a preemption)."""
    folder = Path(output_dir) / "checkpoints"
    steps = checkpoint_steps(folder)
    return str(folder / str(steps[-1])) if steps else None


def _checkpoints_to_resume(path: Path) -> Path:
    """The checkpoints folder a ``resume_from_checkpoint`` path names: the folder itself, or one step's folder
    in it (Hugging Face's habit of naming ``checkpoint-N``) when that step is the latest, which is the one a
    resume restores. Anything else is an error, never a silent fresh start."""
    if not path.exists():
        raise FileNotFoundError(f"resume_from_checkpoint={str(path)!r} does not exist")
    if is_checkpoint_step(path):
        later = [step for step in checkpoint_steps(path.parent) if step > int(path.name)]
        if later:
            raise ValueError(
                f"resume_from_checkpoint={str(path)!r} is step {path.name}, but {path.parent} holds later steps "
                f"{later}: crossjax resumes a checkpoints folder's latest step. Pass {str(path.parent)!r} (or True), "
                "or delete the later steps to resume from this one"
            )
        return path.parent
    if not holds_checkpoints(path):
        raise FileNotFoundError(
            f"resume_from_checkpoint={str(path)!r} holds no crossjax checkpoint (step folders with a 'state' "
            "folder, as output_dir/checkpoints holds them)"
        )
    return path


def _default_flow() -> Any:
    """Hugging Face's own ``DefaultFlowCallback``: what the arguments schedule after a step (``on_step_end``) and
    at an epoch's end (``on_epoch_end``), set on the control before the user's callbacks see it."""
    from transformers.trainer_callback import DefaultFlowCallback

    return DefaultFlowCallback()


class _RunHooks(RunCallback):
    """The trainer's side of one run: Hugging Face's flow after each step (``on_step_end``, then the step's log,
    evaluation and save as the control says; at an epoch's end, or where the run stops, ``on_epoch_end`` and the
    epoch's log, evaluation and save), callbacks, and the best model. Called as the loop's evaluator, it returns
    the metrics without the ``eval_`` prefix (the run's logs add it) and keeps the best model itself
    (``tracks_best``), by ``metric_for_best_model`` and ``greater_is_better``."""

    tracks_best = True
    takes_global_step = True
    primary_metric = None

    def __init__(self, trainer: CrossEncoderTrainer, data: ListData, result: Any, checkpoints: str | None) -> None:
        self.trainer, self.data, self.result = trainer, data, result
        # The steps saved in ``checkpoints`` (a resumed run's earlier ones too), and the one the best model's
        # checkpoint is (``state.best_model_checkpoint``), which ``save_total_limit`` never deletes
        self.checkpoints = checkpoints
        self.saved_steps: set[int] = set()
        if checkpoints is not None and Path(checkpoints).is_dir():  # a resume: the earlier steps that hold a model
            self.saved_steps = {int(p.name) for p in Path(checkpoints).iterdir() if step_model(p) is not None}
        self.best_checkpoint_step: int | None = None
        self.flow_saving = False  # a save the flow asked for (not the loop's own at the run's end)
        self.best_params = None
        self.best_eval_results: dict | None = None
        self.new_best = False  # the last evaluation found a new best metric (save_strategy="best" saves then)
        # A step's epoch end has yet to run: a checkpoint written in the step's own save keeps this, so a run
        # resumed from it still does that epoch's log, evaluation and save (Hugging Face's would skip them).
        self.epoch_end_pending = False
        self.flow = _default_flow()
        self.logged_through = 0
        self.history_read = 0  # the run's step records before this index are all logged (or before the resume)
        # Hugging Face's total_flos: 6 x the parameters without embeddings x the tokens trained (real tokens here,
        # padded ones there), counted from the earlier calls' total (a resume's)
        self.flops_per_token = 6 * trainer.model.model.num_parameters(exclude_embeddings=True)
        self.flos_before = 0.0
        self.real_tokens = 0  # this process's, trained in this call by the last step

    def total_flos(self, real_tokens: int) -> float:
        """``state.total_flos`` once this call trained ``real_tokens`` tokens."""
        return self.flos_before + float(self.flops_per_token * real_tokens)

    def _epoch(self, step: int) -> float:
        """Hugging Face's ``state.epoch`` (batches consumed; steps for several datasets, whose batches differ);
        an epoch ended early counts as far as it went until the next step trains."""
        consumed = self.data.position(step, inclusive=False)
        return epoch_at(consumed, self.data.steps_per_epoch, self.data.k, getattr(self.data, "batches_per_epoch", None))

    def on_train_begin(self, info: Any) -> None:
        """Hugging Face's ``on_train_begin``, once a resumed run's state is restored (as Hugging Face loads it
        before the event). A stream's first rows, read by now, go into the model card as a dataset's do."""
        rows = getattr(self.data, "first_rows", None)
        card = getattr(self.trainer.model, "model_card_data", None)
        if rows and card is not None:
            card.set_training(columns=list(rows[0]), samples=rows)
        self.trainer._call_back("on_train_begin")

    def on_step_begin(self, done: int, epoch: int, opens_epoch: bool) -> None:
        """Hugging Face's ``on_epoch_begin`` (an epoch's first step, or a resumed run's first) and
        ``on_step_begin``, with the state of the steps done (the model is synced: the last ``on_step`` did it)."""
        trainer = self.trainer
        self._reach(done)
        if opens_epoch:
            trainer._call_back("on_epoch_begin")
        trainer._call_back("on_step_begin")

    def on_step(self, end: StepEnd) -> bool:
        trainer = self.trainer
        called = bool(trainer.callback_handler.user_callbacks())
        if called:
            end.sync()  # callbacks get the model as it is after this step (Hugging Face passes model=)
            if not end.resumed:  # Hugging Face's, around its optimizer's step (here inside the compiled step)
                for _ in range(end.micro_batches - 1):  # each accumulated batch but the last (after the step here)
                    trainer._call_back("on_substep_end")
                trainer._call_back("on_pre_optimizer_step")
                trainer._call_back("on_optimizer_step")
        self._reach(end.global_step)
        self.real_tokens = end.real_tokens
        trainer.state.total_flos = self.total_flos(end.real_tokens)
        if not called or end.resumed:  # what on_step_begin clears (with callbacks, it was called: flags set there
            # stay); a resumed control comes with the flags of its checkpoint's save
            for flag in _EVENT_CLEARS["on_step_begin"]:
                setattr(trainer.control, flag, False)
        if end.resumed:  # before a resumed run's first step: the epoch end its checkpoint left undone
            if self.epoch_end_pending:
                self._epoch_end(end, called)
            return trainer.control.should_training_stop
        self.flow.on_step_end(trainer.args, trainer.state, trainer.control)
        if called:
            trainer._call_back("on_step_end", model=trainer.model)
        # Hugging Face leaves the epoch's loop after a step whose control says stop (the epoch or the run), then
        # ends the epoch (_leave_epoch_if_asked: before the step's save, so its checkpoint keeps an epoch stop
        # asked for by on_step_end, the log or the evaluation; and after it, for one asked for by on_save).
        self.epoch_end_pending = self._epoch_ends(end.global_step)
        self._log_evaluate_save(end, epoch_end=False)
        self._leave_epoch_if_asked(end.global_step)
        if self.epoch_end_pending:
            self._epoch_end(end, called)
        return trainer.control.should_training_stop

    def _leave_epoch_if_asked(self, step: int) -> None:
        """Hugging Face leaves the epoch's loop after a step whose control says stop (the epoch or the run), then
        ends the epoch: ``epoch_end_pending``. ``should_epoch_stop`` also skips the rest of the epoch (the next
        step opens the next one); a run's stop skips nothing (a resume continues where the run stopped, as
        Hugging Face's does) unless ``on_epoch_end`` clears it (``_epoch_end``)."""
        control = self.trainer.control
        if control.should_epoch_stop or control.should_training_stop:
            self.epoch_end_pending = True
        if control.should_epoch_stop and not self._epoch_ends(step):
            self.data.end_epoch(step)

    def _epoch_end(self, end: StepEnd, called: bool) -> None:
        trainer = self.trainer
        self.epoch_end_pending = False
        self.flow.on_epoch_end(trainer.args, trainer.state, trainer.control)
        if called:
            trainer._call_back("on_epoch_end", model=trainer.model)
        if not trainer.control.should_training_stop and not self._epoch_ends(end.global_step):
            self.data.end_epoch(end.global_step)  # a stop cleared there: the run goes on with the next epoch
        self._log_evaluate_save(end, epoch_end=True)

    def _log_evaluate_save(self, end: StepEnd, epoch_end: bool) -> None:
        """Hugging Face's ``_maybe_log_save_evaluate``: log, evaluate, save, as the control says."""
        trainer, args = self.trainer, self.trainer.args
        if trainer.control.should_log:
            end.flush()
            self.log()
        if trainer.control.should_evaluate:
            self.new_best = False
            end.evaluate(epoch_end)
            if args.save_strategy == "best":
                trainer.control.should_save = self.new_best
        if not epoch_end:  # a stop asked for until now (on_step_end, the log, the evaluation): before the save
            self._leave_epoch_if_asked(end.global_step)
        if trainer.control.should_save:
            self.flow_saving = True
            try:
                saved = end.save()
            finally:
                self.flow_saving = False
            if saved:
                self._point_best_checkpoint()  # also after a second save asked for at one step (no new folder)
                self._push_saved_model(end)
                if trainer.callback_handler.user_callbacks():
                    end.committed()  # Hugging Face's on_save finds the step's folder (and the best's) complete
                trainer._call_back("on_save")

    def _push_saved_model(self, end: StepEnd) -> None:
        """Hugging Face's ``hub_strategy="every_save"`` (its default): with ``push_to_hub``, the model of each save
        is uploaded, with its commit message (synchronously here: every process exports, the main one uploads)."""
        trainer, args = self.trainer, self.trainer.args
        if not args.push_to_hub or args.hub_strategy == "end":
            return
        end.sync()
        if args.save_strategy == "steps":
            message = f"Training in progress, step {trainer.state.global_step}"
        else:
            message = f"Training in progress, epoch {int(trainer.state.epoch)}"
        trainer.push_to_hub(commit_message=message)

    def _reach(self, step: int) -> None:
        """The state callbacks see at ``step``."""
        state = self.trainer.state
        state.global_step, state.epoch = step, self._epoch(step)

    def _epoch_ends(self, global_step: int) -> bool:
        data = self.data
        return data.position(global_step) % data.steps_per_epoch == 0 or global_step == data.total_steps

    def checkpoint_state(self, step: int) -> tuple[dict[str, Any], Any]:
        """What a checkpoint keeps of the trainer, as Hugging Face's ``trainer_state.json`` does: the log history,
        the best metric and its step, and the best model's parameters (``load_best_model_at_end``) so that a
        resumed run ends with that model; and whether the step's epoch end is still to run."""
        trainer, state = self.trainer, self.trainer.state
        self._reach(step)
        self.saved_steps.add(step)
        if self.flow_saving:  # the checkpoint's state holds what the save sets (not the loop's own last save)
            self._point_best_checkpoint()
        state.stateful_callbacks = callback_states([*trainer.callback_handler.callbacks, trainer.control])
        from crossjax.fit_loop import global_real_tokens

        # every process's tokens (a multi-host stream's processes count their own shard's between checkpoints)
        state.total_flos = self.total_flos(global_real_tokens(self.data, self.real_tokens))
        kept = {
            "log_history": state.log_history,
            "best_metric": state.best_metric,
            "best_global_step": state.best_global_step,  # Hugging Face's name ("best_step" before Session 34)
            "best_model_checkpoint": state.best_model_checkpoint,
            # a real epoch end only: after a run's stop mid-epoch, a resume goes on with that epoch
            "epoch_end_pending": self.epoch_end_pending and self._epoch_ends(step),
            "stateful_callbacks": state.stateful_callbacks,
            "total_flos": state.total_flos,
        }
        # JSON-safe copies (numpy scalars from evaluators become Python numbers)
        kept = json.loads(_json_text(kept, sort_keys=False))
        return {"trainer_state": kept}, self.best_params

    def _point_best_checkpoint(self) -> None:
        """Hugging Face's, after each of its saves: the best step's checkpoint, if saved, is the best model's."""
        state = self.trainer.state
        if state.best_global_step is not None and state.best_global_step in self.saved_steps:
            self.best_checkpoint_step = state.best_global_step
            state.best_model_checkpoint = os.path.join(self.checkpoints, str(state.best_global_step))

    def resume_state(self, meta: dict[str, Any]) -> None:
        """The trainer state of a restored checkpoint (checkpoints written before it was kept have none: the
        log history and the best model then start at the resumed step)."""
        kept = meta.get("trainer_state")
        if kept is None:
            return
        state = self.trainer.state
        state.log_history = list(kept["log_history"])
        state.best_metric = kept["best_metric"]
        state.best_global_step = kept["best_global_step"] if "best_global_step" in kept else kept["best_step"]
        best_folder = kept.get("best_model_checkpoint")
        if best_folder is not None and int(Path(best_folder).name) in self.saved_steps:
            self.best_checkpoint_step = int(Path(best_folder).name)
            state.best_model_checkpoint = os.path.join(self.checkpoints, Path(best_folder).name)
        elif best_folder is not None:
            logger.warning("The best checkpoint %s recorded in the resumed state does not exist anymore", best_folder)
        self.epoch_end_pending = bool(kept.get("epoch_end_pending", False))
        state.stateful_callbacks = kept.get("stateful_callbacks", {})
        state.total_flos = self.flos_before = float(kept.get("total_flos", 0.0))
        if self.trainer.args.restore_callback_states_from_checkpoint:
            self.trainer._restore_callback_states()
        self.best_params = meta.get("best_params")
        self.logged_through = int(meta["step"])
        self._reach(int(meta["step"]))

    def log(self) -> None:
        """Hugging Face's training log entry: the mean loss since the last one, the last gradient norm and
        learning rate (history is complete here: the loop flushes it at every logging step)."""
        # only the records since the last entry: the history has one a step, so a scan of it all per entry made
        # a long run quadratic (a million steps logged every 500: 10^9 records read)
        fresh = self.result.history[self.history_read :]
        self.history_read += len(fresh)
        history = [h for h in fresh if h["step"] > self.logged_through]
        if not history:
            return
        last = history[-1]
        entry = {
            "loss": float(np.mean([h["loss"] for h in history])),
            "grad_norm": last["grad_norm"],
            "learning_rate": last["learning_rate"],
            "epoch": self._epoch(last["step"]),
        }
        self.logged_through = last["step"]
        self.trainer.state.log_history.append({**entry, "step": last["step"]})
        self.trainer._call_back("on_log", logs=entry)  # Hugging Face's callbacks get the entry without its step

    def __call__(self, output_path: str | None, epoch: int, steps: int, global_step: int) -> dict[str, float]:
        trainer, state, args = self.trainer, self.trainer.state, self.trainer.args
        step = global_step
        self._reach(step)
        metrics = trainer.evaluate()  # logs its entries and calls on_log / on_evaluate
        name = args.metric_for_best_model
        timing = ("_runtime", "_samples_per_second", "_steps_per_second")
        unprefixed = {k.removeprefix("eval_"): v for k, v in metrics.items() if k != "epoch" and not k.endswith(timing)}
        if name is None:
            return unprefixed
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise KeyError(f"metric_for_best_model={name!r}: the evaluation returned {sorted(metrics)}")
        value = metrics[key]
        if step == 0:  # eval_on_start: Hugging Face does not count the untrained model as a best candidate
            return unprefixed
        better = state.best_metric is None or (
            value > state.best_metric if args.greater_is_better else value < state.best_metric
        )
        if better and math.isfinite(value):
            self.new_best = True
            state.best_metric = value
            # Hugging Face's: a best step only where there are checkpoints (or, crossjax's, a best model kept)
            if args.save_strategy != "no" or args.load_best_model_at_end:
                state.best_global_step = step
            if args.load_best_model_at_end:
                model = trainer.model
                self.best_params = parallel.host_copy(nnx.state(model.model, nnx.Param), model.mesh_plan)
                # the evaluators' results of that model, which the card of the model loaded at the end shows
                self.best_eval_results = {k: dict(v) for k, v in model.model_card_data.eval_results_dict.items()}
        return unprefixed
