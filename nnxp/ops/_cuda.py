"""The CUDA overrides: a lazy loader for ``kernels.cu`` and wrappers that match the references.

Each wrapper takes the same arguments as its ``*_ref`` and returns what it returns, or ``NotImplemented`` for
inputs its kernel does not handle (not CuPy, not float32/float64, not C-contiguous, empty, mixed devices), so
the dispatcher falls back to the reference. Nothing is compiled at import, and CuPy is reached only through
:func:`nnxp.backend.cupy_module` when a wrapper first runs on CuPy arrays.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import cupy_module, is_cupy_array, tf32_active, xp_of
from .activation import ACTIVATION_OPS


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
        self._counters: dict[int, Any] = {}
        self._sm_counts: dict[int, int] = {}
        self._resident: dict[tuple, int] = {}

    def function(self, name: str, dtype: np.dtype, device_id: int) -> Any:
        """The RawKernel ``name<T>`` for `dtype` on device `device_id` (built on first request)."""
        functions = self._functions.get((device_id, dtype.char))
        if functions is None:
            functions = self._build(dtype, device_id)
        return functions[name]

    def _build(self, dtype: np.dtype, device_id: int) -> dict[str, Any]:
        cp = cupy_module()
        key = (device_id, dtype.char)
        with self._lock:
            if key in self._functions:
                return self._functions[key]
            ctype = _CTYPES[dtype]
            expressions = [f"{name}<{ctype}>" for name in self.kernels]
            start = time.perf_counter()
            with cp.cuda.Device(device_id):
                module = cp.RawModule(code=_source(), options=self.options, name_expressions=expressions)
                # get_function compiles (or loads from the cache) and loads the module on this device
                functions = {name: module.get_function(f"{name}<{ctype}>") for name in self.kernels}
            self._seconds[key] = time.perf_counter() - start
            self._modules[key] = module
            self._functions[key] = functions
            return functions

    def counter(self, device_id: int) -> Any:
        """A zeroed uint32 ticket counter on the device for the losses' last-block finish.

        The kernels leave it at zero again, so one per device serves every launch on one stream.
        """
        c = self._counters.get(device_id)
        if c is None:
            cp = cupy_module()
            with cp.cuda.Device(device_id):
                c = self._counters[device_id] = cp.zeros(1, dtype=np.uint32)
        return c

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
# supports capture. So inside `capturing()` the dense ops call cublas<S|D>gemm_v2 through ctypes on CuPy's own
# handle (its library is already loaded by then: warm-up steps ran CuPy matmuls), bound to the capturing stream.

_capture = threading.local()


class capturing:  # noqa: N801 - used as a context manager, like a function
    """While active on this thread, the dense ops' matmuls go straight to cuBLAS (see above)."""

    def __enter__(self) -> capturing:
        self._previous = getattr(_capture, "active", False)
        _capture.active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        _capture.active = self._previous


