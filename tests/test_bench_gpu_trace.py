"""bench/gpu_trace.py: finding one step in a traced fit, byte counts from kernels.cu's signatures, and PyTorch's
launches per step from torch.profiler (CPU) mapped to what CUDA would launch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gpu_trace as T  # noqa: E402
from bench.gpu_trace import Op  # noqa: E402


def _ops(names: str) -> list[Op]:
    return [Op("kernel", n, bytes=1) for n in names]


def test_the_step_is_the_first_block_the_run_repeats():
    # prologue "pq", a first (warm-up) batch "w" + step, then steps "abc", epilogue "z"
    three = _ops("pq" + "wabc" + "abc" * 2 + "z")
    four = _ops("pq" + "wabc" + "abc" * 3 + "z")
    assert [op.name for op in T.step_window(three, four)] == list("abc")
    with pytest.raises(RuntimeError, match="not a repeated block"):
        T.step_window(_ops("pqabz"), _ops("pqabcdz"))


def test_bytes_follow_the_kernel_signature():
    sigs = T.kernel_signatures("__global__ void k(T* y, const T* b, long long n, int c) {}")
    assert sigs == {"k": ["rw", "r", "", ""]}
    assert T.kernel_signatures()["nnxp_bias_act_forward"][:3] == ["rw", "r", "rw"]  # y, b, zbuf
    y, b = np.zeros((4, 8), np.float32), np.zeros(8, np.float32)
    assert T.kernel_bytes("nnxp_bias_act_forward", (y, b, y, np.int64(32))) == 2 * 128 + 32 + 2 * 128


def test_executed_puts_a_graphs_nodes_in_its_place():
    ops = [Op("h2d", "set", 4), Op("graph", "g", nodes=_ops("ab")), Op("kernel", "c", 1)]
    assert [op.name for op in T.executed(ops)] == ["set", "a", "b", "c"]


def test_torch_ops_move_to_another_batch_by_their_batch_dimensions():
    ops = [Op("gemm", "aten::addmm", m=48, n=512, k=784), Op("gemm", "aten::mm", m=784, n=512, k=48),
           Op("elementwise", "aten::clamp_min", shapes=[[48, 512]]), Op("elementwise", "aten::index",
                                                                          shapes=[[96, 784]]),
           Op("kernel", "aten::_fused_adam_", bytes=28 * 1000)]
    moved = T.torch_ops_at_batch(ops, 48, 4096)
    assert (moved[0].m, moved[0].n, moved[0].k, moved[0].bytes) == (4096, 512, 784,
                                                                    4 * (4096 * 784 + 784 * 512 + 4096 * 512))
    assert (moved[1].m, moved[1].k) == (784, 4096)
    assert moved[2].bytes == 4 * 2 * 4096 * 512  # read, and an output as large written
    assert moved[3].bytes == 2 * 4 * 4096 * 784  # the gather reads one batch of the two and writes it
    assert moved[4].bytes == 28_000


def test_torch_step_maps_its_aten_ops_to_cuda_launches():
    pytest.importorskip("torch")
    ops = T.torch_step_ops((20, 16, 8, 10), 12)
    names = [op.name for op in ops]
    gemms = sorted((op.m, op.n, op.k) for op in ops if op.kind == "gemm")
    # forward addmm x3, backward: dW for each layer, dX for the two upper ones (the input needs no gradient)
    assert gemms == sorted([(12, 16, 20), (12, 8, 16), (12, 10, 8), (10, 8, 12), (12, 8, 10), (8, 16, 12),
                            (12, 16, 8), (16, 20, 12)])
    assert names.count("aten::_fused_adam_") == 1 and names.count("aten::_foreach_add_") == 1
    assert names.count("aten::index") == 2 and names.count("aten::argmax") == 1
    assert not any(n in T.TORCH_NO_KERNEL for n in names)
    assert "aten::copy_" not in names[:8]  # addmm's bias copy is the CPU kernel's, not a CUDA launch
    assert len(ops) == 31
