"""Weight initializers: ``init(shape, rng, dtype) -> host NumPy array``.

Initial weights are always drawn on the host with a seeded NumPy generator, so
the same seed gives the same model on the CPU and on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import NnxpError, NnxpTypeError, did_you_mean

Initializer = Callable[[tuple, np.random.Generator, np.dtype], np.ndarray]


def _fans(shape: tuple) -> tuple[int, int]:
    # a kernel (n_in, n_out); a 1-D bias counts as fan_in = fan_out = its size
    if len(shape) == 1:
        return shape[0], shape[0]
    return shape[0], shape[1]


def _truncated_normal(shape: tuple, rng: np.random.Generator, std: float) -> np.ndarray:
    # redraw values beyond two standard deviations (as Keras's truncated normal does)
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2.0
    # a normal truncated at +-2 sigma has std 0.87962566; undo that shrink
    return out * (std / 0.87962566103423978)


def glorot_uniform(shape, rng, dtype):
    fan_in, fan_out = _fans(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


def glorot_normal(shape, rng, dtype):
    fan_in, fan_out = _fans(shape)
    return _truncated_normal(shape, rng, np.sqrt(2.0 / (fan_in + fan_out))).astype(dtype)


def he_uniform(shape, rng, dtype):
    limit = np.sqrt(6.0 / _fans(shape)[0])
    return rng.uniform(-limit, limit, shape).astype(dtype)


def he_normal(shape, rng, dtype):
    return _truncated_normal(shape, rng, np.sqrt(2.0 / _fans(shape)[0])).astype(dtype)


def lecun_normal(shape, rng, dtype):
    return _truncated_normal(shape, rng, np.sqrt(1.0 / _fans(shape)[0])).astype(dtype)


def random_normal(shape, rng, dtype):
    return (rng.standard_normal(shape) * 0.05).astype(dtype)


def random_uniform(shape, rng, dtype):
    return rng.uniform(-0.05, 0.05, shape).astype(dtype)


def zeros(shape, rng, dtype):
    return np.zeros(shape, dtype)


def ones(shape, rng, dtype):
    return np.ones(shape, dtype)


INITIALIZERS: dict[str, Initializer] = {
    f.__name__: f
    for f in (glorot_uniform, glorot_normal, he_uniform, he_normal, lecun_normal, random_normal, random_uniform,
              zeros, ones)
}


def get(identifier: str, argument: str = "kernel_initializer") -> str:
    """Canonical initializer name for `identifier`; a clear error when unknown."""
    if not isinstance(identifier, str):
        raise NnxpTypeError(
            f"`{argument}` must be an initializer name such as 'glorot_uniform'. Received: {argument}={identifier!r}"
        )
    key = identifier.strip().lower()
    if key not in INITIALIZERS:
        raise NnxpError(
            f"`{argument}` must be one of {sorted(INITIALIZERS)}. Received: {argument}={identifier!r}."
            + did_you_mean(key, sorted(INITIALIZERS))
        )
    return key
