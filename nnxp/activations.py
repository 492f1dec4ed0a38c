"""Activation names: the registry users pick from by string.

The numerics live in :mod:`nnxp.ops.activation`; this module only resolves a
user's identifier (``"relu"``, ``None``, ``"Sigmoid"``) to a canonical name and
explains unknown ones.
"""

from __future__ import annotations

from .errors import NnxpError, NnxpTypeError, did_you_mean
from .ops.activation import ACTIVATION_OPS

_ALIASES = {"identity": "linear", "none": "linear", "leakyrelu": "leaky_relu", "swish": "silu"}


def names() -> list[str]:
    """All activation names nnxp knows."""
    return sorted(ACTIVATION_OPS)


def get(identifier: str | None, argument: str = "activation") -> str:
    """Canonical activation name for `identifier` (None means linear)."""
    if identifier is None:
        return "linear"
    if not isinstance(identifier, str):
        raise NnxpTypeError(
            f"`{argument}` must be an activation name such as 'relu'. Received: {argument}={identifier!r} "
            f"of type {type(identifier).__name__}"
        )
    key = identifier.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ACTIVATION_OPS:
        raise NnxpError(
            f"`{argument}` must be one of {names()}. Received: {argument}={identifier!r}."
            + did_you_mean(key, names())
        )
    return key
