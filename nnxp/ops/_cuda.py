"""The CUDA kernels' loader and launcher, and the one dispatch rule every fused op follows.

:class:`LazyKernels` compiles ``kernels.cu`` on first use (never at import) into one RawModule per (device,
dtype); :func:`_launch` runs one of its kernels. :class:`Op` pairs a reference with its CUDA override: each
override lives beside its reference (``nnxp/ops/dense.py``, ``loss.py``, ``optim.py``, ``dropout.py``), takes
the reference's arguments and returns what it returns, or ``NotImplemented`` for inputs its kernel does not
handle (not CuPy, not float32/float64, not C-contiguous, empty, mixed devices), so the reference runs instead.
The matmul that works under CUDA-graph capture is :mod:`nnxp.ops._cublas`. CuPy is reached only through
:func:`nnxp.backend.cupy_module` when an override first runs on CuPy arrays.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import operator
import re
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..backend import cupy_module, is_cupy_array, is_out_of_memory
from . import _cublas

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


def kernel_failures() -> dict[str, str]:
    """What failed to build (LazyKernels.failures): where the CuPy references run in the kernels' place."""
    return _KERNELS.failures()


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


class Op:
    """A public op: its NumPy-generic reference, the host path, and the CUDA override registered beside it.

    ``op(*args)`` runs the override (:meth:`override`) for the CuPy arrays its kernel takes, else `host`
    (a compiled CPU loop that falls back to `ref` itself; `ref` when there is none). NumPy inputs pay one
    isinstance check. An Op with an override is listed in :data:`OPS`, which the parity tests walk: each
    registered override is compared with its reference (tests/test_ops_cuda.py).
    """

    def __init__(self, ref: Callable, host: Callable | None = None, name: str | None = None) -> None:
        self.ref = ref
        self.host = host if host is not None else ref
        self.fused: Callable | None = None  # the override: returns NotImplemented for what its kernel declines
        self.examples: Callable | None = None  # (rng, dtype) -> {label: host args}: what `nnxp selftest` runs
        self.__name__ = self.__qualname__ = name or ref.__name__.removesuffix("_ref")
        self.__doc__, self.__module__ = ref.__doc__, ref.__module__
        # what runs when no override takes the inputs (as functools.wraps made it for override() before): the
        # model's weighted loss calls it directly, since the fused loss kernels take no weights
        self.__wrapped__ = self.host
        self.plans: dict[int, LaunchPlan] | None = None  # see plan(); None: every call runs the override in full
        self._per_call: tuple[int, ...] = ()

    def override(self, wrapper: Callable) -> Callable:
        """Register `wrapper` as this op's CUDA override (a decorator); it returns NotImplemented to decline."""
        self.fused = _fused(wrapper)
        OPS[self.__name__] = self
        return self.fused

    def example(self, make: Callable) -> Callable:
        """Register ``make(rng, dtype) -> {label: args}`` (a decorator): host inputs on which ``nnxp selftest``
        compares the override with the reference on the user's GPU (every array argument and result)."""
        self.examples = make
        return make

    def plan(self, per_call: tuple[int, ...] = ()) -> None:
        """Keep the launches of this op's override per set of arrays and make them again (see LaunchPlan).

        For overrides whose only device work is :func:`_launch` and :func:`matmul` into arrays the caller passed
        (anything else calls :func:`unplanned`). `per_call`: positions of arguments that may be a new array on
        each call (a batch's labels) and go straight into the kernels: a new one of the same dtype, shape,
        layout and device takes the old one's place in the kept launches."""
        self.plans, self._per_call = {}, per_call

    def forget(self) -> None:
        """Drop the kept launches (a benchmark or test that replaces CuPy's functions makes them again)."""
        if self.plans is not None:
            self.plans.clear()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        plans = self.plans
        if plans and args:  # (empty until a CUDA call left a plan: a NumPy call pays one dict look-up)
            plan = plans.get(id(args[0]))  # (its plan holds args[0], so that id is not reused while it lives)
            if plan is not None:
                result = plan.run(args, kwargs)
                if result is not _MISS:
                    return result
        fused = self.fused
        if fused is not None and args and is_cupy_array(args[0]):
            result = fused(*args, **kwargs) if plans is None else self._record(args, kwargs)
            if result is not NotImplemented:
                return result
        return self.host(*args, **kwargs)

    def _record(self, args: tuple, kwargs: dict) -> Any:
        """The override, run in full; what it launched is kept as a plan when a later call can repeat it."""
        plans = self.plans
        _RECORD.calls, _RECORD.stream, _RECORD.ok = [], None, not (capturing() or recording())
        try:
            result = self.fused(*args, **kwargs)
            if _RECORD.ok and result is not NotImplemented and _made_of(result, args, kwargs, self._per_call):
                if len(plans) >= _PLANS_MAX:
                    plans.clear()
                plan = LaunchPlan(args, kwargs, self._per_call, _RECORD.calls, result, _RECORD.stream)
                if plan.usable():
                    plans[id(args[0])] = plan
        finally:
            _RECORD.calls = None
        return result

    def __repr__(self) -> str:
        return f"<nnxp op {self.__name__}>"


