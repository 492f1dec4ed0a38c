"""Sequential end to end: gradients, training accuracy, reproducibility, dtypes, bad input."""

import os
import re
import signal
import threading

import numpy as np
import pytest

import nnxp
from nnxp import Activation, Dense, Dropout, NnxpError, Sequential
from nnxp.callbacks import Callback
from nnxp.errors import NnxpTypeError, NotCompiledError, NumericalError
from nnxp.layers import Layer
from nnxp.ops.activation import ACTIVATION_OPS

HIDDEN = sorted(ACTIVATION_OPS)
# loss -> (output activation, target maker)
LOSS_SETUPS = {
    "categorical_crossentropy": ("softmax", lambda r, n: np.eye(3)[r.integers(0, 3, n)]),
    "sparse_categorical_crossentropy": ("softmax", lambda r, n: r.integers(0, 3, n)),
    "binary_crossentropy": ("sigmoid", lambda r, n: r.integers(0, 2, (n, 3)).astype(float)),
    "mse": ("linear", lambda r, n: r.normal(size=(n, 3))),
    "mae": ("tanh", lambda r, n: r.normal(size=(n, 3))),
}


def _flat_numeric_gradient(model, x, y, eps=1e-6, w=None):
    def loss_at():
        return float(model.loss_and_grad(model.forward(x, True), y, *([] if w is None else [w]))[0])

    num = np.zeros_like(model.params)
    for i in range(model.params.size):
        orig = model.params[i]
        model.params[i] = orig + eps
        up = loss_at()
        model.params[i] = orig - eps
        down = loss_at()
        model.params[i] = orig
        num[i] = (up - down) / (2 * eps)
    return num


def _analytic_gradient(model, x, y):
    model.backprop(x, y)
    return model.grads.copy()


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("loss", sorted(LOSS_SETUPS))
def test_gradients_match_finite_differences(hidden, loss):
    out_act, make_y = LOSS_SETUPS[loss]
    r = np.random.default_rng(3)
    model = Sequential([Dense(4, hidden, input_dim=3), Dense(3, out_act)], dtype="float64", seed=1)
    model.compile("sgd", loss)
    model.build(3)
    x = r.normal(size=(5, 3))
    y = model._prepare(x, make_y(r, 5))[1]
    np.testing.assert_allclose(_analytic_gradient(model, x, y), _flat_numeric_gradient(model, x, y),
                               rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "layers, loss",
    [
        # unfused: softmax's full Jacobian under MSE, and probabilities into plain cross-entropy
        (lambda: [Dense(4, "tanh", input_dim=3), Dense(3, "softmax")], "mse"),
        (lambda: [Dense(4, "tanh", input_dim=3), Dense(3, "sigmoid")], "categorical_crossentropy"),
        (lambda: [Dense(4, "elu", input_dim=3), Dense(3), Activation("softmax")], "categorical_crossentropy"),
        (lambda: [Dense(4, "relu", input_dim=3, kernel_regularizer=nnxp.regularizers.L1L2(0.01, 0.02),
                        bias_regularizer="l2"), Dense(3, "sigmoid", kernel_regularizer="l1")],
         "binary_crossentropy"),
    ],
)
def test_unfused_and_regularized_gradients(layers, loss):
    r = np.random.default_rng(4)
    model = Sequential(layers(), dtype="float64", seed=2)
    model.compile("sgd", loss)
    model.build(3)
    x = r.normal(size=(6, 3))
    y = model._prepare(x, LOSS_SETUPS[loss][1](r, 6))[1]
    np.testing.assert_allclose(_analytic_gradient(model, x, y), _flat_numeric_gradient(model, x, y),
                               rtol=1e-5, atol=1e-8)


