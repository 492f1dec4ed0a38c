"""Issue 15's CPU targets, judged from paired rounds: each verdict with its noise and, for the step, its floor.

One quiet run of ``bench/train_cpu.py`` gives one number per target, and on a shared machine epochs move by
5-10% between runs, more than some targets' margins. This run repeats the judged measurements in rounds; within a
round the compared things alternate in short parts (an epoch in 4 slices of the data, the step-sized blocks in 4
blocks of 15 steps; order rotated), so a slow spell hits both members of a pair alike, and each target is judged
on the per-round *ratios*: their median and a distribution-free interval
for that median (order statistics of the binomial(n, 1/2), no normality assumed). A verdict reads

- ``met`` / ``missed``: the whole interval is on one side of the target;
- ``met within noise`` / ``missed within noise``: the median is on that side, the interval straddles the target;
- ``out of reach here``: a step target whose *floor* step is itself above the target (interval and all);
- ``at its floor, which misses the target within noise``: the floor step's median is above the target (its
  interval straddles it) and the step is not measurably slower than its floor (fast / floor interval reaches 1);
- ``missed, and its floor misses it too within noise``: the same floor, and the step measurably above it;
- ``not judged: ...``: fewer than 5 rounds, whose interval covers less than 90% (1 round: a point).

The floor step (:class:`FloorStep`) is the least a training step of this MLP can cost with BLAS GEMMs, which
take no epilogue: the step's 8 GEMMs in the step's order, on the step's shapes and layouts (weights views into one
flat buffer), each epilogue replaced by one in-place pass over the array it must read and write anyway (the
hidden activations after their GEMMs, the logits for softmax-CE, the two hidden gradients before their GEMMs,
reading the activation their ReLU gradient needs: the bias add, activation, loss and their gradients at no
arithmetic cost), and Adam by its bytes streamed once
(read p, g, m, v; write p, m, v). Timed as a step, so its GEMMs meet the caches the real step leaves them.

Targets (issue 15; batch 128 and 1024): NumPy alone >= 1.0x the careful NumPy MLP (epochs as inside a fit of
many: each timed epoch is 4 fit calls, and what a fit call pays once, its check of x and its set-up, timed as
fit calls that train no epoch, is taken off); the fast step <=
1.15x (128) and <= 1.05x (1024) its GEMMs; fast >= 1.15x the careful MLP at batch 128 (epochs).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/cpu_targets.py [--rounds 9] [--json OUT]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench import train_cpu as T  # noqa: E402
from bench._env import emit  # noqa: E402
from nnxp.ops import optim as O  # noqa: E402

STEP_TARGETS = {128: 1.15, 1024: 1.05}  # fast step / its GEMMs, at most
NUMPY_TARGET = 1.0  # NumPy alone / careful MLP (speed), at least
FAST_TARGET = (128, 1.15)  # fast / careful MLP (speed) at this batch, at least
NO_STEP_LR = 1e-12  # NumPy's Adam in the NumPy floor step: every pass runs, the weights stay where they are
SPLITS = 4  # parts of each epoch and blocks of each step-sized measurement per round
CONFIDENCE = 0.90  # a verdict needs an interval of at least this coverage (5 rounds and more give one)
QUICK_SAMPLES, FULL_SAMPLES = 4096, 60000


def median_interval(xs: list[float], confidence: float = CONFIDENCE) -> dict:
    """The median of `xs` and a distribution-free interval for it: order statistics ``[x(j), x(n+1-j)]`` with the
    largest j whose coverage ``1 - 2 P(Binomial(n, 1/2) <= j - 1)`` is still at least `confidence`. Too few
    samples for that (n < 5 at 90%): the whole range, with the smaller coverage it has."""
    if any(math.isnan(v) for v in xs):  # (sorted() would leave it anywhere: an arbitrary median and interval)
        raise ValueError(f"median_interval needs numbers; got NaN among {list(xs)}")
    s = sorted(xs)
    n = len(s)
    if n == 0:
        raise ValueError("median_interval needs at least one sample")
    j, tail = 1, 0.5**n  # tail = P(Binomial(n, 1/2) <= j - 1)
    while j < (n + 1) // 2:
        wider = tail + math.comb(n, j) * 0.5**n
        if 1 - 2 * wider < confidence:
            break
        j, tail = j + 1, wider
    return {"median": statistics.median(s), "low": s[j - 1], "high": s[n - j], "coverage": 1 - 2 * tail, "n": n}


def verdict(summary: dict, target: float, at_least: bool) -> str:
    """Where a median-and-interval summary stands against `target` (see the module docstring); not judged where
    the summary's interval covers less than CONFIDENCE (fewer than 5 rounds: 1 round is a point, 2 a 50% range)."""
    coverage = summary.get("coverage")
    if coverage is not None and coverage < CONFIDENCE - 1e-12:
        n = summary["n"]
        return (f"not judged: {n} round{' gives' if n == 1 else 's give'} a {coverage:.0%} interval "
                f"(a verdict needs {CONFIDENCE:.0%}: 5 rounds or more)")
    good = (lambda v: v >= target) if at_least else (lambda v: v <= target)
    low, high = (summary["low"], summary["high"]) if at_least else (summary["high"], summary["low"])
    if good(low):  # the interval's worst end meets it
        return "met"
    if not good(high):  # even its best end misses
        return "missed"
    return "met within noise" if good(summary["median"]) else "missed within noise"


