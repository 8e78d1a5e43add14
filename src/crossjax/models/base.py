"""The model base class: embed -> encoder -> classify, loading from and saving to Hugging Face layouts."""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax.models import export
from crossjax.models.checkpoints import (
    CheckpointError,
    labels_in_config_file,
    load_config,
    read_state_dict,
    resolve_checkpoint_dir,
)
from crossjax.models.layers import activation
from crossjax.models.params import IGNORED_KEYS, ParamRule, flat_params, hf_slots_of, our_slot_of, rename_legacy

logger = logging.getLogger("crossjax")


_COMPUTE_DTYPES = {
    "float32": jnp.float32,
    "fp32": jnp.float32,
    "float": jnp.float32,
    "bfloat16": jnp.bfloat16,
    "bf16": jnp.bfloat16,
    "float16": jnp.float16,
    "fp16": jnp.float16,
    "half": jnp.float16,
}


def compute_dtype_of(dtype: Any) -> type:
    """The compute dtype a caller named: a JAX or numpy dtype, its name, or a torch dtype (transformers' spelling).

    ``None`` and transformers' ``"auto"`` (the checkpoint's own dtype there) mean float32: the parameters are float32
    whatever the checkpoint stores, and lower precision is asked for by name. Anything else is refused here, not in
    the first forward pass."""
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return jnp.float32
    if isinstance(dtype, str) or type(dtype).__module__ == "torch":
        name = str(dtype).removeprefix("torch.").lower()
        if name in _COMPUTE_DTYPES:
            return _COMPUTE_DTYPES[name]
    else:
        try:
            resolved = jnp.dtype(dtype)
        except TypeError:
            resolved = None
        for scalar_type in _COMPUTE_DTYPES.values():
            if resolved == jnp.dtype(scalar_type):
                return scalar_type
    raise ValueError(f"compute dtype {dtype!r} is not one crossjax computes in (float32, bfloat16, float16)")


def refuse_torch_tensors(*inputs: Any) -> None:
    """A model called as a PyTorch one (``model(**tokenizer(..., return_tensors="pt"))``) is told what to pass,
    not left to fail deep inside JAX."""
    if any(type(x).__module__.startswith("torch") for x in inputs):
        raise TypeError(
            "crossjax models take numpy or JAX arrays, not torch tensors: tokenize with return_tensors='np' "
            "(or score pairs with CrossEncoder.predict); the result is the logits array itself"
        )



def check_config_values(config) -> None:
    """Values a config may hold that no model can be built with, refused by name before anything is built (torch
    refuses a dropout rate outside [0, 1] when it builds the layer; crossjax's would fail in the first step, or
    train nothing at 1.5): every ``*dropout*`` rate, and ``num_labels``."""
    for name, value in config.to_dict().items():
        if "dropout" in name and isinstance(value, int | float) and not isinstance(value, bool):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"config {name}={value!r}: a dropout probability must be between 0 and 1")
    num_labels = getattr(config, "num_labels", 1)
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"config num_labels={num_labels!r}: a model needs at least one output")


def merged_keywords(name_a: str, a: dict | None, name_b: str, b: dict | None) -> dict:
    """Two spellings of the same keyword dict (tokenizer_kwargs and ST 6's processor_kwargs; config_kwargs and
    from_pretrained's keywords): equal values may repeat, different ones are an error."""
    a, b = dict(a or {}), dict(b or {})
    clash = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    if clash:
        raise ValueError(f"{name_a} and {name_b} give different values for {clash}")
    return {**a, **b}

# transformers' from_pretrained keywords that say where a checkpoint comes from (huggingface_hub's download)
HUB_DOWNLOAD_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies", "subfolder")
# ... those that steer PyTorch's loading, with no meaning for JAX arrays: refused unless at transformers' default
TORCH_LOADING_DEFAULTS = {
    "attn_implementation": None, "device_map": None, "max_memory": None, "offload_folder": None,
    "quantization_config": None, "use_safetensors": True, "variant": None, "state_dict": None, "tp_plan": None,
    "device_mesh": None, "key_mapping": None, "trust_remote_code": False, "use_kernels": False,
    "gguf_file": None, "weights_only": True,
}  # fmt: skip
# ... and those transformers 5 itself ignores (retired), ignored here too; ``from_pt`` is the Flax classes' "read the
# PyTorch weights", which is what crossjax does
RETIRED_LOADING_KWARGS = (
    "low_cpu_mem_usage", "offload_state_dict", "from_tf", "from_flax", "mirror", "_fast_init", "from_pt"
)  # fmt: skip
# Config switches for outputs a crossjax model does not return (its call returns the logits alone)
UNRETURNED_OUTPUTS = ("output_hidden_states", "output_attentions")


