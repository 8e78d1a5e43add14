"""``CrossEncoderTrainingArguments``: sentence-transformers' (and Hugging Face Trainer's) argument names and
defaults for everything that applies to a JAX run, and a clear error for everything that does not.

A script written for ``sentence_transformers.cross_encoder.CrossEncoderTrainingArguments`` runs unchanged
where it sets arguments listed here. Arguments of ``transformers.TrainingArguments`` that choose PyTorch
machinery (``fp16``, ``deepspeed``, ``fsdp``, ``torch_compile``, DDP knobs, ...) raise a
``ValueError`` that names them when set to anything but their default, instead of being silently ignored.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import numbers
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field, fields, make_dataclass
from datetime import timedelta
from enum import Enum
from typing import Any

from crossjax.data import checked_seed
from crossjax.optimizers import optim_args_options, optimizer_key
from crossjax.schedules import TRAINER_SCHEDULER_NAMES, scheduler_options

logger = logging.getLogger("crossjax")

__all__ = ["BatchSamplers", "MultiDatasetBatchSamplers", "CrossEncoderTrainingArguments"]


class BatchSamplers(str, Enum):
    """How a step's rows are drawn (sentence-transformers' names and values)."""

    BATCH_SAMPLER = "batch_sampler"  # plain seeded random batches
    NO_DUPLICATES = "no_duplicates"  # no text appears twice in a batch (in-batch negatives stay negatives)
    # sentence-transformers 6.2: the same batches, its texts compared by hash (crossjax compares the texts)
    NO_DUPLICATES_HASHED = "no_duplicates_hashed"
    GROUP_BY_LABEL = "group_by_label"  # each batch holds >= 2 rows of every label it contains


class ParallelMode(str, Enum):
    """Hugging Face's ``ParallelMode`` values, for ``args.parallel_mode``: one device, several in one process,
    several processes (on TPU: ``TPU``)."""

    NOT_PARALLEL = "not_parallel"
    NOT_DISTRIBUTED = "not_distributed"
    DISTRIBUTED = "distributed"
    TPU = "tpu"


class MultiDatasetBatchSamplers(str, Enum):
    """How batches of several training datasets interleave (each batch comes from one dataset)."""

    ROUND_ROBIN = "round_robin"  # one batch of each in turn, until the smallest runs out
    PROPORTIONAL = "proportional"  # every batch of every dataset once, in a seeded random order


# transformers.TrainingArguments fields that select PyTorch machinery: accepted only at their default.
_TORCH_ONLY: dict[str, Any] = {
    "fp16": False,
    "eval_accumulation_steps": None,
    "fp16_full_eval": False,
    "bf16_full_eval": False,
    "tf32": None,
    "half_precision_backend": None,  # transformers 4's "auto" and "O1" are accepted too
    "fp16_opt_level": None,
    "deepspeed": None,
    "fsdp": None,
    "fsdp_config": None,
    "torch_compile": False,
    "torch_compile_backend": None,
    "torch_compile_mode": None,
    "gradient_checkpointing": False,
    "gradient_checkpointing_kwargs": None,
    "activation_checkpointing": False,
    "activation_checkpointing_kwargs": None,
    "use_liger_kernel": False,
    "liger_kernel_config": None,
    "ddp_backend": None,
    "ddp_find_unused_parameters": None,
    "ddp_bucket_cap_mb": None,
    "ddp_broadcast_buffers": False,
    "ddp_static_graph": None,
    "local_rank": -1,
    "auto_find_batch_size": False,
    "torch_empty_cache_steps": None,
    "neftune_noise_alpha": None,
    "optim_target_modules": None,
    "label_smoothing_factor": 0.0,
    "parallelism_config": None,
    "accelerator_config": None,
    # Hugging Face's prediction loop and compute_metrics (crossjax evaluates with its evaluators), its debug
    # hooks, label and length columns (crossjax reads sentence-transformers' column conventions) and samplers
    "debug": [],
    "use_cache": False,
    "eval_do_concat_batches": True,
    "eval_use_gather_object": False,
    "include_for_metrics": [],
    "batch_eval_metrics": False,
    "enable_jit_checkpoint": False,
    "label_names": None,
    "train_sampling_strategy": "random",
    "length_column_name": "length",
}
# Values of _TORCH_ONLY fields besides the default that ask for what crossjax does anyway: tf32=False is full
# precision float32 matmuls, which float32 compute already uses (crossjax.models.base matmul_precision).
_TORCH_ONLY_ALSO_MEANT = {
    "tf32": (False,),
    # the values Hugging Face reads back as these defaults
    "gradient_checkpointing": (None,),
    "activation_checkpointing": (None,),
    "ddp_broadcast_buffers": (None,),
    "debug": ("", None),
    "half_precision_backend": ("auto",),
    "fp16_opt_level": ("O1",),
    # what Hugging Face's to_dict writes for its default AcceleratorConfig (a saved arguments file)
    "accelerator_config": (
        {"split_batches": False, "dispatch_batches": None, "even_batches": True, "use_seedable_sampler": True,
         "non_blocking": False, "gradient_accumulation_kwargs": None},
    ),
}  # fmt: skip
# What Hugging Face's TrainingArguments reads back for these when they are not given (None for the others).
_NO_EFFECT_DEFAULTS: dict[str, Any] = {
    "report_to": [], "project": "huggingface", "log_level": "passive", "log_level_replica": "warning",
    "log_on_each_node": True, "logging_nan_inf_filter": True, "disable_tqdm": False, "dataloader_pin_memory": True,
    "dataloader_in_order": True, "dataloader_num_workers": 0, "dataloader_persistent_workers": False,
    "remove_unused_columns": True, "skip_memory_metrics": True, "do_train": False, "do_eval": False,
    "do_predict": False,
    "save_on_each_node": False, "include_num_input_tokens_seen": "no",
    "average_tokens_across_devices": True, "full_determinism": False, "ddp_timeout": 1800,
    "hub_always_push": False,
}  # fmt: skip
# Accepted and without effect in crossjax (reporting, bookkeeping and PyTorch data-loading details).
_NO_EFFECT = (
    "run_name",
    "report_to",
    "trackio_space_id",
    "trackio_bucket_id",
    "trackio_static_space_id",
    "project",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "logging_dir",
    "logging_nan_inf_filter",
    "disable_tqdm",
    "dataloader_pin_memory",
    "dataloader_in_order",
    # PyTorch's data-loading workers: how fast batches are read, never which (crossjax packs its own)
    "dataloader_num_workers",
    "dataloader_prefetch_factor",
    "dataloader_persistent_workers",
    "dataloader_multiprocessing_context",
    "remove_unused_columns",
    "skip_memory_metrics",
    "do_train",
    "do_eval",
    "do_predict",
    "overwrite_output_dir",
    "save_safetensors",
    "save_on_each_node",
    "include_num_input_tokens_seen",
    "average_tokens_across_devices",
    "full_determinism",
    "ddp_timeout",
    "hub_model_id",
    "hub_token",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
)
# The parser types of the Hugging Face fields above where their default does not say it (Hugging Face's own, with
# its dict-valued fields as ``dict | str | None`` and its deprecated ones by what they held).
_FIELD_TYPES: dict[str, Any] = {
    "eval_accumulation_steps": int | None, "tf32": bool | None, "half_precision_backend": str | None,
    "fp16_opt_level": str | None, "deepspeed": dict | str | None, "fsdp": str | None,
    "fsdp_config": dict | str | None, "torch_compile_backend": str | None, "torch_compile_mode": str | None,
    "gradient_checkpointing": bool | None, "gradient_checkpointing_kwargs": dict | str | None,
    "activation_checkpointing": bool | None, "activation_checkpointing_kwargs": dict | str | None,
    "liger_kernel_config": dict | str | None, "ddp_backend": str | None, "ddp_find_unused_parameters": bool | None,
    "ddp_bucket_cap_mb": int | None, "ddp_broadcast_buffers": bool | None, "ddp_static_graph": bool | None,
    "torch_empty_cache_steps": int | None, "neftune_noise_alpha": float | None,
    "optim_target_modules": None | str | list[str], "parallelism_config": str | None,
    "accelerator_config": dict | str | None, "debug": str | list[str], "include_for_metrics": list[str],
    "label_names": list[str] | None, "run_name": str | None, "report_to": None | str | list[str],
    "trackio_space_id": str | None, "trackio_bucket_id": str | None, "trackio_static_space_id": str | None,
    "logging_dir": str | None, "disable_tqdm": bool | None, "dataloader_prefetch_factor": int | None,
    "dataloader_multiprocessing_context": str | None, "overwrite_output_dir": bool | None,
    "save_safetensors": bool | None, "include_num_input_tokens_seen": str | bool, "hub_model_id": str | None,
    "hub_token": str | None, "hub_private_repo": bool | None, "hub_revision": str | None,
}  # fmt: skip


def _hf_field(name: str, default: Any) -> tuple[str, Any, Any]:
    """A keyword-only dataclass field for a Hugging Face argument crossjax reads without using it."""
    annotation = _FIELD_TYPES.get(name, type(default))
    if isinstance(default, list | dict):
        return name, annotation, field(default_factory=lambda d=default: copy.deepcopy(d), kw_only=True)
    return name, annotation, field(default=default, kw_only=True)


# Every Hugging Face argument without a crossjax meaning, as a real field (so dataclasses.replace, asdict,
# HfArgumentParser and to_dict see them): the PyTorch-only ones at their defaults, the others as Hugging Face's
# TrainingArguments reads them back when not given. Keyword-only: output_dir stays the first positional argument.
_HuggingFaceArguments = make_dataclass(
    "_HuggingFaceArguments",
    [_hf_field(name, default) for name, default in _TORCH_ONLY.items()]
    + [_hf_field(name, _NO_EFFECT_DEFAULTS.get(name)) for name in _NO_EFFECT],
)


_SCHEDULERS = {
    "linear": "WarmupLinear",
    "cosine": "WarmupCosine",
    "cosine_with_restarts": "WarmupCosineWithHardRestarts",
    "constant": "ConstantLR",
    "constant_with_warmup": "WarmupConstant",
    **{name: name for name in TRAINER_SCHEDULER_NAMES},  # polynomial, inverse_sqrt, cosine_with_min_lr, ...
}
# Schedules driven by evaluation metrics (host-side state between steps), which crossjax does not implement.
_METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")
# Arguments that hold a dict, given as its JSON on a command line.
_DICT_FIELDS = (
    "prompts", "router_mapping", "learning_rate_mapping", "lr_scheduler_kwargs", "deepspeed", "fsdp_config",
    "accelerator_config", "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs", "liger_kernel_config",
)  # fmt: skip
_STRATEGIES = ("no", "steps", "epoch")


def _checked_learning_rate_mapping(mapping: Any) -> dict[str, float]:
    """sentence-transformers' ``learning_rate_mapping``: a dict (or its JSON) of parameter-name regular expressions
    to learning rates, each pattern compiled and each rate a finite number >= 0 here, not at the first step."""
    if mapping is None or mapping == "":
        return {}
    if isinstance(mapping, str):
        try:
            mapping = json.loads(mapping)
        except json.JSONDecodeError:
            mapping = None
    if not isinstance(mapping, Mapping):
        raise ValueError(
            "The `learning_rate_mapping` argument must be a dictionary mapping parameter name regular expressions "
            "to learning rates. A stringified dictionary also works."
        )
    checked = {}
    for pattern, rate in mapping.items():
        try:
            re.compile(pattern)
        except (re.error, TypeError) as e:
            raise ValueError(f"learning_rate_mapping pattern {pattern!r} is not a regular expression: {e}") from None
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= float(rate) < float("inf"):
            raise ValueError(f"learning_rate_mapping[{pattern!r}] must be a learning rate (a number >= 0): {rate!r}")
        checked[pattern] = float(rate)
    return checked
# Hugging Face's HubStrategy values; crossjax refuses the last two with push_to_hub (it writes no checkpoint-N)
_HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")


def _scalar(text: str, kind: type | None = None) -> Any:
    """A number or boolean written as a string, read as ``kind`` (int, float or bool; a ValueError if it is not
    one), or with no ``kind`` as whatever it reads as (else the string itself)."""
    lowered = text.strip().lower()
    if kind is bool or kind is None:
        if lowered in ("true", "false") or (kind is bool and lowered in ("1", "0", "yes", "no")):
            return lowered in ("true", "1", "yes")
        if kind is bool:
            raise ValueError(text)
    try:
        if kind is None and lowered.lstrip("-").isdigit():
            return int(lowered)
        number = float(text)
    except ValueError:
        if kind is None:
            return text
        raise
    return int(number) if kind is int and number.is_integer() else number


def _typed_values(options: dict[str, Any]) -> dict[str, Any]:
    """A JSON dict from a command line with its numeric and boolean strings read as numbers and booleans, as
    transformers' ``TrainingArguments`` reads ``lr_scheduler_kwargs='{"min_lr": "1e-6"}'``."""
    return {key: _scalar(value) if isinstance(value, str) else value for key, value in options.items()}


