"""Dense forward/backward reference: definition, buffers, and gradients by finite differences."""

import numpy as np
import pytest

from nnxp.ops.activation import ACTIVATION_OPS, activation_forward
from nnxp.ops.dense import dense_backward_ref, dense_forward_ref

rng = np.random.default_rng(0)


@pytest.mark.parametrize("act", sorted(ACTIVATION_OPS))
@pytest.mark.parametrize("use_bias", [True, False])
def test_forward_is_matmul_bias_activation(act, use_bias):
    x, w, b = rng.normal(size=(7, 5)), rng.normal(size=(5, 3)), rng.normal(size=3)
    out = np.empty((7, 3))
    y, z = dense_forward_ref(x, w, b if use_bias else None, act, out)
    expected = activation_forward(act, x @ w + (b if use_bias else 0))
    assert y is out
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)
    if ACTIVATION_OPS[act].needs_z:
        np.testing.assert_allclose(z, x @ w + (b if use_bias else 0), rtol=1e-12)
    else:
        assert z is None


@pytest.mark.parametrize("act", sorted(ACTIVATION_OPS))
def test_backward_matches_finite_differences(act):
    x, w, b = rng.normal(size=(4, 3)), rng.normal(size=(3, 2)), rng.normal(size=2)
    dy = rng.normal(size=(4, 2))

    def objective(x_, w_, b_):
        return float((dy * dense_forward_ref(x_, w_, b_, act)[0]).sum())

    y, z = dense_forward_ref(x, w, b, act)
    dw, db = np.empty_like(w), np.empty_like(b)
    dx = dense_backward_ref(dy.copy(), x, w, y, z, act, dw, db)
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + 1e-6
            up = objective(x, w, b)
            arr[idx] = orig - 1e-6
            down = objective(x, w, b)
            arr[idx] = orig
            num[idx] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_first_layer_skips_input_gradient():
    x, w = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3, 2)).astype(np.float32)
    y, z = dense_forward_ref(x, w, None, "relu")
    dw = np.empty_like(w)
    assert dense_backward_ref(np.ones_like(y), x, w, y, z, "relu", dw, None, need_dx=False) is None
    assert dw.dtype == np.float32
