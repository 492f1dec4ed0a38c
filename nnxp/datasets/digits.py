"""The 8x8 handwritten-digits set, bundled with the package.

1,797 images from the UCI optdigits test set (Alpaydin & Kaynak, CC BY 4.0;
see ``data/DIGITS_LICENSE.txt``), stored as a small compressed ``.npz`` so the
classic tutorials run offline with nothing but NumPy.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from nnxp.errors import DatasetError

_N_SAMPLES, _N_FEATURES = 1797, 64


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, y)``: X float32 (1797, 64) with values 0..16, y int64 (1797,) digits 0..9."""
    source = resources.files(__package__).joinpath("data").joinpath("digits.npz")
    try:
        with source.open("rb") as f, np.load(f, allow_pickle=False) as archive:
            x, y = archive["X"], archive["y"]
    except (OSError, KeyError, ValueError) as err:
        raise DatasetError(f"The bundled digits file {source} is missing or damaged ({err}); reinstall nnxp.") from err
    if x.shape != (_N_SAMPLES, _N_FEATURES) or y.shape != (_N_SAMPLES,):
        raise DatasetError(
            f"The bundled digits file {source} must hold X ({_N_SAMPLES}, {_N_FEATURES}) and y ({_N_SAMPLES},). "
            f"Received: X {x.shape}, y {y.shape}"
        )
    return x.astype(np.float32), y.astype(np.int64)


def load_digits_split(
    test_size: float = 0.25, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The one digits split that the README, ``nnxp train`` and ``nnxp evaluate --dataset digits`` share.

    Returns ``((x_train, y_train), (x_test, y_test))`` (Keras's ``load_data`` shape) with features scaled to
    [0, 1] and a stratified held-out `test_size`; the same (`test_size`, `seed`) always gives the same rows,
    so evaluating a model trained on ``x_train`` scores held-out rows only.
    """
    from nnxp.datasets.utils import train_test_split

    x, y = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=test_size, seed=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)
