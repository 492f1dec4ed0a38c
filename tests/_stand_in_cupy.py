"""A stand-in `cupy` over the CPU emulator of CUDA: host NumPy arrays that behave, where nnxp relies on it, as
CuPy 14.2's device arrays do, and a RawModule whose kernels run kernels.cu on the CPU (tests/_cuda_emu.py).

It may only be as kind as the real thing (DESIGN.md). Every simulated behaviour cites the CuPy source it
follows (paths in the cupy/cupy repository at tag v14.2.0), and tests/test_stand_in_cupy.py checks against the
installed CuPy that every name offered here exists there with a compatible signature.

Arrays are NumPy arrays of a subclass that remembers its device, each allocation fenced by guard bytes. Two
devices exist without peer access, so arithmetic mixing them is refused as CuPy refuses it. Every launch of a
kernel takes the next schedule (forward, reverse, shuffled blocks and threads), so two runs of one op differ
in order and must still agree bit for bit; a write outside any buffer trips the guard check after the launch.

What the host asks of CUDA is counted (COUNTS, count_step()): launches, graph launches, memory-pool allocations,
host synchronisations, host-to-device copies from pageable or pinned memory and cudaSetDevice calls, each where
CuPy 14.2's source makes that call (cited at each counting site), so budgets on them are tests without a GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
from _cuda_emu import _SCHEDULE_CYCLE, Emulator

from nnxp.ops import _cuda

DEVICE_COUNT = 2  # two devices, neither can access the other's memory (no NVLink / P2P)
_GUARD = 64  # bytes of 0xA5 before and after every stand-in allocation


# --- counters -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Counts:
    """What the host asked of CUDA. `launches` counts every operation the host enqueues on a stream outside a
    graph (a kernel, a cuBLAS GEMM, a memset or a device-to-device memcpy: each costs one launch on the host);
    work recorded by a capture is counted once, as the graph launch that replays it. `names` lists the launches
    in order (RawKernel names, "gemm", "ufunc:multiply", "reduce:add", "memset", "memcpy:setitem", ...)."""

    launches: int = 0
    graph_launches: int = 0
    allocations: int = 0  # memory-pool mallocs: every new device buffer of nonzero size (cupy/cuda/memory.pyx alloc)
    syncs: int = 0  # host waits: stream/device synchronize, get(), asnumpy, float()/int()/bool()/item() of arrays
    h2d_pageable: int = 0  # host-to-device copies whose source is pageable host memory
    h2d_pinned: int = 0  # ... whose source is pinned (page-locked) host memory
    set_device: int = 0  # cudaSetDevice calls (runtime.setDevice)
    names: list[str] = dataclasses.field(default_factory=list)

    def minus(self, before: Counts) -> Counts:
        fields = {f.name: getattr(self, f.name) - getattr(before, f.name)
                  for f in dataclasses.fields(self) if f.name != "names"}
        return Counts(**fields, names=self.names[len(before.names):])

    def snapshot(self) -> Counts:
        return dataclasses.replace(self, names=list(self.names))


COUNTS = Counts()  # since the last stand_in_cupy()


@contextlib.contextmanager
def count_step() -> Iterator[Counts]:
    """The counts of what the block asks of CUDA: ``with count_step() as c: ...`` then ``c.launches`` etc."""
    before = COUNTS.snapshot()
    result = Counts()
    try:
        yield result
    finally:
        delta = COUNTS.minus(before)
        for f in dataclasses.fields(delta):
            setattr(result, f.name, getattr(delta, f.name))


def _count_launch(name: str) -> None:
    """One operation enqueued by the host; inside a capture it is recorded into the graph instead (not counted)."""
    if _recording() is None:
        COUNTS.launches += 1
        COUNTS.names.append(name)


def _count_alloc(nbytes: int) -> None:
    # cupy/cuda/memory.pyx SingleDeviceMemoryPool._malloc: a size of 0 returns MemoryPointer(Memory(0), 0) at once
    if nbytes > 0:
        COUNTS.allocations += 1


def _count_h2d(source: np.ndarray) -> None:
    if _is_pinned(source):
        COUNTS.h2d_pinned += 1
    else:
        COUNTS.h2d_pageable += 1


# --- devices ------------------------------------------------------------------------------------------------


# cudaError_t values and the runtime's name and text for them (cudaGetErrorName / cudaGetErrorString)
_ERRORS = {
    101: "cudaErrorInvalidDevice: invalid device ordinal",
    401: "cudaErrorIllegalState: the operation cannot be performed in the present state",
    700: "cudaErrorIllegalAddress: an illegal memory access was encountered",
    900: "cudaErrorStreamCaptureUnsupported: operation not permitted when stream is capturing",
    901: "cudaErrorStreamCaptureInvalidated: operation failed due to a previous error during capture",
}
_ERROR_INVALID_DEVICE, _ILLEGAL_STATE, _ILLEGAL_ADDRESS = 101, 401, 700
_CAPTURE_UNSUPPORTED, _CAPTURE_INVALIDATED = 900, 901


class CUDARuntimeError(RuntimeError):
    """cupy_backends/cuda/api/runtime.pyx CUDARuntimeError(status): "name: text" of the status."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(_ERRORS[status])


def _cuda_error(status: int, context: str) -> CUDARuntimeError:
    """The error CUDA would raise, with what the stand-in knows about the cause as a note."""
    error = CUDARuntimeError(status)
    error.__notes__ = [f"stand-in CuPy: {context}"]  # what add_note (3.11+) would do
    return error


class _Thread(threading.local):
    device = 0  # cupy/cuda/device.pyx get_device_id(): runtime.getDevice(), the CUDA runtime's per-thread device
    stack: list[int]
    streams: dict[int, list[Stream]]  # cupy/cuda/stream.pyx _ThreadLocal.current_stream_stack, per device
    stream_devices: list[int]  # _ThreadLocal.current_device_id_stack: which device's stack `with stream` pushed
    allocator: Any = None  # cupy/cuda/memory.pyx _get_thread_local_allocator (set by cuda.using_allocator)

    def __init__(self) -> None:
        self.stack = []
        self.streams = {}
        self.stream_devices = []


_thread = _Thread()


def get_device_id() -> int:
    """cupy/cuda/device.pyx get_device_id."""
    return _thread.device


