"""The output head (nnxp/head.py): the final activation and the loss, fused where they pair.

Every head's loss and gradient are checked against an independent float64 reference (activation, then the
loss written out in NumPy; gradients by central finite differences), with and without sample weights. Layers
must not change behaviour when a model is compiled, and predict must equal the layers run one by one.
"""

import numpy as np
import pytest

from nnxp import Activation, Dense, Dropout, Sequential
from nnxp.callbacks import Callback
from nnxp.head import FusedHead, OutputHead, make_head
from nnxp.losses import get as get_loss

B, N_IN, N_HID, K = 6, 4, 5, 3


# --- an independent reference: activation, then the loss, in float64 NumPy ----------------------------------
def _act(name, z):
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    assert name == "linear"
    return z


def _per_row(loss, p, y):
    """Row i's loss l_i (B,) on the network's outputs p."""
    if loss == "categorical_crossentropy":
        return -(y * np.log(p)).sum(axis=1)
    if loss == "sparse_categorical_crossentropy":
        return -np.log(p[np.arange(len(y)), y])
    if loss == "binary_crossentropy":
        return -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    if loss == "mean_squared_error":
        return ((p - y) ** 2).mean(axis=1)
    assert loss == "mean_absolute_error"
    return np.abs(p - y).mean(axis=1)


def _reference_loss(loss, p, y, w):
    """Keras's sum_over_batch_size: sum_i w_i l_i / B."""
    rows = _per_row(loss, p, y)
    return (rows if w is None else rows * w).sum() / len(rows)


def _fd_grad(f, v, eps=1e-6):
    """Central finite differences of scalar f at v (float64)."""
    g = np.zeros_like(v)
    for i in np.ndindex(v.shape):
        old = v[i]
        v[i] = old + eps
        up = f()
        v[i] = old - eps
        down = f()
        v[i] = old
        g[i] = (up - down) / (2 * eps)
    return g


def _targets(loss, rng, k=K):
    if loss == "categorical_crossentropy":
        return np.eye(k)[rng.integers(0, k, B)]
    if loss == "sparse_categorical_crossentropy":
        return rng.integers(0, k, B)
    if loss == "binary_crossentropy":
        return rng.integers(0, 2, (B, k)).astype(np.float64)
    return rng.normal(size=(B, k))


# (case id, output layers after the hidden tanh Dense, loss, fused?, the activation the reference applies)
CASES = [
    ("softmax+cce", lambda: [Dense(K, "softmax")], "categorical_crossentropy", True, "softmax"),
    ("softmax+sparse", lambda: [Dense(K, "softmax")], "sparse_categorical_crossentropy", True, "softmax"),
    ("sigmoid+bce", lambda: [Dense(K, "sigmoid")], "binary_crossentropy", True, "sigmoid"),
    ("Activation(softmax)+cce", lambda: [Dense(K), Activation("softmax")], "categorical_crossentropy", True,
     "softmax"),
    ("Activation(sigmoid)+bce", lambda: [Dense(K), Activation("sigmoid")], "binary_crossentropy", True, "sigmoid"),
    ("linear+mse", lambda: [Dense(K)], "mean_squared_error", False, "linear"),
    ("linear+mae", lambda: [Dense(K)], "mean_absolute_error", False, "linear"),
    ("tanh+mse", lambda: [Dense(K, "tanh")], "mean_squared_error", False, "tanh"),
    ("softmax+mse", lambda: [Dense(K, "softmax")], "mean_squared_error", False, "softmax"),
    ("sigmoid+mae", lambda: [Dense(K, "sigmoid")], "mean_absolute_error", False, "sigmoid"),
    # the generic fallback for a fusable loss: the last layer has no activation to split off
    ("softmax+dropout0+cce", lambda: [Dense(K, "softmax"), Dropout(0.0)], "categorical_crossentropy", False,
     "softmax"),
]


def _model(out_layers, loss, seed=0):
    model = Sequential([Dense(N_HID, "tanh", input_dim=N_IN), *out_layers()], dtype="float64", seed=seed)
    model.compile("sgd", loss)
    model.build(N_IN)
    return model


