"""``CrossEncoder``: sentence-transformers' API over crossjax's models, data pipeline and trainer.

A script written for ``sentence_transformers.CrossEncoder`` (its legacy ``fit``) runs after changing the
imports. Differences are listed in the README ("Differences from sentence-transformers").
"""

from __future__ import annotations

import functools
import json
import logging
import operator
import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax import data as data_lib
from crossjax import losses, packing, parallel, training
from crossjax.losses.torch_compat import runs_on_torch, tensor_to_numpy
from crossjax.model_card import (
    CardRecorder,
    CrossEncoderModelCardData,
    generate_model_card,
    loaded_model_card,
    reused_model_card,
    write_model_card,
)
from crossjax.models.auto import load_config, model_class_for
from crossjax.models.base import HUB_DOWNLOAD_KWARGS, FlaxPreTrainedModel, compute_dtype_of, merged_keywords
from crossjax.models.checkpoints import CheckpointError, hub_commit, invalid_json, resolve_checkpoint_dir
from crossjax.models.export import ST_CONFIG
from crossjax.parallel import MeshPlan, devices_for, make_mesh, put_global
from crossjax.runtime import is_main_process, progress_bar
from crossjax.schedules import SCHEDULER_NAMES

logger = logging.getLogger("crossjax")

# The device names sentence-transformers < 4 took as CrossEncoder's fourth positional argument (now activation_fn)
_DEVICE_KINDS = frozenset({"cpu", "cuda", "gpu", "tpu", "mps", "xla", "npu", "hpu"})

# Up to this many pair slots a predict call plans ``batch_size`` slots, whatever its number of pairs, so calls of
# other sizes share compiled shapes (shapes are keyed by their slots). Beyond it, a call of fewer pairs gets
# slots for the pairs there are, rounded up to a power of two: a slot costs the head's work and memory whether a
# pair fills it or not, and ``batch_size=10**6`` for five pairs once took 2.9 GB.
SHARED_PREDICT_SLOTS = 1024
# At most this many compiled shapes per predict program (each holds an executable): beyond it, calls use the
# compiled shapes that hold their pairs, or the program forgets its shapes and compiles anew (a server whose
# calls vary without end; the persistent compilation cache makes a shape compiled before cheap to load again).
MAX_PREDICT_SHAPES = 32
# sentence-transformers' CrossEncoder.default_huggingface_organization: short names are looked up there first
DEFAULT_ORGANIZATION = "cross-encoder"


def _as_dtype(dtype) -> Any:
    """A CrossEncoder's compute dtype (:func:`compute_dtype_of`'s forms): float32 or bfloat16 only."""
    try:
        resolved = compute_dtype_of(dtype)
    except ValueError:
        resolved = None
    if resolved is None or jnp.dtype(resolved) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        float16 = resolved is not None and jnp.dtype(resolved) == jnp.float16
        hint = " (float16 is not a crossjax compute dtype: use bfloat16)" if float16 else ""
        raise ValueError(f"compute dtype must be float32 or bfloat16, got {dtype}{hint}")
    return resolved


# the JSON files of a saved tokenizer: one that does not parse fails inside transformers with json's bare message
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def _saved_st_config(directory: Path) -> dict[str, Any]:
    """config_sentence_transformers.json of a checkpoint (activation, prompts), or {} when absent/unreadable."""
    st_file = directory / ST_CONFIG
    if not st_file.is_file():
        return {}
    try:
        content = json.loads(st_file.read_text())
    except ValueError:
        logger.warning("%s is not valid JSON; ignoring it", st_file)
        return {}
    return content if isinstance(content, dict) else {}


def _is_cross_encoder_save(directory: Path, st_config: dict[str, Any]) -> bool:
    """Whether ``directory`` is a sentence-transformers CrossEncoder save (``modules.json`` and model type
    "CrossEncoder"; sentence-transformers reads a missing type as "SentenceTransformer")."""
    return (directory / "modules.json").is_file() and st_config.get("model_type") == "CrossEncoder"


_MODEL_ROOTS = ("model", "0.model", "0.auto_model")


def _check_module_paths(module_names: Any) -> None:
    if not isinstance(module_names, (list, tuple)) or any(not isinstance(name, str) for name in module_names):
        raise ValueError(f"keep_in_fp32_modules must be a list of module paths, got {module_names!r:.80}")


def check_keep_in_fp32(keep_in_fp32_modules: list[str] | None, compute_dtype) -> None:
    if keep_in_fp32_modules and jnp.dtype(compute_dtype) != jnp.float32:
        raise ValueError(
            f"keep_in_fp32_modules={keep_in_fp32_modules!r} (an argument, or the saved model's setting) with "
            f"compute dtype {jnp.dtype(compute_dtype).name} (asked for by the model or by training with bf16=True / "
            "use_amp=True): crossjax computes every layer in the compute dtype. "
            "Compute in float32 (then every module already does), or pass keep_in_fp32_modules=[] to compute "
            "the whole model in that dtype"
        )


def _fit_compute_dtype(use_amp: bool, compute_dtype, keep_in_fp32_modules: list[str]) -> jnp.dtype:
    """``fit``'s compute dtype: bfloat16 with ``use_amp`` (sentence-transformers' autocast), else float32, unless
    ``compute_dtype`` names one; an explicit dtype that contradicts ``use_amp=True`` is refused, not overridden."""
    if compute_dtype is None or (isinstance(compute_dtype, str) and compute_dtype == "auto"):
        dtype = _as_dtype("bfloat16" if use_amp else "float32")
    else:
        dtype = _as_dtype(compute_dtype)
        if use_amp and dtype != jnp.bfloat16:
            raise ValueError(
                f"fit(use_amp=True, compute_dtype={compute_dtype!r}) contradicts itself: use_amp trains in bfloat16. "
                "Pass one of them"
            )
    check_keep_in_fp32(keep_in_fp32_modules, dtype)
    return dtype


def _saved_pipeline(directory: Path) -> dict[str, Any]:
    """What a sentence-transformers 6 CrossEncoder save holds besides the transformer. Modules after it
    (``modules.json``) and text processing other than longest-first truncation (``sentence_bert_config.json``)
    would change its scores, and crossjax runs neither: refused by name rather than scored differently.
    Returns ``sentence_bert_config.json`` (its ``max_seq_length`` is the default ``max_length``)."""
    try:
        modules = json.loads((directory / "modules.json").read_text())
        transformer_config = directory / "sentence_bert_config.json"
        settings = json.loads(transformer_config.read_text()) if transformer_config.is_file() else {}
    except ValueError as e:
        raise ValueError(f"{directory}: a sentence-transformers file is not valid JSON: {e}") from None
    listed = modules if isinstance(modules, list) else [modules]
    extra = [m.get("type", m) if isinstance(m, dict) else m for m in listed if not isinstance(m, dict) or m.get("path")]
    if len(listed) != 1 or extra:
        raise ValueError(
            f"{directory / 'modules.json'} lists modules after the transformer ({extra or modules}): crossjax runs "
            "the transformer and its classification head only, so its scores would differ from "
            "sentence-transformers'. Fold them into the head, or score this model with sentence-transformers."
        )
    if not isinstance(settings, dict):
        raise ValueError(f"{directory / 'sentence_bert_config.json'} is not a JSON object")
    for key in ("tokenizer_args", "processor_kwargs", "config_args", "config_kwargs", "model_args", "model_kwargs"):
        if not isinstance(settings.get(key) or {}, dict):
            raise ValueError(f"{directory / 'sentence_bert_config.json'}: {key} must be a JSON object")
    model_settings = {**(settings.get("model_args") or {}), **(settings.get("model_kwargs") or {})}
    if model_settings:  # (the model's dtype and attention options: crossjax takes them as arguments only)
        raise ValueError(
            f"{directory / 'sentence_bert_config.json'} sets model_kwargs {model_settings!r}, which crossjax does not "
            "read from the file: remove them there (pass CrossEncoder(..., model_kwargs=...) instead)"
        )
    processing = {k: v for k, v in (settings.get("processing_kwargs") or {}).items() if v}
    text = dict(processing.pop("text", None) or {})
    text.pop("padding", None)  # padding never changes an encoder's scores
    if "max_length" in text:  # the tokenizer's limit, as sentence-transformers' own example sets it
        settings = {**settings, "max_seq_length": text.pop("max_length")}
    if text.pop("truncation", "longest_first") not in ("longest_first", True) or text or processing:
        raise ValueError(
            f"{directory / 'sentence_bert_config.json'} sets processing_kwargs "
            f"{settings['processing_kwargs']!r}: crossjax tokenizes pairs with longest-first truncation only, so "
            "its scores would differ from sentence-transformers'"
        )
    return settings


def _lowercase_first(tokenizer: Any) -> None:
    """A Lowercase step ahead of the fast tokenizer's normalizer (where it has none), as sentence-transformers'
    Transformer applies ``do_lower_case`` of its ``sentence_bert_config.json``."""
    from tokenizers.normalizers import Lowercase
    from tokenizers.normalizers import Sequence as NormalizerSequence

    backend = tokenizer.backend_tokenizer
    normalizer = backend.normalizer
    if isinstance(normalizer, Lowercase) or (
        isinstance(normalizer, NormalizerSequence) and any(isinstance(n, Lowercase) for n in normalizer)
    ):
        return
    steps = [Lowercase()]
    if isinstance(normalizer, NormalizerSequence):
        steps += list(normalizer)
    elif normalizer is not None:
        steps.append(normalizer)
    backend.normalizer = NormalizerSequence(steps)


def _saved_activations(st_config: dict[str, Any], config, cross_encoder_save: bool) -> list[str]:
    """The activations a sentence-transformers CrossEncoder saved, in the order it tries them: its own file's
    (v6, read only in a CrossEncoder save), then config.json's (v4+ key, else the pre-v4 one)."""
    paths = [st_config["activation_fn"]] if cross_encoder_save and st_config.get("activation_fn") else []
    st = getattr(config, "sentence_transformers", None)
    if isinstance(st, dict) and st.get("activation_fn"):
        paths.append(st["activation_fn"])
    elif getattr(config, "sbert_ce_default_activation_function", None):
        paths.append(config.sbert_ce_default_activation_function)
    return paths


