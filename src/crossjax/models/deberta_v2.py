"""DeBERTa-v2 / v3 for sequence classification: disentangled attention over log-bucketed relative positions,
an optional convolution after the first layer, and ``ContextPooler`` (dropout, dense, activation on token 0)
-> dropout -> ``classifier``.

Mirrors ``transformers.DebertaV2ForSequenceClassification`` (transformers 5). Packed rows (several pairs per
row, see :mod:`crossjax.packing`) work because relative positions come from each token's ``position_ids``
(restarting at 0 in every pair), never from its column, and the convolution sees only neighbours of the
same pair. DeBERTa v1 (``model_type`` ``deberta``: fused ``in_proj``, talking heads) is not covered here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax.models.base import FlaxPreTrainedModel
from crossjax.models.layers import (
    Dropout,
    Encoder,
    EncoderLayer,
    activation,
    config_dropout,
    dense,
    embedding,
    layer_norm,
    normal_init,
    scaled_dot_product_attention,
    scanned_layer,
)
from crossjax.models.params import ParamRule, embed, linear, norm

Array = jax.Array


# ------------------------------------------------------------------------------------------ config facts
def pos_att_types(config) -> tuple[str, ...]:
    value = getattr(config, "pos_att_type", None) or ()
    if isinstance(value, str):  # the old "p2c|c2p" spelling
        value = [x.strip() for x in value.lower().split("|")]
    return tuple(value)


def relative_attention(config) -> bool:
    return bool(getattr(config, "relative_attention", False))


def max_relative_positions(config) -> int:
    value = int(getattr(config, "max_relative_positions", -1))
    return config.max_position_embeddings if value < 1 else value


def position_buckets(config) -> int:
    return int(getattr(config, "position_buckets", -1))


def attention_span(config) -> int:
    """Half the number of relative-position embeddings (transformers' ``pos_ebd_size``)."""
    buckets = position_buckets(config)
    return buckets if buckets > 0 else max_relative_positions(config)


def has_relative_norm(config) -> bool:
    return "layer_norm" in [x.strip() for x in str(getattr(config, "norm_rel_ebd", "none")).lower().split("|")]


def conv_kernel_size(config) -> int:
    return int(getattr(config, "conv_kernel_size", 0) or 0)


def embedding_size(config) -> int:
    return int(getattr(config, "embedding_size", None) or config.hidden_size)


def separate_position_projections(config) -> tuple[bool, bool]:
    """Whether the layers own ``pos_key_proj`` (c2p) and ``pos_query_proj`` (p2c): only without share_att_key."""
    if not relative_attention(config) or getattr(config, "share_att_key", False):
        return False, False
    types = pos_att_types(config)
    return "c2p" in types, "p2c" in types


# ------------------------------------------------------------------------------------ relative positions
def log_bucket_position(relative: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' ``make_log_bucket_position`` in NumPy float32, the same operations in the same order.

    Evaluated on the host into a lookup table: XLA's float32 ``log`` rounds differently from PyTorch's on a
    few distances (e.g. 2 of 40001 for buckets 256 / max 512), which would move them to another bucket."""
    relative = np.asarray(relative, dtype=np.int64)
    mid = bucket_size // 2
    abs_pos = np.where((relative < mid) & (relative > -mid), mid - 1, np.abs(relative))
    far = abs_pos > mid
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (abs_pos / mid).astype(np.float32)
        log_pos = np.ceil(np.log(ratio) / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1))
    log_pos = log_pos + np.float32(mid)
    if not np.isfinite(log_pos[far]).all():
        raise ValueError(
            f"position_buckets={bucket_size} with max_relative_positions={max_position} gives no finite log "
            "bucket (transformers divides by log((max_relative_positions - 1) / (position_buckets // 2))): "
            "use max_relative_positions > position_buckets // 2 + 1"
        )
    bucketed = np.where(far, log_pos * np.sign(relative), relative.astype(np.float32))
    return bucketed.astype(np.int64)


def relative_index_tables(config, length: int) -> tuple[np.ndarray, np.ndarray]:
    """For every distance d = pos_q - pos_k in [-(length - 1), length - 1] (entry d + length - 1): the row of
    the relative embeddings that the c2p term and the p2c term read, clamped as transformers does."""
    distance = np.arange(-(length - 1), length)
    buckets, span = position_buckets(config), attention_span(config)

    def bucket(d: np.ndarray) -> np.ndarray:
        return log_bucket_position(d, buckets, max_relative_positions(config)) if buckets > 0 else d

    c2p = np.clip(bucket(distance) + span, 0, 2 * span - 1)
    p2c = np.clip(-bucket(-distance) + span, 0, 2 * span - 1)  # transformers: -r_pos[k, q] for key k, query q
    return c2p.astype(np.int32), p2c.astype(np.int32)


def relative_indices(config, positions: Array) -> tuple[Array, Array]:
    """(B, L, L) rows of the relative embeddings for c2p and p2c from per-token positions (B, L)."""
    length = positions.shape[1]
    c2p, p2c = relative_index_tables(config, length)
    distance = jnp.clip(positions[:, :, None] - positions[:, None, :] + (length - 1), 0, 2 * length - 2)
    return jnp.asarray(c2p)[distance], jnp.asarray(p2c)[distance]


# ------------------------------------------------------------------------------------------------ modules
class DebertaV2Embeddings(nnx.Module):
    """Word (+ absolute position when ``position_biased_input``) (+ token type) embeddings of
    ``embedding_size``, projected to ``hidden_size`` without bias when they differ, LayerNorm, multiplied by
    the token mask, dropout."""

    def __init__(self, config, *, dtype, rngs: nnx.Rngs):
        std, features = config.initializer_range, embedding_size(config)
        self.word = embedding(
            config.vocab_size, features, std=std, dtype=dtype, rngs=rngs, padding_idx=config.pad_token_id
        )
        self.position = (
            embedding(config.max_position_embeddings, features, std=std, dtype=dtype, rngs=rngs)
            if getattr(config, "position_biased_input", True)
            else None
        )
        self.token_type = (
            embedding(config.type_vocab_size, features, std=std, dtype=dtype, rngs=rngs)
            if config.type_vocab_size > 0
            else None
        )
        self.project = (
            dense(features, config.hidden_size, std=std, dtype=dtype, rngs=rngs, use_bias=False)
            if features != config.hidden_size
            else None
        )
        self.norm = layer_norm(config.hidden_size, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(config_dropout(config, "hidden_dropout_prob"), rngs=rngs)

    def __call__(self, input_ids: Array, token_type_ids: Array | None, positions: Array, tokens: Array) -> Array:
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position(positions)
        if self.token_type is not None:
            x = x + self.token_type(jnp.zeros_like(input_ids) if token_type_ids is None else token_type_ids)
        if self.project is not None:
            x = self.project(x)
        x = self.norm(x) * tokens[..., None].astype(x.dtype)
        return self.dropout(x)


class DisentangledLayer(EncoderLayer):
    """A post-LayerNorm layer whose attention adds DeBERTa's content->position (c2p) and position->content
    (p2c) terms, scaled by sqrt(head_dim * (1 + number of those terms in ``pos_att_type``))."""

    def __init__(
        self,
        *,
        pos_att_type: tuple[str, ...],
        relative: bool,
        share_att_key: bool,
        pos_key: bool,
        pos_query: bool,
        pos_dropout: float,
        **kwargs,
    ):
        super().__init__(**kwargs)
        hidden, std, dtype, rngs = kwargs["hidden"], kwargs["std"], kwargs["dtype"], kwargs["rngs"]
        self.c2p = "c2p" in pos_att_type
        self.p2c = "p2c" in pos_att_type
        self.relative = relative
        self.share_att_key = share_att_key
        self.pos_key = dense(hidden, hidden, std=std, dtype=dtype, rngs=rngs) if pos_key else None
        self.pos_query = dense(hidden, hidden, std=std, dtype=dtype, rngs=rngs) if pos_query else None
        self.pos_dropout = Dropout(pos_dropout, rngs=rngs)

    def attention(self, x: Array, mask: Array, c2p_index: Array, p2c_index: Array, rel_embeddings: Array) -> Array:
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads
        split = lambda t: t.reshape(*t.shape[:-1], self.heads, head_dim)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        divisor = float(np.sqrt(np.float32(head_dim) * np.float32(1 + self.c2p + self.p2c)))
        bias = None
        if self.relative and (self.c2p or self.p2c):
            rel = self.pos_dropout(rel_embeddings).astype(x.dtype)  # (2 * span, H)
            bias = 0.0
            if self.c2p:
                pos_key = split((self.key if self.share_att_key else self.pos_key)(rel))
                c2p = jnp.einsum("bqhd,rhd->bhqr", q, pos_key, preferred_element_type=jnp.float32)
                bias = bias + jnp.take_along_axis(c2p, c2p_index[:, None], axis=-1) / divisor
            if self.p2c:
                pos_query = split((self.query if self.share_att_key else self.pos_query)(rel))
                p2c = jnp.einsum("bkhd,rhd->bhkr", k, pos_query, preferred_element_type=jnp.float32)
                p2c = jnp.take_along_axis(p2c, jnp.swapaxes(p2c_index, 1, 2)[:, None], axis=-1)  # (B, H, k, q)
                bias = bias + jnp.swapaxes(p2c, -1, -2) / divisor
        attended = scaled_dot_product_attention(q, k, v, mask, self.attention_dropout, bias=bias, score_divisor=divisor)
        return attended.reshape(batch, length, hidden)


class SegmentConv(nnx.Module):
    """transformers' ``ConvLayer`` (after the first layer): Conv1d over the embeddings, masked, activation,
    LayerNorm with the layer's output, masked. A token's window reads only tokens of its own pair (the
    pairwise mask), which is what zero padding gives a pair alone."""

    def __init__(self, config, *, dtype, rngs: nnx.Rngs):
        hidden, size = config.hidden_size, conv_kernel_size(config)
        self.groups = int(getattr(config, "conv_groups", 1) or 1)
        if size % 2 == 0:
            raise ValueError(f"conv_kernel_size={size}: transformers' ConvLayer only works with an odd kernel")
        if hidden % self.groups:
            raise ValueError(f"hidden_size {hidden} is not a multiple of conv_groups {self.groups}")
        # nnx.Conv's layout (kernel, in / groups, out) is PyTorch's (out, in / groups, kernel) reversed.
        shape = (size, hidden // self.groups, hidden)
        self.kernel = nnx.Param(normal_init(config.initializer_range)(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((hidden,), jnp.float32))
        self.norm = layer_norm(hidden, config.layer_norm_eps, dtype=dtype, rngs=rngs)
        self.act = activation(getattr(config, "conv_act", "tanh"), "conv_act")
        self.dropout = Dropout(config_dropout(config, "hidden_dropout_prob"), rngs=rngs)
        self.dtype = dtype

    def convolve(self, x: Array, pair_mask: Array, tokens: Array) -> Array:
        """act(dropout(conv(x))) with padding positions zeroed: the part that does not need the layer output."""
        batch, length, hidden = x.shape
        size = self.kernel.shape[0]
        kernel = self.kernel[...].astype(self.dtype).reshape(size, hidden // self.groups, self.groups, -1)
        grouped = x.astype(self.dtype).reshape(batch, length, self.groups, hidden // self.groups)
        out = jnp.zeros((batch, length, hidden), jnp.float32)
        for tap in range(size):
            offset = tap - (size - 1) // 2  # the token at t + offset feeds output t
            neighbour = jnp.roll(grouped, -offset, axis=1)
            same_pair = jnp.diagonal(pair_mask, offset=offset, axis1=1, axis2=2)  # [b, t] = mask[b, t, t + offset]
            same_pair = jnp.pad(same_pair, ((0, 0), (max(-offset, 0), max(offset, 0))))
            neighbour = neighbour * same_pair[:, :, None, None].astype(neighbour.dtype)
            step = jnp.einsum("blgi,igo->blgo", neighbour, kernel[tap], preferred_element_type=jnp.float32)
            out = out + step.reshape(batch, length, hidden)
        out = (out + self.bias[...]).astype(self.dtype) * tokens[..., None].astype(self.dtype)
        return self.act(self.dropout(out))

    def finish(self, layer_output: Array, convolved: Array, tokens: Array) -> Array:
        return self.norm(layer_output + convolved) * tokens[..., None].astype(layer_output.dtype)


class DebertaV2Encoder(Encoder):
    """The layers (stacked under ``nnx.scan`` or unrolled, as :class:`Encoder`), with the convolution's
    output folded into the first layer's output when the config has one."""

    def __call__(self, x: Array, conv: SegmentConv | None, convolved: Array | None, tokens: Array, *args) -> Array:
        if not self.scan:
            for index, layer in enumerate(self.layers):
                x = layer(x, *args)
                if index == 0 and conv is not None:
                    x = conv.finish(x, convolved, tokens)
            return x
        first = jnp.arange(self.num_layers) == 0

        @nnx.scan(in_axes=(0, nnx.Carry, 0, None, None, None, *(None,) * len(args)), out_axes=nnx.Carry)
        @scanned_layer
        def apply(layer, x, is_first, conv, convolved, tokens, *args):
            x = layer(x, *args)
            if conv is not None:
                x = jnp.where(is_first, conv.finish(x, convolved, tokens), x)
            return x

        return apply(self.layers, x, first, conv, convolved, tokens, *args)


def deberta_layer(hf: str, config, ours: str = "encoder.layers.{i}") -> list[ParamRule]:
    pos_key, pos_query = separate_position_projections(config)
    return [
        *linear(f"{hf}.attention.self.query_proj", f"{ours}.query"),
        *linear(f"{hf}.attention.self.key_proj", f"{ours}.key"),
        *linear(f"{hf}.attention.self.value_proj", f"{ours}.value"),
        *(linear(f"{hf}.attention.self.pos_key_proj", f"{ours}.pos_key") if pos_key else []),
        *(linear(f"{hf}.attention.self.pos_query_proj", f"{ours}.pos_query") if pos_query else []),
        *linear(f"{hf}.attention.output.dense", f"{ours}.attention_out"),
        *norm(f"{hf}.attention.output.LayerNorm", f"{ours}.attention_norm"),
        *linear(f"{hf}.intermediate.dense", f"{ours}.ffn_in"),
        *linear(f"{hf}.output.dense", f"{ours}.ffn_out"),
        *norm(f"{hf}.output.LayerNorm", f"{ours}.ffn_norm"),
    ]


class DebertaV2ForSequenceClassification(FlaxPreTrainedModel):
    model_types = ("deberta-v2",)
    architecture = "DebertaV2ForSequenceClassification"
    base_model_prefix = "deberta"
    head_prefixes = ("pooler.", "classifier.")
    ignored_unexpected_keys = ("position_embeddings",)  # as transformers (v3 checkpoints without them in use)
    activation_keys = ("hidden_act", "pooler_hidden_act", "conv_act")
    classifier_dropout_key = "cls_dropout"

    def __init__(self, config, *, dtype=jnp.float32, rngs: nnx.Rngs, scan_layers: bool = True):
        self.config = config
        self.dtype = dtype
        self.scan_layers = scan_layers
        std, hidden = config.initializer_range, config.hidden_size
        heads = config.num_attention_heads
        head_size = getattr(config, "attention_head_size", None)
        if hidden % heads or (head_size is not None and head_size * heads != hidden):
            raise ValueError(f"hidden_size {hidden} must be num_attention_heads {heads} x the attention head size")
        if relative_attention(config) and position_buckets(config) > 0:  # a bad bucket config fails here, not in jit
            relative_index_tables(config, position_buckets(config) + 2)
        pos_key, pos_query = separate_position_projections(config)
        self.embeddings = DebertaV2Embeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = DebertaV2Encoder(
            config.num_hidden_layers,
            scan=scan_layers,
            layer=DisentangledLayer,
            hidden=hidden,
            heads=heads,
            intermediate=config.intermediate_size,
            act=config.hidden_act,
            eps=config.layer_norm_eps,
            hidden_dropout=config_dropout(config, "hidden_dropout_prob"),
            attention_dropout=config_dropout(config, "attention_probs_dropout_prob"),
            std=std,
            dtype=dtype,
            rngs=rngs,
            pos_att_type=pos_att_types(config),
            relative=relative_attention(config),
            share_att_key=bool(getattr(config, "share_att_key", False)),
            pos_key=pos_key,
            pos_query=pos_query,
            pos_dropout=config_dropout(config, "hidden_dropout_prob"),
        )
        self.rel_embeddings = (
            embedding(2 * attention_span(config), hidden, std=std, dtype=dtype, rngs=rngs)
            if relative_attention(config)
            else None
        )
        self.rel_norm = (
            layer_norm(hidden, config.layer_norm_eps, dtype=dtype, rngs=rngs) if has_relative_norm(config) else None
        )
        self.conv = SegmentConv(config, dtype=dtype, rngs=rngs) if conv_kernel_size(config) > 0 else None
        pooler_hidden = int(getattr(config, "pooler_hidden_size", hidden))
        if pooler_hidden != hidden:  # the pooler reads the first token's hidden state (transformers fails there)
            raise ValueError(
                f"DeBERTa-v2 pooler_hidden_size={pooler_hidden} differs from hidden_size={hidden}: the pooler "
                "reads the first token's hidden state, so they must be equal"
            )
        self.pooler_dropout = Dropout(config_dropout(config, "pooler_dropout", 0.0), rngs=rngs)
        self.pooler = dense(pooler_hidden, pooler_hidden, std=std, dtype=dtype, rngs=rngs)
        self.pooler_act = activation(getattr(config, "pooler_hidden_act", "gelu"), "pooler_hidden_act")
        cls_dropout = getattr(config, "cls_dropout", None)
        self.dropout = Dropout(
            config_dropout(config, "hidden_dropout_prob") if cls_dropout is None else float(cls_dropout), rngs=rngs
        )
        self.classifier = dense(hidden, config.num_labels, std=std, dtype=dtype, rngs=rngs)

    @property
    def position_limit(self) -> int | None:  # without absolute positions (v3), relative ones have no limit
        return super().position_limit if getattr(self.config, "position_biased_input", True) else None

    @property
    def uses_token_types(self) -> bool:  # DeBERTa-v3 has type_vocab_size 0: its tokenizer's types are unused
        return self.config.type_vocab_size > 0

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        base = f"{cls.base_model_prefix}"
        rows = [*embed(f"{base}.embeddings.word_embeddings", "embeddings.word")]
        if getattr(config, "position_biased_input", True):
            rows += embed(f"{base}.embeddings.position_embeddings", "embeddings.position")
        if config.type_vocab_size > 0:
            rows += embed(f"{base}.embeddings.token_type_embeddings", "embeddings.token_type")
        if embedding_size(config) != config.hidden_size:
            rows.append(ParamRule(f"{base}.embeddings.embed_proj.weight", "embeddings.project.kernel", transpose=True))
        rows += norm(f"{base}.embeddings.LayerNorm", "embeddings.norm")
        rows += deberta_layer(f"{base}.encoder.layer.{{i}}", config)
        if relative_attention(config):
            rows += embed(f"{base}.encoder.rel_embeddings", "rel_embeddings")
        if has_relative_norm(config):
            rows += norm(f"{base}.encoder.LayerNorm", "rel_norm")
        if conv_kernel_size(config) > 0:
            rows += [
                ParamRule(f"{base}.encoder.conv.conv.weight", "conv.kernel", transpose=True),
                ParamRule(f"{base}.encoder.conv.conv.bias", "conv.bias"),
                *norm(f"{base}.encoder.conv.LayerNorm", "conv.norm"),
            ]
        return [*rows, *linear("pooler.dense", "pooler"), *linear("classifier", "classifier")]

    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None) -> Array:
        """The encoder's last hidden states (B, L, H), as ``DebertaV2Model`` returns them.

        ``attention_mask`` is (B, L) or pairwise (B, L, L); ``position_ids`` (each token's position in its own
        pair) drive both the absolute and the relative positions (default: the column index)."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        attention_mask = attention_mask.astype(bool)
        if attention_mask.ndim == 2:  # transformers' get_attention_mask: query and key must both be tokens
            tokens = attention_mask
            pair_mask = attention_mask[:, :, None] & attention_mask[:, None, :]
        else:
            tokens = attention_mask.any(axis=-2)  # transformers: attention_mask.sum(-2) > 0
            pair_mask = attention_mask
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        with self.matmul_precision():
            x = self.embeddings(input_ids, token_type_ids if self.reads_token_types() else None, position_ids, tokens)
            c2p_index = p2c_index = rel = None
            if self.rel_embeddings is not None:
                c2p_index, p2c_index = relative_indices(self.config, position_ids)
                rel = self.rel_embeddings.embedding[...]
                if self.rel_norm is not None:
                    rel = self.rel_norm(rel)
            convolved = None if self.conv is None else self.conv.convolve(x, pair_mask, tokens)
            return self.encoder(x, self.conv, convolved, tokens, pair_mask, c2p_index, p2c_index, rel)

    def classify(self, hidden: Array) -> Array:
        pooled = self.pooler_act(self.pooler(self.pooler_dropout(hidden[:, 0])))
        return self.classifier(self.dropout(pooled))