def _reference_model_loss(model, act, loss, x, y, w):
    """The loss from the model's flat weights, computed in NumPy: tanh hidden layer, Dense, activation."""
    k1, b1, k2, b2 = model.get_weights()  # copies of the flat buffer that finite differences perturb
    p = _act(act, np.tanh(x @ k1 + b1) @ k2 + b2)
    return _reference_loss(loss, p, y, w)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_head_loss_and_weight_gradients_equal_the_unfused_reference(case, weighted):
    _, out_layers, loss, fused, act = case
    model = _model(out_layers, loss)
    assert isinstance(model._head, FusedHead) is fused  # the pair really runs the fused path (or really not)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(B, N_IN)), _targets(loss, rng)
    w = rng.uniform(0.0, 3.0, B) if weighted else None
    out = model.forward(x, training=True)
    value, dy = model.loss_and_grad(out, y, w)
    for i in range(len(model.layers) - 1, -1, -1):
        dy = model.layers[i].backward(dy, need_dx=i > 0)
    grads = model.grads.copy()

    expected = _reference_model_loss(model, act, loss, x, y, w)
    np.testing.assert_allclose(float(value), expected, rtol=1e-12)
    numeric = _fd_grad(lambda: _reference_model_loss(model, act, loss, x, y, w), model.params)
    np.testing.assert_allclose(grads, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_head_gradient_is_the_derivative_of_its_outputs(case, weighted):
    # at the head itself: dL/d(outputs), where the outputs are logits for a fused head, activations otherwise
    _, out_layers, loss, fused, act = case
    model = _model(out_layers, loss)
    head = model._head
    rng = np.random.default_rng(2)
    out = rng.normal(size=(B, K)) * 2.0
    if not fused:
        out = _act(act, out)  # what the layers hand an unfused head
    y = _targets(loss, rng)
    w = rng.uniform(0.0, 3.0, B) if weighted else None
    value, grad = head.loss_and_grad(out.copy(), y, w)

    def ref():
        return _reference_loss(loss, _act(act, out) if fused else out, y, w)

    np.testing.assert_allclose(float(value), ref(), rtol=1e-12)
    np.testing.assert_allclose(grad, _fd_grad(ref, out), rtol=1e-6, atol=1e-8)  # FD rounding: ~1e-16 / eps
    np.testing.assert_allclose(head.predictions(out.copy()), _act(act, out) if fused else out, rtol=1e-13)


def test_head_gradient_buffer_is_reused_across_steps():
    # no allocation per batch: the same batch shape gets the same dL/d(logits) buffer back
    model = _model(CASES[0][1], "categorical_crossentropy")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(B, N_IN)), _targets("categorical_crossentropy", rng)
    l1, g1 = model.loss_and_grad(model.forward(x, True), y)
    l2, g2 = model.loss_and_grad(model.forward(x, True), y)
    assert g1 is g2
    assert l1 is l2 and model._head.fused  # a fused head's loss goes into its own 0-d buffer too (loss_out)
    assert len(model._head.buffers()) == 2


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_layer_returns_the_same_before_and_after_compile_and_training_steps(case):
    _, out_layers, loss, _, _ = case
    model = Sequential([Dense(N_HID, "tanh", input_dim=N_IN), *out_layers()], dtype="float64", seed=4)
    model.build(N_IN)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(B, N_IN)), _targets(loss, rng)

    def each_layer():
        h, outs = x, []
        for layer in model.layers:
            h = layer.forward(h)
            outs.append(h.copy())
        return outs

    before = each_layer()
    model.compile("sgd", loss)
    model.loss_and_grad(model.forward(x, training=True), y)  # a training forward: logits where the head fuses
    after = each_layer()
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(after[-1], _manual_forward(model, x), rtol=1e-12)
    if any(getattr(layer, "activation", None) == "softmax" for layer in model.layers):
        np.testing.assert_allclose(after[-1].sum(axis=1), 1.0, rtol=1e-12)  # probabilities, never logits


def test_forward_after_forward_linear_backpropagates_through_the_activation():
    # backward differentiates the forward that ran last, whichever it was
    layer = Dense(K, "sigmoid", input_dim=N_IN)
    Sequential([layer], dtype="float64", seed=6).build(N_IN)
    rng = np.random.default_rng(7)
    x, dy = rng.normal(size=(B, N_IN)), rng.normal(size=(B, K))
    layer.forward_linear(x, training=True)
    dx_linear = layer.backward(dy.copy())
    np.testing.assert_allclose(dx_linear, dy @ layer.params["kernel"].T, rtol=1e-12)
    y = layer.forward(x, training=True)
    dx = layer.backward(dy.copy())
    np.testing.assert_allclose(dx, (dy * y * (1 - y)) @ layer.params["kernel"].T, rtol=1e-12)


