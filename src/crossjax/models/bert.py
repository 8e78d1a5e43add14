"""BERT for sequence classification: encoder + pooler (dense, tanh on [CLS]) + classifier.

Mirrors ``transformers.BertForSequenceClassification``; the table below is the single source of truth for
Hugging Face parameter names in both directions.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import nnx

from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.layers import Dropout, Embeddings, Encoder, config_dropout, dense
from crossjax.models.params import ParamRule, bert_style_embeddings, bert_style_layer, linear

logger = logging.getLogger("crossjax")


def encoder_kwargs(config, dtype, rngs: nnx.Rngs) -> dict:
    """Keyword arguments of :class:`Encoder` from a BERT-style config (shared with RoBERTa and ELECTRA)."""
    if getattr(config, "is_decoder", False):  # transformers then masks attention causally: other scores
        raise ValueError(
            f"{config.model_type} config has is_decoder=True (causal attention, as in a decoder); crossjax's "
            "encoders attend both ways, so they would score it differently: set is_decoder=False for a cross-encoder"
        )
    positions = getattr(config, "position_embedding_type", None)
    if positions not in (None, "absolute"):
        logger.warning(
            "%s config has position_embedding_type=%r: transformers 5 (and crossjax) compute absolute positions only "
            "and leave its distance_embedding unused, so a model trained with relative positions (transformers < 5) "
            "scores differently here",
            config.model_type,
            positions,
        )
    return dict(
        num_layers=config.num_hidden_layers,
        hidden=config.hidden_size,
        heads=config.num_attention_heads,
        intermediate=config.intermediate_size,
        act=config.hidden_act,
        eps=config.layer_norm_eps,
        hidden_dropout=config_dropout(config, "hidden_dropout_prob"),
        attention_dropout=config_dropout(config, "attention_probs_dropout_prob"),
        std=config.initializer_range,
        dtype=dtype,
        rngs=rngs,
    )


def classifier_dropout(config) -> float:
    value = getattr(config, "classifier_dropout", None)
    return config_dropout(config, "hidden_dropout_prob") if value is None else float(value)


def bert_embeddings(config, dtype, rngs: nnx.Rngs, *, features: int | None = None, **kwargs) -> Embeddings:
    """The BERT-layout embeddings of a config (shared with RoBERTa and ELECTRA)."""
    if not config.type_vocab_size >= 1:  # transformers' model fails on it (a table of 0 rows, read for every token)
        raise ValueError(
            f"{config.model_type} config has type_vocab_size={config.type_vocab_size!r}: its embeddings add a "
            "token-type vector to every token, so it needs at least 1"
        )
    return Embeddings(
        vocab_size=config.vocab_size,
        features=config.hidden_size if features is None else features,
        max_positions=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        eps=config.layer_norm_eps,
        dropout=config_dropout(config, "hidden_dropout_prob"),
        std=config.initializer_range,
        dtype=dtype,
        rngs=rngs,
        pad_token_id=config.pad_token_id,
        **kwargs,
    )


class BertForSequenceClassification(FlaxPreTrainedModel):
    model_types = ("bert",)
    architecture = "BertForSequenceClassification"
    base_model_prefix = "bert"
    head_prefixes = ("classifier.",)
    last_layer_for_first_tokens = True

    def __init__(self, config, *, dtype=jnp.float32, rngs: nnx.Rngs, scan_layers: bool = True):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        self.embeddings = bert_embeddings(config, dtype, rngs)
        self.encoder = Encoder(scan=scan_layers, **encoder_kwargs(config, dtype, rngs))
        std = config.initializer_range
        self.pooler = dense(config.hidden_size, config.hidden_size, std=std, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(classifier_dropout(config), rngs=rngs)
        self.classifier = dense(config.hidden_size, config.num_labels, std=std, dtype=dtype, rngs=rngs)

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        return [
            *bert_style_embeddings("bert.embeddings"),
            *bert_style_layer("bert.encoder.layer.{i}"),
            *linear("bert.pooler.dense", "pooler"),
            *linear("classifier", "classifier"),
        ]

    def classify(self, hidden: jax.Array) -> jax.Array:
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))
        return self.classifier(self.dropout(pooled))
