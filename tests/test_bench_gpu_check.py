"""bench/gpu_check.py without a GPU: the selftest step and where the compile times come from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from bench import gpu_check  # noqa: E402
from nnxp.backend import cuda_available  # noqa: E402


def test_selftest_runs_in_a_child_and_its_compile_times_are_reported(tmp_path, monkeypatch):
    calls = []
    child = {"device": "cuda", "ok": False, "compile_seconds": {"cuda:0/float32": 1.5},
             "checks": [{"section": "environment", "name": "GPU", "status": "PASS", "detail": "x"},
                        {"section": "ops", "name": "optim/adam", "status": "FAIL", "detail": "y"}]}

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout=json.dumps(child) + "\n", stderr="")

    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    step, seconds = gpu_check.run_selftest(tmp_path)
    assert calls[0][1:] == ["-m", "nnxp", "selftest", "--device", "cuda", "--json"]
    assert seconds == {"cuda:0/float32": 1.5}  # measured in the process that compiled, not in this one
    assert step["returncode"] == 1 and "ops: optim/adam" in step["summary"]
    assert json.loads((tmp_path / "selftest.json").read_text()) == child


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_selftest_without_a_gpu_fails_its_step_in_a_real_child(tmp_path):
    step, seconds = gpu_check.run_selftest(tmp_path)
    assert step["returncode"] == 1 and "environment" in step["summary"] and seconds == {}