def pretrained_options(
    where: str,
    name_or_path,
    config,
    num_labels: int | None,
    config_kwargs: dict | None,
    dtype,
    kwargs: dict,
    load: Callable[..., Any] = load_config,
) -> tuple[Path, Any, type, bool]:
    """transformers' ``from_pretrained`` keywords read as it reads them: the checkpoint directory (hub options
    passed to the download), the config (``config=`` an object or a path; other keywords that name config
    attributes override the checkpoint's, any other one is a TypeError, as in transformers) and the compute
    dtype (``torch_dtype`` is ``dtype``'s old name). ``num_labels`` and ``config_kwargs`` are crossjax's and
    sentence-transformers' spellings of config overrides."""
    from transformers import PretrainedConfig

    kwargs = dict(kwargs)
    torch_only = sorted(
        k for k, default in TORCH_LOADING_DEFAULTS.items() if k in kwargs and kwargs[k] not in (None, default)
    )
    if torch_only:
        raise ValueError(
            f"{where}: {torch_only} are PyTorch loading options with no meaning in crossjax (its parameters are "
            "float32 JAX arrays on the devices of its mesh, and it runs its own attention)"
        )
    if kwargs.pop("_do_init", True) is False:
        raise ValueError(
            f"{where}: _do_init=False (transformers' Flax classes then returned the parameters apart from the model) "
            "has no counterpart: a crossjax model is an nnx.Module holding its parameters; nnx.split(model) gives "
            "(graphdef, state)"
        )
    asked = sorted(k for k in UNRETURNED_OUTPUTS if kwargs.get(k) or (config_kwargs or {}).get(k))
    if asked:
        raise ValueError(
            f"{where}: {asked}: a crossjax model's call returns the logits alone; model.encode(input_ids, "
            "attention_mask, token_type_ids) gives the last hidden states"
        )
    for key in (*TORCH_LOADING_DEFAULTS, *RETIRED_LOADING_KWARGS, "tqdm_class"):
        kwargs.pop(key, None)
    ignore_mismatched_sizes = bool(kwargs.pop("ignore_mismatched_sizes", False))
    torch_dtype = kwargs.pop("torch_dtype", None)
    if torch_dtype is not None:
        if dtype is not None and compute_dtype_of(dtype) != compute_dtype_of(torch_dtype):
            raise ValueError(f"{where}: dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass dtype only")
        dtype = torch_dtype
    hub = {key: kwargs.pop(key) for key in HUB_DOWNLOAD_KWARGS if key in kwargs}
    directory = resolve_checkpoint_dir(name_or_path, **hub)
    overrides = merged_keywords(f"{where}: config_kwargs", config_kwargs, "keyword arguments", kwargs)
    if "num_labels" in overrides:  # sentence-transformers' config_kwargs={"num_labels": 3}
        asked = overrides.pop("num_labels")
        if num_labels is not None and int(num_labels) != int(asked):
            raise ValueError(f"{where}: num_labels={num_labels} and config_kwargs num_labels={asked} disagree")
        num_labels = asked
    if isinstance(config, PretrainedConfig):
        if kwargs:  # transformers hands them to the model's constructor, which takes none
            raise TypeError(
                f"{where} got unexpected keyword arguments {sorted(kwargs)}: with config= given, set them on that "
                "config (transformers refuses them too)"
            )
        config = copy.deepcopy(config)  # as transformers: the caller's object is untouched
        config.update(overrides)
        if num_labels is not None:
            config.num_labels = int(num_labels)
    elif config is None:
        config = load(directory, num_labels=num_labels, **overrides)
    else:  # a folder, a config file or a hub id, read as AutoConfig reads them
        local = Path(config).expanduser()
        config = load(local, num_labels=num_labels, **overrides) if local.exists() else load(
            str(config), num_labels=num_labels, **hub, **overrides
        )
    unknown = sorted(k for k in kwargs if not hasattr(config, k))
    if unknown:
        raise TypeError(
            f"{where} got unexpected keyword arguments {unknown}: neither attributes of {type(config).__name__} "
            f"nor loading options (hub: {list(HUB_DOWNLOAD_KWARGS)})"
        )
    return directory, config, compute_dtype_of(dtype), ignore_mismatched_sizes


@dataclass
class LoadingInfo:
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    error_msgs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list]:
        return {
            "missing_keys": self.missing_keys,
            "unexpected_keys": self.unexpected_keys,
            "mismatched_keys": self.mismatched_keys,
            "error_msgs": self.error_msgs,
        }


