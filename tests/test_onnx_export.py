"""ONNX export: the graph run by onnxruntime matches predict to 1e-5."""

import numpy as np
import pytest

from nnxp import Activation, Dense, Dropout, NnxpError, Sequential
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
