"""kernels.cu through the real NVRTC, with no GPU: the compile a GPU user's first kernel call runs.

NVRTC needs no device. cupy.cuda.nvrtc (CuPy 14.2's binding, over the nvidia-cuda-nvrtc-cu12 wheel) compiles
kernels.cu with exactly the options CuPy's RawModule passes for nnxp's module
(bench.kernel_resources.cupy_raw_module_options, which cites the CuPy source of each)
for sm_80 and sm_90, and hands back a cubin and the lowered name of every name expression nnxp asks for. The same
compile, with ``--ptxas-options=-v`` (verbose output only), gives each kernel's registers, spills and shared
memory (tests/test_ops_cuda_resources.py and bench/kernel_resources.py read it).
"""

from __future__ import annotations

import importlib.util
import re

import pytest
from conftest import require_tool

from bench.kernel_resources import ARCHS, EXPRESSIONS, cupy_raw_module_options, nvrtc_build


def _require_nvrtc() -> None:
    found = importlib.util.find_spec("cupy") is not None
    if found:
        try:
            from cupy.cuda import nvrtc

            nvrtc.getVersion()
        except Exception:  # no NVRTC library: the nvidia-cuda-nvrtc wheel is missing
            found = False
    require_tool(found, "CuPy with NVRTC is not installed (cupy-cuda12x and nvidia-cuda-nvrtc-cu12)")


def test_options_are_cupys():
    _require_nvrtc()
    options = cupy_raw_module_options("80")
    assert options[-3:] == ("-ftz=true", "-arch=sm_80", "--device-as-default-execution-space")
    assert "--std=c++17" in options and "--fmad=false" in options
    includes = [o for o in options if o.startswith("-I")]
    assert any(o.endswith("/cupy/_core/include") for o in includes)
    assert any(o.endswith("/cupy/_cccl/libcudacxx") for o in includes)
    assert len(includes) == 5  # three CCCL paths, CuPy's headers, the CUDA runtime headers


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_name_expression(arch):
    _require_nvrtc()
    build = nvrtc_build(arch)
    warnings = [line for line in build["log"].splitlines() if "warning" in line.lower()]
    assert not warnings, build["log"]
    assert build["cubin"][:4] == b"\x7fELF"
    for expression, lowered in build["lowered"].items():
        name, ctype = re.fullmatch(r"(\w+)<(\w+)>", expression).groups()
        assert re.fullmatch(rf"_Z\d+{name}I{ctype[0]}Ev\w*", lowered), (expression, lowered)
        assert lowered.encode() in build["cubin"], f"{expression} ({lowered}) is not in the sm_{arch} cubin"
    assert len(set(build["lowered"].values())) == len(EXPRESSIONS)
