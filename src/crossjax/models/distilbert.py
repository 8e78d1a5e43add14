"""DistilBERT for sequence classification: word + position embeddings, six-ish post-LayerNorm layers, and
``pre_classifier`` -> ReLU -> dropout -> ``classifier`` on the first token.

Mirrors ``transformers.DistilBertForSequenceClassification``. DistilBERT has no token types (they are
accepted and ignored) and, unlike BERT, no dropout on the attention block's output.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.layers import Embeddings, Encoder, FirstTokenClassificationHead, config_dropout
from crossjax.models.params import ParamRule, bert_style_embeddings, linear, norm

EPS = 1e-12  # hard-coded in transformers' DistilBERT for every LayerNorm


def sinusoidal_positions(n_pos: int, dim: int) -> np.ndarray:
    """transformers' ``create_sinusoidal_embeddings`` (used at init when ``sinusoidal_pos_embds``)."""
    position_enc = np.array([[pos / np.power(10000, 2 * (j // 2) / dim) for j in range(dim)] for pos in range(n_pos)])
    out = np.empty((n_pos, dim), dtype=np.float32)
    out[:, 0::2] = np.sin(position_enc[:, 0::2])
    out[:, 1::2] = np.cos(position_enc[:, 1::2])
    return out


def distilbert_layer(hf: str, ours: str = "encoder.layers.{i}") -> list[ParamRule]:
    return [
        *linear(f"{hf}.attention.q_lin", f"{ours}.query"),
        *linear(f"{hf}.attention.k_lin", f"{ours}.key"),
        *linear(f"{hf}.attention.v_lin", f"{ours}.value"),
        *linear(f"{hf}.attention.out_lin", f"{ours}.attention_out"),
        *norm(f"{hf}.sa_layer_norm", f"{ours}.attention_norm"),
        *linear(f"{hf}.ffn.lin1", f"{ours}.ffn_in"),
        *linear(f"{hf}.ffn.lin2", f"{ours}.ffn_out"),
        *norm(f"{hf}.output_layer_norm", f"{ours}.ffn_norm"),
    ]


class DistilBertForSequenceClassification(FlaxPreTrainedModel):
    model_types = ("distilbert",)
    architecture = "DistilBertForSequenceClassification"
    base_model_prefix = "distilbert"
    head_prefixes = ("pre_classifier.", "classifier.")
    last_layer_for_first_tokens = True
    uses_token_types = False
    activation_keys = ("activation",)
    classifier_dropout_key = "seq_classif_dropout"

    def __init__(self, config, *, dtype=jnp.float32, rngs: nnx.Rngs, scan_layers: bool = True):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        std = config.initializer_range
        self.embeddings = Embeddings(
            vocab_size=config.vocab_size,
            features=config.dim,
            max_positions=config.max_position_embeddings,
            type_vocab_size=0,
            eps=EPS,
            dropout=config_dropout(config, "dropout"),
            std=std,
            dtype=dtype,
            rngs=rngs,
            pad_token_id=config.pad_token_id,
        )
        if getattr(config, "sinusoidal_pos_embds", False):
            table = sinusoidal_positions(config.max_position_embeddings, config.dim)
            self.embeddings.position.embedding[...] = jnp.asarray(table, jnp.float32)
        self.encoder = Encoder(
            scan=scan_layers,
            num_layers=config.n_layers,
            hidden=config.dim,
            heads=config.n_heads,
            intermediate=config.hidden_dim,
            act=config.activation,
            eps=EPS,
            hidden_dropout=config_dropout(config, "dropout"),
            attention_dropout=config_dropout(config, "attention_dropout"),
            std=std,
            dtype=dtype,
            rngs=rngs,
            attention_output_dropout=False,
        )
        self.classifier = FirstTokenClassificationHead(
            config.dim,
            config.num_labels,
            act="relu",
            dropout=config_dropout(config, "seq_classif_dropout", 0.2),
            std=std,
            dtype=dtype,
            rngs=rngs,
            input_dropout=False,
        )

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        return [
            *bert_style_embeddings("distilbert.embeddings", token_types=False),
            *distilbert_layer("distilbert.transformer.layer.{i}"),
            *linear("pre_classifier", "classifier.dense"),
            *linear("classifier", "classifier.out_proj"),
        ]
