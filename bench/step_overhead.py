"""nnxp's own Python per eager CUDA training step, with every launch stubbed out; and the step's launch list.

    python -m bench.step_overhead [--steps 200] [--launch-list bench/results/launch-list.md]

No GPU: nnxp runs on the stand-in CuPy of tests/ (tests/_stand_in_cupy.py), whose RawKernel launches and GEMMs
are stubbed to count themselves and do nothing. The model is 784-512-256-10, ReLU, softmax + sparse CE, Adam,
metrics=["accuracy"], batch 128, an eager `fit` of --steps batches over data already on the device (a fit of host
data uploads all of it once per fit, which is not per-step work). Issue 11's goal: at most 40 us per step.

How nnxp's share is told from the stand-in's (all in CPU time of the thread):
- Replay (the figure): every outermost call from nnxp into the stand-in during a fit is recorded (function,
  arguments); then, with no instrumentation at all, the fit is timed, and so is a replay of exactly those calls in
  the same order. fit - replay is nnxp's own Python; the replay loop's own cost (iterating, calling; measured with
  a no-op in place of each function) is added back, as nnxp pays a call for each of them too, so the figure is
  an upper bound and fit - replay the lower one.
- Old (subtraction, kept for comparison): the time inside the stand-in's outermost calls and a calibrated cost per
  timer are subtracted from an instrumented fit. Its control, the same subtraction applied to the instrumented
  replay (whose own Python is only the loop), shows that it counts part of every timed call as nnxp's (~0.5 us per
  call on this CPU: 30-100 us per step at 109 calls). Both are printed in the same run, and the count of Python
  function calls made in nnxp's files per step (sys.setprofile), which does not depend on the CPU.

The figure depends on this machine's CPU (the empty-loop time printed scales it) and on its load: run it at least
twice and quote the lower. CuPy's own per-launch cost on a GPU comes on top (the launch list says how many); the
stand-in's functions are Python, CuPy's are Cython, so the replay's share says nothing about CuPy's cost.

Where it stands (issue 11). Session 5: each step made call by call, after the launch plans of nnxp/ops/_cuda.py,
116-184 us per step (89 Python calls in nnxp per step; 234-492 us and 343 calls before those plans; 114 since
accuracy's count became one planned kernel, whose label and record arguments are swapped each step). Session 6:
an eager fit keeps its step as a launch list (nnxp/_graph.py LaunchedStep) where nnxp.training.step_replayable
allows, which the issue's model does: three runs (--steps 400) on this shared 2-CPU machine gave 31.9, 60.7 and
24.2 us per step (lower bounds 23.6, 50.0, 18.3), 16 Python calls in nnxp per step (19 at --steps 200: the per-fit
work is spread over fewer steps), under the 40 us goal in two of three and
at the lowest; the call-by-call step measured 103-176 us in the same runs and a replayed CUDA graph step 16-26 us.
The figures are differences of two large numbers on a shared machine and move by +-50% from run to run: quote
the lowest of several. A fit of --steps batches also pays per-fit work (the warm-up step, the recording, each
epoch's scalar table), spread over its steps here.

--launch-list writes the launches of one steady eager step (and the counts of eager and graphed steps) as
counted by the stand-in, with the real kernels run by the CPU emulator of CUDA (tests/_cuda_emu.py).
"""

from __future__ import annotations

import argparse
import functools
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import _cuda_emu  # noqa: E402
import _stand_in_cupy as sic  # noqa: E402

import nnxp  # noqa: E402
import nnxp.backend as backend  # noqa: E402
from nnxp.callbacks import Callback  # noqa: E402
from nnxp.ops import _cublas, _cuda, dense  # noqa: E402

BATCH = 128
# CPU time of this thread, not wall time: the figure should not depend on what else the machine runs
_clock = time.thread_time
SMS = 132  # an H100 SXM's multiprocessors, as tests/test_budgets.py counts (nnxp's block counts depend on it)


