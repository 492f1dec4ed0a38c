"""Training steps replayed from a CUDA graph: forward, loss, backward, metrics and the optimizer step.

Small batches on a GPU are bound by kernel launches, not by math: a step of a 784-512-256-10 MLP is about
twenty launches of a few microseconds each. Capturing the step once and replaying it costs one launch.

What a replay needs, and how it gets it:
- Fixed addresses: the batch is gathered into the fit's static batch buffers, the layers' scratch buffers
  persist per batch shape, and every array made during the capture comes from a private memory pool that
  nothing else allocates from afterwards (a freed block reused by other code would be overwritten by the next
  replay). The graph keeps references to everything it touches.
- Values that change per step (learning-rate schedules, Adam's bias correction, the step count) are not baked
  in: the optimizer kernel reads them from a small device buffer that the host rewrites before each replay,
  by an asynchronous copy from pinned host memory (a copy from pageable memory may wait for the stream). The
  host writes a ring of pinned slots, each reused only once the GPU has read it (an event per slot).
- No host synchronisation inside the step: the loss and metric sums stay on the device, and matmuls go to
  cuBLAS directly (CuPy refuses cuBLAS calls while capturing).
Replayed steps run the same kernels in the same order as eager ones, and the matmuls call the same cublasGemmEx
with the compute type and algorithm CuPy's eager matmul picks (nnxp/ops/_cublas.py), on a workspace set before
the capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import xp_of
from .ops import _cublas

_HP_SIZE = 8  # room for the largest optimizer's scalars (RMSprop: 6)
_RING = 4  # pinned staging slots for them: the host waits only when the GPU is this many replays behind


class GraphedStep:
    """One captured training step for batches of one shape, bound to the buffers it was captured with.

    `compute()` runs everything but the optimizer update (forward, loss, backward, an all-reduce under data
    parallelism; nnxp.training.EagerStep.compute) and returns (loss, metric sums) as device arrays; the optimizer
    then updates `params` from `grads`. `scratch()` lists the arrays made before the capture that the graph
    reads or writes (the layers' scratch buffers): they are kept alive as long as the graph.
    """

    def __init__(self, xb: Any, compute: Callable[[], tuple[Any, dict]], optimizer: Any, params: Any, grads: Any,
                 scratch: Callable[[], list]) -> None:
        cp = xp_of(params)
        self.xb = xb  # the static batch buffer the graph reads
        self.optimizer, self.params, self.grads = optimizer, params, grads
        self.hp = cp.zeros(_HP_SIZE, dtype=params.dtype)
        # staging for hp in page-locked memory (cupy/cuda/pinned_memory.pyx alloc_pinned_memory, viewed as
        # cupyx.empty_pinned does), so ndarray.set is a true cudaMemcpyAsync (core.pyx set ->
        # copy_from_host_async) that never waits for the stream; each slot's event (stream.pyx Event) marks
        # when the GPU has read it
        dtype = np.dtype(params.dtype)
        self._slots = []
        for _ in range(_RING):
            slot = np.frombuffer(cp.cuda.alloc_pinned_memory(_HP_SIZE * dtype.itemsize), dtype, _HP_SIZE)
            slot[...] = 0
            self._slots.append(slot)
        self._read: list[Any] = [None] * _RING
        self._slot = 0
        self._pool = cp.cuda.MemoryPool()
        self._core = self._core_buffers()
        stream = cp.cuda.Stream(non_blocking=True)  # capture is refused on the legacy default stream
        with stream, cp.cuda.using_allocator(self._pool.malloc), _cublas.capturing():
            stream.begin_capture()
            try:
                loss, sums = compute()
                optimizer.graph_apply(params, grads, self.hp)
            except BaseException:
                try:
                    stream.end_capture()  # leave the stream usable; the capture is void either way
                except Exception:  # noqa: S110 - the first error is the one worth reporting
                    pass
                raise
            graph = stream.end_capture()
        self.graph, self.loss, self.sums = graph, loss, sums
        # the scratch buffers as captured (layers' and the output head's): kept alive even if one later swaps its own
        self._kept = list(scratch())
        self.replays = 0

    def _core_buffers(self, params: Any = None, grads: Any = None) -> list[Any]:
        return [self.params if params is None else params, self.grads if grads is None else grads,
                *self.optimizer.step_buffers()]

    def still_bound(self, xb: Any, params: Any, grads: Any) -> bool:
        """False once the model or optimizer replaced a buffer the graph writes (`params`, `grads`: the model's
        now), or the batch lives elsewhere: then capture again."""
        current = self._core_buffers(params, grads)
        return (xb.data.ptr == self.xb.data.ptr and len(current) == len(self._core)
                and all(a is b for a, b in zip(current, self._core, strict=True)))

    def run(self) -> tuple[Any, dict[str, Any]]:
        """Replay the step on the current stream for the batch now in the static buffers."""
        scalars = self.optimizer.graph_scalars(self.params)
        k = self._slot
        self._slot = (k + 1) % _RING
        read = self._read[k]
        if read is not None and not read.done:  # the GPU is _RING replays behind: wait until it read slot k
            read.synchronize()
        slot = self._slots[k]
        slot[: scalars.size] = scalars
        self.hp.set(slot)  # one small asynchronous copy, ordered before the replay on the same stream
        if read is None:
            read = self._read[k] = xp_of(self.hp).cuda.Event(disable_timing=True)
        read.record()  # after the copy: done once the GPU has read slot k
        self.graph.launch()
        self.replays += 1
        return self.loss, self.sums
