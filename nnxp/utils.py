"""Keras's ``keras.utils`` helpers that tutorials call, under the same names.

``to_categorical`` is :func:`nnxp.datasets.one_hot` with Keras's conventions on top: float labels holding
whole numbers are accepted, and a trailing axis of size 1 (labels shaped (N, 1)) is dropped first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .datasets import one_hot
from .errors import NnxpError, NnxpTypeError

__all__ = ["to_categorical"]


def to_categorical(y: Any, num_classes: int | None = None, dtype: Any = "float32") -> np.ndarray:
    """Integer class labels (any shape) -> one-hot rows, as ``keras.utils.to_categorical``.

    >>> to_categorical([0, 2], num_classes=3)
    array([[1., 0., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    labels = np.asarray(y)
    if labels.dtype.kind not in "biuf":
        raise NnxpTypeError(f"`y` must hold integer class labels. Received: dtype={labels.dtype}")
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or not (labels == np.round(labels)).all():
            raise NnxpError("`y` must hold whole-number class labels. Received: float labels with fractional parts "
                            "or NaN")
        labels = labels.astype(np.int64)
    elif labels.dtype.kind == "b":
        labels = labels.astype(np.int64)
    if labels.ndim > 1 and labels.shape[-1] == 1:  # (N, 1) -> (N,), as Keras does
        labels = labels.reshape(labels.shape[:-1])
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise NnxpTypeError(f"`dtype` must be a NumPy dtype such as 'float32'. Received: dtype={dtype!r}") from None
    return one_hot(labels, num_classes, dtype)
