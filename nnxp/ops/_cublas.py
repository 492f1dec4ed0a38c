"""A matmul that also works while a CUDA graph is captured: cuBLAS's GEMM through ctypes, on CuPy's handle.

CuPy refuses every cuBLAS call on a capturing stream (its handle's setStream raises), although cuBLAS itself
supports capture. So inside `capturing()` the dense ops call cublasGemmEx through ctypes, on CuPy's own handle
and the very libcublas CuPy loaded, with the compute type and algorithm CuPy's eager matmul picks
(cupy/_core/_routines_linalg.pyx tensordot_core_v11), so replayed and eager steps run the same GEMM.
Entering `capturing()` (before begin_capture) takes the handle and gives it a persistent workspace, so
neither cublasCreate nor a workspace allocation is recorded into the graph.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..backend import cupy_module

_capture = threading.local()

# cuBLAS / CUDA enum values, as cupy_backends/cuda/libs/cublas.pxd and cupy_backends/cuda/api/runtime.pxd spell
# them (read from CuPy's modules when present; these are the values of the CUDA 12/13 headers)
_CUBLAS_ENUMS = {
    "CUBLAS_COMPUTE_32F": 68, "CUBLAS_COMPUTE_32F_PEDANTIC": 69, "CUBLAS_COMPUTE_32F_FAST_TF32": 77,
    "CUBLAS_COMPUTE_64F": 70, "CUBLAS_COMPUTE_64F_PEDANTIC": 71,
    "CUBLAS_GEMM_DEFAULT": -1, "CUBLAS_GEMM_DEFAULT_TENSOR_OP": 99,
}
_CUDA_R_32F, _CUDA_R_64F = 0, 1  # cudaDataType_t
# cuBLAS's recommended user workspace for graph capture: 32 MiB on Hopper and later, 4 MiB before (the cuBLAS
# docs, "cuBLAS Workspace" / "CUDA Graphs Support"), the same size as its default pool, so GEMM heuristics match
_WORKSPACE_BYTES = {True: 32 << 20, False: 4 << 20}


def cublas_soname(version: int) -> str:
    """The soname of libcublas for a cublasGetVersion value (major * 10000 + minor * 100 + patch)."""
    if version < 10000:
        raise RuntimeError(f"cuBLAS reported version {version}; nnxp's captured matmuls need cuBLAS 11 or later")
    return f"libcublas.so.{version // 10000}"


def _open_loaded(path: str) -> Any:
    """A ctypes handle on `path` only if this process has loaded it already (RTLD_NOLOAD: never a second copy)."""
    import ctypes
    import os

    return ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_NOW)


def _cublas_candidates(cp: Any, handle: int) -> list[str]:
    """Where the libcublas CuPy uses is, best first.

    CuPy 14 loads it with cuda.pathfinder.load_nvidia_dynamic_lib("cublas") before importing its cublas module
    (cupy_backends/cuda/libs/__init__.py __getattr__); that call is cached (functools.cache), so asking again
    returns the very copy CuPy loaded, with its absolute path. Otherwise (a CuPy built against a system CUDA)
    the soname of the cuBLAS major that CuPy's own binding reports, which the dynamic linker matches against
    the copies already loaded.
    """
    soname = cublas_soname(int(cp.cuda.cublas.getVersion(handle)))  # CuPy's own import loads cuBLAS first
    found = []
    try:
        from cuda import pathfinder  # a dependency of CuPy 14

        path = pathfinder.load_nvidia_dynamic_lib("cublas").abs_path
        if path:
            found.append(path)
    except Exception:  # noqa: S110 - no pathfinder, or it did not load cuBLAS: try the soname
        pass
    found.append(soname)
    return found


def _cublas_library(cp: Any, handle: int) -> Any:
    tried = []
    for path in _cublas_candidates(cp, handle):
        try:
            lib = _open_loaded(path)
        except OSError as exc:
            tried.append(f"{path}: {exc}")
            continue
        _declare(lib)
        return lib
    raise RuntimeError("cannot reach the libcublas that CuPy loaded (" + "; ".join(tried) + "). Run one CuPy "
                       "matmul on this device first, or fit with cuda_graph=False")


def _declare(lib: Any) -> None:
    import ctypes

    handle, i, p, size = ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
    lib.cublasSetStream_v2.argtypes = [handle, p]
    lib.cublasSetPointerMode_v2.argtypes = [handle, i]
    lib.cublasSetWorkspace_v2.argtypes = [handle, p, size]
    # cublasGemmEx(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
    #              computeType, algo)
    lib.cublasGemmEx.argtypes = [handle, i, i, i, i, i, p, p, i, i, p, i, i, p, p, i, i, i, i]


class _CublasDevice:
    """What a captured matmul needs on one device, taken before the capture starts."""

    def __init__(self, cp: Any, device_id: int) -> None:
        import ctypes

        with cp.cuda.Device(device_id):
            self.handle = int(cp.cuda.device.get_cublas_handle())  # cublasCreate runs here, not in the graph
            self.lib = _cublas_library(cp, self.handle)
            # Device.compute_capability is major and minor as one string ("80", "90", "120"; cupy/cuda/device.pyx)
            self.compute_capability = int(cp.cuda.Device(device_id).compute_capability)
            major = self.compute_capability // 10
            # a persistent workspace, outside any memory pool (cupy.cuda.memory.Memory is a plain cudaMalloc)
            self.workspace = cp.cuda.memory.Memory(_WORKSPACE_BYTES[major >= 9])
        status = self.lib.cublasSetWorkspace_v2(ctypes.c_void_p(self.handle), ctypes.c_void_p(self.workspace.ptr),
                                                self.workspace.size)
        _check_cublas(cp, status)

    def gemm_types(self, cp: Any, dtype: np.dtype) -> tuple[int, int, int]:
        """(cudaDataType, cublasComputeType, algo) as tensordot_core_v11 picks them for `dtype`."""
        enum = _cublas_enums(cp)
        linalg = cp._core._routines_linalg
        compute_type = cp._core.get_compute_type(dtype)
        if dtype == np.float32:
            if compute_type == linalg.COMPUTE_TYPE_PEDANTIC:
                compute = enum["CUBLAS_COMPUTE_32F_PEDANTIC"]
            elif compute_type == linalg.COMPUTE_TYPE_TF32:
                compute = enum["CUBLAS_COMPUTE_32F_FAST_TF32"]
            else:
                compute = enum["CUBLAS_COMPUTE_32F"]
            data = _CUDA_R_32F
        else:
            pedantic = compute_type == linalg.COMPUTE_TYPE_PEDANTIC
            compute = enum["CUBLAS_COMPUTE_64F_PEDANTIC" if pedantic else "CUBLAS_COMPUTE_64F"]
            data = _CUDA_R_64F
        algo = enum["CUBLAS_GEMM_DEFAULT_TENSOR_OP" if self.compute_capability >= 80 else "CUBLAS_GEMM_DEFAULT"]
        return data, compute, algo


def _cublas_enums(cp: Any) -> dict[str, int]:
    try:
        module = cp.cuda.cublas
    except Exception:
        module = None
    return {name: int(getattr(module, name, value)) for name, value in _CUBLAS_ENUMS.items()}


def _check_cublas(cp: Any, status: int) -> None:
    """Raise CuPy's own CUBLASError (so nnxp.backend.is_out_of_memory sees CUBLAS_STATUS_ALLOC_FAILED)."""
    if status:
        try:
            error = cp.cuda.cublas.CUBLASError
        except Exception:
            error = None
        if isinstance(error, type):
            raise error(status)
        raise RuntimeError(f"cuBLAS call failed with status {status}")


