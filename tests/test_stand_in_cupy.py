"""The stand-in CuPy (tests/_stand_in_cupy.py) is no kinder than CuPy 14.2: random's shape rule, two devices
without peer access, and allocation on the current device, each as the cited CuPy source does it."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from types import SimpleNamespace
from typing import Any

import _stand_in_cupy
import numpy as np
import pytest
from _stand_in_cupy import CUDARuntimeError
from conftest import require_tool

from nnxp.backend import cuda_device_count, get_device


def test_random_without_size_draws_one_value_into_out(fake_cupy):
    # cupy/random/_generator_api.pyx Generator.random: size=None -> size=(), then elementwise_copy(y, out)
    rng = fake_cupy.random.default_rng(3)
    out = fake_cupy.empty((4, 5), dtype=np.float32)
    y = rng.random(out=out, dtype=np.float32)
    assert y is out
    assert np.unique(np.asarray(y)).size == 1 and 0.0 <= float(y[0, 0]) < 1.0
    z = rng.random(dtype=np.float32)
    assert isinstance(z, fake_cupy.ndarray) and z.shape == () and z.dtype == np.float32


def test_random_with_size_fills_out_elementwise(fake_cupy):
    rng = fake_cupy.random.default_rng(3)
    out = fake_cupy.empty((40, 50))
    rng.random((40, 50), out=out)
    assert np.unique(np.asarray(out)).size == out.size
    again = fake_cupy.random.default_rng(3).random((40, 50))
    np.testing.assert_array_equal(np.asarray(again), np.asarray(out))


def test_random_refuses_what_cupy_refuses(fake_cupy):
    rng = fake_cupy.random.default_rng(0)
    with pytest.raises(ValueError, match="size must match out.shape"):
        rng.random(7, out=fake_cupy.empty(6))
    with pytest.raises(TypeError, match="wrong type"):
        rng.random(out=fake_cupy.empty(6, dtype=np.float32))  # dtype defaults to float64
    with pytest.raises(ValueError, match="not contiguous"):
        rng.random(out=fake_cupy.empty((6, 6))[:, ::2])


def test_two_devices_and_the_current_one(fake_cupy):
    cuda = fake_cupy.cuda
    assert cuda.runtime.getDeviceCount() == 2 and cuda_device_count() == 2
    assert get_device("cuda:1").name == "cuda:1"
    a0 = fake_cupy.zeros(3)
    with cuda.Device(1):
        assert cuda.runtime.getDevice() == 1
        a1 = fake_cupy.ones(3)
        b1 = fake_cupy.empty_like(a0)  # cupy.empty_like allocates on the current device, not a0's
        with cuda.Device(0):
            assert cuda.runtime.getDevice() == 0
        assert cuda.runtime.getDevice() == 1
    assert cuda.runtime.getDevice() == 0
    assert a0.device.id == 0 and a1.device.id == 1 and b1.device.id == 1
    assert a1[1:].device.id == 1 and a1.reshape(3, 1).device.id == 1  # views keep their device
    with pytest.raises(CUDARuntimeError, match="invalid device ordinal"):
        with cuda.Device(2):
            pass


def test_cross_device_arithmetic_is_refused(fake_cupy):
    # cupy/_core/_kernel.pyx _check_peer_access: every array argument of a kernel on the current device
    a0 = fake_cupy.ones(3)
    with fake_cupy.cuda.Device(1):
        a1 = fake_cupy.ones(3)
        np.testing.assert_array_equal(np.asarray(a1 + a1), 2.0)
        with pytest.raises(ValueError, match=r"resides \(0\).*current device \(1\).*Peer access is unavailable"):
            a1 + a0
        with pytest.raises(ValueError, match="Peer access"):
            a1[...] = a0
        moved = fake_cupy.asarray(a0)  # a peer copy is allowed (core.pyx _array_from_cupy_ndarray)
        assert moved.device.id == 1 and moved is not a0
        assert fake_cupy.asarray(a1) is a1
    with pytest.raises(ValueError, match="Peer access"):
        a1.sum()
    with pytest.raises(ValueError, match="Peer access"):
        np.multiply(a0, 2.0, out=a1)
    with pytest.raises(ValueError, match="Peer access"):
        fake_cupy.matmul(a0.reshape(1, 3), a1.reshape(3, 1))
    with pytest.raises(TypeError, match="Unsupported type"):
        a0 + np.ones(3)  # a host array is no kernel argument (cupy/_core/_scalar.pyx CScalar)
    np.testing.assert_array_equal(fake_cupy.asnumpy(a1), 1.0)  # the host copy works from any device


def test_a_kernel_launch_refuses_another_devices_array(fake_cupy):
    from nnxp.ops import _cuda
    from nnxp.ops import dense as D

    with fake_cupy.cuda.Device(1):
        z = fake_cupy.ones((2, 3))
    with pytest.raises(CUDARuntimeError, match="IllegalAddress"):
        _cuda._launch("nnxp_bias_act_forward", z.dtype, 0, (1,), (32,),
                      (z, z, z, np.int64(6), np.int64(3), np.int32(1), np.int32(0), np.int32(0)))
    y, _ = D.bias_activation_forward.fused(z, None, "relu")  # on its own device it runs
    assert y.device.id == 1


# --- streams and graph capture (cupy/cuda/stream.pyx, cupy/cuda/graph.pyx) -------------------------------------


def test_capture_records_and_replay_computes(fake_cupy):
    cuda = fake_cupy.cuda
    a = fake_cupy.asarray(np.arange(4.0))
    stream = cuda.Stream(non_blocking=True)
    with stream:
        assert cuda.get_current_stream() == stream
        stream.begin_capture()
        assert stream.is_capturing()
        doubled = a * 2.0  # recorded: poison until a replay
        total = doubled.sum()
        a += 1.0
        graph = stream.end_capture()
    assert cuda.get_current_stream() == cuda.Stream.null
    assert np.isnan(np.asarray(doubled)).all() and np.isnan(float(total))
    np.testing.assert_array_equal(fake_cupy.asnumpy(a), np.arange(4.0))  # nothing ran yet
    graph.launch()
    np.testing.assert_array_equal(fake_cupy.asnumpy(doubled), 2 * np.arange(4.0))
    assert float(total) == 12.0
    graph.launch()  # each replay reads the buffers as they are then
    assert float(total) == 20.0 and float(a[0]) == 2.0


def test_capture_records_kernel_launches(fake_cupy):
    z = fake_cupy.asarray(np.full((2, 64), -1.0))
    stream = fake_cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        from nnxp.ops import dense as D

        D.bias_activation_forward.fused(z, None, "relu")
        graph = stream.end_capture()
    assert (fake_cupy.asnumpy(z) == -1.0).all()
    graph.launch()
    assert (fake_cupy.asnumpy(z) == 0.0).all()


def test_capture_refuses_what_cuda_and_cupy_refuse(fake_cupy):
    cuda = fake_cupy.cuda
    with pytest.raises(RuntimeError, match="legacy"):
        cuda.Stream.null.begin_capture()
    a = fake_cupy.ones((2, 2))
    stream = cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="cuBLAS API during stream capture"):
            fake_cupy.matmul(a, a)  # cupy_backends/cuda/libs/cublas.pyx setStream
        stream.end_capture()  # that refusal leaves the capture intact
        stream.begin_capture()
        with pytest.raises(CUDARuntimeError, match="StreamCaptureUnsupported"):
            float(a.sum())  # a device-to-host copy synchronises
        with pytest.raises(CUDARuntimeError, match="StreamCaptureInvalidated"):
            stream.end_capture()
        stream.begin_capture()
        with pytest.raises(CUDARuntimeError, match="StreamCaptureUnsupported"):
            a.set(np.zeros((2, 2)))  # pageable host memory
        with pytest.raises(CUDARuntimeError, match="StreamCaptureInvalidated"):
            stream.end_capture()
    with fake_cupy.cuda.Device(1), pytest.raises(RuntimeError, match="does not match with the current device"):
        with stream:
            pass
    with pytest.raises(NotImplementedError, match="stream capture"):
        cuda.Graph()


def test_setitem_refuses_a_host_array_as_cupy_does(fake_cupy):
    # _routines_indexing.pyx _scatter_op: a value that is not a device array goes to fill (gh-2079), which takes
    # only scalars (core.pyx fill); a scalar, a 0-d host array and a device array are fine
    a = fake_cupy.zeros((2, 2))
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[...] = np.ones((2, 2))
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[0] = [1.0, 2.0]
    with pytest.raises(ValueError, match="non-scalar cupy.ndarray cannot be used for fill"):
        a.fill(fake_cupy.ones(2))
    a[...] = 3.0
    a[0, 0] = np.float64(1.0)
    a[1] = fake_cupy.ones(2)
    assert a.get().tolist() == [[1.0, 3.0], [1.0, 1.0]]


def test_allocations_go_through_the_thread_local_allocator(fake_cupy):
    pool = fake_cupy.cuda.MemoryPool()
    with fake_cupy.cuda.using_allocator(pool.malloc):
        fake_cupy.empty(100, dtype=np.float32)
    assert pool.used_bytes() == 512  # rounded up to the allocation unit
    fake_cupy.empty(100, dtype=np.float32)
    assert pool.used_bytes() == 512


def test_compute_type_follows_cupy_tf32_and_set_compute_type(fake_cupy, monkeypatch):
    core = fake_cupy._core
    tf32 = core._routines_linalg.COMPUTE_TYPE_TF32
    monkeypatch.setenv("CUPY_TF32", "1")  # read once, when the compute type is still TBD
    assert core.get_compute_type(np.float32) == tf32
    assert core.get_compute_type(np.float64) == core._routines_linalg.COMPUTE_TYPE_DEFAULT
    rng = np.random.default_rng(0)
    a = fake_cupy.asarray(rng.normal(size=(8, 300)).astype(np.float32))
    b = fake_cupy.asarray(rng.normal(size=(300, 8)).astype(np.float32))
    fast = fake_cupy.asnumpy(fake_cupy.matmul(a, b))
    core.set_compute_type(np.float32, core._routines_linalg.COMPUTE_TYPE_DEFAULT)
    exact = fake_cupy.asnumpy(fake_cupy.matmul(a, b))
    np.testing.assert_array_equal(exact, np.asarray(a) @ np.asarray(b))
    assert not np.array_equal(fast, exact)
    np.testing.assert_allclose(fast, exact, rtol=0, atol=300 * 2.0**-10 * 4)
    with pytest.raises(ValueError, match="Unknown compute type"):
        core.set_compute_type(np.float32, 99)


# --- counters (tests/_stand_in_cupy.py COUNTS, count_step): each known CuPy operation moves each counter by exactly
# what CuPy 14.2's source makes it cost (launches, allocations, syncs, host-to-device copies, cudaSetDevice) -------


def _counted(fn):
    with _stand_in_cupy.count_step() as c:
        fn()
    return {k: v for k, v in vars(c).items() if v}


def test_counts_of_kernels_and_allocations(fake_cupy):
    a, b = fake_cupy.ones((4, 8), dtype=np.float32), fake_cupy.ones((4, 8), dtype=np.float32)
    c = fake_cupy.empty((4, 8), dtype=np.float32)
    assert _counted(lambda: a + b) == {"launches": 1, "allocations": 1, "names": ["ufunc:add"]}
    assert _counted(lambda: np.add(a, b, out=c)) == {"launches": 1, "names": ["ufunc:add"]}
    assert _counted(lambda: a.sum()) == {"launches": 1, "allocations": 1, "names": ["reduce:add"]}
    assert _counted(lambda: a.argmax(axis=1)) == {"launches": 1, "allocations": 1, "names": ["ndarray.argmax"]}
    idx = fake_cupy.asarray(np.array([2, 0], dtype=np.int64))
    out = fake_cupy.empty((2, 8), dtype=np.float32)
    assert _counted(lambda: fake_cupy.take(a, idx, axis=0, out=out)) == {"launches": 1, "names": ["ndarray.take"]}
    assert _counted(lambda: a[idx]) == {"launches": 1, "allocations": 1, "names": ["take"]}
    assert _counted(lambda: a.astype(np.float64)) == {"launches": 1, "allocations": 1, "names": ["copy"]}
    assert _counted(lambda: fake_cupy.matmul(a, b.T)) == {"launches": 1, "allocations": 1, "names": ["gemm"]}
    assert _counted(lambda: c.__setitem__(..., a)) == {"launches": 1, "names": ["setitem"]}
    assert _counted(lambda: c.fill(0)) == {"launches": 1, "names": ["memset"]}  # core.pyx fill: memset for 0
    assert _counted(lambda: c.fill(2)) == {"launches": 1, "names": ["fill"]}
    # mean: two kernels in CuPy 14.2 (see _stand_in_cupy._mean for the source it follows)
    counted = _counted(lambda: (a == b).mean(axis=1))
    assert (counted["launches"], counted["allocations"]) == (3, 3)  # (the == is one of them)
    assert _counted(lambda: a.mean(axis=1))["launches"] == 2
    assert float(a.mean()) == 1.0 and (a == b).mean(axis=1).dtype == np.float64
    assert _counted(lambda: fake_cupy.zeros(5)) == {"launches": 1, "allocations": 1, "names": ["memset"]}
    assert _counted(lambda: fake_cupy.empty(5)) == {"allocations": 1}
    assert _counted(lambda: fake_cupy.empty(0)) == {}  # memory.pyx: a size of 0 never reaches the pool
    assert _counted(lambda: (a[1:], a.reshape(8, 4), a.ravel(), a.T)) == {}  # views: no kernel, no memory


def test_counts_of_raw_kernels_and_set_device(fake_cupy):
    from nnxp.ops import _cuda

    z = fake_cupy.ones((2, 64), dtype=np.float32)
    counted = _counted(lambda: _cuda._launch("nnxp_bias_act_forward", z.dtype, 0, (1,), (32,),
                                             (z, z, z, np.int64(128), np.int64(64), np.int32(0), np.int32(0),
                                              np.int32(0))))
    assert counted["launches"] == 1 and counted["names"] == ["nnxp_bias_act_forward<float>"]
    cuda = fake_cupy.cuda

    def enter(i):
        with cuda.Device(i):
            pass

    # device.pyx Device.__enter__ sets the device only when it differs; __exit__ always sets it back
    assert _counted(lambda: enter(0)) == {"set_device": 1}
    assert _counted(lambda: enter(1)) == {"set_device": 2}
    assert _counted(lambda: cuda.Device(0).use()) == {"set_device": 1}


def test_counts_of_synchronisations(fake_cupy):
    cuda = fake_cupy.cuda
    a = fake_cupy.ones((3,))
    s = a.sum()
    # core.pyx get: setDevice(array's device), copy, stream.synchronize(), setDevice(previous)
    assert _counted(lambda: float(s)) == {"syncs": 1, "set_device": 2}
    assert _counted(lambda: fake_cupy.asnumpy(a)) == {"syncs": 1, "set_device": 2}
    assert _counted(lambda: bool(s)) == {"syncs": 1, "set_device": 2}
    assert _counted(lambda: a.get(blocking=False)) == {"set_device": 2}
    assert _counted(lambda: cuda.get_current_stream().synchronize()) == {"syncs": 1}
    # device.pyx Device.synchronize: setDevice(self.id), deviceSynchronize(), setDevice(previous)
    assert _counted(lambda: cuda.Device(0).synchronize()) == {"syncs": 1, "set_device": 2}
    assert _counted(lambda: a + a) == {"launches": 1, "allocations": 1, "names": ["ufunc:add"]}  # no sync
    # stream.pyx Event: record and done (eventRecord, eventQuery) never wait; synchronize (eventSynchronize) does
    event = cuda.Event(disable_timing=True)
    assert _counted(lambda: (event.record(), event.done)) == {}
    assert event.done
    assert _counted(event.synchronize) == {"syncs": 1}


def test_counts_of_host_to_device_copies_pageable_and_pinned(fake_cupy):
    cuda = fake_cupy.cuda
    d = fake_cupy.empty(4, dtype=np.float32)
    host = np.arange(4, dtype=np.float32)
    # core.pyx set: copy_from_host_async from the array's own memory (pageable here), between two setDevice
    assert _counted(lambda: d.set(host)) == {"h2d_pageable": 1, "set_device": 2}
    mem = cuda.alloc_pinned_memory(host.nbytes)
    pinned = np.frombuffer(mem, np.float32, 4)  # cupyx.empty_pinned's construction
    assert cuda.pinned_memory.is_memory_pinned(pinned.ctypes.data)
    assert not cuda.pinned_memory.is_memory_pinned(host.ctypes.data)
    pinned[...] = host * 2
    assert _counted(lambda: d.set(pinned)) == {"h2d_pinned": 1, "set_device": 2}
    np.testing.assert_array_equal(fake_cupy.asnumpy(d), host * 2)
    # core.pyx _array_default: host data goes through a pinned transfer buffer; a 0-d value is a fill
    assert _counted(lambda: fake_cupy.asarray(host)) == {"allocations": 1, "h2d_pinned": 1}
    assert _counted(lambda: fake_cupy.asarray(3.0)) == {"launches": 1, "allocations": 1, "names": ["fill"]}


def test_a_graph_launch_is_one_launch_and_a_pinned_copy_is_captured(fake_cupy):
    cuda = fake_cupy.cuda
    mem = cuda.alloc_pinned_memory(4 * 4)
    pinned = np.frombuffer(mem, np.float32, 4)
    d = fake_cupy.zeros(4, dtype=np.float32)
    stream = cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with _stand_in_cupy.count_step() as capture:
            d.set(pinned)  # a memcpy node that reads the pinned buffer when the graph runs
            np.multiply(d, 2.0, out=d)
            d.sum()
        graph = stream.end_capture()
    assert capture.launches == 0 and capture.h2d_pinned == 0 and capture.allocations == 1  # (sum's result)
    for value in (1.0, 5.0):
        pinned[...] = value
        with _stand_in_cupy.count_step() as replay:
            graph.launch(stream)
        assert {k: v for k, v in vars(replay).items() if v} == {"graph_launches": 1}
        np.testing.assert_array_equal(fake_cupy.asnumpy(d), 2 * value)

# --- conformance: everything the stand-in offers exists in the installed CuPy with a compatible signature -------
#
# "Compatible": each parameter the stand-in names is CuPy's (same position when positional, not keyword-only in
# CuPy when positional here), the stand-in defaults no parameter that CuPy requires and requires every one CuPy
# requires, and defaults that both give agree (compared where CuPy's is a literal). Signatures come from
# inspect.signature, or, for Cython functions and extension types that have none, from the first line of their
# docstring (Cython's embedsignature, e.g. "MemoryPool.malloc(self, size_t size) -> MemoryPointer"). A property
# must be a data attribute in CuPy too. What cannot be checked is listed in UNCHECKED and printed.

P = inspect.Parameter
_VAR = (P.VAR_POSITIONAL, P.VAR_KEYWORD)
_POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
# dunders whose presence on the CuPy class is checked; their signatures are fixed by Python's data model
_PROTOCOL = {"__enter__", "__exit__", "__int__", "__float__", "__bool__", "__setitem__"}
# NumPy's subclass machinery that the simulation runs on, not part of CuPy's API
_MACHINERY = {"__array_ufunc__", "__array_finalize__"}
# names the check cannot compare, and why (the test fails when this list is out of date)
UNCHECKED: dict[str, str] = {}


def _split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current] if current.strip() else parts


class _Source(str):
    """A default as a docstring writes it (source text)."""


def _doc_signature(obj: Any) -> inspect.Signature | None:
    """The signature on the first line of a Cython docstring, C types dropped; defaults kept as source text."""
    lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    match = re.match(r"^[\w.]+\((.*)\)(\s*->.*)?$", lines[0].strip()) if lines else None
    if match is None:
        return None
    params, kind = [], P.POSITIONAL_OR_KEYWORD
    for part in _split_top_level(match.group(1)):
        part = part.strip()
        if part == "*":
            kind = P.KEYWORD_ONLY
        elif part.startswith("**"):
            params.append(P(part[2:].split()[-1], P.VAR_KEYWORD))
        elif part.startswith("*"):
            params.append(P(part[1:].split()[-1], P.VAR_POSITIONAL))
            kind = P.KEYWORD_ONLY
        else:
            name, eq, default = part.partition("=")
            params.append(P(name.split()[-1], kind, default=_Source(default.strip()) if eq else P.empty))
    return inspect.Signature(params)


def _real_signature(obj: Any) -> inspect.Signature | None:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    generic = sig is not None and [p.kind for p in sig.parameters.values() if p.name != "self"] == list(_VAR)
    if sig is None or generic:
        sig = _doc_signature(obj) or sig
    return sig


def _same_default(mine: Any, theirs: Any) -> bool:
    if isinstance(theirs, _Source):  # CuPy's from a docstring: source text
        try:
            theirs = ast.literal_eval(theirs)
        except (ValueError, SyntaxError):
            return True  # a name such as numpy.float64 or _malloc: not compared
    try:
        return bool(mine == theirs) or repr(mine) == repr(theirs)
    except Exception:
        return False


def _incompatibilities(mine: inspect.Signature, theirs: inspect.Signature) -> list[str]:
    mine_params, their_params = list(mine.parameters.values()), list(theirs.parameters.values())
    theirs_by_name = {p.name: p for p in their_params}
    their_kinds = {p.kind for p in their_params}
    my_kinds = {p.kind for p in mine_params}
    their_positional = [p for p in their_params if p.kind in _POSITIONAL]
    problems = []
    into_var_positional = set()  # my positional parameters that CuPy's *args takes
    for i, p in enumerate(p for p in mine_params if p.kind in _POSITIONAL):
        if i < len(their_positional) and their_positional[i].name != p.name:
            problems.append(f"positional parameter {i} is {p.name!r} here, {their_positional[i].name!r} in CuPy")
        elif i >= len(their_positional):
            if P.VAR_POSITIONAL in their_kinds:
                into_var_positional.add(p.name)
            else:
                problems.append(f"{p.name!r} is positional here, keyword-only or absent in CuPy")
    for p in mine_params:
        if p.kind in _VAR or p.name in into_var_positional:
            continue
        theirs_p = theirs_by_name.get(p.name)
        if theirs_p is None:
            if P.VAR_KEYWORD not in their_kinds:
                problems.append(f"{p.name!r} is no parameter of CuPy's")
            continue
        if p.default is not P.empty and theirs_p.default is P.empty:
            problems.append(f"{p.name!r} has a default here but is required in CuPy")
        if p.default is P.empty and theirs_p.default is not P.empty:
            problems.append(f"{p.name!r} is required here but optional in CuPy")
        if p.default is not P.empty and theirs_p.default is not P.empty and not _same_default(p.default,
                                                                                                theirs_p.default):
            problems.append(f"{p.name!r} defaults to {p.default!r} here, {theirs_p.default!r} in CuPy")
    mine_names = {p.name for p in mine_params}
    for p in their_params:
        if p.kind not in _VAR and p.default is P.empty and p.name not in mine_names and not (my_kinds & set(_VAR)):
            problems.append(f"CuPy requires {p.name!r}, which is not accepted here")
    return problems


def _check_callable(path: str, mine: Any, theirs: Any, report: dict) -> None:
    my_sig = inspect.signature(mine)
    their_sig = _real_signature(theirs)
    if their_sig is None:
        report["unchecked"].add(path)
        return
    report["checked"].add(path)
    for problem in _incompatibilities(my_sig, their_sig):
        report["problems"].append(f"{path}: {problem} (stand-in {my_sig}, CuPy {their_sig})")


def _check_class(path: str, mine: type, theirs: type, report: dict) -> None:
    if not isinstance(theirs, type):
        report["problems"].append(f"{path} is a class here but {type(theirs).__name__} in CuPy")
        return
    if issubclass(mine, BaseException) and not issubclass(theirs, BaseException):
        report["problems"].append(f"{path}: an exception here, not in CuPy")
    _check_callable(path, mine, theirs, report)  # the constructor
    members: dict[str, Any] = {}
    for klass in reversed(mine.__mro__):
        if klass.__module__ == _stand_in_cupy.__name__:
            members.update(klass.__dict__)
    for name, member in sorted(members.items()):
        if name in _MACHINERY or name == "__init__" or (name.startswith("_") and name not in _PROTOCOL):
            continue
        where = f"{path}.{name}"
        if not hasattr(theirs, name):
            report["problems"].append(f"{where} does not exist in CuPy")
            continue
        their_member = getattr(theirs, name)
        if isinstance(member, property):
            if callable(their_member) and not isinstance(their_member, type):
                report["problems"].append(f"{where} is a property here but a method in CuPy")
            report["checked"].add(where)
        elif name in _PROTOCOL:
            report["checked"].add(where)
        elif callable(member):
            _check_callable(where, member, their_member, report)
        else:
            report["checked"].add(where)  # a class attribute such as Stream.null: present


def _walk(path: str, mine: Any, theirs: Any, report: dict) -> None:
    for name, value in sorted(vars(mine).items()):
        where = f"{path}.{name}"
        if not hasattr(theirs, name):
            report["problems"].append(f"{where} does not exist in CuPy")
            continue
        their_value = getattr(theirs, name)
        if isinstance(value, SimpleNamespace):
            _walk(where, value, their_value, report)
        elif isinstance(value, type) and value.__module__ == _stand_in_cupy.__name__:
            _check_class(where, value, their_value, report)
        elif callable(value) and not isinstance(value, type):
            _check_callable(where, value, their_value, report)
        elif value is not their_value and value != their_value:  # dtypes, constants
            report["problems"].append(f"{where} is {value!r} here, {their_value!r} in CuPy")
        else:
            report["checked"].add(where)


def test_everything_the_stand_in_offers_exists_in_cupy(fake_cupy):
    require_tool(importlib.util.find_spec("cupy") is not None, "CuPy is not installed")
    import cupy

    report: dict = {"checked": set(), "unchecked": set(), "problems": []}
    _walk("cupy", fake_cupy, cupy, report)
    # what only RawModule.get_function hands out, and the arrays' own methods
    _check_callable("cupy.RawKernel.__call__", _stand_in_cupy.RawKernel.__call__, cupy.RawKernel.__call__, report)
    assert not report["problems"], "\n".join(report["problems"])
    assert report["unchecked"] == set(UNCHECKED), report["unchecked"]
    assert {"cupy.ndarray.get", "cupy.cuda.Stream.begin_capture", "cupy.cuda.Graph.launch",
            "cupy.random.Generator.random", "cupy._core.set_compute_type"} <= report["checked"]
    print(f"stand-in conformance: {len(report['checked'])} names checked; not checked: {UNCHECKED}")


def test_the_numpy_names_reached_through_the_stand_in_exist_in_cupy(fake_cupy, monkeypatch):
    require_tool(importlib.util.find_spec("cupy") is not None, "CuPy is not installed")
    import cupy

    from nnxp import Dense, Sequential
    from nnxp.ops import _cublas

    monkeypatch.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)  # cuBLAS handle + workspace (gpufix)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype(np.float32)
    labels = (x[:, 0] > 0).astype(np.int64)
    for loss, y, last, metric in (("sparse_categorical_crossentropy", labels, "softmax", "accuracy"),
                                  ("categorical_crossentropy", np.eye(2)[labels], "softmax", "accuracy"),
                                  ("binary_crossentropy", labels[:, None].astype(np.float32), "sigmoid", "mae"),
                                  ("mse", x[:, :2], "linear", "mse")):
        model = Sequential([Dense(8, "tanh", input_dim=6), Dense(y.shape[1] if y.ndim == 2 else 2, last)],
                           device="cuda", dtype="float32")
        model.compile("adam", loss, metrics=[metric])
        model.fit(x, y, epochs=2, batch_size=32, verbose=0, cuda_graph=True)
        model.evaluate(x, y, verbose=0)
        model.predict(x)
    used = sorted(_stand_in_cupy.FROM_NUMPY)
    print("NumPy names reached through the stand-in:", used)
    missing = [name for name in used if not hasattr(cupy, name)]
    assert not missing, f"nnxp reached NumPy names through the stand-in that CuPy lacks: {missing}"
    not_ufuncs = [n for n in used if isinstance(getattr(np, n), np.ufunc) and not isinstance(getattr(cupy, n),
                                                                                            cupy.ufunc)]
    assert not not_ufuncs, f"ufuncs in NumPy but not in CuPy: {not_ufuncs}"
