"""Building blocks shared by the BERT-style encoder families (post-LayerNorm transformer layers).

Every family file composes these and adds its own head and parameter table; the math here follows
Hugging Face's PyTorch implementations exactly so that logits match to float32 round-off.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache, partial

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array


@jax.custom_vjp
def gelu(x: Array) -> Array:
    """Exact (erf) GELU, ``jax.nn.gelu(x, approximate=False)``, with PyTorch's derivative written out:
    ``Phi(x) + x phi(x)`` (``gelu_backward``: ``0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)``).

    Why: autodiff of ``jax.nn.gelu`` differentiates its erfc expansion, and in a scanned layer's backward pass
    (the GELU recomputed under remat, its derivative next to it) XLA:CPU split that into five kernels, each
    reading the (tokens x intermediate) activation again: 71 ms of a 1.6 s MiniLM step of 14 x 192 tokens.
    """
    return jax.nn.gelu(x, approximate=False)


def _gelu_forward(x: Array):
    return gelu(x), x


def _gelu_backward(x: Array, g: Array):
    x32 = x.astype(jnp.float32)
    cdf = 0.5 + 0.5 * jax.lax.erf(x32 * (1.0 / math.sqrt(2.0)))
    pdf = jnp.exp(-0.5 * x32 * x32) * (1.0 / math.sqrt(2.0 * math.pi))
    return ((g.astype(jnp.float32) * (cdf + x32 * pdf)).astype(g.dtype),)


gelu.defvjp(_gelu_forward, _gelu_backward)


class NamedActivation:
    """A ``hidden_act`` function held by a model under its Hugging Face name, so that ``copy.deepcopy`` and
    ``pickle`` of a model (or of a CrossEncoder) work: a ``jax.custom_vjp`` function can be neither deep-copied
    nor pickled, so a copy shares the function and a pickle stores the name."""

    __slots__ = ("name", "fn")

    def __init__(self, name: str, fn: Callable[[Array], Array]) -> None:
        self.name, self.fn = name, fn

    def __call__(self, x: Array) -> Array:
        return self.fn(x)

    def __deepcopy__(self, memo: dict) -> NamedActivation:
        return self

    def __reduce__(self) -> tuple:
        return activation, (self.name,)

    def __repr__(self) -> str:
        return f"activation({self.name!r})"


_tanh_gelu = partial(jax.nn.gelu, approximate=True)


def _torch_softplus(x: Array) -> Array:
    """``torch.nn.functional.softplus``: linear above its threshold 20."""
    return jnp.where(x > 20.0, x, jax.nn.softplus(x))


# transformers' ``ACT2FN`` names without parameters of their own (``prelu`` and ``xielu`` learn theirs).
ACTIVATIONS: dict[str, NamedActivation] = {
    name: NamedActivation(name, fn)
    for name, fn in {
        "gelu": gelu,
        "gelu_python": gelu,
        "gelu_10": lambda x: jnp.clip(gelu(x), -10.0, 10.0),
        "gelu_new": _tanh_gelu,
        "gelu_pytorch_tanh": _tanh_gelu,
        "gelu_python_tanh": _tanh_gelu,
        "gelu_fast": _tanh_gelu,
        "gelu_accurate": _tanh_gelu,
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "laplace": lambda x: 0.5 * (1.0 + jax.scipy.special.erf((x - 0.707107) / (0.282095 * math.sqrt(2.0)))),
        "relu": jax.nn.relu,
        "relu2": lambda x: jnp.square(jax.nn.relu(x)),
        "relu6": jax.nn.relu6,
        "leaky_relu": lambda x: jnp.where(x > 0, x, 0.01 * x),  # torch's slope 0.01, its gradient at 0
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
        "mish": lambda x: x * jnp.tanh(_torch_softplus(x)),
        "sqrtsoftplus": lambda x: jnp.sqrt(_torch_softplus(x)),
        "hardswish": jax.nn.hard_swish,
        "sigmoid": jax.nn.sigmoid,
        "tanh": jnp.tanh,
        "linear": lambda x: x,
    }.items()
}


def activation(name: str, key: str = "hidden_act") -> NamedActivation:
    """Look up a Hugging Face activation name (config ``key``); unknown names are a clear error naming the key."""
    if callable(name):
        raise TypeError(f"config {key} must be a string naming the activation, got a callable")
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"config {key}={name!r} is not an activation crossjax implements; supported: {sorted(ACTIVATIONS)}"
        ) from None


def normal_init(std: float):
    return nnx.initializers.normal(stddev=std)


class Linear(nnx.Linear):
    """``nnx.Linear`` (same parameters and outputs) applied to a 2-D view of its input.

    Why: on a packed batch (groups x rows x tokens x features) the weight gradient contracts over three
    dimensions, and XLA:CPU then writes the output gradient out transposed before an Eigen dot. A MiniLM FFN-in
    layer with GELU on 61 x 104 tokens took 296 ms forward and backward against 157 ms on the 2-D view
    (benchmarks/RESULTS.md, "Session 11"). The reshapes only merge leading dimensions, so they cost nothing.
    """

    def __call__(self, inputs: Array, out_sharding=None) -> Array:
        if out_sharding is not None or inputs.ndim <= 2:
            return super().__call__(inputs, out_sharding=out_sharding)
        flat = super().__call__(inputs.reshape(-1, inputs.shape[-1]))
        return flat.reshape(*inputs.shape[:-1], flat.shape[-1])


def dense(
    in_features: int,
    out_features: int,
    *,
    std: float,
    dtype,
    rngs: nnx.Rngs,
    use_bias: bool = True,
    kernel_init=None,
) -> Linear:
    """A Linear layer initialised as transformers does: normal(0, initializer_range) (or ``kernel_init``), zero
    bias (none with ``use_bias=False``)."""
    return Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        kernel_init=normal_init(std) if kernel_init is None else kernel_init,
        bias_init=nnx.initializers.zeros_init(),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def layer_norm(features: int, eps: float, *, dtype, rngs: nnx.Rngs, use_bias: bool = True) -> nnx.LayerNorm:
    return nnx.LayerNorm(features, epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


# Tables of at most this many rows (token types, absolute positions) get their gradient from a one-hot matmul.
SMALL_TABLE_ROWS = 1024


@cache
def _small_table_take(rows: int, dtype: jnp.dtype) -> Callable[[Array, Array], Array]:
    """``jnp.take(table, ids, axis=0)`` for a ``dtype`` table of ``rows`` rows, whose gradient is
    ``one_hot(ids)^T @ g``.

    Why: the gradient of a gather is a scatter-add, and every token adds into one of a handful of rows of a
    token-type or position table. XLA:GPU's scatter-add slows down badly when many updates hit one row (jaxlib
    0.10.2 to 0.11 emit a compare-and-swap loop: openxla/xla#46225, jax-ml/jax#38806); on an H200 one such
    scatter took 44 ms of a 79 ms BERT-base step (benchmarks/RESULTS.md, Session 6). A matmul has no such
    contention, costs ``2 * rows * features`` FLOPs a token (0.15% of a BERT-base step for 512 positions),
    and sums in float32. The forward pass is the same gather, so logits are unchanged.
    """

    @jax.custom_vjp
    def take(table: Array, ids: Array) -> Array:
        return jnp.take(table, ids, axis=0)

    def forward(table: Array, ids: Array):
        return jnp.take(table, ids, axis=0), ids

    def backward(ids: Array, g: Array):
        one_hot = jax.nn.one_hot(ids, rows, dtype=g.dtype)
        # float32 asks for full float32 passes (the backward pass is traced outside the model's precision
        # context); bfloat16 products are exact in float32 at the platform's default.
        precision = jax.lax.Precision.HIGHEST if g.dtype == jnp.float32 else None
        # On 2-D views (tokens x rows, tokens x features), as in :class:`Linear`: a contraction over several
        # leading dimensions makes XLA:CPU copy an operand transposed first.
        grad = jnp.einsum(
            "tr,tf->rf",
            one_hot.reshape(-1, rows),
            g.reshape(-1, g.shape[-1]),
            preferred_element_type=jnp.float32,
            precision=precision,
        )
        return grad.astype(dtype), None

    take.defvjp(forward, backward)
    return take


class Embed(nnx.Embed):
    """``nnx.Embed`` (same parameters and outputs) whose small tables train without a scatter-add (see
    :func:`_small_table_take`), and whose ``padding_idx`` row, if any, gets no gradient, as torch's
    ``nn.Embedding(padding_idx=...)`` gives it none (a text holding the pad token's string, "[PAD]" or "<pad>",
    reads that row; a probe saw DeBERTa's zero pad row, through its LayerNorm, make a step's gradient norm 20
    instead of sentence-transformers' 5)."""

    padding_idx: int | None = None

    def __call__(self, inputs: Array, out_sharding=None) -> Array:
        if out_sharding is not None or not 1 < self.num_embeddings <= SMALL_TABLE_ROWS:
            out = super().__call__(inputs, out_sharding=out_sharding)
        else:
            if not jnp.issubdtype(inputs.dtype, jnp.integer):
                raise ValueError("Input type must be an integer or unsigned integer.")
            (table,) = self.promote_dtype((self.embedding[...],), dtype=self.dtype, inexact=False)
            out = _small_table_take(self.num_embeddings, jnp.dtype(table.dtype))(table, inputs)
        if self.padding_idx is None:
            return out
        return jnp.where((inputs == self.padding_idx)[..., None], jax.lax.stop_gradient(out), out)


def embedding(
    num: int,
    features: int,
    *,
    std: float | None = None,
    dtype,
    rngs: nnx.Rngs,
    padding_idx: int | None = None,
    init: Callable | None = None,
    zero_padding_row: bool = True,
) -> Embed:
    """An :class:`Embed` of ``num`` rows (``init``, else normal with ``std``) whose ``padding_idx`` row gets no
    gradient (transformers' ``padding_idx``) and starts at zero where transformers zeroes it."""
    embedding_init = init if init is not None else normal_init(std)
    emb = Embed(num, features, embedding_init=embedding_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    if padding_idx is not None and 0 <= padding_idx < num:
        emb.padding_idx = int(padding_idx)
        if zero_padding_row:  # transformers zeroes the padding row at init; do the same so fresh models agree.
            emb.embedding[...] = emb.embedding[...].at[padding_idx].set(0.0)
    return emb


def position_ids_from_padding(input_ids: Array, padding_idx: int) -> Array:
    """RoBERTa-style positions: count real tokens, starting at padding_idx + 1; pads get padding_idx."""
    mask = (input_ids != padding_idx).astype(jnp.int32)
    return jnp.cumsum(mask, axis=1) * mask + padding_idx


def packed_positions_from_padding(input_ids: Array, position_ids: Array, padding_idx: int) -> Array:
    """:func:`position_ids_from_padding` for packed rows, whose ``position_ids`` count each pair's tokens from 0:
    a pad id inside a pair's text gets ``padding_idx`` and is not counted, as transformers counts it."""
    is_pad = (input_ids == padding_idx).astype(jnp.int32)
    pads = jnp.cumsum(is_pad, axis=1)  # pad ids in the row up to and including each token
    start = jnp.arange(input_ids.shape[1]) - position_ids  # column of each token's pair's first token
    before = jnp.where(start > 0, jnp.take_along_axis(pads, jnp.maximum(start - 1, 0), axis=1), 0)
    return jnp.where(is_pad == 1, padding_idx, padding_idx + 1 + position_ids - (pads - before))


class Embeddings(nnx.Module):
    """Word + position (+ token type) embeddings, LayerNorm and dropout."""

    def __init__(
        self,
        *,
        vocab_size: int,
        features: int,
        max_positions: int,
        type_vocab_size: int,
        eps: float,
        dropout: float,
        std: float,
        dtype,
        rngs: nnx.Rngs,
        pad_token_id: int | None = None,
        positions_from_padding: bool = False,
    ):
        self.word = embedding(vocab_size, features, std=std, dtype=dtype, rngs=rngs, padding_idx=pad_token_id)
        self.position = embedding(
            max_positions,
            features,
            std=std,
            dtype=dtype,
            rngs=rngs,
            padding_idx=pad_token_id if positions_from_padding else None,
        )
        self.token_type = (
            embedding(type_vocab_size, features, std=std, dtype=dtype, rngs=rngs) if type_vocab_size > 0 else None
        )
        self.norm = layer_norm(features, eps, dtype=dtype, rngs=rngs)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.pad_token_id = pad_token_id
        self.positions_from_padding = positions_from_padding

    def __call__(self, input_ids: Array, token_type_ids: Array | None, position_ids: Array | None = None) -> Array:
        """``position_ids`` (a token's position inside its own pair, for packed rows) replaces the default
        0, 1, ... positions; RoBERTa-style embeddings count from ``pad_token_id + 1``, skipping pad ids."""
        if position_ids is not None:
            positions = (
                packed_positions_from_padding(input_ids, position_ids, self.pad_token_id)
                if self.positions_from_padding
                else position_ids
            )
        elif self.positions_from_padding:
            positions = position_ids_from_padding(input_ids, self.pad_token_id)
        else:
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        x = self.word(input_ids) + self.position(positions)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


def _mix32(x: Array) -> Array:
    """A 32-bit integer hash (``lowbias32``: xor-shift / multiply, a bijection with full avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def dropout_keep_mask(key: Array, shape: tuple[int, ...], rate: float) -> Array:
    """Where dropout keeps an element: True with probability ``1 - rate``, one independent-looking draw per
    element of ``shape``, as a pure function of ``key`` and the element's position.

    Why not ``jax.random.bernoulli``: threefry costs about 20 rounds of 32-bit arithmetic per element, and the
    attention probabilities of packed rows have ``heads x T x T`` elements per row; on a CPU their mask took
    72.6 ms a layer for 14 rows of 192 tokens (MiniLM), more than the layer's matmuls. Here two words drawn
    from ``key`` seed a counter-based hash of the element's index (two ``lowbias32`` rounds): 1.6 ms for the
    same mask (``benchmarks/dropout_cost.py``). The bits depend only on the global index, so a sharded array
    gets the same mask as an unsharded one, and a run is reproducible from its key. Statistical quality is
    ample for dropout; this is not a general-purpose random number generator.
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    inner_shape = shape[-2:] if len(shape) >= 2 else shape
    lead_shape = shape[: len(shape) - len(inner_shape)]
    # The index inside the trailing two dimensions is an iota of that (small) shape, broadcast where it is
    # hashed: an iota of the full shape does not depend on the layer, so XLA built it once outside the scanned
    # layers as a (rows, heads, T, T) array (14 x 192 tokens: 25 MB, 21-27 ms a step) read back by every layer.
    inner = jnp.zeros(inner_shape, jnp.uint32)
    stride = 1
    for axis in range(len(inner_shape) - 1, -1, -1):
        inner = inner + jax.lax.broadcasted_iota(jnp.uint32, inner_shape, axis) * jnp.uint32(stride)
        stride *= inner_shape[axis]
    lead = jnp.zeros(lead_shape + (1,) * len(inner_shape), jnp.uint32)
    stride = 1
    for axis in range(len(lead_shape) - 1, -1, -1):
        lead = lead + jax.lax.broadcasted_iota(jnp.uint32, lead.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    # The leading index (rows, heads, ...) is hashed once per slice; the per-element work is two rounds.
    offset = _mix32(lead * jnp.uint32(0x9E3779B9) + seed[0])
    bits = _mix32(_mix32(inner + offset) ^ seed[1])
    threshold = min(int(round(float(rate) * 2.0**32)), 2**32 - 1)
    return bits >= jnp.uint32(threshold)


class Dropout(nnx.Dropout):
    """``nnx.Dropout`` (same arguments, RNG stream and train/eval switch) with the cheap mask of
    :func:`dropout_keep_mask`."""

    def __call__(self, inputs: Array, *, deterministic: bool | None = None, rngs=None) -> Array:
        deterministic = self.deterministic if deterministic is None else deterministic
        if self.rate == 0.0 or deterministic:
            return inputs
        if self.rate == 1.0:
            return jnp.zeros_like(inputs)
        source = self.rngs if rngs is None else rngs
        if isinstance(source, nnx.Rngs):
            key = source[self.rng_collection]()
        elif isinstance(source, nnx.RngStream):
            key = source()
        elif isinstance(source, jax.Array):
            key = source
        else:
            raise TypeError(f"Dropout needs rngs (an nnx.Rngs, RngStream or key) in training mode, got {source!r}")
        shape = list(inputs.shape)
        for axis in self.broadcast_dims:
            shape[axis] = 1
        keep = jnp.broadcast_to(dropout_keep_mask(key, tuple(shape), self.rate), inputs.shape)
        # A product with the mask and the float32 factor 1 / (1 - rate), rounded once to the input's dtype, as
        # PyTorch computes it. A product's gradient is the same product, where a select's gradient filled a zero
        # array of the input's shape (in the attention probabilities' backward pass: a (rows, heads, T, T) array
        # a layer). The factor stays float32: rounding 1 - rate to bfloat16 first (0.9 -> 0.8984) scaled every
        # kept bfloat16 value 0.17% too high.
        scale = jnp.float32(1.0 / (1.0 - self.rate))
        return (inputs * keep.astype(inputs.dtype) * scale).astype(inputs.dtype)


def scaled_dot_product_attention(
    q: Array,
    k: Array,
    v: Array,
    mask: Array,
    dropout: Dropout,
    *,
    bias: Array | None = None,
    score_divisor: float | None = None,
) -> Array:
    """softmax(QK^T / sqrt(d) + mask) V over (B, L, heads, d) arrays, as transformers' eager attention.

    ``mask`` is (B, S) (key padding) or (B, T, S) (a pairwise mask, e.g. block-diagonal for packed rows).
    ``bias`` (float32, broadcastable to (B, heads, T, S)) is added to the scaled scores before masking, and
    ``score_divisor`` replaces sqrt(d) (DeBERTa's relative-position terms and scale use both).

    The scores are accumulated and soft-maxed in float32 whatever the compute dtype (bfloat16 compute rounds
    only the weights fed to the second matmul, like PyTorch autocast); masked keys get float32's minimum, so a
    fully masked row gives uniform weights instead of NaN. The softmax is normalised after the second matmul
    (flash attention's order): each query's row sum divides its (T, d) output instead of its (T, S) weights,
    and XLA:CPU no longer fuses the whole softmax into that matmul, which made a forward pass of 40 rows x 80
    tokens 20% slower (benchmarks/RESULTS.md). Dropout scales rows the same either way. One XLA path for
    training and inference: JAX's cuDNN attention takes no dropout and no arbitrary key mask, so it is not
    used here.
    """
    divisor = jnp.sqrt(jnp.float32(q.shape[-1])) if score_divisor is None else jnp.float32(score_divisor)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / divisor
    if bias is not None:
        scores = scores + bias
    # (B, S): keys each row may attend; (B, T, S): per query (packed rows: only its own pair's tokens).
    keep = (mask[:, None, None, :] if mask.ndim == 2 else mask[:, None, :, :]).astype(bool)
    # Masked scores become float32's minimum (a finite score plus it rounds to it), as an addition of a
    # (B, 1, T, S) bias rather than a select: the select's gradient kept a (B, heads, T, S) copy of the mask,
    # built once outside the scanned layers (14 x 192 tokens: 20 ms and 31 MB a step); an addition needs none.
    scores = scores + jnp.where(keep, jnp.float32(0), jnp.finfo(jnp.float32).min)
    # exp(scores - max) as jax.nn.softmax computes it (the shift is a constant for the gradient)
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    total = jnp.swapaxes(weights.sum(axis=-1), 1, 2)[..., None]  # (B, T, heads, 1)
    context = jnp.einsum(
        "bhqk,bkhd->bqhd", dropout(weights).astype(v.dtype), v, preferred_element_type=jnp.float32
    )
    return (context / total).astype(v.dtype)


class EncoderLayer(nnx.Module):
    """A post-LayerNorm transformer layer: self-attention and a feed-forward block, each residual."""

    def __init__(
        self,
        *,
        hidden: int,
        heads: int,
        intermediate: int,
        act: str,
        eps: float,
        hidden_dropout: float,
        attention_dropout: float,
        std: float,
        dtype,
        rngs: nnx.Rngs,
        attention_output_dropout: bool = True,
    ):
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of the number of heads {heads}")
        self.heads = heads
        self.query = dense(hidden, hidden, std=std, dtype=dtype, rngs=rngs)
        self.key = dense(hidden, hidden, std=std, dtype=dtype, rngs=rngs)
        self.value = dense(hidden, hidden, std=std, dtype=dtype, rngs=rngs)
        self.attention_out = dense(hidden, hidden, std=std, dtype=dtype, rngs=rngs)
        self.attention_norm = layer_norm(hidden, eps, dtype=dtype, rngs=rngs)
        self.ffn_in = dense(hidden, intermediate, std=std, dtype=dtype, rngs=rngs)
        self.ffn_out = dense(intermediate, hidden, std=std, dtype=dtype, rngs=rngs)
        self.ffn_norm = layer_norm(hidden, eps, dtype=dtype, rngs=rngs)
        self.act = activation(act)
        self.attention_dropout = Dropout(attention_dropout, rngs=rngs)
        self.dropout = Dropout(hidden_dropout, rngs=rngs)
        # BERT drops out the attention block's output before its residual; DistilBERT does not.
        self.attention_output_dropout = attention_output_dropout

    def attention(self, x: Array, mask: Array, context: Array | None = None) -> Array:
        """Self-attention of ``x`` (B, L, H); with ``context`` (B, S, H), ``x``'s tokens attend over the
        context's instead (keys and values from it; ``mask`` is then (B, L, S))."""
        context = x if context is None else context
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads

        def split(t: Array) -> Array:
            return t.reshape(batch, t.shape[1], self.heads, head_dim)

        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        return scaled_dot_product_attention(q, k, v, mask, self.attention_dropout).reshape(batch, length, hidden)

    def __call__(self, x: Array, mask: Array, *attention_args: Array, **attention_kwargs: Array) -> Array:
        """``attention_args`` (and keyword arguments such as ``context``) go to ``attention`` after the mask
        (families with extra attention inputs)."""
        attended = self.attention_out(self.attention(x, mask, *attention_args, **attention_kwargs))
        if self.attention_output_dropout:
            attended = self.dropout(attended)
        x = self.attention_norm(x + attended)
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


# What a scanned layer keeps for the backward pass: the outputs of its weight matmuls. The rest (attention scores
# and probabilities, softmax, GELU, LayerNorm, dropout masks) is recomputed from them in the backward pass,
# where XLA fuses it into the kernels that consume it. Writing those residuals out cost more than recomputing
# them: MiniLM train steps of 2 x 176 tokens took 261 ms against 286, of 14 x 192 tokens 1,690 ms against 1,847
# with 57% less scratch memory (2-core CPU, benchmarks/RESULTS.md "Session 8"); no (T x T) residual is stored.
LAYER_REMAT_POLICY = jax.checkpoint_policies.dots_with_no_batch_dims_saveable


def scanned_layer(body: Callable) -> Callable:
    """``body`` (a scanned layer's step) under ``nnx.remat`` with :data:`LAYER_REMAT_POLICY`."""
    return nnx.remat(body, policy=LAYER_REMAT_POLICY, prevent_cse=False)


class Encoder(nnx.Module):
    """``num_layers`` layers, applied in order.

    With ``scan`` (the default) the layers' parameters are stacked on a leading axis (created under
    ``nnx.vmap``, one RNG stream split per layer) and applied with ``nnx.scan``: XLA compiles one layer body
    whatever the depth (two with ``last``), so compile time no longer grows with the number of layers. Without
    it the layers are unrolled Python modules (``layers.0``, ``layers.1``, ...). The parameter tables serve both
    layouts.
    """

    def __init__(self, num_layers: int, *, rngs: nnx.Rngs, scan: bool = True, layer: type = EncoderLayer, **kwargs):
        self.scan = bool(scan)
        self.num_layers = int(num_layers)
        if not self.scan:
            self.layers = nnx.List([layer(rngs=rngs, **kwargs) for _ in range(num_layers)])
            return

        @nnx.split_rngs(splits=num_layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def create(rngs: nnx.Rngs):
            return layer(rngs=rngs, **kwargs)

        self.layers = create(rngs)

    def __call__(self, x: Array, *args: Array, last: Callable[[nnx.Module, Array], Array] | None = None) -> Array:
        """The layers applied to ``x`` in order, each called as ``layer(x, *args)``; ``last(layer, x)``, when
        given, replaces the call of the last layer (:meth:`FlaxPreTrainedModel.packed_logits` computes it
        for the pairs' first tokens only)."""
        if not self.scan:
            layers = list(self.layers) if last is None else list(self.layers)[:-1]
            for layer in layers:
                x = layer(x, *args)
            return x if last is None else last(self.layers[-1], x)

        @nnx.scan(in_axes=(0, nnx.Carry, *(None,) * len(args)), out_axes=nnx.Carry)
        @scanned_layer
        def apply(layer, x, *args):
            return layer(x, *args)

        if last is None:
            return apply(self.layers, x, *args)

        # The first layers scanned over the whole stack's parameters (a slice of them would be copied, every
        # call), each step taking its layer's slice; then the last layer called alone on its slice. Only the
        # non-parameter state (dropout streams) is scanned in and out, and written back afterwards.
        graphdef, params, rest = nnx.split(self.layers, nnx.Param, ...)

        def step(x, inputs):
            index, layer_rest = inputs
            layer_params = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False), params)
            layer = nnx.merge(graphdef, layer_params, layer_rest)
            return layer(x, *args), nnx.state(layer, nnx.Not(nnx.Param))

        head = jax.tree.map(lambda a: a[:-1], rest)
        x, head = jax.lax.scan(scanned_layer(step), x, (jnp.arange(self.num_layers - 1), head))
        final = nnx.merge(graphdef, jax.tree.map(lambda a: a[-1], params), jax.tree.map(lambda a: a[-1], rest))
        x = last(final, x)
        tail = nnx.state(final, nnx.Not(nnx.Param))
        nnx.update(self.layers, jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), head, tail))
        return x