def _hub_options(own: dict[str, Any], keyword_dicts: dict[str, dict | None]) -> tuple[dict, list[dict]]:
    """Where the checkpoint comes from: CrossEncoder's own hub arguments, and the download options
    sentence-transformers also reads from ``model_kwargs`` / ``config_kwargs`` / ``tokenizer_kwargs``
    (``revision``, ``subfolder``, ``cache_dir``, ...), which must agree: crossjax reads the model, its config and
    its tokenizer from one folder. Returns the options and each dict without them."""
    options = {k: v for k, v in own.items() if v not in (None, False, "")}
    source = dict.fromkeys(options, "CrossEncoder's argument")
    rest = []
    for where, given in keyword_dicts.items():
        given = dict(given or {})
        for key in HUB_DOWNLOAD_KWARGS:
            value = given.pop(key, None)
            if value in (None, False, ""):
                continue
            if key in options and options[key] != value:
                raise ValueError(
                    f"{where} {key}={value!r} and {source[key]} {key}={options[key]!r} disagree: crossjax reads "
                    "the model, its config and its tokenizer from one checkpoint folder"
                )
            options[key], source[key] = value, where
        rest.append(given)
    return options, rest


def _resolve_model(name: str, hub: dict[str, Any]) -> tuple[str | None, Path]:
    """(the hub id, or None for a local folder; the folder). A short name that is not a local folder is first
    looked up in the ``cross-encoder`` organisation, as sentence-transformers does
    (``CrossEncoder("ms-marco-MiniLM-L6-v2")``), then as it is."""
    if not str(name).strip():  # Path("") is the working directory
        raise ValueError(f"model_name_or_path is {name!r}: name a model folder or a hub id")
    if Path(name).expanduser().exists():
        return None, resolve_checkpoint_dir(name, **hub)
    if "/" not in name and not name.startswith((".", "~")):
        try:
            return f"{DEFAULT_ORGANIZATION}/{name}", resolve_checkpoint_dir(f"{DEFAULT_ORGANIZATION}/{name}", **hub)
        except CheckpointError as first:
            try:
                return name, resolve_checkpoint_dir(name, **hub)
            except CheckpointError as second:
                raise CheckpointError(f"{first}; and as {name!r} itself: {second}") from second
    return name, resolve_checkpoint_dir(name, **hub)


def _compute_dtype_from_model_kwargs(model_kwargs: dict | None, compute_dtype: Any) -> Any:
    """sentence-transformers' ``model_kwargs``: only the dtype has a meaning in JAX (the compute dtype)."""
    model_kwargs = dict(model_kwargs or {})
    if "torch_dtype" in model_kwargs and "dtype" in model_kwargs:
        raise ValueError("model_kwargs has both 'torch_dtype' and 'dtype'; pass one")
    dtype = model_kwargs.pop("dtype", model_kwargs.pop("torch_dtype", None))
    for name in ("attn_implementation", "low_cpu_mem_usage"):  # PyTorch's speed options: crossjax has its own
        if name in model_kwargs:
            value = model_kwargs.pop(name)
            logger.info("model_kwargs %s=%r: crossjax runs its own attention in JAX; ignored", name, value)
    if model_kwargs:
        raise ValueError(
            f"model_kwargs {sorted(model_kwargs)} have no meaning in crossjax (PyTorch model loading options); "
            "only 'dtype' / 'torch_dtype' is used, as the compute dtype"
        )
    if dtype is None or (isinstance(dtype, str) and dtype == "auto"):
        return compute_dtype
    try:
        resolved = _as_dtype(dtype)
    except ValueError as e:
        raise ValueError(f"model_kwargs dtype: {e} (parameters stay float32)") from None
    if compute_dtype is not None and _as_dtype(compute_dtype) != resolved:
        raise ValueError(f"compute_dtype={compute_dtype!r} contradicts model_kwargs dtype {dtype!r}")
    return resolved


