"""ModernBERT for sequence classification: token embeddings + LayerNorm, pre-norm layers with rotary attention
(global on every ``global_attn_every_n_layers``-th layer, a sliding window of ``local_attention`` tokens on the
others), GeGLU MLPs, a final norm, then cls or mean pooling -> ``head`` (dense, act, norm) -> ``classifier``.

Mirrors ``transformers.ModernBertForSequenceClassification`` (transformers 5). Both config spellings work:
transformers 5's ``layer_types`` / ``rope_parameters`` and the older ``global_attn_every_n_layers`` /
``global_rope_theta`` / ``local_rope_theta`` (which transformers 5 converts on load; :func:`attention_layout`
reads either). There are no position or token-type embeddings: positions enter only through the rotary
angles, computed from ``position_ids``, so packed rows (positions restarting at each pair) are exact.

The sliding window keeps key j for query i when ``|i - j| <= local_attention // 2``, as transformers does. In a
packed row attention is also confined to the pair (the block-diagonal mask), and a pair's tokens are
contiguous, so the window never crosses a pair boundary and equals the window of the pair run alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crossjax.models.base import FlaxPreTrainedModel, at_first_tokens, pair_attention_mask
from crossjax.models.layers import (
    Dropout,
    Encoder,
    activation,
    dense,
    embedding,
    layer_norm,
    scaled_dot_product_attention,
    scanned_layer,
)
from crossjax.models.params import ParamRule

Array = jax.Array

DEFAULT_THETA = {"full_attention": 160_000.0, "sliding_attention": 10_000.0}  # transformers' defaults
OLD_THETA_KEYS = {"full_attention": "global_rope_theta", "sliding_attention": "local_rope_theta"}


@dataclass(frozen=True)
class AttentionLayout:
    """Which layers attend globally, the rotary base of each kind, and the sliding half-window."""

    is_global: tuple[bool, ...]
    global_theta: float
    local_theta: float
    half_window: int


def attention_layout(config) -> AttentionLayout:
    """The attention pattern of a ModernBERT config, from transformers 5's keys or the older ones."""
    layers = int(config.num_hidden_layers)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        every = int(getattr(config, "global_attn_every_n_layers", None) or 3)
        layer_types = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
    layer_types = list(layer_types)
    if len(layer_types) != layers or not set(layer_types) <= set(DEFAULT_THETA):
        raise ValueError(
            f"ModernBERT config: layer_types must name 'full_attention' or 'sliding_attention' for each of the "
            f"{layers} layers, got {layer_types}"
        )
    rope = getattr(config, "rope_parameters", None) or {}
    thetas = {}
    for kind, default in DEFAULT_THETA.items():
        params = rope.get(kind) or {}
        if params.get("rope_type", "default") != "default":
            raise ValueError(
                f"ModernBERT config: rope_type {params['rope_type']!r} for {kind} is not supported by crossjax "
                "(only the default rotary embedding is)"
            )
        theta = params.get("rope_theta", getattr(config, OLD_THETA_KEYS[kind], None))
        thetas[kind] = float(default if theta is None else theta)
    return AttentionLayout(
        is_global=tuple(t == "full_attention" for t in layer_types),
        global_theta=thetas["full_attention"],
        local_theta=thetas["sliding_attention"],
        half_window=int(config.local_attention) // 2,
    )


def rotary_tables(position_ids: Array, theta: float, head_dim: int) -> tuple[Array, Array]:
    """cos and sin (B, L, head_dim) float32 of the rotary angles, as transformers' default RoPE."""
    inv_freq = 1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
    freqs = position_ids[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate (B, L, heads, d) queries or keys in float32 (transformers' ``apply_rotary_pos_emb``)."""
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, :, None, :] + rotated * sin[:, :, None, :]).astype(x.dtype)


