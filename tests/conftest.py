"""Shared fixtures: the device parametrisation, per-dtype tolerances, and the CPU emulator of CUDA."""

from __future__ import annotations

import os

import _cuda_emu
import _stand_in_cupy
import numpy as np
import pytest

from nnxp.backend import cuda_available
from nnxp.ops import _cuda

# (rtol, atol) for comparing two computations of the same quantity in each dtype
TOLERANCES = {np.dtype("float32"): (2e-5, 2e-6), np.dtype("float64"): (1e-12, 1e-13)}


def tol(dtype) -> dict:
    rtol, atol = TOLERANCES[np.dtype(dtype)]
    return {"rtol": rtol, "atol": atol}


def require_tool(found: bool, reason: str) -> None:
    """Skip a test whose tool is missing, or fail it where CI promises the tool (NNXP_REQUIRE_CUDA_TOOLS=1)."""
    if found:
        return
    if os.environ.get("NNXP_REQUIRE_CUDA_TOOLS") == "1":
        pytest.fail(f"{reason}, but NNXP_REQUIRE_CUDA_TOOLS=1 says it must be here (pip install -e '.[dev]')")
    pytest.skip(reason)


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


@pytest.fixture(scope="session")
def emulator(tmp_path_factory):
    """kernels.cu built for the CPU emulator of CUDA (tests/_cuda_emu.py); skipped without a C++ compiler."""
    built = _cuda_emu.build(tmp_path_factory.mktemp("cuda_emu"))
    if built is None:
        pytest.skip("no C++ compiler (g++ / c++) for the CUDA emulator")
    return built


@pytest.fixture
def fake_cupy(monkeypatch, emulator):
    """nnxp's CuPy replaced by the stand-in over the emulator: CUDA code paths run kernels.cu on the CPU."""
    import nnxp.backend as backend

    fake = _stand_in_cupy.stand_in_cupy(emulator)
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(_cuda, "_KERNELS", _cuda.LazyKernels())
    monkeypatch.setattr(_cuda, "_SCRATCH", {})  # the fused kernels' cached scratch arrays belong to one stand-in
    return fake
