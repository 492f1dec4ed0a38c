"""Dense forward/backward reference: definition, buffers, and gradients by finite differences."""

import numpy as np
import pytest

from nnxp import Dense, Sequential
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


# --- the compiled CPU epilogues (Numba) against the references ------------------------------------------------
# Sizes 1, 7 and 1031 (no multiple of a chunk), 0 / +-inf / NaN among the inputs, float32 and float64, serial and
# threaded. ReLU, linear and leaky ReLU must agree bit for bit; the others within a few ulps of NumPy's exp/tanh.

EXACT = {"linear", "relu", "leaky_relu"}
TOL = {np.float32: dict(rtol=1e-5, atol=2e-5), np.float64: dict(rtol=1e-12, atol=1e-12)}  # dw, dx: sums of 6-1031 terms


def _numba_on(monkeypatch, threaded):
    pytest.importorskip("numba")
    from nnxp.ops import _cpu
    from nnxp.ops import dense as D

    monkeypatch.setattr(_cpu, "_enabled", True)
    ran = []  # (loop, threaded) of every compiled loop that ran
    real = _cpu.call

    def call(name, fn, *args, parallel=False, result=None):
        ok = real(name, fn, *args, parallel=parallel, result=result)
        if ok:
            ran.append((name, parallel))
        return ok

    monkeypatch.setattr(_cpu, "call", call)
    monkeypatch.setattr(D, "_ran", ran, raising=False)
    if threaded:
        monkeypatch.setattr(_cpu, "_threads", 2)  # as on a machine with two BLAS threads
        monkeypatch.setattr(D, "PARALLEL_MIN_ELEMENTS", 0)
        monkeypatch.setattr(D, "PARALLEL_CHUNK", 4)  # several chunks even at small sizes
    return D, _cpu


def _inputs(rows, dtype, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(rows, 6)).astype(dtype)
    w = r.normal(size=(6, 9)).astype(dtype)
    b = r.normal(size=9).astype(dtype)
    x[0, :3] = [0.0, 0.0, 0.0]
    if rows > 3:
        x[1, 0], x[2, 1], x[3, 2] = np.inf, -np.inf, np.nan
    return x, w, b


def _same(a, b, act, dtype):
    if act in EXACT:
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, equal_nan=True, **TOL[dtype])


@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 7, 1031])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("act", sorted(ACTIVATION_OPS))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_compiled_forward_and_backward_match_the_references(monkeypatch, act, use_bias, rows, dtype, threaded):
    D, _cpu = _numba_on(monkeypatch, threaded)
    x, w, b = _inputs(rows, dtype)
    b = b if use_bias else None
    y_ref, z_ref = D.dense_forward_ref(x, w, b, act, np.empty((rows, 9), dtype), np.empty((rows, 9), dtype))
    y, z = D.dense_forward(x, w, b, act, np.empty((rows, 9), dtype), np.empty((rows, 9), dtype))
    _same(y, y_ref, act, dtype)
    assert y.dtype == dtype
    assert (z is None) == (z_ref is None)
    if z is not None:
        np.testing.assert_array_equal(z, z_ref)
    # backward from the same (reference) forward state, with a dy that has 0, inf and NaN too
    dy = np.random.default_rng(1).normal(size=(rows, 9)).astype(dtype)
    if rows > 3:
        dy[4 % rows, :3] = [0.0, np.inf, np.nan]
    grads = {}
    for name, fn in (("ref", D.dense_backward_ref), ("fast", D.dense_backward)):
        dw, db = np.full_like(w, np.nan), (np.full(9, np.nan, dtype) if use_bias else None)
        dx = fn(dy.copy(), x, w, y_ref, z_ref, act, dw, db, np.empty_like(x))
        grads[name] = (dx, dw, db)
    for a, r in zip(grads["fast"], grads["ref"]):
        if r is not None:
            _same(a, r, act, dtype)
    if act != "softmax":  # (softmax, a whole-row op, runs its reference)
        assert D._ran == [("bias_act", threaded), ("act_grad", threaded)]  # the loops really ran


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_compiled_paths_take_only_what_they_handle(monkeypatch):
    D, _cpu = _numba_on(monkeypatch, False)
    x, w, b = _inputs(7, np.float32)
    # mixed dtypes, a non-contiguous batch and float16 go to the reference, with the reference's numbers
    for args in ((x.astype(np.float64), w, b), (x[::2], w, b), (x.astype(np.float16), w.astype(np.float16),
                                                                 b.astype(np.float16))):
        y, _ = D.dense_forward(*args, "tanh")
        y_ref, _ = D.dense_forward_ref(*args, "tanh")
        np.testing.assert_array_equal(y, y_ref)
    assert D._ran == []
    monkeypatch.setattr(_cpu, "_enabled", False)  # as without Numba
    y, _ = D.dense_forward(x, w, b, "tanh")
    np.testing.assert_array_equal(y, D.dense_forward_ref(x, w, b, "tanh")[0])


