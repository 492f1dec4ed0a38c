"""ONNX export: the graph run by onnxruntime matches predict to 1e-5."""

import numpy as np
import pytest

from nnxp import Activation, Dense, Dropout, Flatten, Input, NnxpError, Sequential
from nnxp.ops.activation import ACTIVATION_OPS

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")


@pytest.mark.parametrize("hidden", sorted(ACTIVATION_OPS))
def test_onnx_matches_predict(tmp_path, hidden):
    model = Sequential([Dense(16, hidden, input_dim=6), Dropout(0.3), Dense(8, "tanh", use_bias=False), Dense(4),
                        Activation("softmax")], seed=0)
    x = np.random.default_rng(1).normal(size=(33, 6)).astype(np.float32) * 2
    path = model.export_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(["y"], {"x": x})
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-5)


def test_float64_models_are_refused(tmp_path):
    with pytest.raises(NnxpError, match="float32"):
        Sequential([Dense(2, input_dim=2)], dtype="float64").export_onnx(tmp_path / "m.onnx")


@pytest.mark.parametrize("first", [[Flatten(input_shape=(4, 5))], [Input(shape=(4, 5)), Flatten()]],
                         ids=["flatten", "input_flatten"])
def test_onnx_of_a_flatten_model_takes_images(tmp_path, first):
    model = Sequential([*first, Dense(8, "relu"), Dense(3, "softmax")], seed=0)
    x = np.random.default_rng(2).normal(size=(9, 4, 5)).astype(np.float32)
    path = model.export_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape[1:]] == [4, 5]
    (got,) = session.run(["y"], {"x": x})
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act, loss, node", [("softmax", "categorical_crossentropy", "Softmax"),
                                             ("sigmoid", "binary_crossentropy", "Sigmoid")])
def test_a_trained_fused_model_exports_its_final_activation(tmp_path, act, loss, node):
    # training fuses the final activation into the loss (nnxp/head.py); the exported graph still ends in it
    import onnx

    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    model = Sequential([Dense(8, "relu", input_dim=5), Dense(3, act)], seed=0)
    model.compile("adam", loss)
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = model.export_onnx(tmp_path / "m.onnx")
    assert onnx.load(path).graph.node[-2].op_type == node  # the last node before the output's Identity
    (got,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["y"], {"x": x})
    np.testing.assert_allclose(got, model.predict(x), rtol=1e-5, atol=1e-6)
    assert ((got > 0) & (got < 1)).all()
    if act == "softmax":
        np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
