"""CPU training throughput: nnxp (NumPy alone and with the ``fast`` extra) against its peers, in one run.

Trains a 784-512-256-10 ReLU MLP (softmax cross-entropy, Adam lr 1e-3, float32) for whole epochs of
Fashion-MNIST (60,000 images) at batch 32, 128, 1024 and 8192 with

- nnxp's ``Sequential.fit`` with its compiled CPU loops off (``nnxp_numpy``, as without the ``fast`` extra)
  and on (``nnxp_fast``, Numba);
- a careful hand-written NumPy MLP (``CarefulNumpyMLP``: preallocated buffers, in-place ufuncs, the same
  weights), the bar nnxp must clear with NumPy alone;
- the idiomatic PyTorch eager loop, in a child process so the two libraries' thread pools never share one;
- scikit-learn's ``MLPClassifier.partial_fit`` (Adam, float32 data).

Epochs of all of them are interleaved, so slow spells hit each alike. The run also times the 8 GEMMs one step
needs, alone (preallocated outputs, nnxp's layouts), nnxp's step phase by phase (default loops and
threaded ones forced on) beside the careful MLP's, the optimizer pass and Adam's memory floor inside the step, one
Adam update alone, the peak RSS of one training epoch per implementation (each in a fresh process), and the
compile latency of the fast extra (first and second epoch in fresh processes with a cold, then a warm Numba
cache). Targets and ratios come from this one run.

    python bench/train_cpu.py [--quick] [--json OUT] [--batches 32,128,1024,8192] [--no-memory] [--no-jit]

Where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set (workarounds for old OpenBLAS
builds) run it as ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
bench/train_cpu.py``: they make a current NumPy pick a slower kernel.

Shared machines are noisy, so every timed sample also measures how much CPU
*other* processes used meanwhile (``/proc/stat`` minus this process); samples
taken while others used more than ``--max-foreign`` CPUs are retaken (up to a
limit) and the counts are reported. The JSON records the environment: CPU,
threads, BLAS and its kernel, Numba's threading layer, versions and those variables.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# Read before NumPy loads OpenBLAS, which is when they take effect.
_BLAS_ENV = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                            "OMP_NUM_THREADS", "MKL_NUM_THREADS")}

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nnxp  # noqa: E402
from bench._env import cpu_model, emit  # noqa: E402
from nnxp._validation import check_finite  # noqa: E402
from nnxp.ops import optim as O  # noqa: E402

LAYERS = (784, 512, 256, 10)
LR = 1e-3
BETA_1, BETA_2 = 0.9, 0.999
EPS = 1e-7  # Keras's (and nnxp's) Adam epsilon; PyTorch is given the same
SEED = 0
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MIN_JUDGED_S = 0.05  # blocks shorter than this are not judged for other processes' load
N_PARAMS = sum(LAYERS[i] * LAYERS[i + 1] + LAYERS[i + 1] for i in range(3))  # 535,818


# --- data ---------------------------------------------------------------------------------------


def _read_idx_gz(path: Path) -> np.ndarray:
    """A minimal IDX reader (uint8 payloads), used when nnxp.datasets cannot load the files."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(x float32 (n, 784) in [0, 1], y int64 (n,), where it came from)."""
    try:
        from nnxp.datasets import load_fashion_mnist

        (x, y), _ = load_fashion_mnist(download=False)
        source = "Fashion-MNIST train (nnxp.datasets)"
    except Exception:  # no loader yet, or it found no files: read Debian's files directly
        img, lab = FASHION_DIR / "train-images-idx3-ubyte.gz", FASHION_DIR / "train-labels-idx1-ubyte.gz"
        if img.exists() and lab.exists():
            x, y = _read_idx_gz(img), _read_idx_gz(lab)
            source = f"Fashion-MNIST train ({FASHION_DIR}, local IDX reader)"
        else:
            rng = np.random.default_rng(SEED)
            x = rng.integers(0, 256, size=(60000, 28, 28), dtype=np.uint8)
            y = rng.integers(0, 10, size=60000, dtype=np.uint8)
            source = "random uint8 images of Fashion-MNIST's shape (files not found)"
    x = np.ascontiguousarray(x[:n].reshape(-1, 784), dtype=np.float32) / np.float32(255.0)
    return x, np.asarray(y[:n], dtype=np.int64), source


# --- environment --------------------------------------------------------------------------------


