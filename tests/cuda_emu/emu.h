// The CUDA execution model on the CPU, enough of it to run nnxp/ops/kernels.cu unchanged in the tests.
//
// Each CUDA thread of a block is a fiber (ucontext) with its own stack. Each resident block runs on its own OS
// thread (a "slot", kSlots of them, as an SM holds several blocks), which gives every block its own
// __shared__ memory (`static thread_local`) and built-in variables; a baton lets exactly one slot run at a time,
// so a launch is deterministic for a given schedule. Blocks are issued to the slots in a chosen order (forward,
// reverse, or a seeded shuffle), and the slots take turns: a block runs until every live thread of it waits at
// an atomic or a __threadfence, or its barrier opens, then the next slot runs (in a shuffled schedule, a slot
// may also sit out a turn, as SMs run at their own pace). So blocks interleave at exactly the
// points where another block's progress can matter, and a kernel whose result depends on how blocks interleave
// (a ticket counter shared by two launches in flight, a last block that reads partials before they are
// written) gives a wrong or schedule-dependent result. Several launches can run concurrently, as on two
// streams (their blocks share the slots). Atomics are atomic (one slot runs at a time). A launch of a single
// block has nothing to interleave and runs on the calling thread.
//
// Inside a block the scheduler resumes fibers in a chosen order too, so a missing __syncthreads changes the
// bits. __syncthreads waits for every live thread of the block (threads that returned no longer count, as on
// sm_70+); __shfl_xor_sync exchanges through a per-warp slot array and insists on all 32 lanes being live and
// named in the mask. A barrier that some threads never reach is reported as a deadlock instead of hanging.
//
// What it cannot show: weak memory ordering (every store is visible at once, so a missing __threadfence alone
// changes nothing), uninitialised shared memory (a slot's __shared__ starts zeroed and keeps what its previous
// block left), device math ulps (glibc's expf / tanhf stand in for CUDA's), and speed.

#pragma once

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local  // one copy per slot: every resident block has its own

struct nx_dim3 {
    unsigned int x, y, z;
};

