"""The epoch loop behind ``Sequential.fit`` (and ``evaluate``'s batch loop).

Four parts, each replaceable on its own:
- :class:`FitPlan`: what one fit call decided (data on the device, epochs, batch size, callbacks, communicator).
- :class:`Batches`: one epoch's batches, gathered one way chosen once per fit (shuffled gather, plain views, or
  on the device by a replayed CUDA graph), and this rank's share of each under data parallelism.
- :class:`Step`: one training step, ``run(xb, yb, wb, rows) -> (loss, metric sums)``, eager (:class:`EagerStep`)
  or kept whole (:class:`GraphStep`): replayed from a captured CUDA graph, or, for an eager CUDA fit whose step
  allows it (:func:`step_replayable`), launched again from its recorded launch list.
- :class:`Guard`: the weights and optimizer state at the start of an epoch, put back when the epoch diverges or
  is left by Ctrl-C or an exception, so the model always holds whole epochs.

This module is the model's own loop. It drives the model through its step interface (``Sequential.forward``,
``loss_and_grad``, ``backprop``, ``metric_sums``, ``grad_buffer``), the same public methods a custom loop or
the MPI step (nnxp/distributed.py) uses; other modules reach the loop only through ``Sequential.fit`` /
``evaluate``.
"""

from __future__ import annotations

import math
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import distributed
from ._graph import GraphedStep, LaunchedStep, PinnedUpload, StepFeed, StepNotRecorded
from .backend import is_out_of_memory, to_numpy
from .callbacks import Callback, History, ProgbarLogger
from .errors import NumericalError
from .head import TAKE_LOSS_OUT
from .ops import batch as B
from .ops._cuda import kernel_failures, kernel_mode


@dataclass
class FitPlan:
    """Everything one ``fit`` call decided, handed to :func:`run_epochs` in one piece."""

    data: tuple  # (x, y, w) on the device; w: per-row weights (N,) or None
    val: tuple | None  # (x, y, w) to validate on after each epoch, or None
    epochs: int  # train up to this epoch (as Keras counts: from initial_epoch)
    initial_epoch: int
    batch_size: int  # the global batch: under data parallelism every rank together
    shuffle: bool
    callbacks: list[Callback]  # in calling order: the user's, then History, then the progress bar
    history: History
    comm: Any  # the communicator (nnxp.distributed): a no-op one for a single process
    cuda_graph: bool = False
    step: Step | None = None  # set by run_epochs; fit keeps it on the model (graph_replays reads its replays)


