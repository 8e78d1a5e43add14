"""``CrossEncoderTrainingArguments``: sentence-transformers' (and Hugging Face Trainer's) argument names and
defaults for everything that applies to a JAX run, and a clear error for everything that does not.

A script written for ``sentence_transformers.cross_encoder.CrossEncoderTrainingArguments`` runs unchanged
where it sets arguments listed here. Arguments of ``transformers.TrainingArguments`` that choose PyTorch
machinery (``fp16``, ``deepspeed``, ``fsdp``, ``torch_compile``, DDP knobs, ...) raise a
``ValueError`` that names them when set to anything but their default, instead of being silently ignored.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from dataclasses import dataclass, field, fields
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
    "half_precision_backend": "auto",
    "fp16_opt_level": "O1",
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
    "use_cpu": False,
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
    "restore_callback_states_from_checkpoint": False,
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
}
# What Hugging Face's TrainingArguments reads back for these when they are not given (None for the others).
_NO_EFFECT_DEFAULTS: dict[str, Any] = {
    "report_to": [], "project": "huggingface", "log_level": "passive", "log_level_replica": "warning",
    "log_on_each_node": True, "logging_nan_inf_filter": True, "disable_tqdm": False, "dataloader_pin_memory": True,
    "dataloader_in_order": True, "dataloader_num_workers": 0, "dataloader_persistent_workers": False,
    "remove_unused_columns": True, "skip_memory_metrics": True, "do_train": False, "do_predict": False,
    "save_only_model": False, "save_on_each_node": False, "include_num_input_tokens_seen": "no",
    "average_tokens_across_devices": True, "full_determinism": False, "ddp_timeout": 1800,
    "hub_strategy": "every_save", "hub_always_push": False,
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
    "save_only_model",
    "save_on_each_node",
    "include_num_input_tokens_seen",
    "average_tokens_across_devices",
    "full_determinism",
    "ddp_timeout",
    "hub_model_id",
    "hub_token",
    "hub_private_repo",
    "hub_strategy",
    "hub_always_push",
    "hub_revision",
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
_STRATEGIES = ("no", "steps", "epoch")


def _typed_values(options: dict[str, Any]) -> dict[str, Any]:
    """A JSON dict from a command line with its numeric and boolean strings read as numbers and booleans, as
    transformers' ``TrainingArguments`` reads ``lr_scheduler_kwargs='{"min_lr": "1e-6"}'``."""
    typed = {}
    for key, value in options.items():
        if isinstance(value, str):
            lowered = value.lower()
            if lowered in ("true", "false"):
                value = lowered == "true"
            else:
                try:
                    value = int(value) if value.lstrip("-").isdigit() else float(value)
                except ValueError:
                    pass
        typed[key] = value
    return typed


def _strategy(name: str, value: Any) -> str:
    value = getattr(value, "value", value)
    if value not in _STRATEGIES:
        raise ValueError(f"{name} must be one of {_STRATEGIES}, got {value!r}")
    return value


