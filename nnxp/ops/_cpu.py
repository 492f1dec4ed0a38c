"""CPU fast paths for the ops: Numba-compiled fused loops (the ``fast`` extra).

Each fused loop is a plain Python function written beside its NumPy reference (``dense.py``, ``loss.py``,
``optim.py``); :func:`kernel` compiles it with Numba on first use, never at import, and caches the machine
code on disk (``cache=True``), so a second process loads it instead of compiling. Where Numba is missing,
broken or switched off (``NNXP_NUMBA=0`` in the environment, or :func:`set_numba`), :func:`kernel` returns
None and the ops run their references: the same numbers, unfused.
"""

from __future__ import annotations

import os
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np

_enabled: bool | None = None  # None: read NNXP_NUMBA once, on the first call of kernel()
_compiled: dict[str, Any] = {}  # name -> compiled dispatcher, or None where compiling failed
_parallel_lock = threading.Lock()
_ready: dict[tuple, Any] = {}  # (name, parallel) -> dispatcher that has run: call()'s hot path
compile_seconds: dict[str, float] = {}  # name -> seconds its first call took to compile or load (bench reads it)


def numba_enabled() -> bool:
    """Whether the compiled loops may run: Numba importable and not switched off."""
    global _enabled
    if _enabled is None:
        _enabled = os.environ.get("NNXP_NUMBA", "1") != "0"
        # not installed, or built for another NumPy: the references serve
        _enabled = _enabled and _importable()
    return _enabled


def set_numba(enabled: bool | None) -> None:
    """Switch the compiled loops on or off for this process (None: back to the NNXP_NUMBA default).

    Switching on still leaves them off where Numba cannot be imported.
    """
    global _enabled
    _enabled = None if enabled is None else bool(enabled) and _importable()
    numba_enabled()  # resolve None now, so call() needs one identity test


def status() -> str:
    """One line for ``nnxp info``: whether the compiled CPU loops (the ``fast`` extra) run here, and why not."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("numba")
    except PackageNotFoundError:
        return "off: Numba not installed (pip install 'nnxp[fast]'); NumPy alone runs every op"
    if numba_enabled():
        return f"on: Numba {v} (NNXP_NUMBA=0 turns them off)"
    if os.environ.get("NNXP_NUMBA", "1") == "0" or _enabled is False and _importable():
        return f"off: switched off (NNXP_NUMBA=0 or set_numba(False)); Numba {v} installed"
    return f"off: Numba {v} is installed but does not import here; NumPy alone runs every op"


def _importable() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:
        return False
    return True


def kernel(name: str, fn: Callable, parallel: bool = False) -> Any | None:
    """`fn` compiled by Numba (nopython, cached on disk), or None where compiled loops are off or failed.

    A ``prange`` in `fn` is numba.prange: threaded with `parallel`, a plain range without. Compilation happens
    lazily at the first call for each signature; :func:`call` times it.
    """
    if not numba_enabled():
        return None
    key = name + ("/parallel" if parallel else "")
    if key not in _compiled:
        try:
            import numba

            if parallel:
                _choose_layer(numba)
            scope = dict(fn.__globals__, prange=numba.prange)
            f = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
            # the on-disk cache is keyed by qualified name: the threaded build gets its own
            f.__qualname__ = fn.__qualname__ + ("_parallel" if parallel else "")
            _compiled[key] = numba.njit(cache=True, nogil=True, error_model="numpy", parallel=parallel)(f)
        except Exception:
            _compiled[key] = None
    return _compiled[key]


def _choose_layer(numba: Any) -> None:
    """Numba's workqueue threading layer for the threaded loops, unless the user chose one or one is running.

    Workqueue threads sleep between loops; OpenMP's spin, and spinning threads on the cores OpenBLAS's own
    threads spin on made threaded steps 2x slower than serial ones (bench/train_cpu.py). Numba re-reads its
    configuration from the environment, so the choice is made there.
    """
    if "NUMBA_THREADING_LAYER" not in os.environ and not _layer_launched(numba):
        os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
        numba.config.reload_config()


def _layer_launched(numba: Any) -> bool:
    """Whether some threaded Numba code already started a threading layer (then it stays what it is)."""
    try:
        numba.threading_layer()
    except ValueError:
        return False
    return True


def call(name: str, fn: Callable, *args: Any, parallel: bool = False, result: list | None = None) -> bool:
    """Run the compiled `fn` on `args`; False (nothing written) where it is unavailable or fails to compile.

    The loop's return value is appended to `result` when one is given. One threaded loop runs at a time (the
    workqueue layer refuses concurrent launches); a thread that finds one running runs the serial build.
    """
    if _enabled is False:
        return False
    if parallel:
        if not _parallel_lock.acquire(blocking=False):
            return call(name, fn, *args, parallel=False, result=result)
        try:
            return _call(name, fn, args, True, result)
        finally:
            _parallel_lock.release()
    return _call(name, fn, args, False, result)


def _call(name: str, fn: Callable, args: tuple, parallel: bool, result: list | None) -> bool:
    k = _ready.get((name, parallel))  # the hot path: compiled and run before, so no checks left to make
    if k is None:
        k = kernel(name, fn, parallel)
        if k is None:
            return False
        key = name + ("/parallel" if parallel else "")
        t0 = time.perf_counter()
        try:
            r = k(*args)
        except Exception:  # a compile that fails, fails before the loop touches a buffer
            _compiled[key] = None
            return False
        compile_seconds.setdefault(key, time.perf_counter() - t0)
        _ready[(name, parallel)] = k
    else:
        r = k(*args)
    if result is not None:
        result.append(r)
    return True


_threads: int | None = None  # threads for the threaded loops; decided on the first call of threads()


def threads() -> int:
    """How many threads the threaded loops use: Numba's, but no more than NumPy's BLAS runs (threadpoolctl,
    where installed), so that a process limited to one BLAS thread (say, one of several workers) stays serial.

    1 means the callers run their serial loops. Numba's own setting (NUMBA_NUM_THREADS) still caps it.
    """
    global _threads
    if _threads is None:
        n = 1
        if numba_enabled():
            import numba

            n = numba.config.NUMBA_NUM_THREADS
            try:
                from threadpoolctl import threadpool_info

                blas = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
                if blas:
                    n = min(n, *blas)
            except Exception:  # threadpoolctl missing or unable to inspect: Numba's count
                pass
            n = max(1, n)
            if n > 1:
                _choose_layer(numba)  # before set_num_threads, which starts the layer
                numba.set_num_threads(n)
        _threads = n
    return _threads


_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)


def host_float(*arrays: Any) -> bool:
    """NumPy float32/float64 arrays, C-contiguous, of one dtype (None entries skipped): what the loops take."""
    dtype = None
    for a in arrays:
        if a is None:
            continue
        if type(a) is not np.ndarray or not a.flags.c_contiguous:
            return False
        if dtype is None:
            dtype = a.dtype
            if dtype != _F32 and dtype != _F64:
                return False
        elif a.dtype != dtype:
            return False
    return dtype is not None