class Batches:
    """One epoch's batches as ``(xb, yb, wb, rows)``: this rank's rows of each batch and the batch's global rows.

    Modes, chosen once per fit:
    - ``"gather"`` (shuffled): each batch is gathered by its rows' indices into one batch-sized buffer per array,
      so there is no shuffled copy of the data set and the batch is still in cache for the first layer's GEMMs;
      the order depends only on (seed, epoch count), so a resumed run shuffles exactly like an uninterrupted one
    - ``"copy"`` (in order): slices copied into the same buffers (fixed addresses)
    - ``"view"`` (in order): slices of the data themselves, nothing copied
    - ``"graph"`` (CUDA graphs, shuffled or not): the batch buffers are yielded unfilled; a replayed graph gathers
      each batch itself on the device (:meth:`gather`, from the epoch's row order `perm` and each batch's first
      row `starts`, device arrays at fixed addresses), and :meth:`fill` gathers the current batch for an eager step

    ``share`` is this rank's part of the current global batch, ``[rows, lo, hi]``, updated before each batch is
    yielded (a data-parallel Dropout cuts its mask rows from it).

    ``fixed=False`` (eager steps) lets ``"gather"`` permute the 1-D arrays (sparse labels, weights) once per
    epoch into a buffer of their length and yield views of it: one gather per epoch instead of one per batch,
    for a copy of N labels. A replayed CUDA graph reads every batch at fixed addresses, so it keeps the default.
    """

    MODES = ("gather", "copy", "view", "graph")

    def __init__(self, data: tuple, batch_size: int, device: Any, seed: int, mode: str, comm: Any = None,
                 fixed: bool = True, shuffle: bool = True) -> None:
        assert mode in self.MODES, mode
        self.x, self.y, self.w = data
        self.device, self.seed, self.mode = device, seed, mode
        comm = distributed.current() if comm is None else comm
        self.plan = comm.batches(self.x.shape[0], batch_size)  # (lo, hi, global rows, this rank's first row)
        self.share = [0, 0, 0]
        self.index = 0  # the batch being yielded: its index in the epoch
        self._span = (0, 0)  # its rows in the epoch's order (this rank's)
        self._bufs = (None, None, None)
        xp, x, y, w = device.xp, self.x, self.y, self.w
        # the 1-D arrays gathered once per epoch, whole (sparse labels, weights): y, w or None
        self._once = tuple(a if mode == "gather" and not fixed and a is not None and a.ndim == 1 else None
                           for a in (y, w))
        self._whole = tuple(None if a is None else xp.empty(a.shape, a.dtype) for a in self._once)
        if mode != "view":
            rows = min(batch_size, x.shape[0])
            # (no batch buffer for an array gathered once per epoch: its batches are views of the whole)
            self._bufs = (xp.empty((rows, *x.shape[1:]), x.dtype),
                          None if self._once[0] is not None else xp.empty((rows, *y.shape[1:]), y.dtype),
                          None if w is None or self._once[1] is not None else xp.empty(rows, w.dtype))
        if mode == "graph":  # what a replayed graph reads: the epoch's row order and each batch's first row in it
            self.shuffle = shuffle
            self.perm = xp.empty(x.shape[0], dtype=np.int64)
            self.starts = xp.empty(max(len(self.plan), 1), dtype=np.int64)
            self._perm = PinnedUpload(self.perm)
            self._starts = PinnedUpload(self.starts)  # (kept: its pinned memory must outlive the copy)
            self._starts.write(np.array([lo for lo, *_ in self.plan] or [0], dtype=np.int64))
            self._in_order = False  # perm holds the identity already (an unshuffled fit uploads it once)

    def __len__(self) -> int:
        return len(self.plan)

    def order(self, count: int) -> np.ndarray:
        """The row order of the model's epoch `count` (host): a function of (seed, count) alone."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, 1, count])).permutation(self.x.shape[0])

    def epoch(self, count: int) -> Iterator[tuple[Any, Any, Any, int]]:
        """The batches of the model's epoch `count` (its life-long epoch number, which seeds the shuffle)."""
        x, y, w, share, mode = self.x, self.y, self.w, self.share, self.mode
        bx, by, bw = self._bufs
        xp = self.device.xp
        if mode == "graph":
            if self.shuffle:  # one upload of the epoch's order (from pinned memory), the same order "gather" uses
                self._perm.write(self.order(count))
            elif not self._in_order:
                self._perm.write(np.arange(x.shape[0], dtype=np.int64))
                self._in_order = True
            for b, (lo, hi, rows, first) in enumerate(self.plan):
                share[:] = rows, first, first + hi - lo
                self.index, self._span = b, (lo, hi)
                if hi - lo == len(bx):  # a full batch: the buffers themselves (a CuPy view costs a microsecond)
                    yield bx, by, bw, rows
                else:
                    yield bx[: hi - lo], by[: hi - lo], None if w is None else bw[: hi - lo], rows
            return
        perm = self.device.asarray(self.order(count)) if mode == "gather" else None
        (y_once, w_once), (y_whole, w_whole) = self._once, self._whole
        if y_once is not None:
            take_rows(xp, y_once, perm, y_whole)
        if w_once is not None:
            take_rows(xp, w_once, perm, w_whole)
        wb = None
        for lo, hi, rows, first in self.plan:
            share[:] = rows, first, first + hi - lo  # with several ranks: this one's part; the others do the rest
            if mode == "gather":
                idx, k = perm[lo:hi], hi - lo
                # a full batch is the buffer itself, the same object every step: the CUDA ops keep their launches
                # for the arrays they are given (nnxp.ops._cuda.LaunchPlan), and a new view would miss them
                xb = bx if k == len(bx) else bx[:k]
                take_rows(xp, x, idx, xb)
                if y_once is not None:
                    yb = y_whole[lo:hi]
                else:
                    yb = by if k == len(by) else by[:k]
                    take_rows(xp, y, idx, yb)
                if w_once is not None:
                    wb = w_whole[lo:hi]
                elif w is not None:
                    wb = bw[:k]
                    take_rows(xp, w, idx, wb)
            elif mode == "copy":
                xb, yb = bx[: hi - lo], by[: hi - lo]
                xb[...] = x[lo:hi]
                yb[...] = y[lo:hi]
                if w is not None:
                    wb = bw[: hi - lo]
                    wb[...] = w[lo:hi]
            else:
                xb, yb = x[lo:hi], y[lo:hi]
                wb = None if w is None else w[lo:hi]
            yield xb, yb, wb, rows

    def fill(self) -> None:
        """``"graph"`` mode: gather the batch being yielded into its buffers now (for a step that runs eagerly)."""
        lo, hi = self._span
        idx, xp = self.perm[lo:hi], self.device.xp
        for src, buf in zip((self.x, self.y, self.w), self._bufs, strict=True):
            if src is not None:
                xp.take(src, idx, axis=0, out=buf[: hi - lo])

    def gather(self, cursor: Any, rows: int) -> None:
        """``"graph"`` mode: issue the gather of batch ``cursor`` (a (1,) device int64) into the first `rows` rows
        of the buffers, read on the device (for a captured step: it runs at each replay)."""
        for src, buf in zip((self.x, self.y, self.w), self._bufs, strict=True):
            if src is not None:
                B.gather_rows(src, self.perm, self.starts, cursor, buf[:rows])