def _manual_forward(model, x):
    h, weights = x, model.get_weights()
    i = 0
    for layer in model.layers:
        if isinstance(layer, Dense):
            h = h @ weights[i] + weights[i + 1]
            i += 2
        if isinstance(layer, (Dense, Activation)):
            h = _act(layer.activation, h)
    return h


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_predict_equals_the_layers_run_by_hand(case):
    _, out_layers, loss, _, _ = case
    model = Sequential([Dense(N_HID, "tanh", input_dim=N_IN), *out_layers()], dtype="float64", seed=8)
    x = np.random.default_rng(9).normal(size=(11, N_IN))
    uncompiled = model.predict(x, batch_size=4)
    np.testing.assert_allclose(uncompiled, _manual_forward(model, x), rtol=1e-12)
    model.compile("sgd", loss)
    np.testing.assert_allclose(model.predict(x, batch_size=4), uncompiled, rtol=1e-12)


def test_metrics_of_a_fused_head_read_probabilities():
    # accuracy and mse both on probabilities, as predict's outputs would give them (never on the logits)
    for act, loss in (("softmax", "categorical_crossentropy"), ("sigmoid", "binary_crossentropy")):
        model = Sequential([Dense(N_HID, "tanh", input_dim=N_IN), Dense(K, act)], dtype="float64", seed=10)
        model.compile("sgd", loss, metrics=["accuracy", "mse"])
        assert isinstance(model._head, FusedHead)
        rng = np.random.default_rng(11)
        x, y = rng.normal(size=(B, N_IN)), _targets(loss, rng)
        p = model.predict(x)
        if act == "softmax":
            acc = np.mean(p.argmax(axis=1) == y.argmax(axis=1))
        else:
            acc = np.mean((p > 0.5) == (y > 0.5))
        logs = model.evaluate(x, y, verbose=0, return_dict=True)
        np.testing.assert_allclose(logs["accuracy"], acc, rtol=1e-12)
        np.testing.assert_allclose(logs["mse"], np.mean((p - y) ** 2), rtol=1e-12)
        np.testing.assert_allclose(logs["loss"], _reference_loss(loss, p, y, None), rtol=1e-10)


def test_make_head_pairs_only_matching_activations():
    cce, bce, mse = (get_loss(n) for n in ("categorical_crossentropy", "binary_crossentropy", "mse"))
    assert type(make_head(cce, Dense(3, "softmax"))) is FusedHead
    assert type(make_head(bce, Dense(3, "sigmoid"))) is FusedHead
    assert type(make_head(cce, Activation("softmax"))) is FusedHead
    assert type(make_head(cce, Dense(3, "sigmoid"))) is OutputHead  # sigmoid outputs, cross-entropy: unfused
    assert type(make_head(bce, Dense(3, "softmax"))) is OutputHead
    assert type(make_head(mse, Dense(3, "softmax"))) is OutputHead
    assert type(make_head(cce, Dropout(0.5))) is OutputHead  # nothing to split off
    assert type(make_head(cce, None)) is OutputHead  # (a model without layers yet)


def test_the_head_follows_the_last_layer_added_after_compile():
    model = Sequential([Dense(N_HID, "tanh", input_dim=N_IN)], dtype="float64")
    model.compile("sgd", "categorical_crossentropy")
    assert not model._head.fused
    model.add(Dense(K, "softmax"))
    assert model._head.fused and model._head.activation == "softmax"


@pytest.mark.parametrize("act, loss, bias, y", [
    # float32 rounds sigmoid(1e-9) to exactly 0.5: predict's probability is not > 0.5, though the logit is > 0
    ("sigmoid", "binary_crossentropy", [1e-9], np.ones((4, 1))),
    # softmax of logits (0, 2e-8) rounds to (0.5, 0.5): argmax of the probabilities is class 0, of the logits 1
    ("softmax", "sparse_categorical_crossentropy", [0.0, 2e-8], np.ones(4, dtype=np.int64)),
], ids=["sigmoid", "softmax"])
def test_fused_accuracy_scores_the_probabilities_predict_returns(act, loss, bias, y):
    # the same network and weights must score the same whether or not its head fuses (a Dropout(0) after the
    # output layer keeps the head unfused), and the same as thresholding / argmax of what predict returns
    x = np.ones((4, 2), dtype=np.float32)
    scores = {}
    for tail in ([], [Dropout(0.0)]):
        model = Sequential([Dense(len(bias), act, input_dim=2, kernel_initializer="zeros"), *tail], seed=0)
        model.compile("sgd", loss, metrics=["accuracy"])
        model.build(2)
        model.set_weights([np.zeros((2, len(bias))), np.array(bias)])
        p = model.predict(x)
        expected = np.mean((p > 0.5) == (y > 0.5)) if act == "sigmoid" else np.mean(p.argmax(axis=1) == y)
        scores[model._head.fused] = model.evaluate(x, y, verbose=0)[1]
        assert scores[model._head.fused] == expected
    assert scores[True] == scores[False] == 0.0


