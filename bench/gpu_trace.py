"""Trace what one training step of ``fit`` asks of a GPU, without a GPU: every launch nnxp makes on the stand-in CuPy.

The stand-in (tests/_stand_in_cupy.py) runs nnxp's CUDA code paths on the CPU. :class:`Tracer` wraps its entry
points from outside (nothing in the stand-in changes) and records one :class:`Op` per device operation: nnxp's
RawKernel launches (name, grid, block), cuBLAS GEMMs (m, n, k), CuPy's own elementwise kernels, reductions, copies
and fills, host<->device copies, and graph launches (with the nodes their capture recorded). :func:`trace_step`
runs ``fit`` over 3 and then 4 full batches and keeps the ops the fourth batch added: one steady-state step.

    python bench/gpu_trace.py [--out bench/results/gpu-trace.json]     # the cases bench/gpu_model.py predicts

Bytes per op are the sizes of the arrays it touches (see :func:`kernel_bytes`); FLOPs are counted in
bench/gpu_model.py. GEMMs can be left uncomputed (``compute_gemms=False``, outputs zero-filled) so that large
cases trace in seconds: the launch list depends on shapes, not values.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KERNELS_CU = ROOT / "nnxp" / "ops" / "kernels.cu"

# What the model traces by default: (name, layer sizes, batch sizes)
CASES = (("small", (784, 512, 256, 10), (32, 128, 512, 2048, 8192)), ("large", (784, 4096, 4096, 10), (4096,)))
READ_ONLY_METHODS = {"argmax", "argmin", "trace"}  # ndarray methods that reduce (the rest are elementwise)


@dataclass
class Op:
    """One device operation of a step. ``kind``: kernel (nnxp RawKernel), gemm (cuBLAS), elementwise, reduction,
    copy, memset (CuPy's own kernels), h2d / d2h (host copies), graph (one cudaGraphLaunch; ``nodes`` holds
    what its capture recorded). ``captured``: recorded into a graph rather than run."""

    kind: str
    name: str
    bytes: int = 0
    grid: tuple = ()
    block: tuple = ()
    m: int = 0
    n: int = 0
    k: int = 0
    captured: bool = False
    nodes: list = field(default_factory=list)
    shapes: list = field(default_factory=list)  # PyTorch ops: the input shapes the profiler recorded

    def key(self) -> tuple:
        return (self.kind, self.name, self.bytes, self.m, self.n, self.k, self.captured, len(self.nodes))

    @classmethod
    def from_json(cls, d: dict) -> Op:
        d = dict(d)
        d["grid"], d["block"] = tuple(d.get("grid", ())), tuple(d.get("block", ()))
        d["nodes"] = [cls.from_json(n) for n in d.get("nodes", [])]
        return cls(**d)

    def to_json(self) -> dict:
        d = asdict(self)
        d["grid"], d["block"] = list(self.grid), list(self.block)
        d["nodes"] = [n.to_json() if isinstance(n, Op) else n for n in self.nodes]
        return {k: v for k, v in d.items() if v not in ((), [], 0, False) or k in ("kind", "name", "bytes")}


@functools.lru_cache(maxsize=1)
def kernel_signatures(source: str | None = None) -> dict[str, list[str]]:
    """Each __global__ kernel's pointer parameters in kernels.cu: 'r' for const T*, 'rw' for T* (read and written,
    an upper bound for outputs that are only written), '' for scalars."""
    text = source if source is not None else KERNELS_CU.read_text()
    sigs = {}
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", text):
        kinds = []
        for p in params.split(","):
            p = p.strip()
            kinds.append("" if "*" not in p else ("r" if p.startswith("const") else "rw"))
        sigs[name] = kinds
    return sigs


def _gather_rows_bytes(args: tuple) -> int:
    # nnxp_gather_rows(src, out, perm, starts, cursor, rows, cols, src_rows): it reads only the batch's rows of src
    # and of perm, and writes out (the whole-array rule would charge all of src and perm, and out twice)
    out, rows = args[1], int(args[5])
    return 2 * int(out.nbytes) + 8 * rows + 16


def _record_step_bytes(args: tuple) -> int:
    # nnxp_record_step(loss, sums, n_sums, record, cols, cursor): one column of the record, a few scalars
    n_sums = int(args[2])
    return 8 * (1 + n_sums) * 2 + int(args[0].nbytes) + 16


_KERNEL_BYTES = {"nnxp_gather_rows": _gather_rows_bytes, "nnxp_record_step": _record_step_bytes}


def kernel_bytes(name: str, args: tuple) -> int:
    """Bytes an nnxp kernel moves: each array argument once if const, twice (read + write) otherwise (the kernels
    that touch a few rows of large arrays are counted by what they touch, _KERNEL_BYTES)."""
    if name in _KERNEL_BYTES:
        return _KERNEL_BYTES[name](args)
    sig = kernel_signatures().get(name, [])
    total = 0
    for i, a in enumerate(args):
        nbytes = getattr(a, "nbytes", None)
        if nbytes is None or not isinstance(a, np.ndarray):
            continue
        total += nbytes * (1 if i < len(sig) and sig[i] == "r" else 2)
    return total


def _nbytes(*arrays: Any) -> int:
    return sum(int(a.nbytes) for a in arrays if isinstance(a, np.ndarray))


class Tracer:
    """Records every device operation nnxp issues on the stand-in while active (a context manager).

    ``stand_in`` is the tests/_stand_in_cupy module, ``fake`` the module object it built, ``cuda_ops`` nnxp's
    cuBLAS module nnxp.ops._cublas (its ``_gemm`` seam is what a graph capture calls instead of CuPy's matmul)."""

    def __init__(self, stand_in: Any, fake: Any, cuda_ops: Any, compute_gemms: bool = True) -> None:
        self.si, self.fake, self.cuda_ops, self.compute_gemms = stand_in, fake, cuda_ops, compute_gemms
        self.ops: list[Op] = []
        self._depth = 0
        self._capture: list[Op] | None = None
        self._graphs: dict[int, list[Op]] = {}
        self._saved: list[tuple[Any, str, Any]] = []

    # --- recording

    def _record(self, op: Op) -> None:
        if self._capture is not None and self.si._recording() is not None:
            op.captured = True
            self._capture.append(op)
        else:
            self.ops.append(op)

    def _wrap(self, owner: Any, attr: str, make_op) -> None:
        original = getattr(owner, attr)
        self._saved.append((owner, attr, original))
        tracer = self

        def traced(*args: Any, **kwargs: Any) -> Any:
            if tracer._depth:
                return original(*args, **kwargs)
            tracer._depth += 1
            try:
                result = original(*args, **kwargs)
            finally:
                tracer._depth -= 1
            op = make_op(result, *args, **kwargs)
            if op is not None:
                tracer._record(op)
            return result

        setattr(owner, attr, traced)

    def __enter__(self) -> Tracer:
        si, fake = self.si, self.fake
        sigs = kernel_signatures()

        def kernel(result, self_, grid, block, args, **kw):
            name = self_.name.split("<")[0]  # the template instance: nnxp_x<float>
            assert name in sigs, self_.name
            return Op("kernel", self_.name, kernel_bytes(name, args), tuple(grid), tuple(block))

        self._wrap(si.RawKernel, "__call__", kernel)

        def gemm_op(result, a, b, out=None, **kw):
            (m, k), n = a.shape, b.shape[-1]
            out = result
            return Op("gemm", "gemm", _nbytes(a, b, out), m=m, n=n, k=k)

        matmul, captured = fake.matmul, si.captured_gemm
        if not self.compute_gemms:  # shapes only: zero outputs keep every later value finite
            def matmul(a, b, *, out=None, **kw):  # noqa: F811 - the shape-only stand-in for CuPy's
                if out is None:
                    out = fake.empty((a.shape[0], b.shape[-1]), dtype=np.result_type(a, b))
                out.view(np.ndarray).fill(0)
                return out

            def captured(a, b, out):  # noqa: F811
                si._enqueue(lambda: out.view(np.ndarray).fill(0))
                return out
        self._saved.append((fake, "matmul", fake.matmul))
        fake.matmul = matmul
        self._saved.append((self.cuda_ops, "_gemm", self.cuda_ops._gemm))
        self.cuda_ops._gemm = captured
        self._wrap(fake, "matmul", gemm_op)
        self._wrap(self.cuda_ops, "_gemm", gemm_op)

        def ufunc(result, self_, ufunc_, method, *inputs, out=None, **kw):
            outs = out if out is not None else (result if isinstance(result, tuple) else (result,))
            kind = "elementwise" if method in ("__call__", "at") else "reduction"
            return Op(kind, f"{ufunc_.__name__}.{method}" if method != "__call__" else ufunc_.__name__,
                      _nbytes(*inputs, *outs))

        self._wrap(si.FakeArray, "__array_ufunc__", ufunc)

        def setitem(result, self_, key, value):
            if isinstance(value, np.ndarray) and not isinstance(value, si.FakeArray):
                return Op("h2d", "setitem from host", _nbytes(value))
            target = self_.view(np.ndarray)[key]
            return Op("copy", "setitem", 2 * _nbytes(np.asarray(target)))

        self._wrap(si.FakeArray, "__setitem__", setitem)
        self._wrap(si.FakeArray, "fill", lambda r, self_, v: Op("memset", "fill", _nbytes(self_)))
        self._wrap(si.FakeArray, "_copy_kernel", lambda r, self_, fn: Op("copy", "copy", _nbytes(self_, r)))
        self._wrap(si.FakeArray, "set", lambda r, self_, arr, **kw: Op(
            "h2d", f"ndarray.set ({'pinned' if si._is_pinned(arr) else 'pageable'})", _nbytes(arr)))
        self._wrap(si.FakeArray, "get", lambda r, self_, *a, **kw: Op("d2h", "ndarray.get", _nbytes(self_)))
        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            self._wrap(si.FakeArray, name, lambda r, self_, *a, _n=name, **kw: Op("d2h", _n, _nbytes(self_)))
        for name in ("argmax", "argmin", "cumsum", "cumprod", "dot", "clip", "round", "take", "repeat", "flatten",
                     "ravel", "argsort", "trace", "diagonal", "nonzero"):
            kind = "reduction" if name in READ_ONLY_METHODS else "elementwise"

            def method_op(r, self_, *a, _n=name, _k=kind, **kw):
                if isinstance(r, np.ndarray) and np.may_share_memory(r, self_):
                    return None  # a view (ravel of a contiguous array): no kernel
                return Op(_k, f"ndarray.{_n}", _nbytes(self_, r))

            self._wrap(si.FakeArray, name, method_op)
        for name in ("zeros", "zeros_like"):
            self._wrap(fake, name, lambda r, *a, _n=name, **kw: Op("memset", _n, _nbytes(r)))

        def asarray(r, a, *args, **kw):
            if isinstance(a, si.FakeArray) and r is a:
                return None
            kind = "copy" if isinstance(a, si.FakeArray) else "h2d"
            return Op(kind, "asarray", _nbytes(r))

        self._wrap(fake, "asarray", asarray)
        numpy_function = si._numpy_function
        self._saved.append((si, "_numpy_function", numpy_function))
        tracer = self

        def traced_numpy_function(fn):
            call = numpy_function(fn)

            def run(*args, **kwargs):
                if tracer._depth:
                    return call(*args, **kwargs)
                tracer._depth += 1
                try:
                    result = call(*args, **kwargs)
                finally:
                    tracer._depth -= 1
                name = f"cupy.{getattr(fn, '__name__', fn)}"
                if kwargs.get("out") is not None:  # into a given buffer (the batch gather): read it, write it
                    tracer._record(Op("elementwise", name, 2 * _nbytes(kwargs["out"])))
                    return result
                arrays = si._arrays_in((*args, *kwargs.values()))
                is_view = isinstance(result, np.ndarray) and any(np.may_share_memory(result, a) for a in arrays)
                if isinstance(result, si.FakeArray) and not is_view:
                    kind = "elementwise" if arrays else "memset"  # a creation function with no array input fills
                    tracer._record(Op(kind, name, _nbytes(*arrays, result)))
                return result

            return run

        si._numpy_function = traced_numpy_function

        def begin(result, stream, *a, **kw):
            self._capture = []

        def end(graph, stream):
            self._graphs[id(graph)] = self._capture or []
            self._capture = None

        self._wrap(si.Stream, "begin_capture", begin)
        self._wrap(si.Stream, "end_capture", end)
        self._wrap(si.Graph, "launch", lambda r, graph, *a, **kw: Op("graph", "cudaGraphLaunch",
                                                                     nodes=list(self._graphs.get(id(graph), []))))
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, attr, original in reversed(self._saved):
            setattr(owner, attr, original)
        self._saved.clear()


def executed(ops: list[Op]) -> list[Op]:
    """The ops that ran on the device: eager ops, and each graph launch's nodes in its place."""
    out = []
    for op in ops:
        out.extend(executed(op.nodes) if op.kind == "graph" else [op])
    return out


def _most_repeats(keys: list, block: list) -> int:
    """The longest run of `block` repeated back to back in `keys`."""
    size, best = len(block), 0
    for i in range(len(keys) - size + 1):
        n = 0
        while keys[i + n * size : i + (n + 1) * size] == block:
            n += 1
        best = max(best, n)
    return best


def step_window(shorter: list[Op], longer: list[Op]) -> list[Op]:
    """The ops of one steady-state step: ``longer`` is ``shorter``'s run with one more full batch.

    A step is len(longer) - len(shorter) ops long; it is the first block of that length that the run repeats
    right after it (the earlier batches may differ: the first one warms up or captures). The prologue and
    epilogue (data upload, metric reads) differ in size between the runs, so they cannot be subtracted."""
    size = len(longer) - len(shorter)
    keys, fewer = [op.key() for op in longer], [op.key() for op in shorter]
    for start in range(len(keys) - 2 * size + 1):
        block = keys[start : start + size]
        # (and `longer` repeats it once more than `shorter` does: a step of one op, a replayed graph, must not be
        # taken for two equal set-up ops that both runs have)
        if (size > 0 and block == keys[start + size : start + 2 * size]
                and _most_repeats(keys, block) > _most_repeats(fewer, block)):
            return longer[start + size : start + 2 * size]
    raise RuntimeError(f"the step is not a repeated block of ops ({len(shorter)} -> {len(longer)} ops)")


def mlp(layers: tuple[int, ...], device: str = "cuda", seed: int = 0) -> Any:
    """The modelled MLP: ReLU hidden layers, softmax output, sparse CE, Adam(1e-3, eps 1e-7), accuracy."""
    import nnxp

    model = nnxp.Sequential([nnxp.Dense(layers[1], "relu", input_dim=layers[0])]
                            + [nnxp.Dense(u, "relu") for u in layers[2:-1]] + [nnxp.Dense(layers[-1], "softmax")],
                            device=device, seed=seed, dtype="float32")
    model.compile(nnxp.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def trace_fit(tracer_factory, layers: tuple[int, ...], batch: int, batches: int, cuda_graph: bool) -> list[Op]:
    """All ops of one ``fit`` epoch over `batches` full batches of a fresh model."""
    rng = np.random.default_rng(0)
    x = rng.random((batch * batches, layers[0]), dtype=np.float32)
    y = rng.integers(0, layers[-1], batch * batches)
    model = mlp(layers)
    with tracer_factory() as tracer:
        model.fit(x, y, epochs=1, batch_size=batch, verbose=0, cuda_graph=cuda_graph)
    return tracer.ops


def trace_step(tracer_factory, layers: tuple[int, ...], batch: int, cuda_graph: bool) -> list[Op]:
    """One steady-state training step of ``fit``: the ops a fourth full batch adds to three."""
    return step_window(trace_fit(tracer_factory, layers, batch, 3, cuda_graph),
                       trace_fit(tracer_factory, layers, batch, 4, cuda_graph))


@contextlib.contextmanager
def stand_in(cache_dir: Path | None = None) -> Iterator[Any]:
    """nnxp on the stand-in CuPy outside pytest (what the tests' fake_cupy and graph_seam fixtures do);
    yields a factory of shape-only tracers."""
    sys.path.insert(0, str(ROOT / "tests"))
    import _cuda_emu
    import _stand_in_cupy

    import nnxp.backend as backend
    from nnxp.ops import _cublas, _cuda

    cache_dir = cache_dir or Path(tempfile.gettempdir()) / "nnxp_cuda_emu"
    cache_dir.mkdir(parents=True, exist_ok=True)
    emulator = _cuda_emu.build(cache_dir)
    if emulator is None:
        raise RuntimeError("no C++ compiler for the CUDA emulator (tests/_cuda_emu.py)")
    fake = _stand_in_cupy.stand_in_cupy(emulator)
    saved = [(backend, "_cupy", backend._cupy), (_cuda, "_KERNELS", _cuda._KERNELS),
             (_cuda, "_SCRATCH", _cuda._SCRATCH), (_cublas, "_prepare_capture", _cublas._prepare_capture)]
    backend._cupy, _cuda._KERNELS, _cuda._SCRATCH = fake, _cuda.LazyKernels(), {}  # (the kept scratch: this fake's)
    _cublas._prepare_capture = lambda device_id: None  # no cuBLAS handle to make on the stand-in
    def tracer() -> Tracer:
        _cuda._SCRATCH.clear()  # each traced fit starts as a fresh process would: no scratch kept from the last
        return Tracer(_stand_in_cupy, fake, _cublas, compute_gemms=False)

    try:
        yield tracer
    finally:
        for owner, attr, value in saved:
            setattr(owner, attr, value)


# --- PyTorch: its ATen ops per step, profiled on the CPU ---------------------------------------------------------

# ATen ops that only make views, read metadata or allocate: no kernel on a GPU
TORCH_NO_KERNEL = {"aten::as_strided", "aten::view", "aten::transpose", "aten::t", "aten::expand", "aten::reshape",
                   "aten::_reshape_alias", "aten::detach", "detach", "aten::resolve_conj", "aten::resolve_neg",
                   "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::unsqueeze", "aten::squeeze",
                   "aten::alias", "aten::select", "aten::slice", "aten::permute", "aten::lift_fresh", "aten::to",
                   "aten::_unsafe_view", "aten::contiguous", "aten::result_type"}
# ops that launch a kernel of their own besides what their children launch
TORCH_OWN_KERNEL = {"aten::addmm", "aten::mm", "aten::nll_loss_backward", "aten::sum", "aten::mean", "aten::argmax",
                    "aten::index"}
# multi-tensor ops: one launch for all tensors on CUDA (multi_tensor_apply); on the CPU they loop per tensor
TORCH_MULTI_TENSOR_PREFIX = ("aten::_foreach_", "aten::_fused_")
# children only the CPU kernels have: CUDA addmm adds a 1-D bias in cuBLASLt's epilogue instead of copying it
# into the output first, and a CUDA reduction writes its output instead of filling it with zeros first
TORCH_CPU_ONLY = {("aten::addmm", "aten::copy_"), ("aten::sum", "aten::fill_")}


def _torch_launches(event: Any) -> list[Any]:
    name, children = event.name, event.cpu_children
    if name.startswith(TORCH_MULTI_TENSOR_PREFIX):
        return [event]
    found = [event] if name in TORCH_OWN_KERNEL else []
    for child in children:
        if (name, child.name) not in TORCH_CPU_ONLY:
            found += _torch_launches(child)
    if not children and name.startswith("aten::") and name not in TORCH_NO_KERNEL and name not in TORCH_OWN_KERNEL:
        found.append(event)
    return found


def _numel(shape: Any) -> int:
    return int(np.prod(shape)) if isinstance(shape, (list, tuple)) and all(isinstance(d, int) for d in shape) else 0


def torch_step_ops(layers: tuple[int, ...], batch: int) -> list[Op]:
    """The CUDA launches one PyTorch eager step would make: its ATen ops from torch.profiler on the CPU, each
    kernel-launching op one launch (see TORCH_* above). The step is bench/test_train.py's (zero_grad, forward,
    CrossEntropyLoss, backward, fused Adam) plus what fit does besides: the batch gathered from the data on the
    device, the loss summed and the correct predictions counted on the device (argmax, eq, sum, add_)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    mods: list = []
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:])):
        mods += [torch.nn.Linear(n_in, n_out)] + ([] if i == len(layers) - 2 else [torch.nn.ReLU()])
    net = torch.nn.Sequential(*mods)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, eps=1e-7, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    x_all, y_all = torch.rand(2 * batch, layers[0]), torch.randint(0, layers[-1], (2 * batch,))
    perm = torch.randperm(2 * batch)
    sums = {"loss": torch.zeros(()), "correct": torch.zeros((), dtype=torch.long)}

    def step() -> None:
        idx = perm[:batch]
        x, y = x_all[idx], y_all[idx]  # the batch gather fit does too
        opt.zero_grad(set_to_none=True)
        out = net(x)
        loss = loss_fn(out, y)
        loss.backward()
        opt.step()
        sums["loss"] += loss.detach()
        sums["correct"] += (out.argmax(1) == y).sum()

    for _ in range(2):  # optimizer state exists from the second step on
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    n_params = sum(p.numel() for p in net.parameters())
    ops = []
    for root in [e for e in prof.events() if e.cpu_parent is None]:
        for e in _torch_launches(root):
            shapes = [s for s in e.input_shapes if isinstance(s, list) and s]
            if e.name in ("aten::addmm", "aten::mm"):
                (m, k), n = shapes[-2], shapes[-1][1]
                ops.append(Op("gemm", e.name, 4 * (m * k + k * n + m * n), m=m, n=n, k=k))
            elif e.name.startswith("aten::_fused_adam"):
                ops.append(Op("kernel", e.name, 28 * n_params))  # p, m, v read and written, g read: 7 x 4 bytes
            elif e.name.startswith("aten::_foreach_"):
                ops.append(Op("kernel", e.name, 8 * len(list(net.parameters()))))  # the step counters
            else:
                kind = "reduction" if e.name in TORCH_OWN_KERNEL and e.name != "aten::index" else "elementwise"
                ops.append(Op(kind, e.name, elementwise_bytes(shapes, e.name), shapes=shapes))
    return ops


def elementwise_bytes(shapes: list, name: str = "") -> int:
    """A PyTorch op's bytes from its input shapes: inputs read, an output as large as the largest written. The
    batch gather (aten::index) reads and writes half of its input: a batch of the 2 batches profiled."""
    sizes = [_numel(s) for s in shapes]
    if name == "aten::index":
        return 4 * sizes[0]
    return 4 * (sum(sizes) + max(sizes, default=0))


def torch_ops_at_batch(ops: list[Op], profiled: int, batch: int) -> list[Op]:
    """`ops` profiled at batch `profiled` as they are at `batch`: every dimension equal to `profiled` becomes
    `batch` (pick a profiled batch equal to no layer width). Profiling the large MLP at batch 4096 on two CPU
    cores would take minutes; the op list does not depend on the batch, only the shapes do."""
    def dim(d: int) -> int:
        return {profiled: batch, 2 * profiled: 2 * batch}.get(d, d)  # the gathered data holds two batches

    out = []
    for op in ops:
        if op.kind == "gemm":
            m, n, k = dim(op.m), dim(op.n), dim(op.k)
            out.append(Op("gemm", op.name, 4 * (m * k + k * n + m * n), m=m, n=n, k=k))
        elif op.shapes:
            shapes = [[dim(d) for d in s] for s in op.shapes]
            out.append(Op(op.kind, op.name, elementwise_bytes(shapes, op.name), shapes=shapes))
        else:
            out.append(Op(op.kind, op.name, op.bytes))
    return out


TORCH_PROFILED_BATCH = 48  # equal to no layer width of CASES


def trace_torch(out: dict, cases=CASES) -> dict:
    """Adds "torch" (PyTorch's launches per step, profiled at TORCH_PROFILED_BATCH) to each traced batch."""
    for name, layers, batches in cases:
        ops = torch_step_ops(layers, TORCH_PROFILED_BATCH)
        for batch in batches:
            entry = out.setdefault(name, {"layers": list(layers), "batches": {}})["batches"].setdefault(str(batch), {})
            entry["torch"] = [op.to_json() for op in torch_ops_at_batch(ops, TORCH_PROFILED_BATCH, batch)]
    return out


def trace_cases(cases=CASES) -> dict:
    """{"small": {"layers": [...], "batches": {"32": {"eager": [ops], "graph": [ops]}, ...}}, ...}."""
    out: dict = {}
    with stand_in() as factory:
        for name, layers, batches in cases:
            out[name] = {"layers": list(layers), "batches": {}}
            for batch in batches:
                out[name]["batches"][str(batch)] = {
                    mode: [op.to_json() for op in trace_step(factory, layers, batch, mode == "graph")]
                    for mode in ("eager", "graph")}
                print(f"traced {name} b{batch}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu-trace.json")
    ap.add_argument("--only", choices=("nnxp", "torch"), help="trace one side and merge into --out")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    out = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    if args.only != "torch":
        fresh = trace_cases()
        for name, case in fresh.items():
            for batch, modes in case["batches"].items():
                out.setdefault(name, {"layers": case["layers"], "batches": {}})["batches"].setdefault(batch, {})
                out[name]["batches"][batch].update(modes)
    if args.only != "nnxp":
        trace_torch(out)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
