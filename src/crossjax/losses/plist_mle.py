"""sentence-transformers 6.2's ``PListMLELoss`` (position-aware ListMLE), ``PListMLELambdaWeight`` and
``ListMLELoss`` (PListMLE without position weights).

The loss is the negative Plackett-Luce log-likelihood of the documents' order (the input order, or the
labels' descending order with ``respect_input_order=False``), each position's term weighted by its lambda
weight normalised per query; averaged over queries, so a split of the rows adds up exactly. Slots that are
not real documents may sit anywhere in a row: the real ones are moved to the front first, keeping their
order, because the position of a document is what the loss is about.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from crossjax.losses.activations import identity
from crossjax.losses.base import NEG_LARGE, fullname
from crossjax.losses.listwise import ListwiseLoss
from crossjax.losses.torch_compat import is_torch_module

__all__ = ["PListMLELambdaWeight", "PListMLELoss", "ListMLELoss"]


class PListMLELambdaWeight:
    """Position weights of PListMLE: ``rank_discount_fn(mask)`` (a ``jnp`` function of the bool ``[Q, D]``
    mask of real documents, real ones first), or by default ``2^(n - rank) - 1`` for ranks 1..n (rescaled per
    row so the largest stays finite in float32; the loss normalises the weights per row anyway)."""

    st_name = "sentence_transformers.cross_encoder.losses.plist_mle.PListMLELambdaWeight"

    def __init__(self, rank_discount_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None) -> None:
        if rank_discount_fn is not None and _uses_torch(rank_discount_fn):  # refused where it is written
            raise _discount_error(None)
        self.rank_discount_fn = rank_discount_fn

    def __call__(self, mask: jnp.ndarray) -> jnp.ndarray:
        if self.rank_discount_fn is not None:
            try:
                weights = self.rank_discount_fn(mask)
            except Exception as e:  # noqa: BLE001 - whatever the function raises on a JAX array
                raise _discount_error(e, tuple(mask.shape)) from e
            if getattr(weights, "shape", None) != mask.shape:
                raise ValueError(
                    f"PListMLELambdaWeight(rank_discount_fn=...) must return one weight per document: a {mask.shape} "
                    f"mask gave {getattr(weights, 'shape', type(weights).__name__)}"
                )
            return weights
        num_docs = jnp.sum(mask, axis=1, keepdims=True, dtype=jnp.int32)
        ranks = jnp.arange(1, mask.shape[1] + 1, dtype=jnp.int32)[None, :]
        scale = jnp.maximum(num_docs - 127, 0)
        one = jnp.float32(1.0)
        weights = jnp.ldexp(one, num_docs - ranks - scale) - jnp.ldexp(one, -scale)
        return weights * mask


def _uses_torch(function: Callable) -> bool:
    """Whether a function names torch (``torch.log1p``, or a torch function imported by name): such a
    discount cannot run inside the compiled step."""
    code, names = getattr(function, "__code__", None), getattr(function, "__globals__", {})
    for name in code.co_names if code is not None else ():
        value = names.get(name)
        owner = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None) or ""
        if owner.split(".")[0] == "torch":
            return True
    return False


def _discount_error(error: Exception | None, shape: tuple[int, ...] | None = None) -> TypeError:
    """The error for a discount that names torch (``error`` None), or that raised on a mask of ``shape``."""
    where = "it calls torch"
    if error is not None:
        where = f"on the mask of shape {shape} it raised {type(error).__name__}: {error}"
    return TypeError(
        "PListMLELambdaWeight(rank_discount_fn=...) must be a JAX function of the bool [queries, documents] mask "
        f"(any number of documents; it runs inside the compiled train step), but {where}. Write it with jax.numpy "
        "(e.g. jnp.log1p instead of torch.log1p)"
    )


def normalized_weights(weights: jnp.ndarray, eps: float) -> jnp.ndarray:
    """``weights / (row sum + eps)``, computed after scaling each row by a power of two: the default weights
    reach 2^126, whose reciprocal is a float32 denormal that XLA on CPU flushes to zero."""
    _, exponent = jnp.frexp(jnp.max(jnp.abs(weights), axis=1, keepdims=True))
    scaled = jnp.ldexp(weights, -exponent)
    return scaled / (jnp.sum(scaled, axis=1, keepdims=True) + jnp.ldexp(jnp.float32(eps), -exponent))


def resolve_lambda_weight(lambda_weight: Any) -> PListMLELambdaWeight | None:
    """crossjax's lambda weight for what the user passed (sentence-transformers' torch class is mapped when it
    uses the default discount)."""
    if lambda_weight is None or isinstance(lambda_weight, PListMLELambdaWeight):
        return lambda_weight
    if is_torch_module(lambda_weight) and type(lambda_weight).__name__ == "PListMLELambdaWeight":
        if getattr(lambda_weight, "rank_discount_fn", None) is not None:
            raise ValueError(
                "a torch PListMLELambdaWeight with a rank_discount_fn cannot run in JAX; pass "
                "crossjax.losses.PListMLELambdaWeight(rank_discount_fn=<a jnp function of the mask>)"
            )
        return PListMLELambdaWeight()
    raise TypeError(f"lambda_weight must be a PListMLELambdaWeight or None, got {type(lambda_weight)}")


class PListMLELoss(ListwiseLoss):
    """Position-aware ListMLE (see the module docstring)."""

    citation = """
