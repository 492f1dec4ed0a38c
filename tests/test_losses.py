"""The loss registry: names, aliases, fused activation pairs, target kinds."""

import numpy as np
import pytest

from nnxp import losses
from nnxp.errors import NnxpError, NnxpTypeError
from nnxp.losses import LOSSES, Loss
from nnxp.ops.activation import activation_forward

CANONICAL = sorted(LOSSES)


@pytest.mark.parametrize("name", CANONICAL)
def test_canonical_names_resolve_to_their_loss(name):
    loss = losses.get(name)
    assert isinstance(loss, Loss) and loss.name == name


@pytest.mark.parametrize(
    "alias, name",
    [
        ("mse", "mean_squared_error"),
        ("MSE", "mean_squared_error"),
        ("mae", "mean_absolute_error"),
        ("bce", "binary_crossentropy"),
        ("cce", "categorical_crossentropy"),
        (" Categorical_Cross_Entropy ", "categorical_crossentropy"),
        ("binary_cross_entropy", "binary_crossentropy"),
        ("sparse_categorical_cross_entropy", "sparse_categorical_crossentropy"),
    ],
)
def test_aliases(alias, name):
    assert losses.get(alias) is LOSSES[name]


@pytest.mark.parametrize(
    "name, fused, sparse, task",
    [
        ("mean_squared_error", None, False, "regression"),
        ("mean_absolute_error", None, False, "regression"),
        ("binary_crossentropy", "sigmoid", False, "binary"),
        ("categorical_crossentropy", "softmax", False, "categorical"),
        ("sparse_categorical_crossentropy", "softmax", True, "categorical"),
    ],
)
def test_fused_pairs_sparse_flags_and_tasks(name, fused, sparse, task):
    loss = LOSSES[name]
    assert loss.fused_activation == fused
    assert (loss.fused_fn is None) == (fused is None)
    assert loss.sparse is sparse
    assert loss.task == task


def _targets(name, rng, n, k):
    if name == "sparse_categorical_crossentropy":
        return rng.integers(0, k, n)
    if name == "categorical_crossentropy":
        return np.eye(k)[rng.integers(0, k, n)]
    return rng.integers(0, 2, (n, k)).astype(np.float64)


@pytest.mark.parametrize("name", [n for n in CANONICAL if LOSSES[n].fused_fn is not None])
def test_fused_function_on_logits_equals_plain_function_on_activations(name):
    loss = LOSSES[name]
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 4))
    y = _targets(name, rng, 6, 4)
    fused_value, _ = loss.fused_fn(z, y, None)
    plain_value, _ = loss.fn(activation_forward(loss.fused_activation, z), y, None)
    np.testing.assert_allclose(float(fused_value), float(plain_value), rtol=1e-9)


def test_a_loss_instance_passes_through():
    loss = LOSSES["mean_squared_error"]
    assert losses.get(loss) is loss


@pytest.mark.parametrize("typo, suggestion", [("mse2", "mse"), ("categorical_crossentopy", "categorical_crossentropy"),
                                              ("binary_crossentropyy", "binary_crossentropy")])
def test_unknown_name_suggests(typo, suggestion):
    with pytest.raises(NnxpError, match=rf"`loss` must be one of .*Received: loss='{typo}'\. "
                                        rf"Did you mean \"{suggestion}\"\?"):
        losses.get(typo)


def test_unknown_name_without_close_match():
    with pytest.raises(NnxpError, match=r"alias: mse, mae, bce, cce\)\. Received: loss='hinge'\.$"):
        losses.get("hinge")


@pytest.mark.parametrize("bad", [None, 3, np.mean])
def test_non_string_is_a_type_error(bad):
    with pytest.raises(NnxpTypeError, match=r"`loss` must be a loss name such as 'mse'\. Received: loss="):
        losses.get(bad)
