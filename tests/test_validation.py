"""Input checks in nnxp/_validation.py: each names the argument, the rule and what it received."""

import math

import numpy as np
import pytest

from nnxp._validation import (
    as_array,
    check_features,
    check_finite,
    check_same_length,
    check_targets,
    fraction,
    non_negative_int,
    number,
    positive_int,
)
from nnxp.errors import NnxpError, NnxpTypeError


# --- as_array ------------------------------------------------------------------------------------
def test_lists_are_converted():
    out = as_array([[1, 2], [3, 4]], "x")
    assert isinstance(out, np.ndarray) and out.shape == (2, 2)


def test_arrays_pass_through_unchanged():
    a = np.ones((2, 3), dtype=np.float32)
    assert as_array(a, "x") is a
    assert as_array(np.array([True, False]), "y").dtype == np.bool_


def test_none_is_rejected():
    with pytest.raises(NnxpTypeError, match=r"`x` must be an array\. Received: x=None"):
        as_array(None, "x")


@pytest.mark.parametrize(
    "value, pattern",
    [
        (np.array(["a", "b"]), r"`y` must hold numbers .*dtype <U1"),
        (["1.0", "2.0"], r"`y` must hold numbers .*dtype <U3"),
        (np.array([1, None], dtype=object), r"`y` must hold numbers .*dtype object"),
        (np.array([1 + 2j]), r"`y` must hold numbers .*dtype complex128"),
    ],
)
def test_non_numeric_dtypes_are_rejected(value, pattern):
    with pytest.raises(NnxpTypeError, match=pattern):
        as_array(value, "y")


def test_ragged_list_is_a_type_error():
    with pytest.raises(NnxpTypeError, match=r"`x` must be a numeric array\. Received: list"):
        as_array([[1, 2], [3]], "x")


# --- check_features ------------------------------------------------------------------------------
def test_check_features_accepts_a_2d_list():
    x = check_features([[1.0, 2.0], [3.0, 4.0]], "x", 2)
    assert x.shape == (2, 2)


@pytest.mark.parametrize(
    "value, n_features, pattern",
    [
        (np.ones(4), None, r"`x` must be 2-D \(samples, features\)\. Received: an array of shape \(4,\)"),
        (np.ones((2, 2, 2)), None, r"`x` must be 2-D .*shape \(2, 2, 2\)"),
        (np.ones((0, 3)), None, r"`x` must not be empty\. Received: an array of shape \(0, 3\)"),
        (np.ones((3, 0)), None, r"`x` must not be empty"),
        (np.ones((5, 3)), 4, r"`x` must have 4 features \(the model's input size\)\. Received: .*shape \(5, 3\)"),
    ],
)
def test_check_features_errors(value, n_features, pattern):
    with pytest.raises(NnxpError, match=pattern):
        check_features(value, "x", n_features)


def test_non_finite_values_are_counted():
    x = np.ones((3, 2))
    x[0, 1], x[2, 0] = np.nan, np.inf
    with pytest.raises(NnxpError, match=r"`x_val` must be finite\. Received: .* with 2 NaN or infinite values"):
        check_features(x, "x_val", None)
    check_finite(np.array([1, 2]), "ints")  # integers are always finite


def test_check_same_length():
    check_same_length(np.ones((3, 2)), np.ones(3))
    with pytest.raises(NnxpError, match=r"`x` and `y` must have the same number of samples\. "
                                        r"Received: x has 3, y has 4"):
        check_same_length(np.ones((3, 2)), np.ones(4))


# --- check_targets: sparse labels ----------------------------------------------------------------
def test_sparse_labels_are_int64_and_column_vectors_are_flattened():
    y = check_targets(np.array([[0], [2], [1]]), "y", "categorical", True, 3)
    assert y.shape == (3,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 2, 1])
    y = check_targets([0.0, 2.0], "y", "categorical", True, 3)  # whole-number floats are fine
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 2])


