"""Data-parallel training over MPI: the communicators the training loop calls.

A communicator is just an object the loop calls: ``allreduce(flat_grads)`` (in place, a sum),
``allreduce(scalars)``, ``bcast(params)`` and ``is_main``. :class:`Communicator` is the no-op one for a single
process; :class:`MPICommunicator` runs collectives through mpi4py (imported lazily, only here) and hands CUDA
buffers to :class:`NcclCommunicator` (CuPy's ``cupy.cuda.nccl`` reached through ``backend``; the NCCL unique id
travels over MPI). ``init()`` makes a script distributed; run it as ``mpiexec -n N python train.py``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import backend
from .errors import NnxpError

# environment variables that launchers set (Open MPI, MPICH/Hydra and Intel MPI, PMIx incl. `srun --mpi=pmix`)
_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS")


class Communicator:
    """The communicator for one process: every collective is the identity, so training is exactly as without it."""

    rank = 0
    size = 1
    local_rank = 0
    # "replicated": every rank passes fit/evaluate the whole data set and computes its share of each batch;
    # "sharded": every rank passes only its own rows (see init)
    data = "replicated"
    rank_rows: list[int] = []  # sharded: every rank's number of training rows, exchanged when fit starts
    # MPI on the CPU: all-reduce per-layer buckets while the backward pass goes on, instead of once after it
    overlap = False

    @property
    def is_main(self) -> bool:
        """True on the rank that prints, saves and writes checkpoints (rank 0)."""
        return self.rank == 0

    def allreduce(self, x: Any) -> Any:
        """Sum `x` over the ranks: an array in place (returned), or a sequence of floats (a float64 array)."""
        return x if hasattr(x, "dtype") and getattr(x, "ndim", 0) > 0 else np.asarray(x, dtype=np.float64)

    def bcast(self, x: Any, root: int = 0) -> Any:
        """Overwrite array `x` on every rank with root's values (in place, returned)."""
        return x

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list:
        return [obj]

    def barrier(self) -> None:
        """Wait for every rank (e.g. before reading a file the main rank just saved)."""

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any."""
        return bool(flag)

    # --- what the training loop needs beyond the collectives ---------------------------------------------
    def shard(self, n: int) -> tuple[int, int]:
        """This rank's contiguous part [lo, hi) of `n` rows (sizes differ by at most one)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def batches(self, n: int, batch_size: int) -> list[tuple[int, int, int, int]]:
        """An epoch's plan over this rank's `n` rows: per step (lo, hi, rows of the global batch, where this
        rank's rows begin in it). Replicated data: each global batch of the (same) n rows, cut in `size` shares.
        Sharded data: each rank takes its share of `batch_size` from its own rows, until every rank is done."""
        plan = []
        if self.data == "sharded" and self.size > 1:
            parts = [(r + 1) * batch_size // self.size - r * batch_size // self.size for r in range(self.size)]
            steps = max(-(-rows // part) for rows, part in zip(self.rank_rows, parts))
            for k in range(steps):
                spans = [(min(k * part, rows), min((k + 1) * part, rows)) for rows, part in zip(self.rank_rows, parts)]
                sizes = [hi - lo for lo, hi in spans]
                plan.append((*spans[self.rank], sum(sizes), sum(sizes[: self.rank])))
            return plan
        for start in range(0, n, batch_size):
            rows = min(batch_size, n - start)
            lo, hi = self.shard(rows) if self.size > 1 else (0, rows)
            plan.append((start + lo, start + hi, rows, lo))
        return plan

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"


class MPICommunicator(Communicator):
    """Collectives over an mpi4py communicator; CUDA buffers go through NCCL when CuPy has it."""

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI  # lazily: nnxp imports without MPI

        self._MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        # the rank among the processes on this machine: it picks the GPU under `device="cuda"`
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        local.Free()
        self._nccl: NcclCommunicator | None = None

    def allreduce(self, x: Any) -> Any:
        if not (hasattr(x, "dtype") and getattr(x, "ndim", 0) > 0):  # a few scalars (per epoch): over MPI
            buf = np.array([float(v) for v in x], dtype=np.float64)
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
            return buf
        if backend.is_cupy_array(x):
            return self._device_comm().allreduce(x)
        self.comm.Allreduce(self._MPI.IN_PLACE, x, op=self._MPI.SUM)
        return x

    def bcast(self, x: Any, root: int = 0) -> Any:
        if backend.is_cupy_array(x):
            return self._device_comm().bcast(x, root)
        self.comm.Bcast(x, root=root)
        return x

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def barrier(self) -> None:
        self.comm.Barrier()

    def any(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(1 if flag else 0) > 0)

    def _device_comm(self) -> NcclCommunicator:
        if self._nccl is None:
            nccl = backend.nccl_module()
            if nccl is None:
                raise NnxpError("distributed training on CUDA needs NCCL (cupy.cuda.nccl), which this CuPy lacks; "
                                "install CuPy with NCCL (`pip install nvidia-nccl-cu12`) or train on device='cpu'")
            self._nccl = NcclCommunicator(self, nccl)
        return self._nccl


class NcclCommunicator(MPICommunicator):
    """NCCL collectives on device buffers, on the current (the model's) stream, with no host synchronisation.

    `nccl` is ``cupy.cuda.nccl`` (or, in the tests, a stand-in with its names and signatures). Scalars and
    objects still go over MPI. The unique id is made on rank 0 and broadcast over MPI, as ChainerMN does.
    """

    overlap = False  # one NCCL all-reduce of the whole buffer per step (per-layer buckets are MPI-only)

    def __init__(self, mpi: MPICommunicator, nccl: Any) -> None:
        self._MPI, self.comm = mpi._MPI, mpi.comm
        self.rank, self.size, self.local_rank = mpi.rank, mpi.size, mpi.local_rank
        self._nccl = None
        self.nccl = nccl
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.comm.bcast(uid, root=0)
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}

    def _args(self, x: Any) -> tuple[int, int, int]:
        if x.dtype not in self._types or not x.flags.c_contiguous:
            raise NnxpError(f"NCCL collectives take C-contiguous float32/float64 buffers. Received: {x.dtype}")
        ptr = x.data.ptr if backend.is_cupy_array(x) else x.ctypes.data  # host arrays: only the stand-in
        stream = backend.xp_of(x).cuda.get_current_stream().ptr if backend.is_cupy_array(x) else 0
        return ptr, self._types[x.dtype], stream

    def allreduce(self, x: Any) -> Any:
        if not (hasattr(x, "dtype") and getattr(x, "ndim", 0) > 0):
            return MPICommunicator.allreduce(self, x)
        ptr, dtype, stream = self._args(x)
        self.nccl_comm.allReduce(ptr, ptr, x.size, dtype, self.nccl.NCCL_SUM, stream)
        return x

    def bcast(self, x: Any, root: int = 0) -> Any:
        ptr, dtype, stream = self._args(x)
        self.nccl_comm.bcast(ptr, x.size, dtype, root, stream)
        return x

    def _device_comm(self) -> NcclCommunicator:
        return self


_SINGLE = Communicator()
_current: Communicator | None = None


def current() -> Communicator:
    """The communicator :func:`init` made, or the single-process one."""
    return _current if _current is not None else _SINGLE


def _launched() -> bool:
    return any(os.environ.get(v) for v in _LAUNCHER_VARS)


def init(data: str | None = None) -> Communicator:
    """Join the job (idempotent) and return its communicator, with ``rank``, ``size``, ``local_rank``, ``is_main``.

    Under ``mpiexec -n N`` (or ``srun --mpi=pmix``) with N > 1, ``fit`` then trains data-parallel: ``batch_size`` is
    the global batch, each rank computes its share and the gradients are summed in one all-reduce per step. Without
    a launcher, or with N = 1, it returns the single-process communicator and nothing changes. An uncaught
    exception on any rank prints that rank's traceback and aborts the whole job (no rank is left waiting).

    ``data="sharded"`` is for ranks that each load only their own rows (e.g. ``x[comm.shard(len(x))]``, or
    their own files): every step, each rank then trains on its share of the global batch from its own rows
    (shuffled within them, ``validation_split`` taken from them), and evaluate sums over every rank's rows. The
    default, ``"replicated"``, has every rank pass the whole data set and trains exactly like one process.
    Call it before creating models: it makes ``device="cuda"`` mean this rank's GPU (local rank modulo GPUs).
    """
    global _current
    if data not in (None, "replicated", "sharded"):
        raise NnxpError(f"`data` must be 'replicated' or 'sharded'. Received: data={data!r}")
    if _current is not None:
        if data is not None and _current is not _SINGLE:
            _current.data = data
        return _current
    if not _launched():
        _current = _SINGLE
        return _current
    try:
        from mpi4py import MPI
    except ImportError:
        raise NnxpError("this process was started by an MPI launcher but mpi4py is not installed: "
                        'pip install "nnxp[mpi]"') from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1:
        _current = _SINGLE
        return _current
    _current = MPICommunicator(comm)
    _current.data = data or "replicated"
    count = backend.cuda_device_count()
    if count:  # device="cuda" is this rank's GPU on its machine
        backend.set_default_cuda_index(_current.local_rank % count)
    _install_abort_hook(_current)
    return _current


def abort(code: int = 1) -> int:
    """End the whole job with exit code `code` when there are several ranks (MPI Abort: no rank is left waiting in
    a collective); with one process, just return `code`."""
    comm = current()
    if isinstance(comm, MPICommunicator):
        sys.stdout.flush()
        sys.stderr.flush()
        comm.comm.Abort(code)
    return code


def _install_abort_hook(comm: MPICommunicator) -> None:
    """An uncaught exception prints its traceback, tagged with the rank, and aborts every rank (exit code 1)."""
    previous = sys.excepthook

    def hook(kind, value, tb):
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(f"[nnxp rank {comm.rank}/{comm.size}] {text}")
        sys.stderr.flush()
        sys.stdout.flush()
        if kind is KeyboardInterrupt:
            previous(kind, value, tb)
        comm.comm.Abort(1)

    sys.excepthook = hook


# --- what fit does with a communicator ---------------------------------------------------------------------
def _flatten(prefix: str, value: Any, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out[prefix] = value
    return out


def check_same(comm: Communicator, fingerprint: dict) -> None:
    """Compare a fingerprint of the run on every rank; raise naming the first difference from rank 0."""
    flat = _flatten("", fingerprint, {})
    every = comm.allgather_object(flat)
    ref = every[0]
    for rank, other in enumerate(every[1:], start=1):
        for key in list(ref) + [k for k in other if k not in ref]:
            a, b = ref.get(key, "<missing>"), other.get(key, "<missing>")
            if a != b and not (isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b)):
                raise NnxpError(
                    f"the ranks were given different runs: rank {rank} has {key}={b!r} but rank 0 has {key}={a!r}. "
                    "Every rank must build, compile and fit the same model on the same data")


class ShardedGenerator:
    """A random generator whose draws for one batch are cut from the draw one process would make for the whole
    global batch: each rank keeps the rows of its own samples. Dropout masks then equal a single process's."""

    def __init__(self, gen: Any, share: list, rank: int = 0) -> None:
        self.gen, self.share, self.rank = gen, share, rank  # share: [global rows, lo, hi], set per batch

    def random(self, size: Any = None, dtype: Any = np.float64, out: Any = None) -> Any:
        if out is None:
            # not a batch's mask but, e.g., the seed of a mask made on the device by hashing the row index within
            # the rank's share (Dropout on CUDA): a stream of this rank's own, so ranks never repeat each other's
            # masks (then equal to one process in distribution, not bit for bit)
            bits = [int(v * 2**53) for v in np.ravel(backend.to_numpy(self.gen.random(size=2)))]
            return np.random.default_rng([*bits, self.rank]).random(size=size, dtype=dtype)
        rows, lo, hi = self.share
        out[...] = self.gen.random((rows, *out.shape[1:]), dtype=dtype)[lo:hi]
        return out


def _digest(a: Any) -> int:
    """A checksum of an array's bytes in row order: a sum would miss rows given in a different order on one rank."""
    a = np.ascontiguousarray(backend.to_numpy(a))
    return zlib.crc32(a.view(np.uint8).reshape(-1)) if a.size else 0


def data_fingerprint(comm: Communicator, x: Any, y: Any, w: Any) -> dict:
    """What must agree across ranks about the rows of a collective call: with replicated data the rows themselves
    (shapes and checksums), with sharded data only their widths and whether they are weighted."""
    if comm.data == "sharded":  # the rows differ by design
        return {"x": list(x.shape[1:]), "y": list(y.shape[1:]), "weighted": w is not None}
    return {"x": list(x.shape), "y": list(y.shape), "weighted": w is not None,
            "data": [_digest(x), _digest(y)] + ([] if w is None else [_digest(w)])}


def start_fit(comm: Communicator, model: Any, data: tuple, val: tuple | None, batch_size: int, **run: Any) -> None:
    """Before the first step: refuse impossible settings, check every rank got the same run (model, optimizer,
    fit arguments and, for replicated data, the data itself), and give every rank rank 0's seed (the shuffle and
    dropout streams), weights and optimizer state."""
    if batch_size < comm.size:
        raise NnxpError(f"`batch_size` is the global batch and must be at least the number of ranks ({comm.size}), "
                        f"so that every rank gets a share of each batch. Received: batch_size={batch_size}")
    model.seed = comm.bcast_object(model.seed)
    x, y, w = data
    shapes = data_fingerprint(comm, x, y, w)
    if comm.data != "sharded":
        shapes["val"] = None if val is None else list(val[0].shape)
    opt = model.optimizer
    check_same(comm, {"model": {k: v for k, v in model.get_config().items() if k != "seed"},
                      "optimizer": {"class": type(opt).__name__, **opt.get_config(), "iterations": opt.iterations,
                                    "state": sorted(opt.state)},
                      "loss": model.loss.name, "metrics": list(model.metrics), "device": model.device.kind,
                      "fit": {**run, "batch_size": batch_size, "epochs_trained": model.epochs_trained,
                              "validation": val is not None, **shapes}})
    if comm.data == "sharded":
        comm.rank_rows = comm.allgather_object(int(x.shape[0]))
    comm.bcast(model.params)
    for name in sorted(opt.state):
        comm.bcast(opt.state[name])


def train_step(comm: Communicator, model: Any, xb: Any, yb: Any, wb: Any, rows: int, interrupt: Any) -> tuple:
    """This rank's share of one step of a `rows`-row global batch, and the step's all-reduce.

    Each rank scales its mean gradient and loss by its share of the rows, so their sum is exactly the mean over
    the global batch (regularisation included once), i.e. what one process computes. The loss and the Ctrl-C flag
    ride in two spare slots after the gradients. Returns (the global batch loss, this rank's outputs or None).
    With ``comm.overlap`` (MPI on the CPU) the buffer goes as per-layer buckets instead (see _bucketed_step).
    """
    buf, mine = model.grad_buffer, xb.shape[0]
    cuda = model.device.is_cuda
    if comm.overlap and not cuda:
        buf[-1] = 1.0 if interrupt.requested else 0.0
        out = _bucketed_step(comm, model, xb, yb, wb, rows)
        interrupt.requested = bool(buf[-1] > 0)
        return buf[-2].copy(), out
    out = None
    if mine:
        loss, out = model.backprop(xb, yb, wb)
        scale = mine / rows
        if mine != rows:
            model.grads *= scale
        buf[-2] = loss * scale
    else:  # the last, partial batch can be smaller than the number of ranks: this rank adds nothing
        buf[...] = 0
    if cuda:
        # reading the flag back would synchronise every step; under mpiexec Ctrl-C ends the whole job anyway
        interrupt.requested = False
        comm.allreduce(buf)
    else:
        buf[-1] = 1.0 if interrupt.requested else 0.0
        comm.allreduce(buf)
        interrupt.requested = bool(buf[-1] > 0)  # every rank stops after the same batch
    return buf[-2].copy(), out


def _bucketed_step(comm: MPICommunicator, model: Any, xb: Any, yb: Any, wb: Any, rows: int) -> Any:
    """PyTorch DDP's overlap: one bucket per layer, last layer first. Each layer's slice of the flat gradient
    buffer starts a non-blocking all-reduce as soon as its backward is done (the first bucket also carries the
    loss and flag slots at the end of the buffer), MPI is nudged between layers, and the step waits for all.
    The same sums as the single all-reduce; a rank without rows posts the same buckets, of zeros."""
    MPI, buf, mine = comm._MPI, model.grad_buffer, xb.shape[0]
    spans: dict[str, tuple[int, int]] = {}  # layer name (unique in a model) -> its span of the flat buffer
    for layer, _, offset, shape in model.weight_layout():
        lo, hi = spans.get(layer, (offset, offset))
        spans[layer] = (min(lo, offset), max(hi, offset + int(np.prod(shape))))
    out = dy = None
    if mine:
        out = model.forward(xb, training=True)
        loss, dy = model.loss_and_grad(out, yb, wb)
        buf[-2] = loss * (mine / rows)
    else:
        buf[:-1] = 0
    reqs: list = []
    for i in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[i]
        if mine:
            dy = layer.backward(dy, need_dx=i > 0)
        if layer.name in spans:
            lo, hi = spans[layer.name]
            if mine and mine != rows:
                model.grads[lo:hi] *= mine / rows
            reqs.append(comm.comm.Iallreduce(MPI.IN_PLACE, buf[lo:] if not reqs else buf[lo:hi], op=MPI.SUM))
            MPI.Request.Testall(reqs)
    MPI.Request.Waitall(reqs)
    return out


@contextlib.contextmanager
def quiet_unless_main(comm: Communicator) -> Iterator[None]:
    """Silence stdout (progress bars, callbacks' messages) on every rank but the main one."""
    if comm.is_main:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield
