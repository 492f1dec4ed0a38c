"""The CPU emulator of CUDA (tests/_cuda_emu.py) catches what it claims to: kernels written wrong on purpose.

test_ops_cuda.py trusts it to run kernels.cu; here it must compute a correct reduction, and must expose a
missing __syncthreads (a schedule changes the result), a barrier some threads never reach, a shuffle in a
partial warp, and arguments of the wrong C type.
"""

from __future__ import annotations

import _cuda_emu
import numpy as np
import pytest

SOURCE = r"""
// correct: a block-wide sum through shared memory and warp shuffles, as kernels.cu's block_reduce
template <typename T>
__global__ void good_sum(const T* x, T* out, long long n) {
    __shared__ T shm[32];
    T v = T(0);
    for (long long i = threadIdx.x; i < n; i += blockDim.x) v = v + x[i];
    for (int o = 16; o > 0; o >>= 1) v = v + __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) shm[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        T r = T(0);
        for (unsigned w = 0; w < blockDim.x / 32; ++w) r = r + shm[w];
        out[blockIdx.x] = r;
    }
}

// wrong: thread 0 reads the other warps' partials without waiting for them
template <typename T>
__global__ void racy_sum(const T* x, T* out, long long n) {
    __shared__ T shm[32];
    T v = T(0);
    for (long long i = threadIdx.x; i < n; i += blockDim.x) v = v + x[i];
    for (int o = 16; o > 0; o >>= 1) v = v + __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) shm[threadIdx.x >> 5] = v;
    if (threadIdx.x == 0) {
        T r = T(0);
        for (unsigned w = 0; w < blockDim.x / 32; ++w) r = r + shm[w];
        out[blockIdx.x] = r;
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) shm[threadIdx.x >> 5] = T(0);  // the next block starts from zeros
}

// wrong: half a warp shuffles while the other half waits at the block barrier
template <typename T>
__global__ void deadlock(T* out) {
    if ((threadIdx.x & 31) < 16) {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, T(1), 1);
    } else {
        __syncthreads();
    }
}

// the grid and block indices, flattened as CUDA numbers them
template <typename T>
__global__ void coordinates(T* out) {
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = T(b * 1000 + t);
}

template <typename T>
__global__ void scale(T* x, long long n, T factor, int times) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        for (int k = 0; k < times; ++k) x[i] = x[i] * factor;
}
"""
KERNELS = ("good_sum", "racy_sum", "deadlock", "coordinates", "scale")


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cuda_emu_selftest")
    source = folder / "broken.cu"
    source.write_text(SOURCE)
    built = _cuda_emu.build(folder, source, KERNELS)
    if built is None:
        pytest.skip("no C++ compiler (g++ / c++) for the CUDA emulator")
    return built


def _sum(emu, name, x, schedule):
    out = np.full(3, np.nan)
    emu.launch(f"{name}<double>", (3,), (128,), (x, out, np.int64(x.size)), schedule=schedule, seed=7)
    return out


@pytest.mark.parametrize("schedule", sorted(_cuda_emu.SCHEDULES))
def test_a_correct_reduction_gives_the_sum_under_every_schedule(emu, schedule):
    x = np.arange(1000, dtype=np.float64)
    np.testing.assert_array_equal(_sum(emu, "good_sum", x, schedule), [x.sum()] * 3)


def test_a_missing_syncthreads_shows_up_as_a_schedule_dependent_result(emu):
    x = np.arange(1000, dtype=np.float64)
    results = {s: _sum(emu, "racy_sum", x, s)[0] for s in _cuda_emu.SCHEDULES}
    assert any(r != x.sum() for r in results.values()), results
    assert len(set(results.values())) > 1, results


def test_a_barrier_not_every_thread_reaches_is_reported(emu):
    with pytest.raises(_cuda_emu.EmulatorError, match="deadlock"):
        emu.launch("deadlock<float>", (1,), (32,), (np.zeros(32, np.float32),))


def test_a_shuffle_in_a_partial_warp_is_reported(emu):
    with pytest.raises(_cuda_emu.EmulatorError, match="fewer than 32 live threads"):
        emu.launch("good_sum<double>", (1,), (48,), (np.ones(5), np.zeros(1), np.int64(5)))


def test_indices_follow_cuda_numbering_in_three_dimensions(emu):
    grid, block = (2, 3, 2), (4, 2, 3)
    n_blocks, n_threads = 12, 24
    out = np.full(n_blocks * n_threads, -1.0, np.float32)
    emu.launch("coordinates<float>", grid, block, (out,), schedule="shuffled", seed=3)
    expected = [b * 1000 + t for b in range(n_blocks) for t in range(n_threads)]
    np.testing.assert_array_equal(out, np.array(expected, np.float32))


def test_a_grid_stride_loop_covers_every_element_once(emu):
    x = np.ones(1031, np.float32)
    emu.launch("scale<float>", (3,), (64,), (x, np.int64(x.size), np.float32(2.0), np.int32(3)))
    np.testing.assert_array_equal(x, np.full(1031, 8.0, np.float32))


@pytest.mark.parametrize(
    "args, message",
    [
        ((np.ones(4, np.float32), np.int64(4), np.float32(2.0), np.int64(1)), "argument 3 \\(int\\): expected int32"),
        ((np.ones(4, np.float32), 4, np.float32(2.0), np.int32(1)), "argument 1 \\(long long\\): expected int64"),
        ((np.ones(4, np.float32), np.int64(4), 2.0, np.int32(1)), "argument 2 \\(float\\): expected float32"),
        ((np.ones(4, np.float64), np.int64(4), np.float32(2.0), np.int32(1)), "expected a C-contiguous float32"),
        ((np.ones(8, np.float32)[::2], np.int64(4), np.float32(2.0), np.int32(1)), "C-contiguous"),
        ((np.ones(4, np.float32), np.int64(4), np.float32(2.0)), "3 arguments for 4 parameters"),
    ],
    ids=["int-as-int64", "long-long-as-python-int", "float-as-python-float", "wrong-dtype", "strided", "too-few"],
)
def test_arguments_of_the_wrong_c_type_are_refused(emu, args, message):
    with pytest.raises(_cuda_emu.EmulatorError, match=message):
        emu.launch("scale<float>", (1,), (32,), args)


@pytest.mark.parametrize("grid, block", [((1,), (1025,)), ((1,), (0,)), ((1, 70000), (32,)), ((1,), (1, 1, 65))])
def test_impossible_launch_shapes_are_refused(emu, grid, block):
    with pytest.raises(_cuda_emu.EmulatorError, match="invalid"):
        emu.launch("scale<float>", grid, block, (np.ones(4, np.float32), np.int64(4), np.float32(1), np.int32(1)))


def test_an_unknown_kernel_is_refused(emu):
    with pytest.raises(_cuda_emu.EmulatorError, match="no kernel"):
        emu.signature("missing<float>")
