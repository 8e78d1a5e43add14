"""The model base class: embed -> encoder -> classify, loading from and saving to Hugging Face layouts."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax.models import export
from crossjax.models.checkpoints import CheckpointError, load_config, read_state_dict, resolve_checkpoint_dir
from crossjax.models.params import IGNORED_KEYS, ParamRule, flat_params, hf_slots_of, our_slot_of, rename_legacy

logger = logging.getLogger("crossjax")


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
    # Regexes of checkpoint keys the family drops silently (transformers' _keys_to_ignore_on_load_unexpected).
    ignored_unexpected_keys: ClassVar[tuple[str, ...]] = ()

    config: Any
    dtype: Any  # the compute dtype the family was built with (parameters are always float32)
    scan_layers: bool  # layers stacked and run under nnx.scan (True) or unrolled

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        raise NotImplementedError

    @property
    def num_labels(self) -> int:
        return int(self.config.num_labels)

    # Forward pass: embed -> encoder -> classify. Families override ``embed`` or ``classify`` where they differ.
    def embed(self, input_ids: jax.Array, token_type_ids: jax.Array | None, position_ids=None) -> jax.Array:
        return self.embeddings(input_ids, token_type_ids if self.uses_token_types else None, position_ids)

    def classify(self, hidden: jax.Array) -> jax.Array:
        """Logits from hidden states (B, L, H); the heads read position 0 (each pair's first token)."""
        return self.classifier(hidden)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None) -> jax.Array:
        """The encoder's last hidden states (B, L, H): what transformers' base model returns first.

        ``attention_mask`` is (B, L) (padding) or (B, L, L) (pairwise, for packed rows)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        with self.matmul_precision():
            return self.encoder(self.embed(input_ids, token_type_ids, position_ids), attention_mask)

    def __call__(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None, token_type_ids: jax.Array | None = None
    ) -> jax.Array:
        """Logits (B, num_labels) in float32 from integer token arrays (B, L)."""
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
        segments = flat(segment_ids)
        mask = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
        with self.matmul_precision():
            hidden = self.encode(flat(input_ids), mask, flat(token_type_ids), flat(position_ids))
            hidden = hidden.reshape(groups, rows, length, hidden.shape[-1])
            first = jax.vmap(lambda h, r, s: h[r, s])(hidden, pair_row, pair_start)  # (G, P, H)
            logits = self.classify(first.reshape(-1, 1, first.shape[-1]))
        return logits.astype(jnp.float32)

    def matmul_precision(self):
        """float32 compute means float32 matmuls: TPUs (bfloat16 passes) and GPUs (TF32) otherwise round the
        operands of float32 dots by default. bfloat16 compute keeps the platform's default."""
        return jax.default_matmul_precision("highest" if jnp.dtype(self.dtype) == jnp.float32 else "default")

    # ------------------------------------------------------------------------------------- loading
    @classmethod
    def from_config(
        cls, config, *, dtype=jnp.float32, seed: int = 0, scan_layers: bool = True
    ) -> FlaxPreTrainedModel:
        """A freshly initialised model (transformers' initialisation: normal(0, initializer_range)).

        ``scan_layers`` stacks the transformer layers and runs them under ``nnx.scan``: one compiled layer
        body whatever the depth. False unrolls them (one parameter set per layer)."""
        return cls(config, dtype=dtype, rngs=nnx.Rngs(params=seed, dropout=seed + 1), scan_layers=scan_layers)

    def load_hf_state_dict(self, tensors: dict[str, np.ndarray], source: str = "checkpoint") -> LoadingInfo:
        """Fill our parameters from Hugging Face named tensors; return what was missing/unexpected."""
        info = LoadingInfo()
        table = self.param_table(self.config)
        prefix = self.base_model_prefix + "."
        tensors = {rename_legacy(k): v for k, v in tensors.items()}
        if not any(k.startswith(prefix) for k in tensors):
            # A base-model checkpoint (e.g. a sentence-transformers bi-encoder): names lack the prefix.
            tensors = {(k if k.startswith(self.head_prefixes) else prefix + k): v for k, v in tensors.items()}
        ours = flat_params(self)
        filled: set[tuple[str, int | None]] = set()
        stacks: dict[str, np.ndarray] = {}  # scanned layers: filled slice by slice, written once at the end
        for name, array in tensors.items():
            rule, target, layer = our_slot_of(table, name, ours)
            if target is None:
                ignored = any(p.search(name) for p in IGNORED_KEYS) or any(
                    re.search(p, name) for p in self.ignored_unexpected_keys
                )
                if not ignored:
                    info.unexpected_keys.append(name)
                continue
            value = rule.to_ours(array)
            var = ours[target]
            shape = tuple(var.shape) if layer is None else tuple(var.shape[1:])
            if layer is not None and layer >= var.shape[0]:
                info.unexpected_keys.append(name)  # a layer beyond the config's num_hidden_layers
                continue
            if tuple(value.shape) != shape:
                expected = tuple(rule.to_hf(np.empty(shape)).shape)
                if name.startswith(self.head_prefixes):
                    info.mismatched_keys.append((name, tuple(array.shape), expected))
                    continue
                raise CheckpointError(
                    f"{source}: parameter {name} has shape {tuple(array.shape)}, but the config implies {expected}"
                )
            if layer is None:
                var[...] = jnp.asarray(value, dtype=var[...].dtype)
            else:
                if target not in stacks:
                    stacks[target] = np.array(var[...])
                stacks[target][layer] = value
            filled.add((target, layer))
        for target, stacked in stacks.items():
            ours[target][...] = jnp.asarray(stacked, dtype=ours[target][...].dtype)
        for path, var in ours.items():
            for name, _, layer in hf_slots_of(table, path, var.shape[0] if var.ndim else 0):
                if (path, layer) not in filled:
                    info.missing_keys.append(name)
            if not hf_slots_of(table, path, var.shape[0] if var.ndim else 0):
                info.missing_keys.append(path)
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
        scan_layers: bool = True,
        output_loading_info: bool = False,
        config_kwargs: dict | None = None,
        **hub_kwargs: Any,
    ):
        directory = resolve_checkpoint_dir(name_or_path, **hub_kwargs)
        if config is None:
            config = load_config(directory, num_labels=num_labels, **(config_kwargs or {}))
        model = cls.from_config(config, dtype=dtype, seed=seed, scan_layers=scan_layers)
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
        )


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

