"""The bundled digits set: exact shape, dtype, contents and licence file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import nnxp.datasets
from nnxp.datasets import load_digits

DATA = Path(nnxp.datasets.__file__).parent / "data"


def test_shapes_dtypes_and_range():
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0 and x.max() == 16
    assert np.array_equal(x, np.round(x))  # integer pixel counts


def test_known_contents():
    x, y = load_digits()
    np.testing.assert_array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    assert x.sum(dtype=np.float64) == 561718
    np.testing.assert_array_equal(y[:10], np.arange(10))
    first = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0]
    np.testing.assert_array_equal(x[0, :32], first)


def test_each_call_returns_fresh_writable_arrays():
    x1, y1 = load_digits()
    x1[:] = -1
    y1[:] = -1
    x2, y2 = load_digits()
    assert x2.min() == 0 and y2.min() == 0


def test_bundled_file_is_small_uint8_and_pickle_free():
    path = DATA / "digits.npz"
    assert path.stat().st_size < 100_000
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["X", "y"]
        assert archive["X"].dtype == np.uint8 and archive["y"].dtype == np.uint8


def test_licence_gives_attribution():
    text = (DATA / "DIGITS_LICENSE.txt").read_text()
    for needle in ("Alpaydin", "Kaynak", "CC BY 4.0", "UCI"):
        assert needle in text
