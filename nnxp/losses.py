"""Loss names and how each pairs with the output activation.

A :class:`Loss` knows its plain function (on the network's outputs), the
activation it fuses with (softmax or sigmoid) and the fused function that takes
logits instead, whether its targets are integer labels, and which accuracy
applies. The numerics live in :mod:`nnxp.ops.loss`; :mod:`nnxp.head` pairs a
loss with the model's last layer and runs the fused function when they match.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import NnxpError, NnxpTypeError, did_you_mean
from .ops import loss as L

LossFn = Callable[[Any, Any, Any], tuple[Any, Any]]


@dataclass(frozen=True)
class Loss:
    """One loss: plain function, optional fused (activation, function) and target kind."""

    name: str
    fn: LossFn
    fused_activation: str | None = None
    fused_fn: LossFn | None = None
    sparse: bool = False  # targets are integer class labels
    task: str = "regression"  # "categorical", "binary" or "regression" (picks the accuracy)


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("mean_squared_error", L.mean_squared_error),
        Loss("mean_absolute_error", L.mean_absolute_error),
        Loss("binary_crossentropy", L.binary_cross_entropy, "sigmoid", L.sigmoid_binary_cross_entropy, task="binary"),
        Loss(
            "categorical_crossentropy",
            L.categorical_cross_entropy,
            "softmax",
            L.softmax_cross_entropy,
            task="categorical",
        ),
        Loss(
            "sparse_categorical_crossentropy",
            L.sparse_categorical_cross_entropy,
            "softmax",
            L.sparse_softmax_cross_entropy,
            sparse=True,
            task="categorical",
        ),
    )
}

_ALIASES = {
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "bce": "binary_crossentropy",
    "cce": "categorical_crossentropy",
    "categorical_cross_entropy": "categorical_crossentropy",
    "binary_cross_entropy": "binary_crossentropy",
    "sparse_categorical_cross_entropy": "sparse_categorical_crossentropy",
}


def get(identifier: str | Loss) -> Loss:
    """The :class:`Loss` for a name such as ``"mse"`` or ``"categorical_crossentropy"``."""
    if isinstance(identifier, Loss):
        return identifier
    if not isinstance(identifier, str):
        raise NnxpTypeError(f"`loss` must be a loss name such as 'mse'. Received: loss={identifier!r}")
    key = identifier.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LOSSES:
        choices = sorted(LOSSES) + sorted(_ALIASES)
        raise NnxpError(
            f"`loss` must be one of {sorted(LOSSES)} (or an alias: mse, mae, bce, cce). Received: loss={identifier!r}."
            + did_you_mean(key, choices)
        )
    return LOSSES[key]
