"""Weight penalties added to the loss: L1, L2 and both (L1L2).

A regularizer adds ``penalty(w)`` to the loss and ``d penalty / dw`` to the
weight gradient, in place, inside the layer's backward.
"""

from __future__ import annotations

from typing import Any

from ._validation import number
from .backend import xp_of
from .errors import NnxpError, NnxpTypeError, did_you_mean
from .ops.reduce import sum_of_squares


class L1L2:
    """``l1 * sum(|w|) + l2 * sum(w^2)``."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = number("l1", l1, ">= 0")
        self.l2 = number("l2", l2, ">= 0")

    def penalty(self, w: Any) -> Any:
        xp = xp_of(w)
        flat = w.reshape(-1)
        total = xp.zeros((), dtype=w.dtype)
        if self.l1:
            total = total + self.l1 * xp.abs(flat).sum()
        if self.l2:
            total = total + self.l2 * sum_of_squares(flat)
        return total

    def add_gradient(self, w: Any, dw: Any) -> None:
        xp = xp_of(w)
        if self.l1:
            dw += self.l1 * xp.sign(w)
        if self.l2:
            dw += (2.0 * self.l2) * w

    def get_config(self) -> dict:
        return {"name": "l1_l2", "l1": self.l1, "l2": self.l2}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L1(L1L2):
    """``l1 * sum(|w|)``."""

    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)


class L2(L1L2):
    """``l2 * sum(w^2)``."""

    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)


# Keras's lowercase spellings (keras.regularizers.l2(0.01) in many tutorials) are the classes themselves
l1, l2, l1_l2 = L1, L2, L1L2

_NAMES = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}


def get(identifier: Any, argument: str = "kernel_regularizer") -> L1L2 | None:
    """A regularizer from None, an instance, a name ('l2') or a config dict."""
    if identifier is None or isinstance(identifier, L1L2):
        return identifier
    if isinstance(identifier, str):
        key = identifier.strip().lower()
        if key not in _NAMES:
            raise NnxpError(
                f"`{argument}` must be one of {sorted(_NAMES)} or a regularizer. Received: {argument}={identifier!r}."
                + did_you_mean(key, sorted(_NAMES))
            )
        return _NAMES[key]()
    if isinstance(identifier, dict):
        unknown = set(identifier) - {"name", "l1", "l2"}
        if unknown:
            raise NnxpError(
                f"`{argument}` config may hold only 'name', 'l1' and 'l2'. Received keys: {sorted(unknown)}"
            )
        name = identifier.get("name", "l1_l2")
        if not isinstance(name, str) or name.strip().lower() not in _NAMES:
            raise NnxpError(f"`{argument}` config 'name' must be one of {sorted(_NAMES)}. Received: name={name!r}")
        return L1L2(l1=identifier.get("l1", 0.0), l2=identifier.get("l2", 0.0))
    raise NnxpTypeError(
        f"`{argument}` must be None, a name such as 'l2', or an L1/L2/L1L2 instance. "
        f"Received: {argument}={identifier!r}"
    )