def take_rows(xp: Any, src: Any, idx: Any, out: Any) -> Any:
    """``xp.take(src, idx, axis=0, out=out)``: rows `idx` of `src` into `out`. On NumPy in ``mode="clip"``: the
    rows come from the fit's own permutation, always in range, and in its default mode NumPy gathers into a
    temporary and then copies that into `out` (as its documentation says): 0.13 against 0.43 ms for a 1024-row
    batch of Fashion-MNIST (README, Benchmarks: how measured). CuPy's take has no mode and no such copy."""
    if xp is np:
        return np.take(src, idx, axis=0, out=out, mode="clip")
    return xp.take(src, idx, axis=0, out=out)


class Step:
    """One training step: forward, loss, backward, (all-reduce,) optimizer update.

    ``run`` returns the batch's loss and its metric sums, both still on the device (no host sync). `into`
    (metric name -> a 0-d float64 array) is where the loop keeps this batch's sums: an eager step may write a
    sum straight there (and returns that very array), a replayed one returns its own. ``recorded`` is True when
    the last ``run`` already wrote its loss and sums (and weight sum) into the epoch's record itself."""

    recorded = False

    def epoch_record(self, xp: Any, shape: tuple[int, int]) -> Any:
        """The epoch's record, zeroed: float64, rows loss / each metric's sum (/ the weight sum), a column per batch."""
        return xp.zeros(shape, dtype=np.float64)

    def run(self, xb: Any, yb: Any, wb: Any, rows: int, into: dict | None = None) -> tuple[Any, dict[str, Any]]:
        raise NotImplementedError

    def release(self) -> None:
        """Let go of what only the fit needed (fit keeps the step on the model when it ends)."""


class EagerStep(Step):
    """The step as ordinary calls, one kernel (or NumPy call) at a time."""

    def __init__(self, model: Any, comm: Any = None, interrupt: Any = None) -> None:
        self.model = model
        comm = distributed.current() if comm is None else comm
        self.comm = comm if comm.size > 1 else None
        self.interrupt = interrupt if interrupt is not None else GracefulInterrupt()

    def compute(self, xb: Any, yb: Any, wb: Any, rows: int, into: dict | None = None) -> tuple[Any, dict[str, Any]]:
        """Everything but the optimizer update: the loss, the gradients in ``model.grads`` and the metric sums."""
        model = self.model
        if self.comm is None:
            loss, out = model.backprop(xb, yb, wb)
        else:  # one all-reduce: the exactly weighted mean gradient, the batch loss, a Ctrl-C flag
            loss, out = distributed.train_step(self.comm, model, xb, yb, wb, rows, self.interrupt)
        return loss, (model.metric_sums(out, yb, wb, into) if out is not None else {})

    def run(self, xb: Any, yb: Any, wb: Any, rows: int, into: dict | None = None) -> tuple[Any, dict[str, Any]]:
        loss, sums = self.compute(xb, yb, wb, rows, into)
        model = self.model
        model.optimizer.apply(model.params, model.grads)
        return loss, sums