def install(emulator: Any) -> Any:
    """The stand-in CuPy in place of CuPy, as tests/conftest.py's fake_cupy and tests/test_graph.py's seam, on a
    device with SMS multiprocessors."""
    sic.Device.attributes = property(lambda self: {"MultiProcessorCount": SMS, "MaxThreadsPerBlock": 1024,
                                                   "WarpSize": 32})
    fake = sic.stand_in_cupy(emulator)
    backend._cupy = fake
    _cuda._KERNELS = _cuda.LazyKernels()
    _cuda._SCRATCH = {}
    _cublas._gemm = sic.captured_gemm
    _cublas._prepare_capture = lambda device_id: None
    return fake


def build_model(seed: int = 0) -> nnxp.Sequential:
    model = nnxp.Sequential([nnxp.Dense(512, "relu", input_dim=784), nnxp.Dense(256, "relu"),
                             nnxp.Dense(10, "softmax")], device="cuda", seed=seed)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(batches: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.normal(size=(BATCH * batches, 784)).astype(np.float32),
            rng.integers(0, 10, BATCH * batches))


# --- the timing ---------------------------------------------------------------------------------------------


class _StandInClock:
    """Time spent inside the stand-in (outermost calls only), how many such calls were made, and (when
    `recording` is a list) each outermost call itself, as (function, args, kwargs), for the replay."""

    def __init__(self) -> None:
        self.inside, self.calls, self.depth = 0.0, 0, 0
        self.recording: list | None = None

    def wrap(self, fn: Any, replay: Any = None) -> Any:
        """`fn` timed; a recorded call replays as `replay` (default `fn`): what runs uninstrumented."""
        clock = self
        target = fn if replay is None else replay

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if clock.depth:
                return fn(*args, **kwargs)
            clock.depth = 1
            clock.calls += 1
            if clock.recording is not None:
                clock.recording.append((target, args, kwargs))
            start = _clock()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.inside += _clock() - start
                clock.depth = 0

        return timed


def _stand_in_methods() -> dict[type, tuple[str, ...]]:
    """Every function and property the stand-in's classes define (found, not listed by hand, so that no method
    of the stand-in is counted as nnxp's: a hand list had missed none today, but a new one would go unseen)."""
    found = {}
    for cls in (sic.FakeArray, sic.RawKernel, sic.RawModule, sic.Device, sic.Stream, sic.Graph, sic.MemoryPool,
                sic.MemoryPointer):
        found[cls] = tuple(name for name, attr in vars(cls).items()
                           if (callable(attr) or isinstance(attr, property)) and not isinstance(attr, type)
                           and name not in ("__new__", "__init_subclass__", "__class_getitem__", "__repr__"))
    return found


_INHERITED = object()  # (what an instrumented attribute was before: inherited, so deleted again)
_NDARRAY_METHODS = ("sum", "mean", "max", "min", "any", "all", "reshape", "transpose", "squeeze")


def _stub_kernels() -> None:
    """RawKernel launches and GEMMs count themselves and do nothing else."""

    def launch(self: Any, grid: tuple, block: tuple, args: tuple, *, shared_mem: int = 0,
               enable_cooperative_groups: bool = False) -> None:
        sic._count_launch(self.name)

    sic.RawKernel.__call__ = launch
    sic._gemm_into = lambda a, b, out: None
    _cublas._gemm = lambda a, b, out: (sic._count_launch("gemm"), out)[1]


