"""Training steps replayed from a CUDA graph: gather, forward, loss, backward, metrics, optimizer, bookkeeping.

Small batches on a GPU are bound by kernel launches, not by math: a step of a 784-512-256-10 MLP is about
twenty launches of a few microseconds each. Capturing the step once and replaying it costs one launch, and a
replayed full batch asks nothing else of CUDA: no other launch, allocation, copy, sync or cudaSetDevice.

What a replay needs, and how it gets it:
- Fixed addresses: the batch buffers, the layers' scratch buffers (persistent per batch shape), and every array
  made during the capture, which comes from a private memory pool that nothing else allocates from afterwards
  (a freed block reused by other code would be overwritten by the next replay). The graph keeps references to
  everything it touches.
- What changes from step to step is read on the device at a step counter, `cursor` (one int64: the batch's
  index in its epoch), which the graph's last node advances (nnxp/ops/batch.py):
  - the gather: the graph's first nodes copy the batch's rows of x, y (and the sample weights) into the batch
    buffers, at ``perm[starts[cursor]:][:rows]``; `perm` is the epoch's row order (the shuffle
    nnxp.training.Batches draws, identity when not shuffled) and `starts` each batch's first row in it (this
    rank's share under data parallelism), both uploaded once per epoch or fit;
  - the optimizer's scalars (learning-rate schedules, Adam's bias correction, ...): the host computes every
    step's scalars of the epoch with the optimizer's own host code (Optimizer.graph_scalars) and uploads the
    table once; a node copies row `cursor` into the buffer the optimizer kernel reads (`hp`). Before each
    replay the host still computes this step's scalars (advancing ``optimizer.iterations`` as an eager step
    does) and compares them with the table's row: when a callback changed the learning rate (or anything
    else they depend on) mid-epoch, the rest of the table is computed again and uploaded, so a replay always
    uses exactly what an eager step would;
  - the record: the batch's loss, metric sums (and weight sum) go into column `cursor` of the epoch's record
    (float64, one fixed buffer for the fit), which the training loop reads once at the end of the epoch;
  - Dropout's mask: the layer's (seed, step) device state, bumped by a node of the graph (nnxp/layers.py).
  Uploads come from page-locked host memory, as true asynchronous copies (a copy from pageable memory may wait
  for the stream); each pinned buffer is rewritten only after the GPU has read it (an event per buffer).
- No host synchronisation inside the step, and matmuls go to cuBLAS directly (CuPy refuses cuBLAS calls while
  capturing).
Replayed steps run the same kernels in the same order as eager ones, and the matmuls call the same cublasGemmEx
with the compute type and algorithm CuPy's eager matmul picks (nnxp/ops/_cublas.py), on a workspace set before
the capture.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import xp_of
from .layers import SETTINGS
from .ops import _cublas, _cuda
from .ops import batch as B

_HP_SIZE = 8  # room for the largest optimizer's scalars (RMSprop: 6)


class PinnedUpload:
    """A device array the host rewrites by asynchronous copies from a page-locked twin of it.

    The twin is page-locked memory (cupy/cuda/pinned_memory.pyx alloc_pinned_memory, viewed as cupyx.empty_pinned
    does), so ndarray.set is a true cudaMemcpyAsync on the current stream (core.pyx set -> copy_from_host_async)
    that never waits for the stream (always of a contiguous slice: set refuses others, core.pyx l.2233). An event
    (stream.pyx Event) marks when the GPU has read it; the host waits for it only before it rewrites the twin
    while the last copy is still pending."""

    def __init__(self, target: Any) -> None:
        cp = xp_of(target)
        self.target = target
        mem = cp.cuda.alloc_pinned_memory(max(target.nbytes, 1))
        self.host = np.frombuffer(mem, target.dtype, target.size).reshape(target.shape)
        self.host[...] = 0
        self._read = cp.cuda.Event(disable_timing=True)
        self._pending = False

    def write(self, values: Any, start: int = 0) -> None:
        """Set ``target[start : start + len(values)]`` to `values`, ordered before later work on the stream."""
        if self._pending and not self._read.done:  # the GPU has not read the previous upload yet
            self._read.synchronize()
        stop = start + len(values)
        self.host[start:stop] = values
        self.target[start:stop].set(self.host[start:stop])
        self._read.record()
        self._pending = True


class StepFeed:
    """The device memory a replayed step reads and writes besides the model's, fixed for one fit: the step
    counter `cursor`, the table of the optimizer's scalars per step (`table`, its row at the cursor copied into
    `hp`), the step's sums staged in float64 (`sums`) and the epoch's record (`record`, 1 + len(sums) rows of one
    column per batch; nnxp.training.train_epoch reads it once per epoch)."""

    def __init__(self, record: Any, n_sums: int, dtype: Any) -> None:
        cp = xp_of(record)
        batches = record.shape[1]
        self.record = record
        self.cursor = cp.zeros(1, dtype=np.int64)
        self.table = cp.zeros((batches, _HP_SIZE), dtype=dtype)
        self.hp = cp.zeros(_HP_SIZE, dtype=dtype)
        self.sums = cp.zeros(max(n_sums, 1), dtype=np.float64)[:n_sums]
        self._cursor = PinnedUpload(self.cursor)
        self._table = PinnedUpload(self.table)
        self.at: int | None = None  # the cursor's value on the device once the work queued so far has run
        self._key: Any = None  # the optimizer's scalars key and step count at batch 0 the table was made under
        self._start: int | None = None
        # a schedule's rate for each row from `_first` on, as the table was made (None: a float rate, in the key)
        self._rates: list | None = None
        self._first = 0

    def move_to(self, index: int) -> None:
        """Make the cursor `index` for the next replay (an upload only when the replays did not leave it there:
        at an epoch's first replay)."""
        if self.at != index:
            self._cursor.write([index])
            self.at = index

    def advance(self, index: int, optimizer: Any, params: Any, key: tuple) -> None:
        """Count the step for batch `index` on the host (``optimizer.iterations``, as an eager step does) and make
        sure the table's row `index` holds its scalars: the table is valid while the optimizer's scalars key
        (`key`, Optimizer.scalars_key) and its step count at the epoch's first batch are those it was made under;
        otherwise rows index.. are computed again with the optimizer's own host code and uploaded (at the first
        replay of an epoch, or after a callback changed the learning rate or another scalar).

        A schedule's rate is checked itself, step by step, against the one its row was made with: the key holds
        the schedule's attributes, and a callback may change what one of them holds in place (a list of rates, an
        object the schedule reads) without setting any (an eager step calls the schedule every step as well)."""
        start, rates = optimizer.iterations - index, self._rates
        if (start != self._start or (key is not self._key and not _same(key, self._key))
                or (rates is not None and key[0](optimizer.iterations) != rates[index - self._first])):
            rows = np.zeros((self.table.shape[0] - index, _HP_SIZE), dtype=self.table.dtype)
            ahead = optimizer.graph_table(params, rows.shape[0])
            rows[:, : ahead.shape[1]] = ahead
            self._table.write(rows, index)
            self._key, self._start = key, start
            schedule = key[0] if callable(key[0]) else None  # (key[0]: the learning rate, Optimizer.scalars_key)
            self._rates = None if schedule is None else [
                schedule(step) for step in range(optimizer.iterations, optimizer.iterations + rows.shape[0])]
            self._first = index
        optimizer.iterations += 1


def _same(a: tuple, b: Any) -> bool:
    """``a == b``, False where the comparison itself fails (a schedule attribute that is an array)."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - any failure to compare means "not known to be equal"
        return False


def _step_body(feed: StepFeed, names: list[str], gather: Callable[[Any], None],
               compute: Callable[[dict], tuple[Any, dict]], extra: Callable[[], list], optimizer: Any, params: Any,
               grads: Any) -> tuple[Any, dict]:
    """The step as a replay runs it, issued once (into a capture or a recording): gather at the cursor, this
    step's scalars from the table, forward / loss / backward / metrics, the update, the record's column."""
    into = {name: feed.sums[k, ...] for k, name in enumerate(names)}
    gather(feed.cursor)
    B.gather_rows(feed.table, None, None, feed.cursor, feed.hp.reshape(1, _HP_SIZE))
    loss, sums = compute(into)
    optimizer.graph_apply(params, grads, feed.hp)
    for name, view in into.items():
        value = sums.get(name)
        if value is None:  # (a rank without rows of this batch)
            _cuda.unplanned()  # (CuPy calls a step's launch list does not repeat)
            view.fill(0)
        elif value is not view:
            _cuda.unplanned()
            view[...] = value
    for k, value in enumerate(extra(), start=len(names)):
        _cuda.unplanned()
        feed.sums[k, ...] = value
    B.record_step(loss, feed.sums, feed.record, feed.cursor)
    return loss, sums


class GraphedStep:
    """One captured training step for batches of one shape, bound to the buffers it was captured with.

    `gather(cursor)` issues the batch's gather into the batch buffers; `compute(into)` runs everything but the
    optimizer update (forward, loss, backward, an all-reduce under data parallelism;
    nnxp.training.EagerStep.compute) and returns (loss, metric sums) as device arrays, a sum possibly written
    straight into `into` (name -> a 0-d float64 view of the feed's staged sums); `extra()` returns more sums to
    record after the metrics' (the batch's weight sum), or []. The optimizer then updates `params` from `grads`.
    `scratch()` lists the arrays made before the capture that the graph reads or writes (the layers' scratch
    buffers): they are kept alive as long as the graph. `rows`: how many rows of each batch it gathers.
    """

    def __init__(self, feed: StepFeed, names: list[str], gather: Callable[[Any], None],
                 compute: Callable[[dict], tuple[Any, dict]], extra: Callable[[], list], optimizer: Any, params: Any,
                 grads: Any, scratch: Callable[[], list], rows: int = 0) -> None:
        cp = xp_of(params)
        self._bind(feed, names, rows, optimizer, params, grads)
        self._pool = cp.cuda.MemoryPool()
        stream = cp.cuda.Stream(non_blocking=True)  # capture is refused on the legacy default stream
        with stream, cp.cuda.using_allocator(self._pool.malloc), _cublas.capturing():
            stream.begin_capture()
            try:
                loss, sums = _step_body(feed, self.names, gather, compute, extra, optimizer, params, grads)
            except BaseException:
                try:
                    stream.end_capture()  # leave the stream usable; the capture is void either way
                except Exception:  # noqa: S110 - the first error is the one worth reporting
                    pass
                raise
            graph = stream.end_capture()
        self.graph = graph
        self._keep(loss, sums, scratch)

    def _bind(self, feed: StepFeed, names: list[str], rows: int, optimizer: Any, params: Any, grads: Any) -> None:
        """What the kept step is bound to, and what :meth:`still_bound` compares against (both kinds)."""
        self.feed, self.names, self.rows = feed, list(names), rows
        self.optimizer, self.params, self.grads = optimizer, params, grads
        self._buffers = tuple(optimizer.step_buffers())
        self._constants = optimizer.graph_constants()
        self._settings, self._key_seen = SETTINGS[0], optimizer.scalars_key()

    def _keep(self, loss: Any, sums: dict, scratch: Callable[[], list]) -> None:
        self.loss, self.sums = loss, sums
        # the scratch buffers as made (layers' and the output head's): kept alive even if one later swaps its own
        self._kept = list(scratch())
        self.replays = 0

    def still_bound(self, params: Any, grads: Any, optimizer: Any, key: tuple) -> bool:
        """False once the model or optimizer replaced a buffer the graph writes, the model has another optimizer,
        the optimizer changed what the graph holds fixed (its clipping: Optimizer.graph_constants) or a layer a
        setting (Layer.__setattr__) (`params`, `grads`, `optimizer`: the model's now; `key`: its scalars key):
        then capture again. Asked before every step: the constants are compared only when the key changed."""
        if optimizer is not self.optimizer or SETTINGS[0] != self._settings:
            return False
        try:  # (inline _same: asked every step)
            same = key == self._key_seen
        except Exception:  # noqa: BLE001
            same = False
        if not same:
            if optimizer.graph_constants() != self._constants:
                return False
            self._key_seen = key
        return params is self.params and grads is self.grads and all(
            map(operator.is_, optimizer.step_buffers(), self._buffers))

    def run(self, index: int) -> tuple[Any, dict[str, Any]]:
        """Replay the step for batch `index` of the epoch on the current stream (the graph gathers it itself)."""
        feed = self.feed
        feed.advance(index, self.optimizer, self.params, self._key_seen)
        feed.move_to(index)
        self.graph.launch()
        feed.at = index + 1  # the graph's last node
        self.replays += 1
        return self.loss, self.sums


class StepNotRecorded(Exception):
    """The step did device work its launch list cannot repeat (nnxp.ops._cuda.unplanned): run it eagerly."""


class LaunchedStep(GraphedStep):
    """The eager twin of :class:`GraphedStep`: the same step (the same kernels, buffers, cursor, scalars table
    and record) kept as its list of launches (nnxp.ops._cuda.recording_step) and launched again for every full
    batch, one launch at a time, with no graph. What an eager step spends deciding what to launch (the layers, the
    head, the ops' checks) is spent once per fit; each later step is a loop over about twenty launches.
    It needs no CUDA-graph support, and a step that records its launches asks nothing else of CUDA either."""

    def __init__(self, feed: StepFeed, names: list[str], gather: Callable[[Any], None],
                 compute: Callable[[dict], tuple[Any, dict]], extra: Callable[[], list], optimizer: Any, params: Any,
                 grads: Any, scratch: Callable[[], list], rows: int = 0) -> None:
        self._bind(feed, names, rows, optimizer, params, grads)
        cp = xp_of(params)
        self._get_device = cp.cuda.runtime.getDevice
        self.device = self._get_device()  # the kernels in the list are this device's
        self._stream = cp.cuda.get_current_stream
        # (its scratch buffers are this stream's and thread's, shared with the eager ops made there)
        self.where = (self._stream().ptr, threading.get_ident())
        with _cuda.recording_step() as (calls, whole):
            loss, sums = _step_body(feed, self.names, gather, compute, extra, optimizer, params, grads)
        if not whole():
            raise StepNotRecorded
        # each launch as one C-level callable (functools.partial): the loop below pays no argument unpacking
        self.calls = tuple(functools.partial(fn, *args, **kwargs) for fn, args, kwargs in calls)
        self._keep(loss, sums, scratch)

    def still_bound(self, params: Any, grads: Any, optimizer: Any, key: tuple) -> bool:
        """As :meth:`GraphedStep.still_bound`, and on the stream and thread the step was recorded on (its
        scratch buffers are theirs): elsewhere it is recorded again."""
        return (self._stream().ptr == self.where[0] and threading.get_ident() == self.where[1]
                and super().still_bound(params, grads, optimizer, key))

    def run(self, index: int) -> tuple[Any, dict[str, Any]]:
        """Launch the step for batch `index` of the epoch on the current stream (it gathers the batch itself)."""
        feed = self.feed
        feed.advance(index, self.optimizer, self.params, self._key_seen)
        if feed.at != index:
            feed.move_to(index)
        if self._get_device() != self.device:  # (a callback made another device current)
            with xp_of(self.params).cuda.Device(self.device):
                for launch in self.calls:
                    launch()
        else:
            for launch in self.calls:
                launch()
        feed.at = index + 1  # its last launch moved the cursor
        self.replays += 1
        return self.loss, self.sums
