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


def _record(impl, batch, median, steps, layers=(784, 512, 256, 10), model="small", device="cuda", kind="train"):
    return {"extra_info": {"device": device, "model": model, "layers": list(layers), "batch": batch, "impl": impl,
                           "kind": kind, "steps_per_call": steps}, "stats": {"median": median}}


def test_model_hardware_names_the_modelled_gpus_only():
    assert gpu_check.model_hardware("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert gpu_check.model_hardware("NVIDIA H200") == "H200"
    assert gpu_check.model_hardware("NVIDIA H100 PCIe") is None and gpu_check.model_hardware(None) is None


def test_prediction_and_measurement_side_by_side():
    from bench import gpu_model
    from bench.gpu_trace import Op

    # 30 tiny kernels: launch-bound, 20 + 30 x 5 = 170 µs per eager step (20: nnxp's Python, the step launched
    # from its list); the graph: 30 + 5 = 35 µs of host,
    # 30 x (2 + 0.5) = 75 µs of device
    tiny = [Op("kernel", "k", bytes=64)] * 30
    trace = {"small": {"layers": [784, 512, 256, 10],
                       "batches": {128: {"eager": tiny, "graph": [Op("graph", "cudaGraphLaunch", nodes=tiny)]}}}}
    bench = {"benchmarks": [
        _record("nnxp", 128, 16 * 340e-6, 16),  # 340 µs per step: 2.00x the prediction
        _record("nnxp_cudagraph", 128, 16 * 75e-6, 16),  # exactly as predicted
        _record("torch_cudagraph", 128, 1e-3, 16),  # no model: left out
        _record("nnxp", 512, 16 * 1e-3, 16),  # no trace at this batch
        _record("nnxp", 128, 1.0, 1, device="cpu"),  # a CPU case: left out
    ]}
    lines = gpu_check.side_by_side(bench, trace, "NVIDIA H100 80GB HBM3")
    assert lines[0] == "Predicted (model: H100 SXM) and measured time per training step:"
    assert "| small | 128 | nnxp | 170.0 | 340.0 | 2.00x | launches (host) |" in lines
    assert "| small | 128 | nnxp_cudagraph | 75.0 | 75.0 | 1.00x | kernel latency |" in lines
    assert "| small | 512 | nnxp | — | 1,000.0 | — | not modelled |" in lines
    assert len(lines) == 4 + 3
    assert gpu_model.HARDWARE["H100 SXM"].hbm_bytes_s == 3.35e12
    assert gpu_check.side_by_side(bench, trace, "Tesla T4")[0].startswith("No prediction")