def _accepts_renamed_kwargs(renamed: dict[str, str], dropped: tuple[str, ...] = ()) -> Callable:
    """sentence-transformers' deprecated keyword names (``renamed``: old -> new), taken as the new ones with a
    warning, and keywords it now ignores (``dropped``), so that older scripts run as they do there. A value
    given under both names must be the same."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            where = method.__name__.replace("__init__", "CrossEncoder")
            for old, new in renamed.items():
                if old not in kwargs:
                    continue
                value = kwargs.pop(old)
                if new in kwargs and not _same(kwargs[new], value):
                    raise TypeError(
                        f"{where}() got both {old!r} (the deprecated name) and {new!r} with other values; pass {new}"
                    )
                logger.warning("%s(%s=...) is a deprecated name; use %s=...", where, old, new)
                kwargs[new] = value
            for name in dropped:
                if name in kwargs:
                    kwargs.pop(name)
                    logger.warning("%s(%s=...) has no effect (as in sentence-transformers 6)", where, name)
            return method(self, *args, **kwargs)

        return wrapper

    return decorate


def _same(a: Any, b: Any) -> bool:
    try:
        return a is b or bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared (arrays) count as different
        return False


_RENAMED_INIT_KWARGS = {
    "model_name": "model_name_or_path",
    "automodel_args": "model_kwargs",
    "tokenizer_args": "tokenizer_kwargs",
    "config_args": "config_kwargs",
    "cache_dir": "cache_folder",
    "default_activation_function": "activation_fn",
}


class CrossEncoder:
    """A cross-encoder: reads a sentence pair together and outputs a score (``num_labels=1``) or logits.

    Args mirror ``sentence_transformers.CrossEncoder``: ``model_name_or_path`` is a local Hugging Face
    directory or a hub id; ``num_labels`` None takes the checkpoint's when it has a sequence-classification
    head, else 1; ``max_length`` truncates pairs (default: the model's position limit);
    ``activation_fn`` is applied by ``predict`` (default: the saved one, else Sigmoid for one label,
    Identity otherwise). JAX extras: ``compute_dtype`` ("float32" or "bfloat16", parameters always stay
    float32), ``seed`` (head initialisation and dropout), ``sharding`` ("replicated" or "fsdp"),
    ``max_shapes`` (at most how many static shapes packed batches take per fit or predict call, i.e. programs
    compiled; fewer where one more would save less compute than its compile costs; see
    :mod:`crossjax.packing`) and ``scan_layers`` (True, the default: stacked layers under ``nnx.scan``,
    compiled once whatever the depth; False: unrolled. On a CPU the unrolled MiniLM trained
    10-30% faster per step but predicted ~30% slower and compiled longer; ``benchmarks/RESULTS.md``).
    ``classifier_dropout`` (sentence-transformers < 4's argument) sets the head's dropout under the family's config
    key (``classifier_dropout``; DistilBERT's ``seq_classif_dropout``, DeBERTa-v2's ``cls_dropout``).
    ``model_card_data`` (a :class:`~crossjax.model_card.CrossEncoderModelCardData`, as in sentence-transformers)
    sets what the model card written by ``save`` says (language, license, model_id, datasets, base_model ...).
    """

    # sentence-transformers' class attributes: short hub names are looked up in this organisation first
    default_huggingface_organization: str | None = DEFAULT_ORGANIZATION
    model_type: str = "CrossEncoder"

    @_accepts_renamed_kwargs(_RENAMED_INIT_KWARGS)
    def __init__(
        self,
        model_name_or_path: str | os.PathLike | None = None,
        num_labels: int | None = None,
        max_length: int | None = None,
        activation_fn: Callable | str | None = None,
        device: str | jax.Device | list | jax.sharding.Mesh | None = None,
        *,
        tokenizer_kwargs: dict | None = None,
        config_kwargs: dict | None = None,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        cache_folder: str | None = None,
        trust_remote_code: bool = False,
        revision: str | None = None,
        local_files_only: bool = False,
        token: str | bool | None = None,
        model_kwargs: dict | None = None,
        processor_kwargs: dict | None = None,
        backend: str = "torch",
        model_card_data: CrossEncoderModelCardData | None = None,
        compute_dtype: str | Any | None = None,
        seed: int = 0,
        sharding: str = "replicated",
        max_shapes: int = 2,
        scan_layers: bool = True,
        classifier_dropout: float | None = None,
        keep_in_fp32_modules: list[str] | None = None,
    ) -> None:
        # sentence-transformers' own arguments, checked first: none is silently ignored.
        if model_name_or_path is None:
            raise TypeError("CrossEncoder() needs model_name_or_path (a Hugging Face directory or hub id)")
        if isinstance(activation_fn, str) and activation_fn.split(":")[0].lower() in _DEVICE_KINDS:
            raise ValueError(
                f"activation_fn={activation_fn!r} is a device: the fourth positional argument is activation_fn, as "
                "in sentence-transformers 4+ (sentence-transformers < 4 took device there): pass "
                f"device={activation_fn!r} by name"
            )
        if type(device).__module__.startswith("torch"):  # torch.device("cuda:0"), as sentence-transformers takes
            device = str(device)
        device = _jax_devices_of(device)  # a JAX user's device, devices or Mesh: the devices the mesh spans
        if device is not None and not isinstance(device, (str, list)):
            raise TypeError(
                f"device must be a string such as 'cpu' or 'cuda' (or JAX devices: a jax.Device, a list of them or a "
                f"jax.sharding.Mesh), got {device!r} (the fifth positional argument is device, as in "
                "sentence-transformers 6: pass tokenizer_kwargs=... and config_kwargs=... by name)"
            )
        if num_labels is not None and (
            isinstance(num_labels, bool) or not isinstance(num_labels, (int, np.integer)) or num_labels < 1
        ):
            raise ValueError(f"num_labels must be an integer >= 1 (or None), got {num_labels!r}")
        # trust_remote_code=True is taken: a checkpoint that maps its classes to its own code (auto_map) is refused
        # by name when its config is read (that code is PyTorch's), one without needs no code of its own
        if backend != "torch":
            raise ValueError(
                f"backend={backend!r}: crossjax always runs the model in JAX (backend='torch' is accepted as the "
                "default spelling). To serve with ONNX Runtime, write the graph with crossjax.onnx.export_onnx(path) "
                "(or `crossjax export --model PATH --onnx`) and run it with onnxruntime (README, \"ONNX\"), or load "
                "the folder with sentence_transformers.CrossEncoder(path, backend='onnx')."
            )
        for name, given in (("tokenizer_kwargs", tokenizer_kwargs), ("processor_kwargs", processor_kwargs),
                            ("model_kwargs", model_kwargs), ("config_kwargs", config_kwargs)):  # fmt: skip
            if given is not None and not isinstance(given, Mapping):
                raise TypeError(f"{name} must be a dict of keyword arguments, got {given!r:.60}")
        tokenizer_kwargs = merged_keywords("tokenizer_kwargs", tokenizer_kwargs, "processor_kwargs", processor_kwargs)
        hub, (model_kwargs, config_kwargs, tokenizer_kwargs) = _hub_options(
            dict(cache_dir=cache_folder, revision=revision, token=token, local_files_only=local_files_only),
            {"model_kwargs": model_kwargs, "config_kwargs": config_kwargs, "tokenizer_kwargs": tokenizer_kwargs},
        )
        if "cache_dir" not in hub and os.environ.get("SENTENCE_TRANSFORMERS_HOME"):  # sentence-transformers' default
            hub["cache_dir"] = os.environ["SENTENCE_TRANSFORMERS_HOME"]
        model_kwargs = dict(model_kwargs or {})
        ignore_mismatched_sizes = bool(model_kwargs.pop("ignore_mismatched_sizes", False))
        compute_dtype = _compute_dtype_from_model_kwargs(model_kwargs, compute_dtype)
        # The mesh first: with CROSSJAX_DISTRIBUTED=1 it joins the multi-process run before JAX starts a backend.
        self.mesh_plan: MeshPlan = make_mesh(sharding, devices=device)
        hub_id, directory = _resolve_model(str(model_name_or_path), hub)
        saved_st_config = _saved_st_config(directory)
        cross_encoder_save = _is_cross_encoder_save(directory, saved_st_config)
        transformer_settings = _saved_pipeline(directory) if cross_encoder_save else {}
        # The file's tokenizer and config arguments (sentence-transformers' older names too), under the caller's
        tokenizer_kwargs = {
            **(transformer_settings.get("tokenizer_args") or {}),
            **(transformer_settings.get("processor_kwargs") or {}),
            **(tokenizer_kwargs or {}),
        }
        config_kwargs = {
            **(transformer_settings.get("config_args") or {}),
            **(transformer_settings.get("config_kwargs") or {}),
            **(config_kwargs or {}),
        }
        if keep_in_fp32_modules is None and cross_encoder_save:
            keep_in_fp32_modules = saved_st_config.get("keep_in_fp32_modules") or None
        if keep_in_fp32_modules is not None:
            _check_module_paths(keep_in_fp32_modules)
        check_keep_in_fp32(keep_in_fp32_modules, _as_dtype(compute_dtype or "float32"))
        config = load_config(directory, **config_kwargs)
        if classifier_dropout is not None:  # sentence-transformers < 4's argument, under the family's own key
            setattr(config, model_class_for(config).classifier_dropout_key, float(classifier_dropout))
        classifier_trained = any(
            a.endswith("ForSequenceClassification") for a in (config.architectures or [])
        )
        if num_labels is None and not classifier_trained and "num_labels" not in config_kwargs:
            num_labels = 1  # a base model gets one output, unless config_kwargs asks for more (as in ST 6)
        if num_labels is not None:
            config.num_labels = int(num_labels)  # transformers' setter also resizes id2label / label2id
        self.model_name_or_path = str(model_name_or_path)
        self.compute_dtype = _as_dtype(compute_dtype or "float32")
        self.seed = data_lib.checked_seed(seed, "CrossEncoder seed")
        self.model = model_class_for(config).from_checkpoint(
            directory, config, jnp.float32, self.seed, bool(scan_layers), False, ignore_mismatched_sizes
        )
        self.model.eval()
        self.training = False  # the mode torch code reads (train() / eval() set it); predict never uses dropout
        self.keep_in_fp32_modules: list[str] = []
        self.set_keep_in_fp32_modules(keep_in_fp32_modules or [])
        self.tokenizer = self._load_tokenizer(directory, tokenizer_kwargs or {})
        if transformer_settings.get("do_lower_case"):  # sentence-transformers lowercases the texts then
            _lowercase_first(self.tokenizer)
        saved_limit = transformer_settings.get("max_seq_length")
        if max_length is None and saved_limit is not None and "model_max_length" not in (tokenizer_kwargs or {}):
            # sentence-transformers' Transformer setting, unless the tokenizer's own is given
            max_length = self._checked_max_length(saved_limit, "sentence_bert_config.json's max_seq_length")
        asked = (tokenizer_kwargs or {}).get("model_max_length")
        explicit = isinstance(asked, (int, np.integer)) and not isinstance(asked, bool) and asked < 10**6
        if max_length is None and self.model.position_limit is None and explicit:
            # sentence-transformers takes tokenizer_kwargs' model_max_length as is; nothing caps it in a family
            # without a position table (relative or rotary positions)
            max_length = asked
        self.max_length = self._resolve_max_length(max_length)  # kept in tokenizer.model_max_length
        if max_length is None and isinstance(asked, int) and asked > self.max_length:
            there = (
                f"keeps {asked} and fails on a longer pair"
                if self.model.position_limit is not None
                else "does not truncate pairs then"
            )
            logger.warning(
                "tokenizer_kwargs model_max_length=%d is beyond the model's position limit: pairs are truncated at %d "
                "(sentence-transformers %s)", asked, self.max_length, there
            )
        if isinstance(max_shapes, bool) or not isinstance(max_shapes, int) or max_shapes < 1:
            raise ValueError(f"max_shapes must be an integer >= 1, got {max_shapes!r}")
        self.max_shapes = max_shapes
        # A saved cross-encoder's card, kept by save() until this model trains (as sentence-transformers does)
        self._loaded_card = (loaded_model_card(directory), directory) if cross_encoder_save else None
        saved = _saved_activations(saved_st_config, config, cross_encoder_save)
        # Prompts are a cross-encoder save's own; another model type's (a bi-encoder's query prompt) would
        # prepend text to every pair, so sentence-transformers 6 ignores them when converting, and so do we.
        own = saved_st_config if cross_encoder_save else {}
        saved_prompts = own.get("prompts") or {}
        # as sentence-transformers: a prompt given as None takes the saved one of that name
        given = {name: saved_prompts.get(name, "") if text is None else text for name, text in (prompts or {}).items()}
        self.prompts: dict[str, str] = {**saved_prompts, **given}
        self.default_prompt_name = (
            default_prompt_name if default_prompt_name is not None else own.get("default_prompt_name")
        )
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(
                f"default_prompt_name={self.default_prompt_name!r} is not among the prompts {sorted(self.prompts)}"
            )
        if activation_fn is not None:
            self.activation_fn = activation_fn
        else:
            default = losses.sigmoid if self.num_labels == 1 else losses.identity
            self.activation_fn = _activation_or_default(saved, default)
        # compute dtype name -> (eval-mode graph, output sharding, its predict program)
        self._predict_programs = training.HeldPrograms()
        self._arrays_guard = training.ArraysGuard()  # predict/save from other threads while fit trains
        self.model_card_data = CrossEncoderModelCardData.coerce(model_card_data)
        if self.model_card_data.base_model is None and hub_id is not None:
            self.model_card_data.base_model = hub_id
            # as sentence-transformers: the revision asked for, else the commit the id resolved to
            asked = hub.get("revision")
            self.model_card_data.base_model_revision = asked if asked not in (None, "main") else hub_commit(directory)
        self.compilations = {"train": 0, "predict": 0}
        self._parameters_not_finite: str | None = None  # set when a run's update overflowed
        self.training_history: list[dict[str, float]] = []
        self.best_score: float | None = None
        self._place_parameters()

    # ------------------------------------------------------------------------------------------ set-up
    def _load_tokenizer(self, directory: Path, tokenizer_kwargs: dict):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), **tokenizer_kwargs)
        except ValueError as error:  # json's JSONDecodeError among them: transformers names no file
            files = [directory / name for name in TOKENIZER_JSON_FILES if (directory / name).is_file()]
            broken = [message for message in map(invalid_json, files) if message is not None]
            if not broken:
                raise
            raise ValueError(f"{directory}: its tokenizer cannot be read, {'; '.join(broken)}") from error
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{directory}: crossjax needs a fast (Rust) tokenizer; this checkpoint only has a slow one. "
                "Convert it with `AutoTokenizer.from_pretrained(..., use_fast=True).save_pretrained(...)`."
            )
        if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
            # transformers 5 builds an empty tokenizer from config.json alone: every word would be [UNK] and
            # every pair would get a plausible score (sentence-transformers scores them so, without a word)
            raise ValueError(
                f"{directory}: its tokenizer has no vocabulary (only {len(tokenizer)} special tokens), so every word "
                "would be read as unknown: the folder holds no tokenizer files (tokenizer.json, vocab.txt, ...). "
                "Save the model with its tokenizer (CrossEncoder.save, or model.save_pretrained(path, tokenizer)) "
                "or copy the base model's tokenizer files into the folder."
            )
        return tokenizer

    def _resolve_max_length(self, max_length: int | None) -> int:
        """``max_length``, or by default the tokenizer's ``model_max_length`` capped at the position limit, or at
        ``max_position_embeddings`` for a family without a position table (as sentence-transformers caps it)."""
        if max_length is None:
            tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
            limit = self.model.position_limit
            if limit is None:
                limit = int(getattr(self.config, "max_position_embeddings", None) or 512)
            max_length = min(limit, tokenizer_max) if tokenizer_max and tokenizer_max < 10**6 else limit
        return self._checked_max_length(max_length, "max_length")

    def _checked_max_length(self, value: Any, name: str) -> int:
        """A pair's token limit must leave room for its special tokens plus one text token (below that the
        tokenizer cannot truncate, and a long pair would run past the position table) and stay within the
        model's absolute position table, where it has one."""
        if isinstance(value, float) and value.is_integer():  # 512.0 from a tokenizer config
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        low = self.tokenizer.num_special_tokens_to_add(pair=True) + 1
        high = self.model.position_limit
        if value < low or (high is not None and value > high):
            within = f"between {low}" if high is not None else f"at least {low}"
            limit = f" and the model's position limit {high}" if high is not None else ""
            raise ValueError(
                f"{name}={value} must be {within} (a pair's {low - 1} special tokens plus one text token){limit}"
            )
        return int(value)

    @property
    def max_length(self) -> int:
        """The pairs' token limit (truncation ``longest_first``). It lives in ``tokenizer.model_max_length``,
        as in sentence-transformers, so setting either one (or ``max_seq_length``) changes it; each use checks
        it."""
        return self._checked_max_length(self.tokenizer.model_max_length, "max_length (tokenizer.model_max_length)")

    @max_length.setter
    def max_length(self, value: int) -> None:
        self.tokenizer.model_max_length = self._checked_max_length(value, "max_length")

    max_seq_length = max_length  # sentence-transformers 6's name

    @property
    def activation_fn(self) -> Callable:
        """Applied to the logits by ``predict``: a name, a torch activation module or function, or a JAX
        callable (see :func:`crossjax.losses.resolve_activation`); ``save`` writes its torch class."""
        return self._activation_fn

    @activation_fn.setter
    def activation_fn(self, value: Callable | str) -> None:
        self._activation_fn = losses.resolve_scoring_activation(value)

    @property
    def default_activation_function(self) -> Callable:
        """sentence-transformers < 4's name of :attr:`activation_fn`."""
        return self.activation_fn

    @property
    def model(self) -> FlaxPreTrainedModel:
        """The crossjax model scoring the pairs (``model.model`` in sentence-transformers: a transformers model)."""
        return self.__dict__["model"]

    @model.setter
    def model(self, model: FlaxPreTrainedModel) -> None:
        """A model assigned after loading (one a user trained in JAX, or loaded in another layout) is scored by
        programs built for it: the compiled predict programs of the one before are dropped (their graph would not
        fit its parameters) and its parameters go onto this model's mesh. Its activation stays, as in
        sentence-transformers."""
        if not isinstance(model, FlaxPreTrainedModel):
            raise TypeError(
                "CrossEncoder.model takes a crossjax model (crossjax.models.FlaxAutoModelForSequenceClassification."
                f"from_pretrained(...)), got {type(model).__module__}.{type(model).__qualname__}"
            )
        self.__dict__["model"] = model
        if "mesh_plan" in self.__dict__ and "_predict_programs" in self.__dict__:  # not during __init__
            self._predict_programs = training.HeldPrograms()
            self._place_parameters()

    def _place_parameters(self) -> None:
        """Put the parameters on the mesh (replicated, or sharded under fsdp) once, not per call. In a
        multi-process run each process fills its own devices from its own copy, so the copies must be equal: one
        all-gather of a digest says so (different ones would train and score the replicas apart silently)."""
        params = nnx.state(self.model, nnx.Param)
        multi_process = jax.process_count() > 1  # (the digest reads every parameter: not for one process)
        differing = parallel.processes_differing([parallel.local_values_digest(params)])[0] if multi_process else []
        if differing:
            raise ValueError(
                f"the {jax.process_count()} processes of this run loaded different weights for "
                f"{self.model_name_or_path}: process(es) {differing} differ from process 0. Every process must load "
                "the same checkpoint (a hub revision that moved between the workers' downloads, or a local folder "
                "that differs between them?)"
            )
        placed = put_global(params, self.mesh_plan.state_shardings(params))
        nnx.update(self.model, placed)

    @property
    def config(self) -> Any:
        """The model's transformers config, which ``save`` writes: an edit (``config.id2label = ...``) and a
        config assigned here both reach the export, as in sentence-transformers."""
        return self.model.config

    @config.setter
    def config(self, config: Any) -> None:
        current = self.model.config
        for name in ("model_type", "num_labels", "hidden_size", "num_hidden_layers"):
            if getattr(config, name, None) != getattr(current, name, None):
                raise ValueError(
                    f"CrossEncoder.config: the new config's {name} is {getattr(config, name, None)!r}, the model's "
                    f"{getattr(current, name, None)!r}; a config can relabel the model, not reshape it (load the "
                    "checkpoint with the config instead: CrossEncoder(path, config_kwargs=...))"
                )
        self.model.config = config

    @property
    def num_labels(self) -> int:
        return self.model.num_labels

    @property
    def _first_device(self) -> Any:
        """The model's first device of this process (another process's device cannot take data from here)."""
        return next(d for d in self.mesh_plan.mesh.devices.flat if d.process_index == jax.process_index())

    @property
    def processor(self) -> Any:
        """sentence-transformers 6's name for the tokenizer."""
        return self.tokenizer

    @processor.setter
    def processor(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def get_backend(self) -> str:
        """``"torch"``: the ``backend`` argument's only value here (the model itself always runs in JAX)."""
        return "torch"

    @property
    def device(self) -> str:
        """The platform the model runs on, in ``CrossEncoder(device=...)``'s words ("cpu", "cuda", "tpu")."""
        platform = self.mesh_plan.mesh.devices.flat[0].platform
        return "cuda" if platform == "gpu" else platform

    # ------------------------------------------------------------------------------------------ predict
    def _predict_program(self, dtype) -> training.StepProgram:
        """The jitted predict step, shared by every CrossEncoder of the process with the same model class,
        config, compute dtype and mesh (see :func:`crossjax.training.predict_program`)."""
        key = jnp.dtype(dtype).name
        held = self._predict_programs.get(key)
        if held is None or held[1] != self.mesh_plan.replicated:
            graphdef = held[0] if held is not None else training.graphdef_with_dtype(self.model, dtype, train=False)
            program, _ = training.predict_program(graphdef, self.mesh_plan)
            self._predict_programs[key] = held = (graphdef, self.mesh_plan.replicated, program)
        return held[2]

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__dict__.pop("_predict_graphdefs", None)  # a pickle of an older crossjax
        self.__dict__.setdefault("_predict_programs", training.HeldPrograms())
        self.__dict__.setdefault("_arrays_guard", training.ArraysGuard())

    def _logits(
        self, texts_a: list[str], texts_b: list[str], batch_size: int, show_progress_bar: bool | None, dtype=None
    ) -> np.ndarray:
        """Logits in input order, computed on packed batches (at most ``max_shapes`` compiled shapes a call). In a
        multi-process run every process must score the same pairs (each computes its share of every batch): one
        all-gather of a digest of the call checks it."""
        differing = []
        if jax.process_count() > 1:  # (the digest reads every text: not for one process)
            differing = parallel.processes_differing([_call_digest(texts_a, texts_b, batch_size, dtype)])[0]
        if differing:
            raise ValueError(
                f"the {jax.process_count()} processes of this run called predict (or an evaluator) with different "
                f"pairs or settings: process(es) {differing} differ from process 0. Every process scores its share of "
                "each batch, so every process must pass the same pairs, batch size and dtype"
            )
        limits = data_lib.token_limits(self.config)
        tokenized = data_lib.tokenize_pairs(self.tokenizer, texts_a, texts_b, self.max_length, limits=limits)
        shards = self.mesh_plan.data_shards  # a multiple of the process count
        # A call's pair slots: ``batch_size``, capped beyond SHARED_PREDICT_SLOTS at the pairs there are
        rows = min(int(batch_size), max(SHARED_PREDICT_SLOTS, 1 << max(0, len(texts_a) - 1).bit_length()))
        rows = -(-rows // shards) * shards  # round up so the batch splits evenly over the data shards
        # Stratified chunks: the pairs sorted by length are dealt round-robin, so every chunk holds a similar
        # mix of lengths and packs to (nearly) the same shape.
        order = np.argsort(-tokenized.lengths, kind="stable")
        count = -(-len(order) // rows)
        chunks = [order[c::count] for c in range(count)]
        dealt = [packing.deal_into_groups(chunk, tokenized.lengths, shards) for chunk in chunks]
        group_lengths = [[tokenized.lengths[g] for g in groups] for groups in dealt]
        width = packing.model_width(self.config)
        program = self._predict_program(dtype or self.compute_dtype)
        # Calls of other pairs (another query's candidates) share compiled shapes where that is cheaper than
        # compiling new ones; the price of a compile is what this program's earlier calls measured.
        plan = packing.plan_calls_sharing_shapes(
            group_lengths, shards, rows // shards, width, self.max_shapes, program.counter.shapes, program.economy
        )
        plan, forget = packing.within_shape_cap(
            plan, group_lengths, program.counter.shapes, width, MAX_PREDICT_SHAPES
        )
        if forget:  # the cap's compiled shapes hold none of this call's steps: start again from none
            program.forget_shapes()
        traced_before = len(program.counter.shapes_here())
        out = np.zeros((len(texts_a), self.num_labels), dtype=np.float32)
        pending = []
        compute = 0.0
        started = time.perf_counter()
        with training.CompileMonitor() as compiling:
            with self._arrays_guard.reading("predict"):  # a train step of another thread waits for the dispatch
                params, rest = nnx.state(self.model, nnx.Param), nnx.state(self.model, nnx.Not(nnx.Param))
                bar = progress_bar(range(len(chunks)), enabled=show_progress_bar, desc="Batches")
                for i in bar:
                    batch = packing.pack(tokenized, chunks[i], None, plan, self._pad_id, dealt[i])
                    compute += packing.step_cost(*batch.input_ids.shape[1:], width)
                    logits = program.fn(params, rest, training.batch_to_global(batch, self.mesh_plan))
                    pending.append((batch.indices.reshape(-1), logits))
            for slots, logits in pending:
                real = slots >= 0
                out[slots[real]] = np.asarray(logits)[real]
        traced = len(program.counter.shapes_here()) - traced_before
        if jax.process_count() == 1:  # timings differ between processes, and all must plan the same shapes
            program.economy.record(compute, time.perf_counter() - started, traced, compiling.seconds)
        # The programs this model's predict calls traced (one that another CrossEncoder traced is not counted).
        self.compilations["predict"] += traced
        return out

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else (self.config.pad_token_id or 0))

    @_accepts_renamed_kwargs({"sentences": "inputs", "activation_fct": "activation_fn"}, dropped=("num_workers",))
    def predict(
        self,
        inputs: list[tuple[str, str]] | list[list[str]] | tuple[str, str] | None = None,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | str | None = None,
        apply_softmax: bool = False,
        convert_to_numpy: bool = True,
        convert_to_tensor: bool = False,
        device: str | None = None,
        pool: Any = None,
        chunk_size: int | None = None,
    ):
        """Scores for sentence pairs, in input order: a 1-D array for one label, (n, num_labels) otherwise.

        A single pair ``(a, b)`` gives a single score (or one row), as in sentence-transformers. The pairs
        come as the first argument (legacy ``sentences``) or as ``inputs=`` (sentence-transformers 6).
        ``prompt`` (or ``prompt_name``, a key of ``self.prompts``; default ``default_prompt_name``) is
        prepended to the first text of every pair, as sentence-transformers 6 does. ``convert_to_tensor``
        returns a JAX array instead of numpy. ``device``/``pool``/``chunk_size`` (sentence-transformers'
        multi-process inference) have no JAX meaning: the model runs on the mesh chosen at construction.
        """
        if inputs is None:
            raise TypeError("predict() missing the pairs to score ('inputs')")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if device is not None or pool is not None or chunk_size is not None:
            raise ValueError(
                "predict(device=/pool=/chunk_size=) are sentence-transformers' multi-process options; crossjax "
                "runs on the devices of its mesh: choose them with CrossEncoder(..., device=...)"
            )
        single, texts_a, texts_b = _pair_texts(inputs)
        if not texts_a:
            empty = np.zeros((0,) if self.num_labels == 1 else (0, self.num_labels), dtype=np.float32)
            return jax.device_put(empty, self._first_device) if convert_to_tensor else empty if convert_to_numpy else []
        prompt = self._resolve_prompt(prompt, prompt_name)
        if prompt:
            texts_a = [prompt + a for a in texts_a]
        if self._parameters_not_finite:
            logger.warning("predict: this model's parameters are not finite since an earlier run's update overflowed")
        # Each distinct pair is scored once: a copy would otherwise land elsewhere in a packed row and differ in
        # the last bit, breaking the ties that ranking metrics (average precision) treat as one threshold.
        first_seen: dict[tuple[str, str], int] = {}
        where = np.fromiter(
            (first_seen.setdefault(pair, len(first_seen)) for pair in zip(texts_a, texts_b, strict=True)),
            dtype=np.int64,
            count=len(texts_a),
        )
        unique_a, unique_b = ([p[i] for p in first_seen] for i in (0, 1))
        logits = self._logits(unique_a, unique_b, batch_size, show_progress_bar)[where]
        activation = self.activation_fn if activation_fn is None else losses.resolve_scoring_activation(activation_fn)
        scores = _rowwise(activation, logits, rowwise=losses.is_known_activation(activation))
        if self.num_labels == 1 and scores.ndim > 1 and scores.shape[-1] == 1:
            scores = scores[:, 0]  # an activation may already have dropped the label axis
        if apply_softmax and scores.ndim > 1:
            scores = _rowwise(functools.partial(jax.nn.softmax, axis=1), scores, rowwise=True)
        if single:
            scores = scores[0]
        if convert_to_tensor:  # on the model's (first) device, as sentence-transformers returns it on model.device
            return jax.device_put(scores, self._first_device)
        if not convert_to_numpy:
            return list(scores) if not single else scores
        return scores

    @_accepts_renamed_kwargs(
        {"activation_fct": "activation_fn"},
        dropped=("num_workers", "apply_softmax", "convert_to_numpy", "convert_to_tensor"),
    )
    def rank(
        self,
        query: str,
        documents: list[str],
        top_k: int | None = None,
        return_documents: bool = False,
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        activation_fn: Callable | str | None = None,
        device: str | None = None,
        pool: Any = None,
        chunk_size: int | None = None,
    ) -> list[dict[str, Any]]:
        """``[{"corpus_id", "score"(, "text")}]`` for ``documents`` against ``query``, best first."""
        if self.num_labels != 1:
            raise ValueError(
                f"rank needs a model with one output (num_labels=1); this one has {self.num_labels}"
            )
        if not isinstance(query, str):
            raise ValueError(f"query must be a string, got {type(query).__name__}")
        if top_k is not None:  # anything a slice takes (a numpy or JAX integer too), as sentence-transformers
            try:
                count = operator.index(top_k)
            except TypeError:
                count = -1
            if count < 0:
                raise ValueError(f"top_k must be a whole number >= 0 (or None for all), got {top_k!r}")
            top_k = count
        if isinstance(documents, str | bytes):  # would be ranked a character a document
            raise ValueError(f"documents must be a list of texts, got the string {documents!r:.60}")
        if isinstance(documents, Mapping | set | frozenset):  # no positions for corpus_id to name
            raise ValueError(
                f"documents must be a sequence of texts (a list), got a {type(documents).__name__}: corpus_id is a "
                "document's position in it"
            )
        if not isinstance(documents, list | tuple):  # a generator (read once), a pandas Series (by position, not by
            documents = list(documents)  # its index), an array: corpus_id is a position and the text the one there
        scores = self.predict(
            [(query, doc) for doc in documents],
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            activation_fn=activation_fn,
            prompt_name=prompt_name,
            prompt=prompt,
            device=device,
            pool=pool,
            chunk_size=chunk_size,
        )
        results = [{"corpus_id": i, "score": float(s)} for i, s in enumerate(np.atleast_1d(scores))]
        if return_documents:
            for r in results:
                r["text"] = documents[r["corpus_id"]]
        results.sort(key=lambda r: r["score"], reverse=True)
        return results[:top_k] if top_k is not None else results

    def _activation_path_to_save(self) -> str:
        """What the saved model names as its activation: the torch class path, or for a custom function its own
        path with a warning (sentence-transformers saves one it cannot import either: reloaded, both warn and
        take the default activation)."""
        try:
            return losses.activation_name_for_export(self.activation_fn)
        except ValueError as e:
            logger.warning("%s: the saved model loads with the default activation instead", e)
            return losses.activation_name_for_export(self.activation_fn, strict=False)

    def _check_exportable(self) -> None:
        try:
            losses.activation_name_for_export(self.activation_fn)
        except ValueError as e:
            raise ValueError(
                f"{e}. fit(output_path=...) saves the model, and the saved model must name its activation for "
                "sentence-transformers: set CrossEncoder(..., activation_fn=...) to one of those (the activation "
                "applied inside the loss is fit's activation_fct, which is not saved), or pass output_path=None."
            ) from None

    def _resolve_prompt(self, prompt: str | None, prompt_name: str | None) -> str | None:
        """sentence-transformers 6's rule: an explicit prompt wins, then prompt_name, then the default."""
        for name, value in (("prompt_name", prompt_name), ("prompt", prompt)):
            if value is not None and not isinstance(value, str):
                raise TypeError(
                    f"{name} must be a string, got {value!r}: in sentence-transformers 6 predict's and rank's "
                    "positional arguments after the pairs are prompt_name, prompt, batch_size (pass batch_size=... "
                    "and show_progress_bar=... by name)"
                )
        if prompt is not None:
            if prompt_name is not None:
                logger.warning("Provide either a `prompt`, a `prompt_name`, or neither; ignoring `prompt_name`.")
            return prompt
        if prompt_name is not None:
            if prompt_name not in self.prompts:
                raise ValueError(
                    f"Prompt name {prompt_name!r} not found in the configured prompts dictionary with keys "
                    f"{list(self.prompts)!r}."
                )
            return self.prompts[prompt_name]
        if self.default_prompt_name is not None:
            return self.prompts.get(self.default_prompt_name)
        return None

    # ------------------------------------------------------------------------------------------ save
    def save(
        self,
        path: str | os.PathLike,
        model_name: str | None = None,
        create_model_card: bool = True,
        train_datasets: list[str] | None = None,
        safe_serialization: bool = True,
    ) -> Path | None:
        """Export a Hugging Face model (+ tokenizer and sentence-transformers metadata) to ``path``.

        ``README.md`` is a model card in sentence-transformers' layout (see :mod:`crossjax.model_card`); a card
        that cannot be generated is skipped with a warning, never failing the save. As in sentence-transformers,
        ``model_name`` (a hub id, not an existing path) becomes the card's model id, ``create_model_card=False``
        writes no card, and ``train_datasets`` is accepted and unused (the card data holds the datasets).
        ``safe_serialization=False`` writes safetensors too, as sentence-transformers on transformers 5 does.

        In a multi-process run every process must call it (parameters are gathered, the card's usage example
        is scored); only process 0 writes.
        """
        if path is None:
            return None
        if model_name is not None and not isinstance(model_name, str):
            raise TypeError(f"model_name must be a string (the card's hub id, 'user/name'), got {model_name!r}")
        if model_name and not Path(model_name).exists() and not self.model_card_data.model_id:
            self.model_card_data.model_id = model_name
        write = self._model_writer()
        kept_card = self._kept_model_card()
        if create_model_card and kept_card is None:
            try:
                self.model_card_data.prepare_usage_example(self)
            except Exception as e:  # noqa: BLE001 - the card then shows the snippet without scores
                logger.warning("Could not score the model card's usage example: %s", e)
                self.model_card_data.usage_examples = None
        if write is None:
            return None
        out = write(path)
        if create_model_card:
            try:
                if kept_card is None:
                    write_model_card(out, generate_model_card(self, out))
                else:
                    write_model_card(out, reused_model_card(*kept_card, self, out))
            except Exception as e:  # noqa: BLE001 - the model is saved; the card is documentation
                logger.warning("Could not write the model card to %s: %s", out, e)
        logger.info("Saved model to %s", out)
        return out

    save_pretrained = save

    def _model_writer(self) -> Callable[[str | os.PathLike], Path] | None:
        """``write(path)``: the model as it is now (parameters gathered from every process, so every process must
        call this), its tokenizer and sentence-transformers' files exported to ``path``, without a card; None
        on the processes that do not write. It holds host copies of the parameters, so it may run after the
        model's arrays changed (checkpoints write each step's model with it in the background)."""
        writes = is_main_process()
        with self._arrays_guard.reading("save"):
            # host copies (every process joins the gather): the writer may run after the next step
            params = parallel.host_copy(nnx.state(self.model, nnx.Param), self.mesh_plan, keep=writes)
            rest = nnx.state(self.model, nnx.Not(nnx.Param))
        if not writes:
            return None
        model = nnx.merge(nnx.graphdef(self.model), params, rest)
        options = dict(
            activation_fn=self._activation_path_to_save(),
            max_length=self.max_length,
            prompts=self.prompts,
            default_prompt_name=self.default_prompt_name,
            keep_in_fp32_modules=self.keep_in_fp32_modules,
        )
        return lambda path: model.save_pretrained(path, self.tokenizer, **options)

    def _kept_model_card(self) -> tuple[str, Path] | None:
        """(card text, folder it was loaded from) while the card a loaded model came with still describes it:
        until this model trains (fit or a trainer tags its card data ``generated_from_trainer``)."""
        text, directory = self.__dict__.get("_loaded_card") or (None, None)
        if not text or "generated_from_trainer" in self.model_card_data.tags:
            return None
        return text, directory

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        safe_serialization: bool = True,
        commit_message: str | None = None,
        local_model_path: str | None = None,
        exist_ok: bool = True,
        replace_model_card: bool = False,
        train_datasets: list[str] | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> str | None:
        """Upload the model to a Hugging Face hub repository (created if missing); return the commit (or PR) URL.

        sentence-transformers 6's signature, through ``huggingface_hub``: ``create_repo`` then ``upload_folder``
        of a folder ``save()`` writes (weights, config, tokenizer, sentence-transformers metadata, model card),
        or of ``local_model_path`` when given. Differences: ``exist_ok`` defaults to True (pushing a new
        version to your own repository is the common case); weights are safetensors whatever
        ``safe_serialization`` says (as sentence-transformers on transformers 5 writes them). As there, the card
        ``save`` writes replaces one the repository already has only with ``replace_model_card=True``;
        ``train_datasets`` is accepted and unused (the card data holds the datasets). In a multi-process run every
        process must call it; only process 0 uploads (and returns the URL).
        """
        import tempfile

        if local_model_path is not None and not Path(local_model_path).is_dir():
            raise ValueError(f"push_to_hub(local_model_path={local_model_path!r}): no such folder to upload")
        main, api = is_main_process(), None
        if main:  # the repository first: its full id (a name without owner gets the user's) goes into the card
            from huggingface_hub import HfApi

            api = HfApi(token=token)
            try:
                repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=exist_ok or create_pr).repo_id
                if revision is not None:
                    api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True)
            except Exception as e:
                if not _unreachable(e):
                    raise
                raise ConnectionError(
                    f"push_to_hub could not reach the Hugging Face hub to create {repo_id!r} ({type(e).__name__}: "
                    f"{e}); nothing was uploaded. Check the network (or HF_ENDPOINT), or save() the model and push "
                    "the folder later with local_model_path="
                ) from e
            self.model_card_data.set_model_id(repo_id)
        upload = dict(
            api=api,
            repo_id=repo_id,
            commit_message=commit_message or "Add new CrossEncoder model (crossjax)",
            revision=revision,
            create_pr=create_pr,
        )
        if local_model_path is not None:
            return _upload_folder(local_model_path, **upload) if main else None
        with tempfile.TemporaryDirectory(prefix="crossjax-push-") as tmp:
            # every process gathers the parameters; only process 0 writes and uploads
            if self.save(tmp, model_name=repo_id) is None:
                return None
            return _upload_folder(tmp, keep_hub_card=not replace_model_card, **upload)

    # ------------------------------------------------------------------------------------------ fit
    def fit(
        self,
        train_dataloader: Any,
        evaluator: Callable | None = None,
        epochs: int = 1,
        loss_fct: Any = None,
        activation_fct: Any = None,
        scheduler: str = "WarmupLinear",
        warmup_steps: int = 10000,
        optimizer_class: Any = None,
        optimizer_params: dict[str, Any] = {"lr": 2e-5},
        weight_decay: float = 0.01,
        evaluation_steps: int = 0,
        output_path: str | None = None,
        save_best_model: bool = True,
        max_grad_norm: float | None = 1,
        use_amp: bool = False,
        callback: Callable[[float, int, int], None] | None = None,
        show_progress_bar: bool = True,
        *,
        gradient_accumulation_steps: int = 1,
        seed: int | None = None,
        compute_dtype: str | Any | None = None,
        logging_steps: int = 10,
        checkpoint_path: str | None = None,
        checkpoint_save_steps: int = 500,
        checkpoint_save_total_limit: int | None = 2,
        group_by_length: bool = False,
        max_steps: int | None = None,
        batch_size: int | None = None,
        shuffle_buffer_size: int = 0,
        max_tokens_per_step: int | None = None,
        log_dir: str | None = None,
    ) -> dict[str, Any]:
        """Train like sentence-transformers' legacy ``fit`` (see its docs); returns a summary of the run.

        ``optimizer_class`` is None or ``torch.optim.AdamW`` (``optimizer_params``: its ``lr``, ``betas``, ``eps``,
        ``amsgrad``), or ``torch.optim.SGD`` / ``Adagrad`` / ``RMSprop`` or transformers' ``Adafactor`` with
        their own options (see :func:`crossjax.fit_loop.optimizer_settings`).

        JAX extras: ``gradient_accumulation_steps`` (each optimizer step consumes that many dataloader
        batches; the loader's ``drop_last`` drops only its own last partial batch, so a last step of an epoch may
        accumulate fewer), ``seed`` (data order and dropout; default: the CrossEncoder's seed), ``compute_dtype``
        (default bfloat16 with ``use_amp`` else float32), ``logging_steps`` (how often the loss is fetched
        from the device for the progress bar), and ``checkpoint_path``/``checkpoint_save_steps``/
        ``checkpoint_save_total_limit`` for preemption-safe orbax checkpoints with exact resume, and
        ``group_by_length`` (shuffled batches of similar lengths, like Hugging Face's LengthGroupedSampler;
        off by default: batches are packed, so plain random batches, as in sentence-transformers, cost no
        padding). The data order follows ``DataLoader(seed=...)`` when the
        loader has a seed, else ``seed``.

        ``max_steps`` caps the run at that many optimizer steps (the schedule then spans them).

        **Streams** (input of any size, see :mod:`crossjax.streaming`): ``train_dataloader`` may also be a
        ``datasets.IterableDataset`` (e.g. ``load_dataset("json", data_files=..., streaming=True)``; columns
        found as for a ``datasets.Dataset``), an iterator or generator of ``InputExample`` (or of batches), a
        torch ``IterableDataset``, or a torch DataLoader over an iterable dataset (its ``drop_last`` drops a last
        partial batch). Such input is read once, lazily, in a background thread
        (memory independent of its size); ``max_steps`` is then required and ``epochs`` is ignored (one pass
        at most; the run stops early if the stream ends). ``batch_size`` sets a stream's batch size (default:
        the torch DataLoader's, else a stream of batches' first batch's length, else 16); for in-memory input it
        overrides the loader's. ``shuffle_buffer_size``
        (streams only; 0 = stream order) shuffles blocks of that many examples with ``seed``. Checkpoints
        store the number of examples consumed, and a resume skips exactly those.

        ``max_tokens_per_step`` (in-memory input, opt-in) replaces batches of ``batch_size`` pairs by batches of
        a token budget (fairseq's ``max_tokens``): every step is one packed shape of about that many tokens
        (all devices together; rows as long as the longest pair) holding as many pairs as fit, so nearly no
        token is padding and the run compiles once; the pairs per step vary, and each step's loss is the mean
        over its own pairs. The epoch's pairs are taken in the shuffled order, each once.
        **Logs** (see :mod:`crossjax.logs`): ``metrics.jsonl`` (every step's loss, learning rate, gradient norm
        and pairs/s, every evaluation's metrics), TensorBoard event files under ``runs/`` (with tensorboardX
        installed) and ``training_curves.png`` (with matplotlib) are written to ``log_dir``, default
        ``output_path``; neither given: no log files. The model card saved with the model records the run.
        """
        from crossjax.fit_loop import (
            FitConfig,
            FitResult,
            FitTarget,
            ParametersOverflowError,
            optimizer_settings,
            run_fit,
        )

        self._check_parameters_finite()
        if str(scheduler).lower() not in SCHEDULER_NAMES:  # sentence-transformers' five (the trainer has more)
            raise ValueError(f"Unknown scheduler {scheduler!r}; valid schedulers are: {', '.join(SCHEDULER_NAMES)}")
        if evaluator is not None and (isinstance(evaluator, type) or not callable(evaluator)):
            raise TypeError(
                f"evaluator must be an evaluator instance, called as evaluator(model, output_path, epoch, steps); "
                f"got {evaluator!r}" + (" (several: crossjax.evaluation.SequentialEvaluator([...]))"
                                        if isinstance(evaluator, list | tuple) else "")
            )
        config = FitConfig(
            epochs=epochs,
            scheduler=scheduler,
            warmup_steps=warmup_steps,
            **optimizer_settings(optimizer_class, optimizer_params),
            weight_decay=weight_decay,
            evaluation_steps=evaluation_steps,
            output_path=output_path,
            save_best_model=save_best_model,
            max_grad_norm=max_grad_norm,
            compute_dtype=_fit_compute_dtype(use_amp, compute_dtype, self.keep_in_fp32_modules),
            show_progress_bar=show_progress_bar,
            gradient_accumulation_steps=gradient_accumulation_steps,
            seed=self.seed if seed is None else data_lib.checked_seed(seed, "fit seed"),
            logging_steps=logging_steps,
            checkpoint_path=checkpoint_path,
            checkpoint_save_steps=checkpoint_save_steps,
            checkpoint_save_total_limit=checkpoint_save_total_limit,
            group_by_length=bool(group_by_length),
            max_steps=max_steps,
            batch_size=batch_size,
            shuffle_buffer_size=shuffle_buffer_size,
            max_tokens_per_step=max_tokens_per_step,
            log_dir=log_dir,
        )
        config.validate()
        if output_path is not None:
            self._check_exportable()  # an unexportable activation must fail now, not at the first save hours later
        target = FitTarget(
            model=self.model,
            tokenizer=self.tokenizer,
            plan=self.mesh_plan,
            max_length=self.max_length,
            max_shapes=self.max_shapes,
            pad_id=self._pad_id,
            save=self.save,
            model_writer=self._model_writer,
            evaluate=None if evaluator is None else _EvaluatorHook(self, evaluator),
            callbacks=[CardRecorder(self, config.output_path)],  # validated: "~/out" expanded
            guard=self._arrays_guard,
            resume_needs_own_weights=True,  # fit resumes a checkpoint_path's run by itself
        )
        result = FitResult(history=[])
        self.training_history = result.history  # filled as the run goes, so an interrupted run keeps it too
        try:
            run_fit(target, train_dataloader, loss_fct, activation_fct, callback, config, result)
        except ParametersOverflowError as e:
            self._parameters_not_finite = str(e)
            raise
        finally:
            self.best_score = result.best_score
            self.compilations["train"] = result.compilations
        return result.summary

    def _check_parameters_finite(self) -> None:
        """A run whose update overflowed left non-finite parameters here (see ``fit_loop``): training on them
        would fail at its first step with a misleading message, so say what happened instead."""
        if self._parameters_not_finite:
            raise ValueError(
                "This model's parameters are not finite since an earlier run's update overflowed; load the model "
                f"again (or its last checkpoint). That run said: {self._parameters_not_finite}"
            )

    # ----------------------------------------------------------------------------------- torch habits
    # sentence-transformers' CrossEncoder is a torch module, and code written for it calls these.
    old_fit = fit  # sentence-transformers 6 keeps its legacy loop under this name; crossjax's fit is that loop

    def evaluate(self, evaluator: Callable, output_path: str | os.PathLike | None = None) -> Any:
        """``evaluator(self, output_path=...)``, creating ``output_path`` first, as sentence-transformers does."""
        if output_path is not None:
            os.makedirs(output_path, exist_ok=True)
        return evaluator(self, output_path=output_path)

    def eval(self) -> CrossEncoder:
        """The model: predict and rank always run without dropout; fit turns it on for its steps. Sets
        :attr:`training` to False, as torch's does."""
        return self.train(False)

    def train(self, mode: bool = True) -> CrossEncoder:
        """The model: fit and the trainer turn dropout on for their steps only; ``mode`` is kept in
        :attr:`training` for code that reads it (torch's flag), and changes nothing else."""
        self.training = bool(mode)
        return self

    @property
    def dtype(self) -> Any:
        """The compute dtype (numpy's ``float32`` or ``bfloat16``); sentence-transformers': its parameters' torch
        dtype, which ``to(dtype)`` changes as ``to(dtype)`` changes the compute dtype here."""
        return jnp.dtype(self.compute_dtype)

    def double(self) -> CrossEncoder:
        return self.to("float64")

    def set_keep_in_fp32_modules(self, module_names: list[str]) -> None:
        """sentence-transformers' selection of ``nn.Linear`` layers (paths as it resolves them:
        ``"model.classifier"``, ``"0.model.bert.encoder.layer.0.output.dense"``, ``"0.auto_model..."``) that
        compute in float32 under autocast. crossjax computes every layer in the compute dtype, so a selection
        needs float32 compute; it is checked as sentence-transformers checks it, kept, and saved with the model
        for sentence-transformers."""
        _check_module_paths(module_names)
        names = list(dict.fromkeys(module_names))
        if not names:  # every model's construction: no layer table to read
            self.keep_in_fp32_modules = []
            return
        # sentence-transformers reaches the transformer as "model", and as its module "0" ("0.model", "0.auto_model")
        linear = {f"{root}.{path}" for root in _MODEL_ROOTS for path in self.model.hf_linear_layers()}
        unknown = [name for name in names if name not in linear]
        if unknown:
            raise ValueError(
                f"keep_in_fp32_modules: {unknown} name no nn.Linear layer of this model (sentence-transformers "
                f"module paths, e.g. {sorted(linear)[:2]})"
            )
        check_keep_in_fp32(names, self.compute_dtype)
        self.keep_in_fp32_modules = names

    def get_default_activation_fn(self) -> Callable:
        """The activation the model's saved config names, else Sigmoid for one label and Identity otherwise
        (sentence-transformers' rule, which :attr:`activation_fn` starts from)."""
        saved = _saved_activations({}, self.config, False)
        default = losses.sigmoid if self.num_labels == 1 else losses.identity
        return _activation_or_default(saved, default)

    def is_singular_input(self, inputs: Any) -> bool:
        """Whether ``inputs`` is one pair (``predict`` returns one score) rather than a list of pairs."""
        if isinstance(inputs, (list, tuple)) or type(inputs).__name__ == "Column":
            return len(inputs) > 0 and not isinstance(inputs[0], (list, tuple))
        if isinstance(inputs, np.ndarray) and inputs.dtype.kind in ("U", "O"):
            return inputs.size > 0 and inputs.ndim < 2
        return True  # as sentence-transformers: anything else is taken for one input

    def get_model_kwargs(self) -> list[str]:
        """Model-specific keyword arguments of ``predict``: none for a cross-encoder of crossjax's families."""
        return []

    def save_to_hub(self, repo_id: str, organization: str | None = None, **kwargs: Any) -> str | None:
        """sentence-transformers' deprecated name of :meth:`push_to_hub` (``organization`` prefixed to
        ``repo_id``; ``exist_ok`` False by default, as there)."""
        logger.warning("save_to_hub is deprecated (as in sentence-transformers): use push_to_hub instead")
        if organization and "/" not in repo_id:
            repo_id = f"{organization}/{repo_id}"
        kwargs.setdefault("exist_ok", False)
        return self.push_to_hub(repo_id, **kwargs)

    def bfloat16(self) -> CrossEncoder:
        """predict and rank compute in bfloat16 from now on (the parameters stay float32), as
        ``compute_dtype="bfloat16"``; fit trains in float32 unless given ``use_amp=True``."""
        return self.to(jnp.bfloat16)

    def float(self) -> CrossEncoder:
        """predict and rank compute in float32 from now on."""
        return self.to(jnp.float32)

    def half(self) -> CrossEncoder:
        return self.to("float16")

    def cpu(self) -> CrossEncoder:
        return self.to("cpu")

    def cuda(self, device: Any = None) -> CrossEncoder:
        return self.to("cuda" if device is None else device)

    def to(self, *args: Any, **kwargs: Any) -> CrossEncoder:
        """torch's ``to(device)`` / ``to(dtype)``: a dtype sets the compute dtype (float32 or bfloat16); a device
        must be the platform the model already runs on, chosen at construction (``CrossEncoder(..., device=)``),
        since JAX places the parameters on its mesh there."""
        # torch's keywords that choose how to copy (non_blocking, copy, memory_format) have nothing to copy here
        values = [*args, *(kwargs[k] for k in ("device", "dtype", "tensor") if kwargs.get(k) is not None)]
        for value in values:
            if isinstance(value, int) and not isinstance(value, bool):  # torch: to(0) / cuda(0) is cuda:0
                value = f"cuda:{value}"
            # a dtype (torch.bfloat16, "bf16", jnp.float32 ...) or anything dtype-like; else a device
            dtype_like = type(value).__name__ in ("dtype", "_ScalarMeta") or isinstance(value, type)
            try:
                compute_dtype_of(value)
                dtype_like = True
            except ValueError:
                pass
            try:  # any other dtype's name ("float64", "int8"): refused as a dtype, not taken for a device
                dtype_like = dtype_like or isinstance(value, str) and np.dtype(value) is not None
            except TypeError:
                pass
            if dtype_like:
                check_keep_in_fp32(self.keep_in_fp32_modules, _as_dtype(value))
                self.compute_dtype = _as_dtype(value)
                continue
            platform, _, index = str(value).lower().partition(":")
            mesh_devices = list(self.mesh_plan.mesh.devices.flat)
            if {"gpu": "cuda"}.get(platform, platform) != self.device or (
                index and devices_for(str(value)) != mesh_devices
            ):
                raise ValueError(
                    f"to({value!r}): this model runs on {self.device} ({len(mesh_devices)} device(s)); crossjax places "
                    f"a model on its devices when it is made: CrossEncoder(..., device={str(value)!r})"
                )
        return self

    def start_multi_process_pool(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(
            "start_multi_process_pool: crossjax's predict already runs on every device of its mesh (choose them "
            "with CrossEncoder(..., device=...)); call predict without a pool"
        )

    stop_multi_process_pool = start_multi_process_pool

    def get_max_seq_length(self) -> int:
        return self.max_length

    def __getattr__(self, name: str) -> Any:
        if name in _TORCH_MODULE_ONLY:  # only reached when normal lookup fails
            raise AttributeError(f"CrossEncoder.{name}: {_TORCH_MODULE_ONLY[name]}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}", name=name, obj=self)

    def __repr__(self) -> str:
        return (
            f"CrossEncoder({self.model_name_or_path!r}, model_type={self.config.model_type!r}, "
            f"num_labels={self.num_labels}, max_length={self.max_length}, devices={self.mesh_plan.data_shards})"
        )


_NOT_A_TORCH_MODULE = (
    "crossjax's CrossEncoder is not a torch module: its parameters are JAX arrays in model.model "
    "(flax.nnx.state(model.model, nnx.Param)); save() writes them as a transformers checkpoint and "
    "CrossEncoder(path) reads one back"
)
_TORCH_MODULE_ONLY = {
    **dict.fromkeys(
        ("parameters", "named_parameters", "state_dict", "load_state_dict", "modules", "named_modules",
         "children", "buffers", "zero_grad", "requires_grad_", "register_forward_hook", "transformers_model"),
        _NOT_A_TORCH_MODULE,
    ),
    **dict.fromkeys(
        ("forward", "tokenize", "preprocess", "smart_batching_collate", "smart_batching_collate_text_only"),
        "crossjax has no torch forward pass: score pairs with predict() or rank() (model.tokenizer tokenizes; "
        "model.model takes numpy/JAX arrays), and train with fit() or CrossEncoderTrainer",
    ),
    "gradient_checkpointing_enable": "not supported: crossjax's scanned layers already keep the step's memory low",
    "compile": "not needed: JAX compiles every predict and train step (jax.jit), with a persistent cache",
}  # fmt: skip


def _upload_folder(
    folder: str | os.PathLike,
    *,
    api: Any,
    repo_id: str,
    commit_message: str,
    revision: str | None,
    create_pr: bool,
    keep_hub_card: bool = False,
) -> str:
    """``api.upload_folder`` into the repository ``repo_id`` (made); the commit URL, or the PR URL with create_pr.
    ``keep_hub_card``: a README.md the repository has is kept (and kept too when it cannot be checked)."""
    ignored = []
    if keep_hub_card:
        try:
            has_card = api.file_exists(repo_id, "README.md", revision=revision)
        except Exception as e:  # noqa: BLE001 - as sentence-transformers: when in doubt, never overwrite a card
            logger.warning("Could not check %s for a README.md (%s): its card is left as it is", repo_id, e)
            has_card = True
        ignored = ["README.md"] if has_card else []
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        create_pr=create_pr,
        revision=revision,
        **({"ignore_patterns": ignored} if ignored else {}),
    )
    logger.info("Uploaded %s to %s", folder, commit.pr_url if create_pr else commit.commit_url)
    return commit.pr_url if create_pr else commit.commit_url


def _activation_or_default(saved: list[str], default: Callable) -> Callable:
    """The first activation of ``saved`` (:func:`_saved_activations`) that loads. A path outside torch is code
    sentence-transformers will not import either: it warns and tries the next, then the default, and so do
    we. A torch activation without a JAX form is an error (scores would differ from sentence-transformers'),
    which says how to choose one."""
    for path in saved:
        try:
            return losses.activation_from_export_name(path)
        except ValueError as e:
            if isinstance(path, str) and path.startswith("torch."):
                raise ValueError(f"{e}. Pass CrossEncoder(..., activation_fn=...) to load this model") from None
            logger.warning("%s; it is not used (pass activation_fn=... to choose one)", e)
    return default


def _rowwise(fn: Callable, scores: np.ndarray, rowwise: bool) -> np.ndarray:
    """``fn`` (a function of the (pairs, labels) scores) on ``scores``, as float32 numpy.

    A ``rowwise`` function (crossjax's own activations) runs in numpy where it has a numpy form
    (:func:`crossjax.losses.host_form`), else gets the rows padded up to :func:`crossjax.packing.grid_ceiling`:
    eager JAX compiles a program per shape, and calls with other numbers of pairs then share it. A user's function
    gets exactly the scores (it may normalise over the pairs), as a torch
    tensor or a JAX array (:func:`crossjax.losses.torch_compat.runs_on_torch`: what sentence-transformers would
    give it, unless its code is JAX's); where it fails on that, on the other."""
    host = losses.host_form(fn) if rowwise else None
    if host is not None:
        return np.asarray(host(np.asarray(scores, dtype=np.float32)), dtype=np.float32)
    if rowwise:
        padded = np.zeros((packing.grid_ceiling(len(scores)), scores.shape[1]), np.float32)
        padded[: len(scores)] = scores
        return np.asarray(fn(jax.device_put(padded)), dtype=np.float32)[: len(scores)]

    def on_jax() -> Any:
        return fn(jax.device_put(scores))

    def on_torch() -> Any:
        import torch

        return fn(torch.from_numpy(np.array(scores, dtype=np.float32)))

    first, second = (on_torch, on_jax) if runs_on_torch(fn) else (on_jax, on_torch)
    try:
        out = first()
    except Exception as e:  # noqa: BLE001 - whatever a user's function raises, tried once more on the other
        try:
            out = second()
        except Exception:  # noqa: BLE001
            raise e from None
    return tensor_to_numpy(out)


def _unreachable(error: BaseException) -> bool:
    """A failure to reach a server (no network, DNS, a timeout), whatever HTTP client ``huggingface_hub`` uses."""
    names = {cls.__name__ for cls in type(error).__mro__}
    return isinstance(error, ConnectionError | TimeoutError) or bool(
        names & {"TransportError", "ConnectionError", "Timeout", "ConnectTimeout"}
    )


def _pair_texts(inputs: Any) -> tuple[bool, list[str], list[str]]:
    """(whether ``inputs`` is one pair, first texts, second texts): a pair is a tuple, list or array of two
    strings, ``inputs`` one pair or any iterable of them; anything else is a ValueError naming the pair."""
    if isinstance(inputs, (str, Mapping, set, frozenset)):
        raise ValueError(
            f"predict() takes one (text_a, text_b) pair or a list of them, got a {type(inputs).__name__}"
        )
    if hasattr(inputs, "columns") and hasattr(inputs, "to_numpy"):  # as sentence-transformers refuses it
        raise ValueError(
            f"predict() does not take a {type(inputs).__name__}: iterating one gives its column names, not its rows. "
            "Pass its rows as pairs, e.g. df[['text_a', 'text_b']].values.tolist()"
        )
    if not isinstance(inputs, (list, tuple, np.ndarray)):
        if not hasattr(inputs, "__iter__"):
            raise ValueError(f"predict() takes one (text_a, text_b) pair or a list of them, got {inputs!r:.60}")
        inputs = list(inputs)  # a generator, a dataset column ...
    if len(inputs) == 2 and any(isinstance(t, str) for t in inputs):
        if all(isinstance(t, str) for t in inputs):
            return True, [inputs[0]], [inputs[1]]
        if not any(isinstance(t, (list, tuple, np.ndarray)) for t in inputs):  # one pair with a text that is not
            a, b = inputs
            raise ValueError(f"the pair's texts must be strings, got {type(a).__name__}, {type(b).__name__}")
    texts_a, texts_b = [], []
    for i, pair in enumerate(inputs):
        if not isinstance(pair, (list, tuple, np.ndarray)) or len(pair) != 2:  # not a dict or set: unordered
            raise ValueError(f"Pair {i}: expected two texts (a, b) as a tuple or list, got {pair!r}")
        a, b = pair
        if not isinstance(a, str) or not isinstance(b, str):
            raise ValueError(f"Pair {i}: texts must be strings, got {type(a).__name__}, {type(b).__name__}")
        for j, text in enumerate(pair):
            if (reason := data_lib.unencodable(text)) is not None:
                raise ValueError(f"Pair {i}: text {j} {reason}")
        texts_a.append(a)
        texts_b.append(b)
    return False, texts_a, texts_b


def _jax_devices_of(device: Any) -> Any:
    """``device`` as a list of JAX devices where it is a ``jax.Device``, a non-empty sequence of them or a
    ``jax.sharding.Mesh`` (its devices in the mesh's order: crossjax lays its own one-axis data mesh over them);
    anything else as it is."""
    if isinstance(device, jax.sharding.Mesh):
        return list(device.devices.flat)
    if isinstance(device, jax.Device):
        return [device]
    if isinstance(device, (list, tuple)) and device and all(isinstance(d, jax.Device) for d in device):
        return list(device)
    return device


def _call_digest(texts_a: list[str], texts_b: list[str], batch_size: int, dtype: Any) -> int:
    """A 64-bit digest of a predict call's pairs and settings (what a multi-process run's processes compare)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    digest.update(repr((len(texts_a), int(batch_size), None if dtype is None else jnp.dtype(dtype).name)).encode())
    for texts in (texts_a, texts_b):
        digest.update("\x00".join(texts).encode("utf-8", "surrogatepass"))
        digest.update(b"\x01")
    return int.from_bytes(digest.digest(), "little")


class _EvaluatorHook:
    """``evaluator(model, output_path, epoch, steps)`` as the loop calls it; keeps ``primary_metric`` visible."""

    def __init__(self, model: CrossEncoder, evaluator: Callable) -> None:
        self.model = model
        self.evaluator = evaluator

    @property
    def primary_metric(self) -> str | None:
        return getattr(self.evaluator, "primary_metric", None)  # some evaluators set it on their first call

    @property
    def greater_is_better(self) -> bool:
        return getattr(self.evaluator, "greater_is_better", True)

    def __call__(self, output_path: str | None, epoch: int, steps: int) -> Any:
        return self.evaluator(self.model, output_path=output_path, epoch=epoch, steps=steps)


__all__ = ["CrossEncoder"]

# sentence-transformers' ``cross_encoder`` package also holds its trainer and arguments (and the card data,
# imported above)
_ALSO_HERE = {
    "CrossEncoderTrainer": "crossjax.trainer",
    "CrossEncoderTrainingArguments": "crossjax.training_args",
}


def __getattr__(name: str) -> Any:
    if name in _ALSO_HERE:  # imported when asked: the trainer imports this module
        import importlib

        return getattr(importlib.import_module(_ALSO_HERE[name]), name)
    # sentence-transformers' paths below its ``cross_encoder`` package (``crossjax.cross_encoder.evaluation``,
    # ``.trainer``, ...: crossjax.st_paths) are attributes of this module, as of that package
    alias = sys.modules.get(f"{__name__}.{name}")
    if alias is not None and not name.startswith("__"):
        return alias
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
