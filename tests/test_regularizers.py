"""L1 / L2 / L1L2 weight penalties: values, gradients (finite differences), lookup, bad factors."""

import numpy as np
import pytest

from nnxp import regularizers
from nnxp.errors import NnxpError, NnxpTypeError
from nnxp.regularizers import L1, L1L2, L2

W = np.array([[0.5, -1.25, 2.0], [-0.75, 0.3, -0.1]])  # no zeros: |w| is differentiable everywhere here


@pytest.mark.parametrize(
    "reg, expected",
    [
        (L1(0.1), 0.1 * 4.9),
        (L2(0.01), 0.01 * (0.25 + 1.5625 + 4.0 + 0.5625 + 0.09 + 0.01)),
        (L1L2(l1=0.2, l2=0.5), 0.2 * 4.9 + 0.5 * 6.475),
        (L1L2(), 0.0),
    ],
)
def test_penalty_values(reg, expected):
    np.testing.assert_allclose(float(reg.penalty(W)), expected, rtol=1e-12)


def test_defaults_follow_keras():
    assert (L1().l1, L1().l2) == (0.01, 0.0)
    assert (L2().l1, L2().l2) == (0.0, 0.01)


@pytest.mark.parametrize("reg", [L1(0.3), L2(0.7), L1L2(l1=0.05, l2=0.4)], ids=["l1", "l2", "l1l2"])
def test_gradient_matches_finite_differences(reg):
    w = np.random.default_rng(0).normal(size=(4, 3))
    w[np.abs(w) < 1e-3] = 0.5
    dw = np.full_like(w, 1.0)  # gradients are *added* to what the loss already put there
    reg.add_gradient(w, dw)
    eps = 1e-6
    numeric = np.zeros_like(w)
    for idx in np.ndindex(w.shape):
        up, down = w.copy(), w.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (float(reg.penalty(up)) - float(reg.penalty(down))) / (2 * eps)
    np.testing.assert_allclose(dw - 1.0, numeric, rtol=1e-7, atol=1e-9)


def test_float32_penalty_and_gradient_keep_dtype():
    w = W.astype(np.float32)
    dw = np.zeros_like(w)
    reg = L1L2(l1=0.1, l2=0.1)
    reg.add_gradient(w, dw)
    assert dw.dtype == np.float32
    np.testing.assert_allclose(dw, 0.1 * np.sign(W) + 0.2 * W, rtol=1e-6)
    assert reg.penalty(w).dtype == np.float32


def test_get_from_none_instance_name_and_dict():
    assert regularizers.get(None) is None
    reg = L2(0.3)
    assert regularizers.get(reg) is reg
    by_name = regularizers.get("L2")
    assert isinstance(by_name, L2) and by_name.l2 == 0.01
    assert isinstance(regularizers.get(" l1 "), L1)
    assert isinstance(regularizers.get("l1l2"), L1L2)
    from_dict = regularizers.get({"l1": 0.2, "l2": 0.5})
    assert (from_dict.l1, from_dict.l2) == (0.2, 0.5)


@pytest.mark.parametrize("reg", [L1(0.3), L2(0.7), L1L2(l1=0.05, l2=0.4)])
def test_config_round_trip(reg):
    config = reg.get_config()
    again = regularizers.get(config)
    assert (again.l1, again.l2) == (reg.l1, reg.l2)
    np.testing.assert_allclose(float(again.penalty(W)), float(reg.penalty(W)), rtol=1e-15)


@pytest.mark.parametrize(
    "make, pattern",
    [
        (lambda: L1(-0.1), r"`l1` must be a finite number >= 0\. Received: l1=-0\.1"),
        (lambda: L2(float("inf")), r"`l2` must be a finite number >= 0\. Received: l2=inf"),
        (lambda: L2(float("nan")), r"`l2` .*Received: l2=nan"),
        (lambda: L1L2(l1="a"), r"`l1` .*Received: l1='a'"),
        (lambda: L2(True), r"`l2` .*Received: l2=True"),
        (lambda: regularizers.get({"l2": -1}), r"`l2` .*Received: l2=-1"),
    ],
)
def test_invalid_factors(make, pattern):
    with pytest.raises(NnxpError, match=pattern):
        make()


def test_unknown_name_and_wrong_type():
    with pytest.raises(NnxpError, match=r"`kernel_regularizer` must be one of .*Received: kernel_regularizer='l3'\. "
                                        r"Did you mean"):
        regularizers.get("l3")
    with pytest.raises(NnxpTypeError, match=r"`bias_regularizer` must be None, a name .*"
                                            r"Received: bias_regularizer=0\.1"):
        regularizers.get(0.1, "bias_regularizer")


def test_factors_accept_numpy_scalars():
    assert L2(np.float32(0.25)).l2 == 0.25


def test_keras_lowercase_spellings_are_the_classes():
    # keras.regularizers.l2(0.01), as tutorials write it, failed with AttributeError
    import nnxp

    assert (regularizers.l1, regularizers.l2, regularizers.l1_l2) == (L1, L2, L1L2)
    w = np.array([[0.5, -2.0], [1.5, 0.25]])
    assert float(regularizers.l2(0.01).penalty(w)) == pytest.approx(0.01 * (w**2).sum())
    layer = nnxp.Dense(3, kernel_regularizer=regularizers.l2(0.01), input_dim=2)
    assert layer.get_config()["kernel_regularizer"] == L2(0.01).get_config()