# --- launch plans: a steady training step's launches, made again without re-deriving them -----------------------
#
# An override spends most of its Python on what depends only on its arrays' dtype, shape, layout and device: the
# argument checks, grid sizes, the kernel look-up, the device and the argument tuple (issue 11: nnxp's own Python
# per step). A training step passes the same arrays every step (the layers' buffers, the parameter views), so an
# Op with plans (Op.plan) keeps what its override launched the first time, holding those arrays, and when the
# very same objects come back (compared with `is`: an id alone could be a freed array's, reused) it launches the
# same kernels with the same arguments again. The first call with any new array, or a new plain argument, runs
# the override in full, with all its checks (and records a plan again).


class _Recorder(threading.local):
    calls: list | None = None  # the launches of the override being recorded (None: not recording)
    stream: tuple | None = None  # the (stream, thread) a recorded scratch buffer belongs to
    ok = False  # False once the override did device work a plan cannot repeat (see unplanned())


_RECORD = _Recorder()
_MISS = object()
_LAUNCH: dict = {}  # the keyword arguments of a recorded kernel launch (none): what tells it from a matmul
_PLAIN = (str, bool, int, float, type(None))  # arguments compared by value (activation names, flags)
_PLANS_MAX = 32  # per op: a few layers x a few batch sizes (full, last, eval); beyond it they start over


def unplanned(allocation: bool = False) -> None:
    """Tell a recording Op that this call did device work other than _launch and matmul (an allocation, a
    CuPy reduction): it must run in full every time. A step being recorded (:func:`recording_step`) is void,
    unless the work was only an `allocation` (the step's list keeps the array, and its launches write it)."""
    _RECORD.ok = False
    if not allocation:
        _STEP.ok = False


# --- a whole training step kept as its launches (nnxp._graph.LaunchedStep): the eager twin of a CUDA graph -----
#
# While a step is recorded, nothing runs: every kernel launch (_launch), matmul and CuPy call made through
# recorded() is appended to a list instead, as a stream capture would record it, and the step is then made by
# launching that list again, one launch at a time. Unlike a capture, it uses the eager step's buffers (the
# stream's scratch, the head's loss): so it allocates nothing, and its launches must run on the stream and thread
# it was recorded on, as an eager step's would (LaunchedStep checks). Device work done any other way would run
# once, at recording, and never again: the ops that do it call unplanned(), which voids the recording, and the
# training loop records only the layers, losses and metrics whose every launch goes through here
# (nnxp.training.step_replayable).


class _StepRecorder(threading.local):
    calls: list | None = None  # (function, args, kwargs) of each launch of the step being recorded
    ok = True  # False once the step did device work the list cannot repeat


_STEP = _StepRecorder()


@contextlib.contextmanager
def recording_step() -> Any:
    """Record this thread's launches instead of running them (nothing runs inside the block: launching the list
    later does the work); yields ``(calls, ok)`` where ``ok()`` tells, after the block, whether the list is the
    whole step. Raises RuntimeError when this thread is already recording one."""
    if _STEP.calls is not None:
        raise RuntimeError("a step is already being recorded on this thread")
    calls: list = []
    _STEP.calls, _STEP.ok = calls, True
    try:
        yield calls, lambda: _STEP.ok
    finally:
        _STEP.calls = None