@pytest.mark.parametrize("act, loss", [("softmax", "categorical_crossentropy"), ("tanh", "mse")],
                         ids=["fused", "unfused"])
def test_the_head_follows_the_model_to_another_gpu(fake_cupy, act, loss):
    # the head's reused buffers (dL/d(outputs), probabilities) belong to one device: after model.to("cuda:1") a
    # step must not write into the ones it made on cuda:0 (the stand-in refuses that, as CuPy without P2P)
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(16, N_IN)), np.eye(K)[rng.integers(0, K, 16)]
    metrics = ["accuracy", "mse"] if act == "softmax" else ["mae"]
    model = Sequential([Dense(N_HID, "tanh", input_dim=N_IN), Dense(K, act)], device="cuda:0", seed=13)
    model.compile("sgd", loss, metrics=metrics)
    cpu = Sequential([Dense(N_HID, "tanh", input_dim=N_IN), Dense(K, act)], seed=13)
    cpu.compile("sgd", loss, metrics=metrics)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    cpu.fit(x, y, epochs=1, batch_size=8, verbose=0)
    model.to("cuda:1")
    logs = model.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    expected = cpu.fit(x, y, epochs=1, batch_size=8, verbose=0).history
    assert all(buf.device.id == 1 for buf in model._head.buffers())
    for name in expected:
        np.testing.assert_allclose(logs[name], expected[name], rtol=1e-5)
    for a, b in zip(model.get_weights(), cpu.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class _PredictAndEvaluateEachBatch(Callback):
    """predict, evaluate and the last layer's own training forward between steps: they share the layers' and
    the head's reused buffers (outputs, dL/d(outputs), probabilities) with the training step."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def on_train_batch_end(self, batch, logs=None):
        self.model.predict(self.x[:8], batch_size=8)
        self.model.evaluate(self.x[:8], self.y[:8], batch_size=8, verbose=0)
        last = self.model.layers[-1]
        last.forward(self.model.device.asarray(np.ones((8, last.input_dim), self.model.dtype)), training=True)


def _fit_with_and_without_the_callback(case, device="cpu", cuda_graph=False):
    _, out_layers, loss, _, _ = case
    rng = np.random.default_rng(14)
    x, y = rng.normal(size=(40, N_IN)), _targets(loss, np.random.default_rng(15), K)
    y = np.concatenate([y] * 7)[:40]
    metrics = ["accuracy"] if loss != "mean_squared_error" and loss != "mean_absolute_error" else []
    if not loss.startswith("sparse"):
        metrics.append("mse")
    runs = []
    for callbacks in ([], "callback"):
        # (a Dropout draws from the model's generators: a predict or evaluate that drew too would show)
        model = Sequential([Dense(N_HID, "tanh", input_dim=N_IN), Dropout(0.3), *out_layers()], device=device,
                           seed=16)
        model.compile("adam", loss, metrics=metrics)
        cbs = [_PredictAndEvaluateEachBatch(x, y)] if callbacks else []
        history = model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=cbs, cuda_graph=cuda_graph).history
        runs.append((history, model.get_weights()))
    (h1, w1), (h2, w2) = runs
    assert h1 == h2
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_predict_and_evaluate_between_steps_change_no_bit_of_training(case):
    _fit_with_and_without_the_callback(case)


def test_predict_and_evaluate_between_replayed_steps_change_no_bit_of_training(fake_cupy, monkeypatch):
    # the same on the stand-in CuPy with cuda_graph=True: the replayed graph writes the buffers evaluate reuses
    import _stand_in_cupy

    from nnxp.ops import _cublas

    monkeypatch.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)
    _fit_with_and_without_the_callback(CASES[3], device="cuda", cuda_graph=True)  # Activation(softmax) + CE