@pytest.mark.parametrize(
    "labels, pattern",
    [
        ([0, 1, 3], r"`y` labels must lie in \[0, 2\] \(the output layer has 3 units\)\. Received: labels from 0 to 3"),
        ([-1, 0], r"`y` labels must lie in \[0, 2\] .*Received: labels from -1 to 0"),
    ],
)
def test_sparse_label_range(labels, pattern):
    with pytest.raises(NnxpError, match=pattern):
        check_targets(np.array(labels), "y", "categorical", True, 3)


def test_sparse_float_labels_with_fractions():
    with pytest.raises(NnxpError, match=r"`y` must hold whole-number class labels .*Received: float labels"):
        check_targets(np.array([0.0, 1.5]), "y", "categorical", True, 3)


def test_sparse_loss_with_one_hot_targets_hints_at_the_dense_loss():
    with pytest.raises(NnxpError, match=r"`y` must be integer class labels of shape \(N,\) .*shape \(2, 3\).*"
                                        r"use loss='categorical_crossentropy'"):
        check_targets(np.eye(3)[:2], "y", "categorical", True, 3)


@pytest.mark.parametrize("value", [np.array(3.0), np.zeros(0)])
def test_empty_or_scalar_targets(value):
    with pytest.raises(NnxpError, match=r"`y` must be a non-empty array of targets"):
        check_targets(value, "y", "regression", False, 1)


# --- check_targets: dense targets ----------------------------------------------------------------
def test_1d_targets_become_a_column():
    y = check_targets([1.0, 2.0, 3.0], "y", "regression", False, 1)
    assert y.shape == (3, 1)


def test_one_hot_width_must_match_outputs():
    with pytest.raises(NnxpError, match=r"`y` must have 3 columns to match the output layer's 3 units\. "
                                        r"Received: .*shape \(2, 4\) and dtype float64$"):
        check_targets(np.ones((2, 4)), "y", "categorical", False, 3)


def test_integer_labels_with_a_dense_categorical_loss_get_a_hint():
    with pytest.raises(NnxpError, match=r"`y_train` must have 10 columns.*sparse_categorical_crossentropy.*one_hot"):
        check_targets(np.array([1, 2, 3]), "y_train", "categorical", False, 10)


def test_binary_targets_must_lie_in_unit_interval():
    y = check_targets(np.array([[0.0], [1.0], [0.25]]), "y", "binary", False, 1)
    assert y.shape == (3, 1)
    with pytest.raises(NnxpError, match=r"`y` must lie in \[0, 1\] for binary cross-entropy\. "
                                        r"Received: values from -1\.0 to 2\.0"):
        check_targets(np.array([-1.0, 2.0]), "y", "binary", False, 1)


def test_three_d_targets_are_rejected():
    with pytest.raises(NnxpError, match=r"`y` must be 1-D or 2-D"):
        check_targets(np.ones((2, 1, 1)), "y", "regression", False, 1)


def test_targets_with_nan_are_rejected():
    with pytest.raises(NnxpError, match=r"`y` must be finite.*1 NaN"):
        check_targets(np.array([0.0, np.nan]), "y", "regression", False, 1)


# --- scalar arguments ----------------------------------------------------------------------------
def test_positive_int():
    assert positive_int("epochs", 3) == 3
    assert positive_int("epochs", np.int64(2)) == 2
    for bad in (0, -1, 2.5, True, "3", None):
        with pytest.raises(NnxpError, match=rf"`epochs` must be a positive integer\. Received: epochs={bad!r}"):
            positive_int("epochs", bad)


def test_non_negative_int():
    assert non_negative_int("seed", 0) == 0
    for bad in (-1, 1.0, False):
        with pytest.raises(NnxpError, match=rf"`seed` must be an integer >= 0\. Received: seed={bad!r}"):
            non_negative_int("seed", bad)


