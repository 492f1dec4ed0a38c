"""Everyday data chores: train/test splits, one-hot labels, standardisation.

All work on host NumPy arrays, are vectorised, and take an explicit `seed`
where randomness is involved, so experiments repeat exactly.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from nnxp.errors import NnxpError, NnxpTypeError


def train_test_split(
    *arrays: ArrayLike,
    test_size: float | int = 0.2,
    seed: int | np.random.Generator | None = None,
    shuffle: bool = True,
    stratify: ArrayLike | None = None,
) -> list[np.ndarray]:
    """Split each array along its first axis into ``[a_train, a_test, b_train, b_test, ...]``.

    `test_size` is a fraction in (0, 1) (rounded up, as scikit-learn does) or a row
    count. With `stratify` (one label per row) every class keeps its proportion in
    both parts. Without shuffling the last rows become the test set.
    """
    if not arrays:
        raise NnxpError("train_test_split needs at least one array. Received: none")
    arrays_ = [np.asarray(a) for a in arrays]
    if any(a.ndim == 0 for a in arrays_):
        raise NnxpError(f"Every array must have at least one dimension. Received shapes: {[a.shape for a in arrays_]}")
    n = len(arrays_[0])
    if any(len(a) != n for a in arrays_):
        raise NnxpError(f"All arrays must have the same number of rows. Received lengths: {[len(a) for a in arrays_]}")
    n_test = _test_count(test_size, n)
    rng = np.random.default_rng(seed)

    if stratify is None:
        order = rng.permutation(n) if shuffle else np.arange(n)
        train_idx, test_idx = order[: n - n_test], order[n - n_test :]
    else:
        if not shuffle:
            raise NnxpError("`stratify` needs shuffle=True. Received: shuffle=False")
        labels = np.asarray(stratify)
        if labels.shape[:1] != (n,):
            raise NnxpError(f"`stratify` must hold one label per row ({n}). Received: shape={labels.shape}")
        axis = 0 if labels.ndim > 1 else None  # rows of one-hot labels count as classes too
        classes, label_idx, counts = np.unique(labels, axis=axis, return_inverse=True, return_counts=True)
        label_idx = label_idx.reshape(-1)
        if counts.min() < 2:
            smallest = classes[counts.argmin()].tolist()
            raise NnxpError(
                f"Each class in `stratify` needs at least 2 members. Received: class {smallest!r} has {counts.min()}"
            )
        per_class = _apportion(counts, n_test)
        # Random order within each class (stable sort of a random permutation), then
        # take the first per_class[c] rows of class c for the test set.
        order = rng.permutation(n)
        order = order[np.argsort(label_idx[order], kind="stable")]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(n) - starts[label_idx[order]]
        is_test = rank < per_class[label_idx[order]]
        # Shuffle again so neither part comes out grouped by class.
        train_idx, test_idx = rng.permutation(order[~is_test]), rng.permutation(order[is_test])

    return [part for a in arrays_ for part in (a[train_idx], a[test_idx])]


def one_hot(labels: ArrayLike, num_classes: int | None = None, dtype: DTypeLike = np.float32) -> np.ndarray:
    """Return ``labels`` (integers, any shape) as one-hot rows of shape ``labels.shape + (num_classes,)``."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise NnxpTypeError(f"`labels` must be integers. Received: dtype={labels.dtype}")
    if num_classes is None:
        if labels.size == 0:
            raise NnxpError("`num_classes` is needed when `labels` is empty. Received: num_classes=None")
        num_classes = int(labels.max()) + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise NnxpError(f"`num_classes` must be a positive integer. Received: num_classes={num_classes!r}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise NnxpError(
            f"`labels` must lie in [0, {num_classes - 1}] for num_classes={num_classes}. "
            f"Received: min={labels.min()}, max={labels.max()}"
        )
    # Zeros with a one per label: memory for the answer only (np.eye(num_classes)[labels] cost num_classes**2).
    shape = labels.shape + (int(num_classes),)
    try:
        out = np.zeros(shape, dtype=dtype)
    except (MemoryError, ValueError):
        size = float(np.prod(shape, dtype=object) * np.dtype(dtype).itemsize)
        unit = next(u for u, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("B", 1)) if size >= scale)
        amount = size / {"TiB": 2**40, "GiB": 2**30, "MiB": 2**20, "B": 1}[unit]
        raise NnxpError(f"`num_classes`={num_classes} makes a one-hot array of shape {shape} ({amount:.1f} {unit}), "
                        "more memory than can be allocated") from None
    np.put_along_axis(out, labels[..., None].astype(np.intp), 1, axis=-1)
    return out


