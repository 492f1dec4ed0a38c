"""Small seeded toy problems for tutorials and tests.

Each maker draws from ``np.random.default_rng(seed)`` (an int, a Generator or
None), is vectorised, shuffles its rows, and returns float32 inputs with int64
class labels (or float32 targets for the regression set).
"""

from __future__ import annotations

import numbers

import numpy as np

from nnxp.errors import NnxpError, NnxpTypeError

Seed = int | np.random.Generator | None


def make_circles(
    n_samples: int = 100, noise: float = 0.0, factor: float = 0.8, seed: Seed = None
) -> tuple[np.ndarray, np.ndarray]:
    """Two concentric circles: outer radius 1 (label 0), inner radius `factor` (label 1).

    Returns X float32 (n_samples, 2) and y int64 (n_samples,); `noise` is the std of
    Gaussian noise added to each coordinate.
    """
    _check_count("n_samples", n_samples, 1)
    _check_noise(noise)
    if not isinstance(factor, numbers.Real) or not 0 < factor < 1:
        raise NnxpError(f"`factor` must be a number in (0, 1). Received: factor={factor!r}")
    rng = np.random.default_rng(seed)
    n_out = n_samples // 2
    y = (np.arange(n_samples) >= n_out).astype(np.int64)
    # Points evenly spaced around each circle; the inner circle has its own spacing.
    position = np.where(y == 0, np.arange(n_samples), np.arange(n_samples) - n_out)
    angle = 2 * np.pi * position / np.where(y == 0, max(n_out, 1), n_samples - n_out)
    radius = np.where(y == 0, 1.0, factor)
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _finish(x, y, noise, rng)


def make_moons(n_samples: int = 100, noise: float = 0.0, seed: Seed = None) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaving half circles (labels 0 and 1), X float32 (n_samples, 2), y int64."""
    _check_count("n_samples", n_samples, 1)
    _check_noise(noise)
    rng = np.random.default_rng(seed)
    n_out = n_samples // 2
    y = (np.arange(n_samples) >= n_out).astype(np.int64)
    position = np.where(y == 0, np.arange(n_samples), np.arange(n_samples) - n_out)
    angle = np.pi * position / np.maximum(np.where(y == 0, n_out, n_samples - n_out) - 1, 1)
    # Upper moon centred at (0, 0); lower moon flipped and shifted to (1, 0.5).
    x = np.where(
        (y == 0)[:, None],
        np.stack([np.cos(angle), np.sin(angle)], axis=1),
        np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], axis=1),
    )
    return _finish(x, y, noise, rng)


def make_spirals(
    n_samples: int = 100, n_classes: int = 2, noise: float = 0.0, seed: Seed = None
) -> tuple[np.ndarray, np.ndarray]:
    """`n_classes` interleaved spiral arms around the origin (radius 0..1, one and a half turns).

    Classes are balanced to within one sample. Returns X float32 (n_samples, 2), y int64.
    """
    _check_count("n_samples", n_samples, 1)
    _check_count("n_classes", n_classes, 2)
    _check_noise(noise)
    rng = np.random.default_rng(seed)
    y = np.arange(n_samples) % n_classes
    per_class = -(-n_samples // n_classes)  # ceil
    radius = (np.arange(n_samples) // n_classes + 1) / per_class  # (0, 1] along each arm
    angle = 2 * np.pi * (y / n_classes + 1.5 * radius)  # arms start evenly spaced, then wind
    x = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _finish(x, y.astype(np.int64), noise, rng)


def make_sine(n_samples: int = 256, seed: Seed = None) -> tuple[np.ndarray, np.ndarray]:
    """Regression toy: x uniform in [0, 1) (n_samples, 1); y = [sin 2πx, cos 2πx] (n_samples, 2), float32."""
    _check_count("n_samples", n_samples, 1)
    x = np.random.default_rng(seed).uniform(0.0, 1.0, size=(n_samples, 1))
    y = np.concatenate([np.sin(2 * np.pi * x), np.cos(2 * np.pi * x)], axis=1)
    return x.astype(np.float32), y.astype(np.float32)


def _finish(x: np.ndarray, y: np.ndarray, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Add Gaussian noise, shuffle rows, cast: the common tail of every classifier maker."""
    if noise > 0:
        x = x + rng.normal(scale=noise, size=x.shape)
    order = rng.permutation(len(y))
    return x[order].astype(np.float32), y[order]


def _check_count(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise NnxpTypeError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    if value < minimum:
        raise NnxpError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def _check_noise(noise: object) -> None:
    if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not 0 <= noise < float("inf"):
        raise NnxpError(f"`noise` must be a finite number >= 0. Received: noise={noise!r}")
