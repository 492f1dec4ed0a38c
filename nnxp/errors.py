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


class DeviceTypeError(DeviceError, NnxpTypeError):
    """A device was given as something other than a string or Device."""


class NotCompiledError(NnxpError):
    """The model needs ``compile()`` (or layers) before this call."""


class DeviceMemoryError(NnxpError, MemoryError):
    """The GPU ran out of memory; a smaller batch usually helps."""


class NumericalError(NnxpError):
    """Training produced NaN or infinity."""


class ModelFileError(NnxpError):
    """A model file is missing, damaged, or of an unknown format."""


class ModelSaveError(OSError, NnxpError):
    """A model file could not be written (read-only folder, disk full, name too long); the old file is intact.

    Both an ``OSError`` (with ``errno`` and ``filename``) and an :class:`NnxpError`.
    """


class DatasetError(NnxpError):
    """A dataset cannot be found, downloaded or parsed."""


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment distance: insertions, deletions, substitutions, adjacent swaps."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def did_you_mean(name: object, choices: list[str]) -> str:
    """Return ' Did you mean "x"?' for the closest of `choices` (typos, swapped letters), or ''."""
    text = str(name).lower()
    if not choices:
        return ""
    best = min(choices, key=lambda c: (_edit_distance(text, c), c))
    # accept up to a third of the word wrong (at least one edit)
    return f' Did you mean "{best}"?' if _edit_distance(text, best) <= max(1, len(best) // 3) else ""


def reject_unknown_arguments(where: str, kwargs: dict, allowed: list[str], removed: dict[str, str]) -> None:
    """Raise for keyword arguments `where` does not take, naming the right one for spellings Keras removed.

    `removed` maps an old Keras spelling (``lr``, ``nb_epoch``, ``init``) to what replaced it.
    """
    for key in kwargs:
        if key in removed:
            raise NnxpTypeError(f"{where} no longer takes `{key}` (Keras removed it): use {removed[key]} instead. "
                                f"Received: {key}={kwargs[key]!r}")
    if kwargs:
        key = next(iter(kwargs))
        raise NnxpTypeError(f"{where} got an unexpected keyword argument `{key}`." + did_you_mean(key, allowed)
                            + f" Received: {key}={kwargs[key]!r}")
