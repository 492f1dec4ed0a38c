"""Dense, Dropout and Activation layers: validation, config round trips, forward/backward numbers."""

import numpy as np
import pytest

import nnxp
from nnxp import Activation, Dense, Dropout, Flatten, Input, InputLayer, Sequential
from nnxp.errors import NnxpError, NnxpTypeError
from nnxp.layers import from_config
from nnxp.ops.activation import ACTIVATION_OPS
from nnxp.regularizers import L2


def _bind(layer, input_dim, seed=0):
    """Build `layer` and give it float64 parameters and zeroed gradients (what the model does with views)."""
    rng = np.random.default_rng(seed)
    layer.build(input_dim)
    params = {name: rng.normal(size=shape) for name, shape, _ in layer.param_specs()}
    grads = {name: np.zeros(shape) for name, shape, _ in layer.param_specs()}
    layer.bind(params, grads)
    return layer


# --- constructor validation ----------------------------------------------------------------------
@pytest.mark.parametrize("units", [0, -1, 2.5, True, "4", None])
def test_dense_units_must_be_a_positive_integer(units):
    with pytest.raises(NnxpError, match=rf"`units` must be a positive integer\. Received: units={units!r}"):
        Dense(units)


def test_dense_accepts_numpy_integers():
    assert Dense(np.int64(3)).units == 3


@pytest.mark.parametrize("input_dim", [0, -2, 1.5])
def test_dense_input_dim_validation(input_dim):
    with pytest.raises(NnxpError, match=rf"`input_dim` must be a positive integer\. Received: input_dim={input_dim!r}"):
        Dense(3, input_dim=input_dim)


@pytest.mark.parametrize("use_bias", [1, "yes", None])
def test_dense_use_bias_must_be_bool(use_bias):
    with pytest.raises(NnxpTypeError, match=rf"`use_bias` must be True or False\. Received: use_bias={use_bias!r}"):
        Dense(3, use_bias=use_bias)


def test_dense_bad_initializer_and_regularizer_name_their_argument():
    with pytest.raises(NnxpError, match=r"`bias_initializer` .*Received: bias_initializer='zero'"):
        Dense(3, bias_initializer="zero")
    with pytest.raises(NnxpError, match=r"`kernel_regularizer` .*Received: kernel_regularizer='l5'"):
        Dense(3, kernel_regularizer="l5")


def test_dense_build_checks_the_declared_input_dim():
    layer = Dense(2, input_dim=4, name="d")
    with pytest.raises(NnxpError, match=r"`input_dim` of layer 'd' is 4 but its input has 5 features"):
        layer.build(5)
    assert layer.build(4) == 2


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "a", True, None, float("nan")])
def test_dropout_rate_must_be_in_unit_interval(rate):
    with pytest.raises(NnxpError, match=rf"`rate` must be a number in \[0, 1\)\. Received: rate={rate!r}"):
        Dropout(rate)


def test_activation_layer_validates_its_name():
    with pytest.raises(NnxpError, match=r"`activation` .*Received: activation='relu6'\. Did you mean \"relu\""):
        Activation("relu6")


# --- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "layer",
    [
        Dense(5, "ReLU", input_dim=3, use_bias=False, kernel_initializer="he_normal", bias_initializer="ones",
              kernel_regularizer=L2(0.1), bias_regularizer={"l1": 0.2}, name="hidden"),
        Dense(1),
        Dropout(0.25, name="drop"),
        Activation("tanh", name="act"),
        Flatten(input_shape=(28, 28), name="flat"),
        Flatten(),
        Input(shape=(3, 4), name="in"),
    ],
    ids=["dense_full", "dense_default", "dropout", "activation", "flatten_shape", "flatten", "input"],
)
def test_config_round_trip(layer):
    config = layer.get_config()
    again = from_config(type(layer).__name__, config)
    assert type(again) is type(layer)
    assert again.get_config() == config


