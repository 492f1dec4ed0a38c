"""Whole-array reductions shared by gradient clipping, the regularizers and the scikit-learn adapter."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import xp_of
from . import _cuda
from ._cuda import Op


def sum_of_squares_ref(x: Any) -> Any:
    """``x . x`` over all of `x` as a 0-d array on its device: an elementwise square and a reduction.

    On CUDA this is also the path to take: CuPy refuses cuBLAS calls (a dot) while a CUDA graph is captured.
    """
    flat = x.reshape(-1)
    return (flat * flat).sum()


def _sum_of_squares_host(x: Any) -> Any:
    """NumPy's dot (BLAS): the fast way on the CPU."""
    if type(x) is not np.ndarray:
        return sum_of_squares_ref(x)
    flat = x.reshape(-1)
    return np.asarray(np.dot(flat, flat))


sum_of_squares = Op(sum_of_squares_ref, _sum_of_squares_host)  # no kernel of its own: CuPy runs the reference


# --- accuracy's count: one launch instead of argmax, ==, sum (issue 11's eager budget) ------------------------


def count_correct_ref(pred: Any, labels: Any, out: Any) -> Any:
    """``out`` (0-d float64) = how many rows of `pred` (B, C) have their argmax equal to their label:
    ``labels[r]`` (sparse, (B,) integers) or the argmax of ``labels[r]`` (one-hot, (B, C)). Returns `out`."""
    xp = xp_of(pred)
    true = labels if labels.ndim == 1 else labels.argmax(axis=1)
    out[...] = xp.count_nonzero(pred.argmax(axis=1) == true)
    return out


count_correct = Op(count_correct_ref)
# (per call: an eager step's labels, a new view of the epoch's labels each batch, and its place in the record)
count_correct.plan(per_call=(1, 2))


@count_correct.override
def _count_correct_cuda(pred: Any, labels: Any, out: Any) -> Any:
    """Fused :func:`count_correct_ref`: one block counts every row (argmax as CuPy's, a fixed-order sum)."""
    dtype = _cuda._dtype_of(pred)
    if dtype is None or pred.ndim != 2 or pred.size == 0:
        return NotImplemented
    dev, (rows, cols) = pred.device.id, pred.shape
    if not (_cuda._fits(pred, dtype, pred.shape, dev) and _cuda._fits(out, np.dtype(np.float64), (), dev)):
        return NotImplemented
    sparse = labels.ndim == 1
    if not (_cuda._fits(labels, np.dtype(np.int64), (rows,), dev) if sparse
            else _cuda._fits(labels, dtype, pred.shape, dev)):
        return NotImplemented
    # (the pointer the kernel does not read: a valid one of its C type)
    ints = labels if sparse else _cuda._scratch("count_correct ints", (1,), np.int64, dev)
    args = (pred, ints, pred if sparse else labels, np.int64(rows), np.int64(cols), np.int32(sparse), out)
    _cuda._launch("nnxp_count_correct", dtype, dev, (1,), (256,), args)
    return out


count_correct.example(lambda rng, dtype: {
    "sparse": (rng.normal(size=(37, 10)).astype(dtype), rng.integers(0, 10, 37).astype(np.int64),
               np.zeros((), np.float64)),
    "one-hot": (rng.normal(size=(37, 10)).astype(dtype), np.eye(10, dtype=dtype)[rng.integers(0, 10, 37)],
                np.zeros((), np.float64)),
})
