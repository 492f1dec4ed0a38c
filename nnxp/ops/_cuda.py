"""The CUDA overrides: a lazy loader for ``kernels.cu`` and wrappers that match the references.

Each wrapper takes the same arguments as its ``*_ref`` and returns what it returns, or ``NotImplemented`` for
inputs its kernel does not handle (not CuPy, not float32/float64, not C-contiguous, empty, mixed devices), so
the dispatcher falls back to the reference. Nothing is compiled at import, and CuPy is reached only through
:func:`nnxp.backend.cupy_module` when a wrapper first runs on CuPy arrays.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import math
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import cupy_module, is_cupy_array, is_out_of_memory, xp_of
from .activation import ACTIVATION_OPS

# --- which ops run: the fused kernels, or the CuPy references (NNXP_KERNELS, or after a failed build) ----------

_MODES = ("fused", "reference")
_mode: str | None = None  # NNXP_KERNELS, read once on the first CUDA op (tests reset it to None)


class KernelUnavailable(RuntimeError):
    """kernels.cu cannot run here (NNXP_KERNELS=reference, or it failed to compile or load): use the reference."""


def kernel_mode() -> str:
    """``"fused"`` (the default) or ``"reference"`` (NNXP_KERNELS=reference: CuPy reference ops everywhere)."""
    global _mode
    if _mode is None:
        import os

        from ..errors import NnxpError

        value = os.environ.get("NNXP_KERNELS", "fused").strip().lower() or "fused"
        if value not in _MODES:
            raise NnxpError(f"`NNXP_KERNELS` must be one of {_MODES}. Received: NNXP_KERNELS={value!r}")
        _mode = value
    return _mode


def _fused(wrapper: Callable) -> Callable:
    """A CUDA wrapper that returns NotImplemented (so its caller runs the reference) when the kernels cannot run.

    A failed build raises before any kernel touches a buffer (every kernel of a dtype is in one module, built
    at the first launch), so the reference then starts from the caller's untouched inputs.
    """

    @functools.wraps(wrapper)
    def fused(*args: Any, **kwargs: Any) -> Any:
        if kernel_mode() == "reference":
            return NotImplemented
        try:
            return wrapper(*args, **kwargs)
        except KernelUnavailable:
            return NotImplemented

    return fused


def override(name: str, ref: Callable) -> Callable:
    """`ref` as a public op: this module's `name` for the CuPy arrays it handles, else `ref` itself.

    NumPy inputs pay one isinstance check; a wrapper returning NotImplemented falls back to `ref`.
    """

    @functools.wraps(ref)
    def op(*args: Any, **kwargs: Any) -> Any:
        if args and is_cupy_array(args[0]):
            result = globals()[name](*args, **kwargs)
            if result is not NotImplemented:
                return result
        return ref(*args, **kwargs)

    op.__name__ = op.__qualname__ = name
    return op


# Every kernel template in kernels.cu; CuPy instantiates each as name<float> or name<double>.
KERNELS = (
    "nnxp_bias_act_forward",
    "nnxp_softmax_forward",
    "nnxp_act_backward_bias",
    "nnxp_column_sum",
    "nnxp_softmax_backward",
    "nnxp_softmax_xent",
    "nnxp_sparse_softmax_xent",
    "nnxp_sigmoid_bce",
    "nnxp_sgd",
    "nnxp_rmsprop",
    "nnxp_adagrad",
    "nnxp_adadelta",
    "nnxp_adam",
    "nnxp_adamax",
    "nnxp_dropout_forward",
    "nnxp_dropout_backward",
)

# --fmad=false: no multiply-add contraction, so every step rounds as the reference's separate ufuncs do
# (the kernels are memory-bound; the FMA would buy nothing measurable).
NVRTC_OPTIONS = ("--fmad=false",)

# Activation codes of nnxp_bias_act_forward / nnxp_act_backward_bias (the NX_* defines in kernels.cu).
# Softmax has its own row kernels.
ACT_CODES = {
    "linear": 0,
    "relu": 1,
    "leaky_relu": 2,
    "elu": 3,
    "gelu": 4,
    "sigmoid": 5,
    "tanh": 6,
    "softplus": 7,
}

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_BLOCK = 256  # threads per block for the 1-D kernels (a multiple of 32: the reductions use whole warps)
_BLOCKS_PER_SM = 8  # grid cap for grid-stride kernels: 8 x 256 threads fill an SM; larger inputs loop
# Bias gradients of at most this many rows are summed in one pass (one block row per column tile, mode 1): at
# small batches a second launch (nnxp_column_sum) costs more than the extra rows each thread walks (<= 32 at 8
# rows of threads). Above it, two stages: per-block partial sums, then the column sum (issue 11, bias gradient).
_ONE_PASS_ROWS = 256


def _source() -> str:
    return importlib.resources.files(__package__).joinpath("kernels.cu").read_text(encoding="utf-8")


class LazyKernels:
    """Compiles ``kernels.cu`` into one RawModule per (device, dtype) on first use, and caches it.

    CuPy's on-disk kernel cache (``~/.cupy/kernel_cache`` or ``$CUPY_CACHE_DIR``) keeps the binary, so a
    later process only loads it. :meth:`compile_seconds` reports the wall time of each first build (NVRTC
    compile or cache load, plus module load), which benchmarks report apart from steady-state time.
    """

    def __init__(self, kernels: tuple[str, ...] = KERNELS, options: tuple[str, ...] = NVRTC_OPTIONS) -> None:
        self.kernels = kernels
        self.options = options
        self._lock = threading.Lock()
        self._modules: dict[tuple[int, str], Any] = {}  # kept alive while their kernels are in use
        self._functions: dict[tuple[int, str], dict[str, Any]] = {}
        self._seconds: dict[tuple[int, str], float] = {}
        self._failed: dict[tuple[int, str], str] = {}  # warned once; later requests take the reference at once
        self._sm_counts: dict[int, int] = {}
        self._resident: dict[tuple, int] = {}

    def function(self, name: str, dtype: np.dtype, device_id: int) -> Any:
        """The RawKernel ``name<T>`` for `dtype` on device `device_id` (built on first request).

        Raises KernelUnavailable when the module failed to build (warned once, see :meth:`_build`).
        """
        functions = self._functions.get((device_id, dtype.char))
        if functions is None:
            functions = self._build(dtype, device_id, name)
        return functions[name]

    def failures(self) -> dict[str, str]:
        """What failed to build, keyed ``"cuda:N/float32"``: the error (with NVRTC's log) per module."""
        return {f"cuda:{dev}/{np.dtype(char).name}": e for (dev, char), e in sorted(self._failed.items())}

    def _build(self, dtype: np.dtype, device_id: int, first: str = "") -> dict[str, Any]:
        cp = cupy_module()
        key = (device_id, dtype.char)
        with self._lock:
            if key in self._functions:
                return self._functions[key]
            if key in self._failed:
                raise KernelUnavailable(self._failed[key])
            ctype = _CTYPES[dtype]
            expressions = [f"{name}<{ctype}>" for name in self.kernels]
            start = time.perf_counter()
            try:
                with cp.cuda.Device(device_id):
                    module = cp.RawModule(code=_source(), options=self.options, name_expressions=expressions)
                    # get_function compiles (or loads from the cache) and loads the module on this device
                    functions = {name: module.get_function(f"{name}<{ctype}>") for name in self.kernels}
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                self._failed[key] = message = _build_failure(exc, f"{first or self.kernels[0]}<{ctype}>", device_id)
                warnings.warn(message, RuntimeWarning, stacklevel=5)
                raise KernelUnavailable(message) from exc
            self._seconds[key] = time.perf_counter() - start
            self._modules[key] = module
            self._functions[key] = functions
            return functions

    def resident_blocks(self, name: str, dtype: np.dtype, device_id: int, block: int) -> int:
        """Blocks of `block` threads of `name<T>` that one SM holds at once: CUDA's occupancy calculation for
        the compiled kernel (its registers and shared memory, bench/results/kernel-resources.md), asked through
        CuPy's driver binding; _BLOCKS_PER_SM where that query is unavailable (no driver API, a stand-in)."""
        key = (name, dtype.char, device_id, block)
        n = self._resident.get(key)
        if n is None:
            cp = cupy_module()
            try:
                with cp.cuda.Device(device_id):
                    ptr = self.function(name, dtype, device_id).kernel.ptr
                    n = int(cp.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(ptr, block, 0))
            except Exception:  # only a launch shape: never worth failing a step for
                n = _BLOCKS_PER_SM
            n = self._resident[key] = max(1, n)
        return n

    def sm_count(self, device_id: int) -> int:
        n = self._sm_counts.get(device_id)
        if n is None:
            n = self._sm_counts[device_id] = int(
                cupy_module().cuda.Device(device_id).attributes["MultiProcessorCount"]
            )
        return n

    def compile_seconds(self) -> dict[str, float]:
        """First-use build time per module, keyed ``"cuda:N/float32"``; empty until a kernel has run."""
        return {f"cuda:{dev}/{np.dtype(char).name}": s for (dev, char), s in sorted(self._seconds.items())}


def _build_failure(exc: BaseException, kernel: str, device_id: int) -> str:
    # CuPy's CompileException carries NVRTC's log as its message (cupy/cuda/compiler.py get_message)
    log = str(exc).strip() or type(exc).__name__
    if len(log) > 4000:
        log = log[:4000] + "\n[... log truncated]"
    return (f"nnxp: the CUDA kernel {kernel} (kernels.cu) failed to compile or load on cuda:{device_id} "
            f"({type(exc).__name__}). nnxp runs the CuPy reference ops instead (same results, slower). "
            f"NVRTC said:\n{log}\nRun `nnxp selftest --device cuda` for a full report.")


def nvrtc_check(arch: str = "compute_80") -> str:
    """Compile kernels.cu (every kernel, float and double) and an include of the CUDA runtime headers with NVRTC.

    Needs CuPy and NVRTC but no GPU (NVRTC compiles to PTX without a device), so a Docker build or a CI job can
    prove that an install can compile nnxp's kernels and CuPy's own (which include <cuda_fp16.h>, found as
    CuPy 14 finds it: cuda.pathfinder's header directory of the cudart wheel or toolkit). Returns a summary line;
    raises RuntimeError with NVRTC's log on failure.
    """
    cp = cupy_module()
    if cp is None:
        raise RuntimeError("CuPy is not installed")
    nvrtc = cp.cuda.nvrtc
    from cuda import pathfinder

    include = pathfinder.find_nvidia_header_directory("cudart")
    if include is None:
        raise RuntimeError('the CUDA runtime headers were not found; install nnxp with its CUDA extra '
                           '(pip install "nnxp[cuda12]") or a CUDA toolkit')
    # -ftz=true and --std=c++17 as CuPy's RawModule adds them (cupy/cuda/compiler.py)
    options = [*NVRTC_OPTIONS, "-ftz=true", "--std=c++17", f"--gpu-architecture={arch}", f"-I{include}"]
    prog = nvrtc.createProgram(_source() + "\n#include <cuda_fp16.h>\n", "kernels.cu", [], [])
    try:
        expressions = [f"{name}<{ctype}>" for ctype in _CTYPES.values() for name in KERNELS]
        for expression in expressions:
            nvrtc.addNameExpression(prog, expression)
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"NVRTC failed on kernels.cu: {exc}\n{nvrtc.getProgramLog(prog)}") from exc
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    major, minor = nvrtc.getVersion()
    return (f"NVRTC {major}.{minor} compiled {len(expressions)} kernels of kernels.cu for {arch} "
            f"({len(ptx)} bytes of PTX) with the CUDA headers in {include}")