def test_dense_config_content():
    cfg = Dense(4, "relu", input_dim=2, kernel_regularizer="l2").get_config()
    assert cfg["units"] == 4 and cfg["activation"] == "relu" and cfg["input_dim"] == 2
    assert cfg["kernel_regularizer"] == {"name": "l1_l2", "l1": 0.0, "l2": 0.01}
    assert cfg["bias_regularizer"] is None


def test_from_config_rejects_unknown_classes():
    with pytest.raises(NnxpError, match=r"layer class must be one of \['Activation', 'Dense', 'Dropout', 'Flatten', "
                                        r"'InputLayer'\]\. "
                                        r"Received: 'Conv2D'"):
        from_config("Conv2D", {})


# --- parameters ----------------------------------------------------------------------------------
def test_param_specs_and_count_params():
    dense = Dense(4, input_dim=3)
    dense.build(3)
    assert dense.param_specs() == [("kernel", (3, 4), "glorot_uniform"), ("bias", (4,), "zeros")]
    assert dense.count_params() == 16
    no_bias = Dense(4, use_bias=False)
    no_bias.build(3)
    assert no_bias.param_specs() == [("kernel", (3, 4), "glorot_uniform")]
    assert no_bias.count_params() == 12
    for layer in (Dropout(0.5), Activation("relu")):
        assert layer.build(7) == 7
        assert layer.param_specs() == [] and layer.count_params() == 0


def test_model_parameter_count_is_the_sum_of_its_layers():
    model = Sequential([Dense(5, "relu", input_dim=3), Dropout(0.1), Dense(2)], seed=0)
    model.build(3)
    assert model.count_params() == (3 * 5 + 5) + (5 * 2 + 2)
    assert [w.shape for w in model.get_weights()] == [(3, 5), (5,), (5, 2), (2,)]


