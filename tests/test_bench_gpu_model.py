"""bench/gpu_model.py: the paper model's numbers (FLOPs, roofline, launch-bound steps, graphs, syncs) and its
report, plus the traced launch list against what the stand-in CuPy counted."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import _stand_in_cupy
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gpu_model as M  # noqa: E402
from bench import gpu_trace as T  # noqa: E402
from bench.gpu_trace import Op  # noqa: E402
from nnxp.ops import _cublas, _cuda  # noqa: E402

H100, H200 = M.HARDWARE["H100 SXM"], M.HARDWARE["H200"]
A = M.Assumptions()


def test_published_figures():
    assert (H100.hbm_bytes_s, H200.hbm_bytes_s) == (3.35e12, 4.8e12)
    assert H100.fp32_flops == H200.fp32_flops == 66.9e12 and H100.tf32_flops == 494.7e12 and H100.sms == 132


def test_a_gemm_counts_2mnk_flops_and_others_none():
    assert M.gemm_flops(Op("gemm", "gemm", m=128, n=512, k=784)) == 2 * 128 * 512 * 784 == 102_760_448
    assert M.gemm_flops(Op("kernel", "nnxp_adam<float>", bytes=10**6)) == 0


def test_a_large_gemm_is_flop_bound_with_wave_quantisation():
    op = Op("gemm", "gemm", bytes=4 * 3 * 4096 * 4096, m=4096, n=4096, k=4096)
    t = M.op_times(op, H100, A)
    ideal = 2 * 4096**3 / (66.9e12 * 0.7)  # all 132 SMs busy all the time
    # no tiling fills 132 SMs exactly: the best choice (32x32 tiles, k split 8 ways) is 993 waves of 1/128 of
    # a 32x32 output tile each
    assert t["flops"] == pytest.approx(993 * 2 * 32 * 32 * 512 / (66.9e12 * 0.7 / 132)) and t["flops"] > ideal
    # a skinny GEMM is split to use the SMs: 32x512x784 in 32x32 tiles, k split 8 ways (128 units, one wave)
    skinny = M.op_times(Op("gemm", "gemm", m=32, n=512, k=784), H100, A)["flops"]
    assert skinny == pytest.approx(2 * 32 * 32 * 98 / (66.9e12 * 0.7 / 132))
    assert t["bytes"] == pytest.approx(4 * 3 * 4096 * 4096 / (3.35e12 * 0.8))
    assert M.op_time(op, H100, A) == t["flops"] == max(t.values())
    tf32 = M.op_time(op, H100, replace(A, precision="tf32"))
    assert tf32 == pytest.approx(t["flops"] * 66.9 / 494.7)


def test_the_roofline_takes_the_largest_term():
    stream = Op("kernel", "nnxp_adam<float>", bytes=10**9)
    assert M.op_time(stream, H100, A) == pytest.approx(1e9 / (3.35e12 * 0.8))  # bandwidth
    assert M.op_time(stream, H200, A) == pytest.approx(1e9 / (4.8e12 * 0.8))
    assert M.op_time(Op("kernel", "tiny", bytes=64), H100, A) == A.kernel_min  # latency
    assert M.op_time(Op("gemm", "gemm", bytes=12, m=1, n=1, k=1), H100, A) == A.gemm_min


def test_a_launch_bound_step_takes_launches_times_overhead():
    ops = [Op("kernel", f"k{i}", bytes=1024) for i in range(30)]
    p = M.predict(ops, H100, replace(A, nnxp_python_eager=0.0), "nnxp", batch=32)
    assert p.step_s == pytest.approx(30 * 5e-6) == pytest.approx(p.host_s)
    assert p.device_s == pytest.approx(30 * (A.kernel_min + A.gap_eager))
    assert p.bound == "launches (host)" and p.launches == p.kernels == 30
    assert p.samples_per_s == pytest.approx(32 / (30 * 5e-6))
    torch = M.predict(ops, H100, replace(A, torch_python=0.0), "torch", batch=32)
    assert torch.step_s == pytest.approx(30 * 6e-6)


def test_device_bound_steps_say_what_bounds_them():
    big = [Op("gemm", "gemm", bytes=3 * 4 * 4096**2, m=4096, n=4096, k=4096)] * 3
    p = M.predict(big, H100, A, "nnxp", 4096)
    assert p.bound == "FLOPs" and p.step_s == pytest.approx(p.device_s) and p.device_s > p.host_s
    assert p.gemm_s == pytest.approx(3 * M.op_time(big[0], H100, A))
    assert p.flops == 3 * 2 * 4096**3
    copies = [Op("kernel", "nnxp_adam<float>", bytes=10**9)] * 2
    assert M.predict(copies, H100, A, "nnxp", 1).bound == "bandwidth"
    tiny = [Op("kernel", "tiny", bytes=4)] * 100
    assert M.predict(tiny, H100, replace(A, nnxp_host={**A.nnxp_host, "kernel": 0.0}, nnxp_python_eager=0.0),
                     "nnxp", 1).bound == "kernel latency"


def test_a_graph_is_one_launch_whose_nodes_run_with_the_smaller_gap():
    nodes = [Op("kernel", "tiny", bytes=4, captured=True)] * 20
    ops = [Op("graph", "cudaGraphLaunch", nodes=nodes), Op("h2d", "ndarray.set (pageable)", bytes=32)]
    p = M.predict(ops, H100, A, "nnxp_graph", 128)
    assert p.launches == 2 and p.kernels == 21
    assert p.host_s == pytest.approx(A.nnxp_python_graph + 5e-6 + 10e-6)
    assert p.device_s == pytest.approx(20 * (A.kernel_min + A.gap_graph) + A.kernel_min + A.gap_eager)


def test_a_read_of_the_device_serialises_host_and_device():
    ops = [Op("kernel", "k", bytes=10**9), Op("d2h", "ndarray.get", bytes=4)]
    p = M.predict(ops, H100, A, "nnxp", 1)
    assert p.step_s == pytest.approx(p.host_s + p.device_s)


def test_speedup_is_the_ratio_of_step_times():
    preds = [M.predict([Op("kernel", "k", bytes=4)] * n, H100, A, impl, 128) for n, impl in ((10, "nnxp_graph"),
                                                                                          (30, "torch"))]
    assert M.speedup(preds, "H100 SXM", 128, "nnxp_graph", "torch") == pytest.approx(preds[1].step_s
                                                                                      / preds[0].step_s)
    assert M.speedup(preds, "H200", 128, "nnxp_graph", "torch") is None


def _committed_trace() -> dict:
    path = ROOT / "bench" / "results" / "gpu-trace.json"
    if not path.exists():
        pytest.skip("bench/results/gpu-trace.json not written yet (python bench/gpu_trace.py)")
    return M.load_trace(path)


def test_the_committed_report_is_what_the_model_makes_of_the_committed_trace(tmp_path):
    trace = _committed_trace()
    md = M.render(trace)
    assert md == (ROOT / "bench" / "results" / "gpu-model.md").read_text(), "rerun: python bench/gpu_model.py"
    assert "## Assumptions" in md and "Getting Started with CUDA Graphs" in md and "3.35 TB/s" in md


def test_the_committed_trace_holds_every_modelled_case():
    trace = _committed_trace()
    assert trace["small"]["layers"] == [784, 512, 256, 10] and trace["large"]["layers"] == [784, 4096, 4096, 10]
    assert sorted(trace["small"]["batches"]) == [32, 128, 512, 2048, 8192] and list(trace["large"]["batches"]) == [
        4096]
    for case in trace.values():
        for modes in case["batches"].values():
            assert set(modes) == {"eager", "graph", "torch"}
            graphs = [op for op in modes["graph"] if op.kind == "graph"]
            assert len(graphs) == 1 and graphs[0].nodes  # one graph launch per graphed step
            eager_gemms = sorted((o.m, o.n, o.k) for o in modes["eager"] if o.kind == "gemm")
            node_gemms = sorted((o.m, o.n, o.k) for o in graphs[0].nodes if o.kind == "gemm")
            assert eager_gemms == node_gemms and len(eager_gemms) == 5 + 3


# --- the traced launch list against the stand-in's own count -------------------------------------------------


@pytest.fixture
def graph_seam(fake_cupy, monkeypatch):
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)  # as tests/test_graph.py
    return fake_cupy


def _launched() -> int:
    return sum(_stand_in_cupy.RawKernel.launches.values())


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "graph"])
def test_the_traced_step_launches_what_the_stand_in_counted(graph_seam, cuda_graph):
    layers, batch = (20, 16, 8, 3), 32
    def factory():  # each traced fit starts without the ops' kept scratch, as bench/gpu_trace.py's stand_in()
        _cuda._SCRATCH.clear()
        return T.Tracer(_stand_in_cupy, graph_seam, _cublas, compute_gemms=True)

    counted = []
    for batches in (3, 4):
        before = _launched()
        ops = T.trace_fit(factory, layers, batch, batches, cuda_graph)
        counted.append(_launched() - before)
        kernels = [op for op in T.executed(ops) if op.kind == "kernel"]
        assert len(kernels) == counted[-1]  # every RawKernel launch the stand-in ran was traced, once
    step = T.trace_step(factory, layers, batch, cuda_graph)
    assert sum(op.kind == "kernel" for op in T.executed(step)) == counted[1] - counted[0]
    assert sum(op.kind == "gemm" for op in T.executed(step)) == 8  # 3 forward, 3 weight gradients, 2 dX
    if cuda_graph:
        assert sum(op.kind == "graph" for op in step) == 1
        assert all(n.captured for op in step if op.kind == "graph" for n in op.nodes)
    p = M.predict(step, M.HARDWARE["H100 SXM"], A, "nnxp_graph" if cuda_graph else "nnxp", batch)
    assert p.kernels == len(T.executed(step)) and p.launches == len(step)
    json.dumps([op.to_json() for op in step])  # what gpu-trace.json stores
    assert [Op.from_json(op.to_json()).key() for op in step] == [op.key() for op in step]