_KERNELS = LazyKernels()


def compile_seconds() -> dict[str, float]:
    """First-call compile (or cache-load) time of each (device, dtype) module built so far."""
    return _KERNELS.compile_seconds()


# --- argument checks ---------------------------------------------------------------------------------------


def _dtype_of(x: Any) -> np.dtype | None:
    """x's dtype when x is a CuPy float32/float64 array, else None."""
    if not is_cupy_array(x) or x.dtype not in _CTYPES:
        return None
    return x.dtype


def _fits(a: Any, dtype: np.dtype, shape: tuple, device_id: int) -> bool:
    """a is a C-contiguous CuPy array of this dtype and shape on this device."""
    return (
        is_cupy_array(a)
        and a.dtype == dtype
        and a.shape == shape
        and a.flags.c_contiguous
        and a.device.id == device_id
    )


def _grid(n: int, device_id: int, block: int = _BLOCK) -> int:
    return max(1, min(-(-n // block), _BLOCKS_PER_SM * _KERNELS.sm_count(device_id)))


def _row_grid(rows: int, device_id: int) -> int:
    return max(1, min(rows, 4 * _BLOCKS_PER_SM * _KERNELS.sm_count(device_id)))


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


# --- matmul that also works while a CUDA graph is captured -----------------------------------------------------
#
# CuPy refuses every cuBLAS call on a capturing stream (its handle's setStream raises), although cuBLAS itself
# supports capture. So inside `capturing()` the dense ops call cublasGemmEx through ctypes, on CuPy's own handle
# and the very libcublas CuPy loaded, with the compute type and algorithm CuPy's eager matmul picks
# (cupy/_core/_routines_linalg.pyx tensordot_core_v11), so replayed and eager steps run the same GEMM.
# Entering `capturing()` (before begin_capture) takes the handle and gives it a persistent workspace, so
# neither cublasCreate nor a workspace allocation is recorded into the graph.

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


def _matmul(a: Any, b: Any, out: Any = None) -> Any:
    """CuPy's matmul, or cuBLAS directly while a graph is being captured."""
    cp = cupy_module()
    if not getattr(_capture, "active", False):
        return cp.matmul(a, b, out=out)
    if out is None:
        out = cp.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return _gemm(a, b, out)


_NOTHING = contextlib.nullcontext()


def _current(device_id: int) -> Any:
    """A `with` that makes `device_id` current: CuPy's Device context when another device is current, else
    nothing. Device.__exit__ calls cudaSetDevice even when the device never changed (cupy/cuda/device.pyx,
    Device.__enter__/__exit__), a runtime call per launch that a step on the current device does not need."""
    if cupy_module().cuda.runtime.getDevice() == device_id:
        return _NOTHING
    return cupy_module().cuda.Device(device_id)


# Scratch arrays of the fused kernels (the bias gradient's partial sums), kept per
# (device, stream, shape, dtype) so a step of fixed shape allocates them once; launches on one stream run in
# order, so one set per stream is never in use twice at a time. While a graph is captured they are made fresh
# instead (from the capture's private pool, which the graph keeps): a cached buffer could be reused by eager work
# after the capture's stream is gone and its handle reused.
_SCRATCH: dict[tuple, Any] = {}
_SCRATCH_MAX = 64  # distinct shapes (batch sizes x layers x dtypes); beyond it the cache starts over


def _scratch(what: str, shape: tuple, dtype: Any, dev: int) -> Any:
    cp = cupy_module()
    if getattr(_capture, "active", False):
        return cp.empty(shape, dtype=dtype)
    key = (what, dev, cp.cuda.get_current_stream().ptr, shape, np.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None:
        if len(_SCRATCH) >= _SCRATCH_MAX:
            _SCRATCH.clear()
        buf = _SCRATCH[key] = cp.empty(shape, dtype=dtype)
    return buf


def _launch(name: str, dtype: np.dtype, device_id: int, grid: tuple, block: tuple, args: tuple) -> None:
    kernel = _KERNELS.function(name, dtype, device_id)
    if len(grid) == 1:  # every 1-D kernel loops over its work: no more blocks than the SMs hold at once
        grid = (max(1, min(grid[0], _KERNELS.resident_blocks(name, dtype, device_id, block[0])
                           * _KERNELS.sm_count(device_id))),)
    with _current(device_id):
        kernel(grid, block, args)


# --- (a)/(b) dense: bias + activation, activation backward + bias gradient -------------------------------------


def _bias_activation(z: Any, b: Any | None, activation: str, z_keep: Any | None, device_id: int) -> None:
    """z (B, N) <- f(z + b) in place; z + b also into z_keep when given. Arguments already checked."""
    rows, cols = z.shape
    dtype = z.dtype
    has_bias = np.int32(b is not None)
    bias = b if b is not None else z  # any valid pointer; never read
    if activation == "softmax":
        block = min(_BLOCK, max(32, _next_pow2(cols)))
        args = (z, bias, np.int64(rows), np.int64(cols), has_bias)
        _launch("nnxp_softmax_forward", dtype, device_id, (_row_grid(rows, device_id),), (block,), args)
        return
    total = rows * cols
    zbuf = z_keep if z_keep is not None else z
    args = (z, bias, zbuf, np.int64(total), np.int64(cols), np.int32(ACT_CODES[activation]), has_bias,
            np.int32(z_keep is not None))
    _launch("nnxp_bias_act_forward", dtype, device_id, (_grid(total, device_id),), (_BLOCK,), args)


@_fused
def bias_activation_forward(z: Any, b: Any | None, activation: str, z_out: Any = None) -> Any:
    """``y = f(z + b)`` in place over `z` (B, N); returns ``(y, z_kept)`` as :func:`dense_forward` does.

    The tail of ``dense_forward_ref`` after its matmul; ``z_kept`` (z + b) is filled only for GELU.
    """
    dtype = _dtype_of(z)
    if dtype is None or z.ndim != 2 or z.size == 0 or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = z.device.id
    if not _fits(z, dtype, z.shape, dev):
        return NotImplemented
    if b is not None and not _fits(b, dtype, (z.shape[1],), dev):
        return NotImplemented
    needs_z = ACTIVATION_OPS[activation].needs_z
    if needs_z and z_out is not None and not _fits(z_out, dtype, z.shape, dev):
        return NotImplemented
    if needs_z and z_out is None:
        z_out = cupy_module().empty_like(z)
    _bias_activation(z, b, activation, z_out if needs_z else None, dev)
    return z, (z_out if needs_z else None)


@_fused
def dense_forward(x: Any, w: Any, b: Any | None, activation: str, out: Any = None, z_out: Any = None) -> Any:
    """Fused :func:`nnxp.ops.dense.dense_forward_ref`: cuBLAS matmul, then one bias + activation kernel."""
    dtype = _dtype_of(x)
    if dtype is None or x.ndim != 2 or not is_cupy_array(w) or w.dtype != dtype or w.ndim != 2:
        return NotImplemented
    if x.shape[1] != w.shape[0] or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = x.device.id
    shape = (x.shape[0], w.shape[1])
    if shape[0] * shape[1] == 0 or w.device.id != dev:
        return NotImplemented
    if b is not None and not _fits(b, dtype, (shape[1],), dev):
        return NotImplemented
    if out is not None and not _fits(out, dtype, shape, dev):
        return NotImplemented
    needs_z = ACTIVATION_OPS[activation].needs_z
    if needs_z and z_out is not None and not _fits(z_out, dtype, shape, dev):
        return NotImplemented
    cp = cupy_module()
    with _current(dev):
        z = _matmul(x, w, out=out)  # (B, n_out)
        if needs_z and z_out is None:
            z_out = cp.empty_like(z)
    _bias_activation(z, b, activation, z_out if needs_z else None, dev)
    return z, (z_out if needs_z else None)


def _activation_backward_bias(dy: Any, y: Any, z: Any | None, activation: str, db: Any | None, dev: int) -> None:
    rows, cols = dy.shape
    dtype = dy.dtype
    if activation == "softmax":
        block = min(_BLOCK, max(32, _next_pow2(cols)))
        args = (dy, y, np.int64(rows), np.int64(cols))
        _launch("nnxp_softmax_backward", dtype, dev, (_row_grid(rows, dev),), (block,), args)
        if db is not None:
            with _current(dev):
                dy.sum(axis=0, out=db)
        return
    code = ACT_CODES[activation]
    write_dz = code != ACT_CODES["linear"]
    if not write_dz and db is None:
        return  # linear without bias: dz is dy, nothing to do
    # columns on threadIdx.x (coalesced), rows on threadIdx.y and blockIdx.y; >= 4 rows per thread
    bx = min(32, _next_pow2(cols))
    by = _BLOCK // bx
    gx = -(-cols // bx)
    gy_max = -(-rows // (by * 4))
    gy = max(1, min(gy_max, -(-_BLOCKS_PER_SM * _KERNELS.sm_count(dev) // gx), 1024))
    if db is not None and rows <= _ONE_PASS_ROWS:
        gy = 1
    mode = 0 if db is None else (1 if gy == 1 else 2)
    if mode == 2:
        with _current(dev):
            out = _scratch("bias partials", (gy, cols), dtype, dev)
    else:
        out = db if db is not None else dy
    args = (dy, y if y is not None else dy, z if z is not None else dy, out, np.int64(rows), np.int64(cols),
            np.int32(code), np.int32(write_dz), np.int32(mode))
    _launch("nnxp_act_backward_bias", dtype, dev, (gx, gy), (bx, by), args)
    if mode == 2:
        args = (out, db, np.int64(gy), np.int64(cols))
        _launch("nnxp_column_sum", dtype, dev, (-(-cols // _BLOCK),), (_BLOCK,), args)


@_fused
def activation_backward_bias(dy: Any, y: Any, z: Any | None, activation: str, db: Any | None = None) -> Any:
    """``dy <- dy * f'(.)`` in place and ``db <- dz.sum(axis=0)`` in the same pass; returns dz (= dy)."""
    dtype = _dtype_of(dy)
    if dtype is None or dy.ndim != 2 or dy.size == 0 or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = dy.device.id
    if not _fits(dy, dtype, dy.shape, dev) or not _backward_inputs_fit(dy, y, z, activation, db, dtype, dev):
        return NotImplemented
    _activation_backward_bias(dy, y, z, activation, db, dev)
    return dy


def _backward_inputs_fit(dy, y, z, activation, db, dtype, dev) -> bool:
    if activation not in ("linear", "gelu") and not _fits(y, dtype, dy.shape, dev):
        return False
    if activation == "gelu" and not _fits(z, dtype, dy.shape, dev):
        return False
    return db is None or _fits(db, dtype, (dy.shape[1],), dev)


@_fused
def dense_backward(
    dy: Any,
    x: Any,
    w: Any,
    y: Any,
    z: Any | None,
    activation: str,
    dw: Any,
    db: Any | None,
    dx_out: Any = None,
    need_dx: bool = True,
) -> Any:
    """Fused :func:`nnxp.ops.dense.dense_backward_ref`: one kernel for dz and db, then the two matmuls."""
    dtype = _dtype_of(dy)
    if dtype is None or dy.ndim != 2 or dy.size == 0 or activation not in ACTIVATION_OPS:
        return NotImplemented
    dev = dy.device.id
    rows, cols = dy.shape
    if not _fits(dy, dtype, dy.shape, dev) or not _backward_inputs_fit(dy, y, z, activation, db, dtype, dev):
        return NotImplemented
    if not (is_cupy_array(x) and x.dtype == dtype and x.ndim == 2 and x.shape[0] == rows and x.device.id == dev):
        return NotImplemented
    n_in = x.shape[1]
    if not (is_cupy_array(w) and w.dtype == dtype and w.shape == (n_in, cols) and w.device.id == dev):
        return NotImplemented
    if not _fits(dw, dtype, (n_in, cols), dev):
        return NotImplemented
    if need_dx and dx_out is not None and not _fits(dx_out, dtype, (rows, n_in), dev):
        return NotImplemented
    _activation_backward_bias(dy, y, z, activation, db, dev)
    with _current(dev):
        _matmul(x.T, dy, out=dw)  # (n_in, n_out)
        if not need_dx:
            return None
        return _matmul(dy, w.T, out=dx_out)  # (B, n_in)


# --- (c) losses ---------------------------------------------------------------------------------------------


def _loss_launch(name: str, logits: Any, second: Any, grad: Any, rows_or_total: int, cols: int | None,
                 count: int, grid: int, dev: int) -> tuple[Any, Any]:
    cp = cupy_module()
    dtype = logits.dtype
    scalar = dtype.type
    with _current(dev):
        g = cp.empty_like(logits) if grad is None else grad
        # loss, partials and counter are made per launch: the loss is returned, and two launches in flight
        # must not share partials or tickets (tests/test_ops_cuda.py, the loss launches in flight)
        loss = cp.empty((), dtype=dtype)
        partials = cp.empty(grid, dtype=dtype)
        # The last-block ticket counter: one per launch, zeroed by a memset on this launch's stream (cupy.zeros
        # is memset_async on the current stream, cupy/_creation/basic.py), so a capture records it as a memset
        # node and every replay starts from 0. A counter shared by launches on two streams would mix their
        # tickets; one left non-zero by an aborted launch would poison every later call.
        counter = cp.zeros(1, dtype=np.uint32)
    sizes = (np.int64(rows_or_total),) if cols is None else (np.int64(rows_or_total), np.int64(cols))
    # 1.0 / n in double, then cast (as `g *= 1.0 / n`); the mean divides by T(n) (as `.sum() / n`)
    args = (logits, second, g, partials, counter, loss, *sizes, scalar(1.0 / count), scalar(count))
    _launch(name, dtype, dev, (grid,), (_BLOCK,), args)
    return loss, g


def _loss_inputs_fit(logits: Any, grad: Any) -> np.dtype | None:
    dtype = _dtype_of(logits)
    if dtype is None or logits.ndim != 2 or logits.size == 0:
        return None
    dev = logits.device.id
    if not _fits(logits, dtype, logits.shape, dev):
        return None
    if grad is not None and not _fits(grad, dtype, logits.shape, dev):
        return None
    return dtype


@_fused
def softmax_cross_entropy(logits: Any, target: Any, grad: Any = None) -> Any:
    """Fused :func:`nnxp.ops.loss.softmax_cross_entropy_ref` (one warp per row, one launch)."""
    dtype = _loss_inputs_fit(logits, grad)
    if dtype is None or not _fits(target, dtype, logits.shape, logits.device.id):
        return NotImplemented
    rows, cols = logits.shape
    dev = logits.device.id
    grid = _grid(rows, dev, _BLOCK // 32)
    return _loss_launch("nnxp_softmax_xent", logits, target, grad, rows, cols, rows, grid, dev)


@_fused
def sparse_softmax_cross_entropy(logits: Any, labels: Any, grad: Any = None) -> Any:
    """Fused :func:`nnxp.ops.loss.sparse_softmax_cross_entropy_ref` for int64 labels (B,)."""
    dtype = _loss_inputs_fit(logits, grad)
    if dtype is None:
        return NotImplemented
    rows, cols = logits.shape
    dev = logits.device.id
    if not _fits(labels, np.dtype(np.int64), (rows,), dev):
        return NotImplemented
    grid = _grid(rows, dev, _BLOCK // 32)
    return _loss_launch("nnxp_sparse_softmax_xent", logits, labels, grad, rows, cols, rows, grid, dev)


@_fused
def sigmoid_binary_cross_entropy(logits: Any, target: Any, grad: Any = None) -> Any:
    """Fused :func:`nnxp.ops.loss.sigmoid_binary_cross_entropy_ref` (mean over all elements)."""
    dtype = _loss_inputs_fit(logits, grad)
    if dtype is None or not _fits(target, dtype, logits.shape, logits.device.id):
        return NotImplemented
    dev = logits.device.id
    total = logits.size
    return _loss_launch("nnxp_sigmoid_bce", logits, target, grad, total, None, total, _grid(total, dev), dev)


# --- (d) optimizers: the references' signatures plus the decoupled weight decay, folded in ------------------
#
# Hyper-parameters reach the kernels as T scalars computed in double exactly as the references compute the
# Python floats they multiply by (`tmp *= 1.0 - rho` is T(1.0 - rho)); `decay` = 1 - lr * weight_decay is
# weight_decay_ref's factor (1.0, an exact no-op, without decay). The *_scalars functions are shared with the
# host check of the element math in tests/test_ops_cuda_compile.py.


def sgd_scalars(dtype, lr, momentum, nesterov, has_velocity, weight_decay=0.0) -> tuple:
    t = np.dtype(dtype).type
    mode = 0 if not has_velocity else (2 if nesterov else 1)
    return t(lr), t(momentum), t(1.0 - lr * weight_decay), np.int32(mode)


def rmsprop_scalars(dtype, lr, rho, momentum, epsilon, has_mom, centered, weight_decay=0.0) -> tuple:
    t = np.dtype(dtype).type
    return (t(lr), t(rho), t(1.0 - rho), t(momentum), t(epsilon), t(1.0 - lr * weight_decay), np.int32(has_mom),
            np.int32(centered))


def adagrad_scalars(dtype, lr, epsilon, weight_decay=0.0) -> tuple:
    t = np.dtype(dtype).type
    return t(lr), t(epsilon), t(1.0 - lr * weight_decay)


def adadelta_scalars(dtype, lr, rho, epsilon, weight_decay=0.0) -> tuple:
    t = np.dtype(dtype).type
    return t(lr), t(rho), t(1.0 - rho), t(epsilon), t(1.0 - lr * weight_decay)


def inverse_step_size(alpha: float) -> float:
    """1 / alpha for the Adam-style ``p -= m / ((denominator) * (1 / alpha))``; inf when a schedule reaches a
    learning rate of 0, which makes the step exactly 0 (m / inf) instead of dividing by zero."""
    return 1.0 / alpha if alpha else math.inf


def adam_scalars(dtype, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0) -> tuple:
    t = np.dtype(dtype).type
    alpha = lr * (1.0 - beta_2**step) ** 0.5 / (1.0 - beta_1**step)  # exactly as adam_ref
    return t(1.0 - beta_1), t(1.0 - beta_2), t(epsilon), t(inverse_step_size(alpha)), t(1.0 - lr * weight_decay)


def adamax_scalars(dtype, lr, beta_1, beta_2, epsilon, step, weight_decay=0.0) -> tuple:
    t = np.dtype(dtype).type
    alpha = lr / (1.0 - beta_1**step)  # exactly as adamax_ref
    return t(1.0 - beta_1), t(beta_2), t(epsilon), t(inverse_step_size(alpha)), t(1.0 - lr * weight_decay)


def _flat_fit(p: Any, *others: Any) -> np.dtype | None:
    """p and every non-None other: C-contiguous CuPy arrays of one float dtype, size and device."""
    dtype = _dtype_of(p)
    if dtype is None or p.size == 0:
        return None
    dev = p.device.id
    for a in (p, *others):
        if a is not None and not _fits(a, dtype, p.shape, dev):
            return None
    return dtype


def step_scalars(op: str, dtype: Any, *args: Any, weight_decay: float = 0.0) -> tuple:
    """The kernel scalars of optimizer op `op` called as ``op(p, g, *args)`` (the references' arguments)."""
    if op == "sgd":
        velocity, _tmp, lr, momentum, nesterov = args
        return sgd_scalars(dtype, lr, momentum, nesterov, velocity is not None, weight_decay)
    if op == "rmsprop":
        _avg_sq, mom, avg_g, _tmp, lr, rho, momentum, epsilon = args
        return rmsprop_scalars(dtype, lr, rho, momentum, epsilon, mom is not None, avg_g is not None, weight_decay)
    if op == "adagrad":
        _acc, _tmp, lr, epsilon = args
        return adagrad_scalars(dtype, lr, epsilon, weight_decay)
    if op == "adadelta":
        _acc_g, _acc_dx, _tmp, lr, rho, epsilon = args
        return adadelta_scalars(dtype, lr, rho, epsilon, weight_decay)
    if op in ("adam", "adamax"):
        _m, _v, _tmp, lr, beta_1, beta_2, epsilon, step = args
        scalars = adam_scalars if op == "adam" else adamax_scalars
        return scalars(dtype, lr, beta_1, beta_2, epsilon, step, weight_decay)
    raise ValueError(f"no fused optimizer op {op!r}")


def device_scalars(scalars: tuple) -> tuple:
    """The floating-point entries of a ``*_scalars`` tuple: what a kernel reads from `hp` when it is given."""
    return tuple(x for x in scalars if isinstance(x, np.floating))


def _hp_fits(hp: Any, p: Any, scalars: tuple) -> bool:
    return hp is None or (
        is_cupy_array(hp) and hp.dtype == p.dtype and hp.ndim == 1 and hp.size >= len(device_scalars(scalars))
        and hp.flags.c_contiguous and hp.device.id == p.device.id
    )


def _step(name: str, p: Any, args: tuple, hp: Any) -> None:
    dev = p.device.id
    _launch(name, p.dtype, dev, (_grid(p.size, dev),), (_BLOCK,), (*args, hp))


# Each takes `hp`: None, or a device array the kernel reads its floating-point scalars from (see kernels.cu;
# device_scalars of the matching *_scalars tuple gives the values), for steps replayed in a CUDA graph.


@_fused
def sgd(p, g, velocity, tmp, lr, momentum, nesterov, weight_decay: float = 0.0, hp: Any = None):
    """Fused :func:`nnxp.ops.optim.sgd_ref` (`tmp` is not needed); returns None, or NotImplemented."""
    dtype = _flat_fit(p, g, velocity)
    scalars = None if dtype is None else step_scalars("sgd", dtype, velocity, tmp, lr, momentum, nesterov,
                                                      weight_decay=weight_decay)
    if dtype is None or not _hp_fits(hp, p, scalars):
        return NotImplemented
    v = velocity if velocity is not None else p  # never read without momentum
    _step("nnxp_sgd", p, (p, g, v, np.int64(p.size), *scalars), hp)
    return None


@_fused
def rmsprop(p, g, avg_sq, mom, avg_g, tmp, lr, rho, momentum, epsilon, weight_decay: float = 0.0, hp: Any = None):
    """Fused :func:`nnxp.ops.optim.rmsprop_ref` (plain, momentum, centered, or both)."""
    dtype = _flat_fit(p, g, avg_sq, mom, avg_g)
    if dtype is None or avg_sq is None:
        return NotImplemented
    scalars = step_scalars("rmsprop", dtype, avg_sq, mom, avg_g, tmp, lr, rho, momentum, epsilon,
                           weight_decay=weight_decay)
    if not _hp_fits(hp, p, scalars):
        return NotImplemented
    m = mom if mom is not None else p
    a = avg_g if avg_g is not None else p
    _step("nnxp_rmsprop", p, (p, g, avg_sq, m, a, np.int64(p.size), *scalars), hp)
    return None


@_fused
def adagrad(p, g, acc, tmp, lr, epsilon, weight_decay: float = 0.0, hp: Any = None):
    """Fused :func:`nnxp.ops.optim.adagrad_ref`."""
    dtype = _flat_fit(p, g, acc)
    if dtype is None or acc is None:
        return NotImplemented
    scalars = step_scalars("adagrad", dtype, acc, tmp, lr, epsilon, weight_decay=weight_decay)
    if not _hp_fits(hp, p, scalars):
        return NotImplemented
    _step("nnxp_adagrad", p, (p, g, acc, np.int64(p.size), *scalars), hp)
    return None


@_fused
def adadelta(p, g, acc_g, acc_dx, tmp, lr, rho, epsilon, weight_decay: float = 0.0, hp: Any = None):
    """Fused :func:`nnxp.ops.optim.adadelta_ref`."""
    dtype = _flat_fit(p, g, acc_g, acc_dx)
    if dtype is None or acc_g is None or acc_dx is None:
        return NotImplemented
    scalars = step_scalars("adadelta", dtype, acc_g, acc_dx, tmp, lr, rho, epsilon, weight_decay=weight_decay)
    if not _hp_fits(hp, p, scalars):
        return NotImplemented
    _step("nnxp_adadelta", p, (p, g, acc_g, acc_dx, np.int64(p.size), *scalars), hp)
    return None


@_fused
def adam(p, g, m, v, tmp, lr, beta_1, beta_2, epsilon, step, weight_decay: float = 0.0, hp: Any = None):
    """Fused :func:`nnxp.ops.optim.adam_ref` (bias correction folded into one host-side factor)."""
    dtype = _flat_fit(p, g, m, v)
    if dtype is None or m is None or v is None:
        return NotImplemented
    scalars = step_scalars("adam", dtype, m, v, tmp, lr, beta_1, beta_2, epsilon, step, weight_decay=weight_decay)
    if not _hp_fits(hp, p, scalars):
        return NotImplemented
    _step("nnxp_adam", p, (p, g, m, v, np.int64(p.size), *scalars), hp)
    return None


@_fused
def adamax(p, g, m, u, tmp, lr, beta_1, beta_2, epsilon, step, weight_decay: float = 0.0, hp: Any = None):
    """Fused :func:`nnxp.ops.optim.adamax_ref`."""
    dtype = _flat_fit(p, g, m, u)
    if dtype is None or m is None or u is None:
        return NotImplemented
    scalars = step_scalars("adamax", dtype, m, u, tmp, lr, beta_1, beta_2, epsilon, step,
                           weight_decay=weight_decay)
    if not _hp_fits(hp, p, scalars):
        return NotImplemented
    _step("nnxp_adamax", p, (p, g, m, u, np.int64(p.size), *scalars), hp)
    return None


# --- (e) dropout with a counter-based mask ------------------------------------------------------------------
#
# `seed` is either a Python int (the mask's seed itself) or a device "state": a C-contiguous (2,) uint64 array
# holding (layer seed, step counter). With a state the kernels use nx_hash(seed, step) as the mask's seed, read
# on the device, so a captured CUDA graph that bumps the counter draws a new mask on every replay.

_U64 = np.uint64
_M64 = 2**64 - 1
_GAMMA, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def step_seed(seed: int, step: int) -> int:
    """nx_hash(seed, step) of kernels.cu in Python integers: the mask seed of a state (seed, step)."""
    z = (seed + (step + 1) * _GAMMA) & _M64
    z = ((z ^ (z >> 30)) * _MIX1) & _M64
    z = ((z ^ (z >> 27)) * _MIX2) & _M64
    return z ^ (z >> 31)


def _hash(xp: Any, seed: Any, offset: Any) -> Any:
    """nx_hash over uint64 arrays (wrapping arithmetic; arrays, so NumPy warns of no scalar overflow)."""
    z = seed + (offset + _U64(1)) * _U64(_GAMMA)
    z = (z ^ (z >> _U64(30))) * _U64(_MIX1)
    z = (z ^ (z >> _U64(27))) * _U64(_MIX2)
    return z ^ (z >> _U64(31))


def _is_state(seed: Any) -> bool:
    return hasattr(seed, "dtype") and hasattr(seed, "shape")


def dropout_mask_ref(xp: Any, n: int, rate: float, seed: Any, dtype: Any) -> Any:
    """The kernels' mask, generic over NumPy / CuPy: scale where splitmix64(seed, i) gives u >= rate, else 0.

    `seed` is an int or a (2,) uint64 state (seed, step) on `xp`'s device; the state is hashed there, with no
    host read, so this reference also runs inside a CUDA graph capture. The hash is integer arithmetic and u
    takes the top 24 (float32) or 53 (float64) bits exactly, so this equals the device mask bit for bit.
    """
    dtype = np.dtype(dtype)
    if _is_state(seed):
        base = _hash(xp, seed[0:1], seed[1:2])  # (1,): broadcasts over the offsets
    else:
        base = xp.asarray(np.full(1, int(seed) % 2**64, dtype=np.uint64))
    z = _hash(xp, base, xp.arange(n, dtype=np.uint64))
    if dtype == np.float32:
        u = (z >> _U64(40)).astype(np.float32) * np.float32(2.0**-24)
    else:
        u = (z >> _U64(11)).astype(np.float64) * (2.0**-53)
    keep = u >= dtype.type(rate)
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


def dropout_forward_ref(x: Any, rate: float, seed: Any, out: Any = None, mask_out: Any = None) -> tuple[Any, Any]:
    """``y = x * mask`` with :func:`dropout_mask_ref`; returns ``(y, mask)``."""
    xp = xp_of(x)
    mask = dropout_mask_ref(xp, x.size, rate, seed, x.dtype).reshape(x.shape)
    if mask_out is not None:
        mask_out[...] = mask
        mask = mask_out
    return xp.multiply(x, mask, out=out), mask


def dropout_backward_ref(dy: Any, rate: float, seed: Any, out: Any = None) -> Any:
    """``dx = dy * mask`` with the mask regenerated from (seed, offset)."""
    xp = xp_of(dy)
    return xp.multiply(dy, dropout_mask_ref(xp, dy.size, rate, seed, dy.dtype).reshape(dy.shape), out=out)


def _dropout_args_fit(x: Any, rate: float, seed: Any, out: Any) -> np.dtype | None:
    dtype = _dtype_of(x)
    if dtype is None or x.size == 0 or not (0.0 <= rate < 1.0):
        return None
    dev = x.device.id
    if not _fits(x, dtype, x.shape, dev) or (out is not None and not _fits(out, dtype, x.shape, dev)):
        return None
    if _is_state(seed) and not _fits(seed, np.dtype(np.uint64), (2,), dev):
        return None
    return dtype


def _seed_args(seed: Any) -> tuple[Any, Any]:
    """(by-value seed, state pointer) for the kernels: the state wins when given."""
    if _is_state(seed):
        return _U64(0), seed
    return _U64(int(seed) % 2**64), None


@_fused
def dropout_forward(x: Any, rate: float, seed: Any, out: Any = None, mask_out: Any = None) -> Any:
    """Fused :func:`dropout_forward_ref`: hash, compare, scale and multiply in one pass.

    `seed` must change every step (an int: e.g. base seed + iteration; a state: bump its counter); the mask is
    stored only when `mask_out` is given, since :func:`dropout_backward` regenerates it from (seed, offset).
    """
    dtype = _dropout_args_fit(x, rate, seed, out)
    if dtype is None or (mask_out is not None and not _fits(mask_out, dtype, x.shape, x.device.id)):
        return NotImplemented
    dev = x.device.id
    cp = cupy_module()
    with _current(dev):
        y = cp.empty_like(x) if out is None else out
    t = dtype.type
    value, state = _seed_args(seed)
    args = (x, y, mask_out if mask_out is not None else y, np.int64(x.size), value, t(rate),
            t(1.0 / (1.0 - rate)), np.int32(mask_out is not None), state)
    _launch("nnxp_dropout_forward", dtype, dev, (_grid(x.size, dev),), (_BLOCK,), args)
    return y, mask_out


@_fused
def dropout_backward(dy: Any, rate: float, seed: Any, out: Any = None) -> Any:
    """Fused :func:`dropout_backward_ref`; `out` may be `dy` itself."""
    dtype = _dropout_args_fit(dy, rate, seed, out)
    if dtype is None:
        return NotImplemented
    dev = dy.device.id
    cp = cupy_module()
    with _current(dev):
        dx = cp.empty_like(dy) if out is None else out
    t = dtype.type
    value, state = _seed_args(seed)
    args = (dy, dx, np.int64(dy.size), value, t(rate), t(1.0 / (1.0 - rate)), state)
    _launch("nnxp_dropout_backward", dtype, dev, (_grid(dy.size, dev),), (_BLOCK,), args)
    return dx


# The dispatchers the Dropout layer calls: the kernels for the CuPy arrays they take, else the references.
dropout = override("dropout_forward", dropout_forward_ref)
dropout_grad = override("dropout_backward", dropout_backward_ref)
