"""Property tests (hypothesis): finite in, finite out, shapes and dtypes kept, at every level.

- Dense forward/backward (``nnxp.ops.dense``) for every activation,
- every loss in ``nnxp.ops.loss`` on inputs of the form it expects,
- one or more steps of every optimizer in ``nnxp.optimizers`` (with clipping, decay and variants),
- one epoch of ``Sequential.fit`` on random finite data.

Inputs are finite with ``|x| <= 1e3``; float32 and float64 both, and a float32 computation must stay
float32 (no silent promotion). The numerics run under ``np.errstate(over/invalid/divide="raise")`` so an
intermediate overflow that happens to come out finite still counts as a failure. Settings are
derandomized with no example database, so every run (and CI) tries the same examples.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from nnxp import Dense, Dropout, Sequential, optimizers
from nnxp.errors import NumericalError
from nnxp.ops import dense as D
from nnxp.ops import loss as L
from nnxp.ops.activation import ACTIVATION_OPS

BOUND = 1e3


def props(max_examples: int) -> settings:
    """Reproducible settings: the same examples every run, no database, no per-example deadline."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- strategies ------------------------------------------------------------------------------------------------

dtypes = st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])


def finite(dtype: np.dtype, shape, low: float = -BOUND, high: float = BOUND, **kw) -> st.SearchStrategy:
    """Arrays of `shape` with finite values in [low, high], each exactly representable in `dtype`."""
    elements = st.floats(low, high, allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize, **kw)
    return hnp.arrays(dtype, shape, elements=elements)


@st.composite
def dense_problems(draw):
    dtype = draw(dtypes)
    batch, n_in, n_out = draw(st.integers(1, 64)), draw(st.integers(1, 32)), draw(st.integers(1, 16))
    x = draw(finite(dtype, (batch, n_in)))
    w = draw(finite(dtype, (n_in, n_out)))
    b = draw(st.none() | finite(dtype, (n_out,)))
    dy = draw(finite(dtype, (batch, n_out)))
    return x, w, b, dy


@st.composite
def class_targets(draw, dtype, batch: int, classes: int):
    """(B, C) targets: one-hot rows or soft (non-negative rows summing to 1)."""
    if draw(st.booleans()):
        labels = draw(hnp.arrays(np.int64, (batch,), elements=st.integers(0, classes - 1)))
        return np.eye(classes, dtype=dtype)[labels]
    weights = draw(finite(dtype, (batch, classes), 0.0, 1.0))
    weights[weights.sum(axis=1) == 0] = 1.0  # an all-zero row becomes uniform
    return (weights / weights.sum(axis=1, keepdims=True)).astype(dtype)


def _logits(dtype, shape):
    return finite(dtype, shape)


def _probs(dtype, shape):  # strictly inside (0, 1), as a plain (unfused) CE/BCE expects
    return finite(dtype, shape, 0.0, 1.0, exclude_min=True, exclude_max=True)


def _labels(dtype, batch, classes):
    return hnp.arrays(np.int64, (batch,), elements=st.integers(0, classes - 1))


def _unit(dtype, shape):
    return finite(dtype, shape, 0.0, 1.0)


# loss function -> (output strategy, target strategy); each strategy maker takes (draw, dtype, batch, classes)
LOSS_INPUTS = {
    "softmax_cross_entropy": (_logits, lambda d, dt, b, c: d(class_targets(dt, b, c))),
    "sparse_softmax_cross_entropy": (_logits, lambda d, dt, b, c: d(_labels(dt, b, c))),
    "sigmoid_binary_cross_entropy": (_logits, lambda d, dt, b, c: d(_unit(dt, (b, c)))),
    "categorical_cross_entropy": (_probs, lambda d, dt, b, c: d(class_targets(dt, b, c))),
    "sparse_categorical_cross_entropy": (_probs, lambda d, dt, b, c: d(_labels(dt, b, c))),
    "binary_cross_entropy": (_probs, lambda d, dt, b, c: d(_unit(dt, (b, c)))),
    "mean_squared_error": (_logits, lambda d, dt, b, c: d(finite(dt, (b, c)))),
    "mean_absolute_error": (_logits, lambda d, dt, b, c: d(finite(dt, (b, c)))),
}