def _instrument(fake: Any, clock: _StandInClock) -> Any:
    """Time every entry into the stand-in with `clock`; returns a function that puts everything back."""
    undo: list[tuple[Any, str, Any]] = []

    def replace(owner: Any, name: str, value: Any) -> None:
        undo.append((owner, name, vars(owner).get(name, _INHERITED)))
        setattr(owner, name, value)

    for cls, names in _stand_in_methods().items():
        for name in names:
            attr = cls.__dict__[name]
            if isinstance(attr, property):
                replace(cls, name, property(clock.wrap(attr.fget)))
            else:
                replace(cls, name, clock.wrap(attr))
    for ns in (fake, fake.cuda, fake.cuda.runtime, fake.cuda.device, fake.cuda.stream):
        for name, value in list(vars(ns).items()):
            if callable(value) and not isinstance(value, type):
                replace(ns, name, clock.wrap(value))
    # the methods device arrays inherit from NumPy's (in CuPy its own, Cython): NumPy's Python wrappers around
    # them (numpy/_core/_methods.py) are the stand-in's, not nnxp's
    for name in _NDARRAY_METHODS:
        replace(sic.FakeArray, name, clock.wrap(getattr(np.ndarray, name)))
    numpy_names = type(fake).__dict__["__getattr__"]  # the NumPy functions CuPy offers under the same names

    def getattr_timed(self: Any, name: str) -> Any:  # (in CuPy a module attribute: a dict look-up)
        # ufuncs too: NumPy's dispatch to FakeArray.__array_ufunc__ is the stand-in's (CuPy's ufuncs are its own)
        attr = numpy_names(self, name)
        return clock.wrap(attr) if callable(attr) and not isinstance(attr, type) else attr

    replace(type(fake), "__getattr__", clock.wrap(getattr_timed, replay=numpy_names))

    def restore() -> None:
        for owner, name, value in reversed(undo):
            if value is _INHERITED:
                delattr(owner, name)
            else:
                setattr(owner, name, value)

    return restore


def _timer_cost(clock: _StandInClock, calls: int = 200_000) -> float:
    """Seconds per outermost call that the timer adds outside its own measured interval (the old method)."""
    plain = clock.wrap(lambda: None)
    best = float("inf")
    for _ in range(5):
        before, start = clock.inside, _clock()
        for _ in range(calls):
            plain()
        total = _clock() - start
        inside = clock.inside - before
        bare_start = _clock()
        for _ in range(calls):
            pass
        loop = _clock() - bare_start
        best = min(best, (total - inside - loop) / calls)
    return max(best, 0.0)


def _replay(calls: list) -> float:
    """CPU seconds to make `calls` (function, args, kwargs) one after another: the stand-in's share of a fit."""
    start = _clock()
    for fn, args, kwargs in calls:
        fn(*args, **kwargs)
    return _clock() - start


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


def _timed(fn: Any, *args: Any) -> float:
    gc.collect()
    gc.disable()  # a collection would land on one side of the difference only
    try:
        start = _clock()
        fn(*args)
        return _clock() - start
    finally:
        gc.enable()


def _nnxp_calls(model: Any, x: np.ndarray, y: np.ndarray, cuda_graph: bool = False) -> int:
    """Python function calls made in nnxp's own files during one fit (sys.setprofile: exact, and independent of
    the CPU's speed)."""
    import nnxp as package

    root = str(Path(package.__file__).parent)
    count = [0]

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.startswith(root):
            count[0] += 1

    sys.setprofile(profile)
    try:
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, cuda_graph=cuda_graph)
    finally:
        sys.setprofile(None)
    return count[0]


