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


# --- spellings Keras removed: an error naming the replacement (errors.reject_unknown_arguments) --------------
def test_reject_unknown_arguments_names_the_replacement_or_the_closest():
    from nnxp.errors import NnxpTypeError, reject_unknown_arguments

    reject_unknown_arguments("f", {}, ["epochs"], {"nb_epoch": "epochs"})  # nothing to complain about
    with pytest.raises(NnxpTypeError, match=r"^f no longer takes `nb_epoch` \(Keras removed it\): use epochs instead"
                                            r"\. Received: nb_epoch=3$"):
        reject_unknown_arguments("f", {"nb_epoch": 3}, ["epochs"], {"nb_epoch": "epochs"})
    with pytest.raises(NnxpTypeError, match=r'^f got an unexpected keyword argument `epoch`\. Did you mean "epochs"\?'):
        reject_unknown_arguments("f", {"epoch": 3}, ["epochs", "verbose"], {})


def test_removed_keras_spellings_in_fit_and_removed_methods():
    import numpy as np

    import nnxp

    model = nnxp.Sequential([nnxp.Dense(2, "softmax", input_dim=3)], seed=0)
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.ones((4, 3)), np.array([0, 1, 0, 1])
    before = model.get_weights()
    with pytest.raises(TypeError, match="fit no longer takes `nb_epoch`.*use epochs instead"):
        model.fit(x, y, nb_epoch=2, verbose=0)
    with pytest.raises(TypeError, match='unexpected keyword argument `batchsize`. Did you mean "batch_size"'):
        model.fit(x, y, batchsize=2, verbose=0)
    assert model.epochs_trained == 0
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(nnxp.NnxpError, match=r"np.argmax\(model.predict\(x\), axis=-1\)"):
        model.predict_classes(x)
    with pytest.raises(nnxp.NnxpError, match=r"use model.predict\(x\)"):
        model.predict_proba(x)
    with pytest.raises(nnxp.NnxpError, match=r"use model.fit"):
        model.fit_generator(iter([]))