class GraphStep(Step):
    """Full batches replayed from a captured CUDA graph (:mod:`nnxp._graph`), or with `launched` from the step's
    recorded launch list (nnxp._graph.LaunchedStep, the same flow: "capture" then records); the rest run eagerly.

    The first full batch runs eagerly (it builds kernels, scratch buffers and optimizer state), the second is
    captured and every later one replayed. Partial batches run eagerly. If the capture fails (other than for
    memory), the fit warns once and goes on eagerly. `batches` (``"graph"`` mode) yields unfilled batch buffers:
    a replay gathers its batch on the device, an eager step has it gathered first (:meth:`Batches.fill`); without
    `batches` (a step driven by hand) the eager steps' batches come filled and a capture is refused. A
    replay writes its loss and sums into the epoch's record itself (one buffer for the fit, :meth:`epoch_record`)."""

    def __init__(self, eager: EagerStep, batch_size: int, batches: Batches | None = None,
                 launched: Callable[[], bool] | None = None) -> None:
        self.eager, self.batch_size, self.batches = eager, batch_size, batches
        # the step kept as its launch list (LaunchedStep), not captured in a graph, as long as `launched()` says
        # the model's step can be (asked again before each recording: a callback may have added clipping)
        self.launched, self._can_launch = launched is not None, launched
        self.graph: GraphedStep | None = None
        self.feed: StepFeed | None = None
        self.warm = False  # a full batch ran eagerly: capture the next one
        self.enabled = True
        self.replays = 0  # steps replayed in this fit, over every capture
        self._record: Any = None

    def epoch_record(self, xp: Any, shape: tuple[int, int]) -> Any:
        if self._record is None or self._record.shape != shape:  # once per fit: the graph writes at its address
            self._record, self.feed, self.graph = xp.zeros(shape, dtype=np.float64), None, None
        else:
            self._record.fill(0)
        return self._record

    def capture(self, xb: Any, yb: Any, wb: Any = None) -> GraphedStep:
        """Capture the step for full batches in the fixed buffers `xb`, `yb` (`wb`: the weights' or None)."""
        eager, model = self.eager, self.eager.model
        if self.batches is None:
            raise RuntimeError("a GraphStep without its Batches cannot capture: the graph gathers each batch itself")
        rows, names = self.batch_size, list(model.metrics)
        if self._record is None:
            self.epoch_record(model.device.xp, (1 + len(names) + (wb is not None), len(self.batches)))
        if self.feed is None:
            self.feed = StepFeed(self._record, self._record.shape[0] - 1, model.params.dtype)
        k = xb.shape[0]
        kind = LaunchedStep if self.launched else GraphedStep
        return kind(self.feed, names, lambda cursor: self.batches.gather(cursor, k),
                    lambda into: eager.compute(xb, yb, wb, rows, into),
                    (lambda: [wb.sum()]) if wb is not None else list,
                    model.optimizer, model.params, model.grads, model.scratch_arrays, rows=k)

    def run(self, xb: Any, yb: Any, wb: Any, rows: int, into: dict | None = None) -> tuple[Any, dict[str, Any]]:
        self.recorded = False
        graph, model = self.graph, self.eager.model
        if graph is not None and not graph.still_bound(model.params, model.grads, model.optimizer,
                                                       model.optimizer.scalars_key()):
            # the model or its optimizer changed under the graph (a buffer, the optimizer, its clipping): this step
            # runs eagerly (and builds what a new optimizer lacks), the next full one is captured again
            graph = self.graph = None
            self.warm = False
        # (a rank whose share of this full batch differs from the captured one's, with unevenly sharded data:
        # the graph gathers and computes a fixed number of rows)
        if (rows != self.batch_size or not self.enabled or not self.warm
                or (graph is not None and xb.shape[0] != graph.rows)):
            self._fill()
            result = self.eager.run(xb, yb, wb, rows, into)
            self.warm = self.warm or rows == self.batch_size
            return result
        if graph is None:
            if self.launched and not self._can_launch():
                self.enabled = False
                self._fill()
                return self.eager.run(xb, yb, wb, rows, into)
            try:
                graph = self.graph = self.capture(xb, yb, wb)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise
                self.enabled, self.graph = False, None
                if not isinstance(exc, StepNotRecorded):  # (that one: a step to run eagerly, said by its ops)
                    what, then = (("recording the training step's launches", "with steps made call by call")
                                  if self.launched else ("cuda_graph: capturing the training step",
                                                         "without CUDA graphs"))
                    warnings.warn(f"{what} failed ({type(exc).__name__}: {exc}); this fit goes on {then}",
                                  RuntimeWarning, stacklevel=2)
                self._fill()
                return self.eager.run(xb, yb, wb, rows, into)
        self.recorded = True
        self.replays += 1
        return graph.run(self.batches.index)

    def release(self) -> None:
        """The data (through `batches`), the batch buffers, the graph and the memory it was captured in are the
        fit's alone: dropped when it ends, so the model kept after it holds none of them (the count stays)."""
        self.batches = self.graph = self.feed = self._record = None

    def _fill(self) -> None:
        if self.batches is not None and self.batches.mode == "graph":
            self.batches.fill()


