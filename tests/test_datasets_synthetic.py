"""Toy data makers: shapes, dtypes, exact geometry without noise, balance and seeding."""

from __future__ import annotations

import numpy as np
import pytest

from nnxp.datasets import make_circles, make_moons, make_sine, make_spirals
from nnxp.errors import NnxpError

CLASSIFIERS = [make_circles, make_moons, make_spirals]


@pytest.mark.parametrize("maker", CLASSIFIERS)
@pytest.mark.parametrize("n", [1, 2, 101])
def test_classifier_shapes_dtypes_and_balance(maker, n):
    x, y = maker(n_samples=n, noise=0.1, seed=0)
    assert x.shape == (n, 2) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    counts = np.bincount(y, minlength=2)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


@pytest.mark.parametrize("maker", [*CLASSIFIERS, make_sine])
def test_seeding_is_deterministic(maker):
    a, b = maker(n_samples=64, seed=3), maker(n_samples=64, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = maker(n_samples=64, seed=np.random.default_rng(3))  # a Generator works as a seed too
    np.testing.assert_array_equal(a[0], c[0])
    assert not np.array_equal(a[0], maker(n_samples=64, seed=4)[0])


@pytest.mark.parametrize("maker", CLASSIFIERS)
def test_rows_are_shuffled(maker):
    _, y = maker(n_samples=200, seed=0)
    assert 0 < np.abs(np.diff(y)).sum() and not np.array_equal(y, np.sort(y))


def test_circles_geometry():
    x, y = make_circles(n_samples=100, factor=0.3, seed=0)
    radius = np.linalg.norm(x, axis=1)
    np.testing.assert_allclose(radius[y == 0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(radius[y == 1], 0.3, rtol=1e-6)
    assert np.bincount(y).tolist() == [50, 50]


def test_moons_geometry():
    x, y = make_moons(n_samples=100, seed=0)
    upper, lower = x[y == 0], x[y == 1]
    np.testing.assert_allclose(np.linalg.norm(upper, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(lower - [1.0, 0.5], axis=1), 1.0, rtol=1e-6)
    assert upper[:, 1].min() >= -1e-6 and lower[:, 1].max() <= 0.5 + 1e-6


def test_spirals_geometry_and_balance():
    x, y = make_spirals(n_samples=300, n_classes=3, seed=0)
    assert np.bincount(y).tolist() == [100, 100, 100]
    radius = np.linalg.norm(x, axis=1)
    assert radius.min() > 0 and radius.max() == pytest.approx(1.0)
    # Without noise the arms are rotated copies: same radii, angles offset by 2π/3.
    for k in range(3):
        np.testing.assert_allclose(np.sort(radius[y == k]), np.sort(radius[y == 0]), rtol=1e-6)
    assert np.bincount(make_spirals(n_samples=100, n_classes=3, seed=0)[1]).tolist() == [34, 33, 33]


def test_noise_has_the_requested_scale():
    x, y = make_circles(n_samples=20000, noise=0.1, factor=0.5, seed=5)
    # Isotropic 2-D noise moves each point radially by N(0, 0.1²) to first order.
    assert np.linalg.norm(x[y == 0], axis=1).std() == pytest.approx(0.1, rel=0.05)
    assert np.linalg.norm(x[y == 0], axis=1).mean() == pytest.approx(1.0, abs=0.01)


def test_sine_values():
    x, y = make_sine(n_samples=500, seed=0)
    assert x.shape == (500, 1) and y.shape == (500, 2) and x.dtype == y.dtype == np.float32
    assert x.min() >= 0 and x.max() < 1
    np.testing.assert_allclose(y[:, 0], np.sin(2 * np.pi * x[:, 0]), atol=1e-6)
    np.testing.assert_allclose(y[:, 1], np.cos(2 * np.pi * x[:, 0]), atol=1e-6)


def test_large_inputs_are_fast_enough_to_be_vectorised():
    x, y = make_spirals(n_samples=1_000_000, n_classes=4, noise=0.05, seed=0)
    assert x.shape == (1_000_000, 2) and np.bincount(y).tolist() == [250_000] * 4


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_circles(n_samples=0), "n_samples"),
        (lambda: make_moons(n_samples=2.5), "n_samples"),
        (lambda: make_sine(n_samples=True), "n_samples"),
        (lambda: make_circles(noise=-0.1), "noise"),
        (lambda: make_moons(noise=float("nan")), "noise"),
        (lambda: make_circles(factor=1.0), "factor"),
        (lambda: make_spirals(n_classes=1), "n_classes"),
    ],
)
def test_bad_arguments_name_themselves(call, message):
    with pytest.raises(NnxpError, match=f"`{message}`.*Received: {message}="):
        call()
