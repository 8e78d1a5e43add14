"""sentence-transformers 6.2's ``LambdaLoss`` with its five weighting schemes, and ``RankNetLoss`` (LambdaLoss
without weights).

Documents are sorted by predicted score; every ordered pair (i, j) of real documents with label_i > label_j
(all pairs for ``NDCGLoss1Scheme``) and i or j among the top ``k`` predictions contributes
``-weight_ij * log(sigmoid(sigma * (s_i - s_j)))`` (in bits with ``reduction_log="binary"``). The loss is the
mean over all contributing pairs of the batch, so a split of the rows adds up exactly. With ``k`` set, which
pairs count depends on the predicted order; that count is piecewise constant in the parameters (its gradient
is zero), as in sentence-transformers.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import jax
import jax.numpy as jnp

from crossjax.losses.activations import identity
from crossjax.losses.base import checked_number, fullname, is_integer
from crossjax.losses.listwise import ListwiseLoss
from crossjax.losses.torch_compat import is_torch_module

__all__ = [
    "BaseWeightingScheme",
    "NoWeightingScheme",
    "NDCGLoss1Scheme",
    "NDCGLoss2Scheme",
    "LambdaRankScheme",
    "NDCGLoss2PPScheme",
    "LambdaLoss",
    "RankNetLoss",
]

_ST_MODULE = "sentence_transformers.cross_encoder.losses.lambda_loss"


class BaseWeightingScheme:
    """A LambdaLoss weighting: ``(gain [Q, D], discount [1, D], true_sorted [Q, D]) -> weights`` broadcastable to
    ``[Q, D, D]``, in predicted order. Subclass it with ``jnp`` code for a custom scheme."""

    def __call__(self, gain: jnp.ndarray, discount: jnp.ndarray, true_sorted: jnp.ndarray) -> jnp.ndarray:
        raise NotImplementedError

    @property
    def config_name(self) -> str:
        """The class path sentence-transformers writes for the scheme this one stands for."""
        if type(self).__module__ == __name__:
            return f"{_ST_MODULE}.{type(self).__name__}"
        return fullname(self)


class NoWeightingScheme(BaseWeightingScheme):
    """All pairs weigh 1 (RankNet)."""

    def __call__(self, gain, discount, true_sorted):
        return jnp.float32(1.0)


class NDCGLoss1Scheme(BaseWeightingScheme):
    """NDCG Loss1: ``gain_i / discount_i`` (the LambdaLoss paper finds Loss2 and Loss2++ better)."""

    def __call__(self, gain, discount, true_sorted):
        return (gain / discount)[:, :, None]


class NDCGLoss2Scheme(BaseWeightingScheme):
    """NDCG Loss2: ``|1/D(|i-j|) - 1/D(|i-j|+1)| * |gain_i - gain_j|``, a tighter bound than Loss1."""

    def __call__(self, gain, discount, true_sorted):
        positions = jnp.arange(gain.shape[1])
        distance = jnp.abs(positions[:, None] - positions[None, :])
        inverse = 1.0 / jnp.abs(discount[0])
        deltas = jnp.abs(inverse[jnp.maximum(distance - 1, 0)] - inverse[distance])
        deltas = jnp.where(distance == 0, 0.0, deltas)
        return deltas[None, :, :] * jnp.abs(gain[:, :, None] - gain[:, None, :])


class LambdaRankScheme(BaseWeightingScheme):
    """LambdaRank: ``|1/D_i - 1/D_j| * |gain_i - gain_j|``, a coarse upper bound of NDCG."""

    def __call__(self, gain, discount, true_sorted):
        inverse = 1.0 / discount
        return jnp.abs(inverse[:, :, None] - inverse[:, None, :]) * jnp.abs(gain[:, :, None] - gain[:, None, :])


class NDCGLoss2PPScheme(BaseWeightingScheme):
    """NDCG Loss2++: ``mu * Loss2 + LambdaRank``, the strongest in the LambdaLoss paper."""

    def __init__(self, mu: float = 10.0) -> None:
        self.mu = checked_number("mu", mu)
        self.ndcg_loss2 = NDCGLoss2Scheme()
        self.lambda_rank = LambdaRankScheme()

    def __call__(self, gain, discount, true_sorted):
        return self.mu * self.ndcg_loss2(gain, discount, true_sorted) + self.lambda_rank(gain, discount, true_sorted)


_SCHEMES = {cls.__name__: cls for cls in (NoWeightingScheme, NDCGLoss1Scheme, NDCGLoss2Scheme, LambdaRankScheme)}


def resolve_weighting_scheme(scheme: Any) -> BaseWeightingScheme:
    """crossjax's scheme for what the user passed: None (no weighting), a crossjax scheme, or
    sentence-transformers' torch scheme of the same name."""
    if scheme is None:
        return NoWeightingScheme()
    if isinstance(scheme, BaseWeightingScheme):
        return scheme
    name = type(scheme).__name__
    if is_torch_module(scheme) and name == "NDCGLoss2PPScheme":
        return NDCGLoss2PPScheme(mu=float(scheme.mu))
    if is_torch_module(scheme) and name in _SCHEMES:
        return _SCHEMES[name]()
    raise TypeError(
        f"weighting_scheme must be one of {', '.join([*_SCHEMES, 'NDCGLoss2PPScheme'])} (crossjax.losses), a "
        f"BaseWeightingScheme subclass or None, got {type(scheme)}"
    )


