"""Losses: fused pairs against their plain composition, gradients against finite differences."""

import numpy as np
import pytest

from nnxp.ops import loss as L
from nnxp.ops.activation import activation_forward

rng = np.random.default_rng(0)


def _numeric_grad(fn, out, target, eps=1e-6):
    num = np.zeros_like(out)
    for idx in np.ndindex(out.shape):
        p, m = out.copy(), out.copy()
        p[idx] += eps
        m[idx] -= eps
        num[idx] = (float(fn(p, target)[0]) - float(fn(m, target)[0])) / (2 * eps)
    return num


def _onehot(labels, c):
    return np.eye(c)[labels]


CASES = {
    "softmax_ce": (L.softmax_cross_entropy, lambda: rng.normal(size=(5, 4)), lambda: _onehot(rng.integers(0, 4, 5), 4)),
    "sparse_softmax_ce": (L.sparse_softmax_cross_entropy, lambda: rng.normal(size=(5, 4)),
                          lambda: rng.integers(0, 4, 5)),
    "sigmoid_bce": (L.sigmoid_binary_cross_entropy, lambda: rng.normal(size=(5, 2)), lambda: rng.uniform(size=(5, 2))),
    "cce": (L.categorical_cross_entropy, lambda: rng.uniform(0.05, 0.95, (5, 4)),
            lambda: _onehot(rng.integers(0, 4, 5), 4)),
    "sparse_cce": (L.sparse_categorical_cross_entropy, lambda: rng.uniform(0.05, 0.95, (5, 4)),
                   lambda: rng.integers(0, 4, 5)),
    "bce": (L.binary_cross_entropy, lambda: rng.uniform(0.05, 0.95, (5, 2)), lambda: rng.uniform(size=(5, 2))),
    "mse": (L.mean_squared_error, lambda: rng.normal(size=(5, 3)), lambda: rng.normal(size=(5, 3))),
    "mae": (L.mean_absolute_error, lambda: rng.normal(size=(5, 3)), lambda: rng.normal(size=(5, 3)) + 0.01),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradient_matches_finite_differences(case):
    fn, make_out, make_target = CASES[case]
    out, target = make_out(), make_target()
    _, grad = fn(out.copy(), target)
    np.testing.assert_allclose(grad, _numeric_grad(fn, out, target), rtol=1e-6, atol=1e-9)


def test_fused_softmax_ce_equals_plain_composition():
    z = rng.normal(size=(6, 5)) * 4
    labels = rng.integers(0, 5, 6)
    fused, _ = L.softmax_cross_entropy(z, _onehot(labels, 5))
    sparse, _ = L.sparse_softmax_cross_entropy(z, labels)
    plain = -np.log(activation_forward("softmax", z)[np.arange(6), labels]).mean()
    np.testing.assert_allclose([fused, sparse], [plain, plain], rtol=1e-12)


def test_fused_sigmoid_bce_equals_plain_composition():
    z = rng.normal(size=(6, 2)) * 3
    t = rng.uniform(size=(6, 2))
    p = 1 / (1 + np.exp(-z))
    plain = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    np.testing.assert_allclose(L.sigmoid_binary_cross_entropy(z, t)[0], plain, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_losses_stable_for_huge_logits(dtype):
    z = np.array([[1e4, -1e4, 0.0], [-3e4, 3e4, 1.0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, g = L.sparse_softmax_cross_entropy(z, np.array([0, 0]))
        loss2, g2 = L.sigmoid_binary_cross_entropy(z, np.ones_like(z))
    assert np.isfinite([loss, loss2]).all() and np.isfinite(g).all() and np.isfinite(g2).all()
    assert g.dtype == dtype and g2.dtype == dtype
    # the second row puts 6e4 of logit against the true class: loss ~ 3e4 per row / 2 rows
    np.testing.assert_allclose(float(loss), (0 + 6e4) / 2, rtol=1e-6)


def test_soft_targets_in_softmax_ce():
    z = rng.normal(size=(3, 4))
    t = rng.dirichlet(np.ones(4), size=3)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    np.testing.assert_allclose(L.softmax_cross_entropy(z, t)[0], -(t * logp).sum(1).mean(), rtol=1e-12)


def test_grad_buffer_is_reused():
    z = rng.normal(size=(4, 3)).astype(np.float32)
    buf = np.empty_like(z)
    _, g = L.softmax_cross_entropy(z, _onehot(np.array([0, 1, 2, 0]), 3).astype(np.float32), buf)
    assert g is buf and g.dtype == np.float32


@pytest.mark.parametrize("use_numba", [False, True], ids=["reference", "compiled"])
@pytest.mark.parametrize("name", ["softmax_ce", "sparse_softmax_ce", "sigmoid_bce"])
def test_fused_losses_write_their_loss_into_loss_out(monkeypatch, name, use_numba):
    # the training step's head passes a 0-d loss_out it reuses: same value, same dtype, that very array
    if use_numba:
        pytest.importorskip("numba")
    monkeypatch.setattr(L._cpu, "numba_enabled", lambda: use_numba)
    fn, make_z, make_t = CASES[name]
    z, t = make_z().astype(np.float32), make_t()
    t = t if t.dtype.kind in "iu" else t.astype(np.float32)
    want, want_g = fn(z, t, np.empty_like(z))
    out = np.full((), np.nan, np.float32)
    got, g = fn(z, t, np.empty_like(z), loss_out=out)
    assert got is out and got.dtype == np.float32
    assert float(got) == float(want)  # bit for bit
    np.testing.assert_array_equal(g, want_g)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sparse_softmax_ce_wraps_negative_labels_once(dtype):
    """The documented contract below the model's validation: label -k is class C-k, in loss and gradient."""
    z = (rng.normal(size=(7, 5)) * 3).astype(dtype)
    labels = np.array([-1, -5, 0, 4, -3, 2, -2])
    loss, g = L.sparse_softmax_cross_entropy(z.copy(), labels)
    # negative labels take the reference (the compiled CPU loop takes labels in [0, C) only): compare with it
    want_loss, want_g = L.sparse_softmax_cross_entropy_ref(z.copy(), labels % 5)
    assert float(loss) == float(want_loss)
    np.testing.assert_array_equal(g, want_g)
    plain = -np.log(activation_forward("softmax", z.astype(np.float64))[np.arange(7), labels % 5]).mean()
    np.testing.assert_allclose(float(loss), plain, rtol=1e-5 if dtype == "float32" else 1e-12)


def test_the_model_refuses_negative_labels_before_the_kernel():
    from nnxp import Dense, NnxpError, Sequential

    model = Sequential([Dense(3, "softmax", input_dim=2)], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(NnxpError, match=r"labels must lie in \[0, 2\].*Received: labels from -1 to 2"):
        model.fit(np.zeros((3, 2)), np.array([-1, 0, 2]), verbose=0)


# --- the compiled CPU losses (Numba) against the references ---------------------------------------------------
# float32 and float64; 1, 7 and 1031 rows; huge logits, 0, +-inf and NaN among them; with and without sample
# weights (a zero weight among them). The loss is summed in float64 by the loop, the reference in the dtype.

FUSED = {
    "softmax_xent": (L.softmax_cross_entropy, L.softmax_cross_entropy_ref, "soft"),
    "sparse_softmax_xent": (L.sparse_softmax_cross_entropy, L.sparse_softmax_cross_entropy_ref, "labels"),
    "sigmoid_bce": (L.sigmoid_binary_cross_entropy, L.sigmoid_binary_cross_entropy_ref, "probs"),
}
FUSED_TOL = {np.float32: dict(rtol=2e-6, atol=1e-7), np.float64: dict(rtol=1e-13, atol=1e-15)}


def _fused_inputs(kind, rows, dtype, special):
    r = np.random.default_rng(rows)
    z = (r.normal(size=(rows, 10)) * 4).astype(dtype)
    if kind == "labels":
        t = r.integers(0, 10, rows)
    elif kind == "soft":
        t = r.dirichlet(np.ones(10), rows).astype(dtype)
        t[::3] = np.eye(10, dtype=dtype)[r.integers(0, 10, t[::3].shape[0])]  # some one-hot rows
    else:
        t = r.uniform(size=(rows, 10)).astype(dtype)
    if special and rows > 4:
        z[0, :3] = [0.0, 5e3, -5e3]  # huge logits: nothing may overflow
        z[1, 2], z[2, 5], z[3, 7] = np.inf, -np.inf, np.nan
    return z, t


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("special", [False, True], ids=["finite", "inf_nan"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 7, 1031])
@pytest.mark.parametrize("name", sorted(FUSED))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_compiled_losses_match_the_references(monkeypatch, name, rows, dtype, special, weighted):
    pytest.importorskip("numba")
    from nnxp.ops import _cpu

    monkeypatch.setattr(_cpu, "_enabled", True)
    ran = []
    real = _cpu.call
    monkeypatch.setattr(_cpu, "call", lambda n, *a, **k: ran.append(n) or real(n, *a, **k))
    op, ref, kind = FUSED[name]
    z, t = _fused_inputs(kind, rows, dtype, special)
    w = np.random.default_rng(3).uniform(0, 2, rows).astype(dtype) if weighted else None
    if w is not None:
        w[0] = 0.0
    g_ref = np.full_like(z, np.nan)
    loss_ref, _ = ref(z.copy(), t, g_ref, sample_weight=w)
    g = np.full_like(z, np.nan)
    loss, g_out = op(z.copy(), t, g, sample_weight=w)
    assert ran == [name] and g_out is g
    assert np.asarray(loss).dtype == dtype and np.asarray(loss).shape == ()
    np.testing.assert_allclose(g, g_ref, equal_nan=True, **FUSED_TOL[dtype])
    np.testing.assert_allclose(float(loss), float(loss_ref), equal_nan=True,
                               rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_compiled_sparse_loss_leaves_bad_labels_to_the_reference(monkeypatch):
    pytest.importorskip("numba")
    from nnxp.ops import _cpu

    monkeypatch.setattr(_cpu, "_enabled", True)
    z = np.random.default_rng(0).normal(size=(4, 3))
    g = np.full_like(z, 7.0)
    with pytest.raises(IndexError):
        L.sparse_softmax_cross_entropy(z, np.array([0, 1, 3, 2]), g)  # 3 is out of range: the reference raises
    loss, _ = L.sparse_softmax_cross_entropy(z, np.array([0, 1, -1, 2]), g)  # a negative label wraps, as before
    loss_ref, g_ref = L.sparse_softmax_cross_entropy_ref(z, np.array([0, 1, -1, 2]))
    np.testing.assert_array_equal(g, g_ref)
    assert float(loss) == float(loss_ref)


def test_compiled_losses_fall_back_where_they_cannot_run(monkeypatch):
    pytest.importorskip("numba")
    from nnxp.ops import _cpu

    monkeypatch.setattr(_cpu, "_enabled", True)
    z = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    t = np.eye(4, dtype=np.float64)[[0, 1, 2, 3, 0, 1]]  # targets in another dtype than the logits
    loss, g = L.softmax_cross_entropy(z, t)
    loss_ref, g_ref = L.softmax_cross_entropy_ref(z, t)
    np.testing.assert_array_equal(g, g_ref)
    assert float(loss) == float(loss_ref)
