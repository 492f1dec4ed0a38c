"""Training cases for tests/test_distributed.py, run both in one process and under ``mpiexec -n N``.

``python tests/_dist_cases.py OUT_DIR MODE`` under mpiexec: MODE "train" runs every case, checks that all ranks
end bit-identical, and has rank 0 write the weights and histories to OUT_DIR/results.npz; the other modes are the
failure cases (a rank that raises, ranks given different runs, a batch smaller than the number of ranks).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import nnxp
from nnxp import Dense, Dropout, Sequential, distributed, optimizers, regularizers
from nnxp.callbacks import Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint
from nnxp.errors import NumericalError

N_SAMPLES = 203  # 41 validation rows, 162 training rows: batches of 32 end with 2 rows (an empty share at N=3)


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N_SAMPLES, 7))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int) + (x[:, 3] > 0.5)
    w = rng.uniform(0.2, 2.0, N_SAMPLES)
    return x, y, w


CASES = {
    "sgd": dict(opt=lambda: optimizers.SGD(0.05, momentum=0.9)),
    "adam": dict(opt=lambda: optimizers.Adam(0.01)),
    "dropout": dict(opt=lambda: optimizers.Adam(0.01), dropout=0.3),
    # no shuffle, an L2 penalty (whose gradient each rank adds: it must count once) and sample weights; a
    # learning-rate schedule, and EarlyStopping that stops after epoch 2 and restores epoch 1's weights
    "weighted": dict(opt=lambda: optimizers.SGD(0.05, momentum=0.9), shuffle=False, l2=1e-3, weights=True,
                     callbacks=lambda: [LearningRateScheduler(lambda epoch, lr: lr * 0.7),
                                        EarlyStopping(patience=0, restore_best_weights=True)]),
}


def build(case: str, device: str = "cpu") -> Sequential:
    c = CASES[case]
    reg = regularizers.L2(c["l2"]) if c.get("l2") else None
    layers = [Dense(16, "relu", input_dim=7, kernel_regularizer=reg)]
    if c.get("dropout"):
        layers.append(Dropout(c["dropout"]))
    layers.append(Dense(3, "softmax"))
    model = Sequential(layers, seed=1, dtype="float64", device=device)
    model.compile(c["opt"](), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run(case: str, epochs: int = 3, callbacks: list | None = None) -> tuple[Sequential, dict, dict]:
    """Train `case`; returns the model, its History's dict and evaluate's dict on the whole data."""
    x, y, w = data()
    c = CASES[case]
    model = build(case)
    hist = model.fit(x, y, epochs=epochs, batch_size=32, validation_split=0.2, shuffle=c.get("shuffle", True),
                     sample_weight=w if c.get("weights") else None, verbose=0,
                     callbacks=[*c.get("callbacks", list)(), *(callbacks or [])])
    return model, hist.history, model.evaluate(x, y, verbose=0, return_dict=True)


def sharded_blocks(size: int, batch: int = 32, steps: int = 6) -> list[tuple[int, int]]:
    """Rank r's own rows under data="sharded": a block of `steps` times its share of `batch` (192 rows in all)."""
    parts = [(r + 1) * batch // size - r * batch // size for r in range(size)]
    ends = np.cumsum([0] + [steps * p for p in parts])
    return [(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:])]


