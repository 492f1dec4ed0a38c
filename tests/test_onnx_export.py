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