# --- Dense numbers -------------------------------------------------------------------------------
def test_dense_forward_and_backward_with_l2_regularizer():
    layer = _bind(Dense(3, "linear", kernel_regularizer=L2(0.1)), 4)
    rng = np.random.default_rng(1)
    x, dy = rng.normal(size=(5, 4)), rng.normal(size=(5, 3))
    w, b = layer.params["kernel"], layer.params["bias"]
    np.testing.assert_allclose(layer.forward(x, training=True), x @ w + b, rtol=1e-12)
    dx = layer.backward(dy.copy())
    np.testing.assert_allclose(dx, dy @ w.T, rtol=1e-12)
    np.testing.assert_allclose(layer.grads["kernel"], x.T @ dy + 0.2 * w, rtol=1e-12)
    np.testing.assert_allclose(layer.grads["bias"], dy.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(float(layer.regularization_penalty()), 0.1 * np.sum(w * w), rtol=1e-12)


def test_dense_relu_forward_and_forward_linear_skips_the_activation():
    layer = _bind(Dense(3, "relu"), 2)
    x = np.random.default_rng(2).normal(size=(6, 2))
    z = x @ layer.params["kernel"] + layer.params["bias"]
    np.testing.assert_allclose(layer.forward(x), np.maximum(z, 0), rtol=1e-12)
    np.testing.assert_allclose(layer.forward_linear(x), z, rtol=1e-12)
    np.testing.assert_allclose(layer.forward(x), np.maximum(z, 0), rtol=1e-12)  # forward_linear left no trace


# --- Dropout -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_dropout_training_keeps_one_minus_rate_scaled_up(rate):
    layer = Dropout(rate)
    layer.rng = np.random.default_rng(0)
    x = np.full((400, 250), 2.0)  # 100k units: the kept fraction is within ~0.5% of 1 - rate
    y = layer.forward(x, training=True)
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 0.01
    np.testing.assert_allclose(y[kept], 2.0 / (1 - rate), rtol=1e-12)
    np.testing.assert_allclose(y.mean(), 2.0, rtol=0.02)  # expectation preserved


def test_dropout_backward_reuses_the_forward_mask():
    layer = Dropout(0.4)
    layer.rng = np.random.default_rng(5)
    rng = np.random.default_rng(6)
    x, dy = rng.normal(size=(50, 20)), rng.normal(size=(50, 20))
    y = layer.forward(x, training=True)
    mask = y / x  # 0 or 1/(1 - rate) per unit
    dx = layer.backward(dy.copy())
    np.testing.assert_allclose(dx, dy * mask, rtol=1e-12)
    assert set(np.round(np.unique(mask), 12)) == {0.0, round(1 / 0.6, 12)}


def test_dropout_is_the_identity_at_inference_and_at_rate_zero():
    x = np.random.default_rng(0).normal(size=(8, 3))
    layer = Dropout(0.5)
    layer.rng = np.random.default_rng(0)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    dy = np.ones_like(x)
    np.testing.assert_array_equal(layer.backward(dy), np.ones_like(x))  # no mask after an inference pass
    zero = Dropout(0.0)
    np.testing.assert_array_equal(zero.forward(x, training=True), x)


def test_dropout_masks_are_reproducible_for_a_seed():
    x = np.ones((20, 10))
    a, b = Dropout(0.5), Dropout(0.5)
    a.rng, b.rng = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(a.forward(x, training=True), b.forward(x, training=True))


def test_model_with_dropout_predicts_deterministically():
    model = Sequential([Dense(8, "relu", input_dim=3), Dropout(0.5), Dense(1)], seed=0)
    model.compile("sgd", "mse")
    x = np.random.default_rng(0).normal(size=(16, 3))
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    np.testing.assert_array_equal(model.predict(x), model.predict(x))


# --- Activation layer ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ACTIVATION_OPS))
def test_activation_layer_backward_matches_finite_differences(name):
    rng = np.random.default_rng(4)
    x, g = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))

    def objective(v):  # L = sum(g * f(v)), computed with a fresh layer so buffers are not shared
        return float(np.sum(g * Activation(name).forward(v)))

    eps = 1e-6
    numeric = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric[idx] = (objective(up) - objective(down)) / (2 * eps)
    layer = Activation(name)
    layer.forward(x, training=True)
    np.testing.assert_allclose(layer.backward(g.copy()), numeric, rtol=1e-6, atol=1e-8)


def test_activation_layer_forward_values():
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(Activation("relu").forward(x), [[0.0, 0.0, 3.0]])
    np.testing.assert_allclose(Activation("tanh").forward(x), np.tanh(x), rtol=1e-12)
    np.testing.assert_allclose(Activation("sigmoid").forward(x), 1 / (1 + np.exp(-x)), rtol=1e-12)
    soft = Activation("softmax").forward(x)
    np.testing.assert_allclose(soft, np.exp(x) / np.exp(x).sum(), rtol=1e-12)


def test_activation_layer_forward_linear_passes_through():
    layer = Activation("softmax")
    x = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(layer.forward_linear(x, training=True), x)
    dy = np.array([[0.3, -0.3]])
    np.testing.assert_array_equal(layer.backward(dy), [[0.3, -0.3]])


def test_repr_shows_the_config():
    assert repr(Dropout(0.5, name="d")) == "Dropout(name='d', rate=0.5)"
    assert "units=3" in repr(Dense(3))


@pytest.mark.parametrize("rate", [np.float32(0.5), np.int64(0)])
def test_dropout_accepts_numpy_scalars(rate):
    assert Dropout(rate).rate == float(rate)