def test_cpu_loop_codes_cover_the_kernel_activations_and_match_the_loops():
    """The Numba loops' LOOP_ACT_CODES (numbered apart from kernels.cu's _cuda.ACT_CODES) name the same
    activations, and each labelled case in the loops tests the code the table gives its activation."""
    import inspect
    import re

    from nnxp.ops import _cuda
    from nnxp.ops import dense as D

    assert set(D.LOOP_ACT_CODES) == set(_cuda.ACT_CODES)
    for loop in (D._bias_act_loop, D._act_grad_loop):
        cases = re.findall(r"act == (\d+):  # ([a-z ]+?)[:,(]", inspect.getsource(loop))
        assert len(cases) >= 7, loop.__name__
        for code, label in cases:
            assert D.LOOP_ACT_CODES[label.strip().replace(" ", "_")] == int(code), (loop.__name__, label)


# --- the CPU path with NumPy alone (no Numba) against the references ----------------------------------------------
# ReLU runs against a zero row instead of the scalar 0 (a faster NumPy loop): the same numbers bit for bit.


def _numba_off(monkeypatch):
    from nnxp.ops import _cpu
    from nnxp.ops import dense as D

    monkeypatch.setattr(_cpu, "_enabled", False)
    return D


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("act", sorted(ACTIVATION_OPS))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_numpy_path_is_the_reference_bit_for_bit(monkeypatch, act, use_bias, rows, dtype):
    D = _numba_off(monkeypatch)
    x, w, b = _inputs(rows, dtype)
    b = b if use_bias else None
    out = np.empty((rows, 9), dtype)
    y_ref, z_ref = D.dense_forward_ref(x, w, b, act, np.empty((rows, 9), dtype), np.empty((rows, 9), dtype))
    y, z = D.dense_forward(x, w, b, act, out, np.empty((rows, 9), dtype))
    assert y is out and y.dtype == dtype
    np.testing.assert_array_equal(y.view(np.uint8), y_ref.view(np.uint8))  # NaN payloads and signed zeros too
    assert (z is None) == (z_ref is None)
    if z is not None:
        np.testing.assert_array_equal(z, z_ref)
    y_new, _ = D.dense_forward(x, w, b, act)  # no buffer given: a new array, the same numbers
    np.testing.assert_array_equal(y_new.view(np.uint8), y_ref.view(np.uint8))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (inf * 0 in the GEMM: NaN on purpose)
def test_numpy_relu_keeps_nan_and_gives_the_references_signed_zeros(monkeypatch):
    D = _numba_off(monkeypatch)
    x = np.eye(3, 2, dtype=np.float32)  # row 0 picks w's row 0, row 1 w's row 1, row 2 nothing (zeros)
    w = np.array([[np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, -1.0, 2.0],
                  [-3e-45, 3e-45, -1e38, 1e38, 0.5, -0.5, -0.0, 1.0]], np.float32)
    for b in (None, np.array([0.0, -0.0, 1.0, -1.0, -0.0, -0.0, 0.0, -2.0], np.float32)):
        y, _ = D.dense_forward(x, w, b, "relu", np.empty((3, 8), np.float32))
        y_ref, _ = D.dense_forward_ref(x, w, b, "relu", np.empty((3, 8), np.float32))
        np.testing.assert_array_equal(y.view(np.int32), y_ref.view(np.int32))
        assert np.isnan(y[0, :2]).all()
    zeros = D._zero_row(y)
    assert zeros.flags.writeable is False and not zeros.any() and zeros.shape == (8,) and zeros.dtype == y.dtype


# --- the compiled backward epilogue alone: activation gradient and bias sum in one pass ------------------------------
# Its gradients are the reference's bit for bit (signed zeros too) for every activation whose gradient needs no
# transcendental of its own (GELU and SiLU call Numba's tanh, within a few ulps of NumPy's); its bias sums are,
# for every activation, the row-order sums of the gradients it made (what ``dz.sum(axis=0, out=db)`` gives).
# (NaN's sign bit is left out: which NaN an addition keeps depends on its operands' order, and inf * 0 makes
# x86's negative default NaN; no consumer of a gradient reads it.)
TANH_BACKWARD = {"gelu", "silu"}


