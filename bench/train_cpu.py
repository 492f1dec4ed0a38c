"""CPU training throughput: nnxp against PyTorch eager, in one run, on one machine.

Trains a 784-512-256-10 ReLU MLP (softmax cross-entropy, Adam lr 1e-3, float32)
for one epoch of Fashion-MNIST (60,000 images) at batch 128 and 1024 with
nnxp's ``Sequential.fit`` and with the idiomatic PyTorch loop (same initial
weights, a new shuffle each epoch, data already tensors, as many threads as
NumPy's BLAS), epochs of the two interleaved in one run; PyTorch runs in a child
process so the two libraries' thread pools never share one. The run also times
the GEMMs one training step needs, alone (NumPy and PyTorch, preallocated
outputs), and one Adam update alone over the whole parameter set, so the ratios
say where the time goes.

    python bench/train_cpu.py [--quick] [--json OUT]

Where OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are set (workarounds for old OpenBLAS
builds) run it as ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
bench/train_cpu.py``: they make a current NumPy pick a slower kernel.

Shared machines are noisy, so every timed sample also measures how much CPU
*other* processes used meanwhile (``/proc/stat`` minus this process); samples
taken while others used more than ``--max-foreign`` CPUs are retaken (up to a
limit) and the counts are reported. The JSON records the environment: CPU,
threads, BLAS and its kernel, versions and those variables.
"""

from __future__ import annotations

import argparse
import gzip
import json
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
from bench._env import cpu_model  # noqa: E402
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
        for _ in range(self.max_retakes + 1):
            with Timer() as t:
                value = fn()
            if best is None or t.foreign < best[1]:
                best = (t.wall, t.foreign, value)
            if t.foreign <= self.max_foreign:
                return best
            self.retaken += 1
        self.kept_dirty += 1
        return best


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


def nnxp_step_parts(model: nnxp.Sequential, x: np.ndarray, y: np.ndarray, batch: int, steps: int) -> dict:
    """Median ms per full batch of forward / loss / backward / optimizer, through the internals fit calls."""
    parts: dict[str, list[float]] = {"forward": [], "loss": [], "backward": [], "optimizer": [], "step": []}
    last = len(model.layers) - 1
    for i in range(steps):
        xb, yb = x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]
        t0 = time.perf_counter()
        out = model._forward(xb, training=True)
        t1 = time.perf_counter()
        loss, dy = model._loss_and_grad(out, yb)
        float(loss)  # fit reads it each batch too
        t2 = time.perf_counter()
        for j in range(last, -1, -1):
            dy = model.layers[j].backward(dy, need_dx=j > 0)
        t3 = time.perf_counter()
        model.optimizer.apply(model.params, model.grads)
        t4 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            parts[key].append(1e3 * dt)
    return {k: statistics.median(v) for k, v in parts.items()}


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
        W, g = self.params, self.grads
        h = [a[:nb] for a in self.h]
        y = self.yb[:nb]
        for i in range(3):
            np.matmul(h[i], W[2 * i], out=h[i + 1])
            h[i + 1] += W[2 * i + 1]
            if i < 2:
                np.maximum(h[i + 1], 0, out=h[i + 1])
        z, rows = h[3], np.arange(nb)
        z -= z.max(axis=1, keepdims=True)
        picked = z[rows, y]
        np.exp(z, out=z)
        s = z.sum(axis=1, keepdims=True)
        loss = float((np.log(s[:, 0]) - picked).mean())
        z /= s
        z[rows, y] -= 1.0
        z *= 1.0 / nb
        dz = z
        for i in (2, 1, 0):
            np.matmul(h[i].T, dz, out=g[2 * i])
            dz.sum(axis=0, out=g[2 * i + 1])
            if i > 0:
                dh = self.dh[i][:nb]
                np.matmul(dz, W[2 * i].T, out=dh)
                np.multiply(dh, h[i] > 0, out=dh)
                dz = dh
        self.adam()
        return loss

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
            idx = perm[start : start + self.batch]
            nb = idx.shape[0]
            np.take(x, idx, axis=0, out=self.h[0][:nb])
            np.take(y, idx, axis=0, out=self.yb[:nb])
            total += self.step(nb) * nb
        return total / n


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


