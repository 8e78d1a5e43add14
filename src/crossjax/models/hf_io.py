"""Hugging Face checkpoint I/O: the key-table engine (both directions), safetensors, and the model base.

Each model family declares ONE table of :class:`ParamRule` rows mapping its Hugging Face PyTorch parameter
names to our nnx paths. The same rows drive loading (HF -> ours) and export (ours -> HF), so the two can
never drift apart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

logger = logging.getLogger("crossjax")

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
TORCH_WEIGHTS = "pytorch_model.bin"
TORCH_INDEX = "pytorch_model.bin.index.json"
CONFIG = "config.json"

# Buffers and legacy keys that transformers itself drops silently.
IGNORED_KEYS = (re.compile(r"(^|\.)position_ids$"), re.compile(r"(^|\.)token_type_ids$"))


@dataclass(frozen=True)
class ParamRule:
    """One row of a family's table: ``{i}`` stands for a layer index on both sides.

    ``transpose`` is for ``nn.Linear`` weights: PyTorch stores (out, in), nnx kernels are (in, out).
    """

    hf: str
    ours: str
    transpose: bool = False

    def _regex(self, template: str) -> re.Pattern:
        return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def match_hf(self, name: str) -> str | None:
        m = self._regex(self.hf).match(name)
        return None if m is None else self.ours.format(**m.groupdict())

    def match_ours(self, path: str) -> str | None:
        m = self._regex(self.ours).match(path)
        return None if m is None else self.hf.format(**m.groupdict())

    def to_ours(self, array: np.ndarray) -> np.ndarray:
        return array.T if self.transpose else array

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(array.T) if self.transpose else array


def linear(hf: str, ours: str) -> list[ParamRule]:
    """Rows for an ``nn.Linear`` (weight transposed into a kernel, bias as is)."""
    return [
        ParamRule(f"{hf}.weight", f"{ours}.kernel", transpose=True),
        ParamRule(f"{hf}.bias", f"{ours}.bias"),
    ]


def norm(hf: str, ours: str) -> list[ParamRule]:
    return [ParamRule(f"{hf}.weight", f"{ours}.scale"), ParamRule(f"{hf}.bias", f"{ours}.bias")]


def embed(hf: str, ours: str) -> list[ParamRule]:
    return [ParamRule(f"{hf}.weight", f"{ours}.embedding")]


def bert_style_layer(hf: str, ours: str = "encoder.layers.{i}") -> list[ParamRule]:
    """Rows for one BERT-layout transformer layer (BERT, RoBERTa, XLM-R, ELECTRA share it)."""
    return [
        *linear(f"{hf}.attention.self.query", f"{ours}.query"),
        *linear(f"{hf}.attention.self.key", f"{ours}.key"),
        *linear(f"{hf}.attention.self.value", f"{ours}.value"),
        *linear(f"{hf}.attention.output.dense", f"{ours}.attention_out"),
        *norm(f"{hf}.attention.output.LayerNorm", f"{ours}.attention_norm"),
        *linear(f"{hf}.intermediate.dense", f"{ours}.ffn_in"),
        *linear(f"{hf}.output.dense", f"{ours}.ffn_out"),
        *norm(f"{hf}.output.LayerNorm", f"{ours}.ffn_norm"),
    ]


def bert_style_embeddings(hf: str, ours: str = "embeddings", token_types: bool = True) -> list[ParamRule]:
    rows = [
        *embed(f"{hf}.word_embeddings", f"{ours}.word"),
        *embed(f"{hf}.position_embeddings", f"{ours}.position"),
        *norm(f"{hf}.LayerNorm", f"{ours}.norm"),
    ]
    if token_types:
        rows += embed(f"{hf}.token_type_embeddings", f"{ours}.token_type")
    return rows


class CheckpointError(ValueError):
    """A checkpoint directory or file that cannot be used, with the file and the problem named."""


# --------------------------------------------------------------------------------------------- reading


def resolve_checkpoint_dir(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A local directory as is; anything else is a hub id fetched (config + weights) with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"{path} has no {CONFIG}: it is not a Hugging Face model directory")
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the model directory that holds {CONFIG}")
    if str(name_or_path).startswith((".", "/", "~")) or os.sep + os.sep in str(name_or_path):
        raise CheckpointError(f"Model directory {path} does not exist")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            str(name_or_path),
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model*.bin"],
            **hub_kwargs,
        )
    except Exception as e:  # noqa: BLE001 - re-raised with the id named
        raise CheckpointError(
            f"Could not find {name_or_path!r} locally or download it from the Hugging Face hub: {e}"
        ) from e
    return resolve_checkpoint_dir(local)


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    try:
        out = {}
        with safe_open(str(file), framework="flax") as f:
            for key in f.keys():
                out[key] = np.asarray(f.get_tensor(key), dtype=np.float32)
        return out
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"Could not read {file}: {e}. The file is truncated or corrupt.") from e


def _read_torch_bin(file: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{file} is a PyTorch pickle; reading it needs torch. Install it with "
            "`pip install crossjax[torch]` (or convert the checkpoint to model.safetensors)."
        ) from None
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"Could not read {file}: {e}") from e
    return {k: v.detach().float().numpy() for k, v in state.items()}


def read_state_dict(directory: Path) -> tuple[dict[str, np.ndarray], Path]:
    """All tensors of a checkpoint as float32 numpy, from safetensors (single or sharded) or torch .bin."""
    for index_name, reader in ((SAFE_INDEX, _read_safetensors), (TORCH_INDEX, _read_torch_bin)):
        index = directory / index_name
        if index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index} is not a valid sharded-checkpoint index: {e}") from e
            tensors: dict[str, np.ndarray] = {}
            for shard in shards:
                if not (directory / shard).is_file():
                    raise CheckpointError(f"{index} names shard {shard}, which is missing from {directory}")
                tensors.update(reader(directory / shard))
            return tensors, index
    for name, reader in ((SAFE_WEIGHTS, _read_safetensors), (TORCH_WEIGHTS, _read_torch_bin)):
        if (directory / name).is_file():
            return reader(directory / name), directory / name
    raise CheckpointError(
        f"{directory} has no weights: expected {SAFE_WEIGHTS}, {SAFE_INDEX}, {TORCH_WEIGHTS} or {TORCH_INDEX}"
    )


def _rename_legacy(key: str) -> str:
    # Old TF-converted checkpoints name LayerNorm parameters gamma/beta; transformers renames them too.
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


# --------------------------------------------------------------------------------------------- the model


def flat_params(model: nnx.Module) -> dict[str, Any]:
    """Our parameters as {"a.b.0.kernel": nnx.Param}."""
    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


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

    config: Any

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        raise NotImplementedError

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    # Forward pass: embed -> encoder -> classify. Families override ``embed`` or ``classify`` where they differ.
    def embed(self, input_ids: jax.Array, token_type_ids: jax.Array | None) -> jax.Array:
        return self.embeddings(input_ids, token_type_ids if self.uses_token_types else None)

    def classify(self, hidden: jax.Array) -> jax.Array:
        return self.classifier(hidden)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> jax.Array:
        """The encoder's last hidden states (B, L, H): what transformers' base model returns first."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        return self.encoder(self.embed(input_ids, token_type_ids), attention_mask)

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, token_type_ids: jax.Array | None = None
    ) -> jax.Array:
        """Logits (B, num_labels) in float32 from integer token arrays (B, L)."""
        return self.classify(self.encode(input_ids, attention_mask, token_type_ids)).astype(jnp.float32)

    # ------------------------------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, config, *, dtype=jnp.float32, seed: int = 0) -> FlaxPreTrainedModel:
        """A freshly initialised model (transformers' initialisation: normal(0, initializer_range))."""
        return cls(config, dtype=dtype, rngs=nnx.Rngs(params=seed, dropout=seed + 1))

    def load_hf_state_dict(self, tensors: dict[str, np.ndarray], source: str = "checkpoint") -> LoadingInfo:
        """Fill our parameters from Hugging Face named tensors; return what was missing/unexpected."""
        info = LoadingInfo()
        table = self.param_table(self.config)
        prefix = self.base_model_prefix + "."
        tensors = {_rename_legacy(k): v for k, v in tensors.items()}
        if not any(k.startswith(prefix) for k in tensors):
            # A base-model checkpoint (e.g. a sentence-transformers bi-encoder): names lack the prefix.
            tensors = {(k if k.startswith(self.head_prefixes) else prefix + k): v for k, v in tensors.items()}
        ours = flat_params(self)
        filled: set[str] = set()
        for name, array in tensors.items():
            rule, target = next(((r, t) for r in table if (t := r.match_hf(name)) is not None), (None, None))
            if target is None or target not in ours:
                if not any(p.search(name) for p in IGNORED_KEYS):
                    info.unexpected_keys.append(name)
                continue
            value = rule.to_ours(array)
            var = ours[target]
            if tuple(value.shape) != tuple(var.shape):
                if name.startswith(self.head_prefixes):
                    info.mismatched_keys.append(
                        (name, tuple(array.shape), tuple(rule.to_hf(np.empty(var.shape)).shape))
                    )
                    continue
                raise CheckpointError(
                    f"{source}: parameter {name} has shape {tuple(array.shape)}, but the config implies "
                    f"{tuple(rule.to_hf(np.empty(var.shape)).shape)}"
                )
            var[...] = jnp.asarray(value, dtype=var[...].dtype)
            filled.add(target)
        for path in ours:
            if path not in filled:
                hf = next((h for rule in table if (h := rule.match_ours(path)) is not None), path)
                info.missing_keys.append(hf)
        return info

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        config=None,
        num_labels: int | None = None,
        dtype=jnp.float32,
        seed: int = 0,
        output_loading_info: bool = False,
        config_kwargs: dict | None = None,
        **hub_kwargs: Any,
    ):
        directory = resolve_checkpoint_dir(name_or_path, **hub_kwargs)
        if config is None:
            config = load_config(directory, num_labels=num_labels, **(config_kwargs or {}))
        model = cls.from_config(config, dtype=dtype, seed=seed)
        tensors, source = read_state_dict(directory)
        info = model.load_hf_state_dict(tensors, source=str(source))
        _report(cls.architecture, str(directory), info)
        return (model, info.as_dict()) if output_loading_info else model

    # ------------------------------------------------------------------------------------- export
    def hf_state_dict(self) -> dict[str, np.ndarray]:
        """Our parameters under Hugging Face PyTorch names and layouts, float32."""
        table = self.param_table(self.config)
        out: dict[str, np.ndarray] = {}
        for path, var in flat_params(self).items():
            for rule in table:
                name = rule.match_ours(path)
                if name is not None:
                    out[name] = np.ascontiguousarray(rule.to_hf(np.asarray(var[...], dtype=np.float32)))
                    break
            else:  # a family whose table misses one of its own parameters is a bug, not user error
                raise RuntimeError(f"{type(self).__name__}: no Hugging Face name for parameter {path}")
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
    ) -> Path:
        """Write a model that PyTorch transformers and sentence-transformers' CrossEncoder load as is.

        Files: ``config.json``, ``model.safetensors`` (Hugging Face names, float32), the tokenizer's files
        when given one (``model_max_length`` set to ``max_length``), and ``config_sentence_transformers.json``
        naming the activation as a dotted torch path (default: Sigmoid for one label, else Identity).
        Everything is written to a temporary directory first and moved into place, so an interrupted save
        leaves the previous model intact; other files already in the directory (evaluation CSVs) are kept.
        """
        from safetensors.numpy import save_file

        if activation_fn is None:
            activation_fn = DEFAULT_ACTIVATIONS[self.num_labels == 1]
        sentence_transformers_config = {
            "__version__": _versions(),
            "activation_fn": activation_fn,
            "default_prompt_name": None,
            "model_type": "CrossEncoder",
            "prompts": {},
        }

        def write(tmp: Path) -> None:
            save_file(self.hf_state_dict(), str(tmp / SAFE_WEIGHTS), metadata={"format": "pt"})
            config = self.export_config()
            config["sentence_transformers"] = {"activation_fn": activation_fn}
            _write_json(tmp / CONFIG, config)
            _write_json(tmp / ST_CONFIG, sentence_transformers_config)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
                if max_length is not None:
                    path = tmp / "tokenizer_config.json"
                    tokenizer_config = json.loads(path.read_text()) if path.exists() else {}
                    tokenizer_config["model_max_length"] = int(max_length)
                    _write_json(path, tokenizer_config)

        check_local_path(save_directory, "save directory")
        return atomic_directory_write(Path(save_directory), write)


