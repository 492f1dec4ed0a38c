"""The activation-name registry: canonical names, aliases and helpful errors."""

import pytest

from nnxp import Dense, activations
from nnxp.errors import NnxpError, NnxpTypeError
from nnxp.ops.activation import ACTIVATION_OPS


def test_names_are_the_sorted_registry():
    names = activations.names()
    assert names == sorted(ACTIVATION_OPS)
    assert {"linear", "relu", "sigmoid", "tanh", "softmax"} <= set(names)


@pytest.mark.parametrize("name", sorted(ACTIVATION_OPS))
def test_every_canonical_name_resolves_to_itself(name):
    assert activations.get(name) == name


@pytest.mark.parametrize(
    "identifier, expected",
    [
        (None, "linear"),
        ("identity", "linear"),
        ("none", "linear"),
        ("None", "linear"),
        ("leakyrelu", "leaky_relu"),
        ("swish", "silu"),
        ("SiLU", "silu"),
        ("LeakyReLU", "leaky_relu"),
        ("ReLU", "relu"),
        (" Sigmoid ", "sigmoid"),
        ("SOFTMAX", "softmax"),
    ],
)
def test_aliases_none_and_case_insensitivity(identifier, expected):
    assert activations.get(identifier) == expected


@pytest.mark.parametrize("typo, suggestion", [("rleu", "relu"), ("sigmiod", "sigmoid"), ("tahn", "tanh"),
                                              ("softmx", "softmax")])
def test_unknown_name_lists_choices_and_suggests(typo, suggestion):
    with pytest.raises(NnxpError, match=rf"`activation` must be one of \[.*'relu'.*\]\. "
                                        rf"Received: activation='{typo}'\. Did you mean \"{suggestion}\"\?"):
        activations.get(typo)


def test_unknown_name_far_from_everything_has_no_suggestion():
    with pytest.raises(NnxpError) as info:
        activations.get("convolution")
    assert "Received: activation='convolution'" in str(info.value)
    assert "Did you mean" not in str(info.value)


def test_the_argument_name_appears_in_the_message():
    with pytest.raises(NnxpError, match=r"`hidden_act` must be one of .*Received: hidden_act='bogus'"):
        activations.get("bogus", argument="hidden_act")


@pytest.mark.parametrize("bad", [3, 1.5, len, ["relu"]])
def test_non_string_is_a_type_error(bad):
    with pytest.raises(NnxpTypeError, match=r"`activation` must be an activation name .*of type") as info:
        activations.get(bad)
    assert isinstance(info.value, TypeError)


def test_layers_use_the_registry():
    assert Dense(2, activation="ReLU").activation == "relu"
    assert Dense(2).activation == "linear"
    with pytest.raises(NnxpError, match='Did you mean "relu"'):
        Dense(2, activation="reluu")