def time_gemms(sampler: Sampler, calls: list, batch: int, repeats: int) -> dict:
    def all_gemms() -> None:
        for _, f in calls:
            f()

    inner = max(2, 8192 // batch)
    total = median_call_s(sampler, all_gemms, repeats, inner)
    each = {name: 1e3 * median_call_s(sampler, f, repeats, inner) for name, f in calls}
    return {"count": len(calls), "ms": 1e3 * total, "gflops": gemm_flops(batch) / total / 1e9, "each_ms": each}


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
                out = time_gemms(sampler, gemm_calls_torch(torch, args[0]), *args)
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


# --- the run ------------------------------------------------------------------------------------


def run(quick: bool, repeats: int, batches: list[int], max_foreign: float) -> dict:
    threads = int(numpy_blas().get("num_threads") or os.cpu_count() or 1)
    n = 4096 if quick else 60000
    x, y, source = load_data(n)
    repeats = 1 if quick else repeats
    max_retakes = 0 if quick else 6
    sampler = Sampler(max_foreign, max_retakes)
    peer = TorchPeer(n, threads, max_foreign, max_retakes)
    result: dict = {
        "benchmark": "train_cpu",
        "model": "784-512-256-10 ReLU MLP, softmax cross-entropy, Adam lr 1e-3 (eps 1e-7), float32",
        "data": {"source": source, "samples": int(x.shape[0])},
        "quick": quick,
        "repeats": repeats,
        "loops": {
            "nnxp": "Sequential.fit(x, y, epochs=1, batch_size=B, shuffle=True, verbose=0) per timed epoch",
            "torch": "in a child process: torch.randperm each epoch; per batch index_select, forward, "
                     "CrossEntropyLoss, zero_grad(set_to_none=True), backward, Adam step, loss.item()",
        },
        "max_foreign_cpus": max_foreign,
        "environment": {**environment(), **peer.info},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if not peer.ok:
        result["torch_error"] = peer.error
    micro = 3 if quick else 7
    result["adam_step"] = nnxp_adam_alone(sampler, micro)
    fused = getattr(O, "_numba_kernels", {}).get("adam") is not None  # decided by the first large step
    result["environment"]["nnxp_adam_cpu_path"] = "Numba fused loop" if fused else "NumPy reference (adam_ref)"
    if peer.ok:
        a = result["adam_step"]
        a.update(peer.call("adam", micro))
        a["nnxp_over_torch_time"] = a["nnxp_ms"] / a["torch_best_ms"]
        a["nnxp_over_torch_time_cold"] = a["nnxp_cold_ms"] / a["torch_best_cold_ms"]
    result["batches"] = {}
    for batch in batches:
        row: dict = {"batch": batch, "steps_per_epoch": -(-x.shape[0] // batch)}
        model = nnxp_model()
        model.fit(x[: 4 * batch], y[: 4 * batch], epochs=1, batch_size=batch, verbose=0)  # allocates its buffers
        if peer.ok:
            row["torch_adam_choice"] = peer.call("prepare", batch, quick)
            row["torch_adam"] = row["torch_adam_choice"]["best"]
        nn_t, nn_f, th_t, th_f = [], [], [], []
        for _ in range(repeats):  # interleaved, so slow spells hit both alike
            t, f, _ = sampler.sample(partial(nnxp_epoch, model, x, y, batch))
            nn_t.append(t), nn_f.append(f)
            if peer.ok:
                t, f = peer.call("epoch", batch)
                th_t.append(t), th_f.append(f)
        row["nnxp_epoch_s"] = statistics.median(nn_t)
        row["nnxp_epoch_samples_s"] = nn_t
        row["nnxp_samples_per_s"] = x.shape[0] / row["nnxp_epoch_s"]
        row["nnxp_best_samples_per_s"] = x.shape[0] / min(nn_t)
        row["nnxp_fit_ms_per_step"] = 1e3 * row["nnxp_epoch_s"] / row["steps_per_epoch"]
        steps = min(60, x.shape[0] // batch)
        parts = sampler.sample(partial(nnxp_step_parts, model, x, y, batch, steps))[2]
        row["nnxp_step_ms"] = parts
        if peer.ok:
            row["torch_epoch_s"] = statistics.median(th_t)
            row["torch_epoch_samples_s"] = th_t
            row["torch_samples_per_s"] = x.shape[0] / row["torch_epoch_s"]
            row["torch_best_samples_per_s"] = x.shape[0] / min(th_t)
            row["torch_ms_per_step"] = 1e3 * row["torch_epoch_s"] / row["steps_per_epoch"]
            row["speedup_nnxp_over_torch"] = row["nnxp_samples_per_s"] / row["torch_samples_per_s"]
        row["foreign_cpus_max"] = max(nn_f + th_f)
        row["gemms_numpy"] = time_gemms(sampler, gemm_calls_numpy(batch), batch, micro)
        if peer.ok:
            row["gemms_torch"] = peer.call("gemms", batch, micro)
        row["step_over_gemms"] = parts["step"] / row["gemms_numpy"]["ms"]
        row["fit_step_over_gemms"] = row["nnxp_fit_ms_per_step"] / row["gemms_numpy"]["ms"]
        # the best any library on NumPy's GEMMs could do: nothing but those GEMMs, every step
        row["gemm_bound_samples_per_s"] = batch / (row["gemms_numpy"]["ms"] / 1e3)
        result["batches"][str(batch)] = row
    peer_counts = peer.close()
    result["samples_retaken"] = sampler.retaken + peer_counts.get("retaken", 0)
    result["samples_kept_noisy"] = sampler.kept_dirty + peer_counts.get("kept_noisy", 0)
    result["environment"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    result["targets"] = {} if quick else targets(result)  # a 4,096-sample slice judges nothing
    return result


def targets(result: dict) -> dict:
    b = result["batches"]
    out = {}
    if "128" in b and "speedup_nnxp_over_torch" in b["128"]:
        out["batch 128: nnxp >= 1.25x torch samples/s"] = b["128"]["speedup_nnxp_over_torch"] >= 1.25
    if "1024" in b:
        if "speedup_nnxp_over_torch" in b["1024"]:
            out["batch 1024: nnxp >= 1.5x torch samples/s"] = b["1024"]["speedup_nnxp_over_torch"] >= 1.5
        out["batch 1024: step <= 1.25x its GEMMs"] = b["1024"]["step_over_gemms"] <= 1.25
    return out


def markdown(result: dict) -> str:
    env = result["environment"]
    blas = env.get("numpy_blas") or {}
    lines = [
        f"CPU: {env['cpu']}, {env['logical_cpus']} logical CPUs. NumPy {env['numpy']} "
        f"({blas.get('internal_api', '?')} {blas.get('version', '')}, kernel {blas.get('architecture', '?')}, "
        f"{env.get('numpy_threads', '?')} threads); PyTorch {env['torch']} ({env.get('torch_threads', '?')} threads, "
        f"{env.get('torch_blas', '?')}, {env.get('torch_cpu_capability', '?')}). "
        f"OPENBLAS_CORETYPE={env['env']['OPENBLAS_CORETYPE']}, OPENBLAS_L2_SIZE={env['env']['OPENBLAS_L2_SIZE']}.",
        f"Data: {result['data']['source']}, {result['data']['samples']:,} samples; one epoch, median of "
        f"{result['repeats']}, nnxp and PyTorch interleaved. Samples retaken for other processes' load: "
        f"{result['samples_retaken']} (kept noisy: {result['samples_kept_noisy']}).",
        "",
        "| batch | nnxp samples/s | PyTorch samples/s | nnxp / PyTorch | PyTorch Adam | nnxp step ms "
        "| fit ms/step | GEMMs alone ms (NumPy) | step / GEMMs | GEMMs alone ms (PyTorch) |",
        "|---:|---:|---:|---:|:--|---:|---:|---:|---:|---:|",
    ]
    for row in result["batches"].values():
        ts = row.get("torch_samples_per_s")
        lines.append(
            f"| {row['batch']} | {row['nnxp_samples_per_s']:,.0f} | "
            + (f"{ts:,.0f} | {row['speedup_nnxp_over_torch']:.2f}x | {row['torch_adam']}" if ts else "- | - | -")
            + f" | {row['nnxp_step_ms']['step']:.2f} | {row['nnxp_fit_ms_per_step']:.2f} "
            f"| {row['gemms_numpy']['ms']:.2f} | {row['step_over_gemms']:.2f} | "
            + (f"{row['gemms_torch']['ms']:.2f} |" if "gemms_torch" in row else "- |")
        )
    lines += ["", "nnxp step, median over full batches (ms):", "",
              "| batch | forward | loss | backward | optimizer | step | GEMM-bound samples/s |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["batches"].values():
        s = row["nnxp_step_ms"]
        lines.append(f"| {row['batch']} | {s['forward']:.2f} | {s['loss']:.2f} | {s['backward']:.2f} | "
                     f"{s['optimizer']:.2f} | {s['step']:.2f} | {row['gemm_bound_samples_per_s']:,.0f} |")
    a = result["adam_step"]
    lines += ["", f"Adam step alone, {a['params']:,} float32 parameters (ms, warm / cold cache):", "",
              "| implementation | warm | cold |", "|:--|---:|---:|",
              f"| nnxp Adam.apply (flat buffer; {env.get('nnxp_adam_cpu_path')}) | {a['nnxp_ms']:.3f} "
              f"| {a['nnxp_cold_ms']:.3f} |",
              f"| nnxp ops.optim.adam_ref (NumPy reference) | {a['nnxp_adam_ref_ms']:.3f} "
              f"| {a['nnxp_adam_ref_cold_ms']:.3f} |"]
    for k, t in a.get("torch_ms", {}).items():
        c = a["torch_cold_ms"][k]
        lines.append(f"| torch.optim.Adam {k} | {t:.3f} | {c:.3f} |" if t is not None else
                     f"| torch.optim.Adam {k} | n/a | n/a |")
    lines += ["", f"nnxp's first Adam call in the process (state allocation, any compile): "
              f"{a['nnxp_first_call_ms']:.1f} ms"]
    if result["targets"]:
        lines += ["", "Targets: " + "; ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in result["targets"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small slice (4,096 samples, one repeat) for smoke runs")
    ap.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    ap.add_argument("--repeats", type=int, default=5, help="epochs timed per library and batch size (median)")
    ap.add_argument("--batches", type=str, default="128,1024", help="comma-separated batch sizes")
    ap.add_argument("--max-foreign", type=float, default=0.2,
                    help="retake a sample when other processes used more CPUs than this meanwhile")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    result = run(args.quick, max(1, args.repeats), batches, args.max_foreign)
    print(markdown(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