# --- Keras spellings: input_shape, Input, Flatten, removed arguments ----------------------------------
def test_dense_input_shape_is_input_dim():
    assert Dense(3, input_shape=(5,)).declared_input_dim == 5
    assert Dense(3, input_shape=5).declared_input_dim == 5
    assert Dense(3, input_dim=5, input_shape=(5,)).get_config()["input_dim"] == 5
    model = Sequential([Dense(4, "relu", input_shape=(6,)), Dense(2)], seed=0)
    assert model.input_dim == 6 and model.get_weights()[0].shape == (6, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"input_shape": (28, 28)}, r"Flatten\(input_shape=\(28, 28\)\) first"),
    ({"input_shape": (None,)}, "positive integers"),
    ({"input_shape": ()}, "tuple of positive integers"),
    ({"input_dim": 4, "input_shape": (5,)}, "disagree"),
])
def test_dense_input_shape_validation(kwargs, match):
    with pytest.raises(NnxpError, match=match):
        Dense(3, **kwargs)


@pytest.mark.parametrize("old, new", [("init", "kernel_initializer"), ("output_dim", "units"),
                                      ("W_regularizer", "kernel_regularizer"), ("bias", "use_bias")])
def test_removed_keras_spellings_name_the_right_one(old, new):
    with pytest.raises(NnxpTypeError, match=f"Dense no longer takes `{old}`.*use {new} instead"):
        Dense(3, **{old: "x"})


def test_unknown_dense_argument_suggests_the_closest():
    with pytest.raises(NnxpTypeError, match='unexpected keyword argument `activaton`. Did you mean "activation"'):
        Dense(3, activaton="relu")


def test_flatten_forward_backward_reshape_exactly():
    x = np.arange(24.0).reshape(2, 3, 4)
    layer = Flatten()
    y = layer.forward(x, training=True)
    assert y.shape == (2, 12)
    np.testing.assert_array_equal(y[1], np.arange(12.0, 24.0))  # row-major, as Keras (channels last)
    dy = np.random.default_rng(0).normal(size=(2, 12))
    np.testing.assert_array_equal(layer.backward(dy), dy.reshape(2, 3, 4))
    rows = np.ones((5, 7))
    assert layer.forward(rows, training=True) is rows and layer.backward(rows) is rows


