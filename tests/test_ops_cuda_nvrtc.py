"""kernels.cu through the real NVRTC, with no GPU: the compile a GPU user's first kernel call runs.

NVRTC needs no device. cupy.cuda.nvrtc (CuPy 14.2's binding, over the nvidia-cuda-nvrtc-cu12 wheel) compiles
kernels.cu with exactly the options CuPy's RawModule passes for nnxp's module (:func:`cupy_raw_module_options`)
for sm_80 and sm_90, and hands back a cubin and the lowered name of every name expression nnxp asks for. The same
compile, with ``--ptxas-options=-v`` (verbose output only), gives each kernel's registers, spills and shared
memory (tests/test_ops_cuda_resources.py and bench/kernel_resources.py read it).
"""

from __future__ import annotations

import functools
import importlib.util
import re

import pytest
from conftest import require_tool

from nnxp.ops import _cuda

ARCHS = ("80", "90")
EXPRESSIONS = tuple(f"{name}<{ctype}>" for name in _cuda.KERNELS for ctype in ("float", "double"))


def _require_nvrtc() -> None:
    found = importlib.util.find_spec("cupy") is not None
    if found:
        try:
            from cupy.cuda import nvrtc

            nvrtc.getVersion()
        except Exception:  # no NVRTC library: the nvidia-cuda-nvrtc wheel is missing
            found = False
    require_tool(found, "CuPy with NVRTC is not installed (cupy-cuda12x and nvidia-cuda-nvrtc-cu12)")


def cupy_raw_module_options(arch: str, options: tuple[str, ...] = _cuda.NVRTC_OPTIONS) -> tuple[str, ...]:
    """The options CuPy 14.2 passes to nvrtcCompileProgram for ``RawModule(code=..., options=options,
    name_expressions=...)`` on a device of compute capability `arch`, with CUPY_COMPILE_WITH_PTX,
    CUPY_NVRTC_USE_PCH and CUPY_CUDA_COMPILE_WITH_DEBUG unset:

    - cupy/_core/raw.pyx _get_raw_module -> cupy/_core/core.pyx compile_with_cache ->
      assemble_cupy_compiler_options: the bundled CCCL include paths first, then `options`, ``--std=c++17``
      (none given), ``-I`` CuPy's headers and ``-I`` the CUDA runtime headers (called here: it is CuPy's own);
    - cupy/cuda/compiler.py _compile_with_cache_cuda: ``-ftz=true``;
    - _compile_using_nvrtc_no_warning: ``-arch=sm_XX`` from _get_arch_for_options_for_nvrtc (a cubin, since XX
      is at most _get_max_compute_capability()), and ``--device-as-default-execution-space`` (no jitify).

    _get_arch_for_options_for_nvrtc itself needs a device (it is memoized per device), so its choice is
    restated here.
    """
    from cupy._core import core
    from cupy.cuda import compiler

    assert int(arch) <= int(compiler._get_max_compute_capability())
    assembled = core.assemble_cupy_compiler_options(tuple(options))
    return (*assembled, "-ftz=true", f"-arch=sm_{arch}", "--device-as-default-execution-space")


@functools.cache
def nvrtc_build(arch: str) -> dict:
    """kernels.cu compiled by NVRTC for `arch` as CuPy would: {"options", "log", "cubin", "lowered"}."""
    from cupy.cuda import nvrtc

    options = cupy_raw_module_options(arch)
    program = nvrtc.createProgram(_cuda._source(), "kernels.cu", (), ())
    try:
        for expression in EXPRESSIONS:
            nvrtc.addNameExpression(program, expression)
        try:
            nvrtc.compileProgram(program, (*options, "--ptxas-options=-v"))
        except nvrtc.NVRTCError as exc:
            raise AssertionError(f"NVRTC failed for sm_{arch}:\n{nvrtc.getProgramLog(program)}") from exc
        return {
            "options": options,
            "log": nvrtc.getProgramLog(program),
            "cubin": nvrtc.getCUBIN(program),
            "lowered": {e: nvrtc.getLoweredName(program, e) for e in EXPRESSIONS},
        }
    finally:
        nvrtc.destroyProgram(program)


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
