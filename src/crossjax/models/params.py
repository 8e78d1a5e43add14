"""The key-table engine: one declarative table per family maps Hugging Face names <-> our nnx paths.

Each model family declares ONE table of :class:`ParamRule` rows. The same rows drive loading (HF -> ours),
export (ours -> HF) and the weight-decay rule (which is stated on HF names), so they can never drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import nnx

# Buffers and legacy keys that transformers itself drops silently.
IGNORED_KEYS = (re.compile(r"(^|\.)position_ids$"), re.compile(r"(^|\.)token_type_ids$"))


@dataclass(frozen=True)
class ParamRule:
    """One row of a family's table: ``{i}`` stands for a layer index on both sides.

    ``transpose`` is for ``nn.Linear`` weights: PyTorch stores (out, in), nnx kernels are (in, out). With
    scanned layers our side holds one array per row with the layers stacked on axis 0, at ``stacked_ours``
    (the ``ours`` path without its ``.{i}``); layer ``i``'s Hugging Face tensor is that array's slice ``i``.
    """

    hf: str
    ours: str
    transpose: bool = False
    first_layer: int = 0  # layers below it have no such tensor (ModernBERT's layer 0 has no attention norm)

    def _regex(self, template: str) -> re.Pattern:
        return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def match_hf(self, name: str) -> str | None:
        m = self._regex(self.hf).match(name)
        if m is None or int(m.groupdict().get("i") or 0) < self.first_layer:
            return None
        return self.ours.format(**m.groupdict())

    def match_ours(self, path: str) -> str | None:
        m = self._regex(self.ours).match(path)
        return None if m is None else self.hf.format(**m.groupdict())

    @property
    def stacked_ours(self) -> str | None:
        return self.ours.replace(".{i}", "") if ".{i}" in self.ours else None

    def layer_of(self, name: str) -> int | None:
        """The layer index in a Hugging Face name this row matches (None for rows without ``{i}``)."""
        m = self._regex(self.hf).match(name)
        return None if m is None or "i" not in m.groupdict() else int(m.group("i"))

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



def rename_legacy(key: str) -> str:
    """Old TF-converted checkpoints name LayerNorm parameters gamma/beta; transformers renames them too."""
    if key.endswith(".gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith(".beta"):
        return key[: -len("beta")] + "bias"
    return key


def flat_params(model: nnx.Module) -> dict[str, Any]:
    """Our parameters as {"a.b.0.kernel": nnx.Param}."""
    return {".".join(map(str, path)): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def hf_name_of(table: Sequence[ParamRule], path: str) -> str | None:
    """The Hugging Face name of our parameter ``path`` (dotted), or None when no row matches.

    For a stacked (scanned-layers) path, its first layer's name: every layer of a stack follows the same row.
    """
    return next((name for rule in table if (name := rule.match_ours(path)) is not None), None) or next(
        (rule.hf.format(i=rule.first_layer) for rule in table if rule.stacked_ours == path), None
    )


def hf_slots_of(table: Sequence[ParamRule], path: str, layers: int) -> list[tuple[str, ParamRule, int | None]]:
    """Every Hugging Face tensor our parameter ``path`` holds: ``[(name, row, layer index or None)]``.

    An unstacked path holds one tensor; a stacked one (``layers`` on axis 0) holds one per layer.
    """
    for rule in table:
        name = rule.match_ours(path)
        if name is not None:
            return [(name, rule, None)]
        if rule.stacked_ours == path:
            return [(rule.hf.format(i=i), rule, i) for i in range(rule.first_layer, layers)]
    return []


def our_slot_of(
    table: Sequence[ParamRule], name: str, ours: Collection[str]
) -> tuple[ParamRule | None, str | None, int | None]:
    """Where the Hugging Face tensor ``name`` goes among our parameter paths ``ours``: (row, path, layer index).

    The layer index is None for an unstacked target and the layer for a stacked one; (None, None, None) when
    no row matches or the model has no such parameter.
    """
    rule, path = our_path_of(table, name)
    if rule is None:
        return None, None, None
    if path in ours:
        return rule, path, None
    if rule.stacked_ours in ours:
        return rule, rule.stacked_ours, rule.layer_of(name)
    return None, None, None


def our_path_of(table: Sequence[ParamRule], name: str) -> tuple[ParamRule | None, str | None]:
    """The row and our path for the Hugging Face parameter ``name``, or (None, None)."""
    return next(((rule, path) for rule in table if (path := rule.match_hf(name)) is not None), (None, None))
