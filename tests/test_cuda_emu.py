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

// The losses' last-block finish (kernels.cu before issue 10's finding 4): every block writes its partial,
// publishes it, takes a ticket; the block with the last ticket sums the partials and re-arms the counter.
// Right for one launch at a time; two launches in flight that share `counter` mix their tickets.
template <typename T>
__global__ void ticket_sum(const T* x, T* partials, unsigned int* counter, T* out, long long n) {
    __shared__ int is_last;
    if (threadIdx.x == 0) {
        T v = T(0);
        for (long long i = blockIdx.x; i < n; i += gridDim.x) v = v + x[i];
        partials[blockIdx.x] = v;
        __threadfence();
        const unsigned int ticket = atomicAdd(counter, 1u);
        is_last = (ticket == gridDim.x - 1);
    }
    __syncthreads();
    if (is_last && threadIdx.x == 0) {
        __threadfence();
        T r = T(0);
        for (unsigned int k = 0; k < gridDim.x; ++k) r = r + partials[k];
        *out = r;
        *counter = 0u;
    }
}

// wrong within one launch: the ticket is taken before the block has reduced its partial (with a barrier), so
// the block with the last ticket can sum partials that other blocks have not written yet
template <typename T>
__global__ void early_ticket_sum(const T* x, T* partials, unsigned int* counter, T* out, long long n) {
    __shared__ int is_last;
    __shared__ T shm[32];
    if (threadIdx.x == 0) is_last = (atomicAdd(counter, 1u) == gridDim.x - 1);
    T v = T(0);
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        v = v + x[i];
    shm[threadIdx.x] = v;
    __syncthreads();
    if (threadIdx.x == 0) {
        T r = T(0);
        for (unsigned int k = 0; k < blockDim.x; ++k) r = r + shm[k];
        partials[blockIdx.x] = r;
    }
    __syncthreads();
    if (is_last && threadIdx.x == 0) {
        T r = T(0);
        for (unsigned int k = 0; k < gridDim.x; ++k) r = r + partials[k];
        *out = r;
        *counter = 0u;
    }
}

template <typename T>
__global__ void scale(T* x, long long n, T factor, int times) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        for (int k = 0; k < times; ++k) x[i] = x[i] * factor;
}
"""
KERNELS = ("good_sum", "racy_sum", "deadlock", "coordinates", "scale", "ticket_sum", "early_ticket_sum")


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


# --- races between blocks: blocks interleave at barriers, atomics and fences ----------------------------------

GRID = 6


def _ticket_launch(x, counter, name="ticket_sum", block=32):
    partials = np.full(GRID, np.nan)
    out = np.full(1, np.nan)
    return (f"{name}<double>", (GRID,), (block,), (x, partials, counter, out, np.int64(x.size))), out


def _schedules():
    return [(s, seed) for s in ("forward", "reverse") for seed in (0,)] + [("shuffled", seed) for seed in range(6)]


def test_one_ticket_reduction_at_a_time_is_right_under_every_schedule(emu):
    # atomics keep their meaning: the tickets of one launch are 0..GRID-1 whatever the interleaving
    x = np.arange(1.0, 101.0)
    counter = np.zeros(1, dtype=np.uint32)
    for schedule, seed in _schedules():
        launch, out = _ticket_launch(x, counter)
        emu.launch(*launch, schedule=schedule, seed=seed)
        assert out[0] == 5050.0 and counter[0] == 0, (schedule, seed)


def test_two_launches_sharing_a_ticket_counter_are_caught(emu):
    # finding 4 of issue 10: two loss kernels in flight on one counter mix their tickets
    x1, x2 = np.arange(1.0, 101.0), np.arange(1.0, 11.0)
    shared = np.zeros(1, dtype=np.uint32)
    wrong = []
    for schedule, seed in _schedules():
        shared[0] = 0
        (l1, o1), (l2, o2) = _ticket_launch(x1, shared), _ticket_launch(x2, shared)
        emu.launch_concurrent([l1, l2], schedule=schedule, seed=seed)
        if not (o1[0] == 5050.0 and o2[0] == 55.0 and shared[0] == 0):
            wrong.append((schedule, seed, o1[0], o2[0], int(shared[0])))
    assert len(wrong) == len(_schedules()), wrong  # interleaved blocks mix the tickets every time
    for schedule, seed in _schedules():  # one counter per launch: right under every schedule
        c1, c2 = np.zeros(1, dtype=np.uint32), np.zeros(1, dtype=np.uint32)
        (l1, o1), (l2, o2) = _ticket_launch(x1, c1), _ticket_launch(x2, c2)
        emu.launch_concurrent([l1, l2], schedule=schedule, seed=seed)
        assert (o1[0], o2[0], c1[0], c2[0]) == (5050.0, 55.0, 0, 0), (schedule, seed)


def test_a_ticket_taken_before_the_partial_is_written_is_caught(emu):
    x = np.arange(1.0, 1001.0)
    counter = np.zeros(1, dtype=np.uint32)
    caught = []
    for seed in range(40):  # blocks at their own pace: a few interleavings let the last ticket run ahead
        launch, out = _ticket_launch(x, counter, "early_ticket_sum")
        emu.launch(*launch, schedule="shuffled", seed=seed)
        if out[0] != 500500.0:
            caught.append(seed)
            assert np.isnan(out[0])  # it summed a partial that was never written (NaN-poisoned)
    assert caught, "no schedule let the block with the last ticket read a partial before it was written"
    launch, out = _ticket_launch(x, counter, "early_ticket_sum")
    emu.launch(*launch, schedule="forward")
    assert out[0] == 500500.0  # and a fixed order can hide it, as blocks run one by one would always have