class LambdaLoss(ListwiseLoss):
    """LambdaLoss (see the module docstring): ``k`` limits the pairs to those touching the top k predictions
    (None: all), ``sigma`` scales score differences, ``eps`` guards the ideal DCG."""

    citation = """
@inproceedings{wang2018lambdaloss,
  title={The LambdaLoss Framework for Ranking Metric Optimization},
  author={Wang, Xuanhui and Li, Cheng and Golbandi, Nadav and Bendersky, Michael and Najork, Marc},
  booktitle={Proceedings of the 27th ACM international conference on information and knowledge management},
  pages={1313--1322},
  year={2018}
}
"""

    def __init__(
        self,
        model: Any,
        weighting_scheme: BaseWeightingScheme | None = NDCGLoss2PPScheme(),  # noqa: B008 (ST's default)
        k: int | None = None,
        sigma: float = 1.0,
        eps: float = 1e-10,
        reduction_log: Literal["natural", "binary"] = "binary",
        activation_fn: Any = identity,
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(model, activation_fn, mini_batch_size)
        self.weighting_scheme = resolve_weighting_scheme(weighting_scheme)
        if k is not None and (not is_integer(k) or k < 0):
            raise ValueError(f"k must be a non-negative int or None, got {k!r}")
        k = None if k is None else int(k)
        if reduction_log not in ("natural", "binary"):
            raise ValueError(f"reduction_log must be 'natural' or 'binary', got {reduction_log!r}")
        self.k = k
        self.sigma = checked_number("sigma", sigma)
        self.eps = checked_number("eps", eps)
        self.reduction_log = reduction_log

    def parts(self, logits, doc_mask, labels, query_mask):
        scores, mask, labels, row_mask = self._list_inputs(logits, doc_mask, labels, query_mask)
        width = scores.shape[1]
        order = jnp.argsort(-jnp.where(mask, scores, -jnp.inf), axis=1, stable=True)  # predictions, descending
        scores = jnp.take_along_axis(scores, order, axis=1)
        mask = jnp.take_along_axis(mask, order, axis=1)
        true_sorted = jnp.take_along_axis(labels, order, axis=1)

        pairs = mask[:, :, None] & mask[:, None, :] & row_mask[:, None, None]
        if not isinstance(self.weighting_scheme, NDCGLoss1Scheme):
            pairs = pairs & (true_sorted[:, :, None] > true_sorted[:, None, :])
        k = self.k or width
        positions = jnp.arange(width)
        pairs = pairs & ((positions[:, None] < k) | (positions[None, :] < k))[None]

        discount = jnp.log2(1.0 + jnp.arange(1, width + 1, dtype=jnp.float32))[None, :]
        ideal = -jnp.sort(-jnp.where(mask, labels, -jnp.inf), axis=1)  # labels, descending; padding last
        ideal_gains = jnp.where(jnp.isfinite(ideal), jnp.power(2.0, jnp.maximum(ideal, 0.0)) - 1.0, 0.0)
        max_dcg = jnp.sum(jnp.where(positions[None, :] < k, ideal_gains / discount, 0.0), axis=-1)
        max_dcg = jnp.maximum(max_dcg, self.eps)
        true_sorted = jnp.where(mask, jnp.maximum(true_sorted, 0.0), 0.0)
        gain = (jnp.power(2.0, true_sorted) - 1.0) / max_dcg[:, None]
        weights = self.weighting_scheme(gain, discount, true_sorted)

        differences = jnp.clip(scores[:, :, None] - scores[:, None, :], -1e8, 1e8)
        losses = weights * jax.nn.log_sigmoid(self.sigma * differences)
        if self.reduction_log == "binary":
            losses = losses / math.log(2)
        return -jnp.sum(jnp.where(pairs, losses, 0.0)), jnp.sum(pairs.astype(jnp.float32))

    def get_config_dict(self) -> dict[str, Any]:
        base = super().get_config_dict()
        return {
            "weighting_scheme": self.weighting_scheme.config_name,
            "k": self.k,
            "sigma": self.sigma,
            "eps": self.eps,
            "reduction_log": self.reduction_log,
            "activation_fn": base["activation_fn"],
            "mini_batch_size": self.mini_batch_size,
        }


class RankNetLoss(LambdaLoss):
    """RankNet: LambdaLoss without weights, every correctly-labelled pair counts the same."""

    citation = """
@inproceedings{burges2005learning,
  title={Learning to Rank using Gradient Descent},
  author={Burges, Chris and Shaked, Tal and Renshaw, Erin and Lazier, Ari and Deeds, Matt and Hamilton, Nicole and \
Hullender, Greg},
  booktitle={Proceedings of the 22nd international conference on Machine learning},
  pages={89--96},
  year={2005}
}
"""

    def __init__(
        self,
        model: Any,
        k: int | None = None,
        sigma: float = 1.0,
        eps: float = 1e-10,
        reduction_log: Literal["natural", "binary"] = "binary",
        activation_fn: Any = identity,
        mini_batch_size: int | None = None,
    ) -> None:
        super().__init__(
            model,
            weighting_scheme=NoWeightingScheme(),
            k=k,
            sigma=sigma,
            eps=eps,
            reduction_log=reduction_log,
            activation_fn=activation_fn,
            mini_batch_size=mini_batch_size,
        )

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        del config["weighting_scheme"]
        return config
