"""Splits, one-hot and standardisation: exact partitions, proportions, and input checks."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import nnxp.datasets
from nnxp.datasets import one_hot, standardize, train_test_split
from nnxp.errors import NnxpError, NnxpTypeError


def _rows(a: np.ndarray) -> list:
    return sorted(map(tuple, a.reshape(len(a), -1).tolist()))


# --- train_test_split -------------------------------------------------------------


@pytest.mark.parametrize("test_size, n_test", [(0.2, 20), (0.25, 25), (0.7, 70), (0.001, 1), (13, 13)])
def test_split_sizes_and_exact_partition(test_size, n_test):
    x = np.arange(300).reshape(100, 3)
    y = np.arange(100)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, seed=0)
    assert len(x_te) == len(y_te) == n_test and len(x_tr) == len(y_tr) == 100 - n_test
    assert _rows(np.concatenate([x_tr, x_te])) == _rows(x)  # every row exactly once
    np.testing.assert_array_equal(x_tr[:, 0] // 3, y_tr)  # arrays stay aligned row by row
    np.testing.assert_array_equal(x_te[:, 0] // 3, y_te)


def test_fraction_rounds_up_like_scikit_learn():
    assert len(train_test_split(np.arange(10), test_size=0.25, seed=0)[1]) == 3
    assert len(train_test_split(np.arange(10), test_size=0.7, seed=0)[1]) == 7  # not 8 from 7.000000000000001


def test_split_is_seeded_and_accepts_lists():
    a = train_test_split(list(range(50)), seed=1)
    b = train_test_split(list(range(50)), seed=1)
    c = train_test_split(list(range(50)), seed=2)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_no_shuffle_takes_the_last_rows_for_test():
    tr, te = train_test_split(np.arange(10), test_size=3, shuffle=False)
    np.testing.assert_array_equal(tr, np.arange(7))
    np.testing.assert_array_equal(te, [7, 8, 9])


def test_stratify_keeps_class_proportions():
    y = np.repeat([0, 1, 2], [60, 30, 10])
    x = np.arange(100)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, seed=0, stratify=y)
    assert np.bincount(y_te).tolist() == [12, 6, 2] and np.bincount(y_tr).tolist() == [48, 24, 8]
    np.testing.assert_array_equal(y[x_te], y_te)
    assert sorted(np.concatenate([x_tr, x_te]).tolist()) == list(range(100))
    assert not np.array_equal(y_te, np.sort(y_te))  # not grouped by class


def test_stratify_remainders_sum_to_test_size():
    y = np.repeat([0, 1, 2], [7, 7, 7])
    _, y_te = train_test_split(y, test_size=10, seed=0, stratify=y)
    assert len(y_te) == 10 and sorted(np.bincount(y_te).tolist()) == [3, 3, 4]


def test_stratify_accepts_one_hot_rows():
    y = one_hot(np.repeat([0, 1], [80, 20]))
    _, y_te = train_test_split(y, test_size=0.25, seed=0, stratify=y)
    assert y_te.sum(axis=0).tolist() == [20, 5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(test_size=0), "test_size"),
        (dict(test_size=1.0), "test_size"),
        (dict(test_size=10), "test_size"),
        (dict(test_size=True), "test_size"),
        (dict(test_size="0.2"), "test_size"),
        (dict(stratify=[0, 1] * 5, shuffle=False), "shuffle=False"),
        (dict(stratify=[0] * 9 + [1]), "at least 2 members.*class 1 has 1"),
        (dict(stratify=[0, 1]), "one label per row"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, message):
    with pytest.raises(NnxpError, match=message):
        train_test_split(np.arange(10), **kwargs)


def test_split_rejects_bad_arrays():
    with pytest.raises(NnxpError, match="at least one array"):
        train_test_split()
    with pytest.raises(NnxpError, match=r"lengths: \[10, 9\]"):
        train_test_split(np.arange(10), np.arange(9))
    with pytest.raises(NnxpError, match="at least one dimension"):
        train_test_split(np.float32(1))


# --- one_hot ----------------------------------------------------------------------


def test_one_hot_values_shape_and_dtype():
    out = one_hot([2, 0, 1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    grid = one_hot(np.array([[0, 3], [1, 1]], dtype=np.uint8), num_classes=5, dtype=np.int64)
    assert grid.shape == (2, 2, 5) and grid.dtype == np.int64
    np.testing.assert_array_equal(grid.argmax(-1), [[0, 3], [1, 1]])
    assert one_hot(np.array([], dtype=np.int64), num_classes=4).shape == (0, 4)


@pytest.mark.parametrize(
    "labels, num_classes, error, message",
    [
        ([0.0, 1.0], None, NnxpTypeError, "dtype=float64"),
        ([0, -1], None, NnxpError, "min=-1"),
        ([0, 3], 3, NnxpError, r"\[0, 2\].*max=3"),
        ([0], 0, NnxpError, "num_classes=0"),
        (np.array([], dtype=int), None, NnxpError, "empty"),
    ],
)
def test_one_hot_rejects_bad_labels(labels, num_classes, error, message):
    with pytest.raises(error, match=message):
        one_hot(labels, num_classes)


# --- standardize ------------------------------------------------------------------


def test_standardize_gives_zero_mean_unit_std():
    x = np.random.default_rng(0).normal(5.0, 3.0, size=(1000, 4))
    z, mean, std = standardize(x)
    assert z.dtype == np.float64 and mean.shape == std.shape == (4,)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-12)
    np.testing.assert_allclose(z * std + mean, x, atol=1e-12)


def test_standardize_constant_columns_become_zeros_not_nan():
    x = np.column_stack([np.arange(5.0), np.full(5, 0.1), np.zeros(5), np.full(5, 1e6)]).astype(np.float32)
    z, mean, std = standardize(x)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    np.testing.assert_array_equal(z[:, 1:], 0)
    np.testing.assert_array_equal(std[1:], 1)


def test_standardize_applies_training_statistics():
    train, test = np.array([[0.0, 10.0], [2.0, 30.0]]), np.array([[4.0, 0.0]])
    _, mean, std = standardize(train)
    z, mean2, std2 = standardize(test, mean, std)
    np.testing.assert_array_equal(z, [[3.0, -2.0]])
    np.testing.assert_array_equal(mean2, mean)
    np.testing.assert_array_equal(std2, std)


def test_standardize_integers_become_float32():
    z, mean, _ = standardize(np.array([[0, 4], [2, 4]], dtype=np.uint8))
    assert z.dtype == mean.dtype == np.float32
    np.testing.assert_array_equal(z, [[-1, 0], [1, 0]])


@pytest.mark.parametrize(
    "x, mean, std, message",
    [
        (np.ones((3, 2)), np.zeros(2), None, "both `mean` and `std`"),
        (np.ones((3, 2)), np.zeros(2), np.array([1.0, 0.0]), "positive"),
        (np.ones((3, 2)), np.zeros(3), np.ones(2), r"`mean` must broadcast.*\(3,\)"),
        (np.array(["a", "b"]), None, None, "dtype=<U1"),
        (np.float64(1.0), None, None, "scalar"),
        (np.ones((0, 2)), None, None, "at least one row"),
    ],
)
def test_standardize_rejects_bad_input(x, mean, std, message):
    with pytest.raises(NnxpError, match=message):
        standardize(x, mean, std)


# --- the package as a whole -------------------------------------------------------


def test_datasets_never_import_device_code():
    """datasets hand back host arrays; only nnxp.errors may be imported from nnxp."""
    for source in Path(nnxp.datasets.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                assert not name.startswith("cupy"), source
                assert not name.startswith("nnxp.") or name.startswith(("nnxp.datasets", "nnxp.errors")), source