def numpy_blas() -> dict:
    """NumPy's BLAS pool as threadpoolctl sees it (library, version, kernel, threads)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    mine = [p for p in pools if "numpy" in str(p.get("filepath", ""))] or pools
    return mine[0] if mine else {}


def environment() -> dict:
    blas = numpy_blas()
    env = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numpy_blas": {k: blas.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                                "threading_layer", "filepath")} if blas else None,
        "numpy_threads": blas.get("num_threads", os.cpu_count()),
        "nnxp": nnxp.__version__,
        "torch": None,  # filled in by the PyTorch process
        "env": _BLAS_ENV,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        env["physical_cores"] = psutil.cpu_count(logical=False)
        env["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:  # the version without importing it (nnxp imports Numba on its first large Adam step)
        from importlib.metadata import version

        env["numba"] = version("numba")
    except Exception:
        env["numba"] = None
    env["NNXP_NUMBA"] = os.environ.get("NNXP_NUMBA")
    return env


# --- timing that notices other processes --------------------------------------------------------


def _system_busy_s() -> float | None:
    """CPU-seconds all processes have used since boot (None where /proc/stat is missing)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = vals[3] + vals[4]  # idle + iowait; steal (vals[7]) counts as taken by others
    return (sum(vals) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Timer:
    """Wall time of a block and the CPUs other processes used meanwhile (``foreign``, in CPUs)."""

    def __enter__(self) -> Timer:
        self._sys, self._own, self._t = _system_busy_s(), _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self._t
        busy = _system_busy_s()
        if busy is None or self._sys is None or self.wall < MIN_JUDGED_S:
            self.foreign = 0.0  # unknown: no /proc/stat, or too short to judge with 10 ms clock ticks
        else:
            self.foreign = max(0.0, (busy - self._sys) - (_own_cpu_s() - self._own)) / max(self.wall, 1e-9)


class Sampler:
    """Collects clean samples: retakes a sample while other processes used more than `max_foreign` CPUs."""

    def __init__(self, max_foreign: float, max_retakes: int) -> None:
        self.max_foreign, self.max_retakes = max_foreign, max_retakes
        self.retaken = 0  # over the whole run
        self.kept_dirty = 0  # samples kept although noisy (retake budget spent)

    def sample(self, fn: Callable[[], Any]) -> tuple[float, float, Any]:
        """(seconds, foreign CPUs, fn's result) of one clean run of `fn`, or of the quietest of a few tries."""
        best = None
        for attempt in range(self.max_retakes + 1):
            with Timer() as t:
                value = fn()
            if best is None or t.foreign < best[1]:
                best = (t.wall, t.foreign, value)
            if t.foreign <= self.max_foreign:
                return best
            if attempt < self.max_retakes:  # another try follows: a retake (the last noisy one is only kept)
                self.retaken += 1
        self.kept_dirty += 1
        return best


def _sampled(sampler: Sampler, fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds, foreign CPUs) of one clean sample of `fn`."""
    return sampler.sample(fn)[:2]


def median_call_s(sampler: Sampler, fn: Callable[[], Any], repeats: int, inner: int) -> float:
    """Median over `repeats` clean samples of the mean seconds per call of `fn` (after a warm-up call).

    `inner` calls per sample, more where needed for a sample to last MIN_JUDGED_S.
    """
    t0 = time.perf_counter()
    fn()
    inner = max(inner, int(MIN_JUDGED_S / max(time.perf_counter() - t0, 1e-7)) + 1)

    def block() -> None:
        for _ in range(inner):
            fn()

    return statistics.median(sampler.sample(block)[0] for _ in range(repeats)) / inner


# --- nnxp ---------------------------------------------------------------------------------------


def nnxp_model() -> nnxp.Sequential:
    model = nnxp.Sequential(
        [nnxp.Dense(LAYERS[1], "relu", input_dim=LAYERS[0]), nnxp.Dense(LAYERS[2], "relu"),
         nnxp.Dense(LAYERS[3], "softmax")],
        seed=SEED, dtype="float32",
    )
    model.compile(nnxp.optimizers.Adam(learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPS),
                  "sparse_categorical_crossentropy")
    return model


def nnxp_epoch(model: nnxp.Sequential, x: np.ndarray, y: np.ndarray, batch: int) -> None:
    model.fit(x, y, epochs=1, batch_size=batch, shuffle=True, verbose=0)


def nnxp_step_parts(model: nnxp.Sequential, x: np.ndarray, y: np.ndarray, batch: int, steps: int,
                    seed: int = 0) -> dict:
    """Median ms per full batch of gather / forward / loss / backward / optimizer, through the internals fit calls.

    The batch is gathered from a permutation into one buffer (np.take, as fit's Batches does); "step" is the sum
    of the phases after the gather (what the GEMMs alone are compared with).
    """
    parts: dict[str, list[float]] = {k: [] for k in PHASES}
    last = len(model.layers) - 1
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    xb = np.empty((batch, x.shape[1]), x.dtype)
    for i in range(steps):
        t0 = time.perf_counter()
        idx = perm[i * batch : (i + 1) * batch]
        np.take(x, idx, axis=0, out=xb)
        yb = y[idx]
        t1 = time.perf_counter()
        out = model.forward(xb, training=True)
        t2 = time.perf_counter()
        loss, dy = model.loss_and_grad(out, yb)
        float(loss)  # fit reads it each batch too
        t3 = time.perf_counter()
        for j in range(last, -1, -1):
            dy = model.layers[j].backward(dy, need_dx=j > 0)
        t4 = time.perf_counter()
        model.optimizer.apply(model.params, model.grads)
        t5 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t1)):
            parts[key].append(1e3 * dt)
    return {k: statistics.median(v) for k, v in parts.items()}


PHASES = ("gather", "forward", "loss", "backward", "optimizer", "step")


def optimizer_in_step(model: nnxp.Sequential, x: np.ndarray, y: np.ndarray, batch: int, steps: int) -> dict:
    """The optimizer pass where a step meets it, against Adam's memory floor met at the same point.

    Every step runs forward, loss and backward; then even steps time the optimizer pass, odd steps time the
    floor's three in-place ufuncs (Adam's 28 bytes a parameter, on arrays of the parameters' size that only they
    touch, so as cold as Adam's state is after a step's other traffic) and then run the optimizer untimed. The
    floor in the step shows whether Adam's state is still in cache there (floor near the warm one) or not (near
    the cold one): the least any optimizer pass after the backward GEMMs can cost, measured, not assumed.
    """
    rng = np.random.default_rng(4)
    n = N_PARAMS
    fp, fg, fm, fv = (rng.standard_normal(n, dtype=np.float32) for _ in range(4))
    last = len(model.layers) - 1
    opt_ms, floor_ms = [], []
    for i in range(steps):
        k = i % max(1, x.shape[0] // batch)
        xb, yb = x[k * batch : (k + 1) * batch], y[k * batch : (k + 1) * batch]
        out = model.forward(xb, training=True)
        loss, dy = model.loss_and_grad(out, yb)
        float(loss)
        for j in range(last, -1, -1):
            dy = model.layers[j].backward(dy, need_dx=j > 0)
        t0 = time.perf_counter()
        if i % 2:
            np.add(fp, fg, out=fp)
            np.negative(fm, out=fm)
            np.negative(fv, out=fv)
            floor_ms.append(1e3 * (time.perf_counter() - t0))
            model.optimizer.apply(model.params, model.grads)
        else:
            model.optimizer.apply(model.params, model.grads)
            opt_ms.append(1e3 * (time.perf_counter() - t0))
    return {"optimizer_ms": statistics.median(opt_ms), "floor_ms": statistics.median(floor_ms)}


# --- a careful hand-written NumPy MLP (the peer nnxp must beat with NumPy alone) ------------------------


class CarefulNumpyMLP:
    """The same MLP written by hand the way a careful NumPy user would, with nothing to spare.

    Every activation, gradient and the batch live in buffers allocated once; every op is an in-place ufunc
    or a ``matmul(out=)``; weights are (in, out) so forward is ``x @ W``; the batch is gathered with
    ``np.take(out=)`` from a new permutation each epoch; softmax cross-entropy works on the logits in place;
    the ReLU gradient multiplies by the mask ``h > 0``; bias gradients are ``dz.sum(axis=0, out=db)``;
    Adam (Keras form, as nnxp) updates each parameter array with in-place ufuncs. The loss is read each
    batch, as nnxp's fit does.
    """

    def __init__(self, weights: list[np.ndarray], batch: int, seed: int = SEED) -> None:
        self.params = [np.array(w, dtype=np.float32) for w in weights]  # W1, b1, W2, b2, W3, b3
        self.grads = [np.zeros_like(q) for q in self.params]
        self.m = [np.zeros_like(q) for q in self.params]
        self.v = [np.zeros_like(q) for q in self.params]
        self.tmp = [np.empty_like(q) for q in self.params]
        self.t = 0
        self.batch = batch
        self.rng = np.random.default_rng(seed)
        self.h = [np.empty((batch, n), np.float32) for n in LAYERS]  # x, h1, h2, logits
        self.dh = [None] + [np.empty((batch, n), np.float32) for n in LAYERS[1:-1]]  # dL/dh1, dL/dh2
        self.yb = np.empty(batch, np.int64)

    def step(self, nb: int) -> float:
        self.forward(nb)
        loss = self.loss(nb)
        self.backward(nb)
        self.adam()
        return loss

    def forward(self, nb: int) -> None:
        W, h = self.params, self.h
        for i in range(3):
            hi, ho = h[i][:nb], h[i + 1][:nb]
            np.matmul(hi, W[2 * i], out=ho)
            ho += W[2 * i + 1]
            if i < 2:
                np.maximum(ho, 0, out=ho)

    def loss(self, nb: int) -> float:
        """Softmax cross-entropy in place on the logits: they become dL/dz."""
        z, y, rows = self.h[3][:nb], self.yb[:nb], np.arange(nb)
        z -= z.max(axis=1, keepdims=True)
        picked = z[rows, y]
        np.exp(z, out=z)
        s = z.sum(axis=1, keepdims=True)
        loss = float((np.log(s[:, 0]) - picked).mean())
        z /= s
        z[rows, y] -= 1.0
        z *= 1.0 / nb
        return loss

    def backward(self, nb: int) -> None:
        W, g, h = self.params, self.grads, [a[:nb] for a in self.h]
        dz = h[3]
        for i in (2, 1, 0):
            np.matmul(h[i].T, dz, out=g[2 * i])
            dz.sum(axis=0, out=g[2 * i + 1])
            if i > 0:
                dh = self.dh[i][:nb]
                np.matmul(dz, W[2 * i].T, out=dh)
                np.multiply(dh, h[i] > 0, out=dh)
                dz = dh

    def gather(self, x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> int:
        nb = idx.shape[0]
        np.take(x, idx, axis=0, out=self.h[0][:nb])
        np.take(y, idx, axis=0, out=self.yb[:nb])
        return nb

    def adam(self) -> None:
        self.t += 1
        alpha = LR * (1.0 - BETA_2**self.t) ** 0.5 / (1.0 - BETA_1**self.t)
        for p, g, m, v, tmp in zip(self.params, self.grads, self.m, self.v, self.tmp):
            np.subtract(g, m, out=tmp)
            tmp *= 1.0 - BETA_1
            m += tmp
            np.multiply(g, g, out=tmp)
            tmp -= v
            tmp *= 1.0 - BETA_2
            v += tmp
            np.sqrt(v, out=tmp)
            tmp += EPS
            np.divide(m, tmp, out=tmp)
            tmp *= alpha
            p -= tmp

    def epoch(self, x: np.ndarray, y: np.ndarray) -> float:
        n = x.shape[0]
        perm = self.rng.permutation(n)
        total = 0.0
        for start in range(0, n, self.batch):
            nb = self.gather(x, y, perm[start : start + self.batch])
            total += self.step(nb) * nb
        return total / n


def careful_step_parts(mlp: CarefulNumpyMLP, x: np.ndarray, y: np.ndarray, batch: int, steps: int,
                       seed: int = 0) -> dict:
    """The careful MLP's step phase by phase, as nnxp_step_parts times nnxp's (the same gather and phases)."""
    parts: dict[str, list[float]] = {k: [] for k in PHASES}
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    for i in range(steps):
        t0 = time.perf_counter()
        nb = mlp.gather(x, y, perm[i * batch : (i + 1) * batch])
        t1 = time.perf_counter()
        mlp.forward(nb)
        t2 = time.perf_counter()
        mlp.loss(nb)
        t3 = time.perf_counter()
        mlp.backward(nb)
        t4 = time.perf_counter()
        mlp.adam()
        t5 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t5 - t1)):
            parts[key].append(1e3 * dt)
    return {k: statistics.median(v) for k, v in parts.items()}


def careful_mlp(batch: int) -> CarefulNumpyMLP:
    """The careful MLP from nnxp's initial weights (the same init and scale)."""
    ref = nnxp_model()
    ref.build(LAYERS[0])
    return CarefulNumpyMLP(ref.get_weights(), batch)


# --- GEMMs alone --------------------------------------------------------------------------------


def gemm_calls_numpy(batch: int) -> list[tuple[str, Callable[[], Any]]]:
    """The 8 GEMMs of one training step with nnxp's shapes and memory layouts.

    Forward ``x @ W`` for the 3 layers; backward ``x.T @ dz`` (dW) for the 3 layers and
    ``dz @ W.T`` (dX) for layers 3 and 2 (layer 1 needs no input gradient). Weights are
    views into one flat buffer, as in nnxp; outputs are preallocated.
    """
    rng = np.random.default_rng(1)
    sizes = [LAYERS[i] * LAYERS[i + 1] for i in range(3)]
    offs = np.cumsum([0] + sizes)
    flat = rng.standard_normal(int(offs[-1]), dtype=np.float32)
    gflat = np.empty_like(flat)
    ws = [flat[offs[i] : offs[i + 1]].reshape(LAYERS[i], LAYERS[i + 1]) for i in range(3)]
    dws = [gflat[offs[i] : offs[i + 1]].reshape(LAYERS[i], LAYERS[i + 1]) for i in range(3)]
    acts = [rng.random((batch, n), dtype=np.float32) for n in LAYERS]  # x, h1, h2, logits
    dzs = [rng.standard_normal((batch, n), dtype=np.float32) for n in LAYERS[1:]]
    dxs = [np.empty((batch, n), dtype=np.float32) for n in LAYERS[:-1]]
    calls = [(f"fwd{i + 1}", lambda i=i: np.matmul(acts[i], ws[i], out=acts[i + 1])) for i in range(3)]
    for i in (2, 1, 0):
        calls.append((f"dW{i + 1}", lambda i=i: np.matmul(acts[i].T, dzs[i], out=dws[i])))
        if i > 0:
            calls.append((f"dX{i + 1}", lambda i=i: np.matmul(dzs[i], ws[i].T, out=dxs[i])))
    return calls


