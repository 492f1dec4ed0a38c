"""kernels.cu on the CPU: builds tests/cuda_emu (the CUDA execution model as fibers) and launches kernels.

A launch takes what a CuPy RawKernel call takes (grid, block, a tuple of arrays and NumPy scalars) and checks
every argument against the kernel's C parameter type as CuPy would pass it: an array's dtype must be the
pointee type, a scalar must be exactly the NumPy type of the parameter (np.int32 for `int`, np.int64 for
`long long`, ...), since a wrong width shifts every later parameter on a GPU.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from nnxp.ops import _cuda

HERE = Path(__file__).parent / "cuda_emu"
KERNELS_DIR = Path(_cuda.__file__).parent
CXX = shutil.which("g++") or shutil.which("c++")
# -ffp-contract=off: no fused multiply-add, as NVRTC's --fmad=false (NVRTC_OPTIONS)
FLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror")

_SCALARS = {
    "float": np.float32,
    "double": np.float64,
    "int": np.int32,
    "unsigned int": np.uint32,
    "long long": np.int64,
    "unsigned long long": np.uint64,
}
_CTYPES = {
    np.float32: ctypes.c_float,
    np.float64: ctypes.c_double,
    np.int32: ctypes.c_int32,
    np.uint32: ctypes.c_uint32,
    np.int64: ctypes.c_int64,
    np.uint64: ctypes.c_uint64,
}
SCHEDULES = {"forward": 0, "reverse": 1, "shuffled": 2}
_SCHEDULE_CYCLE = tuple(SCHEDULES)


class EmulatorError(AssertionError):
    """A launch the emulator refused or that went wrong inside (bad arguments, deadlock, bad shuffle)."""


class Emulator:
    """The built library: :meth:`signature` and :meth:`launch` of ``name<float|double>``."""

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._lib.nx_emu_signature.restype = ctypes.c_char_p
        self._lib.nx_emu_signature.argtypes = [ctypes.c_char_p]
        self._lib.nx_emu_launch.restype = ctypes.c_char_p
        self._lib.nx_emu_launch.argtypes = [
            ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_ulonglong,
        ]
        self.launches = 0

    def signature(self, expression: str) -> list[str]:
        sig = self._lib.nx_emu_signature(expression.encode())
        if sig is None:
            raise EmulatorError(f"kernels.cu has no kernel {expression}")
        return sig.decode().split(",")

    def _value(self, expression: str, i: int, ctype: str, arg: Any) -> Any:
        where = f"{expression} argument {i} ({ctype})"
        if ctype.endswith("*"):
            want = np.dtype(_SCALARS[ctype[:-1]])
            if arg is None:  # CuPy passes None as a null pointer
                return ctypes.c_void_p(None)
            if not isinstance(arg, np.ndarray):
                raise EmulatorError(f"{where}: expected an array, got {type(arg).__name__}")
            if arg.dtype != want or not arg.flags.c_contiguous:
                raise EmulatorError(f"{where}: expected a C-contiguous {want} array, got {arg.dtype} {arg.flags}")
            return ctypes.c_void_p(arg.ctypes.data)
        want = _SCALARS[ctype]
        if type(arg) is not want:
            raise EmulatorError(f"{where}: expected {want.__name__}, got {type(arg).__name__} {arg!r}")
        return _CTYPES[want](arg)

    def launch(self, expression: str, grid: tuple, block: tuple, args: tuple, schedule: str = "forward",
               seed: int = 0) -> None:
        params = self.signature(expression)
        if len(args) != len(params):
            raise EmulatorError(f"{expression}: {len(args)} arguments for {len(params)} parameters")
        for dims, what in ((grid, "grid"), (block, "block")):
            if not (1 <= len(dims) <= 3 and all(type(d) is int and d >= 1 for d in dims)):
                raise EmulatorError(f"{expression}: invalid {what} {dims!r} (1-3 positive ints)")
        values = [self._value(expression, i, t, a) for i, (t, a) in enumerate(zip(params, args, strict=True))]
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        g = (ctypes.c_uint * 3)(*(tuple(grid) + (1, 1))[:3])
        b = (ctypes.c_uint * 3)(*(tuple(block) + (1, 1))[:3])
        error = self._lib.nx_emu_launch(expression.encode(), g, b, pointers, SCHEDULES[schedule], seed)
        self.launches += 1
        if error:
            raise EmulatorError(f"{expression} grid {grid} block {block}: {error.decode()}")


def build(cache_dir: Path, source: Path = KERNELS_DIR / "kernels.cu",
          kernels: tuple[str, ...] = _cuda.KERNELS) -> Emulator | None:
    """Compiles (or reuses) the emulator of `source`'s `kernels` in `cache_dir`; None without a C++ compiler."""
    if CXX is None:
        return None
    source = Path(source).resolve()
    parts = [HERE / "emu.h", HERE / "launch.cpp", source]
    names = " ".join(f"X({name})" for name in kernels)
    key = hashlib.sha256(b"".join(p.read_bytes() for p in parts) + names.encode() + " ".join(FLAGS).encode())
    library = Path(cache_dir) / f"nnxp_cuda_emu_{key.hexdigest()[:16]}.so"
    if not library.exists():
        tmp = library.with_suffix(".tmp.so")
        cmd = [CXX, *FLAGS, f'-DNX_SOURCE="{source}"', f"-DNX_KERNELS={names}", str(HERE / "launch.cpp"), "-o",
               str(tmp)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"building the CUDA emulator failed:\n{result.stderr}")
        tmp.replace(library)
    return Emulator(library)