def test_every_public_loss_is_covered():
    public = {name for name in vars(L) if not name.startswith("_") and not name.endswith("_ref") and name != "EPS"}
    public = {name for name in public if callable(getattr(L, name)) and getattr(L, name).__module__ == L.__name__}
    assert public == set(LOSS_INPUTS)


def _assert_finite(a, what: str, dtype) -> None:
    a = np.asarray(a)
    assert a.dtype == dtype, f"{what}: dtype {a.dtype}, expected {dtype}"
    assert np.isfinite(a).all(), f"{what}: {int((~np.isfinite(a)).sum())} non-finite values"


# --- Dense ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", sorted(ACTIVATION_OPS))
@props(50)
@given(problem=dense_problems())
def test_dense_forward_backward_finite_shapes_and_dtype(activation, problem):
    x, w, b, dy = problem
    dtype, (batch, n_in), n_out = x.dtype, x.shape, w.shape[1]
    originals = [a.copy() for a in (x, w) + ((b,) if b is not None else ())]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y, z = D.dense_forward(x, w, b, activation)
        y = y.copy()  # backward may reuse buffers; keep what forward returned
        dw, db = np.empty_like(w), None if b is None else np.empty_like(b)
        dx = D.dense_backward(dy.copy(), x, w, y.copy(), z, activation, dw, db, None, True)
    assert y.shape == (batch, n_out)
    _assert_finite(y, "y", dtype)
    assert dx.shape == (batch, n_in) and dw.shape == (n_in, n_out)
    _assert_finite(dx, "dx", dtype)
    _assert_finite(dw, "dw", dtype)
    if b is not None:
        assert db.shape == (n_out,)
        _assert_finite(db, "db", dtype)
    for before, after in zip(originals, (x, w) + ((b,) if b is not None else ())):
        assert before.tobytes() == after.tobytes(), "dense forward/backward modified an input"


# --- losses --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(LOSS_INPUTS))
@props(50)
@given(data=st.data())
def test_loss_and_gradient_are_finite(name, data):
    make_out, make_target = LOSS_INPUTS[name]
    dtype = data.draw(dtypes)
    batch, classes = data.draw(st.integers(1, 64)), data.draw(st.integers(1, 16))
    if "sparse" in name or "softmax" in name or name == "categorical_cross_entropy":
        classes = max(classes, 2)
    out = data.draw(make_out(dtype, (batch, classes)))
    target = make_target(data.draw, dtype, batch, classes)
    grad = np.full_like(out, np.nan) if data.draw(st.booleans()) else None  # a stale buffer, as the model passes
    out_before, target_before = out.copy(), target.copy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, g = getattr(L, name)(out, target, grad)
    assert np.ndim(loss) == 0
    _assert_finite(loss, "loss", dtype)
    assert g.shape == out.shape
    _assert_finite(g, "gradient", dtype)
    if grad is not None:
        assert g is grad, "the gradient must be written into the buffer passed in"
    assert out.tobytes() == out_before.tobytes() and target.tobytes() == target_before.tobytes()


# --- optimizers ----------------------------------------------------------------------------------------------

maybe_positive = st.none() | st.floats(1e-3, 10.0)


