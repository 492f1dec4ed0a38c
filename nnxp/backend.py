"""The array-module shim: NumPy on the CPU, CuPy on CUDA GPUs.

This is the only module that imports CuPy and the only one that branches on
NumPy versus CuPy. Everything else asks a :class:`Device` for its ``xp`` (the
array module) or calls :func:`xp_of` on an array.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import numpy as np

from .errors import DeviceError, DeviceTypeError

_CUPY_IMPORT_ERROR: Exception | None = None
try:  # CuPy is optional: importing nnxp never fails without it.
    import cupy as _cupy
except ImportError:  # pragma: no cover - depends on the machine
    _cupy = None
except Exception as exc:  # pragma: no cover - a broken CUDA install
    _cupy = None
    _CUPY_IMPORT_ERROR = exc

# The extras pull CuPy with its `ctk` extra (NVRTC, cuBLAS, the runtime headers as NVIDIA wheels); a bare
# `pip install cupy-cuda12x` has none of them and fails at the first kernel compile.
_INSTALL_HINT = ('install CuPy with the CUDA libraries it needs: `pip install "nnxp[cuda12]"` for a CUDA 12 '
                 'driver or `pip install "nnxp[cuda13]"` for CUDA 13 (`nvidia-smi` shows which), then run '
                 '`nnxp selftest --device cuda`')
_SPEC_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def cupy_module() -> Any | None:
    """The imported CuPy module, or None when CuPy is not installed."""
    return _cupy


def nccl_module() -> Any | None:
    """CuPy's NCCL bindings (``cupy.cuda.nccl``), or None without CuPy or NCCL (for nnxp.distributed)."""
    if _cupy is None:
        return None
    try:
        from cupy.cuda import nccl
    except Exception:  # CuPy built or installed without NCCL
        return None
    return nccl if getattr(nccl, "available", True) else None


_DEFAULT_CUDA_INDEX = 0  # "cuda" without an index; nnxp.distributed.init() sets it to the rank's local GPU


def set_default_cuda_index(index: int) -> None:
    """Make ``device="cuda"`` mean ``cuda:index`` (one GPU per rank under MPI)."""
    global _DEFAULT_CUDA_INDEX
    _DEFAULT_CUDA_INDEX = int(index)