def step_overhead(emulator: Any, steps: int, repeats: int = 7, launch_lists: bool = True,
                  cuda_graph: bool = False) -> dict[str, float]:
    """nnxp's own Python per step of an eager fit with the launches stubbed out, two ways (see the docstring).

    Old (subtraction): the fit's time minus the time measured inside the stand-in's outermost calls minus a
    calibrated cost per timer. New (replay): every outermost stand-in call of the fit is recorded; then, with no
    instrumentation at all, the fit and a replay of exactly those calls (same functions, same arguments, same
    order) are timed: the difference is nnxp's. Control: the old method applied to the instrumented replay,
    whose own Python is only the replay loop, so whatever it reports beyond that loop it misattributes.
    """
    fake = install(emulator)
    _stub_kernels()
    nnxp.training.LAUNCH_LISTS = launch_lists
    start = _clock()
    for _ in range(1_000_000):
        pass
    loop_ms = 1e3 * (_clock() - start)
    # the data on the device once: a fit of host data uploads all of it (a per-fit cost, and one that made every
    # later fit slower, as the stand-in keeps each allocation for its guard checks)
    x, y = fake.asarray(data(steps)[0]), fake.asarray(data(steps)[1])
    model = build_model()
    # kernels, buffers, state
    model.fit(x[: 2 * BATCH], y[: 2 * BATCH], epochs=1, batch_size=BATCH, verbose=0, cuda_graph=cuda_graph)

    def fit() -> None:
        model.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, cuda_graph=cuda_graph)

    def warm() -> None:
        """Launch plans made again, so that the functions they hold are the stand-in's as they are now
        (instrumented or not): a plan made before would call around the instrumentation, or through it."""
        getattr(_cuda, "forget_plans", lambda: None)()  # (a tree from before the plans, for before/after runs)
        model.fit(x[: 2 * BATCH], y[: 2 * BATCH], epochs=1, batch_size=BATCH, verbose=0, cuda_graph=cuda_graph)

    clock = _StandInClock()
    restore = _instrument(fake, clock)
    warm()
    per_call = _timer_cost(clock)
    best: dict[str, float] = {}
    try:
        for _ in range(repeats):
            clock.inside, clock.calls = 0.0, 0
            clock.recording = calls = []
            total = _timed(fit)
            clock.recording = None
            old = total - clock.inside - clock.calls * per_call
            # the control: the same calls with no nnxp code around them, measured the old way
            clock.inside, clock.calls = 0.0, 0
            timed_calls = [(clock.wrap(fn), a, k) for fn, a, k in calls]
            replay_total = _timed(_replay, timed_calls)
            control = replay_total - clock.inside - clock.calls * per_call
            result = {"old_us": 1e6 * old / steps, "total_instrumented_us": 1e6 * total / steps,
                      "stand_in_us": 1e6 * clock.inside / steps, "stand_in_calls": len(calls) / steps,
                      "timer_us_per_call": 1e6 * per_call, "control_us": 1e6 * control / steps}
            if not best or result["old_us"] < best["old_us"]:
                best = result
    finally:
        restore()
    warm()
    # the new method, uninstrumented: the fit, and the replay of what it called in the stand-in
    noops = [(_noop, a, k) for _, a, k in calls]
    # interleaved, and the least disturbed run of each (its minimum) kept: on a shared machine the CPU time of a
    # run grows with the others' load, and the minimum of a difference would pick a lucky fit against an unlucky
    # replay
    totals, replays, loops = [], [], []
    for _ in range(repeats):
        totals.append(_timed(fit))
        replays.append(_timed(_replay, calls))
        loops.append(_timed(_replay, noops))
    total, replay, loop = min(totals), min(replays), min(loops)
    own = total - replay
    # the replay loop's own cost (iterating, unpacking, calling) is in `replay`: nnxp's calls into CuPy cost it
    # a call each too, so the figure counts it as nnxp's (the upper bound); fit - replay is the lower bound
    best.update({"nnxp_us": 1e6 * (own + loop) / steps, "nnxp_low_us": 1e6 * own / steps,
                 "total_us": 1e6 * total / steps, "replay_us": 1e6 * replay / steps,
                 "replay_loop_us": 1e6 * loop / steps, "loop_ms": loop_ms,
                 "nnxp_calls": _nnxp_calls(model, x, y, cuda_graph) / steps})
    return best


# --- the launch list -----------------------------------------------------------------------------------------