def _set_device(device_id: int) -> None:
    # cupy_backends/cuda/api/runtime.pyx setDevice: cudaSetDevice fails with cudaErrorInvalidDevice
    if not 0 <= device_id < DEVICE_COUNT:
        raise _cuda_error(_ERROR_INVALID_DEVICE, f"device {device_id} of {DEVICE_COUNT}")
    COUNTS.set_device += 1
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

    def __enter__(self) -> Device:
        # Device.__enter__ (device.pyx l.177-182): push getDevice(), then setDevice(self.id) only if it differs
        previous = get_device_id()
        if self.id != previous:
            _set_device(self.id)
        _thread.stack.append(previous)
        return self

    def __exit__(self, *exc: Any) -> None:  # Device.__exit__ (l.184-185): setDevice(stack.pop()), always
        _set_device(_thread.stack.pop())

    def use(self) -> Device:  # Device.use: setDevice(self.id)
        _set_device(self.id)
        return self

    def synchronize(self) -> None:
        # Device.synchronize (device.pyx l.199-207): prev = getDevice(); setDevice(self.id);
        # deviceSynchronize(); setDevice(prev). The emulator has run every launch to completion already.
        previous = get_device_id()
        try:
            _set_device(self.id)  # also refuses a device that does not exist, as cudaSetDevice would
            COUNTS.syncs += 1
        finally:
            _thread.device = previous
            COUNTS.set_device += 1

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


# --- streams and graph capture ------------------------------------------------------------------------------
#
# Work issued while the current stream is capturing is recorded, not run, as cudaStreamBeginCapture does: a
# kernel launch, a ufunc, a reduction, a fill, a setitem or a NumPy function becomes one step of the graph, and
# the arrays it creates hold poison (0xFF bytes, NaN for floats) until a replay computes them. Anything that
# needs the host to see device data (get, float(), bool(), item) or a host-to-device copy of pageable memory
# fails the capture (cudaErrorStreamCaptureUnsupported) and invalidates it, so end_capture raises
# cudaErrorStreamCaptureInvalidated. Not modelled: the order between streams (one host thread runs everything),
# and ndarray methods that NumPy runs without a ufunc (dot, sort, ...), which run at once.

class _Recording:
    """What a capturing stream has recorded so far."""

    def __init__(self) -> None:
        self.steps: list[Any] = []
        self.invalidated: str | None = None


class Stream:
    """cupy/cuda/stream.pyx class Stream (_BaseStream): `with stream` makes it the current stream of its device
    (_ThreadLocal.push_stream / pop_stream; check_stream_device_match refuses another device's stream);
    begin_capture / end_capture / is_capturing as _BaseStream's, refusing the legacy default stream."""

    null: Stream
    _next_ptr = 0x7F0000

    def __init__(self, null: bool = False, non_blocking: bool = False, ptds: bool = False,
                 priority: int | None = None) -> None:
        if null:
            ptr, device_id = 0, -1
        elif ptds:
            ptr, device_id = 2, -1  # runtime.streamPerThread
        else:
            Stream._next_ptr += 0x100
            ptr, device_id = Stream._next_ptr, get_device_id()
        self.ptr, self.device_id, self.non_blocking = ptr, device_id, non_blocking
        self._recording: _Recording | None = None

    def __eq__(self, other: object) -> bool:  # _BaseStream.__eq__ compares the handles
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self) -> int:
        return self.ptr

    def __repr__(self) -> str:
        return f"<Stream {self.ptr} (device {self.device_id})>"

    def __enter__(self) -> Stream:
        device_id = _check_stream_device_match(self.device_id)
        _thread.stream_devices.append(device_id)
        _thread.streams.setdefault(device_id, [Stream.null]).append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _thread.streams[_thread.stream_devices.pop()].pop()

    def use(self) -> Stream:  # _BaseStream.use: set_current_stream, the top of this device's stack
        device_id = _check_stream_device_match(self.device_id)
        _thread.streams.setdefault(device_id, [Stream.null])[-1] = self
        return self

    @property
    def done(self) -> bool:  # every launch has run by the time it returns
        return True

    def synchronize(self) -> None:  # cudaStreamSynchronize on a capturing stream fails the capture
        if self._recording is not None:
            _fail_capture(self._recording, "Stream.synchronize()")
        COUNTS.syncs += 1

    def begin_capture(self, mode: Any = None) -> None:
        if self.ptr in (0, 1):
            raise RuntimeError("cannot capture on the default (legacy) stream")
        if self._recording is not None:  # cudaStreamBeginCapture on a capturing stream
            raise _cuda_error(_ILLEGAL_STATE, "begin_capture on a capturing stream")
        self._recording = _Recording()

    def end_capture(self) -> Graph:
        recording, self._recording = self._recording, None
        if recording is None:
            raise _cuda_error(_ILLEGAL_STATE, "end_capture on a stream that is not capturing")
        if recording.invalidated is not None:
            raise _cuda_error(_CAPTURE_INVALIDATED, f"the capture failed at {recording.invalidated}")
        graph = Graph.__new__(Graph)
        graph._steps = recording.steps
        return graph

    def is_capturing(self) -> bool:
        return self._recording is not None


Stream.null = Stream(null=True)


def _check_stream_device_match(device_id: int) -> int:
    """cupy/cuda/stream.pyx check_stream_device_match."""
    current = get_device_id()
    if device_id == -1:
        device_id = current
    if device_id != current:
        raise RuntimeError(f"The device that the stream is created on ({device_id}) does not match with the "
                           f"current device ({current})")
    return device_id


def get_current_stream(device_id: int = -1) -> Stream:
    """cupy/cuda/stream.pyx get_current_stream: the current stream of `device_id` (the current device's)."""
    if device_id == -1:
        device_id = get_device_id()
    return _thread.streams.get(device_id, [Stream.null])[-1]


class Event:
    """cupy/cuda/stream.pyx Event: a point in a stream's work. Every launch here has run by the time it returns,
    so an event is done at once (Event.done: eventQuery(ptr) == cudaSuccess, also before any record);
    synchronize() is cudaEventSynchronize, a host wait, counted as a sync."""

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        if interprocess and not disable_timing:  # Event.__init__ (stream.pyx)
            raise ValueError("Timing must be disabled for interprocess events")
        self.ptr = id(self)

    @property
    def done(self) -> bool:
        return True

    def record(self, stream: Any = None) -> None:  # Event.record: eventRecord(ptr, stream or the current one)
        pass

    def synchronize(self) -> None:  # Event.synchronize: eventSynchronize(ptr), the host waits
        COUNTS.syncs += 1


