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

from typing import Any

import numpy as np

from . import distributed
from .ops import _cublas

_HP_SIZE = 8  # room for the largest optimizer's scalars (RMSprop: 6)
_NO_INTERRUPT = type("NoInterrupt", (), {"requested": False})()  # (on CUDA the step never reads the Ctrl-C flag)


class GraphedStep:
    """One captured training step for batches of one shape, bound to the buffers it was captured with."""

    def __init__(self, model: Any, xb: Any, yb: Any) -> None:
        cp = model.device.xp
        self.model, self.xb = model, xb  # xb: the static batch buffer the graph reads
        self.hp = cp.zeros(_HP_SIZE, dtype=model.dtype)
        self._host = np.zeros(_HP_SIZE, dtype=model.dtype)  # staging for hp, reused every step
        self._pool = cp.cuda.MemoryPool()
        self._core = self._core_buffers()
        stream = cp.cuda.Stream(non_blocking=True)  # capture is refused on the legacy default stream
        with stream, cp.cuda.using_allocator(self._pool.malloc), _cublas.capturing():
            stream.begin_capture()
            try:
                comm = getattr(model, "_comm", None)
                if comm is not None and comm.size > 1:  # under MPI the step's NCCL all-reduce is captured too
                    loss, out = distributed.train_step(comm, model, xb, yb, None, model._fit_state["batch_size"],
                                                       _NO_INTERRUPT)
                else:
                    loss, out = model._train_step(xb, yb)
                sums = model._metric_sums(out, yb)
                model.optimizer.graph_apply(model.params, model.grads, self.hp)
            except BaseException:
                try:
                    stream.end_capture()  # leave the stream usable; the capture is void either way
                except Exception:  # noqa: S110 - the first error is the one worth reporting
                    pass
                raise
            graph = stream.end_capture()
        self.graph, self.loss, self.sums = graph, loss, sums
        # the layers' scratch buffers as captured: kept alive even if a layer later swaps its own
        self._kept = [a for layer in model.layers for a in layer._buffers._cache.values()] + [out]
        self.replays = 0

    def _core_buffers(self) -> list[Any]:
        opt = self.model.optimizer
        return [self.model.params, self.model.grads, opt._tmp, *opt.state.values()]

    def still_bound(self) -> bool:
        """False once the model or optimizer replaced a buffer the graph writes (then capture again)."""
        current = self._core_buffers()
        return len(current) == len(self._core) and all(a is b for a, b in zip(current, self._core, strict=True))

    def run(self) -> tuple[Any, dict[str, Any]]:
        """Replay the step on the current stream for the batch now in the static buffers."""
        scalars = self.model.optimizer.graph_scalars(self.model.params)
        self._host[: scalars.size] = scalars
        self.hp.set(self._host)  # one small copy, ordered before the replay on the same stream
        self.graph.launch()
        self.replays += 1
        return self.loss, self.sums