def gemm_calls_torch(torch: Any, batch: int) -> list[tuple[str, Callable[[], Any]]]:
    """The same 8 GEMMs with torch.mm(out=) on PyTorch's layout (weight (out, in), y = x W^T)."""
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(LAYERS[i + 1], LAYERS[i], generator=g) for i in range(3)]
    dws = [torch.empty_like(w) for w in ws]
    acts = [torch.rand(batch, n, generator=g) for n in LAYERS]
    dzs = [torch.randn(batch, n, generator=g) for n in LAYERS[1:]]
    dxs = [torch.empty(batch, n) for n in LAYERS[:-1]]
    calls = [(f"fwd{i + 1}", lambda i=i: torch.mm(acts[i], ws[i].t(), out=acts[i + 1])) for i in range(3)]
    for i in (2, 1, 0):
        calls.append((f"dW{i + 1}", lambda i=i: torch.mm(dzs[i].t(), acts[i], out=dws[i])))
        if i > 0:
            calls.append((f"dX{i + 1}", lambda i=i: torch.mm(dzs[i], ws[i], out=dxs[i])))
    return calls


def gemm_flops(batch: int) -> int:
    per = [2 * batch * LAYERS[i] * LAYERS[i + 1] for i in range(3)]
    return 3 * sum(per) - per[0]  # forward + dW for all, dX for layers 2 and 3


def time_gemms(sampler: Sampler, calls: list, batch: int, repeats: int, cold_calls: int = 15) -> dict:
    def all_gemms() -> None:
        for _, f in calls:
            f()

    inner = max(2, 8192 // batch)
    total = median_call_s(sampler, all_gemms, repeats, inner)
    each = {name: 1e3 * median_call_s(sampler, f, repeats, inner) for name, f in calls}
    # the same 8 GEMMs right after a 64 MB stream (weights and activations out of cache), as a step's forward
    # meets its weights after the optimizer streamed its 15 MB: the other bound for the GEMMs inside a step
    cold = _cold_ms(sampler, all_gemms, repeats, cold_calls) if cold_calls else None
    return {"count": len(calls), "ms": 1e3 * total, "ms_cold": cold, "gflops": gemm_flops(batch) / total / 1e9,
            "each_ms": each}


# --- PyTorch ------------------------------------------------------------------------------------


def torch_net(torch: Any) -> Any:
    """The same MLP, starting from nnxp's initial weights (so the same init scale)."""
    nn = torch.nn
    net = nn.Sequential(nn.Linear(LAYERS[0], LAYERS[1]), nn.ReLU(), nn.Linear(LAYERS[1], LAYERS[2]), nn.ReLU(),
                        nn.Linear(LAYERS[2], LAYERS[3]))
    ref = nnxp_model()
    ref.build(LAYERS[0])
    weights = ref.get_weights()  # kernel (in, out), bias, ... as nnxp initialises them
    linears = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, k, b in zip(linears, weights[0::2], weights[1::2]):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
            lin.bias.copy_(torch.from_numpy(b))
    return net


TORCH_ADAM_VARIANTS = {"fused": {"fused": True}, "foreach": {"foreach": True}, "single_tensor": {"foreach": False}}


def torch_adam(torch: Any, params: Any, variant: str) -> Any:
    return torch.optim.Adam(params, lr=LR, betas=(BETA_1, BETA_2), eps=EPS, **TORCH_ADAM_VARIANTS[variant])


class TorchTrainer:
    """The idiomatic eager loop: a new permutation each epoch, each batch gathered by index."""

    def __init__(self, torch: Any, xt: Any, yt: Any, variant: str) -> None:
        self.torch, self.xt, self.yt = torch, xt, yt
        self.net = torch_net(torch)
        self.opt = torch_adam(torch, self.net.parameters(), variant)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.gen = torch.Generator().manual_seed(SEED)

    def epoch(self, batch: int, n: int | None = None) -> float:
        torch = self.torch
        n = self.xt.shape[0] if n is None else n
        perm = torch.randperm(n, generator=self.gen)
        loss_sum = 0.0
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            xb, yb = self.xt.index_select(0, idx), self.yt.index_select(0, idx)
            loss = self.loss_fn(self.net(xb), yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            loss_sum += loss.item() * xb.shape[0]  # nnxp reads the loss each batch too
        return loss_sum / n


# --- Adam alone ---------------------------------------------------------------------------------


def _cold_ms(sampler: Sampler, step: Callable[[], Any], repeats: int, calls: int = 15) -> float:
    """ms per `step` right after streaming 64 MB through the caches, as after a training step's GEMMs."""
    src, dst = np.ones(8 << 20, np.float32), np.empty(8 << 20, np.float32)

    def block() -> float:
        total = 0.0
        for _ in range(calls):
            np.copyto(dst, src)
            t0 = time.perf_counter()
            step()
            total += time.perf_counter() - t0
        return total / calls

    step()
    return 1e3 * statistics.median(sampler.sample(block)[2] for _ in range(repeats))


def nnxp_adam_alone(sampler: Sampler, repeats: int) -> dict:
    """ms per nnxp Adam update over the MLP's 535,818 float32 parameters (one flat buffer)."""
    rng = np.random.default_rng(2)
    p = rng.standard_normal(N_PARAMS, dtype=np.float32) * np.float32(0.05)
    g = rng.standard_normal(N_PARAMS, dtype=np.float32) * np.float32(1e-3)
    opt = nnxp.optimizers.Adam(learning_rate=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPS)
    step = partial(opt.apply, p, g)
    t0 = time.perf_counter()
    step()  # the first call in this process: state allocation and any compile (reported apart)
    res = {"params": N_PARAMS, "nnxp_first_call_ms": 1e3 * (time.perf_counter() - t0)}
    res["nnxp_ms"] = 1e3 * median_call_s(sampler, step, repeats, 20)
    res["nnxp_cold_ms"] = _cold_ms(sampler, step, repeats)
    m, v, tmp = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)
    ref = partial(O.adam_ref, p, g, m, v, tmp, LR, BETA_1, BETA_2, EPS, 10)
    res["nnxp_adam_ref_ms"] = 1e3 * median_call_s(sampler, ref, repeats, 20)
    res["nnxp_adam_ref_cold_ms"] = _cold_ms(sampler, ref, repeats)
    return res


def adam_memory_floor(sampler: Sampler, repeats: int, n: int = N_PARAMS) -> dict:
    """The least time any Adam pass over `n` float32 parameters can take here: its bytes, streamed.

    Adam must read p, g, m, v and write p, m, v: 7 x 4 bytes per parameter, 15 MB for the MLP. Three in-place
    ufuncs that touch exactly those bytes once each and compute (almost) nothing, ``p += g``, ``m *= -1``,
    ``v *= -1``, time that traffic on this machine, warm and right after a GEMM-sized stream (cold), as the
    optimizer pass itself is timed. One thread: NumPy's ufuncs are serial (a threaded pass may beat it where one
    core cannot fill the memory bus; the fast extra's threaded Adam is reported beside it).
    """
    rng = np.random.default_rng(3)
    p, g, m, v = (rng.standard_normal(n, dtype=np.float32) for _ in range(4))

    def stream() -> None:
        np.add(p, g, out=p)
        np.negative(m, out=m)
        np.negative(v, out=v)

    return {"params": n, "bytes": 7 * 4 * n, "floor_ms": 1e3 * median_call_s(sampler, stream, repeats, 20),
            "floor_cold_ms": _cold_ms(sampler, stream, repeats)}


def torch_adam_alone(sampler: Sampler, torch: Any, repeats: int) -> dict:
    """ms per torch.optim.Adam step over the same parameters (6 tensors), for each implementation."""
    shapes: list[tuple] = []
    for i in range(3):
        shapes += [(LAYERS[i + 1], LAYERS[i]), (LAYERS[i + 1],)]
    res: dict = {"torch_ms": {}, "torch_cold_ms": {}}
    for variant in TORCH_ADAM_VARIANTS:
        ps = [torch.nn.Parameter(torch.randn(s) * 0.05) for s in shapes]
        for q in ps:
            q.grad = torch.randn(q.shape) * 1e-3
        try:
            o = torch_adam(torch, ps, variant)
            res["torch_ms"][variant] = 1e3 * median_call_s(sampler, o.step, repeats, 20)
            res["torch_cold_ms"][variant] = _cold_ms(sampler, o.step, repeats)
        except (RuntimeError, TypeError, ValueError) as e:  # a variant this build lacks
            res["torch_ms"][variant] = res["torch_cold_ms"][variant] = None
            res.setdefault("torch_errors", {})[variant] = str(e)[:200]
    ok = {k: t for k, t in res["torch_ms"].items() if t is not None}
    res["torch_best"] = min(ok, key=ok.get)
    res["torch_best_ms"] = ok[res["torch_best"]]
    res["torch_best_cold_ms"] = res["torch_cold_ms"][res["torch_best"]]
    return res


# --- PyTorch in its own process -----------------------------------------------------------------
# PyTorch runs in a child process, driven epoch by epoch from here: its OpenMP pool and NumPy's
# OpenBLAS pool then never share a process. (In one process, PyTorch's batch-128 epochs measured
# up to 1.6x slower right after NumPy GEMMs had run, which would flatter nnxp.)


def pick_torch_adam(sampler: Sampler, torch: Any, xt: Any, yt: Any, batch: int, quick: bool) -> dict:
    """Seconds for a short training slice with each Adam implementation; the fastest is used."""
    n = min(xt.shape[0], max(16 * batch, 4096 if quick else 8192))
    times = {}
    for variant in TORCH_ADAM_VARIANTS:
        try:
            trainer = TorchTrainer(torch, xt, yt, variant)
            trainer.epoch(batch, n)  # warm-up
            times[variant] = statistics.median(sampler.sample(partial(trainer.epoch, batch, n))[0]
                                               for _ in range(1 if quick else 3))
        except (RuntimeError, TypeError, ValueError):
            times[variant] = None
    ok = {k: t for k, t in times.items() if t is not None}
    return {"trial_s": times, "best": min(ok, key=ok.get)}


def _torch_worker(conn: Any, n: int, threads: int, max_foreign: float, max_retakes: int) -> None:
    """Child process: answers (command, args) messages with ("ok", result) or ("error", text)."""
    try:
        import torch

        torch.set_num_threads(threads)
        x, y, _ = load_data(n)
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                "torch_blas": "mkl" if torch.backends.mkl.is_available() else "other",
                "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
    except Exception as e:  # PyTorch missing or broken: the run goes on without it
        conn.send(("error", repr(e)))
        return
    conn.send(("ok", info))
    sampler = Sampler(max_foreign, max_retakes)
    trainers: dict[int, TorchTrainer] = {}
    while True:
        cmd, args = conn.recv()
        try:
            if cmd == "quit":
                conn.send(("ok", {"retaken": sampler.retaken, "kept_noisy": sampler.kept_dirty}))
                return
            if cmd == "adam":
                out: Any = torch_adam_alone(sampler, torch, *args)
            elif cmd == "prepare":  # (batch, quick): choose the Adam implementation, build, warm up
                batch, quick = args
                out = pick_torch_adam(sampler, torch, xt, yt, batch, quick)
                trainers[batch] = TorchTrainer(torch, xt, yt, out["best"])
                trainers[batch].epoch(batch, min(n, 4 * batch))
            elif cmd == "epoch":  # (batch,)
                out = sampler.sample(partial(trainers[args[0]].epoch, args[0]))[:2]
            elif cmd == "gemms":  # (batch, repeats)
                out = time_gemms(sampler, gemm_calls_torch(torch, args[0]), *args, cold_calls=0)
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", out))
        except Exception as e:
            conn.send(("error", repr(e)))


class TorchPeer:
    """The parent's handle on the PyTorch child process (None-like when PyTorch is unavailable)."""

    def __init__(self, n: int, threads: int, max_foreign: float, max_retakes: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a clean interpreter: no inherited thread pools
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_torch_worker, args=(child, n, threads, max_foreign, max_retakes),
                                daemon=True)
        self.proc.start()
        status, self.info = self.conn.recv()
        self.ok = status == "ok"
        if not self.ok:
            self.error, self.info = self.info, {}
            self.proc.join(5)

    def call(self, cmd: str, *args: Any) -> Any:
        self.conn.send((cmd, args))
        status, out = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"PyTorch worker failed on {cmd}: {out}")
        return out

    def close(self) -> dict:
        out = self.call("quit") if self.ok else {}
        self.proc.join(10)
        return out