def _joined_jax() -> Any:
    """``jax``, once a run that asks crossjax to join a multi-process run (``CROSSJAX_DISTRIBUTED=1``) has joined
    it, as the model's mesh would: scripts read ``args.device`` or ``args.should_log`` before they build the
    model, and JAX refuses to join once its backends have started."""
    import jax

    from crossjax.parallel import initialize_distributed

    initialize_distributed()
    return jax


def _process_facts() -> tuple[int, int]:
    """(this process's index, the number of processes); see :func:`_joined_jax`."""
    jax = _joined_jax()
    return jax.process_index(), jax.process_count()


@functools.cache
def _scalar_kinds(cls: type) -> dict[str, type]:
    """The fields annotated ``int``, ``float`` or ``bool`` (or one of those or None), from the annotations
    themselves: ``HfArgumentParser`` rewrites the fields' ``type`` in place."""
    kinds = {}
    for name, hint in typing.get_type_hints(cls).items():
        options = set(typing.get_args(hint)) - {type(None)} if typing.get_args(hint) else {hint}
        if len(options) == 1 and (kind := options.pop()) in (int, float, bool):
            kinds[name] = kind
    return kinds


def _member(enum: type[Enum], name: str, value: Any) -> Any:
    """``value`` (a member or its value) as a member of ``enum``; else an error listing the choices."""
    try:
        return enum(getattr(value, "value", value))
    except ValueError:
        raise ValueError(f"{name} must be one of {[m.value for m in enum]}, got {value!r}") from None


