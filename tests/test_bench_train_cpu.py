"""bench/train_cpu.py smoke run: the benchmark still runs and writes sane numbers; its careful NumPy peer learns."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_quick_run_writes_positive_throughputs(tmp_path):
    out = tmp_path / "train_cpu.json"
    proc = subprocess.run([sys.executable, "bench/train_cpu.py", "--quick", "--batches", "128,1024", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and set(data["batches"]) == {"128", "1024"}
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
    out = model._forward(x[:128], training=False)
    loss, _ = model._loss_and_grad(out, y[:128])
    np.testing.assert_allclose(first, float(loss), rtol=1e-5)
    losses = [careful.epoch(x, y) for _ in range(3)]
    assert losses[-1] < 0.8 * first  # it learns