def counted_steps(emulator: Any, graph: bool, batches: int = 3, epochs: int = 2,
                  launch_lists: bool = True) -> list[sic.Counts]:
    """The counts of each steady step (after its epoch's first; for a step kept whole, a graph or an eager fit's
    launch list, after the first epoch). `launch_lists` False: every eager step made call by call."""
    install(emulator)
    x, y = data(batches)
    model = build_model()
    steps: list[sic.Counts] = []
    where: dict[str, Any] = {"epoch": -1, "last": None}
    saved = Callback.on_epoch_begin, Callback.on_train_batch_end

    def on_epoch_begin(self: Any, epoch: int, logs: Any = None) -> None:
        where["epoch"], where["last"] = epoch, None

    def on_train_batch_end(self: Any, batch: int, logs: Any = None) -> None:
        now = sic.COUNTS.snapshot()
        if where["last"] is not None and (not (graph or launch_lists) or where["epoch"] > 0):
            steps.append(now.minus(where["last"]))
        where["last"] = now

    Callback.on_epoch_begin, Callback.on_train_batch_end = on_epoch_begin, on_train_batch_end
    kept, nnxp.training.LAUNCH_LISTS = nnxp.training.LAUNCH_LISTS, launch_lists
    try:
        model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0, cuda_graph=graph)
    finally:
        Callback.on_epoch_begin, Callback.on_train_batch_end = saved
        nnxp.training.LAUNCH_LISTS = kept
    return steps


_FIELDS = ("launches", "graph_launches", "allocations", "syncs", "h2d_pageable", "h2d_pinned", "set_device")


def launch_list(emulator: Any) -> str:
    eager = counted_steps(emulator, graph=False, launch_lists=False)
    launched = counted_steps(emulator, graph=False)
    graph = counted_steps(emulator, graph=True)
    lines = ["# Launches of one training step on CUDA (counted on the stand-in CuPy)", "",
             "Generated by `python -m bench.step_overhead --launch-list bench/results/launch-list.md`: "
             "784-512-256-10, ReLU, softmax + sparse CE, Adam, metrics=[\"accuracy\"], batch 128, shuffled, on a "
             f"device with {SMS} SMs (H100 SXM). "
             "A step runs from one on_train_batch_end to the next (gather, forward, loss, backward, metrics, "
             "optimizer, the epoch's bookkeeping); the counts follow CuPy 14.2's source (tests/_stand_in_cupy.py). "
             "tests/test_budgets.py holds the budgets.", "",
             "| per step | " + " | ".join(_FIELDS) + " |", "|---" * (len(_FIELDS) + 1) + "|"]
    kinds = (("eager, each step made call by call", eager), ("eager, kept as its launch list (the default)", launched),
             ("cuda_graph=True (replay)", graph))
    for name, steps in kinds:
        cells = []
        for f in _FIELDS:
            values = sorted({getattr(c, f) for c in steps})
            cells.append("/".join(str(v) for v in values))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for title, steps in (("Eager step, made call by call", eager), ("Eager step launched from its list", launched),
                         ("Replayed step (besides the graph launch)", graph)):
        lines += ["", f"## {title}: {len(steps[-1].names)} launches", ""]
        lines += [f"{i + 1}. `{n}`" for i, n in enumerate(steps[-1].names)]
    return "\n".join(lines) + "\n" + bias_gradient_table()