@inproceedings{lan2014position,
  title={Position-Aware ListMLE: A Sequential Learning Process for Ranking},
  author={Lan, Yanyan and Zhu, Yadong and Guo, Jiafeng and Niu, Shuzi and Cheng, Xueqi},
  booktitle={UAI},
  volume={14},
  pages={449--458},
  year={2014}
}
"""

    def __init__(
        self,
        model: Any,
        lambda_weight: PListMLELambdaWeight | None = PListMLELambdaWeight(),  # noqa: B008 (ST's default)
        activation_fn: Any = identity,
        mini_batch_size: int | None = None,
        respect_input_order: bool = True,
    ) -> None:
        super().__init__(model, activation_fn, mini_batch_size)
        self.lambda_weight = resolve_lambda_weight(lambda_weight)
        self.respect_input_order = respect_input_order
        self.eps = 1e-10

    def parts(self, logits, doc_mask, labels, query_mask):
        scores, mask, labels, row_mask = self._list_inputs(logits, doc_mask, labels, query_mask)
        if self.respect_input_order:
            order = jnp.argsort(~mask, axis=1, stable=True)  # real documents first, in input order
        else:
            order = jnp.argsort(-jnp.where(mask, labels, -jnp.inf), axis=1, stable=True)  # by label, descending
        scores = jnp.take_along_axis(scores, order, axis=1)
        mask = jnp.take_along_axis(mask, order, axis=1)
        log_normalizers = jax.lax.cumlogsumexp(jnp.where(mask, scores, NEG_LARGE), axis=1, reverse=True)
        log_probs = scores - log_normalizers
        if self.lambda_weight is not None:
            log_probs = log_probs * normalized_weights(self.lambda_weight(mask), self.eps)
        per_query = -jnp.sum(jnp.where(mask, log_probs, 0.0), axis=1)
        return jnp.sum(jnp.where(row_mask, per_query, 0.0)), jnp.sum(row_mask.astype(jnp.float32))

    def get_config_dict(self) -> dict[str, Any]:
        weight = self.lambda_weight
        if weight is not None:
            weight = PListMLELambdaWeight.st_name if type(weight) is PListMLELambdaWeight else fullname(weight)
        base = super().get_config_dict()
        return {
            "lambda_weight": weight,
            "activation_fn": base["activation_fn"],
            "mini_batch_size": self.mini_batch_size,
            "respect_input_order": self.respect_input_order,
        }


class ListMLELoss(PListMLELoss):
    """ListMLE: the Plackett-Luce negative log-likelihood of the documents' order, without position weights."""

    citation = """
@inproceedings{10.1145/1390156.1390306,
    title = {Listwise Approach to Learning to Rank - Theory and Algorithm},
    author = {Xia, Fen and Liu, Tie-Yan and Wang, Jue and Zhang, Wensheng and Li, Hang},
    booktitle = {Proceedings of the 25th International Conference on Machine Learning},
    pages = {1192-1199},
    year = {2008},
    url = {https://doi.org/10.1145/1390156.1390306},
}
"""

    def __init__(
        self,
        model: Any,
        activation_fn: Any = identity,
        mini_batch_size: int | None = None,
        respect_input_order: bool = True,
    ) -> None:
        super().__init__(
            model,
            lambda_weight=None,
            activation_fn=activation_fn,
            mini_batch_size=mini_batch_size,
            respect_input_order=respect_input_order,
        )

    def get_config_dict(self) -> dict[str, Any]:
        config = super().get_config_dict()
        del config["lambda_weight"]
        return config
