"""The exception hierarchy and the "did you mean" helper."""

import pytest

from nnxp import errors
from nnxp.errors import (
    DatasetError,
    DeviceError,
    ModelFileError,
    NnxpError,
    NnxpTypeError,
    NotCompiledError,
    NumericalError,
    did_you_mean,
)


def test_nnxp_error_is_a_value_error():
    assert issubclass(NnxpError, ValueError)
    with pytest.raises(ValueError, match="boom"):
        raise NnxpError("boom")


def test_type_error_is_both_nnxp_and_type_error():
    assert issubclass(NnxpTypeError, NnxpError)
    assert issubclass(NnxpTypeError, TypeError)
    for catch in (TypeError, ValueError, NnxpError):
        with pytest.raises(catch):
            raise NnxpTypeError("bad type")


@pytest.mark.parametrize("cls", [DeviceError, NotCompiledError, NumericalError, ModelFileError, DatasetError])
def test_every_specific_error_is_an_nnxp_error(cls):
    assert issubclass(cls, NnxpError)
    assert not issubclass(cls, TypeError)


CHOICES = ["elu", "gelu", "linear", "relu", "sigmoid", "softmax", "tanh"]


@pytest.mark.parametrize(
    "typo, expected",
    [
        ("rleu", "relu"),  # adjacent swap
        ("tahn", "tanh"),  # adjacent swap
        ("sigmiod", "sigmoid"),  # swap
        ("sigmod", "sigmoid"),  # deletion
        ("softmaxx", "softmax"),  # insertion
        ("RELU6", "relu"),  # case and one extra letter
        ("linaer", "linear"),
    ],
)
def test_did_you_mean_suggests_the_closest_name(typo, expected):
    assert did_you_mean(typo, CHOICES) == f' Did you mean "{expected}"?'


@pytest.mark.parametrize("far", ["convolution", "xyz", "", "swishy"])
def test_did_you_mean_is_empty_when_nothing_is_close(far):
    assert did_you_mean(far, CHOICES) == ""


def test_did_you_mean_without_choices_and_with_non_strings():
    assert did_you_mean("relu", []) == ""
    assert did_you_mean(12, ["l1", "x12"]) == ' Did you mean "x12"?'


def test_ties_break_alphabetically():
    assert did_you_mean("l3", ["l2", "l1"]) == ' Did you mean "l1"?'


@pytest.mark.parametrize(
    "a, b, distance",
    [("", "abc", 3), ("abc", "abc", 0), ("ab", "ba", 1), ("kitten", "sitting", 3), ("ca", "abc", 3),
     ("abcd", "acbd", 1)],
)
def test_edit_distance_counts_swaps_as_one_edit(a, b, distance):
    assert errors._edit_distance(a, b) == distance
    assert errors._edit_distance(b, a) == distance