class Guard:
    """The model's weights, optimizer state, step count and learning rate at the start of an epoch, and the way back.

    Used by the loop as ``with guard.watch():`` around an epoch: any exception escaping it (a second Ctrl-C, a
    callback's error) restores the snapshot, and :meth:`check` restores it and raises NumericalError when the
    epoch diverged. The model (and a file saved from it) then holds whole epochs, so a resumed fit stays exact."""

    def __init__(self, model: Any, interrupt: GracefulInterrupt | None = None) -> None:
        self.model = model
        self.interrupt = interrupt  # fit's Ctrl-C handler: a second Ctrl-C waits for a rollback to finish
        self._snapshot: tuple | None = None

    def snapshot(self) -> None:
        model, opt = self.model, self.model.optimizer
        state = opt.state
        if any(v.shape != model.params.shape for v in state.values()):
            # an optimizer shared with another model still holds that model's state: this model's first step
            # allocates its own afresh, so the start of this epoch is "no state yet"
            state = {}
        self._snapshot = (model.params.copy(), {k: v.copy() for k, v in state.items()}, opt.iterations,
                          opt.learning_rate)

    def restore(self) -> None:
        """Put back the weights, optimizer state, step count and learning rate of the last snapshot, in place."""
        params, state, iterations, learning_rate = self._snapshot
        model, opt = self.model, self.model.optimizer
        # on the model's device: the error being rolled back may be that another one was left current (a callback)
        with model.device.use():
            model.params[...] = params
            if state:
                for k, v in state.items():
                    opt.state[k][...] = v
            else:  # the state did not exist yet: the next step allocates it afresh
                opt.to(model.params, {})
        opt.iterations, opt.learning_rate = iterations, learning_rate

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Snapshot now; restore if an exception leaves the block."""
        self.snapshot()
        try:
            yield
        except BaseException:
            with self.whole():
                self.restore()
            raise

    def whole(self) -> Any:
        """A block that a second Ctrl-C does not cut in half (it raises when the block ends)."""
        return nullcontext() if self.interrupt is None else self.interrupt.hold()

    def check(self, epoch: int, loss: float, batch_losses: Any) -> None:
        """Raise NumericalError (after restoring) when the epoch's loss, weights or optimizer state are not finite,
        naming the first batch whose loss was not (`batch_losses`: each batch's loss, on the device until now).

        The state counts too: Adam's `v` can overflow (g^2) while the loss and the weights stay finite, and an
        epoch kept with it would make every later epoch diverge back to it, and its files unloadable."""
        model, xp = self.model, self.model.device.xp
        state = model.optimizer.state
        finite = xp.isfinite(model.params).all()
        for v in state.values():
            finite &= xp.isfinite(v).all()
        if math.isfinite(loss) and bool(finite):  # (one host read, once per epoch)
            return
        bad = np.flatnonzero(~np.isfinite(to_numpy(batch_losses)))
        if not math.isfinite(loss) or bad.size:
            what = "the loss"
        elif bool(xp.isfinite(model.params).all()):
            slots = [repr(k) for k, v in state.items() if not bool(xp.isfinite(v).all())]
            what = "the optimizer state " + ", ".join(slots)
        else:
            what = "the weights"
        self.restore()
        where = f"epoch {epoch + 1}" + (f", batch {int(bad[0]) + 1}" if bad.size else "")
        raise NumericalError(
            f"training diverged: {what} became NaN or infinite at {where}. The model is back at its weights and "
            f"optimizer state from the start of epoch {epoch + 1}. Try a smaller learning_rate, clipnorm=1.0 in "
            "the optimizer, or standardized inputs."
        )


class GracefulInterrupt:
    """Turn Ctrl-C during fit into a flag checked after each batch, so weights stay consistent."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        self._held = 0  # > 0 inside hold(): a second Ctrl-C is kept for its end
        self._pending = False

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C stops at once, or as soon as a rollback is done
            if self._held:
                self._pending = True
                return
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Keep a second Ctrl-C for the end of the block (a rollback half done would leave the model mid-epoch)."""
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
            if not self._held and self._pending:
                self._pending = False
                raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_epochs(model: Any, plan: FitPlan, interrupt: GracefulInterrupt) -> None:
    """The loop: per epoch, snapshot, train, validate and tell the callbacks; Ctrl-C rolls the epoch back."""
    launched = not plan.cuda_graph and step_replayable(model, plan)
    kept = plan.cuda_graph or launched  # the step kept whole (a graph, or its launch list)
    mode = "graph" if kept else "gather" if plan.shuffle else "view"
    batches = Batches(plan.data, plan.batch_size, model.device, model.seed, mode, plan.comm, fixed=kept,
                      shuffle=plan.shuffle)
    step = plan.step = EagerStep(model, plan.comm, interrupt)
    if kept:
        step = plan.step = GraphStep(step, plan.batch_size, batches,
                                     launched=(lambda: step_replayable(model, plan)) if launched else None)
    guard, cbs = Guard(model, interrupt), plan.callbacks
    for epoch in range(plan.initial_epoch, plan.epochs):
        if not interrupt.requested:  # (a Ctrl-C during the last epoch's callbacks is seen here)
            # a second Ctrl-C or a callback's error mid-epoch: back to the epoch's start, before on_epoch_begin
            # (a LearningRateScheduler sets this epoch's rate there from the current one: a resumed epoch sets it again)
            with guard.watch():
                for cb in cbs:
                    cb.on_epoch_begin(epoch)
                logs = train_epoch(model, plan, batches, step, guard, epoch, interrupt)
                if plan.val is not None and not interrupt.requested:
                    logs.update({f"val_{k}": v for k, v in evaluate_arrays(model, *plan.val, plan.batch_size).items()})
            if interrupt.requested:  # Ctrl-C in this epoch's batches or validation: the epoch never happened
                with guard.whole():
                    guard.restore()
        if interrupt.requested:
            plan.history.interrupted = True
            print(f"Training interrupted during epoch {epoch + 1}; the model is back at its weights and "
                  f"optimizer state from the start of that epoch (epochs_trained={model.epochs_trained}), so a "
                  "later fit continues exactly as an uninterrupted run would.")
            break
        model.epochs_trained += 1
        if any("lr" in getattr(cb, "log_keys", ()) for cb in cbs):  # declared (a scheduler): every callback sees
            logs["lr"] = model.optimizer.current_learning_rate()  # it, whatever its place in the list
        for cb in cbs:
            cb.on_epoch_end(epoch, logs)
        if plan.comm.size > 1:  # a callback that stops one rank stops them all
            model.stop_training = plan.comm.any(model.stop_training)
        if model.stop_training:
            break


def graph_replays(model: Any) -> int:
    """How many steps the model's latest fit replayed from a captured CUDA graph (0 when none was captured, and
    for an eager fit launched from its list: :func:`launched_steps`)."""
    step = getattr(model, "_fit_step", None)
    return 0 if getattr(step, "launched", False) else getattr(step, "replays", 0)


def launched_steps(model: Any) -> int:
    """How many steps the model's latest fit ran from its kept launch list (nnxp._graph.LaunchedStep)."""
    step = getattr(model, "_fit_step", None)
    return getattr(step, "replays", 0) if getattr(step, "launched", False) else 0