# per (thread, device): CuPy keeps one cuBLAS handle per thread and device (cupy/cuda/device.pyx
# get_cublas_handle), and the workspace belongs to the handle
_CUBLAS_DEVICES: dict[tuple[int, int], _CublasDevice] = {}


def _cublas_device(device_id: int) -> _CublasDevice:
    key = (threading.get_ident(), device_id)
    state = _CUBLAS_DEVICES.get(key)
    if state is None:
        state = _CUBLAS_DEVICES[key] = _CublasDevice(cupy_module(), device_id)
    return state


def _prepare_capture(device_id: int) -> None:
    """Everything cuBLAS must have before a capture on `device_id`: handle, library, workspace (see above)."""
    _cublas_device(device_id)


class capturing:  # noqa: N801 - used as a context manager, like a function
    """While active on this thread, the dense ops' matmuls go straight to cuBLAS (see above).

    Enter it on the capturing device before ``begin_capture``: entering prepares cuBLAS there.
    """

    def __enter__(self) -> capturing:
        self._previous = getattr(_capture, "active", False)
        _prepare_capture(int(cupy_module().cuda.Device().id))
        _capture.active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        _capture.active = self._previous


def _operand(a: Any) -> tuple[int, int] | None:
    """(cuBLAS op, leading dimension) of row-major `a` seen column-major: N for C order, T for a transpose."""
    if a.flags.c_contiguous:
        return 0, max(1, a.shape[1])  # CUBLAS_OP_N
    if a.flags.f_contiguous:
        return 1, max(1, a.shape[0])  # CUBLAS_OP_T
    return None


def _gemm(a: Any, b: Any, out: Any) -> Any:
    """out (m, n) = a (m, k) @ b (k, n) through cuBLAS on the current stream, as column-major C^T = B^T A^T."""
    import ctypes

    cp = cupy_module()
    op_a, op_b = _operand(a), _operand(b)
    if op_a is None or op_b is None or not out.flags.c_contiguous:
        raise RuntimeError("a captured matmul needs C- or F-contiguous operands and a C-contiguous output")
    dev = _CUBLAS_DEVICES.get((threading.get_ident(), int(out.device.id)))
    if dev is None:
        raise RuntimeError("cuBLAS was not prepared for this device before the capture (enter capturing() first)")
    lib, handle = dev.lib, ctypes.c_void_p(dev.handle)
    data, compute, algo = dev.gemm_types(cp, out.dtype)
    status = lib.cublasSetStream_v2(handle, ctypes.c_void_p(cp.cuda.get_current_stream().ptr))
    status = status or lib.cublasSetPointerMode_v2(handle, 0)  # alpha and beta are host values, read at capture
    (m, k), n = a.shape, b.shape[1]
    scalar = ctypes.c_double if compute in (_cublas_enums(cp)["CUBLAS_COMPUTE_64F"],
                                            _cublas_enums(cp)["CUBLAS_COMPUTE_64F_PEDANTIC"]) else ctypes.c_float
    one, zero = scalar(1.0), scalar(0.0)
    status = status or lib.cublasGemmEx(
        handle, op_b[0], op_a[0], n, m, k, ctypes.byref(one), ctypes.c_void_p(b.data.ptr), data, op_b[1],
        ctypes.c_void_p(a.data.ptr), data, op_a[1], ctypes.byref(zero), ctypes.c_void_p(out.data.ptr), data,
        max(1, n), compute, algo)
    _check_cublas(cp, status)
    return out


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """CuPy's matmul, or cuBLAS directly while a graph is being captured."""
    cp = cupy_module()
    if not getattr(_capture, "active", False):
        return cp.matmul(a, b, out=out)
    if out is None:
        out = cp.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return _gemm(a, b, out)