# --- scikit-learn -------------------------------------------------------------------------------


class SklearnTrainer:
    """``MLPClassifier.partial_fit``: one epoch of Adam mini-batches (sklearn shuffles each epoch), float32 data."""

    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(hidden_layer_sizes=LAYERS[1:-1], activation="relu", solver="adam", alpha=0.0,
                                 batch_size=batch, learning_rate_init=LR, beta_1=BETA_1, beta_2=BETA_2, epsilon=EPS,
                                 max_iter=1, shuffle=True, random_state=SEED)
        self.x, self.y, self.classes = x, y, np.arange(LAYERS[-1])

    def epoch(self, n: int | None = None) -> None:
        n = self.x.shape[0] if n is None else n
        self.clf.partial_fit(self.x[:n], self.y[:n], classes=self.classes)

    @property
    def weights_dtype(self) -> str:
        return str(self.clf.coefs_[0].dtype)


# --- NumPy alone vs the fast extra -------------------------------------------------------------------


# the thresholds the threaded loops had before they were switched off by default (c6bb02e), forced by
# numba_mode(threaded=True) so each run measures them again against the serial default
THREADED_MIN = {"dense": 1 << 19, "optim": 1 << 19}


class numba_mode:
    """Within the block, nnxp's compiled CPU loops are on (`fast`) or off (NumPy alone), as with and without the
    ``fast`` extra installed. `threaded`: None keeps nnxp's defaults, False keeps every loop serial, True turns the
    threaded loops on from THREADED_MIN's sizes (and with them Numba's thread pool)."""

    def __init__(self, fast: bool, threaded: bool | None = None) -> None:
        self.fast, self.threaded = fast, threaded

    def __enter__(self) -> numba_mode:
        from nnxp.ops import _cpu
        from nnxp.ops import dense as D

        self._saved = (D.PARALLEL_MIN_ELEMENTS, O.PARALLEL_MIN_SIZE)
        if self.threaded is False:
            D.PARALLEL_MIN_ELEMENTS = O.PARALLEL_MIN_SIZE = 1 << 62
        elif self.threaded:
            D.PARALLEL_MIN_ELEMENTS, O.PARALLEL_MIN_SIZE = THREADED_MIN["dense"], THREADED_MIN["optim"]
        _cpu.set_numba(self.fast)
        return self

    def __exit__(self, *exc: Any) -> None:
        from nnxp.ops import _cpu
        from nnxp.ops import dense as D

        D.PARALLEL_MIN_ELEMENTS, O.PARALLEL_MIN_SIZE = self._saved
        _cpu.set_numba(None)


def threaded_by_default() -> bool:
    """Whether nnxp's defaults run any threaded loop at the benchmark's sizes (batch 8192 x 512 is the largest)."""
    from nnxp.ops import dense as D

    return D.PARALLEL_MIN_ELEMENTS <= 8192 * 512 or O.PARALLEL_MIN_SIZE <= N_PARAMS


def in_mode(fast: bool, fn: Callable[[], Any], threaded: bool | None = None) -> Callable[[], Any]:
    def call() -> Any:
        with numba_mode(fast, threaded):
            return fn()

    return call


# --- peak memory and compile latency, each in a fresh process ------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_child(impl: str, batch: int, n: int) -> dict:
    """One epoch of `impl` in this (fresh) process; its peak RSS, whole and above the loaded data."""
    import gc

    x, y, _ = load_data(n)
    gc.collect()
    baseline = _status_kib("VmRSS")
    hwm_before_training = _status_kib("VmHWM")  # the loader's temporaries (IDX bytes, float copies)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: from here on, the training run's own peak
        reset = True
    except OSError:
        reset = False
    t0 = time.perf_counter()
    numba_import = None
    if impl in ("nnxp_numpy", "nnxp_fast"):
        from nnxp.ops import _cpu

        if impl == "nnxp_fast":  # what Numba itself adds (llvmlite, its modules), before any loop loads
            rss0 = _status_kib("VmRSS")
            import numba  # noqa: F401

            numba_import = (_status_kib("VmRSS") - rss0) / 1024 if rss0 else None
        _cpu.set_numba(impl == "nnxp_fast")
        nnxp_epoch(nnxp_model(), x, y, batch)
    elif impl == "careful_numpy":
        careful_mlp(batch).epoch(x, y)
    elif impl == "torch":
        import torch

        TorchTrainer(torch, torch.from_numpy(x), torch.from_numpy(y), "foreach").epoch(batch)
    elif impl == "sklearn":
        SklearnTrainer(x, y, batch).epoch()
    else:
        raise ValueError(impl)
    hwm = _status_kib("VmHWM")
    return {"impl": impl, "batch": batch, "samples": n, "epoch_s": time.perf_counter() - t0,
            "rss_after_data_mib": baseline / 1024 if baseline else None,
            "peak_rss_loading_mib": hwm_before_training / 1024 if hwm_before_training else None,
            "peak_rss_training_mib": hwm / 1024 if (hwm and reset) else None,
            "peak_above_data_mib": (hwm - baseline) / 1024 if (hwm and baseline and reset) else None,
            "numba_import_rss_mib": numba_import}