# Eager CUDA fits keep their step as a launch list where step_replayable allows; False makes every eager step
# call by call (the README says so; tests and benchmarks compare the two)
LAUNCH_LISTS = True


def step_replayable(model: Any, plan: FitPlan) -> bool:
    """Whether this fit's eager CUDA step can be kept as its launch list (nnxp._graph.LaunchedStep): every
    device call of its step then goes through nnxp's ops or nnxp.ops._cuda.recorded. That holds for the layers
    that say so (Layer.launch_list: Dense, Dropout, Flatten, Input) without regularizers, a fused softmax /
    sigmoid cross-entropy head, the accuracy metric of a categorical loss, an optimizer whose update is one fused
    kernel (all seven) without clipping, unweighted rows, one process, and the fused kernels in use (not
    NNXP_KERNELS=reference, none failed to build). Anything else keeps the call-by-call eager step."""
    head, optimizer = model._head, model.optimizer
    if not (LAUNCH_LISTS and model.device.is_cuda and plan.comm.size == 1 and plan.data[2] is None):
        return False
    if kernel_mode() != "fused" or kernel_failures():  # (the CuPy references run: by choice, or after a failed build)
        return False
    if not getattr(head, "fused", False) or head._fn() not in TAKE_LOSS_OUT:
        return False
    if any(kind != "accuracy" for kind in model.metric_kinds()) or (model.metrics and head.loss.task == "binary"):
        return False
    for layer in model.layers:
        if not layer.launch_list or any(getattr(layer, name, None) is not None
                                        for name in ("kernel_regularizer", "bias_regularizer")):
            return False
    return (getattr(optimizer.rule, "fused", None) is not None and optimizer.clipvalue is None
            and optimizer.clipnorm is None and optimizer.global_clipnorm is None)


