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
