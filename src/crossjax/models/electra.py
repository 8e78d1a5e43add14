"""ELECTRA for sequence classification: embeddings (of ``embedding_size``, projected to ``hidden_size`` when
they differ) + BERT-layout encoder + first-token head (dense, exact GELU).

Mirrors ``transformers.ElectraForSequenceClassification`` (with ``ElectraClassificationHead``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.bert import bert_embeddings, classifier_dropout, encoder_kwargs
from crossjax.models.layers import Encoder, FirstTokenClassificationHead, dense
from crossjax.models.params import ParamRule, bert_style_embeddings, bert_style_layer, linear


def _projects(config) -> bool:
    return config.embedding_size != config.hidden_size


class ElectraForSequenceClassification(FlaxPreTrainedModel):
    model_types = ("electra",)
    architecture = "ElectraForSequenceClassification"
    base_model_prefix = "electra"
    head_prefixes = ("classifier.",)
    last_layer_for_first_tokens = True

    def __init__(self, config, *, dtype=jnp.float32, rngs: nnx.Rngs, scan_layers: bool = True):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        std = config.initializer_range
        self.embeddings = bert_embeddings(config, dtype, rngs, features=config.embedding_size)
        self.embeddings_project = (
            dense(config.embedding_size, config.hidden_size, std=std, dtype=dtype, rngs=rngs)
            if _projects(config)
            else None
        )
        self.encoder = Encoder(scan=scan_layers, **encoder_kwargs(config, dtype, rngs))
        self.classifier = FirstTokenClassificationHead(
            config.hidden_size,
            config.num_labels,
            act="gelu",
            dropout=classifier_dropout(config),
            std=std,
            dtype=dtype,
            rngs=rngs,
        )

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        return [
            *bert_style_embeddings("electra.embeddings"),
            *(linear("electra.embeddings_project", "embeddings_project") if _projects(config) else []),
            *bert_style_layer("electra.encoder.layer.{i}"),
            *linear("classifier.dense", "classifier.dense"),
            *linear("classifier.out_proj", "classifier.out_proj"),
        ]

    def embed(self, input_ids: jax.Array, token_type_ids: jax.Array | None, position_ids=None) -> jax.Array:
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        return x if self.embeddings_project is None else self.embeddings_project(x)
