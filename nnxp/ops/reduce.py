"""Whole-array reductions shared by gradient clipping, the regularizers and the scikit-learn adapter."""

from __future__ import annotations

from typing import Any

import numpy as np

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