# --- a stand-in CuPy over the emulator ----------------------------------------------------------------------
#
# NumPy arrays of a subclass (with .device.id), each allocation fenced by guard bytes, and a RawModule whose
# kernels are the emulator's. Every launch of a kernel takes the next schedule (forward, reverse, shuffled
# blocks and threads), so two runs of one op differ in order and must still agree bit for bit; a write outside
# any buffer trips the guard check after the launch.

_GUARD = 64  # bytes of 0xA5 before and after every stand-in allocation


class _FakeArray(np.ndarray):
    device = SimpleNamespace(id=0)


class _Guarded:
    """Every stand-in allocation, to check after each launch that no kernel wrote past its buffer."""

    def __init__(self):
        self.buffers: list[np.ndarray] = []

    def alloc(self, a: np.ndarray) -> _FakeArray:
        a = np.asarray(a)
        raw = np.full(a.nbytes + 2 * _GUARD, 0xA5, dtype=np.uint8)
        self.buffers.append(raw)
        view = raw[_GUARD:_GUARD + a.nbytes].view(a.dtype).reshape(a.shape)
        view[...] = a
        return view.view(_FakeArray)

    def check(self, what: str) -> None:
        for raw in self.buffers:
            if not ((raw[:_GUARD] == 0xA5).all() and (raw[-_GUARD:] == 0xA5).all()):
                raise AssertionError(f"{what} wrote outside a buffer of {raw.size - 2 * _GUARD} bytes")


class _FakeDevice:
    attributes = {"MultiProcessorCount": 1}  # one SM: grids are capped at 8 blocks, so grid-stride loops run

    def __init__(self, index=0):
        assert index == 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _FakeModule:
    def __init__(self, code, options, name_expressions, emulator, guarded):
        assert tuple(options) == _cuda.NVRTC_OPTIONS
        assert code == _cuda._source()
        self.expressions = set(name_expressions)
        self.emulator, self.guarded = emulator, guarded

    def get_function(self, expression):
        assert expression in self.expressions
        return _FakeKernel(expression, self.emulator, self.guarded)


class _FakeKernel:
    launches: dict[str, int] = {}

    def __init__(self, expression, emulator, guarded):
        self.expression, self.emulator, self.guarded = expression, emulator, guarded

    def __call__(self, grid, block, args):
        k = _FakeKernel.launches.get(self.expression, 0)
        _FakeKernel.launches[self.expression] = k + 1
        if len(block) == 1:
            assert block[0] % 32 == 0, f"{self.expression}: block {block} is not whole warps"
        self.emulator.launch(self.expression, tuple(grid), tuple(block), tuple(args),
                             schedule=_SCHEDULE_CYCLE[k % 3], seed=k)
        self.guarded.check(self.expression)


class _FakeCupy(SimpleNamespace):
    def __getattr__(self, name):  # everything not overridden (the references' ufuncs) is NumPy's
        return getattr(np, name)


def stand_in_cupy(emulator: Emulator) -> Any:
    """A `cupy` module for nnxp.backend whose arrays live in host memory and whose kernels run here."""
    guarded = _Guarded()

    def wrap(fn):
        return lambda *a, **kw: guarded.alloc(fn(*a, **kw))

    def matmul(a, b, out=None):
        if out is None:
            return guarded.alloc(np.matmul(a, b))
        np.matmul(a, b, out=out)
        return out

    return _FakeCupy(
        ndarray=_FakeArray,
        float16=np.float16, float32=np.float32, float64=np.float64, int32=np.int32,
        empty=wrap(np.empty), zeros=wrap(np.zeros), empty_like=wrap(np.empty_like), asarray=wrap(np.asarray),
        asnumpy=lambda a: np.array(a).view(np.ndarray),
        matmul=matmul,
        RawModule=lambda code, options, name_expressions: _FakeModule(code, options, name_expressions, emulator,
                                                                      guarded),
        cuda=SimpleNamespace(Device=_FakeDevice, runtime=SimpleNamespace(getDeviceCount=lambda: 1)),
    )
