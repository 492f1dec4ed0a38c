"""nnxp.utils.to_categorical: Keras's conventions, built on nnxp.datasets.one_hot."""

import numpy as np
import pytest

import nnxp
from nnxp.errors import NnxpError, NnxpTypeError
from nnxp.utils import to_categorical


def test_to_categorical_values_and_dtype():
    got = to_categorical([2, 0, 1])
    np.testing.assert_array_equal(got, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert got.dtype == np.float32
    assert to_categorical([1], num_classes=4, dtype="float64").tolist() == [[0.0, 1.0, 0.0, 0.0]]


def test_to_categorical_follows_keras_on_column_and_float_labels():
    np.testing.assert_array_equal(to_categorical(np.array([[1], [0]]), 2), [[0, 1], [1, 0]])  # (N, 1) -> (N, 2)
    np.testing.assert_array_equal(to_categorical(np.array([1.0, 2.0]), 3), [[0, 1, 0], [0, 0, 1]])
    assert to_categorical(np.zeros((2, 3), dtype=int), 2).shape == (2, 3, 2)


def test_to_categorical_is_reexported_and_matches_one_hot():
    y = np.random.default_rng(0).integers(0, 10, size=50)
    np.testing.assert_array_equal(nnxp.utils.to_categorical(y, 10), nnxp.datasets.one_hot(y, 10))


@pytest.mark.parametrize("y, num_classes, error, match", [
    ([0.5, 1.0], None, NnxpError, "whole-number"),
    ([0, 3], 3, NnxpError, r"lie in \[0, 2\]"),
    (["a"], None, NnxpTypeError, "integer class labels"),
    ([0, 1], 0, NnxpError, "num_classes"),
])
def test_to_categorical_errors(y, num_classes, error, match):
    with pytest.raises(error, match=match):
        to_categorical(y, num_classes)


def test_to_categorical_costs_its_output_not_num_classes_squared():
    # one_hot indexed np.eye(num_classes): 200,000 classes wanted a 160 GB identity for a 1.6 MB answer
    out = to_categorical([0, 199_999], num_classes=200_000)
    assert out.shape == (2, 200_000) and out.dtype == np.float32
    assert out.sum() == 2 and out[0, 0] == 1 and out[1, 199_999] == 1


def test_to_categorical_refuses_an_output_too_large_with_its_size():
    with pytest.raises(NnxpError, match=r"`num_classes`=1000000000001 .* TiB"):
        to_categorical([10**12])