def _pick(flag, if_true, if_false):
    """Select per layer: a Python bool (unrolled layers) picks statically, a traced one (scanned) selects."""
    if isinstance(flag, bool | np.bool_):
        return if_true if flag else if_false
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), if_true, if_false)


def _trunc_normal(std: float, cutoff: float):
    """transformers' ModernBERT init: a normal(0, std) truncated at +-cutoff standard deviations."""
    return nnx.initializers.truncated_normal(stddev=std, lower=-cutoff, upper=cutoff)


class ModernBertLayer(nnx.Module):
    """Pre-norm: x + Wo(attention(norm(x))), then x + mlp(norm(x)); the MLP is GeGLU (act(input) * gate)."""

    def __init__(
        self,
        *,
        hidden: int,
        heads: int,
        intermediate: int,
        act: str,
        eps: float,
        attention_bias: bool,
        mlp_bias: bool,
        norm_bias: bool,
        attention_dropout: float,
        mlp_dropout: float,
        in_init,
        out_init,
        dtype,
        rngs: nnx.Rngs,
    ):
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of the number of heads {heads}")
        if (hidden // heads) % 2:  # rotary angles pair up a head's dimensions
            raise ValueError(
                f"hidden_size {hidden} / num_attention_heads {heads} gives heads of {hidden // heads} dimensions: "
                "ModernBERT's rotary positions need an even head size"
            )
        self.heads = heads
        self.intermediate = intermediate
        norm = dict(dtype=dtype, rngs=rngs, use_bias=norm_bias)
        self.attn_norm = layer_norm(hidden, eps, **norm)  # removed from layer 0 when unrolled (see the encoder)
        linear = dict(std=0.0, dtype=dtype, rngs=rngs)
        self.qkv = dense(hidden, 3 * hidden, use_bias=attention_bias, kernel_init=in_init, **linear)
        self.attn_out = dense(hidden, hidden, use_bias=attention_bias, kernel_init=out_init, **linear)
        self.mlp_norm = layer_norm(hidden, eps, **norm)
        self.mlp_in = dense(hidden, 2 * intermediate, use_bias=mlp_bias, kernel_init=in_init, **linear)
        self.mlp_out = dense(intermediate, hidden, use_bias=mlp_bias, kernel_init=out_init, **linear)
        self.act = activation(act)
        self.attention_dropout = Dropout(attention_dropout, rngs=rngs)
        self.mlp_dropout = Dropout(mlp_dropout, rngs=rngs)

    def __call__(self, x: Array, masks, rotary, is_global, has_attn_norm) -> Array:
        """``masks`` = (global, local) (B, L, L) masks, ``rotary`` = ((cos, sin) global, (cos, sin) local);
        ``is_global`` / ``has_attn_norm`` say which this layer uses."""
        batch, length, hidden = x.shape
        h = x if self.attn_norm is None else _pick(has_attn_norm, self.attn_norm(x), x)
        q, k, v = jnp.moveaxis(self.qkv(h).reshape(batch, length, 3, self.heads, hidden // self.heads), 2, 0)
        cos, sin = _pick(is_global, rotary[0], rotary[1])
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        mask = _pick(is_global, masks[0], masks[1])
        attended = scaled_dot_product_attention(q, k, v, mask, self.attention_dropout).reshape(batch, length, hidden)
        x = x + self.attention_dropout(self.attn_out(attended))  # transformers' out_drop: the same rate
        gate_input, gate = jnp.split(self.mlp_in(self.mlp_norm(x)), [self.intermediate], axis=-1)
        return x + self.mlp_out(self.mlp_dropout(self.act(gate_input) * gate))


class ModernBertEncoder(Encoder):
    """:class:`Encoder` of :class:`ModernBertLayer`, with per-layer inputs: whether the layer attends globally
    (its mask and rotary base) and whether it has an attention norm (layer 0 has none).

    Scanned, every layer holds the same parameters (layer 0's attention norm is stacked with the others but
    unused, and is not a Hugging Face tensor) and the per-layer flags are scanned with them; unrolled, layer
    0 has no attention norm at all.
    """

    def __init__(self, num_layers: int, *, rngs: nnx.Rngs, scan: bool = True, **kwargs):
        super().__init__(num_layers, rngs=rngs, scan=scan, layer=ModernBertLayer, **kwargs)
        if not self.scan:
            self.layers[0].attn_norm = None

    def __call__(self, x: Array, masks, rotary, is_global: tuple[bool, ...]) -> Array:
        has_attn_norm = tuple(i > 0 for i in range(len(is_global)))
        if not self.scan:
            for layer, global_, norm in zip(self.layers, is_global, has_attn_norm, strict=True):
                x = layer(x, masks, rotary, bool(global_), bool(norm))
            return x

        @nnx.scan(in_axes=(0, nnx.Carry, None, None, 0, 0), out_axes=nnx.Carry)
        @scanned_layer
        def apply(layer, x, masks, rotary, global_, norm):
            return layer(x, masks, rotary, global_, norm)

        return apply(self.layers, x, masks, rotary, jnp.asarray(is_global), jnp.asarray(has_attn_norm))


class ModernBertEmbeddings(nnx.Module):
    """Token embeddings -> LayerNorm -> dropout (no position or token-type embeddings)."""

    def __init__(self, config, *, dtype, rngs: nnx.Rngs):
        std, cutoff = config.initializer_range, _cutoff(config)
        self.tok = embedding(
            config.vocab_size,
            config.hidden_size,
            init=_trunc_normal(std, cutoff),
            dtype=dtype,
            rngs=rngs,
            padding_idx=config.pad_token_id,  # no gradient, as transformers' padding_idx
            zero_padding_row=False,  # transformers' ModernBERT initialises every row alike
        )
        self.norm = layer_norm(config.hidden_size, config.norm_eps, dtype=dtype, rngs=rngs, use_bias=config.norm_bias)
        self.dropout = Dropout(float(config.embedding_dropout), rngs=rngs)

    def __call__(self, input_ids: Array) -> Array:
        return self.dropout(self.norm(self.tok(input_ids)))


class ModernBertHead(nnx.Module):
    """transformers' ``ModernBertPredictionHead``: dense -> activation -> LayerNorm."""

    def __init__(self, config, *, init, dtype, rngs: nnx.Rngs):
        hidden = config.hidden_size
        self.dense = dense(
            hidden, hidden, std=0.0, dtype=dtype, rngs=rngs, use_bias=config.classifier_bias, kernel_init=init
        )
        self.act = activation(config.classifier_activation, "classifier_activation")
        self.norm = layer_norm(hidden, config.norm_eps, dtype=dtype, rngs=rngs, use_bias=config.norm_bias)

    def __call__(self, pooled: Array) -> Array:
        return self.norm(self.act(self.dense(pooled)))


def _cutoff(config) -> float:
    cutoff = getattr(config, "initializer_cutoff_factor", None)
    return 3.0 if cutoff is None else float(cutoff)


def _linear(hf: str, ours: str, bias: bool, first_layer: int = 0) -> list[ParamRule]:
    rows = [ParamRule(f"{hf}.weight", f"{ours}.kernel", transpose=True, first_layer=first_layer)]
    return rows + ([ParamRule(f"{hf}.bias", f"{ours}.bias", first_layer=first_layer)] if bias else [])


def _norm(hf: str, ours: str, bias: bool, first_layer: int = 0) -> list[ParamRule]:
    rows = [ParamRule(f"{hf}.weight", f"{ours}.scale", first_layer=first_layer)]
    return rows + ([ParamRule(f"{hf}.bias", f"{ours}.bias", first_layer=first_layer)] if bias else [])


class ModernBertForSequenceClassification(FlaxPreTrainedModel):
    model_types = ("modernbert",)
    architecture = "ModernBertForSequenceClassification"
    base_model_prefix = "model"
    head_prefixes = ("head.", "classifier.")
    uses_token_types = False
    activation_keys = ("hidden_activation", "classifier_activation")
    position_limit = None  # rotary positions: no table to run past, as in transformers

    def __init__(self, config, *, dtype=jnp.float32, rngs: nnx.Rngs, scan_layers: bool = True):
        if config.classifier_pooling not in ("cls", "mean"):
            raise ValueError(
                f"ModernBERT classifier_pooling must be 'cls' or 'mean', got {config.classifier_pooling!r}"
            )
        self.config = config
        self.dtype = dtype
        self.layout = attention_layout(config)
        # A single layer cannot be stacked: its unused attention norm would be a parameter with no HF name.
        self.scan_layers = bool(scan_layers) and config.num_hidden_layers > 1
        std, cutoff = config.initializer_range, _cutoff(config)
        out_init = _trunc_normal(std / math.sqrt(2.0 * config.num_hidden_layers), cutoff)
        self.embeddings = ModernBertEmbeddings(config, dtype=dtype, rngs=rngs)
        self.encoder = ModernBertEncoder(
            config.num_hidden_layers,
            scan=self.scan_layers,
            hidden=config.hidden_size,
            heads=config.num_attention_heads,
            intermediate=config.intermediate_size,
            act=config.hidden_activation,
            eps=config.norm_eps,
            attention_bias=config.attention_bias,
            mlp_bias=config.mlp_bias,
            norm_bias=config.norm_bias,
            attention_dropout=float(config.attention_dropout),
            mlp_dropout=float(config.mlp_dropout),
            in_init=_trunc_normal(std, cutoff),
            out_init=out_init,
            dtype=dtype,
            rngs=rngs,
        )
        self.final_norm = layer_norm(
            config.hidden_size, config.norm_eps, dtype=dtype, rngs=rngs, use_bias=config.norm_bias
        )
        self.head = ModernBertHead(config, init=out_init, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(float(config.classifier_dropout), rngs=rngs)
        hidden = config.hidden_size
        classifier_init = _trunc_normal(hidden**-0.5, cutoff)
        # Always with a bias, as in transformers (classifier_bias is the head's dense layer).
        self.classifier = dense(hidden, config.num_labels, std=0.0, dtype=dtype, rngs=rngs, kernel_init=classifier_init)

    @classmethod
    def param_table(cls, config) -> list[ParamRule]:
        attention, mlp, norm = config.attention_bias, config.mlp_bias, config.norm_bias
        layer, ours = "model.layers.{i}", "encoder.layers.{i}"
        return [
            ParamRule("model.embeddings.tok_embeddings.weight", "embeddings.tok.embedding"),
            *_norm("model.embeddings.norm", "embeddings.norm", norm),
            *_norm(f"{layer}.attn_norm", f"{ours}.attn_norm", norm, first_layer=1),
            *_linear(f"{layer}.attn.Wqkv", f"{ours}.qkv", attention),
            *_linear(f"{layer}.attn.Wo", f"{ours}.attn_out", attention),
            *_norm(f"{layer}.mlp_norm", f"{ours}.mlp_norm", norm),
            *_linear(f"{layer}.mlp.Wi", f"{ours}.mlp_in", mlp),
            *_linear(f"{layer}.mlp.Wo", f"{ours}.mlp_out", mlp),
            *_norm("model.final_norm", "final_norm", norm),
            *_linear("head.dense", "head.dense", config.classifier_bias),
            *_norm("head.norm", "head.norm", norm),
            *_linear("classifier", "classifier", True),
        ]

    # ------------------------------------------------------------------------------------- forward
    def encode(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None) -> Array:
        """The final-normed hidden states (B, L, H). ``attention_mask`` is (B, L) or pairwise (B, L, L);
        ``position_ids`` (default 0, 1, ...) set the rotary angles; token types are ignored."""
        batch, length = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        keep = attention_mask.astype(bool)
        if keep.ndim == 2:
            keep = jnp.broadcast_to(keep[:, None, :], (batch, length, length))
        columns = jnp.arange(length)
        window = jnp.abs(columns[:, None] - columns[None, :]) <= self.layout.half_window
        masks = (keep, keep & window)
        if position_ids is None:
            position_ids = jnp.broadcast_to(columns, (batch, length))
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        rotary = (
            rotary_tables(position_ids, self.layout.global_theta, head_dim),
            rotary_tables(position_ids, self.layout.local_theta, head_dim),
        )
        with self.matmul_precision():
            hidden = self.encoder(self.embeddings(input_ids), masks, rotary, self.layout.is_global)
            return self.final_norm(hidden)

    def classify(self, hidden: Array) -> Array:
        """Logits from hidden states (B, L, H) whose position 0 is the pooled vector (the [CLS] token, or
        the mean :meth:`pool` computed)."""
        return self.classifier(self.dropout(self.head(hidden[:, 0])))

    def pool(self, hidden: Array, token_mask: Array) -> Array:
        """(B, 1, H): the first token (``cls``) or the mean over ``token_mask``'s tokens (``mean``)."""
        if self.config.classifier_pooling == "cls":
            return hidden[:, :1]
        weights = token_mask.astype(hidden.dtype)[..., None]
        total = jnp.sum(hidden * weights, axis=1, keepdims=True)
        # the count in float32: bfloat16 holds integers exactly only up to 256 (3,000 tokens would be 3,008)
        count = jnp.maximum(jnp.sum(token_mask.astype(jnp.float32), axis=1)[:, None, None], 1)
        return (total.astype(jnp.float32) / count).astype(hidden.dtype)

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, token_type_ids=None) -> Array:
        """Logits (B, num_labels) in float32; ``attention_mask`` (B, L) marks the real tokens."""
        input_ids, attention_mask, _ = self._token_inputs(input_ids, attention_mask, token_type_ids)  # no type table
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        with self.matmul_precision():
            hidden = self.encode(input_ids, attention_mask)
            return self.classify(self.pool(hidden, attention_mask)).astype(jnp.float32)

    def packed_logits(self, input_ids, token_type_ids, segment_ids, position_ids, pair_row, pair_start) -> Array:
        """As :meth:`FlaxPreTrainedModel.packed_logits`; mean pooling averages each pair's own tokens."""
        if self.config.classifier_pooling == "cls":
            return super().packed_logits(input_ids, token_type_ids, segment_ids, position_ids, pair_row, pair_start)
        groups, rows, length = input_ids.shape
        flat = lambda x: x.reshape(groups * rows, length)  # noqa: E731
        with self.matmul_precision():
            hidden = self.encode(flat(input_ids), pair_attention_mask(segment_ids), None, flat(position_ids))
            hidden = hidden.reshape(groups, rows, length, hidden.shape[-1])
            pair_segment = at_first_tokens(segment_ids, pair_row, pair_start)  # (G, P)
            # (G, P, R, T): the tokens of pair slot p, on its row and in its segment.
            members = (
                (jnp.arange(rows)[None, None, :, None] == pair_row[:, :, None, None])
                & (segment_ids[:, None] == pair_segment[:, :, None, None])
                & (pair_segment[:, :, None, None] > 0)
            )
            weights = members.astype(hidden.dtype)
            total = jnp.einsum("gprt,grth->gph", weights, hidden)
            count = jnp.maximum(jnp.sum(members, axis=(2, 3), dtype=jnp.float32), 1)[..., None]  # exact (pool)
            pooled = (total.astype(jnp.float32) / count).astype(hidden.dtype).reshape(-1, 1, hidden.shape[-1])
            return self.classify(pooled).astype(jnp.float32)
