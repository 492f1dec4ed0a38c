// The CUDA execution model on the CPU, enough of it to run nnxp/ops/kernels.cu unchanged in the tests.
//
// Each CUDA thread of a block is a fiber (ucontext) with its own stack; one OS thread runs them, so a launch is
// deterministic for a given schedule. Blocks run one after another in a chosen order (forward, reverse, or a
// seeded shuffle), and inside a block the scheduler resumes fibers in a chosen order too, so a kernel whose
// result depends on block or thread order (a missing __syncthreads, a reduction in retirement order) gives
// different bits under different schedules. __syncthreads waits for every live thread of the block (threads
// that returned no longer count, as on sm_70+); __shfl_xor_sync exchanges through a per-warp slot array and
// insists on all 32 lanes being live and named in the mask. A barrier that some threads never reach is
// reported as a deadlock instead of hanging.
//
// What it cannot show: races between blocks (blocks never overlap here), uninitialised shared memory (__shared__
// becomes `static`, zeroed once), device math ulps (glibc's expf / tanhf stand in for CUDA's), and speed.

#pragma once

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static  // blocks run one at a time, so one copy per kernel instantiation is enough

struct nx_dim3 {
    unsigned int x, y, z;
};

// The built-in variables: the scheduler sets threadIdx before it resumes a fiber.
static nx_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace nxemu {

const size_t kStackBytes = 64 * 1024;

struct Fiber {
    ucontext_t ctx;
    nx_dim3 tid;
    int linear = 0;        // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
    bool done = false;
    int wait = 0;          // 0 runnable, 1 at __syncthreads, 2 at a warp exchange
    unsigned wait_gen = 0;  // the barrier generation it waits to see pass
};

struct State {
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    ucontext_t sched;
    int current = -1;
    int live = 0;
    int bar_arrived = 0;
    unsigned bar_gen = 0;
    std::vector<int> warp_arrived, warp_live;
    std::vector<unsigned> warp_gen;
    std::vector<uint64_t> slots;
    std::string error;
    const std::function<void()>* body = nullptr;
};

static State S;

static void fail(const std::string& what) {
    if (!S.error.empty()) return;
    S.error = what + " (block " + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
              std::to_string(blockIdx.z) + ", thread " + std::to_string(threadIdx.x) + "," +
              std::to_string(threadIdx.y) + "," + std::to_string(threadIdx.z) + ")";
}

static void suspend() {
    Fiber& f = S.fibers[S.current];
    swapcontext(&f.ctx, &S.sched);
}

// Release a barrier whose live threads have all arrived (also called when a thread exits).
static void release_block_if_complete() {
    if (S.bar_arrived > 0 && S.bar_arrived == S.live) {
        S.bar_arrived = 0;
        ++S.bar_gen;
    }
}

static void release_warp_if_complete(int w) {
    if (S.warp_arrived[w] > 0 && S.warp_arrived[w] == S.warp_live[w]) {
        S.warp_arrived[w] = 0;
        ++S.warp_gen[w];
    }
}

static void block_barrier() {
    Fiber& f = S.fibers[S.current];
    const unsigned gen = S.bar_gen;
    ++S.bar_arrived;
    release_block_if_complete();
    if (S.bar_gen != gen) return;  // the last to arrive goes on
    f.wait = 1;
    f.wait_gen = gen;
    suspend();
}

static void warp_barrier(int w) {
    Fiber& f = S.fibers[S.current];
    const unsigned gen = S.warp_gen[w];
    ++S.warp_arrived[w];
    release_warp_if_complete(w);
    if (S.warp_gen[w] != gen) return;
    f.wait = 2;
    f.wait_gen = gen;
    suspend();
}

static void fiber_entry() {
    (*S.body)();
    Fiber& f = S.fibers[S.current];
    f.done = true;
    --S.live;
    const int w = f.linear / 32;
    --S.warp_live[w];
    release_block_if_complete();  // an exited thread no longer holds a barrier back
    release_warp_if_complete(w);
    swapcontext(&f.ctx, &S.sched);  // never resumed
}

// Schedules: 0 forward, 1 reverse, 2 shuffled with `seed`.
static std::vector<int> ordering(int n, int schedule, std::mt19937_64& rng) {
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    if (schedule == 1) std::reverse(order.begin(), order.end());
    if (schedule == 2) std::shuffle(order.begin(), order.end(), rng);
    return order;
}

static void run_block(int schedule, std::mt19937_64& rng) {
    const int n = (int)(blockDim.x * blockDim.y * blockDim.z);
    const int warps = (n + 31) / 32;
    while ((int)S.stacks.size() < n) S.stacks.push_back((char*)malloc(kStackBytes));
    S.fibers.assign(n, Fiber());
    for (int k = 0; k < n; ++k) {
        Fiber& f = S.fibers[k];
        f.linear = k;
        f.tid = {k % blockDim.x, (k / blockDim.x) % blockDim.y, k / (blockDim.x * blockDim.y)};
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = S.stacks[k];
        f.ctx.uc_stack.ss_size = kStackBytes;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_entry, 0);
    }
    S.live = n;
    S.bar_arrived = 0;
    S.warp_arrived.assign(warps, 0);
    S.warp_gen.assign(warps, 0);
    S.warp_live.assign(warps, 32);
    if (n % 32) S.warp_live[warps - 1] = n % 32;
    S.slots.assign(n, 0);
    const std::vector<int> order = ordering(n, schedule, rng);
    while (S.live > 0 && S.error.empty()) {
        bool progressed = false;
        for (int k : order) {
            Fiber& f = S.fibers[k];
            if (f.done) continue;
            if (f.wait == 1 && f.wait_gen == S.bar_gen) continue;
            if (f.wait == 2 && f.wait_gen == S.warp_gen[f.linear / 32]) continue;
            f.wait = 0;
            S.current = k;
            threadIdx = f.tid;
            swapcontext(&S.sched, &f.ctx);
            progressed = true;
            if (!S.error.empty()) break;
        }
        if (!progressed) fail("deadlock: threads wait at a barrier that the others never reach");
    }
}