def seed_epoch(model: Any, count: int, comm: Any, share: list) -> None:
    """Give each random layer (Dropout) its stream for the model's epoch `count`: one per (epoch, layer), so two
    Dropouts never share a mask and a resumed run draws the same masks as an uninterrupted one."""
    own_data = comm.data == "sharded"  # each rank was given only its own rows
    for i, layer in enumerate(model.layers):
        if hasattr(layer, "rng"):
            key = [model.seed, 2, count, i] + ([comm.rank] if own_data else [])
            layer.rng = model.device.random_generator(np.random.SeedSequence(key))
            if comm.size > 1 and not own_data:  # each rank's mask rows are cut from the whole batch's mask
                layer.rng = distributed.ShardedGenerator(layer.rng, share, comm.rank)


_NO_BATCH_HOOK = Callback.on_train_batch_end


class RecordColumn(dict):
    """Metric name -> its 0-d float64 place in the epoch's record for the current batch (``record[1 + k,
    batch]``), made on first use: a step replayed or launched from its list writes its column itself and never
    asks, so it costs no view (a CuPy view costs about a microsecond)."""

    def __init__(self, record: Any, names: list[str]) -> None:
        super().__init__()
        self.record, self.rows, self.batch = record, {name: 1 + k for k, name in enumerate(names)}, 0

    def move(self, batch: int) -> None:
        self.clear()
        self.batch = batch

    def __missing__(self, name: str) -> Any:
        view = self[name] = self.record[self.rows[name], self.batch, ...]
        return view


def train_epoch(model: Any, plan: FitPlan, batches: Batches, step: Step, guard: Guard, epoch: int,
                interrupt: GracefulInterrupt) -> dict[str, float]:
    """One pass over the batches; the epoch's logs, or {} when Ctrl-C stopped it (the caller rolls back).

    Divergence is checked once, at the end of the epoch, on every device: each batch's loss is kept (on the
    device) and read then, which names the first bad batch without a per-batch host sync on a GPU. On the CPU
    too, so both follow one rule; a diverged epoch runs to its end before the rollback."""
    xp = model.device.xp
    # randomness follows the model's own epoch count, not `epoch` (fit's loop index, which restarts at
    # initial_epoch on every call): a second fit, or a fit after load_model, continues the sequence
    count = model.epochs_trained
    seed_epoch(model, count, plan.comm, batches.share)
    # what each batch leaves, on the device, read once at the end of the epoch: row 0 its loss, row 1 + k the
    # sum of metric k (0 where a rank had no rows of it), with weights a last row: the sum of its weights (the
    # weighted metrics' denominator). A replayed step writes its column itself (step.recorded)
    names = list(model.metrics)
    weighted = plan.data[2] is not None
    record = step.epoch_record(xp, (1 + len(names) + weighted, len(batches)))
    batch_losses = record[0]
    sizes: list[int] = []  # each batch's global rows: the epoch's loss is summed from batch_losses at its end
    loss_type: Any = None
    seen = batch = 0
    cbs = plan.callbacks
    # Keras passes the batch's loss to on_train_batch_end. On the CPU it is a float already; on a GPU reading it
    # syncs the device, so it is read only when a callback other than the progress bar overrides the hook
    batch_loss_wanted = not model.device.is_cuda or any(
        type(cb).on_train_batch_end is not Callback.on_train_batch_end and not isinstance(cb, ProgbarLogger)
        for cb in cbs)
    # the hooks that do something (a callback inheriting the base class's no-op is not called per batch)
    batch_cbs = [cb for cb in cbs if type(cb).on_train_batch_end is not _NO_BATCH_HOOK]
    into = RecordColumn(record, names)
    for batch, (xb, yb, wb, rows) in enumerate(batches.epoch(count)):
        into.move(batch)  # the batch's metric sums' places in the record (0-d views, made when first asked for)
        loss, sums = step.run(xb, yb, wb, rows, into)
        if not step.recorded:
            batch_losses[batch] = loss
            for name, value in sums.items():
                if value is not into[name]:  # (a sum not made in float64)
                    into[name][...] = value
            if weighted:
                record[-1, batch, ...] = wb.sum()
        sizes.append(rows)
        loss_type = loss.dtype.type if hasattr(loss, "dtype") else float
        seen += rows
        batch_logs = {"size": rows, "loss": float(loss)} if batch_loss_wanted else {"size": rows}
        for cb in batch_cbs:
            cb.on_train_batch_end(batch, batch_logs)
        if interrupt.requested:
            return {}
    host = to_numpy(record[:, : len(sizes)])  # one read of the epoch's record
    losses = host[0]
    # each metric's batch sums added in batch order in float64: what `metric_sums += sum` per batch gave
    metric_sums = {name: _ordered_sum(host[1 + k]) for k, name in enumerate(names)}
    # (in batch order in float64: what `weight_sum += wb.sum()` per batch gave)
    weight_sum = _ordered_sum(host[-1]) if weighted else None
    if plan.comm.size > 1:  # the metrics' sums (and weights) over every rank's rows
        totals = plan.comm.allreduce([metric_sums[k] for k in names]
                                     + ([] if weight_sum is None else [float(weight_sum)]))
        metric_sums = dict(zip(names, totals[: len(names)]))
        weight_sum = None if weight_sum is None else totals[-1]
    logs = {"loss": epoch_loss_sum(losses, sizes, loss_type) / max(seen, 1)}
    logs.update({name: ratio(v, seen if weight_sum is None else weight_sum) for name, v in metric_sums.items()})
    guard.check(epoch, logs["loss"], losses)
    return logs