def numba_rss_child(mode: str) -> dict:
    """What the fast extra costs in memory whatever the data: RSS of a process that has imported nnxp and then

    - "nnxp": nothing more (the baseline);
    - "numba_import": imported numba (and with it llvmlite);
    - "numpy_fit" / "fast_fit": trained 8 steps of the benchmark's MLP on 1,024 samples with nnxp's compiled loops
      off / on (on: every loop the step uses loaded from the on-disk cache, or compiled where it is cold).

    fast_fit's peak less numpy_fit's is the fixed price of the fast extra: it does not grow with the data set.
    """
    import gc

    from nnxp.ops import _cpu

    x, y, _ = load_data(1024)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # the loader's peak is not the fit's
    rss0 = _status_kib("VmRSS")
    if mode == "numba_import":
        import numba  # noqa: F401
    elif mode in ("numpy_fit", "fast_fit"):
        _cpu.set_numba(mode == "fast_fit")
        nnxp_epoch(nnxp_model(), x, y, 128)
    elif mode != "nnxp":
        raise ValueError(mode)
    rss, hwm = _status_kib("VmRSS"), _status_kib("VmHWM")
    return {"mode": mode, "rss_before_mib": rss0 / 1024 if rss0 else None, "rss_mib": rss / 1024 if rss else None,
            "peak_rss_mib": hwm / 1024 if hwm else None, "numba_loaded": "numba" in sys.modules,
            "loops_first_call_s": dict(_cpu.compile_seconds)}


def numba_fixed_cost(memory: dict) -> dict:
    """The fast extra's fixed RSS (fresh processes) and the peak-RSS target judged raw and net of it."""
    runs = {m: run_child("numba_rss", m) for m in ("nnxp", "numba_import", "numpy_fit")}
    run_child("numba_rss", "fast_fit")  # warms the on-disk cache where it was cold, as a user's second run finds it
    runs["fast_fit"] = run_child("numba_rss", "fast_fit")
    out: dict = {"runs": runs}
    if any("error" in r for r in runs.values()):
        return out
    grown = {m: r["peak_rss_mib"] - r["rss_before_mib"] for m, r in runs.items()}  # each above its own start
    out["numba_import_mib"] = grown["numba_import"] - grown["nnxp"]
    out["fixed_mib"] = grown["fast_fit"] - grown["numpy_fit"]
    fast, careful = memory.get("nnxp_fast", {}), memory.get("careful_numpy", {})
    if not (fast.get("peak_rss_training_mib") and careful.get("peak_rss_training_mib")):
        return out
    f, c, n = fast["peak_rss_training_mib"], careful["peak_rss_training_mib"], careful["samples"]
    per_sample_mib = (LAYERS[0] * 4 + 8) / 2**20  # the data set held in RAM: float32 pixels, an int64 label
    excess = f - c
    out.update({
        "peak_over_careful": f / c,
        "peak_net_of_fixed_over_careful": (f - out["fixed_mib"]) / c,
        "excess_over_careful_mib": excess,
        # the careful MLP's peak grows with the data set by per_sample_mib a sample; the excess does not
        "samples_for_10_percent": max(0, math.ceil(n + (excess / 0.10 - c) / per_sample_mib)),
        "samples_for_10_percent_fixed_only": max(0, math.ceil(n + (out["fixed_mib"] / 0.10 - c) / per_sample_mib)),
    })
    return out


def jit_child(batch: int, n: int, fast: bool) -> dict:
    """Two epochs of nnxp in this fresh process: the first pays imports, allocation and any compile (or a load
    of compiled loops from the on-disk cache), the second is steady state."""
    from nnxp.ops import _cpu

    _cpu.set_numba(fast)
    x, y, _ = load_data(n)
    model = nnxp_model()
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        nnxp_epoch(model, x, y, batch)
        times.append(time.perf_counter() - t0)
    return {"fast": fast, "first_epoch_s": times[0], "second_epoch_s": times[1],
            "first_epoch_extra_s": times[0] - times[1], "loops_first_call_s": dict(_cpu.compile_seconds),
            "numba_enabled": _cpu.numba_enabled()}


def run_child(kind: str, *args: Any, env: dict | None = None, timeout: float = 600) -> dict:
    """`kind` ("memory", "jit" or "numba_rss") with `args` in a new interpreter, its JSON answer back."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), f"--{kind.replace('_', '-')}-child", json.dumps(list(args))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compile_latency(batch: int, n: int) -> dict:
    """First-epoch cost with a cold Numba cache (every loop compiled), then a warm one (a second process loads the
    cached machine code), and NumPy alone for comparison; each in a new process."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="nnxp-numba-cache-") as cache:
        env = {"NUMBA_CACHE_DIR": cache}
        cold = run_child("jit", batch, n, True, env=env)
        warm = run_child("jit", batch, n, True, env=env)
    numpy_alone = run_child("jit", batch, n, False)
    out = {"batch": batch, "samples": n, "cold_cache": cold, "warm_cache": warm, "numpy_alone": numpy_alone}
    if "error" not in cold and "error" not in warm:
        out["compile_s_total_cold"] = sum(cold["loops_first_call_s"].values())
        out["compile_s_total_warm"] = sum(warm["loops_first_call_s"].values())
    return out


# --- the run ------------------------------------------------------------------------------------

IMPLS = ("nnxp_numpy", "nnxp_fast", "careful_numpy", "torch", "sklearn")