// Runs `body` as a kernel over grid x block; returns "" or what went wrong.
static std::string launch(const std::function<void()>& body, nx_dim3 grid, nx_dim3 block, int schedule,
                          uint64_t seed) {
    S.error.clear();
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
        return "invalid block " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" +
               std::to_string(block.z) + " (at most 1024 threads, z <= 64)";
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        return "invalid grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
               std::to_string(grid.z);
    std::mt19937_64 rng(seed);
    S.body = &body;
    gridDim = grid;
    blockDim = block;
    const int blocks = (int)(grid.x * grid.y * grid.z);
    for (int b : ordering(blocks, schedule, rng)) {
        blockIdx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
        run_block(schedule, rng);
        if (!S.error.empty()) break;
    }
    S.body = nullptr;
    return S.error;
}

}  // namespace nxemu

// --- the device functions kernels.cu calls --------------------------------------------------------------

static inline void __syncthreads() { nxemu::block_barrier(); }

static inline void __threadfence() {}  // one OS thread: every store is already visible

static inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
    const unsigned int old = *address;
    *address = old + value;
    return old;
}

template <typename T>
static inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask) {
    using namespace nxemu;
    Fiber& f = S.fibers[S.current];
    const int w = f.linear / 32, lane = f.linear % 32;
    if (mask != 0xffffffffu) fail("__shfl_xor_sync with a mask that is not the full warp");
    if (S.warp_live[w] != 32) {
        fail("__shfl_xor_sync in a warp with fewer than 32 live threads");
        return value;
    }
    uint64_t bits = 0;
    memcpy(&bits, &value, sizeof(T));
    S.slots[f.linear] = bits;
    warp_barrier(w);
    const uint64_t other = S.slots[w * 32 + ((lane ^ lane_mask) & 31)];
    warp_barrier(w);  // nobody overwrites a slot before every lane has read
    T result;
    memcpy(&result, &other, sizeof(T));
    return result;
}