DEFAULT_ACTIVATIONS = {True: "torch.nn.modules.activation.Sigmoid", False: "torch.nn.modules.linear.Identity"}
ST_CONFIG = "config_sentence_transformers.json"


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("crossjax", "transformers", "jax", "flax"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def atomic_directory_write(target: Path, write) -> Path:
    """Run ``write(tmp_dir)`` then swap tmp_dir into ``target``; keep files of ``target`` not rewritten."""
    target = Path(target).expanduser().resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the export should be as readable as any dir
    try:
        write(tmp)
        if target.exists():
            for entry in target.iterdir():
                if not (tmp / entry.name).exists():
                    if entry.is_dir():
                        shutil.copytree(entry, tmp / entry.name, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(str(entry), str(tmp / entry.name))
            backup = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, backup)
            os.replace(tmp, target)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def check_local_path(path, what: str) -> None:
    """Exports are written to the local filesystem (atomically); a URL would silently become a local folder."""
    if path is not None and "://" in str(path):
        raise ValueError(
            f"{what} {str(path)!r} is a URL; crossjax writes models and evaluation files to a local directory. "
            "Save locally and copy it (e.g. `gcloud storage cp -r DIR gs://...`); the examples' --output gs://... "
            "does that for you."
        )


def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


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


def load_config(directory: str | os.PathLike, num_labels: int | None = None, **config_kwargs: Any):
    """transformers' AutoConfig for a local directory, with a clear error for a bad config.json."""
    from transformers import AutoConfig

    directory = Path(directory)
    if num_labels is not None:
        config_kwargs["num_labels"] = int(num_labels)
    try:
        return AutoConfig.from_pretrained(str(directory), **config_kwargs)
    except Exception as e:  # noqa: BLE001 - transformers raises ValueError/KeyError/OSError here
        raw = {}
        try:
            raw = json.loads((directory / CONFIG).read_text())
        except (OSError, ValueError) as read_error:
            raise CheckpointError(f"{directory / CONFIG} is not valid JSON: {read_error}") from e
        model_type = raw.get("model_type")
        if model_type is not None:
            from crossjax.models.auto import supported_model_types

            if model_type not in supported_model_types():
                raise CheckpointError(
                    f"{directory / CONFIG}: model_type {model_type!r} is not supported by crossjax; "
                    f"supported: {', '.join(supported_model_types())}"
                ) from e
        raise CheckpointError(f"Could not read the config in {directory / CONFIG}: {e}") from e
