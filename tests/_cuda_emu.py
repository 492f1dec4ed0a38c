"""kernels.cu on the CPU: builds tests/cuda_emu (the CUDA execution model as fibers) and launches kernels.

A launch takes what a CuPy RawKernel call takes (grid, block, a tuple of arrays and NumPy scalars) and checks
every argument against the kernel's C parameter type as CuPy would pass it: an array's dtype must be the
pointee type, a scalar must be exactly the NumPy type of the parameter (np.int32 for `int`, np.int64 for
`long long`, ...), since a wrong width shifts every later parameter on a GPU. Blocks run interleaved (see
cuda_emu/emu.h), and :meth:`Emulator.launch_concurrent` runs several launches at once, as on two streams.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from nnxp.ops import _cuda

HERE = Path(__file__).parent / "cuda_emu"
KERNELS_DIR = Path(_cuda.__file__).parent
CXX = shutil.which("g++") or shutil.which("c++")
# -ffp-contract=off: no fused multiply-add, as NVRTC's --fmad=false (NVRTC_OPTIONS)
FLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror")

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
        self._lib.nx_emu_launch_many.restype = ctypes.c_char_p
        self._lib.nx_emu_launch_many.argtypes = [
            ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
            ctypes.POINTER(ctypes.POINTER(ctypes.c_void_p)), ctypes.c_int, ctypes.c_ulonglong,
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
        self.launch_concurrent([(expression, grid, block, args)], schedule, seed)

    def launch_concurrent(self, launches: list[tuple], schedule: str = "forward", seed: int = 0) -> None:
        """Runs (expression, grid, block, args) launches at once, as on separate streams: their blocks share
        the emulator's slots and interleave at barriers, atomics and fences."""
        prepared = [self._prepare(*launch) for launch in launches]
        n = len(prepared)
        names = (ctypes.c_char_p * n)(*[p[0].encode() for p in prepared])
        grids = (ctypes.c_uint * (3 * n))(*[d for p in prepared for d in p[1]])
        blocks = (ctypes.c_uint * (3 * n))(*[d for p in prepared for d in p[2]])
        args = (ctypes.POINTER(ctypes.c_void_p) * n)(*[p[3] for p in prepared])
        error = self._lib.nx_emu_launch_many(n, names, grids, blocks, args, SCHEDULES[schedule], seed)
        self.launches += n
        if error:
            where = "; ".join(f"{p[0]} grid {p[4]} block {p[5]}" for p in prepared)
            raise EmulatorError(f"{where}: {error.decode()}")

    def _prepare(self, expression: str, grid: tuple, block: tuple, args: tuple) -> tuple:
        params = self.signature(expression)
        if len(args) != len(params):
            raise EmulatorError(f"{expression}: {len(args)} arguments for {len(params)} parameters")
        for dims, what in ((grid, "grid"), (block, "block")):
            if not (1 <= len(dims) <= 3 and all(type(d) is int and d >= 1 for d in dims)):
                raise EmulatorError(f"{expression}: invalid {what} {dims!r} (1-3 positive ints)")
        values = [self._value(expression, i, t, a) for i, (t, a) in enumerate(zip(params, args, strict=True))]
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        g = (tuple(grid) + (1, 1))[:3]
        b = (tuple(block) + (1, 1))[:3]
        # the arrays and values stay referenced by the returned tuple for the length of the launch
        return expression, g, b, ctypes.cast(pointers, ctypes.POINTER(ctypes.c_void_p)), grid, block, pointers, values


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


def stand_in_cupy(emulator: Emulator) -> Any:
    """The stand-in `cupy` over `emulator` (tests/_stand_in_cupy.py, kept apart so each file holds one idea)."""
    import _stand_in_cupy

    return _stand_in_cupy.stand_in_cupy(emulator)
