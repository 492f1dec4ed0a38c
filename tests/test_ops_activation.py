"""Activation forward/backward against plain formulas and float64 finite differences."""

import numpy as np
import pytest

from nnxp.ops.activation import ACTIVATION_OPS, ELU_ALPHA, LEAKY_RELU_SLOPE, activation_backward, activation_forward


def _plain(name, z):
    """Textbook formulas, written independently of the ops (float64)."""
    if name == "linear":
        return z
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "leaky_relu":
        return np.where(z > 0, z, LEAKY_RELU_SLOPE * z)
    if name == "elu":
        return np.where(z > 0, z, ELU_ALPHA * (np.exp(z) - 1))
    if name == "sigmoid":
        return 1 / (1 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    if name == "softplus":
        return np.log(1 + np.exp(z))
    if name == "gelu":
        return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    if name == "silu":
        return z / (1 + np.exp(-z))
    if name == "softmax":
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    raise AssertionError(name)


NAMES = sorted(ACTIVATION_OPS)


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_plain_formula(name):
    z = np.random.default_rng(0).normal(size=(7, 5)) * 3
    np.testing.assert_allclose(activation_forward(name, z), _plain(name, z), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
def test_backward_matches_finite_differences(name):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 6)) * 2
    z[np.abs(z) < 1e-3] = 0.5  # stay away from the kinks of relu-like functions
    dy = rng.normal(size=z.shape)
    y = activation_forward(name, z)
    got = activation_backward(name, dy.copy(), y, z)
    # numeric d(sum(dy * f(z)))/dz
    eps = 1e-6
    num = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        num[idx] = ((dy * activation_forward(name, zp)).sum() - (dy * activation_forward(name, zm)).sum()) / (2 * eps)
    np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_inputs_stay_finite_and_keep_dtype(name, dtype):
    z = np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # no overflow, no invalid operation
        y = activation_forward(name, z.copy())
        dz = activation_backward(name, np.ones_like(z), y, z)
    assert y.dtype == dtype and dz.dtype == dtype
    assert np.isfinite(y).all() and np.isfinite(dz).all()


def test_forward_in_place_and_softmax_rows_sum_to_one():
    z = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    out = activation_forward("softmax", z, z)
    assert out is z
    np.testing.assert_allclose(z.sum(axis=1), 1.0, rtol=1e-6)


def test_nan_propagates():
    z = np.array([[np.nan, 1.0]])
    for name in NAMES:
        assert np.isnan(activation_forward(name, z.copy())).any(), name
