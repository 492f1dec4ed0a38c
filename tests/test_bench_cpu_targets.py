"""bench/cpu_targets.py: the interval arithmetic, the verdicts, the floor step and a quick run end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cpu_targets as C  # noqa: E402


def test_median_interval_takes_the_order_statistics_the_binomial_allows():
    xs = [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0]
    s = C.median_interval(xs)
    # n = 9: P(Bin <= 1) = 10/512 keeps [x(2), x(8)] at 96% coverage; [x(3), x(7)] would be 82%
    assert (s["median"], s["low"], s["high"], s["n"]) == (5.0, 2.0, 8.0, 9)
    assert s["coverage"] == pytest.approx(1 - 2 * 10 / 512)
    five = C.median_interval([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (five["low"], five["high"], five["coverage"]) == (1.0, 5.0, pytest.approx(1 - 2 / 32))
    three = C.median_interval([3.0, 1.0, 2.0])  # too few for 90%: the range, at the coverage it has
    assert (three["low"], three["high"], three["coverage"]) == (1.0, 3.0, pytest.approx(0.75))
    assert C.median_interval([2.5]) == {"median": 2.5, "low": 2.5, "high": 2.5, "coverage": 0.0, "n": 1}
    with pytest.raises(ValueError):
        C.median_interval([])


@pytest.mark.parametrize("n", [5, 9, 20, 41])
def test_median_interval_coverage_is_the_exact_binomial_one(n):
    s = C.median_interval([float(i) for i in range(n)], confidence=0.9)
    j = int(s["low"]) + 1  # the interval's 1-based order statistic
    tail = sum(math.comb(n, k) for k in range(j)) / 2**n
    assert s["high"] == n - j and s["coverage"] == pytest.approx(1 - 2 * tail) and s["coverage"] >= 0.9
    wider = tail + math.comb(n, j) / 2**n  # one order statistic further in would fall below 90%
    assert 1 - 2 * wider < 0.9


def test_verdicts_read_the_interval_against_the_target():
    def s(median, low, high):
        return {"median": median, "low": low, "high": high}

    assert C.verdict(s(1.05, 1.01, 1.10), 1.0, at_least=True) == "met"
    assert C.verdict(s(1.02, 0.97, 1.08), 1.0, at_least=True) == "met within noise"
    assert C.verdict(s(0.99, 0.95, 1.04), 1.0, at_least=True) == "missed within noise"
    assert C.verdict(s(0.95, 0.90, 0.99), 1.0, at_least=True) == "missed"
    # an upper limit (step / GEMMs at most): the interval's high end is the worst
    assert C.verdict(s(1.10, 1.08, 1.14), 1.15, at_least=False) == "met"
    assert C.verdict(s(1.14, 1.10, 1.17), 1.15, at_least=False) == "met within noise"
    assert C.verdict(s(1.20, 1.16, 1.25), 1.15, at_least=False) == "missed"


def _result(fast, floor, over_floor):
    def s(m, lo, hi):
        return {"median": m, "low": lo, "high": hi, "coverage": 0.96, "n": 9}

    summaries = {"nnxp_numpy_over_careful_numpy_in_a_longer_fit": s(0.99, 0.97, 1.03),
                 "nnxp_fast_over_careful_numpy_in_a_longer_fit": s(1.2, 1.16, 1.25),
                 "fast_step_over_gemms": s(*fast), "floor_step_over_gemms": s(*floor),
                 "fast_step_over_floor_step": s(*over_floor)}
    return {"batches": {"1024": {"summaries": summaries}}}


def test_a_step_target_below_its_floor_is_out_of_reach_and_one_near_it_is_at_its_floor():
    name = "batch 1024: fast step <= 1.05x its GEMMs"
    out = C.targets(_result((1.12, 1.08, 1.15), (1.09, 1.06, 1.12), (1.03, 1.01, 1.05)))
    assert out[name]["verdict"] == "out of reach here" and out[name]["floor"]["median"] == 1.09
    out = C.targets(_result((1.08, 1.06, 1.11), (1.07, 1.04, 1.10), (1.01, 0.98, 1.03)))
    assert out[name]["verdict"] == "at its floor, which misses the target within noise"
    out = C.targets(_result((1.12, 1.09, 1.15), (1.07, 1.04, 1.10), (1.05, 1.02, 1.08)))  # measurably above it
    assert out[name]["verdict"] == "missed, and its floor misses it too within noise"
    out = C.targets(_result((1.12, 1.09, 1.15), (1.03, 1.01, 1.06), (1.09, 1.05, 1.12)))  # a floor that meets it
    assert out[name]["verdict"] == "missed"
    out = C.targets(_result((1.04, 1.02, 1.05), (1.03, 1.01, 1.04), (1.01, 1.0, 1.02)))
    assert out[name]["verdict"] == "met"
    assert out["batch 1024: NumPy alone >= 1.0x the careful NumPy MLP"]["verdict"] == "missed within noise"
    assert "batch 128: fast >= 1.15x the careful NumPy MLP" not in out  # only the batches measured are judged


def test_floor_step_runs_the_steps_gemms_and_streams_adams_bytes():
    f = C.FloorStep(16)
    assert f.p.size == C.T.N_PARAMS and [w.shape for w in f.w] == [(784, 512), (512, 256), (256, 10)]
    assert all(np.shares_memory(w, f.p) for w in f.w) and all(np.shares_memory(d, f.g) for d in f.dw)
    p, m, v = f.p.copy(), f.m.copy(), f.v.copy()
    f.step(passes=False)  # GEMMs alone: the gradients written, nothing of Adam's touched
    np.testing.assert_array_equal(f.dw[0], f.h[0].T @ f.d[0])
    np.testing.assert_array_equal(f.p, p), np.testing.assert_array_equal(f.m, m)
    np.testing.assert_array_equal(f.v, v)
    f.step()
    np.testing.assert_array_equal(f.p, -p)  # the floor's stream: p read and written once
    np.testing.assert_array_equal(f.m, m + f.g)
    for _ in range(40):  # its passes keep the values of one size: no overflow however long it runs
        f.step()
    assert all(np.isfinite(a).all() for a in (*f.h, *f.d, f.g)) and np.abs(f.h[3]).max() < 1e3


def test_numpy_floor_step_runs_numpys_adam_and_barely_moves_a_weight():
    f = C.FloorStep(8)
    p = f.p.copy()
    f.step(numpy_adam=True)
    m, v = f.m.copy(), f.v.copy()
    assert np.abs(f.p - p).max() < 1e-10  # a 1e-12 rate: every pass ran, no weight moved more than that
    g = f.g.copy()
    np.testing.assert_allclose(m, (1 - C.T.BETA_1) * g, rtol=1e-6)  # Adam's first moment, from zero
    np.testing.assert_allclose(v, (1 - C.T.BETA_2) * g * g, rtol=1e-5)
    for _ in range(20):
        f.step(numpy_adam=True)
    assert np.abs(f.p - p).max() < 1e-9 and np.isfinite(f.m).all() and np.isfinite(f.v).all()


def test_quick_run_writes_paired_ratios_and_their_summaries(tmp_path):
    out = tmp_path / "targets.json"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_targets.py"), "--quick", "--rounds", "2",
                           "--batches", "64", "--json", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["targets"] == {}  # a 4,096-sample slice judges nothing
    row = data["batches"]["64"]
    assert all(len(v) == 2 for v in row["ratios"].values())
    assert all(len(v) == 2 for v in (*row["epoch_s"].values(), *row["block_ms"].values()))
    r, e, b = row["ratios"], row["epoch_s"], row["block_ms"]
    assert r["nnxp_numpy_over_careful_numpy"] == [c / a for a, c in zip(e["nnxp_numpy"], e["careful_numpy"])]
    o = row["fit_calls_s"]  # what the epochs' fit calls paid once each, taken off for the judged ratio
    assert all(0 < f < a for f, a in zip(o, e["nnxp_numpy"]))
    assert r["nnxp_numpy_over_careful_numpy_in_a_longer_fit"] == pytest.approx(
        [c / (a - f) for a, c, f in zip(e["nnxp_numpy"], e["careful_numpy"], o)])
    assert r["fast_step_over_gemms"] == pytest.approx([s / g for s, g in zip(b["fast_step"], b["gemms"])])
    assert r["careful_step_over_numpy_floor"] == pytest.approx(
        [c / f for c, f in zip(b["careful_step"], b["numpy_floor_step"])])
    assert set(b) == {"fast_step", "floor_step", "gemms", "numpy_step", "careful_step", "numpy_floor_step"}
    for key, values in r.items():
        assert row["summaries"][key]["median"] == pytest.approx(float(np.median(values)))
    assert "| 64 |" in proc.stdout


def test_rounds_must_be_positive():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_targets.py"), "--rounds", "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--rounds must be at least 1; got 0" in proc.stderr


def test_a_verdict_from_too_few_rounds_for_its_interval_is_not_judged():
    """1 or 2 rounds give an 'interval' of 0% or 50% coverage: a verdict of met or missed would claim what the
    run cannot tell; 5 rounds are the fewest with a 90% interval (94%)."""
    one = C.median_interval([1.2])
    assert C.verdict(one, 1.0, at_least=True).startswith("not judged: 1 round gives")
    two = C.median_interval([0.8, 0.9])
    assert C.verdict(two, 1.0, at_least=True).startswith("not judged: 2 rounds give a 50% interval")
    assert C.verdict(C.median_interval([1.1, 1.2, 1.3, 1.4, 1.5]), 1.0, at_least=True) == "met"  # 94%
    result = _result((1.12, 1.08, 1.15), (1.09, 1.06, 1.12), (1.03, 1.01, 1.05))
    for s in result["batches"]["1024"]["summaries"].values():
        s["n"], s["coverage"] = 2, 0.5
    out = C.targets(result)
    assert out and all(t["verdict"].startswith("not judged") for t in out.values())  # the floor's rules too


def test_median_interval_refuses_nan():
    """sorted() leaves a NaN wherever it falls, so the median and its interval would be arbitrary numbers."""
    with pytest.raises(ValueError, match="NaN"):
        C.median_interval([1.0, float("nan"), 2.0, 3.0, 4.0])


@pytest.mark.parametrize("args, message", [
    (["--quick", "--batches", "abc"], "--batches: 'abc' is not a positive integer"),
    (["--quick", "--batches", "64,0"], "--batches: '0' is not a positive integer"),
    (["--quick", "--batches", ","], "--batches: no batch size given"),
    (["--quick", "--batches", "8192"], "--batches: 8192 is larger than the 4,096 samples of a --quick run"),
])
def test_bad_batches_are_refused_before_anything_runs(args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_targets.py"), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
