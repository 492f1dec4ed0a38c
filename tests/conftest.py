"""Shared fixtures: the device parametrisation and per-dtype tolerances."""

from __future__ import annotations

import numpy as np
import pytest

from nnxp.backend import cuda_available

# (rtol, atol) for comparing two computations of the same quantity in each dtype
TOLERANCES = {np.dtype("float32"): (2e-5, 2e-6), np.dtype("float64"): (1e-12, 1e-13)}


def tol(dtype) -> dict:
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    return {"rtol": rtol, "atol": atol}


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU with CuPy (none found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> str:
    """Run a test once per device; the CUDA run is skipped without a GPU."""
    return request.param