def standardize(
    x: ArrayLike, mean: ArrayLike | None = None, std: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``((x - mean) / std, mean, std)`` with statistics per column (over axis 0).

    Pass the `mean` and `std` returned for the training set to standardise test data
    the same way. Constant columns get std 1, so they come out as zeros, not NaN.
    Floating inputs keep their dtype; integer inputs become float32.
    """
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise NnxpTypeError(f"`x` must be a real numeric array. Received: dtype={x.dtype}")
    if x.ndim == 0:
        raise NnxpError("`x` must have at least one dimension (rows). Received: a scalar")
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)
    if (mean is None) != (std is None):
        raise NnxpError("Pass both `mean` and `std`, or neither. Received: only one of them")
    if mean is None:
        if len(x) == 0:
            raise NnxpError(f"`x` needs at least one row to compute statistics. Received: shape={x.shape}")
        # Statistics in float64 so float32 data with a large offset keeps its precision.
        mean64 = x.mean(axis=0, dtype=np.float64)
        std64 = x.std(axis=0, dtype=np.float64)
        # A constant column can show a rounding-level std; treat it as exactly constant.
        std64 = np.where(std64 <= 16 * np.finfo(np.float64).eps * np.abs(mean64), 1.0, std64)
        mean, std = mean64.astype(dtype), std64.astype(dtype)
    else:
        mean, std = np.asarray(mean, dtype=dtype), np.asarray(std, dtype=dtype)
        row = x.shape[1:]
        for name, value in (("mean", mean), ("std", std)):
            try:
                fits = np.broadcast_shapes(value.shape, row) == row
            except ValueError:
                fits = False
            if not fits:
                raise NnxpError(f"`{name}` must broadcast to one row of `x` {row}. Received: shape={value.shape}")
        if not np.all(std > 0):
            raise NnxpError(f"`std` must be positive everywhere. Received: min={std.min()}")
    return ((x - mean) / std).astype(dtype, copy=False), mean, std


def _test_count(test_size: object, n: int) -> int:
    """Rows for the test set; both parts must end up non-empty."""
    if isinstance(test_size, numbers.Integral) and not isinstance(test_size, bool):
        n_test = int(test_size)
    elif isinstance(test_size, numbers.Real) and not isinstance(test_size, bool) and 0 < test_size < 1:
        # The small slack keeps 0.7 * 10 = 7.000000000000001 from rounding up to 8.
        n_test = math.ceil(test_size * n - 1e-9)
    else:
        raise NnxpError(f"`test_size` must be a fraction in (0, 1) or a row count. Received: test_size={test_size!r}")
    if not 1 <= n_test <= n - 1:
        raise NnxpError(
            f"`test_size` must leave at least one row in each part of {n} rows. "
            f"Received: test_size={test_size!r} ({n_test} test rows)"
        )
    return n_test


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` across classes in proportion to `counts` (largest-remainder method)."""
    quota = counts * total / counts.sum()
    share = np.floor(quota).astype(np.int64)
    leftover = total - share.sum()
    share[np.argsort(share - quota, kind="stable")[:leftover]] += 1  # biggest fractional parts first
    return share