def _circles(n=1000, seed=0):
    r = np.random.default_rng(seed)
    radius = np.r_[r.uniform(0, 1, n // 2), r.uniform(1.5, 2.5, n - n // 2)]
    angle = r.uniform(0, 2 * np.pi, n)
    x = np.c_[radius * np.cos(angle), radius * np.sin(angle)]
    return x, (np.arange(n) >= n // 2).astype(np.float64)


def test_two_circles_reach_97_percent():
    x, y = _circles()
    model = Sequential([Dense(10, "relu", input_dim=2), Dense(5, "relu"), Dense(1, "sigmoid")], seed=0)
    model.compile(nnxp.optimizers.Adam(0.01), "binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=40, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] >= 0.97


def test_sine_cosine_fit_below_1e_3():
    x = np.linspace(0, 1, 256)[:, None]
    y = np.c_[np.sin(2 * np.pi * x[:, 0]), np.cos(2 * np.pi * x[:, 0])]
    model = Sequential([Dense(16, "relu", input_dim=1, kernel_initializer="he_uniform",
                              bias_initializer="random_uniform"), Dense(2)], seed=0)
    model.compile(nnxp.optimizers.Adam(nnxp.schedules.CosineDecay(0.01, 24000, alpha=0.01)), "mse")
    model.fit(x, y, epochs=3000, batch_size=32, verbose=0)
    assert model.evaluate(x, y, verbose=0, return_dict=True)["loss"] < 1e-3


def test_digits_classification():
    datasets = __import__("nnxp.datasets", fromlist=["x"])
    x, y = datasets.load_digits()
    x_train, x_test, y_train, y_test = datasets.train_test_split(x / 16.0, y, test_size=0.25, seed=0)
    model = Sequential([Dense(64, "relu", input_dim=64), Dropout(0.1), Dense(10, "softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    hist = model.fit(x_train, y_train, epochs=30, batch_size=32, verbose=0, validation_data=(x_test, y_test))
    assert hist.history["val_accuracy"][-1] >= 0.96


def _train(seed, **kw):
    x, y = _circles(300)
    model = Sequential([Dense(8, "tanh", input_dim=2), Dropout(0.2), Dense(1, "sigmoid")], seed=seed, **kw)
    model.compile("adam", "binary_crossentropy")
    hist = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    return model, hist


def test_same_seed_is_bit_identical_and_other_seed_differs():
    (m1, h1), (m2, h2), (m3, _) = _train(7), _train(7), _train(8)
    for a, b in zip(m1.get_weights(), m2.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert h1.history["loss"] == h2.history["loss"]
    assert not np.array_equal(m1.get_weights()[0], m3.get_weights()[0])


def test_float32_end_to_end_and_float64_model():
    x, y = _circles(200)  # float64 inputs are cast, not promoted
    m32, _ = _train(0)
    assert m32.params.dtype == np.float32 and m32.predict(x).dtype == np.float32
    assert all(w.dtype == np.float32 for w in m32.get_weights())
    assert m32.optimizer.state["m"].dtype == np.float32
    m64, _ = _train(0, dtype="float64")
    assert m64.params.dtype == np.float64 and m64.predict(x).dtype == np.float64


def test_history_keys_validation_split_and_data():
    x, y = _circles(400)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce", metrics=["accuracy", "mse"])
    h = model.fit(x, y, epochs=2, verbose=0, validation_split=0.25)
    assert set(h.history) == {"loss", "accuracy", "mse", "val_loss", "val_accuracy", "val_mse"}
    assert all(len(v) == 2 for v in h.history.values())
    h = model.fit(x[:300], y[:300], epochs=1, verbose=0, validation_data=(x[300:], y[300:]))
    np.testing.assert_allclose(h.history["val_loss"][0], model.evaluate(x[300:], y[300:], verbose=0)[0],
                               rtol=1e-6)


def test_input_dim_inferred_from_data_and_predict_shape():
    x, y = _circles(100)
    model = Sequential([Dense(4, "relu"), Dense(2, "softmax")], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy", ["acc"])
    model.fit(x, y.astype(int), epochs=1, verbose=0)
    assert model.input_dim == 2
    p = model.predict(x)
    assert p.shape == (100, 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_summary_counts_parameters():
    model = Sequential([Dense(512, "relu", input_dim=784), Dropout(0.2), Dense(10, "softmax")])
    text = model.summary(print_fn=None)
    assert "401,920" in text and "5,130" in text and "Total params: 407,050" in text and "softmax" in text


def test_get_set_weights_round_trip_and_shape_check():
    model, _ = _train(0)
    before = model.get_weights()
    with pytest.raises(NnxpError, match=r"weights\[0\].*shape \(2, 8\)"):
        model.set_weights([np.zeros((3, 8))] + before[1:])
    for a, b in zip(before, model.get_weights()):  # unchanged by the failed call
        np.testing.assert_array_equal(a, b)
    model.set_weights([w * 0 for w in before])
    assert all((w == 0).all() for w in model.get_weights())


def test_to_cpu_keeps_weights():
    model, _ = _train(0)
    before = model.get_weights()
    assert model.to("cpu") is model
    np.testing.assert_array_equal(model.get_weights()[0], before[0])


BAD_FIT = [
    ({"x": np.zeros((10, 3))}, "features"),
    ({"x": np.zeros(10)}, "2-D"),
    ({"y": np.zeros(9)}, "same number of samples"),
    ({"x": np.full((10, 2), np.nan)}, "finite"),
    ({"y": np.full(10, 2.0)}, r"\[0, 1\]"),
    ({"batch_size": 0}, "batch_size"),
    ({"epochs": -1}, "epochs"),
    ({"validation_split": 1.0}, "validation_split"),
    ({"x": np.zeros((0, 2)), "y": np.zeros(0)}, "empty"),
    ({"x": np.array([["a", "b"]] * 10)}, "numbers"),
]


@pytest.mark.parametrize("override, message", BAD_FIT)
def test_bad_fit_input_raises_and_leaves_weights(override, message):
    model, _ = _train(0)
    before = model.get_weights()
    state = {k: v.copy() for k, v in model.optimizer.state.items()}
    x, y = _circles(10)
    args = {"x": x, "y": y, "epochs": 1, "batch_size": 4, "verbose": 0, **override}
    with pytest.raises(NnxpError, match=message):
        model.fit(**args)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for k, v in state.items():
        np.testing.assert_array_equal(v, model.optimizer.state[k])


def test_sparse_label_errors():
    model = Sequential([Dense(3, "softmax", input_dim=2)], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy")
    x = np.zeros((4, 2))
    with pytest.raises(NnxpError, match=r"\[0, 2\].*from 0 to 3"):
        model.fit(x, np.array([0, 1, 2, 3]), verbose=0)
    with pytest.raises(NnxpError, match="whole-number"):
        model.fit(x, np.array([0, 1.5, 2, 0]), verbose=0)
    with pytest.raises(NnxpError, match="from -1"):
        model.fit(x, np.array([0, -1, 2, 0]), verbose=0)
    model2 = Sequential([Dense(3, "softmax", input_dim=2)])
    model2.compile("sgd", "categorical_crossentropy")
    with pytest.raises(NnxpError, match="sparse_categorical_crossentropy"):
        model2.fit(x, np.array([0, 1, 2, 0]), verbose=0)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(NnxpError, match='Did you mean "relu"'):
        Dense(3, "rleu")
    model = Sequential([Dense(1, input_dim=1)])
    with pytest.raises(NnxpError, match='Did you mean "adam"'):
        model.compile("adma", "mse")
    with pytest.raises(NnxpError, match='Did you mean "mean_squared_error"'):
        model.compile("adam", "mean_squared_eror")
    with pytest.raises(NnxpError, match="no layers"):
        Sequential().compile("adam", "mse") or Sequential().fit(np.zeros((2, 2)), np.zeros(2))


def test_not_compiled_and_no_layers():
    with pytest.raises(NnxpError, match="compiled"):
        Sequential([Dense(1, input_dim=2)]).fit(np.zeros((2, 2)), np.zeros(2))
    model = Sequential()
    model.compile("adam", "mse")
    with pytest.raises(NnxpError, match="no layers"):
        model.fit(np.zeros((2, 2)), np.zeros(2))


def test_divergence_stops_with_finite_weights():
    x, y = _circles(200)
    x = x * 1e6
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1)], seed=0)
    model.compile(nnxp.optimizers.SGD(10.0), "mse")
    with pytest.raises(NumericalError, match=r"epoch \d+, batch \d+"):
        model.fit(x, y, epochs=5, batch_size=16, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())


class _Interrupter(Callback):
    """Sends this process a real SIGINT (as Ctrl-C does) after batch `batch` of the model's epoch `count`."""

    def __init__(self, count, batch):
        self.count, self.batch = count, batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch and self.model.epochs_trained == self.count:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_stops_after_the_batch_and_returns_history():
    x, y = _circles(400)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce")
    h = model.fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[_Interrupter(1, 3)])
    assert h.interrupted and len(h.history["loss"]) == 1
    # (changed on purpose, issue 16 section 6: was 25 + 4) the four batches of the interrupted epoch are rolled
    # back, so the model is exactly as after epoch 1
    assert model.optimizer.iterations == 25 and model.epochs_trained == 1
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_ctrl_c_in_the_first_epoch_leaves_a_usable_history_and_the_initial_model():
    x, y = _circles(400)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce", metrics=["accuracy"])
    before = model.get_weights()
    h = model.fit(x, y, epochs=5, batch_size=16, verbose=0, validation_split=0.25, callbacks=[_Interrupter(0, 2)])
    assert h.interrupted and h.epoch == []
    assert h.history == {"loss": [], "accuracy": [], "val_loss": [], "val_accuracy": []}  # no KeyError 'loss'
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 0 and model.optimizer.state == {}
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # and it trains on afterwards
    assert model.epochs_trained == 1


def test_interrupt_save_load_resume_equals_the_uninterrupted_run(tmp_path):
    x, y = _circles(300)
    y = y.astype(np.int64)
    kw = {"batch_size": 16, "verbose": 0}
    straight = _continuing_model()
    h_straight = straight.fit(x, y, epochs=6, **kw)

    model = _continuing_model()
    h = model.fit(x, y, epochs=6, callbacks=[_Interrupter(3, 7)], **kw)  # during the fourth epoch
    assert h.interrupted and model.epochs_trained == 3
    model.save(tmp_path / "interrupted.nnxp")
    resumed = nnxp.load_model(tmp_path / "interrupted.nnxp")
    h_resumed = resumed.fit(x, y, epochs=6, initial_epoch=resumed.epochs_trained, **kw)
    assert h.history["loss"] + h_resumed.history["loss"] == h_straight.history["loss"]
    assert resumed.optimizer.iterations == straight.optimizer.iterations
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_restores_best_weights():
    x, y = _circles(300)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile(nnxp.optimizers.SGD(0.5), "bce")

    class Record(Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.weights = getattr(self, "weights", []) + [self.model.get_weights()]

    rec = Record()
    stop = nnxp.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0, restore_best_weights=True)
    h = model.fit(x, y, epochs=10, verbose=0, callbacks=[rec, stop])
    assert len(h.history["loss"]) == 2  # epoch 2 did not improve by 10
    np.testing.assert_array_equal(model.get_weights()[0], rec.weights[0][0])


@pytest.mark.gpu
def test_cuda_out_of_memory_is_a_clear_error_and_the_model_survives():
    from nnxp.errors import DeviceMemoryError

    # (65536, 2**20) float32 activations need 256 GiB: more than any GPU has
    model = Sequential([Dense(2**20, "relu", input_dim=16), Dense(10, "softmax")], device="cuda", seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(65536, 16)).astype(np.float32)
    y = np.zeros(65536, np.int64)
    before = model.get_weights()
    with pytest.raises(DeviceMemoryError, match="smaller `batch_size`"):
        model.fit(x, y, batch_size=65536, verbose=0)
    model.to("cpu")
    np.testing.assert_array_equal(model.get_weights()[0], before[0])
    assert model.predict(x[:4]).shape == (4, 10)


def test_out_of_memory_detection_is_specific():
    from nnxp.backend import is_out_of_memory

    assert not is_out_of_memory(MemoryError("host"))
    assert not is_out_of_memory(ValueError())


@pytest.mark.gpu
def test_divergence_on_cuda_names_the_batch_and_keeps_finite_weights():
    x, y = _circles(200)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1)], device="cuda", seed=0)
    model.compile(nnxp.optimizers.SGD(10.0), "mse")
    with pytest.raises(NumericalError, match=r"epoch 1, batch \d+"):
        model.fit(x * 1e6, y, epochs=1, batch_size=16, verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_deferred_divergence_check_names_the_first_bad_batch(monkeypatch):
    # the GPU's bookkeeping run on NumPy (per-batch losses kept on the device and read once per epoch: since issue 14
    # the CPU's rule too; here the batch losses are also not read for the callbacks, as on a GPU)
    monkeypatch.setattr(nnxp.backend.Device, "is_cuda", property(lambda self: True))
    x, y = _circles(200)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1)], seed=0)
    model.compile(nnxp.optimizers.SGD(10.0), "mse")
    before = model.get_weights()
    with pytest.raises(NumericalError, match=r"epoch 1, batch (\d+)") as info:
        model.fit(x * 1e6, y, epochs=1, batch_size=16, verbose=0)
    assert int(__import__("re").search(r"batch (\d+)", str(info.value)).group(1)) <= 3  # blows up early
    after = model.get_weights()
    assert all(np.isfinite(w).all() for w in after)
    np.testing.assert_array_equal(after[0], before[0])  # weights went NaN mid-epoch: back to the epoch start


def test_after_divergence_the_model_trains_again():
    x, y = _circles(200)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1)], seed=0)
    model.compile(nnxp.optimizers.SGD(0.01, momentum=0.9), "mse")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # optimizer state exists
    before = model.get_weights()
    velocity, iterations = model.optimizer.state["velocity"].copy(), model.optimizer.iterations
    model.optimizer.learning_rate = 10.0
    with pytest.raises(NumericalError):
        model.fit(x * 1e3, y, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], before[0])
    np.testing.assert_array_equal(model.optimizer.state["velocity"], velocity)
    assert model.optimizer.iterations == iterations
    model.optimizer.learning_rate = 1e-3
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # no NaN left behind in the state
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_two_dropout_layers_draw_different_masks():
    model = Sequential([Dense(16, "relu", input_dim=4), Dropout(0.5), Dense(16, "relu"), Dropout(0.5), Dense(1)],
                       seed=0)
    model.compile("sgd", "mse")
    model.fit(np.ones((8, 4)), np.zeros(8), epochs=1, batch_size=8, verbose=0)
    assert not np.array_equal(model.layers[1]._mask, model.layers[3]._mask)


def test_validation_data_of_the_wrong_width_fails_before_training():
    model = Sequential([Dense(2, "softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = np.zeros((32, 4)), np.zeros(32, np.int64)
    with pytest.raises(NnxpError, match=r"`validation_data\[0\]` must have 4 features"):
        model.fit(x, y, validation_data=(np.zeros((5, 7)), np.zeros(5, np.int64)), verbose=0)
    assert model.optimizer.iterations == 0


def test_a_layer_belongs_to_one_model():
    layer = Dense(2, input_dim=3)
    first = Sequential([layer])
    with pytest.raises(NnxpError, match="already belongs to another model"):
        Sequential([layer])
    del first
    Sequential([layer])  # free again once its model is gone


def test_train_end_runs_when_fit_fails():
    class Ends(Callback):
        ended = False

        def on_train_end(self, logs=None):
            Ends.ended = True

    x, y = _circles(64)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1)], seed=0)
    model.compile(nnxp.optimizers.SGD(10.0), "mse")
    with pytest.raises(NumericalError):
        model.fit(x * 1e6, y, epochs=2, batch_size=16, verbose=0, callbacks=[Ends()])
    assert Ends.ended