def run(quick: bool, repeats: int, batches: list[int], max_foreign: float, memory: bool = True,
        jit: bool = True) -> dict:
    threads = int(numpy_blas().get("num_threads") or os.cpu_count() or 1)
    n = 4096 if quick else 60000
    x, y, source = load_data(n)
    repeats = 1 if quick else repeats
    max_retakes = 0 if quick else 6
    sampler = Sampler(max_foreign, max_retakes)
    peer = TorchPeer(n, threads, max_foreign, max_retakes)
    try:
        import sklearn

        sk_version: str | None = sklearn.__version__
    except ImportError:
        sk_version = None
    result: dict = {
        "benchmark": "train_cpu",
        "model": "784-512-256-10 ReLU MLP, softmax cross-entropy, Adam lr 1e-3 (eps 1e-7), float32",
        "data": {"source": source, "samples": int(x.shape[0])},
        "quick": quick,
        "repeats": repeats,
        "loops": {
            "nnxp_numpy": "Sequential.fit(x, y, epochs=1, batch_size=B, shuffle=True, verbose=0) per timed epoch, "
                          "nnxp's compiled loops off (as without the fast extra)",
            "nnxp_fast": "the same with the fast extra's Numba loops on",
            "careful_numpy": "CarefulNumpyMLP.epoch: the hand-written NumPy MLP (see its docstring)",
            "torch": "in a child process: torch.randperm each epoch; per batch index_select, forward, "
                     "CrossEntropyLoss, zero_grad(set_to_none=True), backward, Adam step, loss.item()",
            "sklearn": "MLPClassifier(solver='adam', alpha=0, batch_size=B).partial_fit on float32 data (one epoch)",
        },
        "max_foreign_cpus": max_foreign,
        "environment": {**environment(), **peer.info, "sklearn": sk_version},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not peer.ok:
        result["torch_error"] = peer.error
    micro = 3 if quick else 7
    with numba_mode(True):
        result["adam_step"] = nnxp_adam_alone(sampler, micro)
    result["adam_step"]["memory_floor"] = adam_memory_floor(sampler, micro)
    fused = getattr(O, "_numba_kernels", {}).get("adam") is not None  # decided by the first large step
    result["environment"]["nnxp_adam_cpu_path"] = "Numba fused loop" if fused else "NumPy reference (adam_ref)"
    if peer.ok:
        a = result["adam_step"]
        a.update(peer.call("adam", micro))
        a["nnxp_over_torch_time"] = a["nnxp_ms"] / a["torch_best_ms"]
        a["nnxp_over_torch_time_cold"] = a["nnxp_cold_ms"] / a["torch_best_cold_ms"]
    result["batches"] = {}
    sk_repeats = 1 if quick else max(1, min(repeats, 3))  # it is the slowest; fewer epochs
    for batch in batches:
        row: dict = {"batch": batch, "steps_per_epoch": -(-x.shape[0] // batch)}
        models = {"nnxp_numpy": nnxp_model(), "nnxp_fast": nnxp_model()}
        for impl, model in models.items():  # allocates its buffers, compiles (or loads) the loops
            with numba_mode(impl == "nnxp_fast"):
                model.fit(x[: 4 * batch], y[: 4 * batch], epochs=1, batch_size=batch, verbose=0)
        careful = careful_mlp(batch)
        careful.epoch(x[: 4 * batch], y[: 4 * batch])
        skl = None
        if sk_version is not None:
            skl = SklearnTrainer(x, y, batch)
            skl.epoch(min(n, 4 * batch))
            row["sklearn_weights_dtype"] = skl.weights_dtype
        if peer.ok:
            row["torch_adam_choice"] = peer.call("prepare", batch, quick)
            row["torch_adam"] = row["torch_adam_choice"]["best"]
        epochs: dict[str, list] = {k: [] for k in IMPLS}
        foreign: list[float] = []
        runners: dict[str, Callable[[], tuple[float, float]]] = {
            impl: partial(_sampled, sampler, in_mode(impl == "nnxp_fast", partial(nnxp_epoch, models[impl], x, y,
                                                                                  batch)))
            for impl in ("nnxp_numpy", "nnxp_fast")}
        runners["careful_numpy"] = partial(_sampled, sampler, partial(careful.epoch, x, y))
        if peer.ok:
            runners["torch"] = partial(peer.call, "epoch", batch)
        if skl is not None:
            runners["sklearn"] = partial(_sampled, sampler, skl.epoch)
        names = list(runners)
        for r in range(repeats):  # interleaved, so slow spells hit every implementation alike
            # and rotated, so no implementation always runs right after the same one (whose threads may still spin)
            for impl in names[r % len(names):] + names[: r % len(names)]:
                if impl == "sklearn" and r >= sk_repeats:
                    continue
                t, f = runners[impl]()
                epochs[impl].append(t), foreign.append(f)
        row["epoch_s"] = {k: v for k, v in epochs.items() if v}
        row["samples_per_s"] = {k: x.shape[0] / statistics.median(v) for k, v in row["epoch_s"].items()}
        row["ms_per_step"] = {k: 1e3 * statistics.median(v) / row["steps_per_epoch"]
                              for k, v in row["epoch_s"].items()}
        sp = row["samples_per_s"]
        # speed ratios (>1: the first is faster), all from this one run
        row["ratios"] = {f"{a}_over_{b}": sp[a] / sp[b] for a, b in (
            ("nnxp_numpy", "careful_numpy"), ("nnxp_fast", "careful_numpy"), ("nnxp_fast", "nnxp_numpy"),
            ("nnxp_numpy", "torch"), ("nnxp_fast", "torch"), ("nnxp_numpy", "sklearn"), ("nnxp_fast", "sklearn"),
            ("careful_numpy", "torch")) if a in sp and b in sp}
        row["foreign_cpus_max"] = max(foreign)
        # what each timed fit call pays once, whatever its epochs: validation of x and y (a pass over x), setup;
        # fit(epochs=N) pays it once, so the per-epoch cost inside a longer fit is the epoch time less this
        fixed = partial(models["nnxp_numpy"].fit, x, y, epochs=1, initial_epoch=1, batch_size=batch, verbose=0)
        row["nnxp_fit_call_s"] = statistics.median(sampler.sample(fixed)[0] for _ in range(3))
        # most of it is the finiteness check of x, one read pass over the data set (bad input gets a clear error
        # before any weight moves); the careful MLP checks nothing
        row["nnxp_input_check_s"] = statistics.median(
            sampler.sample(partial(check_finite, x, "x", "float32"))[0] for _ in range(3))
        for impl in ("nnxp_numpy", "nnxp_fast"):
            if "careful_numpy" in row["epoch_s"]:
                row["ratios"][f"{impl}_over_careful_numpy_within_a_longer_fit"] = (
                    statistics.median(row["epoch_s"]["careful_numpy"])
                    / (statistics.median(row["epoch_s"][impl]) - row["nnxp_fit_call_s"]))
        steps = max(1, min(8 if quick else 60, x.shape[0] // batch))
        # nnxp's step phase by phase in each mode and the careful MLP's, interleaved round by round (one sample
        # each per round, the median over rounds), so slow spells hit them alike; the threaded row forces the
        # threaded loops on (they are off by default: threaded_by_default says so), measured beside the serial
        modes = {"nnxp_numpy": (False, None), "nnxp_fast": (True, None), "nnxp_fast_threaded": (True, True)}
        rounds: dict[str, list[dict]] = {k: [] for k in (*modes, "careful_numpy")}
        for r in range(repeats):
            for name, (fast, threaded) in modes.items():
                model = models["nnxp_fast" if fast else "nnxp_numpy"]
                rounds[name].append(sampler.sample(in_mode(fast, partial(nnxp_step_parts, model, x, y, batch, steps,
                                                                         r), threaded))[2])
            rounds["careful_numpy"].append(sampler.sample(partial(careful_step_parts, careful, x, y, batch, steps,
                                                                  r))[2])
        row["step_ms"] = {k: {p: statistics.median(d[p] for d in v) for p in PHASES} for k, v in rounds.items()
                          if k != "careful_numpy"}
        row["careful_step_ms"] = {p: statistics.median(d[p] for d in rounds["careful_numpy"]) for p in PHASES}
        # NumPy alone against the careful MLP, phase by phase (ms more than the careful MLP's; < 0: less)
        row["nnxp_numpy_minus_careful_ms"] = {p: row["step_ms"]["nnxp_numpy"][p] - row["careful_step_ms"][p]
                                              for p in PHASES}
        in_step = {}
        for name, (fast, threaded) in (("nnxp_numpy", (False, None)), ("nnxp_fast", (True, None))):
            model = models["nnxp_fast" if fast else "nnxp_numpy"]
            got = [sampler.sample(in_mode(fast, partial(optimizer_in_step, model, x, y, batch, 2 * steps),
                                          threaded))[2] for _ in range(max(1, repeats))]
            in_step[name] = {k: statistics.median(d[k] for d in got) for k in got[0]}
        row["gemms_numpy"] = time_gemms(sampler, gemm_calls_numpy(batch), batch, micro, 4 if quick else 15)
        if peer.ok:
            row["gemms_torch"] = peer.call("gemms", batch, micro)
        g = row["gemms_numpy"]["ms"]
        row["step_over_gemms"] = {k: v["step"] / g for k, v in row["step_ms"].items()}
        row["step_over_cold_gemms"] = {k: v["step"] / row["gemms_numpy"]["ms_cold"] for k, v in row["step_ms"].items()}
        each = row["gemms_numpy"]["each_ms"]
        fwd_g = sum(t for name, t in each.items() if name.startswith("fwd"))
        # what each phase spends beyond its GEMMs (timed alone, so with warm caches: a lower bound for the GEMMs)
        row["beyond_gemms_ms"] = {k: {"forward": v["forward"] - fwd_g, "loss": v["loss"],
                                      "backward": v["backward"] - (sum(each.values()) - fwd_g),
                                      "optimizer": v["optimizer"], "step": v["step"] - g}
                                  for k, v in row["step_ms"].items()}
        row["fit_step_over_gemms"] = {k: v / g for k, v in row["ms_per_step"].items()
                                      if k in ("nnxp_numpy", "nnxp_fast", "careful_numpy")}
        # the best any library on NumPy's GEMMs could do: nothing but those GEMMs, every step
        row["gemm_bound_samples_per_s"] = batch / (g / 1e3)
        # ... and the best a step can do that also updates its weights: the GEMMs plus Adam's bytes streamed once
        # (the optimizer runs right after the backward GEMMs, so the cold floor is the one a step meets)
        floor = result["adam_step"]["memory_floor"]
        row["optimizer_floor"] = {
            "floor_ms": floor["floor_ms"], "floor_cold_ms": floor["floor_cold_ms"],
            "optimizer_pass_ms": {k: v["optimizer"] for k, v in row["step_ms"].items()},
            "gemms_plus_floor_over_gemms": (g + floor["floor_ms"]) / g,
            "gemms_plus_cold_floor_over_gemms": (g + floor["floor_cold_ms"]) / g,
            # measured inside the step, right after the backward GEMMs (optimizer_in_step)
            "in_step": in_step,
            "floor_in_step_ms": in_step["nnxp_fast"]["floor_ms"],
            "gemms_plus_in_step_floor_over_gemms": (g + in_step["nnxp_fast"]["floor_ms"]) / g,
        }
        result["batches"][str(batch)] = row
    peer_counts = peer.close()
    result["samples_retaken"] = sampler.retaken + peer_counts.get("retaken", 0)
    result["samples_kept_noisy"] = sampler.kept_dirty + peer_counts.get("kept_noisy", 0)
    if memory:
        mem_batch = 128
        peers = () if quick else ("torch",) * peer.ok + ("sklearn",) * bool(sk_version)
        result["memory"] = {impl: run_child("memory", impl, mem_batch, n)
                            for impl in ("nnxp_numpy", "nnxp_fast", "careful_numpy", *peers)}
        ref = result["memory"].get("careful_numpy", {})
        for m in result["memory"].values():
            if ref.get("peak_rss_training_mib") and m.get("peak_rss_training_mib"):
                m["peak_over_careful"] = m["peak_rss_training_mib"] / ref["peak_rss_training_mib"]
        result["memory_fixed_cost"] = numba_fixed_cost(result["memory"])
    if jit:
        result["compile_latency"] = compile_latency(128, n)
    result["environment"]["numba_threading"] = numba_threading()
    result["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["targets"] = {} if quick else targets(result)  # a 4,096-sample slice judges nothing
    return result


def numpy_only(quick: bool, repeats: int, batches: list[int], max_foreign: float, samples: int | None = None) -> dict:
    """Issue 15's first target alone, quickly: nnxp with NumPy alone against the careful NumPy MLP, nothing else.

    Per batch size: `repeats` epochs of each, interleaved (the order alternating each round), then the step phase by
    phase in the same way (``max(3, repeats)`` rounds of up to 60 steps each, median over rounds). No PyTorch,
    scikit-learn, fast extra, GEMM, memory or compile runs: ``run`` does those.
    """
    n = 4096 if quick else min(samples or 60000, 60000)
    x, y, source = load_data(n)
    sampler = Sampler(max_foreign, 0 if quick else 6)
    result: dict = {
        "benchmark": "train_cpu --numpy-only",
        "model": "784-512-256-10 ReLU MLP, softmax cross-entropy, Adam lr 1e-3 (eps 1e-7), float32",
        "data": {"source": source, "samples": int(x.shape[0])},
        "quick": quick, "repeats": repeats, "max_foreign_cpus": max_foreign,
        "environment": environment(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "batches": {},
    }
    for batch in batches:
        model = nnxp_model()
        with numba_mode(False):  # allocates its buffers
            model.fit(x[: 4 * batch], y[: 4 * batch], epochs=1, batch_size=batch, verbose=0)
        careful = careful_mlp(batch)
        careful.epoch(x[: 4 * batch], y[: 4 * batch])
        runners = {"nnxp_numpy": in_mode(False, partial(nnxp_epoch, model, x, y, batch)),
                   "careful_numpy": partial(careful.epoch, x, y)}
        epochs: dict[str, list[float]] = {k: [] for k in runners}
        foreign: list[float] = []
        for r in range(repeats):
            for impl in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
                t, f = _sampled(sampler, runners[impl])
                epochs[impl].append(t), foreign.append(f)
        steps = max(1, min(8 if quick else 60, x.shape[0] // batch))
        parts = {"nnxp_numpy": partial(nnxp_step_parts, model, x, y, batch, steps),
                 "careful_numpy": partial(careful_step_parts, careful, x, y, batch, steps)}
        rounds: dict[str, list[dict]] = {k: [] for k in parts}
        for r in range(max(3, repeats)):
            for impl in (list(parts) if r % 2 == 0 else list(parts)[::-1]):  # neither always runs first
                fn = partial(parts[impl], seed=r)
                rounds[impl].append(sampler.sample(in_mode(False, fn) if impl == "nnxp_numpy" else fn)[2])
        step_ms = {k: {p: statistics.median(d[p] for d in v) for p in PHASES} for k, v in rounds.items()}
        speed = {k: x.shape[0] / statistics.median(v) for k, v in epochs.items()}
        result["batches"][str(batch)] = {
            "batch": batch, "steps_per_epoch": -(-x.shape[0] // batch), "epoch_s": epochs, "samples_per_s": speed,
            "nnxp_numpy_over_careful_numpy": speed["nnxp_numpy"] / speed["careful_numpy"],
            "step_ms": step_ms,
            # > 1: nnxp's step is the faster
            "careful_over_nnxp_step_time": step_ms["careful_numpy"]["step"] / step_ms["nnxp_numpy"]["step"],
            "foreign_cpus_max": max(foreign),
        }
    result["samples_retaken"], result["samples_kept_noisy"] = sampler.retaken, sampler.kept_dirty
    result["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return result


def numpy_only_markdown(result: dict) -> str:
    lines = [f"nnxp with NumPy alone against the careful NumPy MLP: {result['data']['samples']:,} samples, median of "
             f"{result['repeats']} interleaved epochs; step phases median of interleaved rounds. Samples retaken "
             f"for other processes' load: {result['samples_retaken']} (kept noisy: {result['samples_kept_noisy']})."
             + (" A --quick smoke run: its numbers judge nothing." if result["quick"] else ""),
             "", "| batch | NumPy alone (samples/s) | careful (samples/s) | epoch ratio | step ms NumPy alone / "
             "careful | step ratio |", "|---:|---:|---:|---:|---:|---:|"]
    for row in result["batches"].values():
        sp, st = row["samples_per_s"], row["step_ms"]
        lines.append(f"| {row['batch']} | {sp['nnxp_numpy']:,.0f} | {sp['careful_numpy']:,.0f} | "
                     f"{row['nnxp_numpy_over_careful_numpy']:.3f}x | {st['nnxp_numpy']['step']:.3f} / "
                     f"{st['careful_numpy']['step']:.3f} | {row['careful_over_nnxp_step_time']:.3f}x |")
    lines += ["", "Phases, ms (NumPy alone / careful):", "", "| batch | " + " | ".join(PHASES) + " |",
              "|---:|" + "---:|" * len(PHASES)]
    for row in result["batches"].values():
        a, c = row["step_ms"]["nnxp_numpy"], row["step_ms"]["careful_numpy"]
        lines.append(f"| {row['batch']} | " + " | ".join(f"{a[p]:.3f} / {c[p]:.3f}" for p in PHASES) + " |")
    return "\n".join(lines)


def numba_threading() -> dict | None:
    """Numba's thread pool as the fast extra's threaded loops used it (None where Numba is not importable).

    Asks without starting a pool: numba.get_num_threads() launches the default layer (OpenMP where available)
    when none runs yet, which once made this report "omp" for a run whose loops were all serial.
    """
    try:
        import numba
    except ImportError:
        return None
    from nnxp.ops import dense as D

    out = {"NUMBA_NUM_THREADS": numba.config.NUMBA_NUM_THREADS,
           "threaded_loops_by_default": threaded_by_default(),
           "parallel_min": {"dense_elements": D.PARALLEL_MIN_ELEMENTS, "optimizer_size": O.PARALLEL_MIN_SIZE},
           "forced_threaded_min": THREADED_MIN}
    try:
        out["layer"] = numba.threading_layer()  # started by the forced threaded row (nnxp_fast_threaded)
        out["num_threads"] = numba.get_num_threads()
    except ValueError:  # no threaded loop ran: no pool was started
        out["layer"] = out["num_threads"] = None
    return out


def targets(result: dict) -> dict:
    """Issue 15's targets, judged on this run's numbers."""
    b = result["batches"]
    out = {}
    for batch in ("128", "1024"):
        r = b.get(batch, {}).get("ratios", {})
        if "nnxp_numpy_over_careful_numpy" in r:
            out[f"batch {batch}: NumPy alone >= 1.0x the careful NumPy MLP"] = r["nnxp_numpy_over_careful_numpy"] >= 1.0
    for batch, limit in (("128", 1.15), ("1024", 1.05)):
        if batch in b:
            out[f"batch {batch}: fast step <= {limit}x its GEMMs"] = b[batch]["step_over_gemms"]["nnxp_fast"] <= limit
    r = b.get("128", {}).get("ratios", {})
    if "nnxp_fast_over_careful_numpy" in r:
        out["batch 128: fast >= 1.15x the careful NumPy MLP"] = r["nnxp_fast_over_careful_numpy"] >= 1.15
    mem = result.get("memory", {})
    for impl in ("nnxp_numpy", "nnxp_fast"):
        if "peak_over_careful" in mem.get(impl, {}):
            out[f"peak RSS of a training run ({impl}) <= 1.10x the careful NumPy MLP's"] = \
                mem[impl]["peak_over_careful"] <= 1.10
    fixed = result.get("memory_fixed_cost", {})
    if "peak_net_of_fixed_over_careful" in fixed:
        out["peak RSS (nnxp_fast) net of the fast extra's fixed cost <= 1.10x the careful NumPy MLP's"] = \
            fixed["peak_net_of_fixed_over_careful"] <= 1.10
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    blas = env.get("numpy_blas") or {}
    lines = ["A --quick smoke run (4,096 samples, one sample each, no retakes): its numbers judge nothing."] * bool(
        result["quick"]) + [
        f"CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs. NumPy {env['numpy']} "
        f"({blas.get('internal_api', '?')} {blas.get('version', '')}, kernel {blas.get('architecture', '?')}, "
        f"{env.get('numpy_threads', '?')} threads); Numba {env.get('numba')} ({env.get('numba_threading')}); "
        f"PyTorch {env['torch']} ({env.get('torch_threads', '?')} threads, {env.get('torch_blas', '?')}, "
        f"{env.get('torch_cpu_capability', '?')}); scikit-learn {env.get('sklearn')}. "
        f"OPENBLAS_CORETYPE={env['env']['OPENBLAS_CORETYPE']}, OPENBLAS_L2_SIZE={env['env']['OPENBLAS_L2_SIZE']}.",
        f"Data: {result['data']['source']}, {result['data']['samples']:,} samples; one epoch, median of "
        f"{result['repeats']} (scikit-learn: fewer), all implementations interleaved. Samples retaken for other "
        f"processes' load: {result['samples_retaken']} (kept noisy: {result['samples_kept_noisy']}).",
        "",
        "Training throughput, samples/s (higher is better):",
        "",
        "| batch | nnxp, NumPy alone | nnxp with `fast` | careful NumPy MLP | PyTorch eager | scikit-learn "
        "| NumPy alone / careful | fast / careful | fast / PyTorch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(d: dict, k: str, fmt: str = "{:,.0f}") -> str:
        return fmt.format(d[k]) if k in d else "-"

    for row in result["batches"].values():
        sp, r = row["samples_per_s"], row["ratios"]
        lines.append(f"| {row['batch']} | " + " | ".join(cell(sp, k) for k in IMPLS) + " | "
                     + " | ".join(cell(r, k, "{:.2f}x") for k in ("nnxp_numpy_over_careful_numpy",
                                                                  "nnxp_fast_over_careful_numpy",
                                                                  "nnxp_fast_over_torch")) + " |")
    lines += ["", "Each timed epoch is one `fit` call, which also validates x and y once (a pass over x) and sets "
              "up: " + ", ".join(f"{r['nnxp_fit_call_s'] * 1e3:.0f} ms at batch {r['batch']} (of which the "
                                 f"finiteness check of x {r.get('nnxp_input_check_s', float('nan')) * 1e3:.0f} ms)"
                                 for r in result["batches"].values())
              + ". Inside `fit(epochs=N)` that is paid once; per epoch there, NumPy alone / careful = "
              + ", ".join(f"{r['ratios'].get('nnxp_numpy_over_careful_numpy_within_a_longer_fit', float('nan')):.2f}x"
                          f" (batch {r['batch']})" for r in result["batches"].values()) + "."]
    lines += ["", "One step (ms: median over full batches, then over interleaved rounds) against its GEMMs alone; "
              "the step is forward + loss + backward + optimizer (the gather apart). Threaded loops by default: "
              f"{(env.get('numba_threading') or {}).get('threaded_loops_by_default')}; the threaded column forces "
              "them on:", "",
              "| batch | GEMMs alone | NumPy alone | fast | fast, threaded loops | careful MLP | NumPy alone / GEMMs "
              "| fast / GEMMs | fast threaded / GEMMs | fast beyond its GEMMs: forward / loss / backward / optimizer |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|"]
    for row in result["batches"].values():
        s, q = row["step_ms"], row["step_over_gemms"]
        f = row["beyond_gemms_ms"]["nnxp_fast"]
        lines.append(f"| {row['batch']} | {row['gemms_numpy']['ms']:.2f} | {s['nnxp_numpy']['step']:.2f} | "
                     f"{s['nnxp_fast']['step']:.2f} | {s['nnxp_fast_threaded']['step']:.2f} | "
                     f"{row['careful_step_ms']['step']:.2f} | {q['nnxp_numpy']:.3f} | "
                     f"{q['nnxp_fast']:.3f} | {q['nnxp_fast_threaded']:.3f} | {f['forward']:.2f} / {f['loss']:.2f} / "
                     f"{f['backward']:.2f} / {f['optimizer']:.2f} |")
    lines += ["", "NumPy alone against the careful MLP, phase by phase in the same rounds (ms per step, nnxp / "
              "careful):",
              "", "| batch | " + " | ".join(PHASES) + " |", "|---:|" + "---:|" * len(PHASES)]
    for row in result["batches"].values():
        s, c = row["step_ms"]["nnxp_numpy"], row["careful_step_ms"]
        lines.append(f"| {row['batch']} | " + " | ".join(f"{s[p]:.2f} / {c[p]:.2f}" for p in PHASES) + " |")
    lines += ["", "The optimizer's floor: Adam streams p, g, m, v in and p, m, v out (28 bytes a parameter); the same "
              "bytes streamed by three in-place ufuncs set the least an optimizer pass can cost here, alone (warm, "
              "and after a 64 MB stream: cold) and inside the step right after the backward GEMMs (alternate steps "
              "time the floor and the optimizer there), and the GEMMs plus that floor the least a step can cost:", "",
              "| batch | GEMMs warm / cold | optimizer floor alone warm / cold | floor in the step "
              "| optimizer in the step: NumPy alone / fast "
              "| optimizer pass (phase timing): NumPy alone / fast / fast threaded "
              "| (GEMMs + floor) / GEMMs: warm / cold / in the step | fast step / GEMMs (warm; cold) |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["batches"].values():
        o = row["optimizer_floor"]
        op, ins = o["optimizer_pass_ms"], o["in_step"]
        lines.append(f"| {row['batch']} | {row['gemms_numpy']['ms']:.2f} / {row['gemms_numpy']['ms_cold']:.2f} | "
                     f"{o['floor_ms']:.3f} / "
                     f"{o['floor_cold_ms']:.3f} | {o['floor_in_step_ms']:.3f} | {ins['nnxp_numpy']['optimizer_ms']:.3f}"
                     f" / {ins['nnxp_fast']['optimizer_ms']:.3f} | {op['nnxp_numpy']:.3f} / {op['nnxp_fast']:.3f} / "
                     f"{op['nnxp_fast_threaded']:.3f} | {o['gemms_plus_floor_over_gemms']:.3f} / "
                     f"{o['gemms_plus_cold_floor_over_gemms']:.3f} / {o['gemms_plus_in_step_floor_over_gemms']:.3f} | "
                     f"{row['step_over_gemms']['nnxp_fast']:.3f} (cold GEMMs: "
                     f"{row['step_over_cold_gemms']['nnxp_fast']:.3f}) |")
    a = result["adam_step"]
    lines += ["", f"Adam step alone, {a['params']:,} float32 parameters (ms, warm / cold cache): nnxp "
              f"({env.get('nnxp_adam_cpu_path')}) {a['nnxp_ms']:.3f} / {a['nnxp_cold_ms']:.3f}; NumPy reference "
              f"{a['nnxp_adam_ref_ms']:.3f} / {a['nnxp_adam_ref_cold_ms']:.3f}"
              + (f"; torch ({a['torch_best']}) {a['torch_best_ms']:.3f} / {a['torch_best_cold_ms']:.3f}"
                 if "torch_best" in a else "") + "."]
    if result.get("memory"):
        lines += ["", "Peak memory of one Fashion-MNIST training epoch (batch 128), each in a fresh process (MiB):",
                  "", "| implementation | RSS with the data loaded | peak while training | training peak above the "
                  "data | peak / careful's |", "|:--|---:|---:|---:|---:|"]
        for impl, m in result["memory"].items():
            if "error" in m:
                lines.append(f"| {impl} | error | | | |")
                continue
            lines.append(f"| {impl} | {m['rss_after_data_mib']:.0f} | {m['peak_rss_training_mib']:.0f} | "
                         f"{m['peak_above_data_mib']:.0f} | {m.get('peak_over_careful', float('nan')):.3f} |")
    fx = result.get("memory_fixed_cost", {})
    if "fixed_mib" in fx:
        lines += ["", f"The fast extra's fixed memory (fresh processes, no data set): importing Numba (with llvmlite) "
                  f"adds {fx['numba_import_mib']:.0f} MiB; a short fit with its loops loaded from the on-disk cache "
                  f"peaks {fx['fixed_mib']:.0f} MiB above the same fit with NumPy alone. It does not grow with the "
                  "data set."]
        if "peak_over_careful" in fx:
            lines[-1] += (f" Peak / careful's: {fx['peak_over_careful']:.3f} raw, "
                          f"{fx['peak_net_of_fixed_over_careful']:.3f} net of that fixed cost; the excess over the "
                          f"careful MLP ({fx['excess_over_careful_mib']:.0f} MiB) is within 10% from "
                          f"{fx['samples_for_10_percent']:,} Fashion-MNIST-sized samples in RAM "
                          f"({fx['samples_for_10_percent_fixed_only']:,} counting only the fixed cost).")
    c = result.get("compile_latency")
    if c and "compile_s_total_cold" in c:
        lines += ["", f"Compile latency (batch {c['batch']}, fresh processes): the fast extra's loops took "
                  f"{c['compile_s_total_cold']:.2f} s to compile on their first calls with an empty cache and "
                  f"{c['compile_s_total_warm']:.2f} s to load from the on-disk cache in a second process. First "
                  f"epoch / second epoch: {c['cold_cache']['first_epoch_s']:.2f} / "
                  f"{c['cold_cache']['second_epoch_s']:.2f} s (cold cache), {c['warm_cache']['first_epoch_s']:.2f} / "
                  f"{c['warm_cache']['second_epoch_s']:.2f} s (warm cache), "
                  f"{c['numpy_alone']['first_epoch_s']:.2f} / {c['numpy_alone']['second_epoch_s']:.2f} s "
                  "(NumPy alone)."]
    if result["targets"]:
        lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in result["targets"].items())]
    return "\n".join(lines)


def batch_sizes(text: str) -> list[int]:
    """``--batches``: comma-separated positive integers."""
    sizes = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            if not part.isdigit() or int(part) < 1:
                raise argparse.ArgumentTypeError(f"{part!r} is not a positive integer")
            sizes.append(int(part))
    if not sizes:
        raise argparse.ArgumentTypeError(f"no batch size given in {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="a small slice (4,096 samples, one repeat, no retakes, no compile-latency runs) for smoke "
                         "runs: it shows the benchmark runs, its numbers judge nothing")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--repeats", type=int, default=5, help="epochs timed per library and batch size (median)")
    ap.add_argument("--batches", type=batch_sizes, default=None,
                    help="comma-separated batch sizes (default 32,128,1024,8192; with --quick those up to 4,096)")
    ap.add_argument("--max-foreign", type=float, default=0.2,
                    help="retake a sample when other processes used more than this many CPUs meanwhile (default "
                         "%(default)s; --quick never retakes)")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS runs (one process per library)")
    ap.add_argument("--no-jit", action="store_true", help="skip the compile-latency runs (three processes)")
    ap.add_argument("--numpy-only", action="store_true",
                    help="only nnxp with NumPy alone against the careful NumPy MLP (epochs and step phases): no "
                         "PyTorch, scikit-learn, fast extra, memory or compile runs, so much shorter")
    ap.add_argument("--samples", type=int, default=None, help="with --numpy-only: train on the first N samples")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    ap.add_argument("--jit-child", help=argparse.SUPPRESS)
    ap.add_argument("--numba-rss-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    children = {memory_child: args.memory_child, jit_child: args.jit_child, numba_rss_child: args.numba_rss_child}
    for fn, child_args in children.items():  # a child of run_child: answer one JSON line
        if child_args:
            print(json.dumps(fn(*json.loads(child_args))))
            return 0
    samples = 4096 if args.quick else min(args.samples or 60000, 60000) if args.numpy_only else 60000
    batches = args.batches or [b for b in (32, 128, 1024, 8192) if b <= samples]
    for b in batches:  # refused before anything runs (a larger batch than the data once failed deep in a run)
        if b > samples:
            ap.error(f"--batches: {b} is larger than the {samples:,} samples this run trains on"
                     + (" (--quick trains on 4,096)" if args.quick else ""))
    if args.numpy_only:
        result = numpy_only(args.quick, 1 if args.quick else max(1, args.repeats), batches, args.max_foreign,
                            args.samples)
        text = numpy_only_markdown(result)
    else:
        result = run(args.quick, max(1, args.repeats), batches, args.max_foreign, memory=not args.no_memory,
                     jit=not (args.no_jit or args.quick))
        text = markdown(result)
    emit(result, text, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