def test_flatten_model_trains_on_images_and_checks_their_shape():
    rng = np.random.default_rng(0)
    x = rng.random((300, 6, 5)).astype(np.float32)
    y = (x[:, :3].mean(axis=(1, 2)) > x[:, 3:].mean(axis=(1, 2))).astype(np.int64)
    model = Sequential([Flatten(input_shape=(6, 5)), Dense(16, "relu"), Dense(2, "softmax")], seed=0)
    model.compile(nnxp.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    assert model.get_weights()[0].shape == (30, 16)
    probs = model.predict(x)
    assert ((probs.argmax(axis=1) == y).mean()) > 0.9
    np.testing.assert_array_equal(model.predict(x.reshape(300, 30)), probs)  # rows of 30 are the same samples
    before = model.get_weights()
    with pytest.raises(NnxpError, match=r"`x` must hold samples of shape \(6, 5\).*Received: an array of shape "
                                        r"\(300, 5, 6\)"):
        model.fit(x.reshape(300, 5, 6), y, verbose=0)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the refused call left the model as it was


def test_one_image_without_its_batch_axis_is_named_as_one_sample():
    # predict(image) instead of predict(image[None]) said "must hold samples of shape (28, 28). Received: an
    # array of shape (28, 28)", which reads as a contradiction
    model = Sequential([Flatten(input_shape=(28, 28)), Dense(3, "softmax")], seed=0)
    image = np.zeros((28, 28), np.float32)
    with pytest.raises(NnxpError, match=r"`x` must be a batch of samples of shape \(N, 28, 28\).*Received: one "
                                        r"sample of shape \(28, 28\); add the batch axis: x\[None\]"):
        model.predict(image, verbose=0)
    assert model.predict(image[None], verbose=0).shape == (1, 3)


def test_flatten_gradient_matches_a_model_on_rows():
    """A Flatten model on images trains exactly like the same Dense model on the flattened rows."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4, 3))
    y = rng.integers(0, 3, size=64)
    a = Sequential([Flatten(input_shape=(4, 3)), Dense(5, "tanh"), Dense(3, "softmax")], seed=3, dtype="float64")
    b = Sequential([Dense(5, "tanh", input_dim=12), Dense(3, "softmax")], seed=3, dtype="float64")
    for m in (a, b):
        m.compile("sgd", "sparse_categorical_crossentropy")
    a.fit(x, y, epochs=2, batch_size=16, verbose=0)
    b.fit(x.reshape(64, 12), y, epochs=2, batch_size=16, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)


def test_flatten_and_input_models_save_and_load(tmp_path):
    x = np.random.default_rng(2).random((10, 4, 4)).astype(np.float32)
    for layers in ([Flatten(input_shape=(4, 4)), Dense(3, "softmax")],
                   [Input(shape=(4, 4)), Flatten(), Dense(3, "softmax")]):
        model = Sequential(layers, seed=0)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.save(tmp_path / "m.nnxp")
        again = nnxp.load_model(tmp_path / "m.nnxp")
        assert [type(layer) for layer in again.layers] == [type(layer) for layer in model.layers]
        np.testing.assert_array_equal(again.predict(x), model.predict(x))
        assert "(None, 16)" in again.summary(print_fn=None)


def test_input_as_first_element_or_through_add():
    a = Sequential([Input(shape=(7,)), Dense(2)], seed=0)
    b = Sequential(seed=0)
    b.add(nnxp.Input(shape=(7,)))
    b.add(Dense(2))
    for m in (a, b):
        assert m.input_dim == 7 and isinstance(m.layers[0], InputLayer)
        assert m.predict(np.ones((3, 7))).shape == (3, 2)
    with pytest.raises(NnxpError, match=r"samples of shape \(7,\).*Received: an array of shape \(3, 6\)"):
        a.predict(np.ones((3, 6)))


def test_input_of_images_needs_a_flatten():
    model = Sequential([Input(shape=(2, 3)), Dense(2)])
    with pytest.raises(NnxpError, match=r"Input of shape \(2, 3\) must be followed by a Flatten layer"):
        model.predict(np.ones((4, 2, 3)))


@pytest.mark.parametrize("shape", [None, (0,), (3, -1), "28", 2.5, (True,)])
def test_input_shape_validation(shape):
    with pytest.raises(NnxpError, match="shape"):
        Input(shape=shape)


def test_flatten_without_input_shape_learns_the_width_from_the_data(tmp_path):
    x = np.random.default_rng(3).random((20, 3, 4)).astype(np.float32)
    y = np.arange(20) % 2
    model = Sequential([Flatten(), Dense(2, "softmax")], seed=0)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, verbose=0)
    assert model.input_dim == 12 and model.get_weights()[0].shape == (12, 2)
    model.save(tmp_path / "m.nnxp")
    np.testing.assert_array_equal(nnxp.load_model(tmp_path / "m.nnxp").predict(x), model.predict(x))
    with pytest.raises(NnxpError, match="must have 12 features"):
        model.predict(np.ones((2, 5, 5)))


def test_setting_a_public_layer_attribute_bumps_the_settings_version():
    # a step kept whole (a CUDA graph, a launch list) holds the layers' settings in its kernels' arguments and is
    # made again when this number moves (nnxp._graph.GraphedStep.still_bound); per-batch state must not move it
    from nnxp.layers import SETTINGS

    layer, drop = Dense(4, "relu", input_dim=3), Dropout(0.5)
    before = SETTINGS[0]
    layer._x = np.zeros(3)  # what forward keeps for backward
    drop.rng = np.random.default_rng(0)  # a new generator each epoch (read on the device, not a setting)
    assert SETTINGS[0] == before
    layer.activation = "tanh"
    assert SETTINGS[0] == before + 1
    drop.rate = 0.2
    assert SETTINGS[0] == before + 2


# --- Keras's per-layer get_weights / set_weights -------------------------------------------------------------
def _mlp(seed=0, dtype="float64", device="cpu"):
    return Sequential([Dense(4, "tanh", input_dim=3), Dropout(0.5), Dense(2, "softmax")], seed=seed, dtype=dtype,
                      device=device)


def test_layer_get_weights_are_host_copies_of_the_models_weights_in_keras_order():
    model = _mlp()
    assert not model.built
    kernel, bias = model.layers[0].get_weights()  # the input size is known: builds, as model.get_weights does
    assert model.built and kernel.shape == (3, 4) and bias.shape == (4,)
    w = model.get_weights()
    np.testing.assert_array_equal(kernel, w[0])
    np.testing.assert_array_equal(bias, w[1])
    assert model.layers[1].get_weights() == []
    assert [a.shape for a in model.layers[2].get_weights()] == [(4, 2), (2,)]
    kernel += 1.0  # a copy: the model is untouched
    np.testing.assert_array_equal(model.get_weights()[0], w[0])
    # ... and read afresh each time: after a training step it shows the trained weights
    model.compile("sgd", "categorical_crossentropy")
    x = np.random.default_rng(1).normal(size=(16, 3))
    model.fit(x, np.eye(2)[np.arange(16) % 2], epochs=1, batch_size=16, verbose=0)
    assert not np.allclose(model.layers[0].get_weights()[0], w[0])
    np.testing.assert_array_equal(model.layers[2].get_weights()[1], model.get_weights()[3])


def test_layer_set_weights_writes_in_place_into_the_flat_buffer_and_predict_uses_it(device):
    model = _mlp(device=device)
    model.build(3)
    buffer = model.params
    rng = np.random.default_rng(2)
    k0, b0, k1, b1 = rng.normal(size=(3, 4)), rng.normal(size=4), rng.normal(size=(4, 2)), rng.normal(size=2)
    model.layers[0].set_weights([k0, b0])
    model.layers[2].set_weights((k1.tolist(), b1))  # a tuple, lists: anything array-like, as Keras
    model.layers[1].set_weights([])  # Dropout has no weights
    assert model.params is buffer  # the same flat buffer, written in place; the layers still view it
    if device == "cpu":
        assert all(np.shares_memory(v, buffer) for v in model.layers[0].params.values())
    np.testing.assert_array_equal(model.get_weights()[0], k0)
    x = rng.normal(size=(5, 3))
    z = np.tanh(x @ k0 + b0) @ k1 + b1
    expected = np.exp(z - z.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-12)


def test_layer_weights_copy_one_model_into_another_layer_by_layer():
    a, b = _mlp(seed=1, dtype="float32"), _mlp(seed=2, dtype="float32")
    x = np.random.default_rng(3).normal(size=(7, 3)).astype("float32")
    assert not np.allclose(a.predict(x), b.predict(x))
    for src, dst in zip(a.layers, b.layers, strict=True):
        dst.set_weights(src.get_weights())
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_layer_set_weights_before_build_builds_the_model_then_trains_from_them():
    model = _mlp()
    model.compile("sgd", "categorical_crossentropy")
    k = np.full((3, 4), 0.25)
    model.layers[0].set_weights([k, np.zeros(4)])  # unbuilt, input size known: built around them
    assert model.built
    np.testing.assert_array_equal(model.get_weights()[0], k)
    x = np.random.default_rng(4).normal(size=(8, 3))
    model.fit(x, np.eye(2)[np.arange(8) % 2], epochs=1, batch_size=8, verbose=0)
    assert not np.allclose(model.layers[0].get_weights()[0], k)  # the optimizer stepped the written weights


@pytest.mark.parametrize("weights, match", [
    ([np.ones((3, 4))], r"`weights` must be a list of 2 arrays\. Received: 1; expected, in order: "
                        r"dense\.kernel \(3, 4\), dense\.bias \(4,\)"),
    ([np.ones((4, 3)), np.ones(4)], r"`weights\[0\]` \(dense\.kernel\) must have shape \(3, 4\)\. Received: \(4, 3\)"),
    ([np.ones((3, 4)), np.ones(5)], r"`weights\[1\]` \(dense\.bias\) must have shape \(4,\)\. Received: \(5,\)"),
    ([np.ones((3, 4)), np.array([0.0, np.nan, 0.0, 0.0])], r"`weights\[1\]` \(dense\.bias\) must be finite"),
    ([np.full((3, 4), 1e39), np.ones(4)], r"`weights\[0\]` must be finite in float32"),
    (np.ones((3, 4)), r"`weights` must be a list of 2 arrays\. Received: ndarray"),
    ([np.ones((3, 4)), None], r"`weights\[1\]` must be an array"),
])
@pytest.mark.parametrize("built", [True, False])
def test_layer_set_weights_refuses_bad_weights_and_leaves_the_model_as_it_was(weights, match, built):
    model = Sequential([Dense(4, "relu", input_dim=3), Dense(2)], seed=0)  # float32
    if built:
        model.build(3)
        before = model.get_weights()
    with pytest.raises(NnxpError, match=match):
        model.layers[0].set_weights(weights)
    if built:
        for old, new in zip(before, model.get_weights(), strict=True):
            np.testing.assert_array_equal(old, new)
    else:
        assert not model.built and all(layer.input_dim is None for layer in model.layers)
    model.layers[0].set_weights([np.ones((3, 4)), np.zeros(4)])  # and still takes good weights
    np.testing.assert_array_equal(model.get_weights()[0], np.ones((3, 4)))


def test_layer_weights_without_a_model_or_an_input_size():
    assert Dense(3).get_weights() == []  # unbuilt, as in Keras
    with pytest.raises(NnxpError, match=r"layer None is in no model: .*add it to a Sequential"):
        Dense(3).set_weights([np.ones((2, 3)), np.zeros(3)])
    Dropout(0.5).set_weights([])  # nothing to set, nothing wrong
    with pytest.raises(NnxpError, match="in no model"):
        Dropout(0.5).set_weights([np.ones(2)])
    model = Sequential([Dense(3), Dense(2)])  # no input_dim: no weights until fit sees the data
    assert model.layers[0].get_weights() == [] and not model.built
    with pytest.raises(nnxp.errors.NotCompiledError, match=r"layer 'dense' has no weights yet"):
        model.layers[0].set_weights([np.ones((4, 3)), np.zeros(3)])
    assert not model.built and model.layers[0].input_dim is None


def test_layer_weights_survive_save_and_load(tmp_path):
    model = _mlp()
    model.layers[2].set_weights([np.arange(8.0).reshape(4, 2), np.array([0.5, -0.5])])
    model.save(tmp_path / "m.nnxp")
    loaded = nnxp.load_model(tmp_path / "m.nnxp")
    np.testing.assert_array_equal(loaded.get_layer("dense_1").get_weights()[0], np.arange(8.0).reshape(4, 2))
    np.testing.assert_array_equal(loaded.layers[2].get_weights()[1], [0.5, -0.5])


def test_layer_weights_on_the_second_emulated_gpu_stay_there(fake_cupy):
    # CuPy refuses a host array in setitem and another device's array without peer access (the stand-in too)
    model = _mlp(device="cuda:1")
    model.build(3)
    buffer = model.params
    rng = np.random.default_rng(5)
    k, b = rng.normal(size=(4, 2)), rng.normal(size=2)
    model.layers[2].set_weights([k, b])
    assert model.params is buffer and buffer.device.id == 1
    assert all(v.device.id == 1 for v in model.layers[2].params.values())
    got = model.layers[2].get_weights()
    assert all(isinstance(a, np.ndarray) for a in got)
    np.testing.assert_array_equal(got[0], k)
    np.testing.assert_array_equal(model.get_weights()[3], b)
    x = rng.normal(size=(3, 3))
    z = np.tanh(x @ model.get_weights()[0] + model.get_weights()[1]) @ k + b
    np.testing.assert_allclose(model.predict(x), np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-12)
