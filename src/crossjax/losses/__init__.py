"""crossjax's losses: sentence-transformers 6.2's cross-encoder loss classes (for ``CrossEncoderTrainer``),
the legacy ``fit`` loss functions, and the activations.

* ``base.py``: the loss interface (:class:`CrossEncoderLoss`, :class:`PairLayout`) the trainer's step uses.
* ``pointwise_st.py``: BinaryCrossEntropyLoss, CrossEntropyLoss, MSELoss.
* ``margin.py``: MarginMSELoss. ``in_batch.py``: (Cached)MultipleNegativesRankingLoss.
* ``listwise.py``: the listwise rows, ListNetLoss, ADRMSELoss. ``plist_mle.py``: PListMLELoss, ListMLELoss.
  ``lambda_loss.py``: LambdaLoss, its five weighting schemes, RankNetLoss.
* ``pointwise.py``: the legacy ``fit`` losses (pure functions, ``resolve_loss``, ``loss_parts``).
* ``activations.py``: activation functions and their torch names.
"""

from __future__ import annotations

from crossjax.losses.activations import (
    activation_from_export_name,
    activation_name_for_export,
    host_form,
    identity,
    is_known_activation,
    relu,
    resolve_activation,
    resolve_scoring_activation,
    resolve_training_activation,
    sigmoid,
    softmax,
    tanh,
)
from crossjax.losses.base import CrossEncoderLoss, PairLayout, activation_config_name
from crossjax.losses.in_batch import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
from crossjax.losses.lambda_loss import (
    BaseWeightingScheme,
    LambdaLoss,
    LambdaRankScheme,
    NDCGLoss1Scheme,
    NDCGLoss2PPScheme,
    NDCGLoss2Scheme,
    NoWeightingScheme,
    RankNetLoss,
)
from crossjax.losses.listwise import ADRMSELoss, ListNetLoss
from crossjax.losses.margin import MarginMSELoss
from crossjax.losses.plist_mle import ListMLELoss, PListMLELambdaWeight, PListMLELoss
from crossjax.losses.pointwise import (
    LossFn,
    LossParts,
    binary_cross_entropy_with_logits,
    binary_cross_entropy_with_logits_parts,
    cross_entropy,
    cross_entropy_parts,
    ignored_label,
    loss_parts,
    mse,
    mse_parts,
    ratio,
    resolve_loss,
)
from crossjax.losses.pointwise_st import BinaryCrossEntropyLoss, CrossEntropyLoss, MSELoss
from crossjax.st_paths import alias_class_modules, alias_modules

__all__ = [
    # sentence-transformers 6.2 cross-encoder losses
    "CrossEncoderLoss",
    "PairLayout",
    "ADRMSELoss",
    "BinaryCrossEntropyLoss",
    "CrossEntropyLoss",
    "MultipleNegativesRankingLoss",
    "CachedMultipleNegativesRankingLoss",
    "MarginMSELoss",
    "MSELoss",
    "ListNetLoss",
    "ListMLELoss",
    "PListMLELoss",
    "PListMLELambdaWeight",
    "LambdaLoss",
    "BaseWeightingScheme",
    "NoWeightingScheme",
    "NDCGLoss1Scheme",
    "NDCGLoss2Scheme",
    "LambdaRankScheme",
    "NDCGLoss2PPScheme",
    "RankNetLoss",
    # legacy fit losses
    "LossFn",
    "LossParts",
    "loss_parts",
    "ratio",
    "binary_cross_entropy_with_logits_parts",
    "cross_entropy_parts",
    "mse_parts",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "mse",
    "ignored_label",
    "resolve_loss",
    # activations
    "resolve_activation",
    "activation_config_name",
    "resolve_scoring_activation",
    "resolve_training_activation",
    "activation_name_for_export",
    "activation_from_export_name",
    "is_known_activation",
    "host_form",
    "identity",
    "sigmoid",
    "tanh",
    "softmax",
    "relu",
]

# sentence-transformers' other paths to these losses: one module per loss (the older paths its examples use),
# and its 6.x modules by topic
alias_class_modules(
    __name__,
    (
        "BinaryCrossEntropyLoss", "CachedMultipleNegativesRankingLoss", "CrossEntropyLoss", "LambdaLoss",
        "ListMLELoss", "ListNetLoss", "MSELoss", "MarginMSELoss", "MultipleNegativesRankingLoss", "PListMLELoss",
        "RankNetLoss",
    ),
)  # fmt: skip
alias_modules(
    __name__,
    {
        "adr_mse": ["ADRMSELoss"],
        "binary_cross_entropy": ["BinaryCrossEntropyLoss"],
        "cached_multiple_negatives_ranking": ["CachedMultipleNegativesRankingLoss"],
        "cross_entropy": ["CrossEntropyLoss"],
        "list_mle": ["ListMLELoss"],
        "list_net": ["ListNetLoss"],
        "margin_mse": ["MarginMSELoss"],
        "mse": ["MSELoss"],
        "multiple_negatives_ranking": ["MultipleNegativesRankingLoss"],
        "rank_net": ["RankNetLoss"],
    },
)