def cuda_device_count() -> int:
    """Number of CUDA devices CuPy can see (0 without CuPy or a driver)."""
    if _cupy is None:
        return 0
    try:
        return int(_cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver, no device: treat as none
        return 0


def cuda_available() -> bool:
    """True when CuPy is installed and at least one GPU is usable."""
    return cuda_device_count() > 0


class Device:
    """A place where arrays live: ``Device("cpu")`` or ``Device("cuda", 0)``.

    ``xp`` is the array module (numpy or cupy); ``name`` is ``"cpu"`` or
    ``"cuda:N"``. Use :func:`get_device` rather than constructing one.
    """

    __slots__ = ("kind", "index", "xp")

    def __init__(self, kind: str = "cpu", index: int = 0) -> None:
        self.kind = kind
        self.index = index
        if kind == "cpu":
            self.xp = np
        else:
            _require_cuda(index)
            self.xp = _cupy

    @property
    def name(self) -> str:
        return "cpu" if self.kind == "cpu" else f"cuda:{self.index}"

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def __repr__(self) -> str:
        return f"Device({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def use(self, tf32: bool | None = None) -> Any:
        """Context manager that makes this device current (no-op on the CPU).

        `tf32` sets how CuPy's float32 matmuls run inside it: True for TF32 tensor cores (10-bit mantissa
        products, float32 accumulation), False for full float32 (precision="highest", whatever CUPY_TF32 says),
        None to leave CuPy's setting alone. CuPy keeps one process-wide compute type per dtype, read from
        CUPY_TF32 once (cupy/_core/_routines_linalg.pyx get_compute_type), so it is set on entry and restored
        on exit rather than set globally.
        """
        if self.kind == "cpu":
            return contextlib.nullcontext()
        if tf32 is None:
            return _cupy.cuda.Device(self.index)
        return _float32_matmuls(self.index, tf32)

    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """`x` as an array on this device (copies only when it must)."""
        if self.kind == "cpu":
            return np.asarray(to_numpy(x), dtype=dtype)
        with self.use():
            return _cupy.asarray(x, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        """`x` as a host NumPy array."""
        return to_numpy(x)

    def synchronize(self) -> None:
        """Wait until all queued work on this device has finished."""
        if self.kind == "cuda":
            with self.use():
                _cupy.cuda.Device(self.index).synchronize()

    def random_generator(self, seed: int | np.random.SeedSequence | None) -> Any:
        """A seeded random generator whose draws land on this device."""
        if self.kind == "cpu":
            return np.random.default_rng(seed)
        if isinstance(seed, np.random.SeedSequence):
            seed = int(seed.generate_state(1)[0])
        with self.use():
            return _cupy.random.default_rng(seed)

    def free_memory(self) -> None:
        """Give cached blocks of CuPy's memory pools back to the driver."""
        if self.kind == "cuda":
            _cupy.get_default_memory_pool().free_all_blocks()
            _cupy.get_default_pinned_memory_pool().free_all_blocks()


@contextlib.contextmanager
def _float32_matmuls(index: int, tf32: bool) -> Any:
    # COMPUTE_TYPE_TF32 makes tensordot_core_v11 call cublasGemmEx with CUBLAS_COMPUTE_32F_FAST_TF32,
    # COMPUTE_TYPE_DEFAULT with CUBLAS_COMPUTE_32F (cupy/_core/_routines_linalg.pyx).
    linalg = _cupy._core._routines_linalg
    wanted = linalg.COMPUTE_TYPE_TF32 if tf32 else linalg.COMPUTE_TYPE_DEFAULT
    with _cupy.cuda.Device(index):
        before = _cupy._core.get_compute_type(np.float32)
        _cupy._core.set_compute_type(np.float32, wanted)
        try:
            yield
        finally:
            _cupy._core.set_compute_type(np.float32, before)


def tf32_active() -> bool:
    """True while CuPy's float32 matmuls run in TF32 (inside ``Device.use(tf32=True)``)."""
    if _cupy is None:
        return False
    return _cupy._core.get_compute_type(np.float32) == _cupy._core._routines_linalg.COMPUTE_TYPE_TF32


def cuda_environment(index: int = 0) -> list[tuple[str, bool, str]]:
    """(what, found, detail) for each piece a CUDA run needs, probed without raising (``nnxp selftest``).

    Driver and runtime versions, the GPU, and whether NVRTC, cuBLAS and the CUDA headers were found: CuPy
    imports without any of the last three and fails only at first use ("Failed to find CUDA headers"), so each
    is exercised here: NVRTC's version, a cuBLAS handle's version, and one of CuPy's own elementwise kernels
    (which NVRTC compiles against the runtime headers).
    """
    if _cupy is None:
        why = f"importing it failed: {_CUPY_IMPORT_ERROR}" if _CUPY_IMPORT_ERROR else "not installed"
        return [("CuPy", False, f"{why}; {_INSTALL_HINT}")]
    found: list[tuple[str, bool, str]] = [("CuPy", True, str(getattr(_cupy, "__version__", "?")))]
    runtime = _cupy.cuda.runtime

    def probe(what: str, fn: Any) -> bool:
        try:
            found.append((what, True, str(fn())))
            return True
        except Exception as exc:  # each probe reports its own failure; none stops the others
            found.append((what, False, f"{type(exc).__name__}: {exc}".strip()))
            return False

    def version(v: int) -> str:  # CUDA encodes 12.4 as 12040
        return f"{v // 1000}.{v % 1000 // 10}"

    def driver() -> str:
        v = int(runtime.driverGetVersion())
        if v <= 0:  # cudaDriverGetVersion reports 0 when no driver is installed
            raise RuntimeError("no NVIDIA driver found")
        return version(v)

    probe("CUDA driver", driver)
    probe("CUDA runtime", lambda: version(int(runtime.runtimeGetVersion())))
    count = cuda_device_count()
    if index >= max(count, 1) or count == 0:
        found.append(("GPU", False, f"no GPU cuda:{index} (CuPy sees {count})"))
        return found

    def gpu() -> str:
        props = runtime.getDeviceProperties(index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return (f"cuda:{index} {name}, compute capability {props['major']}.{props['minor']}, "
                f"{props['totalGlobalMem'] / 2**30:.1f} GiB")

    probe("GPU", gpu)

    def nvrtc() -> str:
        major, minor = _cupy.cuda.nvrtc.getVersion()
        return f"NVRTC {major}.{minor}"

    probe("NVRTC", nvrtc)

    def cublas() -> str:
        with _cupy.cuda.Device(index):
            v = int(_cupy.cuda.cublas.getVersion(_cupy.cuda.device.get_cublas_handle()))
        return f"cuBLAS {v // 10000}.{v % 10000 // 100}.{v % 100}"

    probe("cuBLAS", cublas)

    def headers() -> str:
        with _cupy.cuda.Device(index):
            total = float((_cupy.arange(4, dtype=np.float32) * 2).sum())
        if total != 12.0:
            raise RuntimeError(f"CuPy's elementwise kernel computed {total}, not 12")
        return "CuPy's own elementwise kernels compile and run"

    probe("CUDA headers", headers)
    return found


def _require_cuda(index: int) -> None:
    if _cupy is None:
        extra = f" (importing it failed: {_CUPY_IMPORT_ERROR})" if _CUPY_IMPORT_ERROR else ""
        raise DeviceError(f"device 'cuda' needs CuPy, which is not installed{extra}. To fix it, {_INSTALL_HINT}.")
    count = cuda_device_count()
    if count == 0:
        raise DeviceError(
            "device 'cuda' was requested but CuPy finds no usable GPU (no NVIDIA driver or device). "
            "Use device='cpu' or device='auto'."
        )
    if index >= count:
        raise DeviceError(f"`device` must name an existing GPU (0..{count - 1}). Received: device='cuda:{index}'")


def get_device(spec: str | Device | None = None) -> Device:
    """Resolve a device spec.

    `spec` is ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA when
    usable, else CPU), a :class:`Device`, or None (then the ``NNXP_DEVICE``
    environment variable, else the CPU).
    """
    if isinstance(spec, Device):
        return spec
    source = "device"
    if spec is None:
        spec = os.environ.get("NNXP_DEVICE", "cpu") or "cpu"
        source = "NNXP_DEVICE"
    if not isinstance(spec, str):
        raise DeviceTypeError(
            f"`{source}` must be 'cpu', 'cuda', 'cuda:N', 'auto' or a Device. Received: {source}={spec!r} "
            f"of type {type(spec).__name__}"
        )
    text = spec.strip().lower()
    if text == "auto":
        return Device("cuda", _DEFAULT_CUDA_INDEX) if cuda_available() else Device("cpu")
    match = _SPEC_RE.match(text)
    if match is None:
        raise DeviceError(f"`{source}` must be 'cpu', 'cuda', 'cuda:N' or 'auto'. Received: {source}={spec!r}")
    kind, index = match.group(1), match.group(2)
    if kind == "cpu":
        if index not in (None, "0"):
            raise DeviceError(f"`{source}` 'cpu' takes no index other than 0. Received: {source}={spec!r}")
        return Device("cpu")
    return Device("cuda", _DEFAULT_CUDA_INDEX if index is None else int(index))


def is_cupy_array(x: Any) -> bool:
    """True when `x` is a CuPy array."""
    return _cupy is not None and isinstance(x, _cupy.ndarray)


def xp_of(x: Any) -> Any:
    """The array module (numpy or cupy) that owns `x`."""
    return _cupy if is_cupy_array(x) else np


def device_of(x: Any) -> Device:
    """The :class:`Device` on which array `x` lives."""
    if is_cupy_array(x):
        return Device("cuda", int(x.device.id))
    return Device("cpu")


def to_numpy(x: Any) -> np.ndarray:
    """`x` (NumPy, CuPy, list, scalar) as a host NumPy array."""
    if is_cupy_array(x):
        return _cupy.asnumpy(x)
    return np.asarray(x)


# cuBLAS and CUDA runtime status codes that mean "out of device memory": CUBLAS_STATUS_ALLOC_FAILED
# (cupy_backends/cuda/libs/cublas.pyx STATUS) and cudaErrorMemoryAllocation (CUDARuntimeError.status).
_CUBLAS_STATUS_ALLOC_FAILED = 3
_CUDA_ERROR_MEMORY_ALLOCATION = 2


def is_out_of_memory(exc: BaseException) -> bool:
    """True when `exc` says the GPU ran out of memory: CuPy's pool, a cuBLAS workspace, or a runtime call.

    Never raises itself (a stand-in or a partial CuPy lacking one of the error classes is simply not matched),
    so it cannot mask the error being classified.
    """
    if _cupy is None:
        return False
    cuda = getattr(_cupy, "cuda", None)
    checks = (
        (getattr(getattr(cuda, "memory", None), "OutOfMemoryError", None), None),
        (_error_class(cuda, "cublas", "CUBLASError"), _CUBLAS_STATUS_ALLOC_FAILED),
        (_error_class(cuda, "runtime", "CUDARuntimeError"), _CUDA_ERROR_MEMORY_ALLOCATION),
    )
    for cls, status in checks:
        if isinstance(cls, type) and isinstance(exc, cls):
            if status is None or getattr(exc, "status", None) == status:
                return True
    return False


def _error_class(cuda: Any, module: str, name: str) -> Any:
    try:  # cupy.cuda.cublas is imported lazily by CuPy's module __getattr__ (cupy/cuda/__init__.py)
        return getattr(getattr(cuda, module), name)
    except Exception:
        return None


def to_device(x: Any, device: str | Device | None, dtype: Any = None) -> Any:
    """`x` moved (if needed) to `device`, optionally cast to `dtype`."""
    return get_device(device).asarray(x, dtype=dtype)