class FloorStep:
    """The floor step of the MLP at one batch size (see the module docstring), and its GEMMs alone."""

    def __init__(self, batch: int) -> None:
        rng = np.random.default_rng(5)
        L = T.LAYERS
        sizes = [L[i] * L[i + 1] + L[i + 1] for i in range(3)]  # kernel then bias, as nnxp lays them out
        offs = np.cumsum([0, *sizes])
        self.p = np.empty(T.N_PARAMS, np.float32)
        self.g = np.zeros_like(self.p)
        self.w, self.dw = [], []
        for i in range(3):
            k = L[i] * L[i + 1]
            w = self.p[offs[i] : offs[i] + k].reshape(L[i], L[i + 1])
            w[...] = rng.standard_normal(w.shape, dtype=np.float32) / np.float32(math.sqrt(L[i]))
            self.p[offs[i] + k : offs[i + 1]] = 0.0
            self.w.append(w)
            self.dw.append(self.g[offs[i] : offs[i] + k].reshape(L[i], L[i + 1]))
        self.m, self.v = np.zeros_like(self.p), np.zeros_like(self.p)
        self.tmp = np.empty_like(self.p)
        self.h = [rng.random((batch, L[0]), dtype=np.float32)] + [np.empty((batch, n), np.float32) for n in L[1:]]
        self.d = [np.empty((batch, n), np.float32) for n in L[1:-1]]  # dL/dh1, dL/dh2

    def step(self, passes: bool = True, numpy_adam: bool = False) -> None:
        """One floor step (`passes` False: its 8 GEMMs alone, back to back; `numpy_adam`: NumPy alone's floor, whose
        optimizer cannot be one pass: NumPy's own Adam, ``adam_ref``, in its place). The passes are sign flips and a
        maximum, so the values stay of one size however many steps run (m grows by g each step, never read)."""
        h, w, dw, d = self.h, self.w, self.dw, self.d
        for i in range(3):
            np.matmul(h[i], w[i], out=h[i + 1])
            if passes:  # bias + activation (hidden), softmax-CE with its gradient (logits): one pass each
                np.negative(h[i + 1], out=h[i + 1])
        dz = h[3]  # the logits buffer holds dL/dz, as in nnxp
        for i in (2, 1, 0):
            np.matmul(h[i].T, dz, out=dw[i])
            if i > 0:
                np.matmul(dz, w[i].T, out=d[i - 1])
                if passes:  # activation gradient + bias gradient: one pass, reading the activation too
                    np.maximum(d[i - 1], h[i], out=d[i - 1])
                dz = d[i - 1]
        if passes and numpy_adam:  # NumPy's Adam, its 12 passes (a rate that moves no weight by 1e-10)
            O.adam_ref(self.p, self.g, self.m, self.v, self.tmp, NO_STEP_LR, T.BETA_1, T.BETA_2, T.EPS, 10)
        elif passes:  # Adam's 28 bytes a parameter, once
            np.add(self.m, self.g, out=self.m)
            np.negative(self.v, out=self.v)
            np.negative(self.p, out=self.p)