class Graph:
    """cupy/cuda/graph.pyx class Graph: made only by Stream.end_capture; launch(stream=None) replays it on the
    current stream (cudaGraphLaunch). Launched into a capturing stream, it is recorded as one step."""

    _steps: list[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("currently this class cannot be initiated by the user and must be created via "
                                  "stream capture")

    def launch(self, stream: Stream | None = None) -> None:
        if _recording(stream) is None:  # one cudaGraphLaunch, whatever the graph holds
            COUNTS.graph_launches += 1
        _enqueue(self._replay, stream)

    def upload(self, stream: Stream | None = None) -> None:  # cudaGraphUpload: nothing to do on the host
        pass

    def _replay(self) -> None:
        for step in self._steps:
            step()


def _recording(stream: Stream | None = None) -> _Recording | None:
    return (stream if stream is not None else get_current_stream())._recording


def _enqueue(step: Any, stream: Stream | None = None) -> None:
    """Run `step` now, or record it when the stream (the current one by default) is capturing."""
    recording = _recording(stream)
    if recording is None:
        step()
    else:
        recording.steps.append(step)


def _fail_capture(recording: _Recording, what: str) -> None:
    recording.invalidated = what
    raise _cuda_error(_CAPTURE_UNSUPPORTED, f"{what} while the current stream is capturing")


def _refuse_in_capture(what: str) -> None:
    recording = _recording()
    if recording is not None:
        _fail_capture(recording, what)


def _poison(a: np.ndarray) -> None:
    """Fill a buffer made during a capture with 0xFF bytes (NaN for floats): its value exists only after a replay."""
    a.reshape(-1).view(np.uint8).fill(0xFF)


# --- memory pools -------------------------------------------------------------------------------------------


class MemoryPointer:
    """cupy/cuda/memory.pyx MemoryPointer: the `ptr` and `device_id` of an allocation (made only by the stand-in,
    so its constructor is not CuPy's MemoryPointer(mem, offset))."""

    def __init__(self, ptr: int, size: int, device_id: int) -> None:
        self.ptr, self.device_id, self._size = ptr, device_id, size


class MemoryPool:
    """cupy/cuda/memory.pyx MemoryPool: malloc(size) rounds up to the 512-byte allocation unit and counts the
    bytes. The stand-in never frees or reuses a block (the guard check keeps every buffer), so used_bytes only
    grows; CuPy reuses freed blocks, which is why _graph.py gives a capture its own pool."""

    def __init__(self, allocator: Any = None) -> None:
        self._bytes = 0

    def malloc(self, size: int) -> MemoryPointer:
        size = -(-int(size) // 512) * 512
        self._bytes += size
        return MemoryPointer(0, size, get_device_id())

    def used_bytes(self) -> int:
        return self._bytes

    def total_bytes(self) -> int:
        return self._bytes

    def free_bytes(self) -> int:
        return 0

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        pass


class OutOfMemoryError(MemoryError):
    """cupy/cuda/memory.pyx OutOfMemoryError(size, total, limit=0)."""

    def __init__(self, size: int, total: int, limit: int = 0) -> None:
        super().__init__(f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes).")


class PinnedMemoryPool:
    """cupy/cuda/pinned_memory.pyx PinnedMemoryPool: nothing is pinned here, so nothing to free."""

    def __init__(self, allocator: Any = None) -> None:
        pass

    def free_all_blocks(self) -> None:
        pass

    def n_free_blocks(self) -> int:
        return 0


class _PinnedMemory(bytearray):
    """cupy/cuda/pinned_memory.pyx PinnedMemoryPointer as alloc_pinned_memory returns it: host memory with a
    `ptr`, readable through the buffer protocol (``numpy.frombuffer(mem, dtype, count)``, as cupyx.empty_pinned
    does). Made only by alloc_pinned_memory, so its constructor is not CuPy's PinnedMemoryPointer(mem, offset)."""

    @property
    def ptr(self) -> int:
        return ctypes.addressof((ctypes.c_char * max(len(self), 1)).from_buffer(self)) if len(self) else 0

    def size(self) -> int:
        return len(self)


_pinned_blocks: list[_PinnedMemory] = []  # every pinned block (never freed here, as the guarded buffers)


def alloc_pinned_memory(size: int) -> _PinnedMemory:
    """cupy/cuda/pinned_memory.pyx alloc_pinned_memory(size): page-locked host memory (cudaHostAlloc)."""
    mem = _PinnedMemory(int(size))
    _pinned_blocks.append(mem)
    return mem


def is_memory_pinned(data: int) -> bool:
    """cupy/cuda/pinned_memory.pyx is_memory_pinned(data): whether the host address lies in pinned memory."""
    return any(b.ptr <= data < b.ptr + len(b) for b in _pinned_blocks if len(b))


def _is_pinned(a: np.ndarray) -> bool:
    return a.nbytes > 0 and is_memory_pinned(a.__array_interface__["data"][0])


@contextlib.contextmanager
def using_allocator(allocator: Any = None) -> Any:
    """cupy/cuda/__init__.py using_allocator: a thread-local allocator for this block (None: no pool)."""
    previous = _thread.allocator
    _thread.allocator = allocator
    try:
        yield
    finally:
        _thread.allocator = previous


# --- matmul compute type ------------------------------------------------------------------------------------

# cupy/_core/_routines_linalg.pyx: the COMPUTE_TYPE_* constants, compute_types (TBD until first asked)
COMPUTE_TYPES = {"COMPUTE_TYPE_TBD": 0, "COMPUTE_TYPE_DEFAULT": 1, "COMPUTE_TYPE_PEDANTIC": 2,
                 "COMPUTE_TYPE_FP16": 3, "COMPUTE_TYPE_FP32": 4, "COMPUTE_TYPE_FP64": 5, "COMPUTE_TYPE_BF16": 6,
                 "COMPUTE_TYPE_TF32": 7}
_TF32 = COMPUTE_TYPES["COMPUTE_TYPE_TF32"]


def _compute_index(dtype: Any) -> int:  # _routines_linalg.pyx to_compute_type_index
    char = np.dtype(dtype).char
    if char == "e":
        return 1
    if char in "fF":
        return 2
    if char in "dD":
        return 3
    raise TypeError(f"dtype is not supported: {dtype}")


def set_compute_type(dtype: Any, compute_type: int) -> None:
    """_routines_linalg.pyx set_compute_type (every device here has compute capability 8.0, so TF32 is kept)."""
    if compute_type not in COMPUTE_TYPES.values():
        raise ValueError(f"Unknown compute type: {compute_type}")
    _thread_shared.compute_types[_compute_index(dtype)] = compute_type


def get_compute_type(dtype: Any) -> int:
    """_routines_linalg.pyx get_compute_type: TBD becomes TF32 for float32 when CUPY_TF32 > 0, else DEFAULT."""
    import os

    index = _compute_index(dtype)
    if _thread_shared.compute_types[index] == 0:
        tf32 = np.dtype(dtype).char in "fF" and int(os.getenv("CUPY_TF32", "0")) > 0
        set_compute_type(dtype, _TF32 if tf32 else COMPUTE_TYPES["COMPUTE_TYPE_DEFAULT"])
    return _thread_shared.compute_types[index]


_thread_shared = SimpleNamespace(compute_types=[0, 0, 0, 0])  # process-wide in CuPy (a module global)


def _tf32(a: np.ndarray) -> np.ndarray:
    """float32 `a` rounded to TF32 (10 explicit mantissa bits, round to nearest even), as the tensor cores read
    it under CUBLAS_COMPUTE_32F_FAST_TF32; NVIDIA does not document the rounding, so this is a model."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0xFFF) + ((bits >> np.uint32(13)) & np.uint32(1))) & np.uint32(0xFFFFE000)
    out = rounded.view(np.float32)
    return np.where(np.isfinite(a), out, a)


def _matmul_shape(a: np.ndarray, b: np.ndarray) -> tuple:
    if a.ndim == 1 and b.ndim == 1:
        return ()
    if a.ndim == 1:
        return b.shape[:-2] + (b.shape[-1],)
    if b.ndim == 1:
        return a.shape[:-1]
    return np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])


def _gemm_into(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b in the current compute type (plain host arrays)."""
    if out.dtype == np.float32 and get_compute_type(np.float32) == _TF32:
        a, b = _tf32(a), _tf32(b)
    np.matmul(a, b, out=out)


def captured_gemm(a: FakeArray, b: FakeArray, out: FakeArray) -> FakeArray:
    """The seam for nnxp.ops._cublas._gemm (cuBLAS called through ctypes while a graph is captured, which cannot
    load here): what cublas<S|D>gemm on the current stream does, recorded when that stream is capturing. CuPy's
    own matmul refuses capture (cupy_backends/cuda/libs/cublas.pyx setStream); nnxp's direct call does not."""
    dev = get_device_id()
    for x in (a, b, out):
        _check_peer_access(x, dev)
    pa, pb, po = a.view(np.ndarray), b.view(np.ndarray), out.view(np.ndarray)
    compute = get_compute_type(np.float32)  # cuBLAS's math mode is read when the call is made (captured)
    _count_launch("gemm")

    def step() -> None:
        if po.dtype == np.float32 and compute == _TF32:
            np.matmul(_tf32(pa), _tf32(pb), out=po)
        else:
            np.matmul(pa, pb, out=po)

    _enqueue(step)
    return out


# --- arrays -------------------------------------------------------------------------------------------------


def _plain(x: Any) -> Any:
    """`x` with every device array (also inside a tuple or list, one level deep) as its plain NumPy view."""
    if isinstance(x, FakeArray):
        return x.view(np.ndarray)
    if isinstance(x, (tuple, list)):
        return type(x)(_plain(v) for v in x)
    return x


def _arrays_in(values: Any) -> list[FakeArray]:
    found = []
    for v in values:
        if isinstance(v, FakeArray):
            found.append(v)
        elif isinstance(v, (tuple, list)):
            found.extend(a for a in v if isinstance(a, FakeArray))
    return found


def _advanced(key: Any) -> bool:
    """Whether an index takes _scatter_op's advanced-indexing branch (an integer or boolean array, a list)."""
    parts = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (np.ndarray, list)) for k in parts)


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
        return MemoryPointer(self.ctypes.data, self.nbytes, self._device_id)

    # --- device to host: a synchronising copy, refused while capturing (core.pyx get -> stream.synchronize)

    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        """core.pyx _ndarray_base.get: a host copy (from any current device: it switches to the array's)."""
        self._read_back("ndarray.get()", blocking)
        host = np.array(self.view(np.ndarray), order=order)
        if out is not None:
            out[...] = host
            return out
        return host

    def _read_back(self, what: str, blocking: bool = True) -> None:
        """core.pyx _ndarray_base.get (l.2190-2197): prev = getDevice(); setDevice(self.device.id);
        copy_to_host_async; stream.synchronize() when blocking; setDevice(prev). item, tolist, float(), int()
        and bool() read the value through get() as well (core.pyx)."""
        _refuse_in_capture(what)
        if self.size == 0:  # get() returns an empty host array before any copy (core.pyx l.2165)
            return
        previous = get_device_id()
        _set_device(self._device_id)
        COUNTS.syncs += bool(blocking)
        _set_device(previous)

    def item(self, *args: Any) -> Any:  # core.pyx item: self.get().item()
        self._read_back("ndarray.item()")
        return self.view(np.ndarray).item(*args)

    def tolist(self) -> Any:
        self._read_back("ndarray.tolist()")
        return self.view(np.ndarray).tolist()

    def __float__(self) -> float:
        self._read_back("float(ndarray)")
        return float(self.view(np.ndarray))

    def __int__(self) -> int:
        self._read_back("int(ndarray)")
        return int(self.view(np.ndarray))

    def __bool__(self) -> bool:
        self._read_back("bool(ndarray)")
        return bool(self.view(np.ndarray))

    def set(self, arr: Any, stream: Any = None) -> None:
        """core.pyx _ndarray_base.set: a host array of exactly this dtype and shape, nothing else."""
        if not isinstance(arr, np.ndarray) or isinstance(arr, FakeArray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        # core.pyx set (l.2210-2243): a contiguous host array, then setDevice(self.device.id),
        # copy_from_host_async(arr.ctypes.data) on the current stream, setDevice(prev). From pageable memory the
        # copy is staged by the driver and may wait for the stream; it cannot be captured. From pinned memory it
        # is a true async copy, and a capture records it as a memcpy node that reads the host buffer at replay.
        source = np.ascontiguousarray(arr)
        pinned = _is_pinned(source)
        if not pinned:
            _refuse_in_capture("a copy from pageable host memory (ndarray.set)")
        previous = get_device_id()
        _set_device(self._device_id)
        if _recording() is None:
            _count_h2d(source)
        target = self.view(np.ndarray)
        _enqueue(lambda: target.__setitem__(..., source))
        _set_device(previous)

    # --- kernels: ufuncs, reductions, fills, copies (recorded while capturing)

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
        plain = [_plain(x) for x in inputs]
        fn = getattr(ufunc, method)
        _count_launch(f"{'ufunc' if method == '__call__' else method}:{ufunc.__name__}")  # one kernel each
        recording = _recording()
        if recording is None:
            if out is not None:
                kwargs["out"] = _plain(out)
            result = fn(*plain, **kwargs)
            if method == "at":
                return None
            results = result if isinstance(result, tuple) else (result,)
            if out is None:  # each result a new array (a reduction's scalar is a 0-d array in CuPy)
                for r in results:
                    _count_alloc(np.asarray(r).nbytes)
            outs = out if out is not None else (None,) * len(results)
            # a reduction to a scalar gives a 0-d device array in CuPy (_reduction.pyx), which float() reads back
            wrapped = tuple(
                o if o is not None else (np.asarray(r).view(FakeArray) if isinstance(r, (np.ndarray, np.generic))
                                         else r)
                for r, o in zip(results, outs, strict=True)
            )
            return wrapped if isinstance(result, tuple) else wrapped[0]
        # capturing: one recorded kernel; a result it allocates is poison until a replay
        if method == "at" or out is not None:
            if out is not None:
                kwargs["out"] = _plain(out)
            recording.steps.append(lambda: fn(*plain, **kwargs))
            return None if method == "at" else (out if len(out) > 1 else out[0])
        with np.errstate(all="ignore"):
            result = fn(*plain, **kwargs)  # only for the result's shape and dtype
        results = result if isinstance(result, tuple) else (result,)
        bufs = tuple(_new_buffer(np.asarray(r)) for r in results)
        kwargs["out"] = tuple(b.view(np.ndarray) for b in bufs)
        recording.steps.append(lambda: fn(*plain, **kwargs))
        return bufs if isinstance(result, tuple) else bufs[0]

    def __getitem__(self, key: Any) -> Any:
        # core.pyx _ndarray_base.__getitem__ -> _routines_indexing.pyx _ndarray_getitem: basic indexing is a
        # view; an integer or boolean array index gathers into a new array (a kernel)
        result = super().__getitem__(key)
        if isinstance(result, np.ndarray) and not np.may_share_memory(result, self):
            _count_launch("take")
            _count_alloc(result.nbytes)
            recording = _recording()
            keys = key if isinstance(key, tuple) else (key,)
            integer = all(not (isinstance(k, np.ndarray) and k.dtype == np.bool_) for k in keys)
            if recording is not None and integer:
                # integer array indices only: _ndarray_getitem -> a.take(s, axis) (one index array) or
                # _getitem_multiple (several), a gather kernel on the stream that reads the indices on the
                # device, so a capture records it and its values exist only after a replay. (A boolean mask
                # needs its count on the host first, _getitem_mask_single -> nonzero: still run at once here.)
                buf = _new_buffer(result)
                target, source, index = buf.view(np.ndarray), self.view(np.ndarray), _plain(key)
                recording.steps.append(lambda: np.copyto(target, source[index]))
                return buf
        return result

    def __setitem__(self, key: Any, value: Any) -> None:
        # core.pyx _ndarray_base.__setitem__ -> _scatter_op: an elementwise copy on the current device
        # (_check_peer_access for the destination and a device-array value)
        if isinstance(value, FakeArray):
            dev = get_device_id()
            _check_peer_access(self, dev)
            _check_peer_access(value, dev)
        # _routines_indexing.pyx _scatter_op (l.1086-1103): fill for a scalar, a memcpy for a same-layout
        # contiguous array, elementwise_copy otherwise: one operation on the stream in each case
        if not isinstance(value, FakeArray) and not _advanced(key) and np.ndim(value) != 0:
            # _scatter_op l.1088-1093: a value that is not a device array goes to fill, which refuses a
            # non-scalar (core.pyx fill l.1016-1019; "Refuse assignment from CPU arrays, see gh-2079")
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        _count_launch("setitem")
        recording = _recording()
        if recording is None:  # (plain views: NumPy would read a 0-d device value through float(), a host read)
            super().__setitem__(_plain(key), _plain(value))
            return
        if isinstance(value, np.ndarray) and not isinstance(value, FakeArray):
            _fail_capture(recording, "a copy from pageable host memory (setitem of a NumPy array)")
        target, source, index = self.view(np.ndarray), _plain(value), _plain(key)
        recording.steps.append(lambda: target.__setitem__(index, source))

    def fill(self, value: Any) -> None:  # core.pyx fill (l.1000-1030): a memset or an elementwise kernel
        if np.ndim(value) != 0:  # (l.1011-1019)
            kind = "cupy" if isinstance(value, FakeArray) else "numpy"
            raise ValueError(f"non-scalar {kind}.ndarray cannot be used for fill")
        _count_launch("memset" if np.all(np.asarray(_plain(value)) == 0) and self.flags.c_contiguous else "fill")
        target = self.view(np.ndarray)
        _enqueue(lambda: target.fill(value))

    def astype(self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None,
               copy: bool = True) -> Any:  # core.pyx astype: elementwise_copy into a new array
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return self._copy_kernel(lambda a: a.astype(dtype, order=order))

    def copy(self, order: str = "C") -> Any:  # core.pyx copy: elementwise_copy on the current device
        return self._copy_kernel(lambda a: a.copy(order=order))

    def _copy_kernel(self, fn: Any) -> FakeArray:
        source = self.view(np.ndarray)
        _count_launch("copy")
        _count_alloc(self.nbytes)
        recording = _recording()
        if recording is None:
            return _on_device(fn(source))
        buf = _new_buffer(fn(source))
        target = buf.view(np.ndarray)
        recording.steps.append(lambda: np.copyto(target, fn(source), casting="unsafe"))
        return buf


def _kernel_method(name: str) -> Any:
    """ndarray.`name` as a CuPy kernel (recorded while capturing): NumPy runs these methods without a ufunc."""

    def apply(a: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        return getattr(a, name)(*args, **kwargs)

    apply.__name__ = f"ndarray.{name}"

    def method(self: FakeArray, *args: Any, **kwargs: Any) -> Any:
        if _recording() is None:
            result = _on_device(getattr(np.ndarray, name)(self, *args, **kwargs))
            _count_kernel(f"ndarray.{name}", result, [self], kwargs.get("out"))
            return result
        return _numpy_function(apply)(self, *args, **kwargs)

    method.__name__ = name
    return method


# core.pyx _ndarray_base methods that launch a kernel in CuPy but run without a ufunc in NumPy
for _name in ("argmax", "argmin", "cumsum", "cumprod", "dot", "clip", "round", "take", "repeat", "flatten",
              "ravel", "argsort", "trace", "diagonal", "nonzero"):
    setattr(FakeArray, _name, _kernel_method(_name))


def _mean(self: FakeArray, axis: Any = None, dtype: Any = None, out: Any = None, keepdims: bool = False) -> Any:
    """ndarray.mean as CuPy 14.2 runs it (_routines_statistics.pyx _ndarray_mean), two kernels either way:
    - an integer or bool input (or an integer dtype) sums in float64 by the one-kernel reduction cupy_mean
      (cub.pyx cub_reduction gives up when a dtype is given), then ``result.astype(dtype_out)`` copies it;
    - a float input goes to CUB first (CUPY_ACCELERATORS defaults to 'cub', _accelerator.pyx): one segmented or
      device reduction into the result (its temporary storage one more pool allocation, cub.pyx), then
      ``true_divide(result, n, out=result)``. (CUB's device-wide reduce may run two kernels; counted as one.)"""
    if _recording() is not None:
        return _numpy_function(lambda a, *args, **kw: a.mean(*args, **kw))(self, axis, dtype, out, keepdims)
    plain = self.view(np.ndarray)
    result = _on_device(np.ndarray.mean(plain, axis, dtype, None if out is None else _plain(out), keepdims))
    result = out if out is not None else result
    whole = np.asarray(result)
    integer = (dtype is None and self.dtype.kind in "iub") or (dtype is not None and np.dtype(dtype).kind in "iub")
    if integer:
        _count_launch("reduce:cupy_mean")
        if out is None:
            _count_alloc(whole.nbytes)
            _count_launch("copy")  # astype(dtype_out): a new array
            _count_alloc(whole.nbytes)
    else:
        _count_launch("cub:sum")
        if out is None:
            _count_alloc(whole.nbytes)
        _count_alloc(max(whole.nbytes, 1))  # CUB's temporary storage
        _count_launch("ufunc:true_divide")
    return result


FakeArray.mean = _mean


def _count_kernel(name: str, result: Any, inputs: list[FakeArray], out: Any) -> None:
    """Count what running a CuPy function or method eagerly costs: a kernel and an allocation per new array,
    nothing for a view (reshape, a contiguous ravel, diagonal) or a host value of host inputs (numpy.ndim)."""
    if out is not None:
        _count_launch(name)
        return
    results = result if isinstance(result, tuple) else (result,)
    new = [r for r in results if (isinstance(r, np.ndarray) and not any(np.may_share_memory(r, a) for a in inputs))
           or (isinstance(r, np.generic) and inputs)]
    if new:
        _count_launch(name)
        for r in new:
            _count_alloc(np.asarray(r).nbytes)


class _Guarded:
    """Every stand-in allocation, to check after each launch that no kernel wrote past its buffer."""

    def __init__(self) -> None:
        self.buffers: list[np.ndarray] = []

    def alloc(self, a: Any, dtype: Any = None) -> FakeArray:
        a = np.asarray(a.view(np.ndarray) if isinstance(a, FakeArray) else a, dtype=dtype)
        _count_alloc(a.nbytes)  # core.pyx _ndarray_init -> memory.alloc: one pool malloc
        raw = np.full(a.nbytes + 2 * _GUARD, 0xA5, dtype=np.uint8)
        self.buffers.append(raw)
        view = raw[_GUARD:_GUARD + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        out = view.view(FakeArray)
        out._device_id = get_device_id()
        if _thread.allocator is not None:  # cupy/cuda/memory.pyx alloc: the thread-local allocator serves it
            out._memory = _thread.allocator(a.nbytes)
        return out

    def check(self, what: str) -> None:
        for raw in self.buffers:
            if not ((raw[:_GUARD] == 0xA5).all() and (raw[-_GUARD:] == 0xA5).all()):
                raise AssertionError(f"{what} wrote outside a buffer of {raw.size - 2 * _GUARD} bytes")


_guarded = _Guarded()  # replaced by each stand_in_cupy()


def _new_buffer(template: np.ndarray) -> FakeArray:
    """A guarded allocation shaped like `template`, poisoned: a buffer made during a capture."""
    buf = _guarded.alloc(template)
    _poison(buf.view(np.ndarray))
    return buf


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


# --- random -------------------------------------------------------------------------------------------------


class Generator:
    """cupy/random/_generator_api.pyx class Generator, drawing from NumPy's PCG64 instead of cuRAND's XORWOW.

    The bits differ from CuPy's (no test may depend on them); what follows CuPy is the shape rule of each
    method, that its draws land on the current device, and that a captured draw happens at each replay (the
    cuRAND state lives in device memory).
    """

    def __init__(self, bit_generator: Any) -> None:
        self.bit_generator = bit_generator
        self._rng = bit_generator._rng

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
        draw_dtype = np.float64 if dtype.char == "d" else np.float32
        y = _guarded.alloc(np.empty(size, dtype=draw_dtype))
        target = y.view(np.ndarray)
        _count_launch("random")
        _enqueue(lambda: target.__setitem__(..., self._rng.random(size, dtype=draw_dtype)))
        if out is not None:
            out[...] = y  # elementwise_copy broadcasts y (shape `size`, () when None) into out
            y = out
        return y.astype(dtype, copy=False)


class _BitGenerator:
    """cupy/random/_bit_generator.pyx XORWOW(seed) as default_rng makes it, here NumPy's PCG64."""

    def __init__(self, seed: Any = None) -> None:
        self._rng = np.random.default_rng(seed)


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


class RawModule:
    """cupy/_core/raw.pyx RawModule(code=..., options=..., name_expressions=...) over the emulator: only
    kernels.cu with nnxp's options, as nnxp builds it."""

    _emulator: Emulator

    def __init__(self, code: str | None = None, *, path: str | None = None, options: tuple = (),
                 backend: str = "nvrtc", translate_cucomplex: bool = False, enable_cooperative_groups: bool = False,
                 name_expressions: Any = None, jitify: Any = None) -> None:
        assert tuple(options) == _cuda.NVRTC_OPTIONS
        assert code == _cuda._source()
        self.expressions = set(name_expressions)

    def get_function(self, name: str) -> RawKernel:  # raw.pyx RawModule.get_function: a RawKernel
        assert name in self.expressions
        return RawKernel(name, self._emulator)


class RawKernel:
    """cupy/_core/raw.pyx RawKernel called as kernel(grid, block, args): one launch on the current stream (made
    only by RawModule.get_function, so its constructor is not CuPy's RawKernel(code, name, ...))."""

    launches: dict[str, int] = {}

    def __init__(self, name: str, emulator: Emulator) -> None:
        self.name, self.emulator = name, emulator

    @property
    def kernel(self) -> Any:  # raw.pyx RawKernel.kernel: the loaded Function, whose `ptr` is the CUfunction
        return SimpleNamespace(ptr=id(self))

    def __call__(self, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0,
                 enable_cooperative_groups: bool = False) -> None:
        # raw.pyx RawKernel.__call__ -> cupy/cuda/function.pyx Function.__call__ -> _launch: array arguments pass
        # as raw pointers, unchecked; a kernel dereferencing another device's memory without peer access faults
        # on a GPU (cudaErrorIllegalAddress), which the stand-in reports at the launch instead.
        dev = get_device_id()
        for i, a in enumerate(args):
            if isinstance(a, FakeArray) and a._device_id != dev:
                raise _cuda_error(_ILLEGAL_ADDRESS, f"{self.name} argument {i} lives on device {a._device_id}, "
                                                    f"launched on device {dev}")
        if len(block) == 1:
            assert block[0] % 32 == 0, f"{self.name}: block {block} is not whole warps"
        plain = tuple(_plain(a) for a in args)  # pointers; scalars are copied into the launch (or the graph)
        grid, block = tuple(grid), tuple(block)
        guarded = _guarded
        _count_launch(self.name)

        def launch() -> None:
            k = RawKernel.launches.get(self.name, 0)
            RawKernel.launches[self.name] = k + 1
            self.emulator.launch(self.name, grid, block, plain, schedule=_SCHEDULE_CYCLE[k % 3], seed=k)
            guarded.check(self.name)

        _enqueue(launch)


# --- the module ---------------------------------------------------------------------------------------------


def _numpy_function(fn: Any) -> Any:
    """A NumPy function as CuPy's namesake: a result on the current device, recorded while capturing."""

    name = getattr(fn, "__name__", str(fn))

    def call(*args: Any, **kwargs: Any) -> Any:
        recording = _recording()
        arrays = _arrays_in((*args, *kwargs.values()))
        if recording is None:
            before = COUNTS.launches
            result = _on_device(fn(*args, **kwargs))
            if COUNTS.launches == before:  # (numpy.take calls ndarray.take, which counted itself)
                _count_kernel(name, result, arrays, kwargs.get("out"))
            return result
        plain_args, plain_kwargs = _plain(args), {k: _plain(v) for k, v in kwargs.items()}
        if kwargs.get("out") is not None:
            recording.steps.append(lambda: fn(*plain_args, **plain_kwargs))
            return kwargs["out"]
        with np.errstate(all="ignore"):
            result = fn(*plain_args, **plain_kwargs)
        if isinstance(result, np.generic) and arrays:  # CuPy returns a 0-d device array, not a scalar
            result = np.asarray(result)
        if not isinstance(result, np.ndarray):
            if arrays:  # a device value read on the host
                _fail_capture(recording, f"numpy.{getattr(fn, '__name__', fn)} returning a host value")
            return result
        for a in arrays:  # a view of a device array needs no kernel
            if np.may_share_memory(result, a.view(np.ndarray)):
                view = result.view(FakeArray)
                view._device_id = a._device_id
                return view
        buf = _new_buffer(result)
        target = buf.view(np.ndarray)
        recording.steps.append(lambda: np.copyto(target, fn(*plain_args, **plain_kwargs), casting="unsafe"))
        return buf

    return call


FROM_NUMPY: set[str] = set()  # the NumPy names reached through the stand-in (checked against cupy's)


class _FakeCupy(SimpleNamespace):
    def __getattr__(self, name: str) -> Any:
        # everything not overridden (the references' ufuncs and functions) is NumPy's, returning device arrays;
        # ufuncs check devices in FakeArray.__array_ufunc__
        attr = getattr(np, name)
        FROM_NUMPY.add(name)
        if callable(attr) and not isinstance(attr, (np.ufunc, type)):
            return _numpy_function(attr)
        return attr


def stand_in_cupy(emulator: Emulator) -> Any:
    """A `cupy` module for nnxp.backend whose arrays live in host memory and whose kernels run here."""
    global _guarded, COUNTS
    guarded = _guarded = _Guarded()
    COUNTS = Counts()
    _pinned_blocks.clear()
    _thread.device, _thread.stack, _thread.streams, _thread.stream_devices = 0, [], {}, []
    _thread.allocator = None
    _thread_shared.compute_types[:] = [0, 0, 0, 0]
    default_pool, pinned_pool = MemoryPool(), PinnedMemoryPool()

    # cupy/_creation/basic.py empty / zeros / empty_like / zeros_like: cupy.ndarray(...) on the current device;
    # zeros adds a memset on the current stream (recorded while capturing: the buffer is poison until a replay)
    def _made(a: np.ndarray, zero_fill: bool) -> FakeArray:
        out = guarded.alloc(a)
        if _recording() is not None:
            _poison(out.view(np.ndarray))
            if zero_fill:
                out.fill(0)
        elif zero_fill:
            _count_launch("memset")  # cupy/_creation/basic.py zeros: a.data.memset_async(0, a.nbytes)
        return out

    def empty(shape: Any, dtype: Any = float, order: str = "C") -> FakeArray:
        return _made(np.empty(shape, dtype, order), False)

    def zeros(shape: Any, dtype: Any = float, order: str = "C") -> FakeArray:
        return _made(np.zeros(shape, dtype, order), True)

    def empty_like(prototype: Any, dtype: Any = None, order: str = "K", subok: Any = None,
                   shape: Any = None) -> FakeArray:
        return _made(np.empty_like(_plain(prototype), dtype, order, shape=shape), False)

    def zeros_like(a: Any, dtype: Any = None, order: str = "K", subok: Any = None, shape: Any = None) -> FakeArray:
        return _made(np.zeros_like(_plain(a), dtype, order, shape=shape), True)

    def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: bool = False) -> FakeArray:
        # cupy/_creation/from_data.py asarray -> core.pyx array(copy=False) -> _array_from_cupy_ndarray: the same
        # array when it is on the current device already and of that dtype; a copy onto the current device
        # (src.copy(), a peer copy) when it lives on another; host data is copied to the current device.
        # Host data (core.pyx _array_default, l.3066-3101): a 0-d array is a fill; otherwise the copy comes
        # from pinned memory, the source's own when it is pinned, else a pinned transfer buffer CuPy copies the
        # data into first (_alloc_async_transfer_buffer); with blocking=True the stream is synchronised.
        if isinstance(a, FakeArray) and a._device_id == get_device_id():
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
        _refuse_in_capture("a copy to the device (cupy.asarray)")
        out = guarded.alloc(a, dtype=dtype)
        if isinstance(a, FakeArray):
            _count_launch("memcpy:peer")
        elif out.ndim == 0:
            _count_launch("fill")
        elif out.size:
            COUNTS.h2d_pinned += 1
        COUNTS.syncs += bool(blocking)
        return out

    def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, *, blocking: bool = True) -> Any:
        # cupy/_core/core.pyx asnumpy: ndarray.get() for device arrays, numpy.asarray otherwise
        if isinstance(a, FakeArray):
            return a.get(order=order, out=out)
        return np.asarray(a, order=order)

    def matmul(a: Any, b: Any, *, out: Any = None, **kwargs: Any) -> FakeArray:
        # cupy/_core/_routines_linalg.pyx matmul: cuBLAS in the current compute type (get_compute_type), on the
        # current device's arrays (checked as ufuncs are); refused while capturing by cupy_backends/cuda/libs/
        # cublas.pyx setStream ("calling cuBLAS API during stream capture is currently unsupported")
        if _recording() is not None:
            raise NotImplementedError("calling cuBLAS API during stream capture is currently unsupported")
        dev = get_device_id()
        for x in (a, b) + ((out,) if out is not None else ()):
            if isinstance(x, FakeArray):
                _check_peer_access(x, dev)
            else:
                raise TypeError(f"Unsupported type {type(x)}")
        pa, pb = a.view(np.ndarray), b.view(np.ndarray)
        if out is None:
            out = guarded.alloc(np.empty(_matmul_shape(pa, pb), dtype=np.result_type(pa, pb)))
        _count_launch("gemm")
        _gemm_into(pa, pb, out.view(np.ndarray))
        return out

    def default_rng(seed: Any = None) -> Generator:  # cupy/random/__init__.py default_rng -> Generator(XORWOW(seed))
        return Generator(_BitGenerator(seed))

    def get_device_count() -> int:  # cupy_backends/cuda/api/runtime.pyx getDeviceCount
        return DEVICE_COUNT

    class _Module(RawModule):
        pass

    _Module._emulator = emulator
    routines_linalg = SimpleNamespace(**COMPUTE_TYPES, get_compute_type=get_compute_type,
                                      set_compute_type=set_compute_type)
    return _FakeCupy(
        __name__="cupy",  # the module's name, as nnxp keys caches by it (layers.py, sklearn.py)
        ndarray=FakeArray,
        float16=np.float16, float32=np.float32, float64=np.float64, int32=np.int32,
        empty=empty, zeros=zeros, empty_like=empty_like, zeros_like=zeros_like, asarray=asarray, asnumpy=asnumpy,
        matmul=matmul,
        get_default_memory_pool=lambda: default_pool, get_default_pinned_memory_pool=lambda: pinned_pool,
        random=SimpleNamespace(default_rng=default_rng, Generator=Generator),
        RawModule=_Module,
        _core=SimpleNamespace(get_compute_type=get_compute_type, set_compute_type=set_compute_type,
                              _routines_linalg=routines_linalg),
        cuda=SimpleNamespace(
            Device=Device, Stream=Stream, Event=Event, Graph=Graph, MemoryPool=MemoryPool,
            PinnedMemoryPool=PinnedMemoryPool, using_allocator=using_allocator,
            get_current_stream=get_current_stream, get_device_id=get_device_id,
            runtime=SimpleNamespace(getDeviceCount=get_device_count, getDevice=get_device_id,
                                    CUDARuntimeError=CUDARuntimeError),
            device=SimpleNamespace(Device=Device, get_device_id=get_device_id),
            stream=SimpleNamespace(Stream=Stream, Event=Event, get_current_stream=get_current_stream),
            graph=SimpleNamespace(Graph=Graph),
            memory=SimpleNamespace(MemoryPool=MemoryPool, OutOfMemoryError=OutOfMemoryError),
            alloc_pinned_memory=alloc_pinned_memory,
            pinned_memory=SimpleNamespace(alloc_pinned_memory=alloc_pinned_memory, is_memory_pinned=is_memory_pinned,
                                          PinnedMemoryPool=PinnedMemoryPool),
        ),
    )