def run_sharded(size: int, rank: int | None) -> tuple[Sequential, dict]:
    """data="sharded" (rank is not None): each rank trains on its own block and validates on its part of the last
    11 rows. In one process (rank None): the same global batches, as the rows in the order the ranks' shares make
    them (without shuffling), so the two runs must agree."""
    x, y, _ = data()
    xv, yv = x[192:], y[192:]
    blocks = sharded_blocks(size)
    if rank is None:
        parts = [(b - a) // 6 for a, b in blocks]
        order = [a + k * p + i for k in range(6) for (a, _), p in zip(blocks, parts) for i in range(p)]
        x, y = x[order], y[order]
    else:
        (a, b), (lo, hi) = blocks[rank], distributed.current().shard(len(xv))
        x, y, xv, yv = x[a:b], y[a:b], xv[lo:hi], yv[lo:hi]
    model = build("sgd")
    hist = model.fit(x, y, epochs=3, batch_size=32, validation_data=(xv, yv), shuffle=False, verbose=0)
    return model, hist.history


def stand_in_nccl(mpi_comm, enqueue=None):
    """A stand-in for ``cupy.cuda.nccl`` over mpi4py, for machines without GPUs. It has the names and signatures
    of CuPy's ``cupy_backends/cuda/libs/nccl.pyx`` (get_unique_id; NcclCommunicator(ndev, commId, rank) with
    allReduce(sendbuf, recvbuf, count, datatype, op, stream) and bcast(buff, count, datatype, root, stream) on raw
    pointers; nccl.h's codes ncclFloat32 = 7, ncclFloat64 = 8, ncclSum = 0) and acts on the memory at those
    pointers, refusing what NCCL refuses here (a commId that is not get_unique_id's 128-tuple, ranks that disagree
    on it, an unknown datatype). Like NCCL it works in stream order: `enqueue(work, stream)` (the stand-in CuPy's)
    runs the collective now, or records it into a CUDA graph being captured on that stream. test_distributed.py
    checks these names against the real module where it loads (it needs libnccl.so.2, absent here: it skips)."""
    from mpi4py import MPI

    c_types = {7: ctypes.c_float, 8: ctypes.c_double}

    def view(ptr: int, count: int, datatype: int) -> np.ndarray:
        if datatype not in c_types:
            raise RuntimeError(f"NCCL error: invalid argument (datatype {datatype})")
        return np.ctypeslib.as_array((c_types[datatype] * count).from_address(ptr))

    class NcclCommunicator:
        calls = 0

        def __init__(self, ndev: int, commId: tuple, rank: int) -> None:
            if not isinstance(commId, tuple) or len(commId) != 128:  # `tuple commId`, NCCL_UNIQUE_ID_BYTES
                raise TypeError("commId must be the 128-tuple get_unique_id() returns")
            ids = mpi_comm.allgather(tuple(commId))
            if ndev != mpi_comm.Get_size() or rank != mpi_comm.Get_rank() or len(set(ids)) != 1:
                raise RuntimeError("NCCL error: invalid usage (ranks disagree on the unique id, size or rank)")

        def allReduce(self, sendbuf: int, recvbuf: int, count: int, datatype: int, op: int, stream: int) -> None:
            if op != 0:
                raise RuntimeError("the stand-in implements ncclSum only")
            recv = view(recvbuf, count, datatype)
            send = MPI.IN_PLACE if sendbuf == recvbuf else view(sendbuf, count, datatype)

            def work() -> None:
                NcclCommunicator.calls += 1
                mpi_comm.Allreduce(send, recv, op=MPI.SUM)

            (enqueue or (lambda fn, _: fn()))(work, stream)

        def bcast(self, buff: int, count: int, datatype: int, root: int, stream: int) -> None:
            mpi_comm.Bcast(view(buff, count, datatype), root=root)

    uid = lambda: tuple(np.random.default_rng().integers(-128, 128, 128).tolist())  # noqa: E731 (C chars)
    return SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0, NcclCommunicator=NcclCommunicator,
                           get_unique_id=uid)


def _same_everywhere(comm, arrays: list[np.ndarray], what: str) -> None:
    every = comm.allgather_object([a.tobytes() for a in arrays])
    assert all(e == every[0] for e in every), f"{what}: the ranks' weights differ"


def main_train(out: Path) -> None:
    comm = nnxp.distributed.init()
    assert comm is nnxp.distributed.init(), "init() must be idempotent"
    assert comm.local_rank == comm.rank and comm.is_main == (comm.rank == 0)  # one machine: local rank = rank
    results: dict[str, np.ndarray] = {}
    meta: dict = {"size": comm.size}
    for case in CASES:
        model, hist, ev = run(case)
        weights = model.get_weights()
        _same_everywhere(comm, weights, case)
        histories = comm.allgather_object(hist)
        assert all(h == histories[0] for h in histories), f"{case}: the ranks' histories differ"
        results.update({f"{case}_w{i}": a for i, a in enumerate(weights)})
        meta[case] = {"history": hist, "evaluate": ev}
    # the NCCL communicator's code path, over a stand-in NCCL (no GPU here)
    mpi = distributed._current
    distributed._current = nccl = distributed.NcclCommunicator(mpi, stand_in_nccl(mpi.comm))
    model, hist, ev = run("adam")
    distributed._current = mpi
    _same_everywhere(comm, model.get_weights(), "nccl")
    results.update({f"nccl_w{i}": a for i, a in enumerate(model.get_weights())})
    meta["nccl"] = {"history": hist, "evaluate": ev, "calls": type(nccl.nccl_comm).calls}
    # per-layer buckets all-reduced while the backward pass goes on (an empty share at N=3 in the shuffled cases)
    comm.overlap = True
    for case in ("dropout", "weighted"):
        model, hist, ev = run(case)
        _same_everywhere(comm, model.get_weights(), f"overlap {case}")
        results.update({f"overlap_{case}_w{i}": a for i, a in enumerate(model.get_weights())})
        meta[f"overlap_{case}"] = {"history": hist, "evaluate": ev}
    comm.overlap = False
    # ranks that each hold only their own rows
    nnxp.distributed.init(data="sharded")
    model, hist = run_sharded(comm.size, comm.rank)
    comm.data = "replicated"
    _same_everywhere(comm, model.get_weights(), "sharded")
    results.update({f"sharded_w{i}": a for i, a in enumerate(model.get_weights())})
    meta["sharded"] = {"history": hist}
    # a checkpoint per epoch, written by the main rank only
    writes = []
    original = nnxp.io.save_model
    nnxp.io.save_model = lambda m, p: (writes.append(str(p)), original(m, p))
    run("adam", epochs=2, callbacks=[ModelCheckpoint(str(out / "ckpt-{epoch}.nnxp"), save_best_only=False)])
    nnxp.io.save_model = original
    meta["writes"] = comm.allgather_object(writes)
    # a blow-up on one rank's rows (row 100 overflows): every rank stops at the same batch, rolled back alike
    x, y, _ = data()
    x[100] *= 1e300
    model, message = build("sgd"), None
    try:
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    except NumericalError as exc:
        message = str(exc)
    _same_everywhere(comm, model.get_weights(), "diverged")
    results.update({f"diverged_w{i}": a for i, a in enumerate(model.get_weights())})
    meta["diverged"] = comm.allgather_object(message)
    # the other way round: a file saved by one process (after epoch 1) resumes under MPI
    x, y, _ = data()
    model = nnxp.load_model(out.parent / "one-process-epoch1.nnxp")
    model.fit(x, y, epochs=3, initial_epoch=1, batch_size=32, validation_split=0.2, verbose=0)
    _same_everywhere(comm, model.get_weights(), "resumed")
    results.update({f"resumed_w{i}": a for i, a in enumerate(model.get_weights())})
    # progress and evaluate's line: printed by the main rank only
    model = build("sgd")
    x, y, _ = data()
    model.fit(x, y, epochs=1, batch_size=32, verbose=2)
    model.evaluate(x, y, verbose=1)
    if comm.is_main:
        np.savez(out / "results.npz", **results)
        (out / "meta.json").write_text(json.dumps(meta))


