"""JAX losses must equal PyTorch's on the real rows and ignore padding rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossjax.losses import (
    activation_from_export_name,
    activation_name_for_export,
    binary_cross_entropy_with_logits,
    cross_entropy,
    host_form,
    identity,
    loss_parts,
    mse,
    relu,
    resolve_activation,
    resolve_loss,
    sigmoid,
    softmax,
    tanh,
)

torch = pytest.importorskip("torch")
nn = torch.nn

B = 16
REAL = 11  # rows 11..15 are padding


def _logits(seed: int, num_labels: int, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, num_labels)).astype(np.float32) * scale
    if scale > 1:
        x[0, 0] = 80.0  # exp overflows in float32 without the stable form
        x[1, 0] = -80.0
    return x


def _mask() -> np.ndarray:
    m = np.zeros(B, np.float32)
    m[:REAL] = 1.0
    return m


def _close(ours: jnp.ndarray, theirs: torch.Tensor) -> None:
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_bce_matches_torch(scale: float) -> None:
    logits = _logits(0, 1, scale)
    labels = np.random.default_rng(1).uniform(size=B).astype(np.float32)
    labels[:4] = [1.0, 0.0, 1.0, 0.0]
    labels_pad = labels.copy()
    labels_pad[REAL:] = 123.0  # garbage in padding rows must not matter
    ours = binary_cross_entropy_with_logits(
        jnp.asarray(logits), jnp.asarray(labels_pad), jnp.asarray(_mask())
    )
    theirs = nn.BCEWithLogitsLoss()(torch.from_numpy(logits[:REAL, 0]), torch.from_numpy(labels[:REAL]))
    _close(ours, theirs)

    ours_pw = resolve_loss(nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0)), 1)(
        jnp.asarray(logits), jnp.asarray(labels_pad), jnp.asarray(_mask())
    )
    theirs_pw = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))(
        torch.from_numpy(logits[:REAL, 0]), torch.from_numpy(labels[:REAL])
    )
    _close(ours_pw, theirs_pw)


def test_bce_gradient_at_a_zero_logit_is_torchs() -> None:
    """softplus's slope at 0 is 1/2; written with |x| and max(-x, 0) autodiff gave 1 (a zeroed head's logits)."""
    logits, labels = np.zeros((3, 1), np.float32), np.array([1.0, 0.0, 0.3], np.float32)
    for pos_weight in (None, 3.0):
        torch_loss = nn.BCEWithLogitsLoss(pos_weight=None if pos_weight is None else torch.tensor(pos_weight))
        given = torch.from_numpy(logits[:, 0]).requires_grad_()
        torch_loss(given, torch.from_numpy(labels)).backward()
        ours = jax.grad(
            lambda x, loss=resolve_loss(torch_loss, 1): loss(x, jnp.asarray(labels), jnp.ones(3, jnp.float32))
        )(jnp.asarray(logits))
        np.testing.assert_allclose(np.asarray(ours)[:, 0], given.grad.numpy(), atol=1e-7)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_cross_entropy_matches_torch(scale: float) -> None:
    logits = _logits(2, 3, scale)
    labels = np.random.default_rng(3).integers(0, 3, size=B).astype(np.int32)
    m = jnp.asarray(_mask())
    t_logits, t_labels = torch.from_numpy(logits[:REAL]), torch.from_numpy(labels[:REAL]).long()
    _close(
        cross_entropy(jnp.asarray(logits), jnp.asarray(labels), m), nn.CrossEntropyLoss()(t_logits, t_labels)
    )

    weight = torch.tensor([0.2, 1.0, 3.0])
    for module in (
        nn.CrossEntropyLoss(weight=weight),
        nn.CrossEntropyLoss(label_smoothing=0.1),
        nn.CrossEntropyLoss(weight=weight, label_smoothing=0.2),
    ):
        ours = resolve_loss(module, 3)(jnp.asarray(logits), jnp.asarray(labels), m)
        _close(ours, module(t_logits, t_labels))


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_mse_matches_torch(scale: float) -> None:
    logits = _logits(4, 1, scale)
    labels = np.random.default_rng(5).normal(size=B).astype(np.float32)
    ours = mse(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(_mask()))
    theirs = nn.MSELoss()(torch.from_numpy(logits[:REAL, 0]), torch.from_numpy(labels[:REAL]))
    _close(ours, theirs)


def test_padding_rows_get_no_gradient_and_all_padding_is_zero() -> None:
    logits = jnp.asarray(_logits(6, 1, 1.0))
    labels = jnp.ones(B)
    grad = jax.grad(lambda x: binary_cross_entropy_with_logits(x, labels, jnp.asarray(_mask())))(logits)
    assert np.all(np.asarray(grad)[REAL:] == 0)
    assert np.all(np.asarray(grad)[:REAL] != 0)
    for fn, lab in ((binary_cross_entropy_with_logits, labels), (mse, labels)):
        assert float(fn(logits, lab, jnp.zeros(B))) == 0.0
    assert float(cross_entropy(jnp.zeros((B, 2)), jnp.zeros(B, jnp.int32), jnp.zeros(B))) == 0.0


def test_jit() -> None:
    logits = jnp.asarray(_logits(7, 3, 1.0))
    labels = jnp.zeros(B, jnp.int32)
    assert np.isfinite(float(jax.jit(cross_entropy)(logits, labels, jnp.asarray(_mask()))))


def test_resolve_loss_defaults_and_names() -> None:
    assert resolve_loss(None, 1) is binary_cross_entropy_with_logits
    assert resolve_loss(None, 3) is cross_entropy
    for name, fn in [
        ("bce", binary_cross_entropy_with_logits),
        ("Binary_Cross_Entropy", binary_cross_entropy_with_logits),
        ("CE", cross_entropy),
        ("cross_entropy", cross_entropy),
        ("MSE", mse),
    ]:
        assert resolve_loss(name, 1 if fn is not cross_entropy else 3) is fn
    with pytest.raises(ValueError, match="cross-entropy needs num_labels >= 2.*old_fit flattens the logits"):
        resolve_loss("CE", 1)
    assert resolve_loss(nn.BCEWithLogitsLoss(), 1) is binary_cross_entropy_with_logits
    assert resolve_loss(nn.CrossEntropyLoss(), 2) is cross_entropy
    assert resolve_loss(nn.MSELoss(), 1) is mse

    def custom(logits, labels, mask):
        return jnp.sum(logits)

    assert resolve_loss(custom, 1) is custom


def test_resolve_loss_errors() -> None:
    with pytest.raises(ValueError, match="Unsupported torch loss L1Loss.*BCEWithLogitsLoss"):
        resolve_loss(nn.L1Loss(), 1)
    with pytest.raises(ValueError, match="reduction='sum'"):
        resolve_loss(nn.MSELoss(reduction="sum"), 1)
    # an unsupported loss is named as such before its reduction (whose advice would not make it supported)
    with pytest.raises(ValueError, match="Unsupported torch loss KLDivLoss"):
        resolve_loss(nn.KLDivLoss(reduction="batchmean"), 1)
    with pytest.raises(ValueError, match="Unsupported torch loss L1Loss"):
        resolve_loss(nn.L1Loss(reduction="sum"), 1)
    with pytest.raises(ValueError, match="Unknown loss 'hinge'"):
        resolve_loss("hinge", 1)
    with pytest.raises(TypeError):
        resolve_loss(3, 1)
    with pytest.raises(ValueError, match=r"shape \[B, 1\]"):
        mse(jnp.zeros((4, 3)), jnp.zeros(4), jnp.ones(4))


@pytest.mark.parametrize(
    "module, num_labels",
    [
        (nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0])), 1),
        (nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 5.0]), label_smoothing=0.1), 3),
        (nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 5.0])), 3),
        (nn.CrossEntropyLoss(label_smoothing=0.2), 3),
        (nn.MSELoss(), 1),
    ],
    ids=["bce-pos_weight", "ce-weight-smoothing", "ce-weight", "ce-smoothing", "mse"],
)
def test_parts_summed_over_micro_batches_equal_torch_on_the_whole_batch(module, num_labels) -> None:
    """Gradient accumulation sums (numerator, denominator) over micro-batches and divides once: that must be
    torch's loss of the whole batch even when the micro-batches' weights differ (class weights)."""
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(B, num_labels)).astype(np.float32)
    if num_labels == 1:
        labels = rng.uniform(size=B).astype(np.float32)
        t_logits, t_labels = torch.from_numpy(logits[:REAL, 0]), torch.from_numpy(labels[:REAL])
    else:
        labels = np.array([0, 0, 0, 1, 0, 2, 1, 2, 2, 2, 1, 0, 0, 0, 0, 0], np.int32)
        t_logits, t_labels = torch.from_numpy(logits[:REAL]), torch.from_numpy(labels[:REAL]).long()
    parts = loss_parts(resolve_loss(module, num_labels))
    assert parts is not None
    mask = _mask()
    num = den = 0.0
    for rows in (slice(0, 3), slice(3, 8), slice(8, 12), slice(12, B)):  # the last one is all padding
        n, d = parts(jnp.asarray(logits[rows]), jnp.asarray(labels[rows]), jnp.asarray(mask[rows]))
        num, den = num + float(n), den + float(d)
    _close(num / den, module(t_logits, t_labels))


def test_loss_parts_only_for_shipped_losses() -> None:
    assert loss_parts(binary_cross_entropy_with_logits) is not None
    assert loss_parts(cross_entropy) is not None and loss_parts(mse) is not None

    def custom(logits, labels, mask):
        return jnp.sum(logits)

    assert loss_parts(custom) is None


def test_activations_match_torch() -> None:
    x = np.random.default_rng(8).normal(size=(5, 3)).astype(np.float32) * 4
    pairs = [
        (nn.Identity(), identity),
        (nn.Sigmoid(), sigmoid),
        (nn.Tanh(), tanh),
        (nn.Softmax(dim=-1), softmax),
        (nn.ReLU(), relu),
    ]
    for module, ours in pairs:
        fn = resolve_activation(module)
        assert fn is ours
        np.testing.assert_allclose(
            np.asarray(fn(jnp.asarray(x))), module(torch.from_numpy(x)).numpy(), rtol=1e-6
        )
    assert resolve_activation(None) is identity
    assert resolve_activation("identity") is identity
    assert resolve_activation("Sigmoid") is sigmoid
    assert resolve_activation(jax.nn.sigmoid) is sigmoid
    custom = lambda v: v * 2  # noqa: E731
    assert resolve_activation(custom) is custom
    with pytest.raises(ValueError, match="Unsupported torch activation PReLU"):
        resolve_activation(nn.PReLU())
    with pytest.raises(ValueError, match="negative_slope=0.01"):  # a saved model records only the class
        resolve_activation(nn.LeakyReLU(0.2))
    assert resolve_activation(torch.nn.functional.softmax) is softmax  # torch's dim=1 of (pairs, labels) logits
    with pytest.raises(ValueError, match="torch function"):
        resolve_activation(torch.nn.functional.normalize)
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        resolve_activation("swish")
    with pytest.raises(ValueError, match="dim=0"):
        resolve_activation(nn.Softmax(dim=0))


def test_export_names_are_sentence_transformers_fullnames() -> None:
    from sentence_transformers.util import fullname, import_from_string

    for module in (nn.Identity(), nn.Sigmoid(), nn.Tanh(), nn.Softmax(dim=-1), nn.ReLU()):
        name = activation_name_for_export(resolve_activation(module))
        assert name == fullname(module)
        assert activation_name_for_export(module) == name
        assert type(import_from_string(name)()) is type(module)
        assert activation_from_export_name(name) is resolve_activation(module)
    assert activation_name_for_export(None) == "torch.nn.modules.linear.Identity"
    assert activation_name_for_export(sigmoid) == "torch.nn.modules.activation.Sigmoid"
    assert activation_from_export_name("torch.nn.Sigmoid") is sigmoid
    with pytest.raises(ValueError, match="Cannot export custom activation"):
        activation_name_for_export(lambda v: v)
    with pytest.raises(ValueError, match="Unsupported activation"):
        activation_from_export_name("torch.nn.modules.activation.PReLU")
    with pytest.raises(ValueError, match="Unsupported activation"):
        activation_from_export_name("mypackage.Sigmoid")


def test_numpy_forms_of_the_default_activations_match_torch_to_two_float32_steps() -> None:
    """predict applies Sigmoid and Identity in numpy (no eager JAX program to compile): torch's values within two
    float32 steps (ours is rounded from float64; torch's is up to two steps off), no overflow at the extremes."""
    wide = np.random.default_rng(9).normal(size=10_000).astype(np.float32) * 8
    edges = np.array([-np.inf, -1e4, -104.0, -88.7, -20.0, -1e-6, 0.0, 1e-6, 20.0, 88.7, 1e4, np.inf], np.float32)
    x = np.concatenate([wide, edges])
    with np.errstate(all="raise"):
        ours = host_form(sigmoid)(x)
    assert ours.dtype == np.float32
    np.testing.assert_array_max_ulp(ours, torch.sigmoid(torch.from_numpy(x)).numpy(), maxulp=2)
    np.testing.assert_array_equal(host_form(identity)(x), x)
    assert host_form(tanh) is None and host_form(lambda v: v) is None


def test_every_default_torch_activation_and_function_matches_torch() -> None:
    """Each torch activation class (and functional form) crossjax maps computes torch's values, and its export
    name is the path sentence-transformers writes and re-creates."""
    from sentence_transformers.util import fullname, import_from_string

    from crossjax.losses.activations import _TORCH_ACTIVATIONS

    x = np.random.default_rng(3).normal(size=(6, 3)).astype(np.float32) * 6
    x[0, 0] = 25.0  # past Softplus's threshold
    assert len(_TORCH_ACTIVATIONS) >= 20
    for name in _TORCH_ACTIVATIONS:
        module = getattr(nn, name)(dim=-1) if name in {"Softmax", "LogSoftmax", "Softmin"} else getattr(nn, name)()
        fn = resolve_activation(module)
        assert activation_name_for_export(fn) == fullname(module)
        assert type(import_from_string(fullname(module))()) is type(module)
        assert activation_from_export_name(fullname(module)) is fn
        # within two float32 steps where values are large (SELU's ~20: XLA's and torch's exp differ by an ulp)
        np.testing.assert_allclose(
            np.asarray(fn(jnp.asarray(x))), module(torch.from_numpy(x)).numpy(), rtol=2.5e-7, atol=1e-6, err_msg=name
        )
        # and torch's gradient, at the kinks too (LeakyReLU at 0, Hardtanh at +-1, the hard ones at +-3, ...)
        corners = np.array([[-6.0, -3.0, -1.0], [0.0, 1.0, 3.0], [6.0, 20.0, 0.5]], np.float32)
        given = torch.from_numpy(corners).requires_grad_()
        (module(given) * torch.arange(9.0).reshape(3, 3)).sum().backward()
        ours = jax.grad(lambda z, fn=fn: (fn(z) * jnp.arange(9.0).reshape(3, 3)).sum())(jnp.asarray(corners))
        np.testing.assert_allclose(np.asarray(ours), given.grad.numpy(), atol=1e-5, err_msg=name)
    F = torch.nn.functional
    for torch_fn in (torch.sigmoid, torch.tanh, torch.relu, F.gelu, F.silu, F.softplus, F.logsigmoid, F.leaky_relu):
        np.testing.assert_allclose(
            np.asarray(resolve_activation(torch_fn)(jnp.asarray(x))), torch_fn(torch.from_numpy(x)).numpy(), atol=1e-6
        )
