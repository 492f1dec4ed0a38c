"""A stand-in `cupy` over the CPU emulator of CUDA: host NumPy arrays that behave, where nnxp relies on it, as
CuPy 14.2's device arrays do, and a RawModule whose kernels run kernels.cu on the CPU (tests/_cuda_emu.py).

It may only be as kind as the real thing (DESIGN.md). Every simulated behaviour cites the CuPy source it
follows (paths in the cupy/cupy repository at tag v14.2.0), and tests/test_stand_in_cupy.py checks against the
installed CuPy that every name offered here exists there with a compatible signature.

Arrays are NumPy arrays of a subclass that remembers its device, each allocation fenced by guard bytes. Two
devices exist without peer access, so arithmetic mixing them is refused as CuPy refuses it. Every launch of a
kernel takes the next schedule (forward, reverse, shuffled blocks and threads), so two runs of one op differ
in order and must still agree bit for bit; a write outside any buffer trips the guard check after the launch.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
from _cuda_emu import _SCHEDULE_CYCLE, Emulator

from nnxp.ops import _cuda

DEVICE_COUNT = 2  # two devices, neither can access the other's memory (no NVLink / P2P)
_GUARD = 64  # bytes of 0xA5 before and after every stand-in allocation


# --- devices ------------------------------------------------------------------------------------------------


class CUDARuntimeError(RuntimeError):
    """cupy_backends/cuda/api/runtime.pyx CUDARuntimeError: `status` and the driver's message."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


_ERROR_INVALID_DEVICE = 101  # cudaErrorInvalidDevice


class _Thread(threading.local):
    device = 0  # cupy/cuda/device.pyx get_device_id(): runtime.getDevice(), the CUDA runtime's per-thread device
    stack: list[int]

    def __init__(self) -> None:
        self.stack = []


_thread = _Thread()


def get_device_id() -> int:
    """cupy/cuda/device.pyx get_device_id."""
    return _thread.device


def _set_device(device_id: int) -> None:
    # cupy_backends/cuda/api/runtime.pyx setDevice: cudaSetDevice fails with cudaErrorInvalidDevice
    if not 0 <= device_id < DEVICE_COUNT:
        raise CUDARuntimeError(_ERROR_INVALID_DEVICE, "cudaErrorInvalidDevice: invalid device ordinal")
    _thread.device = device_id


class Device:
    """cupy/cuda/device.pyx class Device: `with Device(i)` pushes the current device and restores it on exit.

    The constructor does not check the ordinal (as CuPy's); entering or using a device that does not exist
    raises CUDARuntimeError as cudaSetDevice does.
    """

    def __init__(self, device: Any = None) -> None:
        self.id = get_device_id() if device is None else int(device)

    def __int__(self) -> int:
        return self.id

    def __eq__(self, other: object) -> bool:  # cupy/cuda/device.pyx Device.__richcmp__ compares ids
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"

    def __enter__(self) -> Device:  # Device.__enter__: push getDevice(), then setDevice(self.id)
        previous = get_device_id()
        _set_device(self.id)
        _thread.stack.append(previous)
        return self

    def __exit__(self, *exc: Any) -> None:  # Device.__exit__: setDevice(stack.pop())
        _thread.device = _thread.stack.pop()

    def use(self) -> Device:  # Device.use: setDevice(self.id)
        _set_device(self.id)
        return self

    def synchronize(self) -> None:  # Device.synchronize: the emulator runs every launch to completion
        _set_device(self.id)  # only to refuse a device that does not exist, as cudaSetDevice would

    @property
    def compute_capability(self) -> str:  # Device.compute_capability: major and minor as a string
        return "80"

    @property
    def attributes(self) -> dict[str, int]:
        # Device.attributes (_get_attributes): cudaDevAttr* without the prefix. One SM: grids are capped at a few
        # blocks, so the grid-stride loops run more than once per thread.
        return {"MultiProcessorCount": 1, "MaxThreadsPerBlock": 1024, "WarpSize": 32}


def _check_peer_access(a: FakeArray, device_id: int) -> None:
    """cupy/_core/_kernel.pyx _check_peer_access, for two devices that cannot access each other's memory.

    Every elementwise kernel, ufunc and reduction of CuPy calls it for each array argument (_preprocess_args);
    _enable_peer_access (cupy/cuda/device.pyx) returns False when deviceCanAccessPeer says no, as here.
    """
    if a._device_id != device_id:
        raise ValueError(
            f"The device where the array resides ({a._device_id}) is different from the current device "
            f"({device_id}). Peer access is unavailable between these devices."
        )


# --- arrays -------------------------------------------------------------------------------------------------


