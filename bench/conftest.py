"""The benchmark suite's machinery: cases, smoke mode, timing, GEMM floor, memory, environment.

A case is (device, model, batch size, implementation); ``pytest_generate_tests`` parametrises every
test that takes ``case``. ``measure`` times one case with pytest-benchmark and stores everything the
report needs in ``benchmark.extra_info``; the environment goes into the JSON's ``machine_info``.
Smoke mode (``--quick`` or ``NNXP_BENCH_QUICK=1``) keeps the small model at two small batch sizes.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Read before NumPy loads OpenBLAS: OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE select its kernel at load time.
_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
             "MKL_NUM_THREADS", "NNXP_BENCH_QUICK")
_START_ENV = {k: os.environ.get(k) for k in _ENV_VARS}
_START_LOAD = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nnxp  # noqa: E402
from bench._env import cpu_model  # noqa: E402
from nnxp import backend  # noqa: E402

MODELS: dict[str, tuple[int, ...]] = {
    "small": (784, 512, 256, 10),
    "large": (784, 4096, 4096, 10),
    "deep": (784,) + (1024,) * 8 + (10,),
}
BATCHES = (32, 128, 512, 2048, 8192)
QUICK_MODELS = ("small",)
QUICK_BATCHES = (32, 256)
# implementations in display order: CUDA graphs only on a GPU; scikit-learn and the per-sample loop only on the CPU
IMPLS = ("nnxp", "nnxp_cudagraph", "torch", "torch_cudagraph", "sklearn_f64", "sklearn_f32", "per_sample")
DEVICE_IMPLS = {"cpu": ("nnxp", "torch", "sklearn_f64", "sklearn_f32", "per_sample"),
                "cuda": ("nnxp", "nnxp_cudagraph", "torch", "torch_cudagraph")}
# On the CPU a case whose one timed call needs more than this many GFLOP (float64 counted twice) is
# skipped unless --all-sizes: at ~50-90 GFLOP/s on two cores it would take seconds per call.
CPU_BUDGET_GFLOP = 100.0
PER_SAMPLE_SLICE = {"small": 128, "deep": 16, "large": 8}  # examples per call of the per-sample loop
QUICK_PER_SAMPLE_SLICE = 4
SKLEARN_STEPS = 4  # Adam steps per partial_fit call: one epoch over a slice of 4 batches (at most 512 samples)
SKLEARN_EPOCH = 512
CUDA_EPOCH_BATCHES = 16  # batches per timed fit on a GPU (a graphed fit captures once per call)
QUICK_CUDA_EPOCH_BATCHES = 3  # smoke mode: warm-up, capture, one replay
TARGET_S = 1.0  # seconds of timed calls per case (within MIN_ROUNDS..MAX_ROUNDS)
WAIT_IDLE_S = 15.0  # default wait for a quiet machine before each case (shared machines)
IDLE_SHARE = 0.10  # "quiet": other processes use less than this fraction of all CPUs
BUSY_SHARE = 0.20  # timed rounds during which others used more than this are timed again ...
BUSY_RETRIES = 2  # ... at most this many times
MIN_ROUNDS, MAX_ROUNDS = 3, 200
CLASSES = 10


# --- options and smoke mode ---------------------------------------------------------------------


def pytest_addoption(parser):
    group = parser.getgroup("nnxp-bench", "nnxp benchmark suite")
    group.addoption("--quick", action="store_true", default=False,
                    help="smoke mode: the small model at two small batch sizes, a couple of rounds "
                         "(also NNXP_BENCH_QUICK=1)")
    group.addoption("--all-sizes", action="store_true", default=False,
                    help=f"also run CPU cases above {CPU_BUDGET_GFLOP:.0f} GFLOP per call (slow on small machines)")
    group.addoption("--wait-idle", type=float, default=None, metavar="SECONDS",
                    help="before each case wait up to SECONDS for other processes to leave the CPUs idle "
                         f"(default {WAIT_IDLE_S:.0f}, 0 in smoke mode)")


def is_quick(config) -> bool:
    return bool(config.getoption("--quick")) or os.environ.get("NNXP_BENCH_QUICK", "") not in ("", "0")


def pytest_report_header(config):
    env = environment(with_torch=False)
    return [f"nnxp bench: quick={is_quick(config)}, cpu={env['cpu']} ({env['logical_cpus']} CPUs), "
            f"blas={env.get('blas')}, OPENBLAS_CORETYPE={env['env']['OPENBLAS_CORETYPE']}, "
            f"cuda={backend.cuda_available()}"]


# --- cases ---------------------------------------------------------------------------------------


def train_flops(layers: tuple[int, ...], batch: int) -> int:
    """Multiply-adds x2 of one training step: forward, weight gradients, input gradients past layer 1."""
    total = 0
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:])):
        total += 2 * batch * n_in * n_out * (2 if i == 0 else 3)
    return total


def infer_flops(layers: tuple[int, ...], batch: int) -> int:
    return sum(2 * batch * n_in * n_out for n_in, n_out in zip(layers[:-1], layers[1:]))


def n_params(layers: tuple[int, ...]) -> int:
    return sum(n_in * n_out + n_out for n_in, n_out in zip(layers[:-1], layers[1:]))


@dataclass(frozen=True)
class Case:
    """One benchmark configuration. `batch` is 1 for the per-sample loop."""

    device: str
    model: str
    batch: int
    impl: str
    kind: str  # "train" or "infer"
    quick: bool = False

    @property
    def id(self) -> str:
        return f"{self.device}-{self.model}-b{self.batch}-{self.impl}"

    @property
    def layers(self) -> tuple[int, ...]:
        return MODELS[self.model]

    @property
    def dtype(self) -> str:
        return "float64" if self.impl == "sklearn_f64" else "float32"

    @property
    def samples_per_call(self) -> int:
        """Examples one timed call processes: training calls are one epoch (one ``fit`` for nnxp) over a fixed
        number of full batches, the same for every implementation on a device (see :func:`epoch_batches`)."""
        if self.impl == "per_sample":
            return QUICK_PER_SAMPLE_SLICE if self.quick else PER_SAMPLE_SLICE[self.model]
        if self.kind == "train":
            return self.batch * epoch_batches(self.device, self.batch, self.quick)
        return self.batch

    @property
    def steps_per_call(self) -> int:
        """Optimizer steps in one timed training call (each example is one for the per-sample loop)."""
        return self.samples_per_call // self.batch if self.kind == "train" else 0

    @property
    def flops_per_call(self) -> int:
        per = train_flops if self.kind == "train" else infer_flops
        return per(self.layers, self.batch) * (self.samples_per_call // self.batch)


def epoch_batches(device: str, batch: int, quick: bool = False) -> int:
    """Full batches per timed training call. CPU: scikit-learn's epoch of up to SKLEARN_STEPS batches and at most
    SKLEARN_EPOCH samples (at least one batch). GPU: CUDA_EPOCH_BATCHES, so that what ``fit`` does once per call
    (moving nothing: the data is on the device already; its checks, the shuffle, the one read of the metrics, and
    with ``cuda_graph=True`` the warm-up batch and the capture) is shared as in a short epoch."""
    if device == "cuda":
        return QUICK_CUDA_EPOCH_BATCHES if quick else CUDA_EPOCH_BATCHES
    return 1 if quick else max(1, min(SKLEARN_STEPS, SKLEARN_EPOCH // batch))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


_TORCH_CUDA: bool | None = None


def torch_cuda_available() -> bool:
    global _TORCH_CUDA
    if _TORCH_CUDA is None:
        try:
            import torch

            _TORCH_CUDA = bool(torch.cuda.is_available())
        except ImportError:
            _TORCH_CUDA = False
    return _TORCH_CUDA


def skip_reason(case: Case, all_sizes: bool) -> str | None:
    """Why `case` cannot or should not run here (None: it runs)."""
    if case.device == "cuda" and not backend.cuda_available():
        return "needs a CUDA GPU with CuPy (nnxp.cuda_available() is False)"
    if case.impl.startswith("torch") and not _importable("torch"):
        return "PyTorch is not importable"
    if case.impl.startswith("sklearn") and not _importable("sklearn"):
        return "scikit-learn is not importable"
    if case.device == "cuda" and case.impl.startswith("torch") and not torch_cuda_available():
        return "this PyTorch build has no usable CUDA"
    if case.device == "cpu" and not all_sizes:
        cost = case.flops_per_call * (2 if case.dtype == "float64" else 1) / 1e9
        if cost > CPU_BUDGET_GFLOP:
            return (f"CPU budget: {cost:.0f} GFLOP per call > {CPU_BUDGET_GFLOP:.0f} "
                    "(--all-sizes runs it)")
    return None


def make_cases(config, kind: str) -> list:
    quick, all_sizes = is_quick(config), bool(config.getoption("--all-sizes"))
    models = QUICK_MODELS if quick else tuple(MODELS)
    batches = QUICK_BATCHES if quick else BATCHES
    params = []
    for device in ("cpu", "cuda"):
        impls = DEVICE_IMPLS[device]
        for model in models:
            grid = [(1, "per_sample")] if "per_sample" in impls else []
            grid += [(b, i) for b in batches for i in impls if i != "per_sample"]
            for batch, impl in grid:
                case = Case(device, model, batch, impl, kind, quick)
                marks = [pytest.mark.gpu] if device == "cuda" else []
                reason = skip_reason(case, all_sizes)
                if reason:
                    marks.append(pytest.mark.skip(reason=reason))
                params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        kind = getattr(metafunc.module, "KIND", "train")
        metafunc.parametrize("case", make_cases(metafunc.config, kind))


# --- memory -------------------------------------------------------------------------------------


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class PeakMemory:
    """Peak bytes above a baseline: process RSS on the CPU, the CuPy pool or torch's allocator on a GPU.

    On Linux the RSS high-water mark (VmHWM) is reset by writing 5 to /proc/self/clear_refs, so each
    case gets its own peak. On a GPU the CuPy pool keeps every block it allocated until freed, so its
    total after the run is its high-water mark; torch keeps a real peak counter.
    """

    def __init__(self, device: str, source: str) -> None:
        self.device, self.source = device, source
        self.baseline: int | None = None

    def start(self) -> None:
        gc.collect()
        if self.source == "rss":
            _malloc_trim()  # give freed heap pages back, or the next case reuses them unseen
            try:
                Path("/proc/self/clear_refs").write_text("5")
                rss = _proc_status_kib("VmRSS")
                self.baseline = None if rss is None else rss * 1024
            except OSError:
                self.baseline = None
        elif self.source == "cupy":
            cp = backend.cupy_module()
            backend.get_device(self.device).synchronize()
            cp.get_default_memory_pool().free_all_blocks()
            self.baseline = int(cp.get_default_memory_pool().total_bytes())
        elif self.source == "torch":
            import torch

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = int(torch.cuda.memory_allocated())

    def peak(self) -> int | None:
        if self.baseline is None:
            return None
        if self.source == "rss":
            hwm = _proc_status_kib("VmHWM")
            return None if hwm is None else max(0, hwm * 1024 - self.baseline)
        if self.source == "cupy":
            return max(0, int(backend.cupy_module().get_default_memory_pool().total_bytes()) - self.baseline)
        import torch

        return max(0, int(torch.cuda.max_memory_allocated()) - self.baseline)


def memory_source(case: Case) -> str:
    if case.device == "cpu":
        return "rss"
    return "torch" if case.impl.startswith("torch") else "cupy"


# --- other work on the machine ---------------------------------------------------------------------


class CpuShare:
    """Fraction of all CPUs used by *other* processes (and the hypervisor) between start() and share().

    From /proc/stat (all CPU time) minus /proc/self/stat (this process, all its threads); None where
    /proc is missing. Timings taken while this is high were competing for the cores.
    """

    def start(self) -> CpuShare:
        self._start = self._read()
        return self

    @staticmethod
    def _read() -> tuple[int, int, int] | None:
        try:
            vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
            return sum(vals) - vals[3] - vals[4], sum(vals), int(own[11]) + int(own[12])
        except (OSError, ValueError, IndexError):
            return None

    def share(self) -> float | None:
        end = self._read()
        if end is None or self._start is None or end[1] <= self._start[1]:
            return None
        busy, total, own = (e - s for e, s in zip(end, self._start))
        return min(1.0, max(0.0, (busy - own) / total))


def wait_for_idle(max_wait: float, window: float = 0.5) -> tuple[float, float | None]:
    """Wait (up to `max_wait` s) until other processes use < IDLE_SHARE of the CPUs; (seconds waited, share)."""
    t0 = time.monotonic()
    share = None
    while True:
        probe = CpuShare().start()
        time.sleep(window)
        share = probe.share()
        if share is None or share < IDLE_SHARE or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0, share


# --- the GEMM-only floor ------------------------------------------------------------------------

_FLOORS: dict[tuple, float] = {}


def gemm_floor(device: str, layers: tuple[int, ...], batch: int, kind: str, dtype: str, quick: bool) -> float:
    """Seconds for the GEMMs alone of one step (train: forward, dW, dX past layer 1; infer: forward).

    Timed with the array module nnxp uses on `device` (NumPy / CuPy), weights as views into one flat
    buffer as in nnxp, outputs preallocated; median over repeats, cached for the session.
    """
    key = (device, layers, batch, kind, dtype)
    if key in _FLOORS:
        return _FLOORS[key]
    dev = backend.get_device(device)
    xp = dev.xp
    rng = np.random.default_rng(1)
    sizes = [a * b for a, b in zip(layers[:-1], layers[1:])]
    offsets = np.cumsum([0, *sizes])
    flat = dev.asarray(rng.standard_normal(int(offsets[-1])).astype(dtype) * 0.05)
    gflat = xp.empty_like(flat)
    n = len(sizes)
    ws = [flat[offsets[i] : offsets[i + 1]].reshape(layers[i], layers[i + 1]) for i in range(n)]
    dws = [gflat[offsets[i] : offsets[i + 1]].reshape(layers[i], layers[i + 1]) for i in range(n)]
    acts = [dev.asarray(rng.random((batch, d)).astype(dtype)) for d in layers]
    calls = [lambda i=i: xp.matmul(acts[i], ws[i], out=acts[i + 1]) for i in range(n)]
    if kind == "train":
        dzs = [dev.asarray(rng.standard_normal((batch, d)).astype(dtype)) for d in layers[1:]]
        dxs = [xp.empty((batch, d), dtype=dtype) for d in layers[:-1]]
        for i in range(n - 1, -1, -1):
            calls.append(lambda i=i: xp.matmul(acts[i].T, dzs[i], out=dws[i]))
            if i > 0:
                calls.append(lambda i=i: xp.matmul(dzs[i], ws[i].T, out=dxs[i]))

    def all_gemms() -> float:
        t0 = time.perf_counter()
        for call in calls:
            call()
        dev.synchronize()
        return time.perf_counter() - t0

    first = all_gemms()
    repeats = 1 if quick else int(min(50, max(3, 0.5 / max(first, 1e-6))))
    _FLOORS[key] = statistics.median(all_gemms() for _ in range(repeats))
    return _FLOORS[key]


# --- measuring one case --------------------------------------------------------------------------


def _rounds(estimate_s: float, quick: bool) -> int:
    if quick:
        return 2
    return int(min(MAX_ROUNDS, max(MIN_ROUNDS, TARGET_S / max(estimate_s, 1e-9))))


def _discard(benchmark, session) -> bool:
    """Forget a finished pedantic run so the fixture can run again (pytest-benchmark internals; False
    when they are not as expected, and then the first run stands)."""
    try:
        session.benchmarks.remove(benchmark.stats)
        benchmark.stats, benchmark._mode = None, None
        return True
    except (AttributeError, ValueError):
        return False


def measure(benchmark, case: Case, build, wait_idle: float = 0.0, session: Any = None) -> tuple[Any, dict]:
    """Build the implementation (``build()`` -> object with train/infer/sync and an ``info`` dict),
    time its first call apart, then benchmark steady-state calls; returns it and ``benchmark.extra_info``.

    When other processes used more than BUSY_SHARE of the CPUs during the timed rounds, the rounds
    are thrown away and timed again after waiting for a quiet machine (at most BUSY_RETRIES times)."""
    waited = wait_for_idle(wait_idle)[0] if wait_idle > 0 else 0.0
    probe = PeakMemory(case.device, memory_source(case))
    probe.start()
    impl = build()
    fn = impl.train if case.kind == "train" else impl.infer

    def call() -> None:
        fn()
        impl.sync()

    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    rounds = 1
    if not benchmark.disabled:
        t0 = time.perf_counter()
        call()
        rounds = _rounds(time.perf_counter() - t0, case.quick)
    benchmark.group = f"{case.kind} {case.device} {case.model} b{case.batch if case.impl != 'per_sample' else 1}"
    for attempt in range(1, BUSY_RETRIES + 2):
        others = CpuShare().start()
        benchmark.pedantic(call, rounds=rounds, warmup_rounds=0, iterations=1)
        other_share = others.share()
        if (benchmark.disabled or wait_idle <= 0 or other_share is None or other_share <= BUSY_SHARE
                or attempt > BUSY_RETRIES or not _discard(benchmark, session)):
            break
        waited += wait_for_idle(wait_idle)[0]
    peak = probe.peak()
    floor = None
    if case.impl != "per_sample":
        steps = max(1, case.samples_per_call // case.batch)
        floor = steps * gemm_floor(case.device, case.layers, case.batch, case.kind, case.dtype, case.quick)
    info = benchmark.extra_info
    info.update({
        "device": case.device, "model": case.model, "layers": list(case.layers), "batch": case.batch,
        "impl": case.impl, "kind": case.kind, "dtype": case.dtype, "quick": case.quick,
        "samples_per_call": case.samples_per_call, "steps_per_call": case.steps_per_call,
        "flops_per_call": case.flops_per_call, "params": n_params(case.layers),
        "first_call_s": first, "gemm_floor_s": floor,
        "peak_mem_bytes": peak, "peak_mem_source": probe.source,
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "other_cpu_share": other_share, "waited_for_idle_s": waited, "attempts": attempt,
    })
    info.update(getattr(impl, "info", {}))
    if benchmark.stats is not None:
        median = benchmark.stats.stats.median
        info["samples_per_s"] = case.samples_per_call / median
        info["gflops"] = case.flops_per_call / median / 1e9
        info["ratio_to_gemm_floor"] = None if not floor else median / floor
    return impl, info


@pytest.fixture
def run_case(benchmark, request):
    """``run_case(case, build)`` times one case (see :func:`measure`)."""
    wait = request.config.getoption("--wait-idle")
    if wait is None:
        wait = 0.0 if is_quick(request.config) or benchmark.disabled else WAIT_IDLE_S
    session = getattr(request.config, "_benchmarksession", None)
    return lambda case, build: measure(benchmark, case, build, wait, session)


# --- environment ---------------------------------------------------------------------------------


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def blas_threads() -> int:
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            if pool["user_api"] == "blas" and "numpy" in str(pool.get("filepath", "")):
                return int(pool["num_threads"])
    except ImportError:
        pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _gpu_info() -> dict:
    info: dict[str, Any] = {}
    cp = backend.cupy_module()
    if cp is not None:
        info["cupy"] = cp.__version__
    if cp is not None and backend.cuda_available():
        try:
            props = cp.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            info["name"] = name.decode() if isinstance(name, bytes) else str(name)
            info["compute_capability"] = f"{props['major']}.{props['minor']}"
            info["memory_gib"] = round(props["totalGlobalMem"] / 2**30, 1)
            info["cuda_runtime"] = _cuda_version(cp.cuda.runtime.runtimeGetVersion())
            info["cuda_driver_api"] = _cuda_version(cp.cuda.runtime.driverGetVersion())
            info["count"] = backend.cuda_device_count()
        except Exception as exc:  # a broken driver should not lose the whole run
            info["error"] = str(exc)[:200]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
            if out:
                name, driver = (s.strip() for s in out[0].split(",", 1))
                info.setdefault("name", name)
                info["driver"] = driver
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return info


def environment(with_torch: bool = True) -> dict:
    """CPU, threads, BLAS and its kernel, GPU, driver, CUDA, library versions, BLAS variables."""
    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "nnxp": nnxp.__version__,
        "env": dict(_START_ENV),
        "openblas_coretype_set": _START_ENV["OPENBLAS_CORETYPE"] is not None,
        "loadavg_start": _START_LOAD,  # other work on the machine skews timings
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    try:
        import psutil

        env["physical_cores"] = psutil.cpu_count(logical=False)
        env["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        pools = [{k: p.get(k) for k in ("user_api", "internal_api", "prefix", "version", "num_threads",
                                         "architecture", "threading_layer", "filepath")} for p in threadpool_info()]
        env["threadpools"] = pools
        blas = [p for p in pools if p["user_api"] == "blas"]
        blas = [p for p in blas if "numpy" in str(p.get("filepath"))] or blas  # NumPy's, not SciPy's copy
        if blas:
            b = blas[0]
            env["blas"] = f"{b['internal_api']} {b['version']} ({b.get('architecture')}), {b['num_threads']} threads"
            env["blas_threads"] = b["num_threads"]
    except ImportError:
        env["threadpools"] = None
    if _importable("sklearn"):
        import sklearn

        env["sklearn"] = sklearn.__version__
    if with_torch and _importable("torch"):
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
        env["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        env["torch_mkl"] = torch.backends.mkl.is_available()
        env["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            env["torch_gpu"] = torch.cuda.get_device_name(0)
    env["gpu"] = _gpu_info()
    return env


def pytest_benchmark_update_machine_info(config, machine_info):
    """Add the nnxp environment (called when the JSON is written, after the cases ran)."""
    machine_info["nnxp_bench"] = environment()
    machine_info["nnxp_bench"]["quick"] = is_quick(config)
    machine_info["nnxp_bench"]["all_sizes"] = bool(config.getoption("--all-sizes"))
