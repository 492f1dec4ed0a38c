"""bench/sklearn_fit.py smoke run: the estimator benchmark runs and writes sane numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run_writes_both_libraries_and_dtypes(tmp_path):
    pytest.importorskip("sklearn", minversion="1.6")
    out = tmp_path / "sklearn_fit.json"
    proc = subprocess.run([sys.executable, "bench/sklearn_fit.py", "--quick", "--epochs", "1", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True and set(data["cases"]) == {"float64", "float32"}
    for case in data["cases"].values():
        for impl in ("nnxp", "sklearn"):
            assert case[impl]["fit_s"] > 0 and case[impl]["runs"][0]["n_iter"] == 1
        assert case["speedup_nnxp_over_sklearn"] > 0
    assert "| float32 |" in out.with_suffix(".md").read_text()
