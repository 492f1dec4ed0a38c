"""Registers, spills and shared memory of kernels.cu as NVRTC builds it for CuPy (bench/kernel_resources.py):
no kernel spills on sm_80 or sm_90, and bench/results/kernel-resources.md is the table of this kernels.cu."""

from __future__ import annotations

import re

import pytest
from test_ops_cuda_nvrtc import _require_nvrtc

from bench import kernel_resources as K


@pytest.mark.parametrize("arch", K.ARCHS)
def test_no_kernel_spills_or_uses_a_stack(arch):
    _require_nvrtc()
    rows = K.parse_ptxas(K.nvrtc_build(arch)["log"])
    assert sorted(rows) == sorted(K.EXPRESSIONS)
    for expression, r in rows.items():
        assert (r["spill_stores"], r["spill_loads"], r["stack"]) == (0, 0, 0), (arch, expression, r)
        assert K.blocks_per_sm(r["registers"], r["smem"], arch) >= 2, (arch, expression, r)


def test_occupancy_rule():
    assert K.blocks_per_sm(32, 0, "80") == 8  # 32 registers: 2048 threads fit
    assert K.blocks_per_sm(70, 260, "80") == 3  # 72 x 32 per warp -> 28 warps -> 3 blocks of 8 warps
    assert K.blocks_per_sm(64, 0, "90") == 4
    assert K.blocks_per_sm(16, 48 * 1024, "80") == 3  # shared memory limits
    assert K.blocks_per_sm(16, 0, "80", block=32) == 32  # the block limit


def test_the_committed_table_is_this_kernels_cu():
    text = K.TABLE.read_text(encoding="utf-8")
    digest = re.search(r"kernels\.cu sha256 (\w+)", text).group(1)
    assert digest == K.source_digest(), "kernels.cu changed: run `python -m bench.kernel_resources`"
    _require_nvrtc()
    for arch in K.ARCHS:
        build = K.nvrtc_build(arch)
        header = f"## sm_{arch}, {build['version']} with CuPy 14.2's RawModule options"
        if header not in text:
            pytest.skip(f"the table was made with another NVRTC than {build['version']}")
        section = text.split(header, 1)[1].split("\n## ", 1)[0]
        assert "\n".join(K.table(K.parse_ptxas(build["log"]), arch)) in section, arch


def test_grids_are_sized_by_the_drivers_occupancy(fake_cupy, monkeypatch):
    # nnxp.ops._cuda._launch caps a 1-D grid at resident_blocks x SMs; the stand-in has no driver API (CuPy's
    # cupy.cuda.driver needs a GPU), so first the fallback of 8, then a driver that says 3 blocks fit
    from types import SimpleNamespace

    import _stand_in_cupy
    import numpy as np

    from nnxp.ops import _cuda
    from nnxp.ops import optim as O

    grids = []
    call = _stand_in_cupy.RawKernel.__call__
    monkeypatch.setattr(_stand_in_cupy.RawKernel, "__call__",
                        lambda self, grid, block, args, **kw: grids.append(grid) or call(self, grid, block, args))
    p = fake_cupy.asarray(np.ones(256 * 20))
    g = fake_cupy.asarray(np.ones(256 * 20))
    O.sgd.fused(p, g, None, None, 0.5, 0.0, False)
    asked = []
    monkeypatch.setattr(fake_cupy.cuda, "driver", SimpleNamespace(
        occupancyMaxActiveBlocksPerMultiprocessor=lambda ptr, block, smem: asked.append(block) or 3), raising=False)
    monkeypatch.setattr(_cuda, "_KERNELS", _cuda.LazyKernels())
    O.sgd.fused(p, g, None, None, 0.5, 0.0, False)
    assert grids == [(8,), (3,)] and asked == [256]  # one SM on the stand-in
    np.testing.assert_array_equal(fake_cupy.asnumpy(p), 0.0)  # both launches covered every element
