"""Training steps replayed from a CUDA graph: forward, loss, backward, metrics and the optimizer step.

Small batches on a GPU are bound by kernel launches, not by math: a step of a 784-512-256-10 MLP is about
twenty launches of a few microseconds each. Capturing the step once and replaying it costs one launch.

What a replay needs, and how it gets it:
- Fixed addresses: the batch is gathered into the fit's static batch buffers, the layers' scratch buffers
  persist per batch shape, and every array made during the capture comes from a private memory pool that
  nothing else allocates from afterwards (a freed block reused by other code would be overwritten by the next
  replay). The graph keeps references to everything it touches.
- Values that change per step (learning-rate schedules, Adam's bias correction, the step count) are not baked
  in: the optimizer kernel reads them from a small device buffer that the host rewrites before each replay.
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
        self._host = np.zeros(_HP_SIZE, dtype=params.dtype)  # staging for hp, reused every step
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
        self._host[: scalars.size] = scalars
        self.hp.set(self._host)  # one small copy, ordered before the replay on the same stream
        self.graph.launch()
        self.replays += 1
        return self.loss, self.sums
