"""bench/train_cpu.py smoke run: the benchmark still runs and writes sane numbers; its careful NumPy peer learns."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_quick_run_writes_positive_throughputs(tmp_path):
    out = tmp_path / "train_cpu.json"
    # one batch size: every part of the run once (a second size repeats the same code; CI's time)
    proc = subprocess.run([sys.executable, "bench/train_cpu.py", "--quick", "--batches", "128", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and set(data["batches"]) == {"128"}
    for batch in data["batches"].values():
        for impl in ("nnxp_numpy", "nnxp_fast", "careful_numpy"):
            assert batch["samples_per_s"][impl] > 100  # a real epoch ran, at a plausible rate
            assert 0 < batch["ms_per_step"][impl] < 10_000
        for parts in batch["step_ms"].values():
            assert 0 < parts["forward"] < parts["step"]
        assert batch["gemms_numpy"]["ms"] > 0
    for impl in ("nnxp_numpy", "nnxp_fast", "careful_numpy"):
        m = data["memory"][impl]
        assert m["peak_rss_training_mib"] >= m["rss_after_data_mib"] > 10
    assert "environment" in data and "| 128 |" in proc.stdout
    # the optimizer's floor: Adam's 28 bytes a parameter, streamed in a plausible time, and the bound it sets
    floor = data["adam_step"]["memory_floor"]
    assert floor["bytes"] == 28 * floor["params"] == 28 * 535_818
    assert 0 < floor["floor_ms"] < 1000 and 0 < floor["floor_cold_ms"] < 1000
    for batch in data["batches"].values():
        o, g = batch["optimizer_floor"], batch["gemms_numpy"]["ms"]
        assert o["gemms_plus_floor_over_gemms"] == (g + o["floor_ms"]) / g
        assert o["optimizer_pass_ms"]["nnxp_numpy"] == batch["step_ms"]["nnxp_numpy"]["optimizer"] > 0
        assert 0 < batch["nnxp_input_check_s"] < batch["nnxp_fit_call_s"] * 10
        # the floor and the optimizer pass timed where a step meets them (after the backward GEMMs)
        assert o["floor_in_step_ms"] == o["in_step"]["nnxp_fast"]["floor_ms"] > 0
        assert o["gemms_plus_in_step_floor_over_gemms"] == (g + o["floor_in_step_ms"]) / g
        assert all(v["optimizer_ms"] > 0 for v in o["in_step"].values())
        assert batch["gemms_numpy"]["ms_cold"] > 0
        # the careful MLP's phases, timed in the same rounds as nnxp's
        assert set(batch["step_ms"]) == {"nnxp_numpy", "nnxp_fast", "nnxp_fast_threaded"}
        c = batch["careful_step_ms"]
        # each phase timed (no timing relation asserted: a loaded machine moves them apart; it failed CI once)
        assert all(c[phase] > 0 for phase in ("step", "forward", "loss", "backward", "optimizer"))
        assert batch["nnxp_numpy_minus_careful_ms"]["step"] == batch["step_ms"]["nnxp_numpy"]["step"] - c["step"]
    assert "optimizer floor" in proc.stdout and "phase by phase" in proc.stdout
    # the forced threaded row started Numba's pool with nnxp's choice of layer; by default no loop is threaded
    threading = data["environment"]["numba_threading"]
    assert threading["threaded_loops_by_default"] is False and threading["layer"] == "workqueue"
    # the fast extra's fixed memory, measured in fresh processes without the data set
    fixed = data["memory_fixed_cost"]
    runs = fixed["runs"]
    assert runs["numba_import"]["numba_loaded"] and not runs["numpy_fit"]["numba_loaded"]
    assert fixed["numba_import_mib"] > 1 and fixed["fixed_mib"] > fixed["numba_import_mib"] / 2
    assert set(runs["fast_fit"]["loops_first_call_s"]) >= {"bias_act", "act_grad", "adam"}  # the loops did load


def test_numpy_only_run_times_nnxp_and_the_careful_mlp_alone(tmp_path):
    """--numpy-only: nnxp with NumPy alone and the careful MLP, epochs and step phases, and nothing else."""
    out = tmp_path / "numpy_only.json"
    proc = subprocess.run([sys.executable, "bench/train_cpu.py", "--numpy-only", "--quick", "--batches", "64",
                           "--max-foreign", "100", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "train_cpu --numpy-only" and data["data"]["samples"] == 4096
    row = data["batches"]["64"]
    assert set(row["samples_per_s"]) == set(row["step_ms"]) == {"nnxp_numpy", "careful_numpy"}  # no other library
    assert row["nnxp_numpy_over_careful_numpy"] == row["samples_per_s"]["nnxp_numpy"] / row["samples_per_s"][
        "careful_numpy"]
    for parts in row["step_ms"].values():
        assert 0 < parts["forward"] < parts["step"] and parts["optimizer"] > 0
    assert row["careful_over_nnxp_step_time"] == row["step_ms"]["careful_numpy"]["step"] / row["step_ms"][
        "nnxp_numpy"]["step"]
    assert "| 64 |" in proc.stdout and "memory" not in data and "adam_step" not in data


def test_fixed_cost_arithmetic(monkeypatch):
    """The net ratio and the data-set size at which the 10% holds follow from the measured RSS."""
    from bench import train_cpu as T

    start = {"rss_before_mib": 70.0}
    fake = {"nnxp": {**start, "peak_rss_mib": 70.0}, "numba_import": {**start, "peak_rss_mib": 120.0},
            "numpy_fit": {**start, "peak_rss_mib": 86.0}, "fast_fit": {**start, "peak_rss_mib": 200.0}}
    monkeypatch.setattr(T, "run_child", lambda kind, mode: dict(fake[mode]))
    memory = {"nnxp_fast": {"peak_rss_training_mib": 380.0}, "careful_numpy": {"peak_rss_training_mib": 265.0,
                                                                              "samples": 60000}}
    out = T.numba_fixed_cost(memory)
    assert out["numba_import_mib"] == 50.0 and out["fixed_mib"] == 114.0
    assert out["peak_over_careful"] == 380 / 265 and out["peak_net_of_fixed_over_careful"] == 266 / 265
    n = out["samples_for_10_percent"]
    per_sample = (784 * 4 + 8) / 2**20
    careful_at = lambda k: 265.0 + (k - 60000) * per_sample  # noqa: E731
    assert careful_at(n) >= 115.0 / 0.10 - 1e-9 > careful_at(n - 1)  # the smallest size where 115 MiB is 10%
    assert out["samples_for_10_percent_fixed_only"] < n


def test_compare_trees_runs_two_trees_interleaved(tmp_path):
    """Each worker imports its own tree's nnxp; both train on the same data; the ratios are sane numbers."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(ROOT / "nnxp", other / "nnxp", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "compare.json"
    proc = subprocess.run([sys.executable, "bench/compare_trees.py", "--against", str(other), "--samples", "1024",
                           "--repeats", "2", "--batches", "256", "--max-foreign", "100", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    mode = data["modes"]["numpy"]
    assert mode["workers"]["this"]["nnxp"].startswith(str(ROOT / "nnxp"))
    assert mode["workers"]["against"]["nnxp"].startswith(str(other / "nnxp"))
    assert mode["workers"]["this"]["NNXP_NUMBA"] == "0"
    row = mode["batches"]["256"]
    assert len(row["epoch_s"]["this"]) == len(row["epoch_s"]["against"]) == 2
    assert 0.1 < row["this_over_against_speed"] < 10
    # the same code, weights, data and shuffling seed: the same training
    assert row["last_loss"]["this"] == row["last_loss"]["against"]
    assert "| numpy | 256 |" in proc.stdout


def test_compare_trees_refuses_a_path_without_nnxp(tmp_path):
    proc = subprocess.run([sys.executable, "bench/compare_trees.py", "--against", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "--against must be a source tree holding nnxp/__init__.py" in proc.stderr


def test_careful_numpy_mlp_learns_and_matches_nnxp_first_step():
    """The peer is a real MLP: its first step's loss equals nnxp's from the same weights, and an epoch learns."""
    from bench import train_cpu as T

    x, y, _ = T.load_data(2048)
    careful = T.careful_mlp(128)
    model = T.nnxp_model()
    model.build(784)
    careful.h[0][:] = x[:128]
    careful.yb[:] = y[:128]
    first = careful.step(128)
    out = model.forward(x[:128], training=False)
    loss, _ = model.loss_and_grad(out, y[:128])
    np.testing.assert_allclose(first, float(loss), rtol=1e-5)
    losses = [careful.epoch(x, y) for _ in range(3)]
    assert losses[-1] < 0.8 * first  # it learns


def test_threading_report_starts_no_pool():
    """Reporting Numba's threading must not launch a layer: numba.get_num_threads() once started OpenMP's at the end
    of a run whose loops were all serial, and the report then read "omp" (issue 15)."""
    pytest.importorskip("numba")
    code = ("import json, numba; from bench import train_cpu as T; r = T.numba_threading()\n"
            "try:\n    numba.threading_layer(); started = True\nexcept ValueError:\n    started = False\n"
            "print(json.dumps([r['layer'], r['num_threads'], started, r['threaded_loops_by_default']]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [None, None, False, False]


def test_careful_phases_are_its_step():
    """careful_step_parts runs the careful MLP's own step, phase by phase: the same weights after it."""
    from bench import train_cpu as T

    x, y, _ = T.load_data(1024)
    a, b = T.careful_mlp(128), T.careful_mlp(128)
    perm = np.random.default_rng(5).permutation(x.shape[0])
    for i in range(3):
        b.step(b.gather(x, y, perm[i * 128 : (i + 1) * 128]))
    parts = T.careful_step_parts(a, x, y, 128, 3, seed=5)
    assert all(parts[k] > 0 for k in T.PHASES)
    for pa, pb in zip(a.params, b.params):
        np.testing.assert_array_equal(pa, pb)


def test_epilogues_bench_times_the_loops_and_their_references(tmp_path):
    """bench/epilogues_cpu.py runs nnxp's compiled epilogue loops and the references and writes positive times."""
    pytest.importorskip("numba")
    out = tmp_path / "epilogues.json"
    proc = subprocess.run([sys.executable, "bench/epilogues_cpu.py", "--batches", "8", "--calls", "3", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    row = json.loads(out.read_text())["batches"]["8"]["this"]
    assert set(row) == {"bias_act", "act_grad", "bias_act_ref", "act_grad_ref", "bias_act_numpy"}
    assert all(v["total"] > 0 for v in row.values()) and "| 8 |" in proc.stdout
    assert "this: bias_act_numpy" in proc.stdout


def test_sampler_counts_retakes_not_tries(monkeypatch):
    """A noisy sample is retaken while retakes remain; the last noisy try is kept, not counted as a retake."""
    from bench import train_cpu as T

    loads = iter([0.9, 0.8, 0.7, 0.9])

    class Noisy:  # the other processes' load each try meets, in order
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.wall, self.foreign = 0.1, next(loads)

    monkeypatch.setattr(T, "Timer", Noisy)
    s = T.Sampler(0.5, 2)
    assert s.sample(lambda: "v") == (0.1, 0.7, "v")  # three tries, the quietest kept
    assert (s.retaken, s.kept_dirty) == (2, 1)
    quick = T.Sampler(0.5, 0)  # --quick: never retakes
    quick.sample(lambda: None)
    assert (quick.retaken, quick.kept_dirty) == (0, 1)


@pytest.mark.parametrize("args, message", [
    (["--quick", "--batches", "8192"], "--batches: 8192 is larger than the 4,096 samples this run trains on"),
    (["--numpy-only", "--samples", "1000", "--batches", "2048"], "2048 is larger than the 1,000 samples"),
    (["--batches", "0"], "'0' is not a positive integer"),
])
def test_bad_batches_are_refused_before_anything_runs(args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "train_cpu.py"), *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1000:]