def test_numpy_dtypes_and_failed_builds():
    assert Sequential([Dense(1, input_dim=2)], dtype=np.float64).dtype == np.float64
    model = Sequential([Dense(3, input_dim=4), Dense(2, input_dim=5)])
    with pytest.raises(NnxpError, match="input_dim"):
        model.build(4)
    assert all(layer.input_dim is None for layer in model.layers)
    assert nnxp.datasets.load_digits is not None  # the subpackage is reachable as nnxp.datasets


# --- cuda_graph and precision ---------------------------------------------------------------------------------


def _small_model(**kw):
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(2, "softmax")], seed=0, **kw)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize(
    "value, error, message",
    [
        ("yes", nnxp.errors.NnxpTypeError, "`cuda_graph` must be True or False. Received: cuda_graph='yes'"),
        (1, nnxp.errors.NnxpTypeError, "`cuda_graph` must be True or False"),
        (True, NnxpError, "`cuda_graph=True` needs a CUDA device; this model is on cpu"),
    ],
)
def test_cuda_graph_is_checked_before_training(value, error, message):
    x, y = _circles(64)
    model = _small_model()
    model.build(2)
    before = model.get_weights()
    with pytest.raises(error, match=re.escape(message)):
        model.fit(x, y.astype(np.int64).ravel(), verbose=0, cuda_graph=value)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 0


@pytest.mark.parametrize("value", ["tf64", "TF32 ", None, 32])
def test_precision_must_be_known(value):
    with pytest.raises(NnxpError, match=r"`precision` must be one of \('highest', 'tf32'\)"):
        Sequential(precision=value)


def test_precision_typo_gets_a_suggestion():
    with pytest.raises(NnxpError, match='Did you mean "tf32"'):
        Sequential(precision="tf23")


def test_tf32_is_saved_with_the_model_and_changes_nothing_on_the_cpu(tmp_path):
    x, y = _circles(128)
    y = y.astype(np.int64).ravel()
    plain, tf32 = _small_model(), _small_model(precision="tf32")
    plain.fit(x, y, epochs=2, verbose=0)
    tf32.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(plain.get_weights(), tf32.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # float32 matmuls on the CPU are plain float32
    tf32.save(tmp_path / "m.nnxp")
    assert nnxp.load_model(tmp_path / "m.nnxp").precision == "tf32"
    assert "precision" in plain.get_config() and plain.precision == "highest"


def _graph_data(n=1000):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 20)).astype(np.float32)
    y = (x[:, :5].sum(axis=1) > 0).astype(np.int64) + (x[:, 5] > 0.5)
    return x, y


def _graph_model(optimizer):
    model = Sequential([Dense(32, "relu", input_dim=20), Dense(16, "gelu"), Dense(3, "softmax")], device="cuda",
                       seed=3)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.gpu
@pytest.mark.parametrize("optimizer", [
    lambda: nnxp.optimizers.Adam(nnxp.schedules.CosineDecay(0.01, 40), clipnorm=1.0),
    lambda: nnxp.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    lambda: nnxp.optimizers.RMSprop(0.002, centered=True),
], ids=["adam-cosine-clipnorm", "sgd-nesterov-wd", "rmsprop-centered"])
def test_cuda_graph_replays_match_eager_steps(optimizer):
    x, y = _graph_data()
    eager, graphed = _graph_model(optimizer()), _graph_model(optimizer())
    h_eager = eager.fit(x, y, epochs=3, batch_size=64, verbose=0)
    h_graph = graphed.fit(x, y, epochs=3, batch_size=64, verbose=0, cuda_graph=True)
    assert nnxp.training.graph_replays(graphed) >= 3 * (1000 // 64) - 2  # all full batches but the warm-up one
    assert graphed.optimizer.iterations == eager.optimizer.iterations
    # the same kernels in the same order; only the matmul's cuBLAS entry point differs
    np.testing.assert_allclose(h_graph.history["loss"], h_eager.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(h_graph.history["accuracy"], h_eager.history["accuracy"], atol=2e-3)
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_replays_dropout_like_eager_steps_and_tf32_restores_cupys_setting():
    from nnxp.backend import tf32_active
    from nnxp.layers import Dropout

    x, y = _graph_data(256)
    runs = []
    for graph in (False, True):
        model = Sequential([Dense(8, "relu", input_dim=20), Dropout(0.2), Dense(3, "softmax")], device="cuda")
        model.compile("adam", "sparse_categorical_crossentropy")
        runs.append(model.fit(x, y, epochs=2, batch_size=64, verbose=0, cuda_graph=graph).history["loss"])
        assert not graph or nnxp.training.graph_replays(model) >= 4
    # the mask is a hash of the device (seed, step): replayed steps drop exactly what eager steps drop
    np.testing.assert_allclose(runs[1], runs[0], rtol=1e-4)
    seen = []

    class Probe(nnxp.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(tf32_active())

    fast = _graph_model("adam")
    fast.precision = "tf32"
    fast.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[Probe()])
    assert seen and all(seen) and not tf32_active()


# --- sample_weight / class_weight ----------------------------------------------------------------------------

WEIGHT_SETUPS = {  # (layers, loss): fused softmax/sigmoid heads and unfused ones
    "fused-softmax-ce": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3, "softmax")], "categorical_crossentropy"),
    "fused-sparse-ce": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3, "softmax")],
                        "sparse_categorical_crossentropy"),
    "fused-sigmoid-bce": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3, "sigmoid")], "binary_crossentropy"),
    "unfused-ce": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3), Activation("softmax")],
                   "categorical_crossentropy"),
    "unfused-sparse-ce": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3), Activation("softmax")],
                          "sparse_categorical_crossentropy"),
    "unfused-bce": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3), Activation("sigmoid")], "binary_crossentropy"),
    "mse": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3)], "mse"),
    "mae": (lambda: [Dense(4, "tanh", input_dim=3), Dense(3, "tanh")], "mae"),
}


def _weighted_setup(case, n=6, seed=4):
    layers, loss = WEIGHT_SETUPS[case]
    r = np.random.default_rng(seed)
    model = Sequential(layers(), dtype="float64", seed=2)
    model.compile("sgd", loss, metrics=None if loss in ("mse", "mae") else ["accuracy"])
    model.build(3)
    x = r.normal(size=(n, 3))
    y = model._prepare(x, LOSS_SETUPS[loss][1](r, n))[1]
    w = r.uniform(0, 3, n)
    w[1] = 0.0  # a row that counts for nothing
    return model, x, y, w


