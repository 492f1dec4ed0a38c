"""bench/step_overhead.py: the replay method records every call from nnxp into the stand-in and undoes its
instrumentation; no timing is asserted (speed is measured in bench/, never in a timed unit test)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import _stand_in_cupy as sic  # noqa: E402

import nnxp.backend as backend  # noqa: E402
from bench import step_overhead as S  # noqa: E402
from nnxp.ops import _cublas, _cuda  # noqa: E402


def _keep(monkeypatch) -> None:
    """What install() and _stub_kernels() replace, put back after the test."""
    for owner, name in ((backend, "_cupy"), (_cuda, "_KERNELS"), (_cuda, "_SCRATCH"), (_cublas, "_gemm"),
                        (_cublas, "_prepare_capture"), (sic, "_gemm_into")):
        monkeypatch.setattr(owner, name, getattr(owner, name))
    for cls, name in ((sic.Device, "attributes"), (sic.RawKernel, "__call__")):
        monkeypatch.setattr(cls, name, cls.__dict__[name])


def test_every_stand_in_call_of_a_step_is_recorded_and_the_instrumentation_undone(emulator, monkeypatch):
    _keep(monkeypatch)
    fake = S.install(emulator)
    S._stub_kernels()
    x, y = fake.asarray(S.data(3)[0]), fake.asarray(S.data(3)[1])
    model = S.build_model()
    model.fit(x, y, epochs=1, batch_size=S.BATCH, verbose=0)
    before = {name: sic.FakeArray.__dict__.get(name) for name in ("device", "__getitem__", "sum", "argmax")}
    getattr_before = type(fake).__dict__["__getattr__"]
    clock = S._StandInClock()
    restore = S._instrument(fake, clock)
    assert sic.FakeArray.sum is not np.ndarray.sum and type(fake).__dict__["__getattr__"] is not getattr_before
    _cuda.forget_plans()
    clock.recording = calls = []
    launches = sic.COUNTS.launches
    model.fit(x, y, epochs=1, batch_size=S.BATCH, verbose=0)
    fit_launches = sic.COUNTS.launches - launches
    restore()
    assert {name: sic.FakeArray.__dict__.get(name) for name in before} == before
    assert sic.FakeArray.sum is np.ndarray.sum and type(fake).__dict__["__getattr__"] is getattr_before
    names = [getattr(fn, "__qualname__", "") for fn, _, _ in calls]
    assert names.count("stand_in_cupy.<locals>.matmul") == 3 * 8  # 3 forward + 5 backward GEMMs per batch
    assert clock.calls == len(calls)
    # the replay, with no instrumentation left, makes every launch of the fit again: none was made by a call that
    # went around the instrumentation (which would have been counted as nnxp's own time)
    launches = sic.COUNTS.launches
    S._replay(calls)
    assert sic.COUNTS.launches - launches == fit_launches > 3 * 20


def test_the_report_has_both_methods_and_the_control(emulator, monkeypatch):
    _keep(monkeypatch)
    r = S.step_overhead(emulator, steps=4, repeats=1)
    for key in ("nnxp_us", "nnxp_low_us", "old_us", "control_us", "replay_us", "replay_loop_us", "loop_ms"):
        assert np.isfinite(r[key])
    assert r["stand_in_calls"] > 0 and r["nnxp_calls"] > 0 and r["nnxp_us"] >= r["nnxp_low_us"]