def recorded(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, a CuPy (or NumPy) call that writes only into its ``out=`` (passed by keyword)
    and allocates nothing; while a step is recorded, it is kept for the step's launches instead, and ``out``
    returned."""
    calls = _STEP.calls
    if calls is None:
        return fn(*args, **kwargs)
    calls.append((fn, args, kwargs))
    return kwargs["out"]


def _made_of(result: Any, args: tuple, kwargs: dict, per_call: tuple) -> bool:
    """Whether every array `result` holds is one of the caller's arrays (so returning it again is right)."""
    kept = [a for i, a in enumerate(args) if i not in per_call] + list(kwargs.values())
    items = result if isinstance(result, tuple) else (result,)
    return all(r is None or any(r is a for a in kept) for r in items)


class LaunchPlan:
    """The launches (kernel or matmul, its arguments) of one override call, for these arguments."""

    __slots__ = ("args", "keys", "values", "per_call", "calls", "slots", "result", "device", "stream", "kernels",
                 "cupy", "get_device")

    def __init__(self, args: tuple, kwargs: dict, per_call: tuple, calls: list, result: Any,
                 stream: tuple | None) -> None:
        self.args, self.keys, self.values = args, tuple(kwargs), tuple(kwargs.values())
        self.per_call, self.calls, self.result, self.stream = per_call, tuple(calls), result, stream
        self.cupy = cupy_module()
        self.get_device = self.cupy.cuda.runtime.getDevice
        self.device = self.get_device()  # every launch was made on this device
        self.kernels = _KERNELS  # and its kernels came from this loader
        # where each per-call argument went: (call, place among that kernel's arguments, argument position)
        self.slots = tuple((c, j, i) for c, (fn, fn_args, fn_kwargs) in enumerate(calls) if fn_kwargs is _LAUNCH
                           for j, a in enumerate(fn_args[2]) for i in per_call if a is args[i])

    def usable(self) -> bool:
        """Whether each per-call argument went only straight into kernels (where run() can put a new one)."""
        for i in self.per_call:
            in_kernels = any(slot[2] == i for slot in self.slots)
            in_matmuls = any(a is self.args[i] for fn, fn_args, fn_kwargs in self.calls if fn_kwargs is not _LAUNCH
                             for a in fn_args)
            if not in_kernels or in_matmuls:
                return False
        return True

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Launch again and return the first call's result; _MISS (nothing launched) when the arguments differ."""
        same = len(args) == len(self.args) and all(map(operator.is_, args, self.args))
        if not same and not self._fits(args):
            return _MISS
        if (kwargs or self.keys) and (tuple(kwargs) != self.keys
                                      or not all(map(operator.is_, kwargs.values(), self.values))):
            return _MISS
        if (self.kernels is not _KERNELS or _mode != "fused" or _STEP.calls is not None
                or _cublas._capture.__dict__.get("active")):  # (capturing() or recording(), inline: every step)
            return _MISS  # (kernels reloaded, or switched to the references; a capture makes its own buffers)
        if self.get_device() != self.device:
            return _MISS  # another device is current: the override switches to the arrays' device
        if self.stream is not None and (self.cupy.cuda.get_current_stream().ptr, threading.get_ident()) != self.stream:
            return _MISS  # scratch buffers are per stream and thread
        calls = self.calls if same else self._swapped(args)
        for fn, fn_args, fn_kwargs in calls:
            fn(*fn_args, **fn_kwargs)
        return self.result

    def _swapped(self, args: tuple) -> list:
        """The calls with the new per-call arrays of `args` in the old ones' places."""
        calls = [list(call) for call in self.calls]
        for c, j, i in self.slots:
            grid, block, kernel_args = calls[c][1]
            calls[c][1] = (grid, block, (*kernel_args[:j], args[i], *kernel_args[j + 1:]))
        return calls

    def _fits(self, args: tuple) -> bool:
        """Whether args differ from the plan's only in per-call arrays of the very same kind."""
        if len(args) != len(self.args):
            return False
        for i, (new, old) in enumerate(zip(args, self.args)):
            if new is old or (type(new) in _PLAIN and type(new) is type(old) and new == old):
                continue
            if i not in self.per_call or not _same_layout(new, old):
                return False
        return True


def _same_layout(new: Any, old: Any) -> bool:
    """`new` passes every check `old` passed: a CuPy array of its dtype and shape, C-contiguous, on its device."""
    return (type(new) is type(old) and new.dtype == old.dtype and new.shape == old.shape
            and new.flags.c_contiguous and old.flags.c_contiguous and new.device.id == old.device.id)


def forget_plans() -> None:
    """Drop every op's kept launches (see Op.forget): a model does when its fit, evaluate or predict ends."""
    for op in OPS.values():
        op.forget()


# name -> Op: every op with a CUDA override (filled as nnxp.ops.dense, loss, optim and dropout import)
OPS: dict[str, Op] = {}


def _source() -> str:
    return importlib.resources.files(__package__).joinpath("kernels.cu").read_text(encoding="utf-8")


# Every kernel template in kernels.cu, read from its source (so a new kernel needs no entry here); CuPy
# instantiates each as name<float> or name<double>. Reading the file compiles nothing.
KERNELS: tuple[str, ...] = tuple(re.findall(r"__global__\s+void\s+(nnxp_\w+)\s*\(", _source()))

# --fmad=false: no multiply-add contraction, so every step rounds as the reference's separate ufuncs do
# (the kernels are memory-bound; the FMA would buy nothing measurable).
NVRTC_OPTIONS = ("--fmad=false",)

# Activation codes of nnxp_bias_act_forward / nnxp_act_backward_bias, read from kernels.cu's NX_* defines (the
# block under "// Activation codes"), so a new activation's code is written once. Softmax has its own row kernels.
ACT_CODES: dict[str, int] = {
    name.lower(): int(code) for name, code in re.findall(
        r"#define NX_(\w+) (\d+)\n", _source().split("// Activation codes", 1)[1].split("\n\n", 1)[0] + "\n")
}

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_BLOCK = 256  # threads per block for the 1-D kernels (a multiple of 32: the reductions use whole warps)
_BLOCKS_PER_SM = 8  # grid cap for grid-stride kernels: 8 x 256 threads fill an SM; larger inputs loop


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


_NOTHING = contextlib.nullcontext()


def _current(device_id: int) -> Any:
    """A `with` that makes `device_id` current: CuPy's Device context when another device is current, else
    nothing. Device.__exit__ calls cudaSetDevice even when the device never changed (cupy/cuda/device.pyx,
    Device.__enter__/__exit__), a runtime call per launch that a step on the current device does not need."""
    if cupy_module().cuda.runtime.getDevice() == device_id:
        return _NOTHING
    return cupy_module().cuda.Device(device_id)


# Scratch arrays of the fused kernels (the bias gradient's partial sums), kept per
# (device, stream, thread, shape, dtype) so a step of fixed shape allocates them once; one thread's launches on
# one stream run in order, so one set per stream and thread is never in use twice at a time. While a graph is
# captured they are made fresh instead (from the capture's private pool, which the graph keeps): a cached buffer
# could be reused by eager work after the capture's stream is gone and its handle reused.
_SCRATCH: dict[tuple, Any] = {}
_SCRATCH_MAX = 64  # distinct shapes (batch sizes x layers x dtypes); beyond it the cache starts over


def capturing() -> bool:
    """True while this thread captures a CUDA graph (inside nnxp.ops._cublas.capturing())."""
    return getattr(_cublas._capture, "active", False)


def recording() -> bool:
    """True while this thread records a step's launches (:func:`recording_step`)."""
    return _STEP.calls is not None


def _scratch(what: str, shape: tuple, dtype: Any, dev: int, zero: bool = False) -> Any:
    """The scratch array `what` of this stream (made zeroed when `zero`; fresh while a graph is captured)."""
    cp = cupy_module()
    make = cp.zeros if zero else cp.empty
    if capturing():
        return make(shape, dtype=dtype)
    # per thread too: threads share a stream (CuPy's default one), and another thread's launch between the two
    # that write and read the partials would take them over
    key = (what, dev, cp.cuda.get_current_stream().ptr, threading.get_ident(), shape, np.dtype(dtype).str)
    buf = _SCRATCH.get(key)
    if buf is None:
        if len(_SCRATCH) >= _SCRATCH_MAX:
            _SCRATCH.clear()
        buf = _SCRATCH[key] = make(shape, dtype=dtype)
    if _RECORD.calls is not None:
        _RECORD.stream = key[2:4]
    return buf


def _launch(name: str, dtype: np.dtype, device_id: int, grid: tuple, block: tuple, args: tuple) -> tuple:
    """Launch kernel `name` on `device_id` (made current if it is not); returns the kernel and the grid used."""
    kernel = _KERNELS.function(name, dtype, device_id)
    if len(grid) == 1:  # every 1-D kernel loops over its work: no more blocks than the SMs hold at once
        grid = (max(1, min(grid[0], _KERNELS.resident_blocks(name, dtype, device_id, block[0])
                           * _KERNELS.sm_count(device_id))),)
    if _RECORD.calls is not None:
        _RECORD.calls.append((kernel, (grid, block, args), _LAUNCH))
    if _STEP.calls is not None:  # kept for the step's list, not run now
        _STEP.calls.append((kernel, (grid, block, args), _LAUNCH))
        return kernel, grid
    with _current(device_id):
        kernel(grid, block, args)
    return kernel, grid


def matmul(a: Any, b: Any, out: Any = None) -> Any:
    """:func:`nnxp.ops._cublas.matmul`, recorded into a plan being made."""
    if _RECORD.calls is not None:
        if out is None:
            unplanned()  # a new array each call
        # CuPy's matmul itself, which _cublas.matmul calls outside a capture (a plan never runs inside one)
        _RECORD.calls.append((cupy_module().matmul, (a, b), {"out": out}))
    if _STEP.calls is not None and out is not None:  # kept for the step's list (CuPy's eager matmul), not run
        _STEP.calls.append((cupy_module().matmul, (a, b), {"out": out}))
        return out
    if _STEP.calls is not None:
        unplanned()  # (no buffer to keep the product in: the step's list cannot hold it)
    return _cublas.matmul(a, b, out=out)
