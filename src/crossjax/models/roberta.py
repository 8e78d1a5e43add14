"""RoBERTa and XLM-RoBERTa for sequence classification: encoder + first-token head (dense, tanh).

Mirrors ``transformers.RobertaForSequenceClassification`` / ``XLMRobertaForSequenceClassification``: positions
count real tokens from ``pad_token_id + 1``, there is no pooler (a base checkpoint's ``roberta.pooler.*`` is
reported unexpected, as transformers does), and token types are used only when ``type_vocab_size > 1``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.bert import bert_embeddings, classifier_dropout, encoder_kwargs
from crossjax.models.layers import Encoder, FirstTokenClassificationHead
from crossjax.models.params import ParamRule, bert_style_embeddings, bert_style_layer, linear


class RobertaForSequenceClassification(FlaxPreTrainedModel):
    model_types = ("roberta",)
    architecture = "RobertaForSequenceClassification"
    base_model_prefix = "roberta"
    head_prefixes = ("classifier.",)
    last_layer_for_first_tokens = True

    def __init__(self, config, *, dtype=jnp.float32, rngs: nnx.Rngs, scan_layers: bool = True):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        self.embeddings = bert_embeddings(config, dtype, rngs, positions_from_padding=True)
        self.encoder = Encoder(scan=scan_layers, **encoder_kwargs(config, dtype, rngs))
        self.classifier = FirstTokenClassificationHead(
            config.hidden_size,
            config.num_labels,
            act="tanh",
            dropout=classifier_dropout(config),
            std=config.initializer_range,
            dtype=dtype,
            rngs=rngs,
        )

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        base = cls.base_model_prefix
        return [
            *bert_style_embeddings(f"{base}.embeddings"),
            *bert_style_layer(f"{base}.encoder.layer.{{i}}"),
            *linear("classifier.dense", "classifier.dense"),
            *linear("classifier.out_proj", "classifier.out_proj"),
        ]

    def reads_token_types(self) -> bool:
        # a single type: transformers' tokenizers send none, so given ones are ignored and all embed as type 0
        return self.config.type_vocab_size > 1


class XLMRobertaForSequenceClassification(RobertaForSequenceClassification):
    """XLM-RoBERTa: RoBERTa's architecture and parameter names (prefix ``roberta``), its own model_type."""

    model_types = ("xlm-roberta",)
    architecture = "XLMRobertaForSequenceClassification"