def _same_bits(a, b):
    """Equal bit for bit, signed zeros included, NaN wherever the other is NaN (any sign or payload)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    ints = np.int32 if a.dtype == np.float32 else np.int64
    np.testing.assert_array_equal(a[~nan].view(ints), b[~nan].view(ints))


def _epilogue_case(rows, cols, dtype, act, seed):
    """A forward state and dy of shape (rows, cols), with NaN, +-inf, +-0.0 among dy, y and z."""
    from nnxp.ops import dense as D

    r = np.random.default_rng(seed)
    x, w = r.normal(size=(rows, 5)).astype(dtype), r.normal(size=(5, cols)).astype(dtype)
    b = r.normal(size=cols).astype(dtype)
    y, z = D.dense_forward_ref(x, w, b, act, np.empty((rows, cols), dtype), np.empty((rows, cols), dtype))
    dy = r.normal(size=(rows, cols)).astype(dtype)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -0.0], dtype)
    for a in (dy, y) if z is None else (dy, y, z):
        flat = a.reshape(-1)
        if flat.size:
            k = min(len(special), flat.size)
            flat[r.choice(flat.size, k, replace=False)] = special[:k]
    if rows:  # a column of dead units under negative gradients: ReLU's products are all -0.0 there
        dy[:, 0], y[:, 0] = -1.0 - r.random(rows), 0.0
    return x, w, y, z, dy


@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", sorted(set(ACTIVATION_OPS) - {"softmax"}))
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_compiled_backward_epilogue_is_the_reference_bit_for_bit(monkeypatch, act, dtype, threaded):
    D, _cpu = _numba_on(monkeypatch, threaded)
    assert act in D.LOOP_ACT_CODES
    for rows in (0, 1, 2, 33):
        for cols in (1, 7, 8, 9, 17, 65):
            x, w, y, z, dy = _epilogue_case(rows, cols, dtype, act, seed=rows * 100 + cols)
            for use_bias in (True, False):
                got = {}
                for name, fn in (("ref", D.dense_backward_ref), ("fast", D.dense_backward)):
                    D._ran.clear()
                    dz, db = dy.copy(), (np.full(cols, np.nan, dtype) if use_bias else None)
                    fn(dz, x, w, y, z, act, np.empty_like(w), db, np.empty_like(x))
                    got[name] = dz, db
                assert D._ran == [("act_grad", threaded)], (rows, cols)  # the loop ran, not the reference
                (dz, db), (dz_ref, db_ref) = got["fast"], got["ref"]
                if act in TANH_BACKWARD:
                    np.testing.assert_allclose(dz, dz_ref, equal_nan=True, **TOL[dtype])
                    if use_bias:
                        np.testing.assert_allclose(db, db_ref, equal_nan=True, **TOL[dtype])
                else:
                    _same_bits(dz, dz_ref)
                    if use_bias:
                        _same_bits(db, db_ref)
                if use_bias:  # the fused sum is the row-order sum of the loop's own gradients
                    _same_bits(db, dz.sum(axis=0, out=np.empty(cols, dtype)))
                    if rows and act == "relu":  # all -0.0 gradients: their sum from +0.0 is +0.0, as NumPy's
                        assert (dz[:, 0] == 0).all() and np.signbit(dz[:, 0]).all() and not np.signbit(db[0])


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])  # 4 classes; one output unit (binary)
@pytest.mark.parametrize("act", ["relu", "sigmoid"])
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_fit_with_bias_free_layers_trains_as_with_the_reference_epilogue(monkeypatch, act, head):
    """A whole fit (Adam, shuffled, a partial last batch) with layers without a bias, whose bias sums go to
    scratch: bit for bit the fit whose backward epilogue is the NumPy reference (everything else compiled).
    With one output unit the head's bias gradient is a one-column sum (NumPy sums it pairwise)."""
    from nnxp.ops import _cpu

    D, _ = _numba_on(monkeypatch, False)
    ran = D._ran
    rng = np.random.default_rng(0)
    units, loss = (4, "sparse_categorical_crossentropy") if head == "softmax" else (1, "binary_crossentropy")
    x, y = rng.standard_normal((203, 13)).astype(np.float32), rng.integers(0, max(units, 2), 203)
    compiled = _cpu.call
    for biases in ((False, False, False), (False, True, False), (True, True, True)):
        got = []
        for epilogue in (True, False):
            monkeypatch.setattr(_cpu, "call", (lambda name, *a, **k: (name != "act_grad" and compiled(name, *a, **k)))
                                if not epilogue else compiled)
            ran.clear()
            model = Sequential([Dense(17, activation=act, use_bias=biases[0], input_dim=13),
                                Dense(9, activation=act, use_bias=biases[1]),
                                Dense(units, activation=head, use_bias=biases[2])], seed=3)
            model.compile("adam", loss)
            model.fit(x, y, epochs=2, batch_size=32, verbose=0)
            assert (("act_grad", False) in ran) == epilogue
            got.append(model.get_weights())
        for a, b in zip(*got, strict=True):
            np.testing.assert_array_equal(a.view(np.int32), b.view(np.int32), err_msg=str(biases))