def main_cuda(out: Path, emulator_dir: str) -> None:
    """device="cuda" under MPI on the stand-in CuPy (tests/_stand_in_cupy.py: host memory behind `.data.ptr`,
    kernels.cu on the CPU emulator) with the stand-in NCCL: the NcclCommunicator's device path, end to end."""
    import _cuda_emu
    import _stand_in_cupy

    from nnxp import backend
    from nnxp.ops import _cublas, _cuda

    backend._cupy = _stand_in_cupy.stand_in_cupy(_cuda_emu.build(Path(emulator_dir)))
    _cuda._KERNELS = _cuda.LazyKernels()
    # cuBLAS called directly under capture cannot load here: the stand-in's gemm takes its place (as test_graph.py)
    _cublas._gemm = _stand_in_cupy.captured_gemm
    _cublas._prepare_capture = lambda device_id: None  # the cuBLAS handle and workspace (no libcublas here)
    fake = backend._cupy
    comm = nnxp.distributed.init()  # after the stand-in: device="cuda" is this rank's (stand-in) GPU

    def enqueue(work, stream_ptr):  # NCCL runs on the stream it is given: the model's current one
        stream = fake.cuda.get_current_stream()
        assert stream.ptr == stream_ptr, "NCCL was handed another stream than the current one"
        _stand_in_cupy._enqueue(work, stream)

    nccl = stand_in_nccl(comm.comm, enqueue)
    backend.nccl_module = lambda: nccl
    x, y, _ = data()
    info = {}
    for graphs in (False, True):  # eager steps; then steps replayed from a captured CUDA graph, NCCL inside
        nccl.NcclCommunicator.calls = 0
        model = build("adam", device="cuda")
        model.fit(x, y, epochs=3, batch_size=32, validation_split=0.2, verbose=0, cuda_graph=graphs)
        _same_everywhere(comm, model.get_weights(), f"cuda graphs={graphs}")
        info[str(graphs)] = comm.allgather_object({"device": model.device.name, "calls": nccl.NcclCommunicator.calls,
                                                   "replays": nnxp.training.graph_replays(model)})
        if comm.is_main:
            np.savez(out / f"cuda-{graphs}.npz", *model.get_weights())
    if comm.is_main:
        (out / "cuda.json").write_text(json.dumps(info))


class _Fail(Callback):
    def __init__(self, mode: str) -> None:
        self.mode, self.epoch = mode, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch == 2 and distributed.current().rank == 1:
            if self.mode == "fail":
                raise ValueError("rank one fails on purpose")
            if self.mode == "killed" and self.epoch == 1:  # dies mid-epoch 2, after checkpoint 1
                os.kill(os.getpid(), signal.SIGKILL)


def main_fault(mode: str, out: Path) -> None:
    comm = nnxp.distributed.init()
    if mode == "killed":
        run("adam", callbacks=[_Fail(mode), ModelCheckpoint(str(out / "ckpt-{epoch}.nnxp"), save_best_only=False)])
        return
    x, y, _ = data()
    model = build("adam")
    if mode == "mismatch" and comm.rank == 1:
        model.compile(optimizers.Adam(0.02), "sparse_categorical_crossentropy", metrics=["accuracy"])
    batch = 2 if mode == "smallbatch" else 32  # (run with 3 ranks)
    model.fit(x, y, epochs=2, batch_size=batch, verbose=0, callbacks=[_Fail(mode)])
    print("finished", flush=True)


if __name__ == "__main__":
    if sys.argv[2] == "train":
        main_train(Path(sys.argv[1]))
    elif sys.argv[2] == "cuda":
        main_cuda(Path(sys.argv[1]), sys.argv[3])
    else:
        main_fault(sys.argv[2], Path(sys.argv[1]))