// The built-in variables, per slot: the scheduler sets threadIdx before it resumes a fiber.
static thread_local nx_dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace nxemu {

const size_t kStackBytes = 64 * 1024;
const int kSlots = 4;  // blocks resident at once

struct Fiber {
    ucontext_t ctx;
    nx_dim3 tid;
    int linear = 0;        // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
    bool done = false;
    int wait = 0;          // 0 runnable, 1 at __syncthreads, 2 at a warp exchange, 3 at an atomic or a fence
    unsigned wait_gen = 0;  // the barrier generation it waits to see pass
};

// One launch of a kernel: what its blocks run.
struct Launch {
    const std::function<void()>* body;
    nx_dim3 grid, block;
};

// The block a slot runs now (thread_local: one per slot).
struct State {
    std::vector<Fiber> fibers;
    std::vector<char*> stacks;
    std::vector<int> order;
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

static thread_local State S;

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

// An atomic or a fence: other blocks may run before this thread goes on.
static void switch_point() {
    if (S.fibers.empty()) return;  // host code (the element-math harness) has no scheduler
    S.fibers[S.current].wait = 3;
    suspend();
}

static void block_barrier() {
    Fiber& f = S.fibers[S.current];
    const unsigned gen = S.bar_gen;
    ++S.bar_arrived;
    release_block_if_complete();
    if (S.bar_gen != gen) {  // the last to arrive: the block is released, and other blocks may run first
        switch_point();
        return;
    }
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

// Make the slot's state a fresh block of `launch` with index `b` (linear), its threads in `schedule` order.
static void start_block(const Launch& launch, int b, int schedule, std::mt19937_64& rng) {
    const nx_dim3 grid = launch.grid, block = launch.block;
    gridDim = grid;
    blockDim = block;
    blockIdx = {b % grid.x, (b / grid.x) % grid.y, b / (grid.x * grid.y)};
    S.body = launch.body;
    const int n = (int)(block.x * block.y * block.z);
    const int warps = (n + 31) / 32;
    while ((int)S.stacks.size() < n) S.stacks.push_back((char*)malloc(kStackBytes));
    S.fibers.assign(n, Fiber());
    for (int k = 0; k < n; ++k) {
        Fiber& f = S.fibers[k];
        f.linear = k;
        f.tid = {k % block.x, (k / block.x) % block.y, k / (block.x * block.y)};
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
    S.order = ordering(n, schedule, rng);
}

// Run the slot's block until every live thread waits at a barrier, an atomic or a fence, or all are done.
// Returns whether any thread ran.
static bool run_slice() {
    for (Fiber& f : S.fibers)
        if (f.wait == 3) f.wait = 0;  // past the atomic or fence now: other blocks had their turn
    bool ran = false;
    const unsigned gen = S.bar_gen;
    while (S.live > 0 && S.error.empty() && S.bar_gen == gen) {  // a released barrier ends the slice
        bool progressed = false;
        for (int k : S.order) {
            Fiber& f = S.fibers[k];
            if (f.done || f.wait == 3) continue;
            if (f.wait == 1 && f.wait_gen == S.bar_gen) continue;
            if (f.wait == 2 && f.wait_gen == S.warp_gen[f.linear / 32]) continue;
            f.wait = 0;
            S.current = k;
            threadIdx = f.tid;
            swapcontext(&S.sched, &f.ctx);
            progressed = ran = true;
            if (!S.error.empty() || S.bar_gen != gen) break;
        }
        if (!progressed) break;
    }
    if (S.live > 0 && S.error.empty()) {
        bool at_switch = false;
        for (const Fiber& f : S.fibers) at_switch = at_switch || (!f.done && f.wait == 3);
        if (!at_switch) fail("deadlock: threads wait at a barrier that the others never reach");
    }
    return ran;
}

// The slots: kSlots OS threads, started once and kept (with their fiber stacks) for every later launch, and
// their baton: exactly one of them, or the scheduler, runs at a time.
struct Slot {
    bool busy = false;      // holds a block that has not finished
    bool finished = false;  // no block left for it in this launch
    bool ran = false;       // its last turn ran a thread
    std::string error;
    std::mt19937_64 rng;    // thread orders of its blocks
};

struct Pool {
    std::mutex launch;  // one launch at a time, whichever host thread asks
    std::mutex m;
    std::condition_variable done_cv;          // the launching thread waits here for the launch to end
    std::condition_variable slot_cv[kSlots];  // slot i waits here for its turn
    int turn = -1;       // the slot that may run, or -1: none (the launch is over)
    bool done = true;
    bool abort = false;  // an error ended the launch: every slot stops at its next turn
    const std::vector<Launch>* launches = nullptr;
    std::vector<std::pair<int, int>> pending;  // (launch, linear block index) in issue order
    size_t next = 0;
    int schedule = 0;
    Slot slots[kSlots];
    bool started = false;
    // the rotation: whoever ends a turn picks the next slot (the baton passes from slot to slot directly)
    std::vector<int> rotation;
    size_t position = 0;
    bool round_ran = false, round_given = false, round_all_finished = true;
    int idle_rounds = 0;
    std::string error;
    std::mt19937_64 rng;
};

static Pool& P = *new Pool;  // never destroyed: its threads wait on it until the process exits

// The next slot to run, or -1 when the launch is over (P.m held). Rounds go over the rotation in the
// schedule's order; in a shuffled schedule a slot may sit out a round (one always runs).
static int next_turn() {
    for (;;) {
        if (P.position == P.rotation.size()) {  // the end of a round
            if (P.round_all_finished) return -1;
            if (P.round_given) {
                P.idle_rounds = P.round_ran ? 0 : P.idle_rounds + 1;
                if (P.idle_rounds > 2 && P.error.empty())
                    P.error = "deadlock: every resident block waits on another block that cannot run";
                if (!P.error.empty()) P.abort = true;
            }
            if (P.schedule == 2) std::shuffle(P.rotation.begin(), P.rotation.end(), P.rng);
            P.position = 0;
            P.round_ran = P.round_given = false;
            P.round_all_finished = true;
        }
        const size_t r = P.position++;
        const int i = P.rotation[r];
        if (P.slots[i].finished) continue;
        P.round_all_finished = false;
        const bool last_chance = !P.round_given && r + 1 == P.rotation.size();
        if (P.schedule == 2 && !P.abort && !last_chance && (P.rng() & 1)) continue;
        P.round_given = true;
        return i;
    }
}

// Hand the baton to the next slot, or end the launch (P.m held).
static void pass_baton() {
    P.turn = next_turn();
    if (P.turn < 0) {
        P.done = true;
        P.done_cv.notify_one();
    } else {
        P.slot_cv[P.turn].notify_one();
    }
}

// One turn of slot `me`: take a block if it has none, run a slice of it, pass the baton on.
static void slot_turn(int me, std::unique_lock<std::mutex>& lock) {
    Slot& slot = P.slots[me];
    slot.ran = false;
    if (P.abort) {
        slot.busy = false;
        slot.finished = true;
    } else {
        if (!slot.busy && P.next < P.pending.size()) {
            const auto [l, b] = P.pending[P.next++];
            start_block((*P.launches)[l], b, P.schedule, slot.rng);
            S.error.clear();
            slot.busy = true;
        }
        if (slot.busy) {
            lock.unlock();  // only this slot runs: everyone else waits for the baton
            slot.ran = run_slice();
            lock.lock();
            if (!S.error.empty()) {
                slot.error = S.error;
                if (P.error.empty()) P.error = S.error;
                P.abort = true;
            }
            if (S.live == 0 || !S.error.empty()) slot.busy = false;
        }
        if (!slot.busy && (P.next >= P.pending.size() || !slot.error.empty())) {
            slot.finished = true;
            slot.ran = true;  // retiring is progress too: only rounds of blocked blocks count as idle
        }
    }
    P.round_ran = P.round_ran || slot.ran;
    pass_baton();
}

static void slot_main(int me) {
    std::unique_lock<std::mutex> lock(P.m);
    for (;;) {
        P.slot_cv[me].wait(lock, [me] { return P.turn == me && !P.done; });
        slot_turn(me, lock);
    }
}

// Runs `launches` concurrently (as on separate streams) over grid x block each; returns "" or what went wrong.
static std::string launch_many(const std::vector<Launch>& launches, int schedule, uint64_t seed) {
    for (const Launch& l : launches) {
        const nx_dim3 block = l.block, grid = l.grid;
        const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
        if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
            return "invalid block " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" +
                   std::to_string(block.z) + " (at most 1024 threads, z <= 64)";
        if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
            grid.z > 65535)
            return "invalid grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
                   std::to_string(grid.z);
    }
    std::lock_guard<std::mutex> one_launch(P.launch);
    std::mt19937_64 rng(seed);
    if (launches.size() == 1 && launches[0].grid.x * launches[0].grid.y * launches[0].grid.z == 1) {
        // one block: nothing to interleave, so it runs here, on the calling thread
        start_block(launches[0], 0, schedule, rng);
        S.error.clear();
        while (S.live > 0 && S.error.empty()) run_slice();
        return S.error;
    }
    // the issue order of every block of every launch: launches round-robin, each in the schedule's order
    std::vector<std::vector<int>> per_launch;
    size_t total = 0;
    for (const Launch& l : launches) {
        per_launch.push_back(ordering((int)(l.grid.x * l.grid.y * l.grid.z), schedule, rng));
        total += per_launch.back().size();
    }
    std::vector<std::pair<int, int>> pending;
    for (size_t k = 0; pending.size() < total; ++k)
        for (size_t i = 0; i < launches.size(); ++i)
            if (k < per_launch[i].size()) pending.push_back({(int)i, per_launch[i][k]});
    if (schedule == 2) std::shuffle(pending.begin(), pending.end(), rng);

    const int nslots = (int)std::min<size_t>(kSlots, total);
    std::unique_lock<std::mutex> lock(P.m);
    if (!P.started) {
        for (int i = 0; i < kSlots; ++i) std::thread(slot_main, i).detach();
        P.started = true;
    }
    P.launches = &launches;
    P.pending = std::move(pending);
    P.next = 0;
    P.schedule = schedule;
    P.abort = false;
    P.error.clear();
    for (int i = 0; i < kSlots; ++i) {
        P.slots[i].busy = false;
        P.slots[i].finished = i >= nslots;
        P.slots[i].error.clear();
        P.slots[i].rng.seed(rng());
    }
    P.rotation.resize(nslots);
    for (int i = 0; i < nslots; ++i) P.rotation[i] = i;
    if (schedule == 1) std::reverse(P.rotation.begin(), P.rotation.end());
    P.rng.seed(rng());
    P.position = P.rotation.size();  // next_turn starts a round
    P.round_all_finished = false;
    P.round_given = false;
    P.idle_rounds = 0;
    P.done = false;
    pass_baton();
    P.done_cv.wait(lock, [] { return P.done; });
    P.launches = nullptr;
    return P.error;
}

// Runs `body` as one kernel over grid x block; returns "" or what went wrong.
static std::string launch(const std::function<void()>& body, nx_dim3 grid, nx_dim3 block, int schedule,
                          uint64_t seed) {
    return launch_many({Launch{&body, grid, block}}, schedule, seed);
}

}  // namespace nxemu

// --- the device functions kernels.cu calls --------------------------------------------------------------

static inline void __syncthreads() { nxemu::block_barrier(); }

// Every store is visible at once here (no weak ordering), but another block may run before the thread goes on.
static inline void __threadfence() { nxemu::switch_point(); }

static inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
    nxemu::switch_point();  // other blocks may take their turn first; the add itself is atomic
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
