"""bench/train_cpu.py smoke run: the foundation benchmark still runs and writes sane numbers."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_positive_throughputs(tmp_path):
    out = tmp_path / "train_cpu.json"
    proc = subprocess.run([sys.executable, "bench/train_cpu.py", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and set(data["batches"]) == {"128", "1024"}
    for batch in data["batches"].values():
        assert batch["nnxp_samples_per_s"] > 100  # a real epoch ran, at a plausible rate
        assert 0 < batch["nnxp_fit_ms_per_step"] < 10_000
    assert "environment" in data and "| 128 |" in proc.stdout
