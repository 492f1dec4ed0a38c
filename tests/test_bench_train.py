"""bench/test_train.py's builders without a GPU: the nnxp cases time ``model.fit`` itself, eager and with
``cuda_graph=True``, run here on the stand-in CuPy; the CPU cases and the PyTorch peer run one epoch per call."""

from __future__ import annotations

import sys
from pathlib import Path

import _stand_in_cupy
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import conftest as C  # noqa: E402
from bench import gpu_trace as T  # noqa: E402
from bench import test_train as B  # noqa: E402
from nnxp.ops import _cublas  # noqa: E402


def test_a_timed_training_call_is_one_epoch_of_a_fixed_number_of_batches():
    assert C.epoch_batches("cpu", 32) == 4 and C.epoch_batches("cpu", 256) == 2 and C.epoch_batches("cpu", 2048) == 1
    assert C.epoch_batches("cuda", 32) == C.epoch_batches("cuda", 8192) == C.CUDA_EPOCH_BATCHES == 16
    assert C.epoch_batches("cuda", 32, quick=True) == 3 and C.epoch_batches("cpu", 32, quick=True) == 1
    for impl in ("nnxp", "torch", "sklearn_f32"):
        case = C.Case("cpu", "small", 128, impl, "train")
        assert case.samples_per_call == 512 and case.steps_per_call == 4
        assert case.flops_per_call == 4 * C.train_flops(C.MODELS["small"], 128)
    assert C.Case("cuda", "small", 128, "nnxp_cudagraph", "train").steps_per_call == 16
    assert C.Case("cuda", "small", 128, "nnxp", "infer").samples_per_call == 128


@pytest.fixture
def graph_seam(fake_cupy, monkeypatch):
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)  # as tests/test_graph.py
    monkeypatch.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)
    return fake_cupy


@pytest.mark.parametrize("impl", ["nnxp", "nnxp_cudagraph"])
def test_the_cuda_cases_time_fit_eager_and_graphed(graph_seam, impl):
    case = C.Case("cuda", "tiny", 16, impl, "train", quick=True)
    C.MODELS["tiny"] = (12, 8, C.CLASSES)
    try:
        impl_ = B.BUILDERS[impl](case)
        tracer = T.Tracer(_stand_in_cupy, graph_seam, _cublas, compute_gemms=True)
        with tracer:
            impl_.train()
            impl_.sync()
    finally:
        del C.MODELS["tiny"]
    graph_launches = sum(op.kind == "graph" for op in tracer.ops)
    # 3 batches: the first eager (warm-up), the second captured and launched, the third replayed
    assert graph_launches == (2 if impl == "nnxp_cudagraph" else 0)
    assert sum(op.kind == "gemm" for op in T.executed(tracer.ops)) == 3 * (2 + 2 + 1)
    assert impl_.check()
    assert "model.fit over 3 full batches" in impl_.info["timed"]


def test_the_cpu_case_and_its_torch_peer_train_one_epoch_per_call():
    case = C.Case("cpu", "small", 32, "nnxp", "train", quick=True)
    impl = B.build_nnxp(case)
    impl.train()
    assert impl.check() and impl.info["timed"] == "model.fit over 1 full batch"
    pytest.importorskip("torch")
    peer = B.build_torch(C.Case("cpu", "small", 32, "torch", "train"))
    peer.train()
    assert peer.check() and np.isfinite(peer.info["torch_threads"])