def config_dropout(config, name: str, default: float = 0.1) -> float:
    value = getattr(config, name, None)
    return default if value is None else float(value)


class FirstTokenClassificationHead(nnx.Module):
    """[dropout ->] dense -> activation -> dropout -> out_proj on the first token's hidden state.

    transformers' ``RobertaClassificationHead`` (tanh), ``ElectraClassificationHead`` (exact GELU) and, with
    ``input_dropout=False``, DistilBERT's ``pre_classifier`` -> ReLU -> dropout -> ``classifier``.
    """

    def __init__(
        self,
        hidden: int,
        num_labels: int,
        *,
        act: str,
        dropout: float,
        std: float,
        dtype,
        rngs: nnx.Rngs,
        input_dropout: bool = True,
    ):
        self.dense = dense(hidden, hidden, std=std, dtype=dtype, rngs=rngs)
        self.out_proj = dense(hidden, num_labels, std=std, dtype=dtype, rngs=rngs)
        self.act = activation(act)
        self.dropout = Dropout(dropout, rngs=rngs)
        self.input_dropout = input_dropout

    def __call__(self, hidden_states: Array) -> Array:
        x = hidden_states[:, 0]
        if self.input_dropout:
            x = self.dropout(x)
        return self.out_proj(self.dropout(self.act(self.dense(x))))
