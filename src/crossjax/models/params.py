"""The key-table engine: one declarative table per family maps Hugging Face names <-> our nnx paths.

Each model family declares ONE table of :class:`ParamRule` rows. The same rows drive loading (HF -> ours),
export (ours -> HF) and the weight-decay rule (which is stated on HF names), so they can never drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import nnx

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
    """The Hugging Face name of our parameter ``path`` (dotted), or None when no row matches."""
    return next((name for rule in table if (name := rule.match_ours(path)) is not None), None)


def our_path_of(table: Sequence[ParamRule], name: str) -> tuple[ParamRule | None, str | None]:
    """The row and our path for the Hugging Face parameter ``name``, or (None, None)."""
    return next(((rule, path) for rule in table if (path := rule.match_hf(name)) is not None), (None, None))