def _strategy(name: str, value: Any, choices: tuple[str, ...] = _STRATEGIES) -> str:
    value = getattr(value, "value", value)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


@dataclass
class CrossEncoderTrainingArguments(_HuggingFaceArguments):
    """The settings of a :class:`crossjax.CrossEncoderTrainer` run (Hugging Face Trainer defaults).

    ``per_device_train_batch_size`` counts pairs (rows of the dataset) per device: the global batch of a step is
    that times the number of devices (and of processes) times ``gradient_accumulation_steps``.
    ``warmup_steps`` is a step count, or a float below 1 meaning a fraction of the run (transformers 5);
    ``warmup_ratio`` is the older spelling of that fraction. ``bf16`` computes in bfloat16 with float32
    parameters and optimizer state. ``resume_from_checkpoint`` (True or a checkpoint folder) resumes the orbax
    checkpoint of ``output_dir/checkpoints`` bit-exactly.

    Every other argument of Hugging Face's ``TrainingArguments`` is a field too (so ``dataclasses.replace``,
    ``HfArgumentParser`` and ``to_dict`` see them): PyTorch machinery only at its default (``ValueError``
    otherwise), reporting and data-loading details read back as given, without effect.
    """

    # Hugging Face's leading fields in its order, so that positional arguments mean what they mean there; past
    # adam_epsilon Hugging Face's next field is one crossjax only reads (keyword-only above), so the rest are
    # keyword-only: a further positional argument is a TypeError, not another setting
    output_dir: str | None = None
    per_device_train_batch_size: int = 8
    num_train_epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict | str | None = None
    warmup_steps: float = 0
    optim: str = "adamw_torch_fused"  # transformers 5's default name; crossjax's AdamW either way
    optim_args: str | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    _: KW_ONLY
    per_device_eval_batch_size: int = 8
    max_grad_norm: float = 1.0
    warmup_ratio: float | None = None
    bf16: bool = False
    gradient_accumulation_steps: int = 1
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    # Hugging Face's: checkpoints hold the model only (no optimizer state, data position or RNG): a third of the
    # disk, and no resume from them
    save_only_model: bool = False
    # Hugging Face's "train on the CPU even with a GPU": crossjax trains where the model was placed, so this
    # asks that it be on the CPU (CrossEncoder(..., device="cpu")); the trainer checks it
    use_cpu: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    seed: int = 42
    data_seed: int | None = None
    dataloader_drop_last: bool = False
    batch_sampler: BatchSamplers | str = BatchSamplers.BATCH_SAMPLER
    multi_dataset_batch_sampler: MultiDatasetBatchSamplers | str = MultiDatasetBatchSamplers.PROPORTIONAL
    prompts: dict | str | None = None  # one prompt, or one per dataset (a dict, or its JSON on a command line)
    # sentence-transformers 6.2's Router options: a cross-encoder has no Router (accepted empty only)
    router_mapping: dict | str | None = field(default_factory=dict)
    learning_rate_mapping: dict | str | None = field(default_factory=dict)
    resume_from_checkpoint: str | None = None  # or True: the latest checkpoint of output_dir
    ignore_data_skip: bool = False  # a resume always continues at the checkpoint's data position here
    restore_callback_states_from_checkpoint: bool = False  # stateful callbacks (EarlyStoppingCallback) resumed
    push_to_hub: bool = False
    hub_strategy: str = "every_save"  # with push_to_hub: "every_save" uploads the model at each save, "end" not
    prediction_loss_only: bool = True

    def _check_best_is_saved(self) -> None:
        """Hugging Face's rule for ``load_best_model_at_end`` with checkpoints: every evaluation falls on a save,
        so the best model is a checkpoint (``state.best_model_checkpoint``) and the one loaded at the end.
        (Without checkpoints, ``save_strategy="no"``, crossjax keeps the best model in memory; Hugging Face
        refuses that setting.)"""
        if self.eval_strategy != self.save_strategy:
            raise ValueError(
                "load_best_model_at_end requires the save and eval strategy to match, except when "
                f"save_strategy='best' (or 'no': the best model kept in memory), but found "
                f"eval_strategy={self.eval_strategy!r}, save_strategy={self.save_strategy!r}"
            )
        if self.eval_strategy != "steps":
            return
        eval_steps = self.eval_steps if self.eval_steps is not None else self.logging_steps
        save, every = self.save_steps, eval_steps
        if (save < 1) != (every < 1):
            raise ValueError(
                "load_best_model_at_end requires the saving steps to be a multiple of the evaluation steps, which "
                f"cannot be guaranteed when mixing a fraction and a step count: save_steps={save}, eval_steps={every}"
            )
        if round(save * 1_000_000) % round(every * 1_000_000) != 0:
            raise ValueError(
                f"load_best_model_at_end requires the saving steps to be a multiple of the evaluation steps, but "
                f"save_steps={save} is not a multiple of eval_steps={every}"
            )

    def __post_init__(self) -> None:
        if self.output_dir is None:  # transformers 5's default
            self.output_dir = "trainer_output"
        # "~/out" expanded, as Hugging Face's TrainingArguments does (else a literal "~" folder is made)
        if isinstance(self.output_dir, os.PathLike) or str(self.output_dir).startswith("~"):
            self.output_dir = os.path.expanduser(self.output_dir)
        self._read_strings()
        if isinstance(self.include_num_input_tokens_seen, bool):  # Hugging Face's mapping of the older boolean
            self.include_num_input_tokens_seen = "all" if self.include_num_input_tokens_seen else "no"
        self._check_torch_only()
        self.eval_strategy = _strategy("eval_strategy", self.eval_strategy)
        self.save_strategy = _strategy("save_strategy", self.save_strategy, (*_STRATEGIES, "best"))
        self.logging_strategy = _strategy("logging_strategy", self.logging_strategy)
        self.hub_strategy = _strategy("hub_strategy", self.hub_strategy, _HUB_STRATEGIES)
        self.batch_sampler = _member(BatchSamplers, "batch_sampler", self.batch_sampler)
        if isinstance(self.prompts, dict) and any(not isinstance(p, str) for p in self.prompts.values()):
            raise ValueError(
                f"prompts={self.prompts!r}: a cross-encoder takes one prompt string per dataset (prepended to its "
                "first column); per-column prompts are a bi-encoder's"
            )
        if self.ignore_data_skip:
            raise ValueError(
                "ignore_data_skip=True is not supported: a crossjax resume continues at the checkpoint's exact data "
                "position (bit-exact), which costs no time to skip to"
            )
        self.seed = checked_seed(self.seed, "seed")
        if self.data_seed is not None:
            self.data_seed = checked_seed(self.data_seed, "data_seed")
        if self.router_mapping:
            raise ValueError(
                f"router_mapping={self.router_mapping!r} needs a sentence-transformers Router module, which a "
                "cross-encoder does not have; leave it empty"
            )
        self.learning_rate_mapping = _checked_learning_rate_mapping(self.learning_rate_mapping)
        self.multi_dataset_batch_sampler = _member(
            MultiDatasetBatchSamplers, "multi_dataset_batch_sampler", self.multi_dataset_batch_sampler
        )
        scheduler = getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)
        if scheduler in _METRIC_SCHEDULERS:
            raise ValueError(
                f"lr_scheduler_type={scheduler!r} changes the learning rate from evaluation metrics, which crossjax "
                f"does not implement; choose one of {sorted(_SCHEDULERS)}"
            )
        if scheduler not in _SCHEDULERS:
            raise ValueError(f"lr_scheduler_type must be one of {sorted(_SCHEDULERS)} in crossjax, got {scheduler!r}")
        self.lr_scheduler_type = scheduler
        if self.lr_scheduler_kwargs is not None and not isinstance(self.lr_scheduler_kwargs, dict):
            raise TypeError(f"lr_scheduler_kwargs must be a dict (or its JSON), got {self.lr_scheduler_kwargs!r}")
        # transformers' checks, before any data is read: options the schedule does not take (the required ones
        # when training starts: Hugging Face's set_lr_scheduler comes before lr_scheduler_kwargs are assigned)
        scheduler_options(self.scheduler_name, self.lr_scheduler_kwargs, float(self.learning_rate), complete=False)
        self.optim = getattr(self.optim, "value", self.optim)
        optim_args_options(optimizer_key(self.optim), self.optim_args, self.optim)  # as its Trainer reads them
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps == 0:
            raise ValueError(
                f"max_steps must be a positive integer, or -1 to train num_train_epochs; got {self.max_steps!r}"
            )
        if self.max_steps < 0 and not (0 < self.num_train_epochs < math.inf):
            raise ValueError(f"num_train_epochs must be > 0 and finite (or use max_steps): {self.num_train_epochs!r}")
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio <= 1:
                raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
            if self.warmup_steps:
                raise ValueError("set warmup_steps or warmup_ratio, not both")
            logger.warning("warmup_ratio is deprecated in transformers 5: use warmup_steps=%s", self.warmup_ratio)
            # as sentence-transformers reads it: the fraction moves to warmup_steps (a float below 1 is a fraction;
            # 1.0 stays a ratio, where warmup_steps=1.0 would mean one step)
            if self.warmup_ratio < 1:
                self.warmup_steps, self.warmup_ratio = self.warmup_ratio, None
        if not (self.warmup_steps >= 0 and math.isfinite(self.warmup_steps)):
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):  # transformers truncates it
            logger.warning("warmup_steps=%r is read as %d steps, as transformers reads it", self.warmup_steps,
                           int(self.warmup_steps))  # fmt: skip
        if not (self.learning_rate >= 0 and math.isfinite(self.learning_rate)):  # 0 trains nothing, as in torch
            raise ValueError(f"learning_rate must be >= 0, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.eval_strategy == "steps" and self.eval_steps is None and not self.logging_steps:
            raise ValueError("eval_strategy='steps' needs eval_steps (or logging_steps)")
        for strategy, name in (("logging_strategy", "logging_steps"), ("save_strategy", "save_steps"),
                               ("eval_strategy", "eval_steps")):  # fmt: skip
            value = getattr(self, name)
            if getattr(self, strategy) == "steps" and value is not None and not value > 0:
                raise ValueError(f"{strategy}='steps' needs {name} > 0 (steps or a fraction of the run), got {value!r}")
            if getattr(self, strategy) == "steps" and value is not None and value > 1 and value != int(value):
                raise ValueError(f"{name} must be a whole number of steps above 1 (else a fraction), got {value!r}")
        if self.eval_delay < 0:
            raise ValueError(f"eval_delay must be >= 0, got {self.eval_delay!r}")
        if self.load_best_model_at_end and self.eval_strategy == "no":
            raise ValueError("load_best_model_at_end=True needs an eval_strategy other than 'no'")
        if self.load_best_model_at_end and self.save_strategy not in ("best", "no"):
            self._check_best_is_saved()
        if self.metric_for_best_model is None and self.load_best_model_at_end:
            self.metric_for_best_model = "loss"
        if self.save_strategy == "best":  # Hugging Face's Trainer refuses the first; the second would never save
            if self.metric_for_best_model is None:
                raise ValueError("save_strategy='best' needs metric_for_best_model (the metric whose best is saved)")
            if self.eval_strategy == "no":
                raise ValueError("save_strategy='best' saves after evaluations: it needs eval_strategy other than 'no'")
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.removeprefix("eval_").endswith("loss")
        # what Hugging Face reads back: its report_to list, debug list, and evaluation bookkeeping
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        self.report_to = [] if self.report_to is None else self.report_to
        if self.debug in ("", None):
            self.debug = []
        for name in ("gradient_checkpointing", "activation_checkpointing", "ddp_broadcast_buffers"):
            if getattr(self, name) is None:
                setattr(self, name, False)
        if self.eval_strategy == "steps" and self.eval_steps is None:
            self.eval_steps = self.logging_steps
        if self.eval_strategy != "no":
            self.do_eval = True
        self.prediction_loss_only = True  # as sentence-transformers sets it: its evaluators compute the metrics

    def _read_strings(self) -> None:
        """Numbers and booleans given as strings (a YAML file's ``1e-5`` is one) read as the field's type, and
        dict arguments given as JSON (a command line's) parsed, as Hugging Face reads them; else a clear error."""
        kinds = _scalar_kinds(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str):
                continue
            kind = kinds.get(f.name)
            if value.lstrip().startswith("{") and f.name in _DICT_FIELDS:
                setattr(self, f.name, _typed_values(json.loads(value)))
            elif kind in (int, float):
                try:
                    setattr(self, f.name, _scalar(value, kind))
                except ValueError:
                    raise ValueError(f"{f.name} must be a number, got {value!r}") from None
            elif kind is bool:
                with contextlib.suppress(ValueError):  # any other string is left for the checks to name
                    setattr(self, f.name, _scalar(value, bool))

    def _check_torch_only(self) -> None:
        for key, default in _TORCH_ONLY.items():
            value = getattr(self, key)
            if value == default or value in _TORCH_ONLY_ALSO_MEANT.get(key, ()):
                continue
            full_eval = (
                " (bf16=True computes the eval loss in bfloat16; evaluators score in the model's own dtype, float32 "
                "unless it was loaded in bfloat16)"
            )
            hint = {
                "fp16": " (use bf16=True: bfloat16 compute)",
                "fp16_full_eval": full_eval,
                "bf16_full_eval": full_eval,
            }.get(key, "")
            raise ValueError(
                f"CrossEncoderTrainingArguments: {key}={value!r} selects Hugging Face / PyTorch machinery "
                f"that has no meaning in crossjax (JAX){hint}; leave it at its default {default!r}"
            )

    # ---------------------------------------------------------------------------------- derived numbers
    @property
    def scheduler_name(self) -> str:
        """The crossjax / sentence-transformers ``fit`` name of ``lr_scheduler_type``."""
        return _SCHEDULERS[self.lr_scheduler_type]

    @property
    def optimizer_settings(self) -> dict[str, Any]:
        """``optim`` and ``optim_args`` as crossjax's step takes them: ``{"optimizer": key, "optimizer_options":
        (...)}`` (FitConfig's fields)."""
        key = optimizer_key(self.optim)
        return {"optimizer": key, "optimizer_options": optim_args_options(key, self.optim_args, self.optim)}

    @property
    def scheduler_kwargs(self) -> dict[str, Any]:
        """``lr_scheduler_kwargs`` as the schedule reads them (checked; the constant schedules ignore them)."""
        return dict(scheduler_options(self.scheduler_name, self.lr_scheduler_kwargs, float(self.learning_rate)))

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """transformers 5's rule: a count, or ``ceil(fraction * steps)`` for a value below 1."""
        warmup = self.warmup_ratio if self.warmup_ratio is not None else self.warmup_steps
        return int(warmup) if warmup >= 1 else math.ceil(num_training_steps * warmup)

    @staticmethod
    def _interval(value: float, total_steps: int) -> int:
        """A step interval; a float below 1 is a fraction of the run (as transformers reads it)."""
        return max(1, math.ceil(total_steps * value)) if 0 < value < 1 else max(1, int(value))

    def logging_interval(self, total_steps: int) -> int:
        return self._interval(self.logging_steps, total_steps)

    def eval_interval(self, total_steps: int) -> int:
        return self._interval(self.eval_steps if self.eval_steps is not None else self.logging_steps, total_steps)

    def save_interval(self, total_steps: int) -> int:
        return self._interval(self.save_steps, total_steps)

    # ------------------------------------------------------------------- Hugging Face's serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every argument, enums as their values and ``*_token`` values hidden, as Hugging Face's ``to_dict``."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        for key, value in out.items():
            if isinstance(value, Enum):
                out[key] = value.value
            if key.endswith("_token"):
                out[key] = f"<{key.upper()}>"
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_sanitized_dict(self) -> dict[str, Any]:
        """``to_dict`` with the batch sizes, every value a bool, int, float or str (TensorBoard's hparams)."""
        out = {**self.to_dict(), "train_batch_size": self.train_batch_size, "eval_batch_size": self.eval_batch_size}
        return {k: v if type(v) in (bool, int, float, str) else str(v) for k, v in out.items()}

    # ------------------------------------------------------- the process facts scripts and callbacks read
    @property
    def n_gpu(self) -> int:
        """The GPUs this process trains on (JAX's local GPU devices; 0 on a CPU or a TPU)."""
        return sum(1 for d in _joined_jax().local_devices() if d.platform == "gpu")

    @property
    def device(self) -> Any:
        """This process's first JAX device (Hugging Face: a torch.device; crossjax places arrays itself)."""
        return _joined_jax().local_devices()[0]

    @property
    def train_batch_size(self) -> int:
        """Pairs a step draws on this process: per device times the process's devices (before accumulation);
        the devices of its model's mesh once a trainer holds these arguments (a model on one device of
        several trains per-device batches)."""
        return self.per_device_train_batch_size * self._data_devices_here()

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size * self._data_devices_here()

    def _data_devices_here(self) -> int:
        return self.__dict__.get("_model_data_devices") or _joined_jax().local_device_count()

    @property
    def world_size(self) -> int:
        """The number of processes (``jax.process_count()``; see :func:`_process_facts`)."""
        return _process_facts()[1]

    @property
    def process_index(self) -> int:
        return _process_facts()[0]

    @property
    def local_process_index(self) -> int:
        """The process's index on its machine: ``LOCAL_RANK`` where a launcher sets it, else 0 (one process a
        host, as on a TPU VM pod)."""
        return int(os.environ.get("LOCAL_RANK", 0)) if self.world_size > 1 else 0

    @property
    def parallel_mode(self) -> ParallelMode:
        jax = _joined_jax()
        if self.world_size > 1:
            return ParallelMode.TPU if jax.default_backend() == "tpu" else ParallelMode.DISTRIBUTED
        return ParallelMode.NOT_DISTRIBUTED if jax.local_device_count() > 1 else ParallelMode.NOT_PARALLEL

    @property
    def should_log(self) -> bool:
        return (self.local_process_index if self.log_on_each_node else self.process_index) == 0

    @property
    def should_save(self) -> bool:
        return (self.local_process_index if self.save_on_each_node else self.process_index) == 0

    @property
    def ddp_timeout_delta(self) -> timedelta:
        return timedelta(seconds=self.ddp_timeout)

    def get_process_log_level(self) -> int:
        """``log_level`` on the process that logs, ``log_level_replica`` on the others; "passive" leaves
        transformers' own verbosity, as Hugging Face's does."""
        from transformers.utils import logging as hf_logging

        levels = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50, "passive": -1}
        level = levels[self.log_level if self.should_log else self.log_level_replica]
        return hf_logging.get_verbosity() if level == -1 else level

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work") -> Iterator[None]:
        """Run the block on the main process (of each machine with ``local``) first, the others after it: one
        barrier across JAX processes (``multihost_utils.sync_global_devices``), nothing in a single process."""
        if self.world_size <= 1:
            yield
            return
        from jax.experimental import multihost_utils

        main = (self.local_process_index if local else self.process_index) == 0
        if not main:
            multihost_utils.sync_global_devices(f"main_process_first {desc}")
        try:
            yield
        finally:
            if main:
                multihost_utils.sync_global_devices(f"main_process_first {desc}")

    # ------------------------------------------------------------------ Hugging Face's grouped setters
    def _update(self, **changes: Any) -> CrossEncoderTrainingArguments:
        """Set ``changes`` and check the whole again (the arguments stay unchanged where they fail)."""
        before = {name: getattr(self, name) for name in changes}
        try:
            for name, value in changes.items():
                setattr(self, name, value)
            self.__post_init__()
        except BaseException:
            for name, value in before.items():
                setattr(self, name, value)
            raise
        return self

    def set_training(
        self,
        learning_rate: float = 5e-5,
        batch_size: int = 8,
        weight_decay: float = 0,
        num_epochs: float = 3,
        max_steps: int = -1,
        gradient_accumulation_steps: int = 1,
        seed: int = 42,
        activation_checkpointing: bool = False,
        gradient_checkpointing: bool | None = None,
    ) -> CrossEncoderTrainingArguments:
        checkpointing = activation_checkpointing if gradient_checkpointing is None else gradient_checkpointing
        return self._update(
            do_train=True, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
            weight_decay=weight_decay, num_train_epochs=num_epochs, max_steps=max_steps,
            gradient_accumulation_steps=gradient_accumulation_steps, seed=seed,
            activation_checkpointing=checkpointing, gradient_checkpointing=checkpointing,
        )  # fmt: skip

    def set_evaluate(
        self,
        strategy: str = "no",
        steps: int = 500,
        batch_size: int = 8,
        accumulation_steps: int | None = None,
        delay: float | None = None,
        loss_only: bool = False,
    ) -> CrossEncoderTrainingArguments:
        strategy = getattr(strategy, "value", strategy)
        if strategy == "steps" and steps == 0:
            raise ValueError("Setting `strategy` as 'steps' requires a positive value for `steps`.")
        return self._update(
            eval_strategy=strategy, do_eval=strategy != "no", eval_steps=steps, per_device_eval_batch_size=batch_size,
            eval_accumulation_steps=accumulation_steps, eval_delay=0 if delay is None else delay,
            prediction_loss_only=loss_only,
        )  # fmt: skip

    def set_testing(self, batch_size: int = 8, loss_only: bool = False) -> CrossEncoderTrainingArguments:
        return self._update(do_predict=True, per_device_eval_batch_size=batch_size, prediction_loss_only=loss_only)

    def set_save(
        self, strategy: str = "steps", steps: int = 500, total_limit: int | None = None, on_each_node: bool = False
    ) -> CrossEncoderTrainingArguments:
        strategy = getattr(strategy, "value", strategy)
        if strategy == "steps" and steps == 0:
            raise ValueError("Setting `strategy` as 'steps' requires a positive value for `steps`.")
        return self._update(
            save_strategy=strategy, save_steps=steps, save_total_limit=total_limit, save_on_each_node=on_each_node
        )

    def set_logging(
        self,
        strategy: str = "steps",
        steps: int = 500,
        report_to: str | list[str] = "none",
        level: str = "passive",
        first_step: bool = False,
        nan_inf_filter: bool = False,
        on_each_node: bool = False,
        replica_level: str = "passive",
    ) -> CrossEncoderTrainingArguments:
        strategy = getattr(strategy, "value", strategy)
        if strategy == "steps" and steps == 0:
            raise ValueError("Setting `strategy` as 'steps' requires a positive value for `steps`.")
        return self._update(
            logging_strategy=strategy, logging_steps=steps, report_to=report_to, log_level=level,
            logging_first_step=first_step, logging_nan_inf_filter=nan_inf_filter, log_on_each_node=on_each_node,
            log_level_replica=replica_level,
        )  # fmt: skip

    def set_push_to_hub(
        self,
        model_id: str,
        strategy: str = "every_save",
        token: str | None = None,
        private_repo: bool | None = None,
        always_push: bool = False,
        revision: str | None = None,
    ) -> CrossEncoderTrainingArguments:
        return self._update(
            push_to_hub=True, hub_model_id=model_id, hub_strategy=strategy,
            hub_token=token, hub_private_repo=private_repo, hub_always_push=always_push, hub_revision=revision,
        )  # fmt: skip

    def set_optimizer(
        self,
        name: str = "adamw_torch",
        learning_rate: float = 5e-5,
        weight_decay: float = 0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        args: str | None = None,
    ) -> CrossEncoderTrainingArguments:
        return self._update(
            optim=getattr(name, "value", name), learning_rate=learning_rate, weight_decay=weight_decay,
            adam_beta1=beta1, adam_beta2=beta2, adam_epsilon=epsilon, optim_args=args,
        )  # fmt: skip

    def set_lr_scheduler(
        self, name: str = "linear", num_epochs: float = 3.0, max_steps: int = -1, warmup_steps: float = 0
    ) -> CrossEncoderTrainingArguments:
        return self._update(
            lr_scheduler_type=getattr(name, "value", name), num_train_epochs=num_epochs, max_steps=max_steps,
            warmup_steps=warmup_steps, warmup_ratio=None,
        )  # fmt: skip

    def set_dataloader(
        self,
        train_batch_size: int = 8,
        eval_batch_size: int = 8,
        drop_last: bool = False,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
        multiprocessing_context: str | None = None,
        in_order: bool = True,
        auto_find_batch_size: bool = False,
        ignore_data_skip: bool = False,
        sampler_seed: int | None = None,
    ) -> CrossEncoderTrainingArguments:
        return self._update(
            per_device_train_batch_size=train_batch_size, per_device_eval_batch_size=eval_batch_size,
            dataloader_drop_last=drop_last, dataloader_num_workers=num_workers, dataloader_pin_memory=pin_memory,
            dataloader_persistent_workers=persistent_workers, dataloader_prefetch_factor=prefetch_factor,
            dataloader_multiprocessing_context=multiprocessing_context, dataloader_in_order=in_order,
            auto_find_batch_size=auto_find_batch_size, ignore_data_skip=ignore_data_skip, data_seed=sampler_seed,
        )  # fmt: skip

    def non_default(self) -> dict[str, Any]:
        """The arguments that differ from their defaults (what a model card lists)."""
        default = CrossEncoderTrainingArguments()
        mine, theirs = self.to_dict(), default.to_dict()
        return {k: v for k, v in mine.items() if theirs.get(k) != v}