@st.composite
def optimizer_configs(draw, name: str) -> dict:
    """Keyword arguments for optimizer `name`, including its variants (momentum, Nesterov, centered, ...)."""
    kw = {
        "learning_rate": draw(st.floats(1e-5, 1.0)),
        "clipnorm": draw(maybe_positive),
        "clipvalue": draw(maybe_positive),
    }
    if name != "adamw":
        kw["weight_decay"] = draw(st.none() | st.floats(0.0, 0.1))
    else:
        kw["weight_decay"] = draw(st.floats(0.0, 0.1))
    if name == "sgd":
        kw.update(momentum=draw(st.sampled_from([0.0, 0.5, 0.9, 0.99])), nesterov=draw(st.booleans()))
    elif name == "rmsprop":
        kw.update(rho=draw(st.sampled_from([0.0, 0.9, 0.99])), momentum=draw(st.sampled_from([0.0, 0.9])),
                  centered=draw(st.booleans()), epsilon=draw(st.sampled_from([1e-7, 1e-3])))
    elif name == "adagrad":
        kw.update(initial_accumulator_value=draw(st.sampled_from([0.0, 0.1, 1.0])))
    elif name == "adadelta":
        kw.update(rho=draw(st.sampled_from([0.0, 0.95, 0.999])))
    elif name in ("adam", "adamax", "adamw"):
        kw.update(beta_1=draw(st.sampled_from([0.0, 0.9])), beta_2=draw(st.sampled_from([0.0, 0.999])),
                  epsilon=draw(st.sampled_from([1e-7, 1e-3])))
    return kw


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
@props(50)
@given(data=st.data())
def test_optimizer_steps_keep_parameters_and_state_finite(name, data):
    dtype = data.draw(dtypes)
    size = data.draw(st.integers(1, 512))
    params = data.draw(finite(dtype, (size,)))
    grads = data.draw(st.lists(finite(dtype, (size,)), min_size=1, max_size=3))
    opt = optimizers.OPTIMIZERS[name](**data.draw(optimizer_configs(name)))
    for step, g in enumerate(grads, 1):
        with np.errstate(over="raise", invalid="raise", divide="raise"):
            opt.apply(params, g.copy())  # apply may clip the gradient in place
        assert params.shape == (size,)
        _assert_finite(params, f"parameters after step {step}", dtype)
        assert opt.iterations == step
        for slot, buf in opt.state.items():
            assert buf.shape == (size,)
            _assert_finite(buf, f"state {slot!r} after step {step}", dtype)


# --- the model -----------------------------------------------------------------------------------------------

# loss -> (output activation, targets from (draw, n, units))
MODEL_LOSSES = {
    "sparse_categorical_crossentropy": ("softmax", lambda d, n, k: d(_labels(np.float32, n, k))),
    "categorical_crossentropy": ("softmax", lambda d, n, k: d(class_targets(np.dtype(np.float32), n, k))),
    "binary_crossentropy": ("sigmoid", lambda d, n, k: d(_unit(np.dtype(np.float64), (n, k)))),
    "mse": ("linear", lambda d, n, k: d(finite(np.dtype(np.float64), (n, k)))),
    "mae": ("tanh", lambda d, n, k: d(finite(np.dtype(np.float64), (n, k), -1.0, 1.0))),
}


@props(100)
@given(data=st.data())
def test_one_epoch_of_fit_keeps_weights_finite_and_float32(data):
    n, features = data.draw(st.integers(1, 64), "n"), data.draw(st.integers(1, 32), "features")
    hidden, units = data.draw(st.integers(1, 16), "hidden"), data.draw(st.integers(2, 8), "units")
    activation = data.draw(st.sampled_from(sorted(ACTIVATION_OPS)), "activation")
    loss = data.draw(st.sampled_from(sorted(MODEL_LOSSES)), "loss")
    out_activation, make_y = MODEL_LOSSES[loss]
    x = data.draw(finite(np.dtype(np.float64), (n, features)), "x")
    y = make_y(data.draw, n, units)
    layers = [Dense(hidden, activation, input_dim=features)]
    rate = data.draw(st.sampled_from([0.0, 0.2, 0.5]), "dropout")
    if rate:
        layers.append(Dropout(rate))
    layers.append(Dense(units, out_activation))
    model = Sequential(layers, seed=data.draw(st.integers(0, 2**32), "seed"))
    opt_name = data.draw(st.sampled_from(sorted(optimizers.OPTIMIZERS)), "optimizer")
    model.compile(optimizers.get({"name": opt_name, "learning_rate": data.draw(st.floats(1e-4, 1e-2), "lr")}), loss)
    batch_size = data.draw(st.integers(1, 64), "batch_size")
    try:
        model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
        diverged = False
    except NumericalError:
        diverged = True  # a diverging run stops, and must still keep finite weights
    event(f"diverged: {diverged}")
    for i, w in enumerate(model.get_weights()):
        _assert_finite(w, f"weight {i}", np.dtype(np.float32))
    assert model.params.dtype == np.float32 and model.grads.dtype == np.float32
    if not diverged:
        assert model.optimizer.iterations == -(-n // batch_size)  # one step per batch
        for slot, buf in model.optimizer.state.items():
            _assert_finite(buf, f"optimizer state {slot!r}", np.dtype(np.float32))