class _Cublas:
    """libcublas as CuPy loaded it, found in this process's memory map (Linux)."""

    _lib: Any = None

    @classmethod
    def library(cls) -> Any:
        if cls._lib is None:
            import ctypes

            paths = []
            with open("/proc/self/maps", encoding="utf-8") as maps:
                for line in maps:
                    path = line.split()[-1] if len(line.split()) >= 6 else ""
                    if "/libcublas.so" in path and path not in paths:
                        paths.append(path)
            if not paths:
                raise RuntimeError("libcublas is not loaded in this process (run one CuPy matmul first)")
            lib = ctypes.CDLL(paths[0])
            handle, op, i, p = ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p
            lib.cublasSetStream_v2.argtypes = [handle, p]
            lib.cublasSetPointerMode_v2.argtypes = [handle, op]
            lib.cublasSetMathMode.argtypes = [handle, op]
            for name in ("cublasSgemm_v2", "cublasDgemm_v2"):
                getattr(lib, name).argtypes = [handle, op, op, i, i, i, p, p, i, p, i, p, p, i]
            cls._lib = lib
        return cls._lib


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
    lib = _Cublas.library()
    handle = ctypes.c_void_p(cp.cuda.device.get_cublas_handle())
    status = lib.cublasSetStream_v2(handle, ctypes.c_void_p(cp.cuda.get_current_stream().ptr))
    status = status or lib.cublasSetPointerMode_v2(handle, 0)  # alpha and beta are host values, read at capture
    tf32 = out.dtype == np.float32 and tf32_active()  # as CuPy's matmul would run inside Device.use(tf32=True)
    status = status or lib.cublasSetMathMode(handle, 3 if tf32 else 0)  # CUBLAS_TF32_TENSOR_OP_MATH / DEFAULT
    (m, k), n = a.shape, b.shape[1]
    scalar = ctypes.c_float if out.dtype == np.float32 else ctypes.c_double
    one, zero = scalar(1.0), scalar(0.0)
    gemm = lib.cublasSgemm_v2 if out.dtype == np.float32 else lib.cublasDgemm_v2
    status = status or gemm(handle, op_b[0], op_a[0], n, m, k, ctypes.byref(one), ctypes.c_void_p(b.data.ptr),
                            op_b[1], ctypes.c_void_p(a.data.ptr), op_a[1], ctypes.byref(zero),
                            ctypes.c_void_p(out.data.ptr), max(1, n))
    lib.cublasSetMathMode(handle, 0)  # back to CUBLAS_DEFAULT_MATH for CuPy's own calls
    if status:
        raise RuntimeError(f"cuBLAS gemm failed with status {status}")
    return out


def _matmul(a: Any, b: Any, out: Any = None) -> Any:
    """CuPy's matmul, or cuBLAS directly while a graph is being captured."""
    cp = cupy_module()
    if not getattr(_capture, "active", False):
        return cp.matmul(a, b, out=out)
    if out is None:
        out = cp.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    return _gemm(a, b, out)