class FlaxPreTrainedModel(nnx.Module):
    """Base of every family: config, the parameter table, from_pretrained and save_pretrained.

    A family sets ``model_types`` (the ``config.model_type`` values it serves), ``architecture`` (the
    transformers class name written to ``config.json``), ``base_model_prefix``, ``head_prefixes`` (HF names
    of the classification head, re-initialised when ``num_labels`` differs) and ``param_table(config)``.
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    architecture: ClassVar[str] = ""
    base_model_prefix: ClassVar[str] = ""
    head_prefixes: ClassVar[tuple[str, ...]] = ()
    uses_token_types: ClassVar[bool] = True
    # The family's head reads each pair's first token, and its encoder is :class:`~crossjax.models.layers.Encoder`
    # of :class:`~crossjax.models.layers.EncoderLayer`: packed batches then compute the last layer for those
    # tokens only (see :func:`first_tokens_pay`).
    last_layer_for_first_tokens: ClassVar[bool] = False
    # Regexes of checkpoint keys the family drops silently (transformers' _keys_to_ignore_on_load_unexpected).
    ignored_unexpected_keys: ClassVar[tuple[str, ...]] = ()
    # The config keys naming the family's activations, checked by name before anything is built.
    activation_keys: ClassVar[tuple[str, ...]] = ("hidden_act",)
    # The config key of the classification head's dropout, which ``CrossEncoder(classifier_dropout=...)`` sets.
    classifier_dropout_key: ClassVar[str] = "classifier_dropout"

    config: Any
    dtype: Any  # the compute dtype the family was built with (parameters are always float32)
    scan_layers: bool  # layers stacked and run under nnx.scan (True) or unrolled

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        raise NotImplementedError

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    @property
    def position_limit(self) -> int | None:
        """The most tokens a pair may have: the rows of the absolute position table (RoBERTa-style positions
        start past the pad index), or None for a family without one (relative or rotary positions)."""
        limit = int(getattr(self.config, "max_position_embeddings", 512))
        if getattr(getattr(self, "embeddings", None), "positions_from_padding", False):
            limit -= int(self.config.pad_token_id) + 1
        return limit

    def reads_token_types(self) -> bool:
        """Whether given token type ids are embedded (families without a table, or that ignore it, do not)."""
        return self.uses_token_types and int(getattr(self.config, "type_vocab_size", 0) or 0) > 0

    def _token_inputs(self, input_ids, attention_mask, token_type_ids) -> tuple:
        """A raw call's ``(input_ids, attention_mask, token_type_ids)``, checked for what transformers refuses and
        JAX would fail on deep inside (a shape that does not broadcast) or turn into wrong logits without a word
        (a mask broadcast over the batch, an additive mask read as 0/1, ids past a table: NaN logits; negative ones
        would wrap to the table's last rows). Shapes and dtypes are checked always (they are static); values where
        they are concrete. Under ``jit`` values cannot be checked: negative ids then give NaN logits, as ids past
        the table do (transformers raises for both)."""
        refuse_torch_tensors(input_ids, attention_mask, token_type_ids)
        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        for name, value in arrays.items():
            if isinstance(value, (list, tuple)):  # nested lists, of numbers or (under nnx.jit) of traced scalars
                traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(value))
                arrays[name] = value = jnp.asarray(value) if traced else np.asarray(value)
            if value is not None and not hasattr(value, "shape"):
                raise TypeError(f"{name} must be an array (batch, tokens), got {type(value).__name__}")
        input_ids = arrays["input_ids"]
        if input_ids is None or np.ndim(input_ids) != 2 or not np.shape(input_ids)[1]:
            shape = None if input_ids is None else tuple(np.shape(input_ids))
            raise ValueError(
                f"input_ids must be an integer array (batch, tokens) with at least one token, got shape {shape}"
            )
        for name, value in arrays.items():
            if value is None:
                continue
            if tuple(np.shape(value)) != tuple(np.shape(input_ids)):
                raise ValueError(
                    f"{name} has shape {tuple(np.shape(value))}, input_ids {tuple(np.shape(input_ids))}: a raw model "
                    "call takes one value per token for each (as the tokenizer returns them)"
                )
            kind = jnp.dtype(value.dtype)
            if name != "attention_mask" and not jnp.issubdtype(kind, jnp.integer):
                raise ValueError(f"{name} must hold integers, got {kind.name}")
            if name == "attention_mask" and not isinstance(value, jax.core.Tracer):
                values = np.unique(np.asarray(value))
                if not np.isin(values, (0, 1)).all():
                    raise ValueError(
                        f"attention_mask holds {values[~np.isin(values, (0, 1))][0]}: crossjax takes transformers' "
                        "0/1 padding mask (1 = a real token), not an additive one"
                    )
        limit, length = self.position_limit, np.shape(input_ids)[1]
        if limit is not None and length > limit:
            raise ValueError(
                f"input_ids has {length} tokens a row; this {self.config.model_type} model's position table holds "
                f"{limit} (max_position_embeddings): truncate the inputs to {limit} tokens"
            )
        token_type_ids = arrays["token_type_ids"]
        tables = [("input_ids", "vocab_size", int(self.config.vocab_size))]
        if token_type_ids is not None and self.reads_token_types():
            tables.append(("token_type_ids", "type_vocab_size", int(self.config.type_vocab_size)))
        for name, field_name, size in tables:
            ids = arrays[name]
            if isinstance(ids, jax.core.Tracer):
                arrays[name] = jnp.where(ids < 0, size, ids)  # past the table, as a too-large id: NaN, not a wrap
                continue
            if not np.size(ids):
                continue
            values = np.asarray(ids)  # to host first: under a trace, jnp reductions of a constant are traced
            low, high = int(values.min()), int(values.max())
            if low < 0 or high >= size:
                raise ValueError(
                    f"{name} holds {high if high >= size else low}, outside this model's table of {size} "
                    f"({field_name}): a tokenizer of another model?"
                )
        return arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"]

    # Forward pass: embed -> encoder -> classify. Families override ``embed`` or ``classify`` where they differ.
    def embed(self, input_ids: jax.Array, token_type_ids: jax.Array | None, position_ids=None) -> jax.Array:
        return self.embeddings(input_ids, token_type_ids if self.reads_token_types() else None, position_ids)

    def classify(self, hidden: jax.Array) -> jax.Array:
        """Logits from hidden states (B, L, H); the heads read position 0 (each pair's first token)."""
        return self.classifier(hidden)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, last=None) -> jax.Array:
        """The encoder's last hidden states (B, L, H): what transformers' base model returns first.

        ``attention_mask`` is (B, L) (padding) or (B, L, L) (pairwise, for packed rows). ``last`` replaces the
        last layer's call (see :class:`~crossjax.models.layers.Encoder`), and its output is returned instead."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        with self.matmul_precision():
            return self.encoder(self.embed(input_ids, token_type_ids, position_ids), attention_mask, last=last)

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, token_type_ids: jax.Array | None = None
    ) -> jax.Array:
        """Logits (B, num_labels) in float32 from integer token arrays (B, L)."""
        input_ids, attention_mask, token_type_ids = self._token_inputs(input_ids, attention_mask, token_type_ids)
        with self.matmul_precision():
            return self.classify(self.encode(input_ids, attention_mask, token_type_ids)).astype(jnp.float32)

    def packed_logits(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array,
        segment_ids: jax.Array,
        position_ids: jax.Array,
        pair_row: jax.Array,
        pair_start: jax.Array,
    ) -> jax.Array:
        """Logits (G * P, num_labels) in float32 of packed pairs (see :mod:`crossjax.packing`).

        Token arrays are (G, R, T): G groups of R rows, each row several pairs end to end; ``segment_ids``
        number the pairs of a row (0 = padding), so attention stays inside a pair. Pair slot p of group g
        reads its first token at row ``pair_row[g, p]``, column ``pair_start[g, p]``. Each group gathers only
        from its own rows, so with the groups sharded over devices nothing crosses devices.
        """
        groups, rows, length = input_ids.shape
        flat = lambda x: x.reshape(groups * rows, length)  # noqa: E731
        with self.matmul_precision():
            inputs = (flat(input_ids), pair_attention_mask(segment_ids), flat(token_type_ids), flat(position_ids))
            if self.last_layer_for_first_tokens and first_tokens_pay(self.encoder, pair_row.shape[1], rows, length):
                last = partial(_first_tokens_layer, segment_ids=segment_ids, pair_row=pair_row, pair_start=pair_start)
                first = self.encode(*inputs, last=last)  # (G, P, H)
            else:
                hidden = self.encode(*inputs)
                hidden = hidden.reshape(groups, rows, length, hidden.shape[-1])
                first = at_first_tokens(hidden, pair_row, pair_start)  # (G, P, H)
            logits = self.classify(first.reshape(-1, 1, first.shape[-1]))
        return logits.astype(jnp.float32)

    def matmul_precision(self):
        """float32 compute means float32 matmuls: TPUs (bfloat16 passes) and GPUs (TF32) otherwise round the
        operands of float32 dots by default. bfloat16 compute keeps the platform's default."""
        return jax.default_matmul_precision("highest" if jnp.dtype(self.dtype) == jnp.float32 else "default")

    # ------------------------------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, config, *, dtype=jnp.float32, seed: int = 0, scan_layers: bool = True) -> FlaxPreTrainedModel:
        """A freshly initialised model (transformers' initialisation: normal(0, initializer_range)).

        ``scan_layers`` stacks the transformer layers and runs them under ``nnx.scan``: one compiled layer
        body whatever the depth. False unrolls them (one parameter set per layer)."""
        return initialise(cls._builder(config, dtype, seed, scan_layers))

    @classmethod
    def _builder(cls, config, dtype, seed: int, scan_layers: bool) -> Callable[[], FlaxPreTrainedModel]:
        check_config_values(config)
        for key in cls.activation_keys:
            if getattr(config, key, None) is not None:
                activation(getattr(config, key), key)
        dtype = compute_dtype_of(dtype)
        return lambda: cls(config, dtype=dtype, rngs=nnx.Rngs(params=seed, dropout=seed + 1), scan_layers=scan_layers)

    def place_hf_state_dict(
        self, tensors: dict[str, np.ndarray], source: str = "checkpoint"
    ) -> tuple[dict[str, Any], LoadingInfo]:
        """Where Hugging Face named tensors go among our parameters, and what was missing/unexpected/mismatched.

        Returns ``{our dotted path: array}`` in our layout (a stacked path whose every layer is in ``tensors``
        as one stacked array), with ``{layer: array}`` for a stack only some of whose layers are there. Reads
        only the parameters' shapes, so ``self`` may be abstract (``nnx.eval_shape``)."""
        info = LoadingInfo()
        table = self.param_table(self.config)
        prefix = self.base_model_prefix + "."
        in_file = {rename_legacy(k): k for k in tensors}  # our name -> the file's (the report uses the file's)
        if not any(k.startswith(prefix) for k in in_file):
            # A base-model checkpoint (e.g. a sentence-transformers bi-encoder): names lack the prefix.
            in_file = {(k if k.startswith(self.head_prefixes) else prefix + k): v for k, v in in_file.items()}
        tensors = {name: tensors[original] for name, original in in_file.items()}
        mismatched: set[str] = set()  # listed as mismatched only, not also missing, as transformers does
        ours = flat_params(self)
        placed: dict[str, Any] = {}
        filled: set[tuple[str, int | None]] = set()
        for name, array in tensors.items():
            rule, target, layer = our_slot_of(table, name, ours)
            if target is None:
                ignored = any(p.search(name) for p in IGNORED_KEYS) or any(
                    re.search(p, name) for p in self.ignored_unexpected_keys
                )
                if not ignored:
                    info.unexpected_keys.append(in_file[name])
                continue
            value = rule.to_ours(array)
            var = ours[target]
            shape = tuple(var.shape) if layer is None else tuple(var.shape[1:])
            if layer is not None and layer >= var.shape[0]:
                info.unexpected_keys.append(in_file[name])  # a layer beyond the config's num_hidden_layers
                continue
            if tuple(value.shape) != shape:
                expected = tuple(rule.to_hf(np.empty(shape)).shape)
                if name.startswith(self.head_prefixes):
                    info.mismatched_keys.append((in_file[name], tuple(array.shape), expected))
                    mismatched.add(name)
                    continue
                raise CheckpointError(
                    f"{source}: parameter {name} has shape {tuple(array.shape)}, but the config implies {expected}"
                )
            dtype = np.dtype(var.dtype)
            if layer is None:
                placed[target] = np.asarray(value, dtype=dtype)
            else:
                placed.setdefault(target, {})[layer] = np.asarray(value, dtype=dtype)
            filled.add((target, layer))
        for path, var in ours.items():
            slots = hf_slots_of(table, path, var.shape[0] if var.ndim else 0)
            for name, _, layer in slots:
                if (path, layer) not in filled and name not in mismatched:
                    info.missing_keys.append(name)
            if not slots:
                info.missing_keys.append(path)
            layers = placed.get(path)
            if isinstance(layers, dict) and len(layers) == var.shape[0]:
                placed[path] = np.stack([layers[i] for i in range(var.shape[0])])
        return placed, info

    def load_hf_state_dict(self, tensors: dict[str, np.ndarray], source: str = "checkpoint") -> LoadingInfo:
        """Fill our parameters from Hugging Face named tensors; return what was missing/unexpected."""
        placed, info = self.place_hf_state_dict(tensors, source)
        self._assign(placed)
        return info

    def _assign(self, placed: dict[str, Any]) -> None:
        """Write :meth:`place_hf_state_dict`'s values into the parameters (a partial stack: its layers only)."""
        ours = flat_params(self)
        for path, value in placed.items():
            var = ours[path]
            if isinstance(value, dict):
                stacked = np.array(var[...])
                for layer, array in value.items():
                    stacked[layer] = array
                value = stacked
            var[...] = jax.device_put(value)  # jnp.asarray would compile a program per shape

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config=None,
        num_labels: int | None = None,
        dtype=None,
        seed: int = 0,
        scan_layers: bool = True,
        output_loading_info: bool = False,
        config_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        """This family's model from a Hugging Face checkpoint, in eval mode; keywords as
        :meth:`crossjax.models.FlaxAutoModelForSequenceClassification.from_pretrained` takes them."""
        where = f"{cls.__name__}.from_pretrained"
        directory, config, dtype, ignore_mismatched_sizes = pretrained_options(
            where, name_or_path, config, num_labels, config_kwargs, dtype, kwargs
        )
        return cls.from_checkpoint(
            directory, config, dtype, seed, scan_layers, output_loading_info, ignore_mismatched_sizes
        )

    @classmethod
    def from_checkpoint(
        cls,
        directory: Path,
        config,
        dtype=None,
        seed: int = 0,
        scan_layers: bool = True,
        output_loading_info=False,
        ignore_mismatched_sizes: bool = False,
    ):
        """The model of a local checkpoint ``directory`` built from ``config`` as given (the model keeps this
        very object as its config), in eval mode. A head of another size than the checkpoint's is an error, as
        in transformers, unless ``ignore_mismatched_sizes`` (then it is initialised anew, with a warning)."""
        build = cls._builder(config, dtype, seed, scan_layers)
        abstract = nnx.eval_shape(build)
        tensors, source = read_state_dict(directory)
        placed, info = abstract.place_hf_state_dict(tensors, source=str(source))
        if info.mismatched_keys and labels_in_config_file(directory) == config.num_labels:
            # A head of another size than asked for is re-initialised; one that contradicts the checkpoint's own
            # config is a broken checkpoint (transformers refuses it), not a choice of the caller's
            mismatched = info.mismatched_keys
            shown = "; ".join(f"{k}: {tuple(a)} in the weights, {tuple(b)} by the config" for k, a, b in mismatched)
            raise CheckpointError(
                f"The weights in {source} do not fit the checkpoint's own config ({shown}). Pass num_labels= with "
                "ignore_mismatched_sizes=True to re-initialise the head at another size on purpose."
            )
        if info.mismatched_keys and not ignore_mismatched_sizes:
            shown = "; ".join(f"{k}: {tuple(a)} in the weights, {tuple(b)} asked" for k, a, b in info.mismatched_keys)
            raise CheckpointError(
                f"The checkpoint {directory} has a head of another size than the {config.num_labels} labels asked "
                f"for ({shown}); transformers and sentence-transformers refuse it too. Pass "
                "ignore_mismatched_sizes=True (a CrossEncoder: model_kwargs={'ignore_mismatched_sizes': True}; the "
                "crossjax command: --ignore-mismatched-sizes) to train a new head of that size, or leave num_labels "
                "out to use the checkpoint's."
            )
        whole = {path: value for path, value in placed.items() if not isinstance(value, dict)}
        # Only what the checkpoint lacks is initialised (XLA drops the other initialisers from the program).
        model = initialise(build, whole, abstract)
        model._assign({path: value for path, value in placed.items() if isinstance(value, dict)})
        model.eval()  # as transformers' from_pretrained: dropout off until a trainer asks for it
        _report(cls.architecture, str(directory), info)
        return (model, info.as_dict()) if output_loading_info else model

    def hf_linear_layers(self) -> list[str]:
        """The Hugging Face module paths of this model's ``nn.Linear`` layers (``bert.encoder.layer.0.output.dense``,
        ``classifier``), in the table's order: what sentence-transformers' ``keep_in_fp32_modules`` may name."""
        table = self.param_table(self.config)
        layers = []
        for path, var in flat_params(self).items():
            shape = var[...].shape
            for name, rule, _ in hf_slots_of(table, path, shape[0] if shape else 0):
                if rule.transpose and name.endswith(".weight"):
                    layers.append(name.removesuffix(".weight"))
        return layers

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Hugging Face's ``PreTrainedModel.num_parameters``: the parameters' element count, without the embedding
        tables (every ``nnx.Embed``, as Hugging Face leaves out every ``nn.Embedding``) if asked. Every parameter
        here is trainable."""
        del only_trainable
        table, count = self.param_table(self.config), 0
        for path, var in flat_params(self).items():
            shape = var[...].shape
            if exclude_embeddings and path.split(".")[-1] == "embedding":
                continue
            # a stacked array's slices that export to a tensor (ModernBERT's first layer has no attention norm)
            for _, _, layer in hf_slots_of(table, path, shape[0] if shape else 0):
                count += int(np.prod(shape if layer is None else shape[1:]))
        return count

    # ------------------------------------------------------------------------------------- export
    def hf_state_dict(self) -> dict[str, np.ndarray]:
        """Our parameters under Hugging Face PyTorch names and layouts, float32."""
        table = self.param_table(self.config)
        out: dict[str, np.ndarray] = {}
        for path, var in flat_params(self).items():
            value = np.asarray(var[...], dtype=np.float32)
            slots = hf_slots_of(table, path, value.shape[0] if value.ndim else 0)
            if not slots:  # a family whose table misses one of its own parameters is a bug, not user error
                raise RuntimeError(f"{type(self).__name__}: no Hugging Face name for parameter {path}")
            for name, rule, layer in slots:
                out[name] = np.ascontiguousarray(rule.to_hf(value if layer is None else value[layer]))
        return out

    def export_config(self) -> dict[str, Any]:
        config = self.config.to_dict()
        config["architectures"] = [self.architecture]
        num_labels = self.num_labels
        id2label = {int(k): v for k, v in (getattr(self.config, "id2label", None) or {}).items()}
        if len(id2label) != num_labels:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        config["id2label"] = {str(i): id2label[i] for i in range(num_labels)}
        config["label2id"] = {v: i for i, v in id2label.items()}
        config.pop("num_labels", None)  # derived from id2label by transformers
        config.pop("_name_or_path", None)
        config.pop("torch_dtype", None)
        config["dtype"] = "float32"
        return config

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        tokenizer=None,
        *,
        activation_fn: str | None = None,
        max_length: int | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        keep_in_fp32_modules: list[str] | None = None,
    ) -> Path:
        """Write a model that PyTorch transformers and sentence-transformers' CrossEncoder load as is.

        Files: ``config.json``, ``model.safetensors`` (Hugging Face names, float32), the tokenizer's files
        when given one (``model_max_length`` set to ``max_length``), and ``config_sentence_transformers.json``
        naming the activation as a dotted torch path (default: Sigmoid for one label, else Identity).
        Each file is replaced atomically; weight files of a previous model there are removed, other entries
        are left in place (see :func:`crossjax.models.export.write_model_directory`).
        """
        return export.write_model_directory(
            self,
            save_directory,
            tokenizer,
            activation_fn=activation_fn,
            max_length=max_length,
            prompts=prompts,
            default_prompt_name=default_prompt_name,
            keep_in_fp32_modules=keep_in_fp32_modules,
        )


def pair_attention_mask(segment_ids: jax.Array) -> jax.Array:
    """(G * R, T, T) attention mask of packed rows (``segment_ids`` (G, R, T), 0 = padding): each token sees
    only the real tokens of its own pair."""
    segments = segment_ids.reshape(-1, segment_ids.shape[-1])
    return (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)


def at_first_tokens(values: jax.Array, pair_row: jax.Array, pair_start: jax.Array) -> jax.Array:
    """``values`` (G, R, T, ...) at each pair slot's first token, row ``pair_row`` (G, P) and column
    ``pair_start`` (G, P): (G, P, ...). A group reads only its own rows, so nothing crosses devices."""
    return jax.vmap(lambda v, r, s: v[r, s])(values, pair_row, pair_start)


def first_tokens_pay(encoder, pairs: int, rows: int, length: int) -> bool:
    """Whether computing the last layer for a group's ``pairs`` first tokens only (keys and values still from
    all its ``rows x length`` tokens) takes fewer multiply-adds than computing it for every token.

    Why: the heads read one token a pair, so the rest of the last layer's output is thrown away: its query
    projection, attention output, feed-forward block and LayerNorms, about five sixths of the layer (14% of a
    6-layer MiniLM's forward and backward pass). The pairs' queries attend over the whole group's tokens (a
    (pairs x group tokens) mask keeps each inside its pair), work that grows with pairs x tokens: a group keeps
    the whole layer from about ``(hidden + intermediate) (1 - 1 / t) + length`` pairs on, ``t`` tokens a pair
    (~1,950 STS-B pairs for MiniLM, ~3,800 for BERT-base). Forward-pass counts, for a
    (hidden x intermediate) layer. The price is a second compiled layer body beside the scanned one (a BERT-base
    train step compiles in ~1.1 s more on a 2-core CPU, repaid within about five of its steps;
    ``benchmarks/RESULTS.md``, "Session 13").
    """
    if pairs <= 0:
        return False
    layers = encoder.layers if encoder.scan else encoder.layers[0]
    hidden, intermediate = layers.ffn_in.kernel.shape[-2:]
    tokens = rows * length
    full = tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * tokens * length * hidden
    selected = tokens * 2 * hidden * hidden + pairs * (2 * hidden * hidden + 2 * hidden * intermediate)
    return selected + 2 * pairs * tokens * hidden < full


def _first_tokens_layer(layer, x: jax.Array, *, segment_ids, pair_row, pair_start) -> jax.Array:
    """``layer``'s output (G, P, H) at the pairs' first tokens only, from its input ``x`` (G * R, T, H).

    Each group's rows are one context of R * T tokens; pair slot p's query (row ``pair_row``, column
    ``pair_start``) attends to the tokens of its own row and segment, the same keys as in the full layer."""
    groups, rows, length = segment_ids.shape
    queries = at_first_tokens(x.reshape(groups, rows, length, x.shape[-1]), pair_row, pair_start)  # (G, P, H)
    query_segments = at_first_tokens(segment_ids, pair_row, pair_start)  # (G, P)
    context = x.reshape(groups, rows * length, x.shape[-1])
    key_segments = segment_ids.reshape(groups, rows * length)
    key_rows = jnp.arange(rows * length) // length
    mask = (
        (key_rows[None, None, :] == pair_row[:, :, None])
        & (key_segments[:, None, :] == query_segments[:, :, None])
        & (key_segments[:, None, :] > 0)
    )
    return layer(queries, mask, context=context)


def initialise(
    build: Callable[[], nnx.Module], given: dict[str, np.ndarray] | None = None, abstract: nnx.Module | None = None
) -> nnx.Module:
    """``build()``'s module, its initialisers run as one compiled program. Run eagerly, every initialiser and
    RNG split is a small XLA program of its own: 47 compiles and 3.3 s for MiniLM on 2 cores. Parameters named
    in ``given`` (dotted paths, our layout and dtype) take those values instead, and XLA drops their
    initialisers. ``abstract`` is ``nnx.eval_shape(build)`` when the caller already has it."""
    given = given or {}
    graphdef, shapes = nnx.split(nnx.eval_shape(build) if abstract is None else abstract)
    flat = list(nnx.to_flat_state(shapes))
    names = [".".join(map(str, path)) for path, _ in flat]
    computed = [i for i, (path, var) in enumerate(flat) if not (isinstance(var, nnx.Param) and names[i] in given)]

    def init() -> list[jax.Array]:
        leaves = list(nnx.to_flat_state(nnx.split(build())[1]))
        return [leaves[i][1][...] for i in computed]

    values = dict(zip(computed, jax.jit(init)(), strict=True))
    leaves = [
        (path, var.replace(values[i] if i in values else jax.device_put(given[names[i]])))
        for i, (path, var) in enumerate(flat)
    ]
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _report(architecture: str, source: str, info: LoadingInfo) -> None:
    """Warn like transformers does about newly initialised, unused and re-shaped weights."""
    if info.unexpected_keys:
        logger.warning(
            "Some weights of the model checkpoint at %s were not used when initializing %s: %s",
            source,
            architecture,
            info.unexpected_keys,
        )
    if info.missing_keys:
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
            "initialized: %s\nYou should probably TRAIN this model on a down-stream task to be able to use "
            "it for predictions and inference.",
            architecture,
            source,
            info.missing_keys,
        )
    if info.mismatched_keys:
        details = "\n".join(
            f"- {k}: found shape {a} in the checkpoint and {b} in the model instantiated"
            for k, a, b in info.mismatched_keys
        )
        logger.warning(
            "Some weights of %s were not initialized from the model checkpoint at %s and are newly "
            "initialized because the shapes did not match (the checkpoint's classification head has a "
            "different num_labels than asked):\n%s\nYou should probably TRAIN this model on a down-stream "
            "task to be able to use it for predictions and inference.",
            architecture,
            source,
            details,
        )
