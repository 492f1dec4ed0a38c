"""Dense, Dropout and Activation layers: validation, config round trips, forward/backward numbers."""

import numpy as np
import pytest

from nnxp import Activation, Dense, Dropout, Sequential
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
    ],
    ids=["dense_full", "dense_default", "dropout", "activation"],
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
    with pytest.raises(NnxpError, match=r"layer class must be one of \['Activation', 'Dense', 'Dropout'\]\. "
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


def test_dense_relu_forward_and_logits_skip_the_activation():
    layer = _bind(Dense(3, "relu"), 2)
    x = np.random.default_rng(2).normal(size=(6, 2))
    z = x @ layer.params["kernel"] + layer.params["bias"]
    np.testing.assert_allclose(layer.forward(x), np.maximum(z, 0), rtol=1e-12)
    np.testing.assert_allclose(layer.forward(x, logits=True), z, rtol=1e-12)


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


def test_activation_layer_with_logits_passes_through():
    layer = Activation("softmax")
    x = np.array([[1.0, 2.0]])
    np.testing.assert_array_equal(layer.forward(x, training=True, logits=True), x)
    dy = np.array([[0.3, -0.3]])
    np.testing.assert_array_equal(layer.backward(dy), [[0.3, -0.3]])


def test_repr_shows_the_config():
    assert repr(Dropout(0.5, name="d")) == "Dropout(name='d', rate=0.5)"
    assert "units=3" in repr(Dense(3))


@pytest.mark.parametrize("rate", [np.float32(0.5), np.int64(0)])
def test_dropout_accepts_numpy_scalars(rate):
    assert Dropout(rate).rate == float(rate)