@dataclass
class CrossEncoderTrainingArguments:
    """The settings of a :class:`crossjax.CrossEncoderTrainer` run (Hugging Face Trainer defaults).

    ``per_device_train_batch_size`` counts pairs (rows of the dataset) per device: the global batch of a step is
    that times the number of devices (and of processes) times ``gradient_accumulation_steps``.
    ``warmup_steps`` is a step count, or a float below 1 meaning a fraction of the run (transformers 5);
    ``warmup_ratio`` is the older spelling of that fraction. ``bf16`` computes in bfloat16 with float32
    parameters and optimizer state. ``resume_from_checkpoint`` (True or a checkpoint folder) resumes the orbax
    checkpoint of ``output_dir/checkpoints`` bit-exactly.
    """

    output_dir: str | None = None
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict | None = None
    warmup_steps: float = 0
    warmup_ratio: float | None = None
    optim: str = "adamw_torch"
    optim_args: str | None = None
    bf16: bool = False
    gradient_accumulation_steps: int = 1
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
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
    prompts: str | dict[str, str] | None = None
    # sentence-transformers 6.2's Router options: a cross-encoder has no Router (accepted empty only)
    router_mapping: dict[str, Any] | None = None
    learning_rate_mapping: dict[str, Any] | None = None
    resume_from_checkpoint: str | bool | None = None
    ignore_data_skip: bool = False  # a resume always continues at the checkpoint's data position here
    push_to_hub: bool = False
    prediction_loss_only: bool = True
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __init__(self, output_dir: str | None = None, **kwargs: Any) -> None:
        own = {f.name: f for f in fields(self) if f.name != "extra"}
        for f in own.values():
            if f.name == "output_dir":
                continue
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            setattr(self, f.name, default)
        # "~/out" expanded, as Hugging Face's TrainingArguments does (else a literal "~" folder is made)
        self.output_dir = os.path.expanduser(output_dir) if isinstance(output_dir, str | os.PathLike) else output_dir
        self.extra = {}
        for key, value in kwargs.items():
            if key in own:
                setattr(self, key, value)
            elif key in _TORCH_ONLY:
                if value in _TORCH_ONLY_ALSO_MEANT.get(key, ()):
                    self.extra[key] = value
                elif value != _TORCH_ONLY[key]:
                    hint = " (use bf16=True: bfloat16 compute)" if key.startswith("fp16") else ""
                    raise ValueError(
                        f"CrossEncoderTrainingArguments: {key}={value!r} selects Hugging Face / PyTorch machinery "
                        f"that has no meaning in crossjax (JAX){hint}; leave it at its default {_TORCH_ONLY[key]!r}"
                    )
            elif key in _NO_EFFECT:
                self.extra[key] = value
            else:
                raise TypeError(f"CrossEncoderTrainingArguments got an unexpected keyword argument {key!r}")
        self.__post_init__()

    def __post_init__(self) -> None:
        self.eval_strategy = _strategy("eval_strategy", self.eval_strategy)
        self.save_strategy = _strategy("save_strategy", self.save_strategy)
        self.logging_strategy = _strategy("logging_strategy", self.logging_strategy)
        self.batch_sampler = BatchSamplers(getattr(self.batch_sampler, "value", self.batch_sampler))
        if isinstance(self.prompts, str) and self.prompts.lstrip().startswith("{"):
            self.prompts = json.loads(self.prompts)  # a dict given on a command line, as sentence-transformers does
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
        for name in ("router_mapping", "learning_rate_mapping"):
            if getattr(self, name):
                raise ValueError(
                    f"{name}={getattr(self, name)!r} needs a sentence-transformers Router module, which a "
                    "cross-encoder does not have; leave it empty"
                )
        self.multi_dataset_batch_sampler = MultiDatasetBatchSamplers(
            getattr(self.multi_dataset_batch_sampler, "value", self.multi_dataset_batch_sampler)
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
        if isinstance(self.lr_scheduler_kwargs, str) and self.lr_scheduler_kwargs.lstrip().startswith("{"):
            self.lr_scheduler_kwargs = _typed_values(json.loads(self.lr_scheduler_kwargs))  # from a command line
        if self.lr_scheduler_kwargs is not None and not isinstance(self.lr_scheduler_kwargs, dict):
            raise TypeError(f"lr_scheduler_kwargs must be a dict (or its JSON), got {self.lr_scheduler_kwargs!r}")
        # transformers' checks, before any data is read: options the schedule does not take, required ones
        scheduler_options(self.scheduler_name, self.lr_scheduler_kwargs, float(self.learning_rate))
        self.optim = getattr(self.optim, "value", self.optim)
        optim_args_options(optimizer_key(self.optim), self.optim_args)  # checked as its Trainer reads them
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps == 0:
            raise ValueError(
                f"max_steps must be a positive integer, or -1 to train num_train_epochs; got {self.max_steps!r}"
            )
        if self.max_steps < 0 and not (self.num_train_epochs > 0):
            raise ValueError(f"num_train_epochs must be > 0, got {self.num_train_epochs!r}")
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio <= 1:
                raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
            if self.warmup_steps:
                raise ValueError("set warmup_steps or warmup_ratio, not both")
            logger.warning("warmup_ratio is deprecated in transformers 5: use warmup_steps=%s", self.warmup_ratio)
        if not (self.warmup_steps >= 0 and math.isfinite(self.warmup_steps)):
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps):
            raise ValueError(f"warmup_steps >= 1 must be a whole number of steps, got {self.warmup_steps!r}")
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
        if self.eval_delay < 0:
            raise ValueError(f"eval_delay must be >= 0, got {self.eval_delay!r}")
        if self.load_best_model_at_end and self.eval_strategy == "no":
            raise ValueError("load_best_model_at_end=True needs an eval_strategy other than 'no'")
        if self.metric_for_best_model is None and self.load_best_model_at_end:
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model is not None and self.greater_is_better is None:
            self.greater_is_better = not self.metric_for_best_model.removeprefix("eval_").endswith("loss")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise ValueError(f"save_total_limit must be >= 1 or None, got {self.save_total_limit!r}")
        if self.push_to_hub and not self.extra.get("hub_model_id"):
            raise ValueError("push_to_hub=True needs hub_model_id (the repository to push to)")

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
        return {"optimizer": key, "optimizer_options": optim_args_options(key, self.optim_args)}

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

    def __getattr__(self, name: str) -> Any:
        # Hugging Face arguments crossjax takes without effect (run_name, hub_model_id, logging_dir, ...) read back
        # as given (None when not given), as scripts read them from args.
        if name in _NO_EFFECT:
            extra = self.__dict__.get("extra", {})
            if name in extra:
                return extra[name]
            if name == "do_eval":  # Hugging Face's: on when there is an evaluation schedule
                return self.eval_strategy != "no"
            return copy.deepcopy(_NO_EFFECT_DEFAULTS.get(name))
        if name in _TORCH_ONLY:  # its default or an _TORCH_ONLY_ALSO_MEANT value (a copy: lists are mutable)
            return copy.deepcopy(self.__dict__.get("extra", {}).get(name, _TORCH_ONLY[name]))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for key in ("batch_sampler", "multi_dataset_batch_sampler"):
            out[key] = out[key].value
        return {**out, **self.extra}

    def non_default(self) -> dict[str, Any]:
        """The arguments that differ from their defaults (what a model card lists)."""
        default = CrossEncoderTrainingArguments()
        mine, theirs = self.to_dict(), default.to_dict()
        return {k: v for k, v in mine.items() if theirs.get(k) != v}