@pytest.mark.parametrize("case", sorted(WEIGHT_SETUPS))
def test_weighted_loss_gradients_match_finite_differences(case):
    model, x, y, w = _weighted_setup(case)
    model.backprop(x, y, w)
    analytic = model.grads.copy()
    np.testing.assert_allclose(analytic, _flat_numeric_gradient(model, x, y, w=w), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("case", sorted(WEIGHT_SETUPS))
def test_weighted_loss_is_keras_sum_over_batch_size(case):
    # Keras: sum_i w_i l_i / batch_size, l_i the row's own loss
    model, x, y, w = _weighted_setup(case)
    per_row = [float(model.loss_and_grad(model.forward(x[i : i + 1], False), y[i : i + 1])[0]) for i in range(6)]
    loss = float(model.loss_and_grad(model.forward(x, False), y, w)[0])
    np.testing.assert_allclose(loss, np.dot(w, per_row) / 6, rtol=1e-12)
    # evaluate over batches of 4 and 2: the same number
    logs = model.evaluate(x, y, batch_size=4, verbose=0, sample_weight=w, return_dict=True)
    np.testing.assert_allclose(logs["loss"], np.dot(w, per_row) / 6, rtol=1e-12)


def test_weighted_metrics_are_keras_weighted_means():
    r = np.random.default_rng(0)
    x = r.normal(size=(50, 3))
    labels = r.integers(0, 3, 50)
    w = r.uniform(0, 2, 50)
    model = Sequential([Dense(3, "softmax", input_dim=3)], seed=0, dtype="float64")
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    hits = model.predict(x).argmax(axis=1) == labels
    logs = model.evaluate(x, labels, batch_size=16, verbose=0, sample_weight=w, return_dict=True)
    np.testing.assert_allclose(logs["accuracy"], np.dot(w, hits) / w.sum(), rtol=1e-12)
    # mse / mae on a regression head: mean over outputs per row, then the weighted mean over rows
    reg = Sequential([Dense(2, input_dim=3)], seed=0, dtype="float64")
    reg.compile("sgd", "mse", metrics=["mse", "mae"])
    t = r.normal(size=(50, 2))
    d = reg.predict(x) - t
    logs = reg.evaluate(x, t, batch_size=16, verbose=0, sample_weight=w, return_dict=True)
    np.testing.assert_allclose(logs["mse"], np.dot(w, (d * d).mean(axis=1)) / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(logs["mae"], np.dot(w, np.abs(d).mean(axis=1)) / w.sum(), rtol=1e-12)
    np.testing.assert_allclose(logs["loss"], np.dot(w, (d * d).mean(axis=1)) / 50, rtol=1e-12)
    # binary accuracy: the fraction of right outputs per row, weighted
    b = Sequential([Dense(2, "sigmoid", input_dim=3)], seed=0, dtype="float64")
    b.compile("sgd", "bce", metrics=["accuracy"])
    tb = r.integers(0, 2, (50, 2)).astype(float)
    per_row = ((b.predict(x) > 0.5) == (tb > 0.5)).mean(axis=1)
    np.testing.assert_allclose(b.evaluate(x, tb, verbose=0, sample_weight=w, return_dict=True)["accuracy"],
                               np.dot(w, per_row) / w.sum(), rtol=1e-12)
    assert model.evaluate(x, labels, verbose=0, sample_weight=np.zeros(50))[1] == 0.0  # no NaN


def _weighted_fit(**kw):
    x, y = _circles(200)
    model = Sequential([Dense(8, "tanh", input_dim=2), Dropout(0.1), Dense(2, "softmax")], seed=3)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y.astype(np.int64), epochs=2, batch_size=32, verbose=0, **kw)
    return model, h


def test_unit_weights_train_bit_for_bit_like_no_weights_and_class_weight_equals_sample_weight():
    plain, hp = _weighted_fit()
    ones, ho = _weighted_fit(sample_weight=np.ones(200))
    for a, b in zip(plain.get_weights(), ones.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert hp.history == ho.history
    _, y = _circles(200)
    by_class, hc = _weighted_fit(class_weight={0: 0.5, 1: 3.0})
    by_row, hr = _weighted_fit(sample_weight=np.where(y == 1, 3.0, 0.5))
    for a, b in zip(by_class.get_weights(), by_row.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert hc.history == hr.history
    assert not np.array_equal(by_class.get_weights()[0], plain.get_weights()[0])
    # both: the product
    both, _ = _weighted_fit(class_weight={1: 3.0}, sample_weight=np.full(200, 2.0))
    product, _ = _weighted_fit(sample_weight=np.where(y == 1, 6.0, 2.0))
    np.testing.assert_array_equal(both.get_weights()[0], product.get_weights()[0])


def test_class_weight_classes_from_one_hot_and_binary_targets():
    from nnxp._validation import class_weight_to_sample_weight

    one_hot = np.eye(3)[[2, 0, 1, 2]]
    np.testing.assert_array_equal(class_weight_to_sample_weight({2: 5.0}, one_hot, False, "categorical", 3),
                                  [5.0, 1.0, 1.0, 5.0])
    binary = np.array([[0.0], [1.0], [1.0]])
    np.testing.assert_array_equal(class_weight_to_sample_weight({0: 0.25, 1: 4}, binary, False, "binary", 1),
                                  [0.25, 4.0, 4.0])
    np.testing.assert_array_equal(class_weight_to_sample_weight({1: 2.0}, np.array([1, 0, 1]), True,
                                                                "categorical", 2), [2.0, 1.0, 2.0])


def test_zero_weight_rows_do_not_move_the_weights():
    x, y = _circles(64)
    y = y.astype(np.int64)
    model = Sequential([Dense(4, "tanh", input_dim=2), Dense(2, "softmax")], seed=0, dtype="float64")
    model.compile(nnxp.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
    before = model.get_weights()
    h = model.fit(x, y, epochs=1, batch_size=16, verbose=0, sample_weight=np.zeros(64))
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert h.history["loss"] == [0.0]


def test_validation_weights_from_split_and_from_a_three_tuple():
    x, y = _circles(200)
    w = np.random.default_rng(1).uniform(0.5, 2, 200)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0, dtype="float64")
    model.compile("adam", "bce", metrics=["accuracy"])
    h = model.fit(x, y, epochs=1, verbose=0, validation_split=0.25, sample_weight=w, class_weight={1: 9.0})
    # no class weight on validation
    expect = model.evaluate(x[150:], y[150:], verbose=0, sample_weight=w[150:], return_dict=True)
    np.testing.assert_allclose(h.history["val_loss"][0], expect["loss"], rtol=1e-12)
    np.testing.assert_allclose(h.history["val_accuracy"][0], expect["accuracy"], rtol=1e-12)
    h = model.fit(x[:150], y[:150], epochs=1, verbose=0, validation_data=(x[150:], y[150:], w[150:]))
    expect = model.evaluate(x[150:], y[150:], verbose=0, sample_weight=w[150:], return_dict=True)
    np.testing.assert_allclose(h.history["val_loss"][0], expect["loss"], rtol=1e-12)


BAD_WEIGHTS = [
    ({"sample_weight": np.ones(9)}, r"`sample_weight` must hold one weight per sample, shape \(10,\)"),
    ({"sample_weight": np.ones((10, 2))}, r"`sample_weight` must hold one weight per sample"),
    ({"sample_weight": -np.ones(10)}, r"`sample_weight` must be non-negative. Received: weights down to -1"),
    ({"sample_weight": np.r_[np.nan, np.ones(9)]}, r"`sample_weight` must be finite"),
    ({"sample_weight": ["a"] * 10}, r"`sample_weight` must hold numbers"),
    ({"class_weight": [1.0, 2.0]}, r"`class_weight` must be a dict"),
    ({"class_weight": {2: 1.0}}, r"`class_weight` keys must be class indices in \[0, 1\]. Received key 2"),
    ({"class_weight": {"a": 1.0}}, r"`class_weight` keys"),
    ({"class_weight": {0: -1.0}}, r"`class_weight` values must be finite numbers >= 0.*class_weight\[0\]=-1.0"),
    ({"class_weight": {0: float("inf")}}, r"`class_weight` values"),
    ({"validation_data": (np.zeros((4, 2)), np.zeros(4), np.ones(3))}, r"`validation_data\[2\]` must hold one"),
]


@pytest.mark.parametrize("override, message", BAD_WEIGHTS)
def test_bad_weights_raise_and_leave_the_model(override, message):
    model, _ = _train(0)
    before = model.get_weights()
    iterations = model.optimizer.iterations
    x, y = _circles(10)
    with pytest.raises(NnxpError, match=message):
        model.fit(x, y, epochs=1, batch_size=4, verbose=0, **override)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == iterations


def test_class_weight_needs_a_classification_loss_and_evaluate_checks_weights():
    model = Sequential([Dense(1, input_dim=2)], seed=0)
    model.compile("sgd", "mse")
    with pytest.raises(NnxpError, match="`class_weight` needs a classification loss"):
        model.fit(np.zeros((4, 2)), np.zeros(4), class_weight={0: 1.0}, verbose=0)
    with pytest.raises(NnxpError, match="`sample_weight` must be non-negative"):
        model.evaluate(np.zeros((4, 2)), np.zeros(4), sample_weight=[1, 1, -1, 1], verbose=0)


def test_weighted_training_on_the_emulated_cuda_device_matches_the_cpu(fake_cupy):
    # device="cuda" through the stand-in CuPy: weights are gathered per batch like x and y, and the weighted
    # loss runs the reference on the device instead of the fused kernel
    x, y = _circles(96)
    w = np.random.default_rng(2).uniform(0, 2, 96)
    results = []
    for device in ("cpu", "cuda"):
        model = Sequential([Dense(8, "tanh", input_dim=2), Dense(2, "softmax")], device=device, seed=1,
                           dtype="float64")
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        h = model.fit(x, y.astype(np.int64), epochs=2, batch_size=32, verbose=0, sample_weight=w,
                      class_weight={0: 2.0})
        ev = model.evaluate(x, y.astype(np.int64), verbose=0, sample_weight=w, return_dict=True)
        results.append((model.get_weights(), h.history, ev))
    (wc, hc, ec), (wg, hg, eg) = results
    for a, b in zip(wc, wg, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hc["loss"], hg["loss"], rtol=1e-9)
    np.testing.assert_allclose(hc["accuracy"], hg["accuracy"], rtol=1e-12)
    np.testing.assert_allclose(ec["loss"], eg["loss"], rtol=1e-9)


# --- Keras's evaluate / predict conventions ------------------------------------------------------------------


def test_evaluate_returns_a_float_a_list_or_a_dict_as_keras_does(capsys):
    x, y = _circles(100)
    model = Sequential([Dense(4, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce")
    loss = model.evaluate(x, y, verbose=0)
    assert isinstance(loss, float)
    assert model.evaluate(x, y, verbose=0, return_dict=True) == {"loss": loss}
    model.compile("adam", "bce", metrics=["mse", "accuracy"])  # the list follows compile's order
    result = model.evaluate(x, y, verbose=0)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert isinstance(result, list) and result == [logs["loss"], logs["mse"], logs["accuracy"]]
    loss, mse, acc = result  # the Keras idiom binds numbers, not key strings
    assert all(isinstance(v, float) for v in (loss, mse, acc)) and 0 <= acc <= 1
    capsys.readouterr()
    model.evaluate(x, y, verbose="auto")
    assert "accuracy:" in capsys.readouterr().out
    with pytest.raises(nnxp.errors.NnxpTypeError, match="`return_dict` must be True or False"):
        model.evaluate(x, y, verbose=0, return_dict="yes")


@pytest.mark.parametrize("bad", [3, -1, "loud", 1.0, None])
def test_verbose_is_checked_in_predict_evaluate_and_fit(bad):
    x, y = _circles(20)
    model = Sequential([Dense(1, "sigmoid", input_dim=2)], seed=0)
    model.compile("sgd", "bce")
    for call in (lambda: model.predict(x, verbose=bad), lambda: model.evaluate(x, y, verbose=bad),
                 lambda: model.fit(x, y, verbose=bad)):
        with pytest.raises(NnxpError, match=r"`verbose` must be 0, 1, 2 or 'auto'"):
            call()
    assert model.optimizer.iterations == 0


def test_predict_accepts_keras_verbose_and_prints_nothing(capsys):
    x, _ = _circles(20)
    model = Sequential([Dense(1, "sigmoid", input_dim=2)], seed=0)
    quiet = model.predict(x)
    for v in (0, 1, 2, "auto", True):
        np.testing.assert_array_equal(model.predict(x, verbose=v), quiet)
    assert capsys.readouterr().out == ""


# --- a second fit continues ----------------------------------------------------------------------------------


def _continuing_model():
    model = Sequential([Dense(16, "relu", input_dim=2), Dropout(0.3), Dense(2, "softmax")], seed=11)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_a_second_fit_continues_bit_for_bit(tmp_path):
    x, y = _circles(120)
    y = y.astype(np.int64)
    kw = {"batch_size": 16, "verbose": 0}
    straight = _continuing_model()
    h10 = straight.fit(x, y, epochs=10, **kw)
    assert straight.epochs_trained == 10

    twice = _continuing_model()
    h_a = twice.fit(x, y, epochs=5, **kw)
    h_b = twice.fit(x, y, epochs=5, **kw)
    assert twice.epochs_trained == 10
    assert h_a.history["loss"] + h_b.history["loss"] == h10.history["loss"]

    saved = _continuing_model()
    saved.fit(x, y, epochs=5, **kw)
    saved.save(tmp_path / "m.nnxp")
    loaded = nnxp.load_model(tmp_path / "m.nnxp")
    assert loaded.epochs_trained == 5
    h_l = loaded.fit(x, y, epochs=5, **kw)
    assert h_l.history["loss"] == h10.history["loss"][5:]

    resumed = nnxp.load_model(tmp_path / "m.nnxp")  # the Keras way to resume: initial_epoch
    h_r = resumed.fit(x, y, epochs=10, initial_epoch=5, **kw)
    assert h_r.epoch == [5, 6, 7, 8, 9] and resumed.epochs_trained == 10

    for model in (twice, loaded, resumed):
        for a, b in zip(model.get_weights(), straight.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
        assert model.optimizer.iterations == straight.optimizer.iterations


# --- finite in float64 is not finite in float32 (issue 16, section 3) -----------------------------------------

def _finite_case_model(dtype="float32"):
    model = Sequential([Dense(4, "tanh", input_dim=2), Dense(1)], seed=0, dtype=dtype)
    model.compile("sgd", "mse")
    return model


def _big(a, where=(0, 0)):
    a = np.array(a, dtype=np.float64)
    a[where] = 1e39  # finite in float64, inf in float32
    return a


_X, _Y = np.ones((8, 2)), np.ones(8)
OVERFLOW_CASES = {
    "set_weights": (lambda m: m.set_weights([_big(m.get_weights()[0])] + m.get_weights()[1:]), r"`weights\[0\]`"),
    "predict-x": (lambda m: m.predict(_big(_X)), r"`x`"),
    "evaluate-x": (lambda m: m.evaluate(_big(_X), _Y, verbose=0), r"`x`"),
    "evaluate-y": (lambda m: m.evaluate(_X, _big(_Y, 3), verbose=0), r"`y`"),
    "evaluate-sample_weight": (lambda m: m.evaluate(_X, _Y, verbose=0, sample_weight=_big(np.ones(8), 2)),
                               r"`sample_weight`"),
    "fit-x": (lambda m: m.fit(_big(_X), _Y, verbose=0), r"`x`"),
    "fit-y": (lambda m: m.fit(_X, -_big(_Y, 5), verbose=0), r"`y`"),
    "fit-validation_data[0]": (lambda m: m.fit(_X, _Y, verbose=0, validation_data=(_big(_X), _Y)),
                               r"`validation_data\[0\]`"),
    "fit-validation_data[1]": (lambda m: m.fit(_X, _Y, verbose=0, validation_data=(_X, _big(_Y, 1))),
                               r"`validation_data\[1\]`"),
    "fit-validation_data[2]": (lambda m: m.fit(_X, _Y, verbose=0, validation_data=(_X, _Y, _big(np.ones(8), 1))),
                               r"`validation_data\[2\]`"),
    "fit-sample_weight": (lambda m: m.fit(_X, _Y, verbose=0, sample_weight=_big(np.ones(8), 7)), r"`sample_weight`"),
}


@pytest.mark.parametrize("case", sorted(OVERFLOW_CASES))
def test_values_that_overflow_the_models_dtype_are_refused_by_name(case):
    call, name = OVERFLOW_CASES[case]
    model = _finite_case_model()
    before = model.get_weights()
    with pytest.raises(NnxpError, match=name + r" must be finite in float32 \(the model's dtype\).*1e\+39"):
        call(model)
    for a, b in zip(before, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert model.optimizer.iterations == 0
    call(_finite_case_model("float64"))  # the same values are fine in a float64 model


def test_class_weight_that_overflows_float32_is_refused():
    model = Sequential([Dense(2, "softmax", input_dim=2)], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(NnxpError, match=r"`class_weight` values must be finite in float32.*class_weight\[1\]=1e\+39"):
        model.fit(_X, np.ones(8, np.int64), verbose=0, class_weight={1: 1e39})


MASKED = {
    "predict-x": lambda m, x, y: m.predict(x),
    "fit-x": lambda m, x, y: m.fit(x, y, verbose=0),
    "fit-y": lambda m, x, y: m.fit(_X, np.ma.masked_invalid(np.r_[np.nan, np.ones(7)]), verbose=0),
    "evaluate-x": lambda m, x, y: m.evaluate(x, y, verbose=0),
    "set_weights": lambda m, x, y: m.set_weights([np.ma.masked_invalid(np.full((2, 4), np.nan)),
                                                  *m.get_weights()[1:]]),
}


@pytest.mark.parametrize("case", sorted(MASKED))
def test_masked_arrays_with_nan_under_the_mask_are_refused(case):
    # nnxp computes on a masked array's underlying data (what np.asarray gives), masked entries included
    model = _finite_case_model()
    x = np.ma.masked_invalid(np.r_[[[np.nan, 1.0]], np.ones((7, 2))])
    with pytest.raises(NnxpError, match=r"masked array with NaN or infinite values under its mask.*filled"):
        MASKED[case](model, x, _Y)
    assert model.optimizer.iterations == 0


def test_masked_arrays_without_bad_values_use_their_data():
    model = _finite_case_model()
    x = np.ma.array(np.arange(16.0).reshape(8, 2) / 16, mask=np.eye(8, 2, dtype=bool))
    np.testing.assert_array_equal(model.predict(x), model.predict(x.data))


# --- an error leaves an unbuilt model unbuilt (issue 16, section 5) -------------------------------------------

class _RefusesToStart(Callback):
    def on_train_begin(self, logs=None):
        raise NnxpError("refused")


UNBUILT_FAILURES = {
    "validation_data-width": (lambda m, x, y: m.fit(x, y, verbose=0, validation_data=(np.zeros((4, 5)), y[:4])),
                              r"`validation_data\[0\]` must have 3 features"),
    "validation_data-labels": (lambda m, x, y: m.fit(x, y, verbose=0, validation_data=(x[:4], np.full(4, 7))),
                               r"`validation_data\[1\]` labels"),
    "validation_data-weights": (lambda m, x, y: m.fit(x, y, verbose=0, validation_data=(x[:4], y[:4], -np.ones(4))),
                                r"`validation_data\[2\]` must be non-negative"),
    "validation_data-shape": (lambda m, x, y: m.fit(x, y, verbose=0, validation_data=(x[:4],)), "`validation_data`"),
    "validation_split-one-row": (lambda m, x, y: m.fit(x[:1], y[:1], verbose=0, validation_split=0.4),
                                 "`validation_split`"),
    "sample_weight": (lambda m, x, y: m.fit(x, y, verbose=0, sample_weight=np.ones(3)), "`sample_weight`"),
    "class_weight": (lambda m, x, y: m.fit(x, y, verbose=0, class_weight={9: 1.0}), "`class_weight`"),
    "callback-on_train_begin": (lambda m, x, y: m.fit(x, y, verbose=0, callbacks=[_RefusesToStart()]), "refused"),
}


@pytest.mark.parametrize("case", sorted(UNBUILT_FAILURES))
def test_a_failed_fit_leaves_an_unbuilt_model_unbuilt(case):
    call, message = UNBUILT_FAILURES[case]
    model = Sequential([Dense(4, "relu"), Dense(2, "softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    with pytest.raises(NnxpError, match=message):
        call(model, x, y)
    assert not model.built and model.input_dim is None and model.params is None
    assert all(layer.input_dim is None for layer in model.layers)
    assert model.history is None and model.optimizer.iterations == 0
    x6 = np.random.default_rng(1).normal(size=(20, 6))  # a later valid fit, of any width, works
    model.fit(x6, y, epochs=1, verbose=0)
    assert model.input_dim == 6 and model.predict(x6).shape == (20, 2)


# --- one model, two threads (issue 16, section 8) -------------------------------------------------------------

def test_a_second_concurrent_fit_is_refused_and_the_first_trains_undisturbed():
    import threading

    x, y = _circles(200)
    started, release = threading.Event(), threading.Event()

    class Pause(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1 and self.model.epochs_trained == 0:
                started.set()
                assert release.wait(30)

    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce")
    errors = []
    worker = threading.Thread(target=lambda: model.fit(x, y, epochs=2, verbose=0, callbacks=[Pause()]))
    worker.start()
    try:
        assert started.wait(30)
        for call in (lambda: model.fit(x, y, verbose=0), lambda: model.predict(x),
                     lambda: model.evaluate(x, y, verbose=0)):
            with pytest.raises(NnxpError, match="fit is already running on this model") as info:
                call()
            errors.append(str(info.value))
    finally:
        release.set()
        worker.join(60)
    assert "another thread" in errors[1]
    reference = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    reference.compile("adam", "bce")
    reference.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.fit(x, y, epochs=1, verbose=0)  # the guard is released afterwards
    assert model.predict(x).shape == (200, 1)


def test_callbacks_may_predict_and_evaluate_but_not_fit_the_model_they_watch():
    x, y = _circles(64)
    seen = []

    class Probe(Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(self.model.predict(x[:4]).shape)
            seen.append(self.model.evaluate(x, y, verbose=0))
            with pytest.raises(NnxpError, match="fit is already running on this model"):
                self.model.fit(x, y, verbose=0)

    model = Sequential([Dense(4, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce")
    model.fit(x, y, epochs=2, verbose=0, callbacks=[Probe()])
    assert seen[0] == (4, 1) and isinstance(seen[1], float) and len(seen) == 4


# --- smaller things from issue 16 -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [None, "float16", "int32", "double precision"])
def test_dtype_must_be_one_of_the_choices(dtype):
    with pytest.raises(NnxpError, match=r"`dtype` must be one of \('float32', 'float64'\)\. Received: dtype="):
        Sequential(dtype=dtype)


def test_the_model_name_is_kept():
    assert Sequential(name="mlp").name == "mlp" and Sequential().name == "sequential"
    assert Sequential(name="mlp", dtype="float64").get_config()["name"] == "mlp"


def test_the_model_name_shows_in_the_summary():
    # issue 14: the dtype's name once overwrote `name`, so the summary (and the ONNX graph) said "float32"
    model = Sequential([Dense(3, input_dim=2)], name="mynet")
    assert model.name == "mynet"
    assert model.summary(print_fn=None).splitlines()[0].startswith('Model: "mynet"')


def test_layers_must_be_a_list():
    with pytest.raises(nnxp.errors.NnxpTypeError, match=r"`layers` must be a list of layers.*Sequential\(\[Dense"):
        Sequential(Dense(3, input_dim=2))
    with pytest.raises(nnxp.errors.NnxpTypeError, match=r"`layers` must be a list"):
        Sequential("dense")
    assert len(Sequential((Dense(3, input_dim=2), Dense(1))).layers) == 2


def test_negative_categorical_targets_are_refused_not_reported_as_divergence():
    model = Sequential([Dense(3, "softmax", input_dim=2)], seed=0)
    model.compile("sgd", "categorical_crossentropy")
    y = np.eye(3)[[0, 1, 2, 0]]
    y[1] = [-1.0, 1.0, 1.0]
    with pytest.raises(NnxpError, match=r"`y` must be non-negative for categorical cross-entropy.*-1"):
        model.fit(np.zeros((4, 2)), y, verbose=0)
    with pytest.raises(NnxpError, match=r"`validation_data\[1\]` must be non-negative"):
        model.fit(np.zeros((4, 2)), np.abs(y), verbose=0, validation_data=(np.zeros((4, 2)), y))
    assert model.optimizer.iterations == 0


def test_a_model_too_large_for_memory_is_refused_at_build_with_its_size():
    model = Sequential([Dense(10**9, input_dim=1000), Dense(1)], seed=0)
    # 1000 * 1e9 + 1e9 + 1e9 + 1 parameters, float32, weights and gradients: about 7.3 TiB
    with pytest.raises(NnxpError, match=r"needs 7\.3 TiB .*1,002,000,000,001 parameters"):
        model.build(1000)
    assert not model.built and all(layer.input_dim is None for layer in model.layers)
    model.compile("sgd", "mse")
    with pytest.raises(NnxpError, match=r"needs 7\.3 TiB"):
        model.fit(np.zeros((2, 1000)), np.zeros(2), verbose=0)
    assert "Total params" in model.summary(print_fn=None)


def test_the_memory_bound_without_psutil_is_the_physical_memory(monkeypatch):
    import builtins

    from nnxp import model as model_mod

    real_import = builtins.__import__

    def no_psutil(name, *args, **kwargs):
        if name == "psutil":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    limit = model_mod._memory_limit()
    assert limit == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# --- smaller things from issue 17 -----------------------------------------------------------------------------

def test_count_params_before_the_first_fit_equals_the_summary():
    model = Sequential([Dense(8, "relu", input_dim=4), Dropout(0.1), Dense(1, "sigmoid")])
    assert "Total params: 49" in model.summary(print_fn=None)
    assert model.count_params() == 49 and not model.built
    model.build(4)
    assert model.count_params() == 49
    unknown = Sequential([Dense(8, "relu"), Dense(1)])
    assert unknown.count_params() == 9 and "Total params: 9" in unknown.summary(print_fn=None)


@pytest.mark.parametrize("layers, loss", [
    (lambda: [Dense(4, "relu", input_dim=2), Dense(1, "softmax")], "binary_crossentropy"),
    (lambda: [Dense(4, "relu", input_dim=2), Dense(1), Activation("softmax")], "categorical_crossentropy"),
])
def test_a_one_unit_softmax_output_warns(layers, loss):
    model = Sequential(layers())
    with pytest.warns(UserWarning, match=r"1 unit and softmax.*always 1.*activation='sigmoid'"):
        model.compile("adam", loss)


def test_two_unit_softmax_and_one_unit_sigmoid_do_not_warn():
    import warnings as w

    with w.catch_warnings():
        w.simplefilter("error")
        Sequential([Dense(2, "softmax", input_dim=2)]).compile("adam", "sparse_categorical_crossentropy")
        Sequential([Dense(1, "sigmoid", input_dim=2)]).compile("adam", "bce")


class _BatchLosses(Callback):
    def __init__(self):
        self.logs = []

    def on_train_batch_end(self, batch, logs=None):
        self.logs.append(dict(logs))


def test_batch_end_logs_carry_the_batch_loss():
    x, y = _circles(100)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile(nnxp.optimizers.SGD(0.0), "bce")  # learning rate 0: every batch sees the same weights
    rec = _BatchLosses()
    h = model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0, callbacks=[rec])
    assert [log["size"] for log in rec.logs] == [32, 32, 32, 4]
    assert all(type(log["loss"]) is float for log in rec.logs)
    for i, log in enumerate(rec.logs):
        np.testing.assert_allclose(log["loss"], model.evaluate(x[32 * i : 32 * i + 32], y[32 * i : 32 * i + 32],
                                                               verbose=0), rtol=1e-6)
    np.testing.assert_allclose(h.history["loss"][0], np.dot([32, 32, 32, 4], [g["loss"] for g in rec.logs]) / 100,
                               rtol=1e-6)


def test_batch_end_logs_carry_the_loss_on_the_emulated_cuda_device(fake_cupy):
    x, y = _circles(64)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], device="cuda", seed=0)
    model.compile("adam", "bce")
    rec = _BatchLosses()
    h = model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[rec])
    assert len(rec.logs) == 4 and all(type(log["loss"]) is float for log in rec.logs)
    np.testing.assert_allclose(h.history["loss"][0], np.mean([g["loss"] for g in rec.logs]), rtol=1e-5)


# --- mutants that survived the suite (issue 16, section 9) ----------------------------------------------------

def test_epoch_loss_at_learning_rate_zero_equals_evaluate_with_a_partial_last_batch():
    x, y = _circles(100)  # 100 = 3 * 32 + 4: the last batch is partial
    r = np.random.default_rng(0)
    y = y + r.uniform(-0.3, 0.3, 100)  # rows with very different losses, so a mis-weighted batch shows
    model = Sequential([Dense(8, "tanh", input_dim=2), Dense(1)], seed=0, dtype="float64")
    model.compile(nnxp.optimizers.SGD(0.0), "mse", metrics=["mae"])
    h = model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    logs = model.evaluate(x, y, batch_size=7, verbose=0, return_dict=True)
    np.testing.assert_allclose(h.history["loss"], [logs["loss"]] * 2, rtol=1e-12)
    np.testing.assert_allclose(h.history["mae"], [logs["mae"]] * 2, rtol=1e-12)


class _RowRecorder(Layer):
    """Passes its input through and records column 0 (a row id) of every training batch."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, training=False):
        if training:
            self.batches.append(np.asarray(x[:, 0]).astype(int))
        return x

    def backward(self, dy, need_dx=True):
        return dy


def test_each_epoch_sees_every_row_once_in_a_new_order():
    n, batch_size, epochs = 50, 8, 4
    x = np.c_[np.arange(n), np.zeros(n)]
    recorder = _RowRecorder()
    model = Sequential([recorder, Dense(1)], seed=0, dtype="float64")
    model.compile("sgd", "mse")
    model.fit(x, np.zeros(n), epochs=epochs, batch_size=batch_size, verbose=0)
    per_epoch = -(-n // batch_size)
    orders = [np.concatenate(recorder.batches[e * per_epoch : (e + 1) * per_epoch]) for e in range(epochs)]
    assert len(recorder.batches) == epochs * per_epoch
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(n))  # every row exactly once
        assert not np.array_equal(order, np.arange(n))  # shuffled
    assert len({tuple(order) for order in orders}) == epochs  # a new order every epoch
    recorder.batches.clear()
    model.fit(x, np.zeros(n), epochs=1, batch_size=batch_size, verbose=0)  # a second fit: new orders too
    assert tuple(np.concatenate(recorder.batches)) not in {tuple(order) for order in orders}


# --- a model on the second GPU (the stand-in's device 1 refuses cross-device arithmetic, as CuPy without P2P) ---


def test_a_model_on_the_second_gpu_keeps_everything_there(fake_cupy, tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 3))
    y = x[:, :1] * 2
    cpu = Sequential([Dense(4, "tanh", input_dim=3), Dense(1)], seed=1)
    cpu.compile("adam", "mse")
    cpu.fit(x, y, epochs=2, batch_size=8, verbose=0)
    cpu.save(tmp_path / "m.nnxp")

    model = nnxp.load_model(tmp_path / "m.nnxp", device="cuda:1")  # set_weights and optimizer set_state
    assert model.params.device.id == 1
    assert all(v.device.id == 1 for v in model.optimizer.state.values())
    for a, b in zip(model.get_weights(), cpu.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.set_weights([w * 0.5 for w in cpu.get_weights()])
    np.testing.assert_array_equal(model.get_weights()[0], cpu.get_weights()[0] * 0.5)
    model.set_weights(cpu.get_weights())
    model.optimizer.build(model.params)  # fresh state, outside any device scope
    assert all(v.device.id == 1 for v in model.optimizer.state.values())
    model.optimizer.set_state(cpu.optimizer.get_state(), model.params)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    cpu.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(model.get_weights(), cpu.get_weights(), strict=True):  # float32: the kernels' rounding
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_batch_size_none_means_32_as_in_keras():
    # Keras programs pass batch_size=None (its default); evaluate and predict took it, fit refused it
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 4)), rng.integers(0, 3, 100)

    def trained(batch_size):
        model = Sequential([Dense(5, "tanh", input_dim=4), Dense(3, "softmax")], seed=0)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(x, y, epochs=2, batch_size=batch_size, verbose=0)
        return model.get_weights()

    for a, b in zip(trained(None), trained(32)):
        np.testing.assert_array_equal(a, b)


def test_metrics_are_logged_under_the_users_spelling_as_keras_does(tmp_path):
    # Keras 2 programs write metrics=['acc'] and monitor 'val_acc'; the log keys follow the spelling given
    x, y = _circles(120)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce", metrics=["acc"])
    stop = nnxp.callbacks.EarlyStopping(monitor="val_acc", patience=0, min_delta=1.0)
    h = model.fit(x, y, epochs=5, verbose=0, validation_split=0.25, callbacks=[stop])
    assert set(h.history) == {"loss", "acc", "val_loss", "val_acc"}
    assert len(h.history["acc"]) < 5  # EarlyStopping found 'val_acc' and stopped
    assert list(model.evaluate(x, y, verbose=0, return_dict=True)) == ["loss", "acc"]
    model.save(tmp_path / "m.nnxp")
    assert nnxp.load_model(tmp_path / "m.nnxp").metrics == ["acc"]
    reg = Sequential([Dense(1, input_dim=2)], seed=0)
    reg.compile("sgd", "mse", metrics=["mean_absolute_error"])
    assert list(reg.evaluate(x, y, verbose=0, return_dict=True)) == ["loss", "mean_absolute_error"]


class _DoubleInterrupter(Callback):
    """Two real SIGINTs (an impatient user's Ctrl-C, Ctrl-C) after batch `batch` of the model's epoch `count`:
    the second one raises KeyboardInterrupt at once, from inside fit."""

    def __init__(self, count, batch):
        self.count, self.batch = count, batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch and self.model.epochs_trained == self.count:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


class _Raiser(Callback):
    """A callback that fails in the middle of epoch `count` (a bug in user code, a full disk in a logger)."""

    def __init__(self, count, batch):
        self.count, self.batch = count, batch

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.batch and self.model.epochs_trained == self.count:
            raise OSError("the logger's disk is full")


@pytest.mark.parametrize("callback, error", [(_DoubleInterrupter(2, 4), KeyboardInterrupt),
                                             (_Raiser(2, 4), OSError)])
def test_an_exception_mid_epoch_leaves_the_model_at_the_start_of_that_epoch(tmp_path, callback, error):
    x, y = _circles(300)
    y = y.astype(np.int64)
    kw = {"batch_size": 16, "verbose": 0}
    straight = _continuing_model()
    straight.fit(x, y, epochs=5, **kw)
    after_two = _continuing_model()
    after_two.fit(x, y, epochs=2, **kw)

    model = _continuing_model()
    with pytest.raises(error):
        model.fit(x, y, epochs=5, callbacks=[callback], **kw)
    # whatever escaped fit, the model holds a whole number of epochs: weights, optimizer state and count agree
    assert model.epochs_trained == 2 and model.optimizer.iterations == after_two.optimizer.iterations
    for a, b in zip(model.get_weights(), after_two.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    model.save(tmp_path / "m.nnxp")
    resumed = nnxp.load_model(tmp_path / "m.nnxp")
    resumed.fit(x, y, epochs=5, initial_epoch=resumed.epochs_trained, **kw)
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class _Pause(Callback):
    """Holds fit in the middle of its second epoch until the test lets it go."""

    def __init__(self):
        self.inside, self.go = threading.Event(), threading.Event()

    def on_train_batch_end(self, batch, logs=None):
        if self.model.epochs_trained == 1 and batch == 3:
            self.inside.set()
            self.go.wait(30)


@pytest.mark.parametrize("call", ["save", "compile", "set_weights"])
def test_calls_that_read_or_replace_the_whole_model_wait_for_a_fit_in_another_thread(tmp_path, call):
    # a save from another thread mid-epoch wrote a file that never existed in training (a partial epoch under
    # epochs_trained=1); a compile or set_weights swapped the optimizer or the weights under the running fit
    x, y = _circles(200)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "bce")
    model.fit(x, y, epochs=1, verbose=0)
    weights = model.get_weights()
    pause, errors = _Pause(), []
    worker = threading.Thread(target=lambda: model.fit(x, y, epochs=3, batch_size=16, verbose=0, callbacks=[pause]))
    worker.start()
    try:
        assert pause.inside.wait(30)
        with pytest.raises(NnxpError, match="fit is already running on this model in another thread"):
            if call == "save":
                model.save(tmp_path / "m.nnxp")
            elif call == "compile":
                model.compile("sgd", "mse")
            else:
                model.set_weights(weights)
    except BaseException as exc:
        errors.append(exc)
    finally:
        pause.go.set()
        worker.join()
    assert not errors, errors
    assert not (tmp_path / "m.nnxp").exists()
    assert model.epochs_trained == 4 and model.optimizer.name == "adam"
    model.save(tmp_path / "m.nnxp")  # and once fit is done, each works again
    model.compile("sgd", "mse")
    model.set_weights(weights)


def test_metrics_are_logged_under_the_names_given_as_keras_does(tmp_path):
    # Keras logs metrics=["acc"] as "acc" and "val_acc"; a port reading history.history["val_acc"], or stopping
    # early on monitor="val_acc", found nothing (nnxp logged "accuracy"), and EarlyStopping only warned each epoch
    from nnxp.callbacks import EarlyStopping

    x, y = _circles(200)
    model = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile("adam", "binary_crossentropy", metrics=["acc", "mean_squared_error"])
    h = model.fit(x, y, epochs=3, verbose=0, validation_split=0.25,
                  callbacks=[EarlyStopping(monitor="val_acc", patience=0, mode="max")])
    assert list(h.history) == ["loss", "acc", "mean_squared_error", "val_loss", "val_acc", "val_mean_squared_error"]
    result = model.evaluate(x, y, verbose=0, return_dict=True)
    assert list(result) == ["loss", "acc", "mean_squared_error"]
    assert result["acc"] == model.evaluate(x, y, verbose=0)[1]
    reference = Sequential([Dense(8, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    reference.compile("adam", "binary_crossentropy", metrics=["accuracy", "mse"])
    h_ref = reference.fit(x, y, epochs=3, verbose=0, validation_split=0.25)
    assert h.history["acc"] == h_ref.history["accuracy"][: len(h.history["acc"])]  # the same values
    model.save(tmp_path / "m.nnxp")
    assert list(nnxp.load_model(tmp_path / "m.nnxp").evaluate(x, y, verbose=0, return_dict=True)) == list(result)


def test_two_layers_of_one_name_are_refused_as_keras_does(tmp_path):
    # summary, the size report and error messages name layers; two called "x" made them ambiguous, and a damaged
    # file whose layers shared a name loaded silently
    first = Dense(3, "relu", name="x", input_dim=2)
    with pytest.raises(NnxpError, match="unique names.*'x'"):
        Sequential([first, Dense(2, name="x")])
    model = Sequential([Dense(3, "relu", name="x", input_dim=2)])
    second = Dense(2, name="x")
    with pytest.raises(NnxpError, match="unique names.*'x'"):
        model.add(second)
    assert len(model.layers) == 1 and second._owner is None  # the refused layer is still free to use
    Sequential([second])
    model.add(Dense(2))  # an automatic name never clashes
    model.save(tmp_path / "m.nnxp")
    import json
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.nnxp") as zf:
        config, weights = json.loads(zf.read("config.json")), zf.read("weights.npz")
    config["model"]["layers"][1]["config"]["name"] = "x"
    with zipfile.ZipFile(tmp_path / "dup.nnxp", "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("weights.npz", weights)
    with pytest.raises(nnxp.errors.ModelFileError, match="unique names"):
        nnxp.load_model(tmp_path / "dup.nnxp")


# --- the public state API (issue 14 part 5) ---------------------------------------------------------------------
def test_from_config_rebuilds_an_unbuilt_twin_with_the_same_initial_weights():
    model = Sequential([Dense(5, "relu", input_dim=3, name="hidden"), Dropout(0.25), Dense(2, "softmax")],
                       seed=11, dtype="float64", name="twin", precision="tf32")
    twin = Sequential.from_config(model.get_config())
    assert not twin.built and twin.input_dim == 3
    assert twin.get_config() == model.get_config()
    assert twin.weight_layout() == [("hidden", "kernel", 0, (3, 5)), ("hidden", "bias", 15, (5,)),
                                    ("dense", "kernel", 20, (5, 2)), ("dense", "bias", 30, (2,))]
    for a, b in zip(twin.get_weights(), model.get_weights(), strict=True):  # same seed: same initial weights
        np.testing.assert_array_equal(a, b)
    with pytest.raises(NnxpError, match=r"`layers` do not fit `input_dim`=4"):
        Sequential.from_config({**model.get_config(), "input_dim": 4, "layers": [
            {"class_name": "Dense", "config": {"units": 2, "input_dim": 3}}]})


def test_a_model_saved_after_its_shared_optimizer_stepped_another_model_loads(tmp_path):
    # one optimizer instance, two models of different sizes: after b's fit the optimizer holds b's state, and
    # get_state/save wrote it for a, a file load_model refused ("optimizer/m must have shape (49,)")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 1))
    opt = nnxp.optimizers.Adam(1e-3)
    a = Sequential([Dense(8, input_dim=4), Dense(1)], seed=0)
    b = Sequential([Dense(3, input_dim=4), Dense(1)], seed=1)
    a.compile(opt, "mse")
    b.compile(opt, "mse")
    a.fit(x, y, epochs=1, verbose=0)
    b.fit(x, y, epochs=1, verbose=0)
    state = a.get_state()["compile"]["optimizer_state"]  # none of b's: the fresh state a's next step starts from
    assert {k: (v.shape, np.abs(v).max()) for k, v in state.items()} == {"m": ((49,), 0.0), "v": ((49,), 0.0)}
    assert b.get_state()["compile"]["optimizer_state"]["m"].shape == (19,)  # b's own state as it is
    a.save(tmp_path / "a.nnxp")
    loaded = nnxp.load_model(tmp_path / "a.nnxp")
    assert loaded.optimizer.iterations == opt.iterations
    loaded.fit(x, y, epochs=1, verbose=0)  # and the file trains on as the live model does
    a.fit(x, y, epochs=1, verbose=0)
    for p, q in zip(loaded.get_weights(), a.get_weights(), strict=True):
        np.testing.assert_array_equal(p, q)


def test_moving_a_model_whose_shared_optimizer_holds_another_models_state(fake_cupy):
    # the move used to reshape the other model's state onto this one: NnxpError ("optimizer state `m` must have
    # shape (49,)"), and the way back rebuilt the optimizer, wiping the other model's moments
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)), rng.normal(size=(32, 1))
    opt = nnxp.optimizers.Adam(1e-3)
    a = Sequential([Dense(8, input_dim=4), Dense(1)], seed=0)
    b = Sequential([Dense(3, input_dim=4), Dense(1)], seed=1)
    a.compile(opt, "mse")
    b.compile(opt, "mse")
    a.fit(x, y, epochs=1, verbose=0)
    b.fit(x, y, epochs=1, verbose=0)
    b_state = opt.get_state()
    weights, predictions = a.get_weights(), a.predict(x)
    a.to("cuda")
    assert a.device.is_cuda and a.device.xp is not np
    for p, q in zip(a.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(p, q)
    np.testing.assert_allclose(a.predict(x), predictions, rtol=1e-6, atol=1e-6)
    assert sorted(opt.get_state()) == sorted(b_state)
    for k, v in opt.get_state().items():  # b's moments untouched by a's move
        np.testing.assert_array_equal(v, b_state[k])


def test_from_config_and_set_flat_weights_refuse_bad_input_with_nnxp_errors():
    # the public state API (issue 14) met bad input with TypeError/KeyError/AttributeError, accepted a negative
    # input_dim (sizing a (-1, 3) kernel), and a wrong-sized flat buffer left the unbuilt model's layers sized
    dense = {"class_name": "Dense", "config": {"units": 3}}
    bad = [("not a dict", NnxpTypeError, r"`config` must be a dict"),
           ({"layers": "Dense"}, NnxpTypeError, r"`layers` must be a list"),
           ({"layers": [{"config": {"units": 3}}]}, NnxpError, r"`layers\[0\]` must be a dict with 'class_name'"),
           ({"layers": [dense], "input_dim": -1}, NnxpError, r"input_dim.*Received: input_dim=-1"),
           ({"layers": [dense], "input_dim": 2.5}, NnxpError, r"input_dim")]
    for config, error, match in bad:
        with pytest.raises(error, match=match):
            Sequential.from_config(config)
    with pytest.raises(NotCompiledError, match="input size is not known"):
        Sequential([Dense(3)]).set_flat_weights(np.zeros(3))
    model = Sequential([Dense(3, input_dim=2)])
    with pytest.raises(NnxpError, match=r"must have shape \(9,\)"):
        model.set_flat_weights(np.zeros(5))
    assert not model.built and [(layer.input_dim, layer.output_dim) for layer in model.layers] == [(None, None)]
    model.set_flat_weights(np.arange(9.0))
    np.testing.assert_array_equal(model.get_weights()[1], [6.0, 7.0, 8.0])


def test_get_state_holds_what_a_file_holds_as_copies():
    x, y = _circles(64)
    model = Sequential([Dense(4, "relu", input_dim=2), Dense(1, "sigmoid")], seed=0)
    model.compile(nnxp.optimizers.Adam(0.01), "bce", metrics=["accuracy"])
    assert model.get_state()["compile"]["optimizer_state"] == {}  # compiled, no step yet
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    state = model.get_state()
    assert state["config"] == model.get_config() and state["epochs_trained"] == 2
    for a, b in zip(state["weights"], model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    c = state["compile"]
    assert (c["loss"], c["metrics"], c["optimizer_iterations"]) == ("binary_crossentropy", ["accuracy"], 8)
    assert c["optimizer"] == model.optimizer.get_config() and sorted(c["optimizer_state"]) == ["m", "v"]
    np.testing.assert_array_equal(c["optimizer_state"]["m"], model.optimizer.state["m"])
    state["weights"][0][...] = 0  # host copies: the model is untouched
    c["optimizer_state"]["m"][...] = 0
    assert np.abs(model.get_weights()[0]).sum() > 0 and np.abs(model.optimizer.state["m"]).sum() > 0
    assert Sequential([Dense(1, input_dim=2)]).get_state()["compile"] is None


# --- Keras's metrics_names, get_layer and fit's History ---------------------------------------------------------
@pytest.mark.parametrize("metrics", [None, ["accuracy"], ["acc", "mse"]])
def test_metrics_names_name_evaluates_list_in_its_order(metrics):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 3)), np.eye(2)[rng.integers(0, 2, 24)]
    model = Sequential([Dense(5, "relu", input_dim=3), Dense(2, "softmax")], seed=0)
    assert model.metrics_names == []  # before compile, as Keras
    model.compile("adam", "categorical_crossentropy", metrics=metrics)
    assert model.metrics_names == ["loss", *(metrics or [])]
    result = model.evaluate(x, y, verbose=0)
    values = [result] if not metrics else result
    assert dict(zip(model.metrics_names, values, strict=True)) == model.evaluate(x, y, verbose=0, return_dict=True)
    history = model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    assert list(history.history) == model.metrics_names  # the history's keys are the same names
    model.metrics_names.append("x")  # a new list each time: the model's own is untouched
    assert model.metrics_names == ["loss", *(metrics or [])]


def test_get_layer_by_name_or_index_as_keras():
    model = Sequential([Dense(4, "relu", input_dim=3, name="hidden"), Dropout(0.2), Dense(2, name="out")])
    assert model.get_layer("hidden") is model.layers[0] and model.get_layer(name="out") is model.layers[2]
    assert model.get_layer(index=1) is model.layers[1] and model.get_layer(index=np.int64(1)).name == "dropout"
    assert model.get_layer(index=-1) is model.layers[2]
    assert [layer.name for layer in model.layers] == ["hidden", "dropout", "out"]


@pytest.mark.parametrize("kwargs, error, match", [
    ({}, NnxpError, r"Provide either a layer name or layer index at `get_layer`"),
    ({"name": "out", "index": 0}, NnxpError, r"Provide only a layer name or a layer index\. Received: index=0, "
                                             r"name='out'"),
    ({"name": "hiden"}, NnxpError, r"No such layer: 'hiden'\. Existing layers are: \['hidden', 'dropout', 'out'\]\. "
                                   r"Did you mean \"hidden\"\?"),
    ({"index": 3}, NnxpError, r"`index` must be within the model's 3 layers \(-3 to 2\)\. Received: index=3"),
    ({"index": -4}, NnxpError, r"Received: index=-4"),
    ({"index": 1.0}, NnxpTypeError, r"`index` must be an integer\. Received: index=1\.0"),
    ({"index": True}, NnxpTypeError, r"`index` must be an integer"),
    ({"name": 0}, NnxpTypeError, r"`name` must be a string\. Received: name=0"),
])
def test_get_layer_errors_name_the_argument(kwargs, error, match):
    model = Sequential([Dense(4, "relu", input_dim=3, name="hidden"), Dropout(0.2), Dense(2, name="out")])
    with pytest.raises(error, match=match):
        model.get_layer(**kwargs)


def test_model_history_after_fit_holds_the_logs_and_the_runs_params():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    model = Sequential([Dense(2, "softmax", input_dim=3)], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    assert model.history is None
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert model.history is history and history.epoch == [0, 1] and len(history.history["accuracy"]) == 2
    # Keras's History.params: 20 rows in batches of 8 are 3 steps per epoch
    assert {k: history.params[k] for k in ("epochs", "steps", "verbose")} == {"epochs": 2, "steps": 3, "verbose": 0}
    assert history.model is model