def test_fraction():
    assert fraction("validation_split", 0) == 0.0
    assert fraction("validation_split", 0.25) == 0.25
    for bad in (1.0, -0.1, float("nan"), "0.2", True):
        with pytest.raises(NnxpError, match=r"`validation_split` must be a number in \[0, 1\)\. Received: "
                                            r"validation_split="):
            fraction("validation_split", bad)


def test_fraction_accepts_numpy_floats():
    assert fraction("validation_split", np.float32(0.25)) == 0.25


@pytest.mark.parametrize("rule, good, bad", [
    ("> 0", [1e-12, 3, np.float32(2.5), np.int64(7)], [0, -1.0]),
    (">= 0", [0, 0.0, 1e300], [-1e-12, -3]),
    ("[0.0, 1.0]", [0.0, 1.0, 0.5], [-0.1, 1.0000001]),
    ("(0.0, inf)", [1e-30, 10**300], [0.0, -2]),
    ("[0, 1)", [0, 0.999], [1, 1.0, -0.0001]),
])
def test_number_checks_its_rule(rule, good, bad):
    for value in good:
        result = number("x", value, rule)
        assert type(result) is float and result == float(value)
    for value in [*bad, math.nan, math.inf, -math.inf, True, np.bool_(False), "1", None, 10**400]:
        with pytest.raises(NnxpError, match=r"`x` must be a (finite )?number .*Received: x="):
            number("x", value, rule)


@pytest.mark.parametrize("rule, said", [
    ("> 0", "a finite number > 0"),
    (">= 0", "a finite number >= 0"),
    ("(0.0, inf)", "a finite number in (0.0, inf)"),
    ("[0, 1)", "a number in [0, 1)"),  # bounds on both sides already imply finite
])
def test_number_says_the_rule_as_written(rule, said):
    with pytest.raises(NnxpError) as info:
        number("rate", -5, rule)
    assert str(info.value) == f"`rate` must be {said}. Received: rate=-5"


# --- finite after the cast to the model's dtype; masked arrays ------------------------------------
@pytest.mark.parametrize("value, ok", [(3.4e38, True), (np.finfo(np.float32).max, True), (1e39, False),
                                       (-1e39, False), (3.41e38, False), (1e-50, True)])
def test_check_finite_in_the_models_dtype(value, ok):
    a = np.array([0.0, value])
    check_finite(a, "x", np.float64)  # always fine in float64
    with np.errstate(over="ignore"):
        assert np.isfinite(a.astype(np.float32)).all() == ok  # the rule is exactly "finite once cast"
    if ok:
        check_finite(a, "x", np.float32)
    else:
        with pytest.raises(NnxpError, match=r"`x` must be finite in float32 \(the model's dtype\)"):
            check_finite(a, "x", np.float32)


def test_float32_and_integer_inputs_skip_the_range_check():
    check_finite(np.array([np.finfo(np.float32).max], np.float32), "x", np.float32)
    check_finite(np.array([2**62]), "x", np.float32)


def test_masked_arrays_give_their_data_and_refuse_nan_under_the_mask():
    m = np.ma.array([1.0, 2.0, 3.0], mask=[False, True, False])
    out = as_array(m, "x")
    assert type(out) is np.ndarray and out.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(NnxpError, match=r"`y` is a masked array with NaN.*y.filled\(0\).*1 NaN"):
        as_array(np.ma.masked_invalid([1.0, np.nan]), "y")
    assert as_array(np.ma.masked_invalid([1.0, 2.0]), "y").tolist() == [1.0, 2.0]


def test_check_finite_accepts_finite_values_whose_sum_overflows_and_refuses_nan_and_inf():
    from nnxp._validation import check_finite

    check_finite(np.array([[3e38, 3e38], [3e38, -1.0]], np.float32), "x")  # the sum is inf, every value finite
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(NnxpError, match="`x` must be finite.*1 NaN or infinite"):
            check_finite(np.array([[3e38, 3e38], [bad, 1.0]], np.float32), "x")
        with pytest.raises(NnxpError, match="`x` must be finite"):
            check_finite(np.array([[0.5, bad]]), "x")
