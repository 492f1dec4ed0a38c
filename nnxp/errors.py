"""nnxp's own exceptions.

Every error raised for bad user input derives from :class:`NnxpError` (itself a
``ValueError``) so callers can catch nnxp's complaints in one place. Messages
name the argument, the rule and the value received.
"""

from __future__ import annotations


class NnxpError(ValueError):
    """Base of every error nnxp raises for bad input or a failed run."""


class NnxpTypeError(NnxpError, TypeError):
    """An argument has the wrong type (also a ``TypeError``)."""


class DeviceError(NnxpError):
    """A device was asked for that cannot be used here."""


class NotCompiledError(NnxpError):
    """The model needs ``compile()`` (or layers) before this call."""


class NumericalError(NnxpError):
    """Training produced NaN or infinity."""


class ModelFileError(NnxpError):
    """A model file is missing, damaged, or of an unknown format."""


class DatasetError(NnxpError):
    """A dataset cannot be found, downloaded or parsed."""


def did_you_mean(name: object, choices: list[str]) -> str:
    """Return ' Did you mean "x"?' for the closest of `choices`, or ''."""
    import difflib

    match = difflib.get_close_matches(str(name).lower(), choices, n=1, cutoff=0.5)
    return f' Did you mean "{match[0]}"?' if match else ""