class FakeArray(np.ndarray):
    """A device array: NumPy memory that remembers the device it was allocated on.

    A new array (an allocation, a ufunc's result, a copy) lives on the current device, as CuPy allocates from
    the current device's pool (cupy/_core/core.pyx _ndarray_init -> memory.alloc); a view keeps its base's.
    """

    _device_id: int = 0

    def __array_finalize__(self, obj: Any) -> None:
        inherited = getattr(obj, "_device_id", None)
        self._device_id = inherited if (self.base is not None and inherited is not None) else get_device_id()

    @property
    def device(self) -> Device:  # cupy/_core/core.pyx _ndarray_base.device: Device(self.data.device_id)
        return Device(self._device_id)

    @property
    def data(self) -> Any:  # _ndarray_base.data: a MemoryPointer (ptr, device_id)
        return SimpleNamespace(ptr=self.ctypes.data, device_id=self._device_id)

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        """core.pyx _ndarray_base.get: a host copy (from any current device: it switches to the array's)."""
        host = np.array(self.view(np.ndarray), order=order)
        if out is not None:
            out[...] = host
            return out
        return host

    def set(self, arr: Any, stream: Any = None) -> None:
        """core.pyx _ndarray_base.set: a host array of exactly this dtype and shape, nothing else."""
        if not isinstance(arr, np.ndarray) or isinstance(arr, FakeArray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        self.view(np.ndarray)[...] = arr

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, out: Any = None, **kwargs: Any) -> Any:
        # cupy/_core/_kernel.pyx ufunc.__call__ -> _preprocess_args: each array must be on the current device
        # (_check_peer_access), and a NumPy array is not a valid argument (cupy/_core/_scalar.pyx CScalar:
        # "Unsupported type"). Reductions (cupy/_core/_reduction.pyx) check the same way.
        dev = get_device_id()
        for x in (*inputs, *(out or ())):
            if isinstance(x, FakeArray):
                _check_peer_access(x, dev)
            elif isinstance(x, np.ndarray):
                raise TypeError(f"Unsupported type {type(x)}")
        plain = [x.view(np.ndarray) if isinstance(x, FakeArray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(o.view(np.ndarray) if isinstance(o, FakeArray) else o for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        if method == "at":
            return None
        results = result if isinstance(result, tuple) else (result,)
        outs = out if out is not None else (None,) * len(results)
        wrapped = tuple(
            o if o is not None else (r.view(FakeArray) if isinstance(r, np.ndarray) else r)
            for r, o in zip(results, outs, strict=True)
        )
        return wrapped if isinstance(result, tuple) else wrapped[0]

    def __setitem__(self, key: Any, value: Any) -> None:
        # core.pyx _ndarray_base.__setitem__ -> _scatter_op: an elementwise copy on the current device
        # (_check_peer_access for the destination and a device-array value)
        if isinstance(value, FakeArray):
            dev = get_device_id()
            _check_peer_access(self, dev)
            _check_peer_access(value, dev)
        super().__setitem__(key, value)


class _Guarded:
    """Every stand-in allocation, to check after each launch that no kernel wrote past its buffer."""

    def __init__(self) -> None:
        self.buffers: list[np.ndarray] = []

    def alloc(self, a: Any, dtype: Any = None) -> FakeArray:
        a = np.asarray(a.view(np.ndarray) if isinstance(a, FakeArray) else a, dtype=dtype)
        raw = np.full(a.nbytes + 2 * _GUARD, 0xA5, dtype=np.uint8)
        self.buffers.append(raw)
        view = raw[_GUARD:_GUARD + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        out = view.view(FakeArray)
        out._device_id = get_device_id()
        return out

    def check(self, what: str) -> None:
        for raw in self.buffers:
            if not ((raw[:_GUARD] == 0xA5).all() and (raw[-_GUARD:] == 0xA5).all()):
                raise AssertionError(f"{what} wrote outside a buffer of {raw.size - 2 * _GUARD} bytes")


# --- random -------------------------------------------------------------------------------------------------


class Generator:
    """cupy/random/_generator_api.pyx class Generator, drawing from NumPy's PCG64 instead of cuRAND's XORWOW.

    The bits differ from CuPy's (no test may depend on them); what follows CuPy is the shape rule of each
    method, and that its draws land on the current device.
    """

    def __init__(self, seed: Any, guarded: _Guarded) -> None:
        self._rng = np.random.default_rng(seed)
        self._guarded = guarded

    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> FakeArray:
        """_generator_api.pyx Generator.random: with `size` None it draws ONE value into a 0-d array and
        broadcasts it into `out` (``size = ()``, then ``_core.elementwise_copy(y, out)``), exactly as CuPy 14.2
        does; a `size` must equal ``out.shape``. float64 is drawn as float64, anything else as float32, then
        cast (``astype(dtype, copy=False)``)."""
        dtype = np.dtype(dtype)
        if out is not None:
            _check_output_array(dtype, size, out)
        if size is None:
            size = ()
        draw = self._rng.random(size) if dtype.char == "d" else self._rng.random(size, dtype=np.float32)
        y = self._guarded.alloc(draw)
        if out is not None:
            out[...] = y  # elementwise_copy broadcasts y (shape `size`, () when None) into out
            y = out
        return y.astype(dtype, copy=False)


def _check_output_array(dtype: np.dtype, size: Any, out: Any) -> None:
    """_generator_api.pyx Generator._check_output_array (borrowed from NumPy's random/_common.pyx)."""
    if out.dtype.char != dtype.char:
        raise TypeError(f"Supplied output array has the wrong type. Expected {dtype.name}, got {out.dtype.name}")
    if not (out.flags.c_contiguous or out.flags.f_contiguous):
        raise ValueError("Supplied output array is not contiguous, writable or aligned.")
    if size is not None:
        try:
            shape = tuple(size)
        except TypeError:
            shape = (size,)
        if shape != out.shape:
            raise ValueError("size must match out.shape when used together")


# --- kernels ------------------------------------------------------------------------------------------------


class _FakeModule:
    """cupy/_core/raw.pyx RawModule(code=..., options=..., name_expressions=...) over the emulator."""

    def __init__(self, code: str, options: tuple, name_expressions: Any, emulator: Emulator,
                 guarded: _Guarded) -> None:
        assert tuple(options) == _cuda.NVRTC_OPTIONS
        assert code == _cuda._source()
        self.expressions = set(name_expressions)
        self.emulator, self.guarded = emulator, guarded

    def get_function(self, name: str) -> _FakeKernel:  # raw.pyx RawModule.get_function: a RawKernel
        assert name in self.expressions
        return _FakeKernel(name, self.emulator, self.guarded)


class _FakeKernel:
    launches: dict[str, int] = {}

    def __init__(self, expression: str, emulator: Emulator, guarded: _Guarded) -> None:
        self.expression, self.emulator, self.guarded = expression, emulator, guarded

    def __call__(self, grid: tuple, block: tuple, args: tuple, **kwargs: Any) -> None:
        # raw.pyx RawKernel.__call__ -> cupy/cuda/function.pyx Function.__call__ -> _launch: array arguments pass
        # as raw pointers, unchecked; a kernel dereferencing another device's memory without peer access faults
        # on a GPU (cudaErrorIllegalAddress), which the stand-in reports at the launch instead.
        dev = get_device_id()
        for i, a in enumerate(args):
            if isinstance(a, FakeArray) and a._device_id != dev:
                raise CUDARuntimeError(700, f"cudaErrorIllegalAddress: {self.expression} argument {i} lives on "
                                            f"device {a._device_id}, launched on device {dev}")
        k = _FakeKernel.launches.get(self.expression, 0)
        _FakeKernel.launches[self.expression] = k + 1
        if len(block) == 1:
            assert block[0] % 32 == 0, f"{self.expression}: block {block} is not whole warps"
        plain = tuple(a.view(np.ndarray) if isinstance(a, FakeArray) else a for a in args)
        self.emulator.launch(self.expression, tuple(grid), tuple(block), plain,
                             schedule=_SCHEDULE_CYCLE[k % 3], seed=k)
        self.guarded.check(self.expression)


# --- compute type (added by gpufix; gputools may replace it) -------------------------------------------------


class _ComputeTypes:
    """cupy/_core/_routines_linalg.pyx: one process-wide compute type per dtype, COMPUTE_TYPE_TBD until first
    read, when get_compute_type fixes it from CUPY_TF32 (TF32 for float32 when CUPY_TF32 > 0, else DEFAULT)."""

    COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC, COMPUTE_TYPE_FP16 = 0, 1, 2, 3
    COMPUTE_TYPE_FP32, COMPUTE_TYPE_FP64, COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32 = 4, 5, 6, 7

    def __init__(self) -> None:
        self._types = {"e": 0, "f": 0, "d": 0}  # to_compute_type_index: float16, float32, float64 (+bf16)

    def _index(self, dtype: Any) -> str:
        char = np.dtype(dtype).char
        char = {"F": "f", "D": "d"}.get(char, char)
        if char not in self._types:
            raise TypeError(f"dtype is not supported: {np.dtype(dtype)}")
        return char

    def set_compute_type(self, dtype: Any, compute_type: int) -> None:
        if compute_type not in range(8):
            raise ValueError(f"Unknown compute type: {compute_type}")
        self._types[self._index(dtype)] = compute_type

    def get_compute_type(self, dtype: Any) -> int:
        import os

        key = self._index(dtype)
        if self._types[key] == self.COMPUTE_TYPE_TBD:
            tf32 = key == "f" and int(os.getenv("CUPY_TF32", "0")) > 0
            self._types[key] = self.COMPUTE_TYPE_TF32 if tf32 else self.COMPUTE_TYPE_DEFAULT
        return self._types[key]


# --- the module ---------------------------------------------------------------------------------------------


def _on_device(result: Any) -> Any:
    """A NumPy function's array result as a device array on the current device (CuPy's functions allocate
    their results there); results that are device arrays already (views) keep their device."""
    if isinstance(result, tuple):
        return tuple(_on_device(r) for r in result)
    if isinstance(result, np.ndarray) and not isinstance(result, FakeArray):
        out = result.view(FakeArray)
        out._device_id = get_device_id()
        return out
    return result


class _FakeCupy(SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        # everything not overridden (the references' ufuncs and functions) is NumPy's, returning device arrays;
        # ufuncs check devices in FakeArray.__array_ufunc__
        attr = getattr(np, name)
        if callable(attr) and not isinstance(attr, (np.ufunc, type)):
            fn = attr
            return lambda *a, **kw: _on_device(fn(*a, **kw))
        return attr


def stand_in_cupy(emulator: Emulator) -> Any:
    """A `cupy` module for nnxp.backend whose arrays live in host memory and whose kernels run here."""
    guarded = _Guarded()
    _thread.device, _thread.stack = 0, []

    def creation(fn):
        # cupy/_creation/basic.py empty / zeros / empty_like ...: cupy.ndarray(...) allocates on the current device
        return lambda *a, **kw: guarded.alloc(fn(*(x.view(np.ndarray) if isinstance(x, FakeArray) else x
                                                   for x in a), **kw))

    def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> FakeArray:
        # cupy/_creation/from_data.py asarray -> core.pyx array(copy=False) -> _array_from_cupy_ndarray: the same
        # array when it is on the current device already and of that dtype; a copy onto the current device
        # (src.copy(), a peer copy) when it lives on another; host data is copied to the current device.
        if isinstance(a, FakeArray) and a._device_id == get_device_id():
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        return guarded.alloc(a, dtype=dtype)

    def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> Any:
        # cupy/_core/core.pyx asnumpy: ndarray.get() for device arrays, numpy.asarray otherwise
        if isinstance(a, FakeArray):
            return a.get(order=order, out=out)
        return np.asarray(a, order=order)

    def matmul(a, b, out=None, **kwargs):
        # cupy/_core/_routines_linalg.pyx matmul: a ufunc in NumPy, so FakeArray.__array_ufunc__ checks devices
        if out is None:
            return guarded.alloc(np.matmul(a, b, **kwargs))
        np.matmul(a, b, out=out, **kwargs)
        return out

    def default_rng(seed: Any = None) -> Generator:  # cupy/random/__init__.py default_rng -> Generator(XORWOW(seed))
        return Generator(seed, guarded)

    def get_device_count() -> int:  # cupy_backends/cuda/api/runtime.pyx getDeviceCount
        return DEVICE_COUNT

    return _FakeCupy(
        ndarray=FakeArray,
        float16=np.float16, float32=np.float32, float64=np.float64, int32=np.int32,
        empty=creation(np.empty), zeros=creation(np.zeros), empty_like=creation(np.empty_like),
        zeros_like=creation(np.zeros_like), asarray=asarray, asnumpy=asnumpy,
        matmul=matmul,
        random=SimpleNamespace(default_rng=default_rng, Generator=Generator),
        RawModule=lambda code, options, name_expressions: _FakeModule(code, options, name_expressions, emulator,
                                                                      guarded),
        cuda=SimpleNamespace(
            Device=Device,
            runtime=SimpleNamespace(getDeviceCount=get_device_count, getDevice=get_device_id,
                                    CUDARuntimeError=CUDARuntimeError),
            device=SimpleNamespace(get_device_id=get_device_id),
        ),
        _guarded=guarded,
        _core=_core_namespace(),
    )


def _core_namespace() -> Any:
    types = _ComputeTypes()
    return SimpleNamespace(set_compute_type=types.set_compute_type, get_compute_type=types.get_compute_type,
                           _routines_linalg=types)