def _median_ms(fn: Callable[[], Any], steps: int) -> float:
    ts = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def measure_batch(batch: int, x: np.ndarray, y: np.ndarray, sampler: T.Sampler, rounds: int,
                  quick: bool) -> dict:
    """One batch size's rounds: epochs of NumPy alone, fast and the careful MLP; blocks of the fast step, the
    floor step and the GEMMs alone; the per-round ratios and their summaries."""
    models = {"nnxp_numpy": T.nnxp_model(), "nnxp_fast": T.nnxp_model()}
    for impl, model in models.items():  # buffers allocated, loops compiled (or loaded)
        with T.numba_mode(impl == "nnxp_fast"):
            model.fit(x[: 4 * batch], y[: 4 * batch], epochs=1, batch_size=batch, verbose=0)
    careful = T.careful_mlp(batch)
    careful.epoch(x[: 4 * batch], y[: 4 * batch])
    if batch > x.shape[0]:  # (a step gathers one whole batch from the data)
        raise ValueError(f"batch {batch} is larger than the {x.shape[0]:,} samples loaded")
    floor = FloorStep(batch)
    steps = max(1, min(8 if quick else 60, x.shape[0] // batch))
    # an epoch is timed in SPLITS parts (consecutive slices of the data, each part of each implementation
    # interleaved with the others'), so the two members of a pair are never more than a part apart
    cuts = np.linspace(0, x.shape[0], SPLITS + 1).astype(int)
    parts = [(x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    epochs = {
        "nnxp_numpy": lambda xs, ys: T.in_mode(False, partial(T.nnxp_epoch, models["nnxp_numpy"], xs, ys, batch))(),
        "nnxp_fast": lambda xs, ys: T.in_mode(True, partial(T.nnxp_epoch, models["nnxp_fast"], xs, ys, batch))(),
        "careful_numpy": careful.epoch,
    }

    def fast_step(seed: int) -> float:
        with T.numba_mode(True):
            return T.nnxp_step_parts(models["nnxp_fast"], x, y, batch, sub, seed=seed)["step"]

    # the three step-sized things alternate in short blocks (`sub` steps, each block's median), `SPLITS`
    # blocks of each a round, so a slow spell of a second or two meets all three; a round's value is the
    # median of its blocks'
    sub = max(1, steps // SPLITS)
    def numpy_step(seed: int) -> float:
        with T.numba_mode(False):
            return T.nnxp_step_parts(models["nnxp_numpy"], x, y, batch, sub, seed=seed)["step"]

    blocks = {"fast_step": fast_step, "floor_step": lambda seed: _median_ms(floor.step, sub),
              "gemms": lambda seed: _median_ms(partial(floor.step, passes=False), sub),
              "numpy_step": numpy_step,
              "careful_step": lambda seed: T.careful_step_parts(careful, x, y, batch, sub, seed=seed)["step"],
              "numpy_floor_step": lambda seed: _median_ms(partial(floor.step, numpy_adam=True), sub)}
    times: dict[str, list[float]] = {k: [] for k in (*epochs, *blocks, "fit_calls")}
    foreign: list[float] = []
    for r in range(rounds):
        names, spent = list(epochs), dict.fromkeys(epochs, 0.0)
        for k, (xs, ys) in enumerate(parts):  # rotated, so no member always goes first
            for name in names[(r + k) % len(names):] + names[: (r + k) % len(names)]:
                t, f, _ = sampler.sample(partial(epochs[name], xs, ys))
                spent[name] += t
                foreign.append(f)
        for name, t in spent.items():
            times[name].append(t)
        # what those fit calls paid once per call, not per epoch: their checks of x (a pass over the data) and set-up,
        # timed as fit calls that train no epoch; a fit of many epochs pays them once
        with T.numba_mode(False):
            times["fit_calls"].append(sum(sampler.sample(partial(models["nnxp_numpy"].fit, xs, ys, epochs=1,
                                                                 initial_epoch=1, batch_size=batch, verbose=0))[0]
                                          for xs, ys in parts))
        names, got = list(blocks), {k: [] for k in blocks}
        for k in range(SPLITS):
            for name in names[(r + k) % len(names):] + names[: (r + k) % len(names)]:
                t, f, ms = sampler.sample(partial(blocks[name], SPLITS * r + k))
                got[name].append(ms), foreign.append(f)
        for name, ms in got.items():
            times[name].append(statistics.median(ms) / 1e3)
    # speed ratios per round (> 1: the first is faster), and time ratios of the step against its GEMMs
    pairs = {
        "nnxp_numpy_over_careful_numpy": [c / a for a, c in zip(times["nnxp_numpy"], times["careful_numpy"])],
        "nnxp_fast_over_careful_numpy": [c / a for a, c in zip(times["nnxp_fast"], times["careful_numpy"])],
        # the same epochs as inside a fit of many: less what each fit call pays once (judged: users fit for epochs)
        **{f"{k}_over_careful_numpy_in_a_longer_fit": [c / (a - o) for a, c, o in zip(
            times[k], times["careful_numpy"], times["fit_calls"])] for k in ("nnxp_numpy", "nnxp_fast")},
        "fast_step_over_gemms": [s / g for s, g in zip(times["fast_step"], times["gemms"])],
        "floor_step_over_gemms": [s / g for s, g in zip(times["floor_step"], times["gemms"])],
        "fast_step_over_floor_step": [s / f for s, f in zip(times["fast_step"], times["floor_step"])],
        # NumPy alone: its step and the careful MLP's against the floor NumPy allows (> 1: above it)
        "numpy_step_over_numpy_floor": [s / f for s, f in zip(times["numpy_step"], times["numpy_floor_step"])],
        "careful_step_over_numpy_floor": [s / f for s, f in zip(times["careful_step"], times["numpy_floor_step"])],
        "careful_over_numpy_step": [c / s for s, c in zip(times["numpy_step"], times["careful_step"])],
    }
    return {
        "batch": batch, "steps_per_block": steps,
        "epoch_s": {k: times[k] for k in epochs}, "fit_calls_s": times["fit_calls"],
        "block_ms": {k: [1e3 * t for t in times[k]] for k in blocks},
        "ratios": pairs,
        "summaries": {k: median_interval(v) for k, v in pairs.items()},
        "foreign_cpus_max": max(foreign),
    }


def judge(rounds: int, batches: list[int], max_foreign: float, quick: bool = False) -> dict:
    """Every target's per-round ratios, their summaries and verdicts (quick: a 4,096-sample smoke run)."""
    n = QUICK_SAMPLES if quick else FULL_SAMPLES
    x, y, source = T.load_data(n)
    sampler = T.Sampler(max_foreign, 0 if quick else 6)
    result: dict = {
        "benchmark": "cpu_targets",
        "model": "784-512-256-10 ReLU MLP, softmax cross-entropy, Adam lr 1e-3 (eps 1e-7), float32",
        "data": {"source": source, "samples": int(x.shape[0])},
        "quick": quick, "rounds": rounds, "max_foreign_cpus": max_foreign,
        "environment": T.environment(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "batches": {}, "targets": {},
    }
    for batch in batches:
        result["batches"][str(batch)] = measure_batch(batch, x, y, sampler, rounds, quick)
    result["samples_retaken"], result["samples_kept_noisy"] = sampler.retaken, sampler.kept_dirty
    result["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["targets"] = {} if quick else targets(result)
    return result


def targets(result: dict) -> dict:
    """Each issue 15 target this run measured: its summary, the verdict and (step targets) the floor's."""
    out: dict = {}
    b = result["batches"]
    for batch in ("128", "1024"):
        if batch in b:
            sm = b[batch]["summaries"]
            s = sm["nnxp_numpy_over_careful_numpy_in_a_longer_fit"]
            out[f"batch {batch}: NumPy alone >= {NUMPY_TARGET}x the careful NumPy MLP"] = {
                **s, "target": NUMPY_TARGET, "verdict": verdict(s, NUMPY_TARGET, at_least=True),
                # the most any NumPy-alone step could beat the careful MLP's by: how far the latter is above the floor
                "careful_over_floor": sm.get("careful_step_over_numpy_floor")}
    for batch, limit in STEP_TARGETS.items():
        if str(batch) in b:
            sm = b[str(batch)]["summaries"]
            s, fl, gap = sm["fast_step_over_gemms"], sm["floor_step_over_gemms"], sm["fast_step_over_floor_step"]
            v = verdict(s, limit, at_least=False)
            floor_v = verdict(fl, limit, at_least=False)
            if not v.startswith("met") and floor_v == "missed":
                v = "out of reach here"
            elif not v.startswith("met") and floor_v == "missed within noise":
                v = ("at its floor, which misses the target within noise" if gap["low"] <= 1.0
                     else "missed, and its floor misses it too within noise")
            out[f"batch {batch}: fast step <= {limit}x its GEMMs"] = {**s, "target": limit, "verdict": v,
                                                                      "floor": fl, "over_floor": gap}
    batch, limit = FAST_TARGET
    if str(batch) in b:
        s = b[str(batch)]["summaries"]["nnxp_fast_over_careful_numpy_in_a_longer_fit"]
        out[f"batch {batch}: fast >= {limit}x the careful NumPy MLP"] = {**s, "target": limit,
                                                                         "verdict": verdict(s, limit, at_least=True)}
    return out


def markdown(result: dict) -> str:
    def fmt(s: dict) -> str:
        return f"{s['median']:.3f}x [{s['low']:.3f}, {s['high']:.3f}]"

    first = next(iter(result["batches"].values()), {}).get("summaries", {})
    coverage = next(iter(first.values()), {}).get("coverage", 0.0)  # every ratio has one sample per round
    smoke = " A --quick smoke run: its numbers judge nothing." if result.get("quick") else ""
    lines = [f"Issue 15's targets from {result['rounds']} paired rounds ({result['data']['samples']:,} samples; "
             f"median of the per-round ratios [a distribution-free {100 * coverage:.0f}% interval for it]). Samples "
             f"retaken for other processes' load: {result['samples_retaken']} (kept noisy: "
             f"{result['samples_kept_noisy']}).{smoke}", "",
             "Epochs: in a fit of many epochs (judged), then as separate fit calls that also check x each time.", "",
             "| batch | NumPy alone / careful (speed) | fast / careful (speed) | NumPy alone, fast / careful, separate "
             "calls | fast step / GEMMs | floor step / GEMMs | fast step / floor step | GEMMs ms (median) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["batches"].values():
        s = row["summaries"]
        lines.append(f"| {row['batch']} | {fmt(s['nnxp_numpy_over_careful_numpy_in_a_longer_fit'])} | "
                     f"{fmt(s['nnxp_fast_over_careful_numpy_in_a_longer_fit'])} | "
                     f"{s['nnxp_numpy_over_careful_numpy']['median']:.3f}x, "
                     f"{s['nnxp_fast_over_careful_numpy']['median']:.3f}x | {fmt(s['fast_step_over_gemms'])} | "
                     f"{fmt(s['floor_step_over_gemms'])} | {fmt(s['fast_step_over_floor_step'])} | "
                     f"{statistics.median(row['block_ms']['gemms']):.3f} |")
    lines += ["", "NumPy alone against the floor NumPy allows (the floor step with NumPy's own Adam, whose 12 passes "
              "no NumPy code can fuse): how far above it each step is, and the step ratio (> 1: nnxp's is faster).", "",
              "| batch | nnxp NumPy-alone step / floor | careful step / floor | careful step / nnxp step |",
              "|---:|---:|---:|---:|"]
    for row in result["batches"].values():
        s = row["summaries"]
        lines.append(f"| {row['batch']} | {fmt(s['numpy_step_over_numpy_floor'])} | "
                     f"{fmt(s['careful_step_over_numpy_floor'])} | {fmt(s['careful_over_numpy_step'])} |")
    if result["targets"]:
        lines += ["", "| target | median [interval] | verdict |", "|:--|---:|:--|"]
        for name, t in result["targets"].items():
            extra = f" (floor {fmt(t['floor'])})" if "floor" in t else ""
            lines.append(f"| {name} | {fmt(t)}{extra} | {t['verdict']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=9,
                    help="paired rounds (default 9: a 96%% interval for the median; under 5 rounds the interval is "
                         "the whole range, with less coverage: 50%% at 2, so --quick --rounds 2 only shows it runs)")
    ap.add_argument("--batches", type=T.batch_sizes, default=[128, 1024], help="comma-separated batch sizes")
    ap.add_argument("--max-foreign", type=float, default=0.5,
                    help="retake a sample when other processes used more than this many CPUs meanwhile (default "
                         "%(default)s; --quick never retakes)")
    ap.add_argument("--quick", action="store_true", help="a 4,096-sample smoke run (judges nothing)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1; got {args.rounds}")
    samples, run = (QUICK_SAMPLES, "a --quick run") if args.quick else (FULL_SAMPLES, "the data set")
    for b in args.batches:
        if b > samples:  # (a step gathers one whole batch from the data)
            ap.error(f"--batches: {b} is larger than the {samples:,} samples of {run}")
    result = judge(args.rounds, args.batches, args.max_foreign, args.quick)
    emit(result, markdown(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