def _launch(name: str, dtype: np.dtype, device_id: int, grid: tuple, block: tuple, args: tuple) -> None:
    kernel = _KERNELS.function(name, dtype, device_id)
    if len(grid) == 1:  # every 1-D kernel loops over its work: no more blocks than the SMs hold at once
        grid = (max(1, min(grid[0], _KERNELS.resident_blocks(name, dtype, device_id, block[0])
                           * _KERNELS.sm_count(device_id))),)
    with cupy_module().cuda.Device(device_id):
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
    with cp.cuda.Device(dev):
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
            with cupy_module().cuda.Device(dev):
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
    mode = 0 if db is None else (1 if gy == 1 else 2)
    if mode == 2:
        with cupy_module().cuda.Device(dev):
            out = cupy_module().empty((gy, cols), dtype=dtype)
    else:
        out = db if db is not None else dy
    args = (dy, y if y is not None else dy, z if z is not None else dy, out, np.int64(rows), np.int64(cols),
            np.int32(code), np.int32(write_dz), np.int32(mode))
    _launch("nnxp_act_backward_bias", dtype, dev, (gx, gy), (bx, by), args)
    if mode == 2:
        args = (out, db, np.int64(gy), np.int64(cols))
        _launch("nnxp_column_sum", dtype, dev, (-(-cols // _BLOCK),), (_BLOCK,), args)


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
    cp = cupy_module()
    with cp.cuda.Device(dev):
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
    with cp.cuda.Device(dev):
        g = cp.empty_like(logits) if grad is None else grad
        loss = cp.empty((), dtype=dtype)
        partials = cp.empty(grid, dtype=dtype)
    sizes = (np.int64(rows_or_total),) if cols is None else (np.int64(rows_or_total), np.int64(cols))
    # 1.0 / n in double, then cast (as `g *= 1.0 / n`); the mean divides by T(n) (as `.sum() / n`)
    args = (logits, second, g, partials, _KERNELS.counter(dev), loss, *sizes, scalar(1.0 / count), scalar(count))
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


def softmax_cross_entropy(logits: Any, target: Any, grad: Any = None) -> Any:
    """Fused :func:`nnxp.ops.loss.softmax_cross_entropy_ref` (one warp per row, one launch)."""
    dtype = _loss_inputs_fit(logits, grad)
    if dtype is None or not _fits(target, dtype, logits.shape, logits.device.id):
        return NotImplemented
    rows, cols = logits.shape
    dev = logits.device.id
    grid = _grid(rows, dev, _BLOCK // 32)
    return _loss_launch("nnxp_softmax_xent", logits, target, grad, rows, cols, rows, grid, dev)


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

_U64 = np.uint64


def dropout_mask_ref(xp: Any, n: int, rate: float, seed: int, dtype: Any) -> Any:
    """The kernels' mask, generic over NumPy / CuPy: scale where splitmix64(seed, i) gives u >= rate, else 0.

    The hash is integer arithmetic and u takes the top 24 (float32) or 53 (float64) bits exactly, so this
    equals the device mask bit for bit.
    """
    dtype = np.dtype(dtype)
    i = xp.arange(n, dtype=np.uint64)
    z = _U64(seed % 2**64) + (i + _U64(1)) * _U64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    z = z ^ (z >> _U64(31))
    if dtype == np.float32:
        u = (z >> _U64(40)).astype(np.float32) * np.float32(2.0**-24)
    else:
        u = (z >> _U64(11)).astype(np.float64) * (2.0**-53)
    keep = u >= dtype.type(rate)
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - rate))


def dropout_forward_ref(x: Any, rate: float, seed: int, out: Any = None, mask_out: Any = None) -> tuple[Any, Any]:
    """``y = x * mask`` with :func:`dropout_mask_ref`; returns ``(y, mask)``."""
    xp = xp_of(x)
    mask = dropout_mask_ref(xp, x.size, rate, seed, x.dtype).reshape(x.shape)
    if mask_out is not None:
        mask_out[...] = mask
        mask = mask_out
    return xp.multiply(x, mask, out=out), mask


def dropout_backward_ref(dy: Any, rate: float, seed: int, out: Any = None) -> Any:
    """``dx = dy * mask`` with the mask regenerated from (seed, offset)."""
    xp = xp_of(dy)
    return xp.multiply(dy, dropout_mask_ref(xp, dy.size, rate, seed, dy.dtype).reshape(dy.shape), out=out)


def _dropout_args_fit(x: Any, rate: float, out: Any) -> np.dtype | None:
    dtype = _dtype_of(x)
    if dtype is None or x.size == 0 or not (0.0 <= rate < 1.0):
        return None
    dev = x.device.id
    if not _fits(x, dtype, x.shape, dev) or (out is not None and not _fits(out, dtype, x.shape, dev)):
        return None
    return dtype


def dropout_forward(x: Any, rate: float, seed: int, out: Any = None, mask_out: Any = None) -> Any:
    """Fused :func:`dropout_forward_ref`: hash, compare, scale and multiply in one pass.

    `seed` must change every step (e.g. base seed + iteration); the mask is stored only when `mask_out` is
    given, since :func:`dropout_backward` regenerates it from (seed, offset) for free.
    """
    dtype = _dropout_args_fit(x, rate, out)
    if dtype is None or (mask_out is not None and not _fits(mask_out, dtype, x.shape, x.device.id)):
        return NotImplemented
    dev = x.device.id
    cp = cupy_module()
    with cp.cuda.Device(dev):
        y = cp.empty_like(x) if out is None else out
    t = dtype.type
    args = (x, y, mask_out if mask_out is not None else y, np.int64(x.size), _U64(seed % 2**64), t(rate),
            t(1.0 / (1.0 - rate)), np.int32(mask_out is not None))
    _launch("nnxp_dropout_forward", dtype, dev, (_grid(x.size, dev),), (_BLOCK,), args)
    return y, mask_out


def dropout_backward(dy: Any, rate: float, seed: int, out: Any = None) -> Any:
    """Fused :func:`dropout_backward_ref`; `out` may be `dy` itself."""
    dtype = _dropout_args_fit(dy, rate, out)
    if dtype is None:
        return NotImplemented
    dev = dy.device.id
    cp = cupy_module()
    with cp.cuda.Device(dev):
        dx = cp.empty_like(dy) if out is None else out
    t = dtype.type
    args = (dy, dx, np.int64(dy.size), _U64(seed % 2**64), t(rate), t(1.0 / (1.0 - rate)))
    _launch("nnxp_dropout_backward", dtype, dev, (_grid(dy.size, dev),), (_BLOCK,), args)
    return dx
