"""nnxp.ops._cpu: the switch, the dtype/layout gate, the fallback on a failed compile, and the on-disk cache."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnxp.ops import _cpu

ROOT = Path(__file__).resolve().parents[1]


def test_host_float_takes_only_contiguous_float32_or_float64_numpy_arrays_of_one_dtype():
    a32, a64 = np.zeros((3, 4), np.float32), np.zeros(5)
    assert _cpu.host_float(a32, None, np.ones(2, np.float32))
    assert _cpu.host_float(a64)
    assert not _cpu.host_float(a32, a64)  # mixed dtypes
    assert not _cpu.host_float(a32[:, ::2])  # not C-contiguous
    assert not _cpu.host_float(a32.astype(np.float16))
    assert not _cpu.host_float(np.zeros(3, np.int64))
    assert not _cpu.host_float([1.0, 2.0])
    assert not _cpu.host_float(None)


def test_set_numba_switches_the_compiled_loops_off_and_back():
    from nnxp.ops import optim as O

    try:
        _cpu.set_numba(False)
        assert not _cpu.numba_enabled() and _cpu.kernel("adam", O._adam_loop) is None
        assert _cpu.call("adam", O._adam_loop) is False
        _cpu.set_numba(True)
        assert _cpu.numba_enabled() == _cpu._importable()
    finally:
        _cpu.set_numba(None)


def _untypable_loop(a):  # pragma: no cover - Numba refuses to compile it
    a[0] = "text"  # a string into a float array: a typing error at compile time


def test_a_loop_that_fails_to_compile_returns_false_and_writes_nothing(monkeypatch):
    pytest.importorskip("numba")
    monkeypatch.setattr(_cpu, "_enabled", True)
    a = np.ones(3)
    assert _cpu.call("test_untypable", _untypable_loop, a) is False
    np.testing.assert_array_equal(a, 1.0)
    assert _cpu._compiled["test_untypable"] is None  # not tried again
    assert _cpu.call("test_untypable", _untypable_loop, a) is False


def test_first_call_time_is_recorded_and_later_calls_take_the_hot_path(monkeypatch):
    pytest.importorskip("numba")
    from nnxp.ops import optim as O

    monkeypatch.setattr(_cpu, "_enabled", True)
    p, g, m, v = (np.full(4, 0.5) for _ in range(4))
    assert _cpu.call("adam", O._adam_loop, p, g, m, v, 0.1, 0.001, 10.0, 1e-7, 4)
    assert _cpu.compile_seconds["adam"] >= 0 and ("adam", False) in _cpu._ready
    out = []
    assert _cpu.call("adam", O._adam_loop, p, g, m, v, 0.1, 0.001, 10.0, 1e-7, 4, result=out) and out == [None]


CHILD = """
import json, sys
import numpy as np
from nnxp.ops import _cpu, optim as O
_cpu.set_numba(True)
p, g, m, v = (np.full(70_000, 0.5, np.float32) for _ in range(4))
O.adam(p, g, m, v, np.empty_like(p), 1e-3, 0.9, 0.999, 1e-7, 1)
k = _cpu.kernel("adam", O._adam_loop, O.PARALLEL_MIN_SIZE <= p.size)
print(json.dumps({"hits": sum(k.stats.cache_hits.values()), "misses": sum(k.stats.cache_misses.values())}))
"""


def test_a_second_process_loads_the_compiled_loop_from_the_disk_cache(tmp_path):
    pytest.importorskip("numba")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "NNXP_NUMBA": "1"}
    runs = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300,
                              check=False, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert runs[0] == {"hits": 0, "misses": 1}  # compiled, and written to the cache
    assert runs[1] == {"hits": 1, "misses": 0}  # loaded: the second process compiled nothing
    assert any(tmp_path.rglob("*.nbi"))


def test_threaded_loops_use_no_more_threads_than_numpys_blas(monkeypatch):
    pytest.importorskip("numba")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numba

    monkeypatch.setattr(_cpu, "_enabled", True)
    monkeypatch.setattr(_cpu, "_threads", None)
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        assert _cpu.threads() == 1  # one BLAS thread: the callers stay serial
    monkeypatch.setattr(_cpu, "_threads", None)
    blas = [p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
    assert _cpu.threads() == max(1, min(numba.config.NUMBA_NUM_THREADS, *blas))
    monkeypatch.setattr(_cpu, "_enabled", False)
    monkeypatch.setattr(_cpu, "_threads", None)
    assert _cpu.threads() == 1  # no compiled loops, no threads


def test_threaded_loops_run_on_the_workqueue_layer_and_one_at_a_time(monkeypatch):
    pytest.importorskip("numba")
    import numba

    from nnxp.ops import optim as O

    monkeypatch.setattr(_cpu, "_enabled", True)
    monkeypatch.setattr(_cpu, "_threads", 2)
    monkeypatch.setattr(O, "NUMBA_MIN_SIZE", 0)
    monkeypatch.setattr(O, "PARALLEL_MIN_SIZE", 0)
    monkeypatch.setattr(O, "PARALLEL_CHUNK", 64)
    ran = []
    real = _cpu._call
    monkeypatch.setattr(_cpu, "_call", lambda name, fn, args, parallel, result: (ran.append(parallel),
                                                                                  real(name, fn, args, parallel,
                                                                                       result))[1])
    r = np.random.default_rng(0)
    p0, g = r.normal(size=1000), r.normal(size=1000)
    expected = p0.copy()
    O.sgd_ref(expected, g, None, np.empty(1000), 0.1, 0.0, False)
    p = p0.copy()
    O.sgd(p, g, None, np.empty(1000), 0.1, 0.0, False)
    assert ran == [True]
    if "NUMBA_THREADING_LAYER" not in os.environ:
        assert numba.threading_layer() in ("workqueue", numba.config.THREADING_LAYER)
    # while another thread holds the threaded loops, this one runs the serial build: same numbers, no abort
    p = p0.copy()
    with _cpu._parallel_lock:
        O.sgd(p, g, None, np.empty(1000), 0.1, 0.0, False)
    assert ran == [True, False]
    np.testing.assert_array_equal(p, expected)


def test_status_says_whether_the_loops_run_and_why_not(monkeypatch):
    import importlib.metadata as md

    pytest.importorskip("numba")
    try:
        _cpu.set_numba(True)
        assert _cpu.status() == f"on: Numba {md.version('numba')} (NNXP_NUMBA=0 turns them off)"
        _cpu.set_numba(False)
        assert _cpu.status().startswith("off: switched off") and not _cpu.numba_enabled()

        def missing(name):
            raise md.PackageNotFoundError(name)

        monkeypatch.setattr(md, "version", missing)
        assert _cpu.status().startswith("off: Numba not installed (pip install 'nnxp[fast]')")
    finally:
        _cpu.set_numba(None)
