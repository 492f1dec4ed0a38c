"""`nnxp selftest` on the CPU, and on the stand-in CuPy over the CPU emulator of CUDA (device="cuda")."""

from __future__ import annotations

import json
from types import SimpleNamespace

import _stand_in_cupy
import pytest

from nnxp import cli, selftest
from nnxp.ops import _cublas, _cuda
from nnxp.ops.activation import ACTIVATION_OPS


def test_cpu_selftest_passes_and_prints_json(capsys):
    assert cli.main(["selftest", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["device"] == "cpu"
    statuses = {(c["section"], c["status"]) for c in data["checks"]}
    assert ("model", "PASS") in statuses and ("kernels", "SKIP") in statuses
    assert all(c["status"] in ("PASS", "SKIP") for c in data["checks"])


def test_text_report_has_one_status_per_line(capsys):
    assert selftest.main("cpu") == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(line.split()[0] in ("PASS", "FAIL", "SKIP") for line in lines)
    assert lines[-1].startswith("PASS  all")


def test_a_malformed_device_is_a_usage_error(capsys):
    assert cli.main(["selftest", "--device", "tpu"]) == 2  # refused by the parser, like every subcommand's --device
    assert "argument --device: must be cpu, cuda, cuda:N" in capsys.readouterr().err


@pytest.fixture
def gpu_box(fake_cupy, monkeypatch):
    """The stand-in plus what a real box reports about itself (versions, the GPU's properties)."""
    runtime = fake_cupy.cuda.runtime
    monkeypatch.setattr(runtime, "driverGetVersion", lambda: 12080, raising=False)
    monkeypatch.setattr(runtime, "runtimeGetVersion", lambda: 12090, raising=False)
    monkeypatch.setattr(runtime, "getDeviceProperties", lambda i: {
        "name": b"Stand-in GPU", "major": 8, "minor": 0, "totalGlobalMem": 80 * 2**30}, raising=False)
    monkeypatch.setattr(fake_cupy.cuda, "nvrtc", SimpleNamespace(getVersion=lambda: (12, 9)), raising=False)
    monkeypatch.setattr(fake_cupy.cuda, "cublas", SimpleNamespace(getVersion=lambda h: 120904), raising=False)
    monkeypatch.setattr(fake_cupy.cuda.device, "get_cublas_handle", lambda: 1, raising=False)
    # the captured matmul's one seam (cuBLAS through ctypes cannot load here), as tests/test_graph.py does
    monkeypatch.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)
    monkeypatch.setattr(_cuda, "_mode", None)
    monkeypatch.delenv("NNXP_KERNELS", raising=False)
    return fake_cupy


def test_cuda_selftest_passes_on_the_stand_in(gpu_box):
    checks = selftest.run("cuda")
    bad = [c for c in checks if c.status != "PASS"]
    assert not bad, "\n".join(f"{c.status} {c.section}: {c.name} {c.detail}" for c in bad)
    names = {(c.section, c.name) for c in checks}
    assert {("environment", n) for n in ("CUDA driver", "CUDA runtime", "GPU", "NVRTC", "cuBLAS",
                                         "CUDA headers")} <= names
    assert ("kernels", "kernels.cu float32") in names and ("kernels", "kernels.cu float64") in names
    ops = {n for s, n in names if s == "ops"}
    assert {"dense_forward/gelu", "dense_backward/softmax", "sparse_softmax_cross_entropy", "optim/adam", "optim/lion",
            "dropout_forward"} <= ops
    # every registered override is checked, named by its op (and case): derived from nnxp.ops._cuda.OPS, no count
    assert {n.removeprefix("optim/").split("/")[0] for n in ops} == set(_cuda.OPS)
    acts = {n.split("/", 1)[1] for n in ops if n.startswith("dense_forward/")}
    assert acts == set(ACTIVATION_OPS)
    assert any(s == "cuda_graph" and c.status == "PASS" for c in checks for s in [c.section])
    assert set(_cuda.compile_seconds()) == {"cuda:0/float32", "cuda:0/float64"}


def test_a_kernel_compile_failure_is_a_failed_line_with_the_nvrtc_log(gpu_box, monkeypatch, capsys):
    def broken(code, options, name_expressions):
        raise RuntimeError('kernels.cu(99): error: expected a ";"')

    monkeypatch.setattr(gpu_box, "RawModule", broken)
    assert selftest.main("cuda") == 1
    out = capsys.readouterr().out
    assert 'FAIL  kernels: kernels.cu float32' in out and 'expected a ";"' in out
    assert "SKIP  ops: all" in out
    assert "PASS  model: 20-step CPU vs cuda:0 (float64)" in out  # the references still train correctly


def test_a_missing_cublas_and_a_fused_op_with_wrong_numbers_fail_their_own_lines(gpu_box, monkeypatch):
    """Two faults in one run (a run takes 20 s on the stand-in): each fails its own line, named, and nothing else.

    The derived cases compare real outputs: a kernel off by a little in one state buffer is caught by name."""
    from nnxp.ops import optim as O

    def missing(handle):
        raise ImportError('Failure finding "libcublasLt.so.13 or libcublasLt.so.12"')

    monkeypatch.setattr(gpu_box.cuda, "cublas", SimpleNamespace(getVersion=missing))
    real = O.lion.fused

    def off(p, g, m, *rest, **kw):
        result = real(p, g, m, *rest, **kw)
        m += 1e-3  # the momentum written slightly wrong; p itself is right
        return result

    monkeypatch.setattr(O.lion, "fused", off)
    checks = selftest.run("cuda")
    env = {c.name: c for c in checks if c.section == "environment"}
    assert env["cuBLAS"].status == "FAIL" and "libcublasLt" in env["cuBLAS"].detail
    assert env["NVRTC"].status == "PASS"
    ops = {c.name: c for c in checks if c.section == "ops"}
    assert ops["optim/lion"].status == "FAIL" and "relative error" in ops["optim/lion"].detail
    assert ops["optim/adam"].status == "PASS"