def _ordered_sum(values: np.ndarray) -> float:
    total = 0.0
    for v in values.tolist():
        total += v
    return total


def epoch_loss_sum(losses: np.ndarray, sizes: list[int], loss_type: Any) -> float:
    """The sum over an epoch's batches of loss * rows, each product in the loss's own dtype and the sum in
    float64, in batch order: the numbers a running ``loss_sum += loss * rows`` on the device gives, computed
    once from `losses` (float64, which holds every loss exactly) instead of two launches per step."""
    total = 0.0
    for value, rows in zip(losses.tolist(), sizes, strict=True):
        total += float(loss_type(value) * loss_type(rows))
    return total


def evaluate_arrays(model: Any, x: Any, y: Any, w: Any, batch_size: int) -> dict[str, float]:
    """Loss and metrics over (x, y) (with per-row weights `w` or None), batch by batch, read once at the end."""
    xp = model.device.xp
    n = x.shape[0]
    comm = distributed.current()
    if comm.data == "sharded":  # each rank holds its own rows: the total count is the sum
        n = int(comm.allreduce([n])[0])
    elif comm.size > 1:  # each rank evaluates its part of the rows; the sums are added up below
        lo, hi = comm.shard(n)
        x, y, w = x[lo:hi], y[lo:hi], None if w is None else w[lo:hi]
    loss_sum = xp.zeros((), dtype=np.float64)
    sums = {name: xp.zeros((), dtype=np.float64) for name in model.metrics}
    for start in range(0, x.shape[0], batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        wb = None if w is None else w[start : start + batch_size]
        out = model.forward(xb, training=False)
        loss, _ = model.loss_and_grad(out, yb, wb)
        loss_sum += loss * xb.shape[0]
        for name, value in model.metric_sums(out, yb, wb).items():
            sums[name] += value
    wsum = None if w is None else w.sum()
    if comm.size > 1:
        names = list(sums)
        totals = comm.allreduce([float(loss_sum), *(float(sums[k]) for k in names)]
                                + ([] if wsum is None else [float(wsum)]))
        loss_sum, sums = totals[0], dict(zip(names, totals[1 : 1 + len(names)]))
        wsum = None if wsum is None else totals[-1]
    logs = {"loss": float(loss_sum) / n}
    logs.update({name: ratio(v, n if wsum is None else wsum) for name, v in sums.items()})
    return logs


def ratio(total: Any, count: Any) -> float:
    """A weighted mean's total over its count, 0 when nothing counted (Keras's divide_no_nan)."""
    count = float(count)
    return float(total) / count if count > 0 else 0.0