def _bias_rows(rows: int, cols: int, itemsize: int = 4) -> tuple[int, int, int, int]:
    """(gy two-stage would use, one-pass?, extra bytes two-stage, extra bytes GEMV) for one layer, by the grid
    rule of nnxp.ops.dense._activation_backward_bias on SMS multiprocessors."""
    bx = min(32, _cuda._next_pow2(cols))
    by = _cuda._BLOCK // bx
    gx = -(-cols // bx)
    gy = max(1, min(-(-rows // (by * 4)), -(-_cuda._BLOCKS_PER_SM * SMS // gx), 1024))
    two_stage = 2 * gy * cols * itemsize if gy > 1 else 0  # partials written, then read by nnxp_column_sum
    gemv = rows * cols * itemsize + rows * itemsize  # dz read again, and the ones vector
    return gy, int(rows <= dense._ONE_PASS_ROWS), two_stage, gemv


def bias_gradient_table() -> str:
    """Launches and extra bytes of the bias gradient db = dz.sum(axis=0), three ways, for the model's layers."""
    lines = ["", "## Bias gradient: launches and extra bytes per step (float32, the three Dense layers)", "",
             "dz (B, N) is made by the fused activation-backward kernel either way; what differs is how db is "
             "summed. One pass: that kernel sums each column tile in one block row (mode 1), 1 launch, no "
             "extra bytes. Two stages: per-block partial sums (gy, N), then nnxp_column_sum, 2 launches (1 "
             "when gy is 1). GEMV: db = dz^T 1 by cuBLAS, 2 launches, reads dz again. nnxp uses one pass up to "
             f"{dense._ONE_PASS_ROWS} rows, two stages above.", "",
             "| batch | launches one-pass / two-stage / GEMV | extra bytes two-stage | extra bytes GEMV |",
             "|---|---|---|---|"]
    for rows in (32, 128, 256, 1024, 8192):
        launches = [0, 0, 0]
        extra2 = extra_gemv = 0
        for cols in (512, 256, 10):
            gy, _, b2, bg = _bias_rows(rows, cols)
            launches[0] += 1
            launches[1] += 2 if gy > 1 else 1
            launches[2] += 2
            extra2, extra_gemv = extra2 + b2, extra_gemv + bg
        lines.append(f"| {rows} | {launches[0]} / {launches[1]} / {launches[2]} | {extra2:,} | {extra_gemv:,} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="eager steps to time (default 200)")
    parser.add_argument("--launch-list", type=Path, default=None, help="write the launch list (markdown) here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        emulator = _cuda_emu.build(Path(tmp))
        if emulator is None:
            print("no C++ compiler for the CUDA emulator", file=sys.stderr)
            return 1
        if args.launch_list is not None:
            text = launch_list(emulator)
            args.launch_list.write_text(text)
            print(text)
        r = step_overhead(emulator, args.steps)
        call_by_call = step_overhead(emulator, args.steps, launch_lists=False)
        nnxp.training.LAUNCH_LISTS = True
        graphed = step_overhead(emulator, args.steps, cuda_graph=True)
    print(f"cuda_graph=True, each full batch replayed: {graphed['nnxp_us']:.1f} us per step (at least "
          f"{graphed['nnxp_low_us']:.1f} us), {graphed['nnxp_calls']:.0f} Python calls in nnxp per step")
    print(f"each step made call by call (LAUNCH_LISTS off, as before issue 11's launch lists, and for models "
          f"whose step cannot be kept as one): {call_by_call['nnxp_us']:.1f} us per step (at least "
          f"{call_by_call['nnxp_low_us']:.1f} us), {call_by_call['nnxp_calls']:.0f} Python calls in nnxp per step")
    print(f"nnxp's own Python per eager step: {r['nnxp_us']:.1f} us (goal <= 40 us; replay method, "
          f"at least {r['nnxp_low_us']:.1f} us), "
          f"{r['nnxp_calls']:.0f} Python calls in nnxp per step. Python {platform.python_version()} on a CPU that "
          f"runs a 1M-iteration empty loop in {r['loop_ms']:.1f} ms of CPU time (to scale by).\n"
          f"  replay method: fit {r['total_us']:.1f} us/step uninstrumented, minus a replay of its "
          f"{r['stand_in_calls']:.0f} stand-in calls/step {r['replay_us']:.1f} us, plus the replay loop "
          f"{r['replay_loop_us']:.1f} us (the same loop calling a no-op)\n"
          f"  old subtraction method: {r['old_us']:.1f} us (instrumented fit {r['total_instrumented_us']:.1f} us, "
          f"{r['stand_in_us']:.1f} us inside the stand-in, timer {r['timer_us_per_call']:.2f} us per call "
          f"subtracted); its control, the replay alone, whose own Python is only the loop: "
          f"{r['control_us']:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
