"""Checks on user data before it reaches the numerics.

Each check raises an :class:`~nnxp.errors.NnxpError` naming the argument, the
rule and what was received, before anything in the model is touched.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from .backend import is_cupy_array, to_numpy, xp_of
from .errors import NnxpError, NnxpTypeError


def _describe(a: Any) -> str:
    return f"an array of shape {tuple(a.shape)} and dtype {a.dtype}"


def as_array(x: Any, name: str) -> Any:
    """`x` as a NumPy or CuPy array with a numeric dtype (lists are converted)."""
    if x is None:
        raise NnxpTypeError(f"`{name}` must be an array. Received: {name}=None")
    if isinstance(x, np.ma.MaskedArray):
        # nnxp computes on the underlying data, masked entries included (what np.asarray gives): a NaN under
        # the mask would reach the numerics unseen by a masked isfinite, so it is refused here
        data = np.asarray(x.data)
        if data.dtype.kind == "f" and np.ma.getmaskarray(x).any() and not np.isfinite(data).all():
            bad = int((~np.isfinite(data)).sum())
            raise NnxpError(f"`{name}` is a masked array with NaN or infinite values under its mask; nnxp uses "
                            f"the underlying data, masked entries included. Fill them first, e.g. {name}.filled(0). "
                            f"Received: {_describe(data)} with {bad} NaN or infinite values")
        x = data
    if not (isinstance(x, np.ndarray) or is_cupy_array(x)):
        try:
            x = np.asarray(x)
        except (ValueError, TypeError) as exc:
            raise NnxpTypeError(f"`{name}` must be a numeric array. Received: {type(x).__name__} ({exc})") from None
    if x.dtype.kind not in "biuf":
        raise NnxpTypeError(f"`{name}` must hold numbers (bool, int or float). Received: {_describe(x)}")
    return x


def check_features(x: Any, name: str, n_features: int | None, dtype: Any = None) -> Any:
    """A 2-D array (N, n_features), non-empty and finite (also once cast to `dtype`, the model's)."""
    x = as_array(x, name)
    if x.ndim != 2:
        raise NnxpError(f"`{name}` must be 2-D (samples, features). Received: {_describe(x)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise NnxpError(f"`{name}` must not be empty. Received: {_describe(x)}")
    if n_features is not None and x.shape[1] != n_features:
        raise NnxpError(
            f"`{name}` must have {n_features} features (the model's input size). Received: {_describe(x)}"
        )
    check_finite(x, name, dtype)
    return x


def _sum_is_finite(a: Any) -> bool:
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is an answer here, not a warning
        return bool(xp_of(a).isfinite(a.sum()))


def check_finite(a: Any, name: str, dtype: Any = None) -> None:
    """No NaN or inf in `a`, nor once it is cast to `dtype` (1e39 is finite in float64, inf in float32)."""
    xp = xp_of(a)
    # a sum is finite only where every term is: one read pass and no (N, d) boolean temporary (47 MB for
    # Fashion-MNIST, which showed in fit's peak memory); only a sum that overflowed is looked at closely
    if a.dtype.kind == "f" and not _sum_is_finite(a) and not bool(xp.isfinite(a).all()):
        bad = int((~xp.isfinite(a)).sum())
        raise NnxpError(f"`{name}` must be finite. Received: {_describe(a)} with {bad} NaN or infinite values")
    target = None if dtype is None else np.dtype(dtype)
    if target is None or target.kind != "f" or a.dtype.kind != "f" or a.size == 0:
        return
    if np.finfo(a.dtype).max <= np.finfo(target).max:
        return
    # rounding is monotonic: if the extremes stay finite once cast, every value does (two reductions, no copy)
    lo, hi = (float(v) for v in to_numpy(xp.stack([a.min(), a.max()]).astype("float64")))
    with np.errstate(over="ignore"):
        fits = math.isfinite(target.type(lo)) and math.isfinite(target.type(hi))
    if not fits:
        raise NnxpError(f"`{name}` must be finite in {target} (the model's dtype). Received: values from {lo:.3g} "
                        f"to {hi:.3g}; {target} holds magnitudes up to {float(np.finfo(target).max):.3g}")


def check_same_length(x: Any, y: Any, xname: str = "x", yname: str = "y") -> None:
    if x.shape[0] != y.shape[0]:
        raise NnxpError(
            f"`{xname}` and `{yname}` must have the same number of samples. "
            f"Received: {xname} has {x.shape[0]}, {yname} has {y.shape[0]}"
        )


def check_targets(y: Any, name: str, task: str, sparse: bool, n_outputs: int, dtype: Any = None) -> Any:
    """Targets shaped for the loss: labels (N,) for sparse, (N, n_outputs) otherwise."""
    y = as_array(y, name)
    if y.ndim == 0 or y.shape[0] == 0:
        raise NnxpError(f"`{name}` must be a non-empty array of targets. Received: {_describe(y)}")
    check_finite(y, name)
    if sparse:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise NnxpError(
                f"`{name}` must be integer class labels of shape (N,) for a sparse loss. Received: {_describe(y)}; "
                "use loss='categorical_crossentropy' for one-hot targets"
            )
        if y.dtype.kind == "f":
            if not bool((y == xp_of(y).round(y)).all()):
                raise NnxpError(f"`{name}` must hold whole-number class labels for a sparse loss. Received: float "
                                "labels with fractional parts")
        lo, hi = (int(v) for v in to_numpy(xp_of(y).stack([y.min(), y.max()])))
        if lo < 0 or hi >= n_outputs:
            raise NnxpError(
                f"`{name}` labels must lie in [0, {n_outputs - 1}] (the output layer has {n_outputs} units). "
                f"Received: labels from {lo} to {hi}"
            )
        return y.astype(xp_of(y).int64, copy=False)
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2:
        raise NnxpError(f"`{name}` must be 1-D or 2-D. Received: {_describe(y)}")
    if y.shape[1] != n_outputs:
        hint = ""
        if task == "categorical" and y.shape[1] == 1:
            hint = "; for integer labels use loss='sparse_categorical_crossentropy' or nnxp.datasets.one_hot"
        raise NnxpError(
            f"`{name}` must have {n_outputs} columns to match the output layer's {n_outputs} units. "
            f"Received: {_describe(y)}{hint}"
        )
    check_finite(y, name, dtype)
    if task == "categorical":  # one-hot rows or class probabilities: a negative target makes the loss unbounded
        lo = float(to_numpy(y.min()))
        if lo < 0:
            raise NnxpError(f"`{name}` must be non-negative for categorical cross-entropy (one-hot rows or class "
                            f"probabilities). Received: values down to {lo}")
    if task == "binary":
        lo, hi = (float(v) for v in to_numpy(xp_of(y).stack([y.min(), y.max()]).astype("float64")))
        if lo < 0.0 or hi > 1.0:
            raise NnxpError(f"`{name}` must lie in [0, 1] for binary cross-entropy. Received: values from {lo} to {hi}")
    return y


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise NnxpError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return int(value)


def non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise NnxpError(f"`{name}` must be an integer >= 0. Received: {name}={value!r}")
    return int(value)


def _bounds(rule: str) -> tuple[float, float, bool, bool]:
    """(low, high, low_open, high_open) of a rule written as the message shows it: "> 0", "[0, 1)"."""
    if rule.startswith(">="):
        return float(rule[2:]), math.inf, False, True
    if rule.startswith(">"):
        return float(rule[1:]), math.inf, True, True
    low, high = rule[1:-1].split(",")
    return float(low), float(high), rule[0] == "(", rule[-1] == ")"


def number(name: str, value: Any, rule: str) -> float:
    """`value` (any real number type, never a bool) as a finite float that meets `rule`.

    `rule` is written as the error message shows it: ``"> 0"``, ``">= 0"`` or an interval such as ``"[0, 1)"``
    or ``"(0.0, inf)"``. The message says "finite" unless the interval's own bounds already imply it.
    """
    low, high, low_open, high_open = _bounds(rule)
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    try:
        x = float(value) if ok else math.nan
    except OverflowError:  # an int beyond float64's range
        x = math.nan
    ok = ok and math.isfinite(x) and (x > low if low_open else x >= low) and (x < high if high_open else x <= high)
    if not ok:
        what = "a number" if math.isfinite(low) and math.isfinite(high) else "a finite number"
        where = rule if rule.startswith(">") else f"in {rule}"
        raise NnxpError(f"`{name}` must be {what} {where}. Received: {name}={value!r}")
    return x


def fraction(name: str, value: Any) -> float:
    return number(name, value, "[0, 1)")


def check_sample_weight(w: Any, name: str, n_samples: int, dtype: Any = None) -> Any:
    """Per-row weights (N,) (or (N, 1)): finite, non-negative, one per sample."""
    w = as_array(w, name)
    if w.ndim == 2 and w.shape[1] == 1:
        w = w[:, 0]
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise NnxpError(f"`{name}` must hold one weight per sample, shape ({n_samples},). Received: {_describe(w)}")
    check_finite(w, name, dtype)
    if bool((w < 0).any()):
        lo = float(to_numpy(w.min()))
        raise NnxpError(f"`{name}` must be non-negative. Received: weights down to {lo}")
    return w


def class_weight_to_sample_weight(class_weight: Any, y: Any, sparse: bool, task: str, n_outputs: int,
                                  dtype: Any = np.float64) -> Any:
    """Per-row weights (N,) from a dict {class: weight}, as Keras maps them.

    The class of a row is its label (sparse targets), its one-hot argmax (several columns) or its rounded
    0/1 value (one column); classes missing from the dict weigh 1.
    """
    if not isinstance(class_weight, dict):
        raise NnxpTypeError(f"`class_weight` must be a dict {{class index: weight}}. "
                            f"Received: class_weight={class_weight!r}")
    if task == "regression":
        raise NnxpError("`class_weight` needs a classification loss (its classes come from the targets); "
                        "use `sample_weight` for a regression loss")
    n_classes = 2 if (not sparse and n_outputs == 1) else n_outputs
    table = np.ones(n_classes, dtype=np.float64)
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= key < n_classes:
            raise NnxpError(f"`class_weight` keys must be class indices in [0, {n_classes - 1}]. Received key {key!r}")
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
        if not ok:
            raise NnxpError(f"`class_weight` values must be finite numbers >= 0. Received: class_weight[{key!r}]="
                            f"{value!r}")
        with np.errstate(over="ignore"):
            if not math.isfinite(np.dtype(dtype).type(value)):
                raise NnxpError(f"`class_weight` values must be finite in {np.dtype(dtype)} (the model's dtype). "
                                f"Received: class_weight[{key!r}]={value!r}")
        table[int(key)] = float(value)
    xp = xp_of(y)
    if sparse:
        classes = y
    elif y.shape[1] == 1:
        classes = xp.rint(y[:, 0]).astype(xp.int64)
    else:
        classes = y.argmax(axis=1)
    return xp.asarray(table)[classes]


def verbosity(value: Any) -> int:
    """Keras's `verbose`: 0 (silent), 1, 2 or "auto" (1); True/False count as 1/0."""
    if isinstance(value, str) and value == "auto":
        return 1
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if not isinstance(value, (int, np.integer)) or value not in (0, 1, 2):
        raise NnxpError(f"`verbose` must be 0, 1, 2 or 'auto'. Received: verbose={value!r}")
    return int(value)
