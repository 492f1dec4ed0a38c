"""Weight initializers: limits and spreads on large shapes, truncation, determinism, dtype, names."""

import numpy as np
import pytest

from nnxp import initializers
from nnxp.errors import NnxpError, NnxpTypeError
from nnxp.initializers import INITIALIZERS

SHAPE = (400, 600)  # fan_in 400, fan_out 600: 240k draws, so sample std is within ~0.3% of the truth
TRUNC_SHRINK = 0.87962566103423978  # std of a standard normal truncated at +-2


def _draw(name, shape=SHAPE, seed=0, dtype=np.float64):
    return INITIALIZERS[name](shape, np.random.default_rng(seed), np.dtype(dtype))


@pytest.mark.parametrize(
    "name, limit",
    [
        ("glorot_uniform", np.sqrt(6.0 / (400 + 600))),
        ("he_uniform", np.sqrt(6.0 / 400)),
        ("random_uniform", 0.05),
    ],
)
def test_uniform_limits_and_std(name, limit):
    w = _draw(name)
    assert np.abs(w).max() <= limit
    assert np.abs(w).max() > 0.999 * limit  # the whole range is used
    np.testing.assert_allclose(w.std(), limit / np.sqrt(3.0), rtol=0.02)
    assert abs(w.mean()) < 0.01 * limit


@pytest.mark.parametrize(
    "name, std",
    [
        ("glorot_normal", np.sqrt(2.0 / (400 + 600))),
        ("he_normal", np.sqrt(2.0 / 400)),
        ("lecun_normal", np.sqrt(1.0 / 400)),
    ],
)
def test_truncated_normals_have_the_target_std_and_are_cut_at_two_sigma(name, std):
    w = _draw(name)
    np.testing.assert_allclose(w.std(), std, rtol=0.02)
    assert abs(w.mean()) < 0.02 * std
    # truncation at 2 sigma of the underlying (unshrunk) normal
    bound = 2.0 * std / TRUNC_SHRINK
    assert np.abs(w).max() <= bound * (1 + 1e-12)
    assert np.abs(w).max() > 0.99 * bound
    # the cut is at 2 sigma of the underlying normal, not at twice the final std: some draws lie beyond 2*std
    assert np.mean(np.abs(w) > 2.0 * std) > 0.01


def test_random_normal_std():
    w = _draw("random_normal")
    np.testing.assert_allclose(w.std(), 0.05, rtol=0.02)
    assert np.abs(w).max() > 3 * 0.05  # not truncated


def test_bias_vector_uses_its_size_as_both_fans():
    w = _draw("glorot_uniform", shape=(300_000,))
    limit = np.sqrt(6.0 / 600_000)
    assert np.abs(w).max() <= limit
    np.testing.assert_allclose(w.std(), limit / np.sqrt(3.0), rtol=0.02)


@pytest.mark.parametrize("name", sorted(INITIALIZERS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_shape_dtype_and_determinism(name, dtype):
    a = _draw(name, shape=(7, 5), seed=3, dtype=dtype)
    b = _draw(name, shape=(7, 5), seed=3, dtype=dtype)
    assert a.shape == (7, 5) and a.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)
    if name not in ("zeros", "ones"):
        c = _draw(name, shape=(7, 5), seed=4, dtype=dtype)
        assert not np.array_equal(a, c)


def test_zeros_and_ones():
    np.testing.assert_array_equal(_draw("zeros", shape=(3, 2)), np.zeros((3, 2)))
    np.testing.assert_array_equal(_draw("ones", shape=(4,)), np.ones(4))


@pytest.mark.parametrize("identifier, expected", [("glorot_uniform", "glorot_uniform"), ("He_Normal", "he_normal"),
                                                  (" zeros ", "zeros")])
def test_get_returns_canonical_names(identifier, expected):
    assert initializers.get(identifier) == expected


def test_unknown_name_suggests_and_names_the_argument():
    with pytest.raises(NnxpError, match=r"`kernel_initializer` must be one of .*Received: "
                                        r"kernel_initializer='glorot_unifrom'\. Did you mean \"glorot_uniform\"\?"):
        initializers.get("glorot_unifrom")
    with pytest.raises(NnxpError, match=r"`bias_initializer` .*Received: bias_initializer='orthogonal'\.$"):
        initializers.get("orthogonal", "bias_initializer")


@pytest.mark.parametrize("bad", [None, 0.1, np.zeros])
def test_non_string_is_a_type_error(bad):
    with pytest.raises(NnxpTypeError, match=r"`kernel_initializer` must be an initializer name"):
        initializers.get(bad)
