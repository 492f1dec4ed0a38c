"""nnxp.distributed: N ranks under mpiexec train the same model as one process, and faults end the job.

The cases live in tests/_dist_cases.py, which runs here in one process and under ``mpiexec -n 2`` / ``-n 3``
(oversubscribed, allowed as root). Equality is within 1e-10 in float64: the ranks sum their share-weighted
gradients, which rounds differently from one process's mean. Dropout is held to the same standard: each rank draws
the mask one process would draw for the whole global batch and keeps the rows of its own samples (per-rank masks,
cut from one stream), so a Dropout model trains like one process too. (A mask made on the device from a seed, by
hashing the row index, gets a seed of each rank's own instead: equal in distribution, not bit for bit.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nnxp
from nnxp import distributed

sys.path.insert(0, str(Path(__file__).parent))
import _dist_cases as cases  # noqa: E402

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec") or str(Path(sys.executable).parent / "mpiexec")
if not Path(MPIEXEC).exists():
    pytest.skip("no mpiexec (pip install 'nnxp[mpi]')", allow_module_level=True)
SCRIPT = Path(__file__).parent / "_dist_cases.py"
ROOT = Path(__file__).resolve().parents[1]


TIMEOUT = 150  # seconds for every launch together; a hung job fails the tests instead of hanging them
RUNS = {"train2": (2, "train"), "train3": (3, "train"), "fail": (2, "fail"), "mismatch": (2, "mismatch"),
        "smallbatch": (3, "smallbatch"), "killed": (2, "killed"),
        "cli": (2, "-m", "nnxp", "train", "--dataset", "digits", "--distributed", "--epochs", "2", "--dtype", "float64",
                "--validation-split", "0.2", "--json")}


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict:
    """Every mpiexec job of this module, started at once (most of a launch is waiting), then collected:
    name -> (return code, stdout + stderr, its output folder)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    model, _, _ = cases.run("adam", epochs=1)  # a one-process file that the MPI runs resume from
    model.save(tmp_path_factory.getbasetemp() / "one-process-epoch1.nnxp")
    jobs = {}
    for name, (n, *args) in RUNS.items():
        out = tmp_path_factory.mktemp(name)
        argv = args if args[0] == "-m" else [str(SCRIPT), str(out), *args]
        cmd = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", str(n), sys.executable, *argv]
        jobs[name] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                       start_new_session=True), out)
    deadline = time.monotonic() + TIMEOUT
    results = {}
    for name, (proc, out) in jobs.items():
        try:
            text, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text = proc.communicate()[0] + f"\n<killed after {TIMEOUT} s: the job hung>"
        results[name] = (proc.returncode, text, out)
    return results


@pytest.fixture(scope="module")
def single() -> dict:
    """Every case trained in this one process (the reference)."""
    return {case: cases.run(case) for case in cases.CASES}


@pytest.mark.parametrize("n", [2, 3])
def test_n_ranks_train_like_one_process(n, single, launched):
    code, text, tmp_path = launched[f"train{n}"]
    assert code == 0, text
    got = np.load(tmp_path / "results.npz")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["size"] == n
    assert text.count("Epoch 1/1") == 1 and sum(line.startswith("loss: ") for line in text.splitlines()) == 1, text
    for case in [*cases.CASES, "nccl", "overlap_dropout", "overlap_weighted"]:
        model, hist, ev = single["adam" if case == "nccl" else case.removeprefix("overlap_")]
        for i, w in enumerate(model.get_weights()):
            np.testing.assert_allclose(got[f"{case}_w{i}"], w, rtol=0, atol=1e-10, err_msg=f"{case} weights[{i}]")
        assert meta[case]["history"].keys() == hist.keys()
        for key, values in hist.items():  # (the script checked that every rank returned the same History)
            np.testing.assert_allclose(meta[case]["history"][key], values, rtol=0, atol=1e-10, err_msg=key)
        for key, value in ev.items():  # evaluate: every rank a part of the rows, reduced
            assert abs(meta[case]["evaluate"][key] - value) < 1e-10, (case, key)
    # data="sharded": each rank its own rows, the same global batches as one process given them in that order
    model, hist = cases.run_sharded(n, None)
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_allclose(got[f"sharded_w{i}"], w, rtol=0, atol=1e-10, err_msg=f"sharded weights[{i}]")
    # a one-process file (epoch 1) resumed under MPI ends where one process ends
    for i, w in enumerate(single["adam"][0].get_weights()):
        np.testing.assert_allclose(got[f"resumed_w{i}"], w, rtol=0, atol=1e-10, err_msg=f"resumed weights[{i}]")
    for key, values in hist.items():
        np.testing.assert_allclose(meta["sharded"]["history"][key], values, rtol=0, atol=1e-10, err_msg=key)
    # the divergence guard: the same decision at the same batch on every rank, and the same rollback
    assert len(single["weighted"][1]["loss"]) == 2  # (EarlyStopping did stop that case early)
    x, y, _ = cases.data()
    x[100] *= 1e300
    model = cases.build("sgd")
    with pytest.raises(nnxp.errors.NumericalError) as info:
        model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert meta["diverged"] == [str(info.value)] * n
    for i, w in enumerate(model.get_weights()):
        np.testing.assert_array_equal(got[f"diverged_w{i}"], w)
    # one all-reduce of the flat gradient buffer per step (3 epochs of ceil(162 / 32) = 6 steps), on NCCL's path
    assert meta["nccl"]["calls"] == 3 * 6
    # the checkpoint is written once per epoch, by the main rank only, and resumes in one process
    assert meta["writes"] == [[str(tmp_path / "ckpt-1.nnxp"), str(tmp_path / "ckpt-2.nnxp")]] + [[]] * (n - 1)
    resumed = nnxp.load_model(tmp_path / "ckpt-2.nnxp")
    x, y, _ = cases.data()
    resumed.fit(x, y, epochs=3, initial_epoch=2, batch_size=32, validation_split=0.2, verbose=0)
    for a, b in zip(resumed.get_weights(), single["adam"][0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_cuda_under_mpi_goes_through_nccl_on_each_ranks_gpu_and_trains_like_one_process(single, tmp_path):
    """device="cuda" on the stand-in CuPy (gputools' tests/_stand_in_cupy.py, kernels.cu on the CPU emulator) and
    the stand-in NCCL: each rank on its own GPU, NCCL's device path (pointers, the model's stream), one all-reduce
    per step, eager and captured in a CUDA graph (cuda_graph=True). Not a real GPU or NCCL: it checks nnxp's side
    of the calls, not NCCL."""
    pytest.importorskip("_stand_in_cupy", reason="needs the stand-in CuPy (tests/_stand_in_cupy.py)")
    import _cuda_emu

    (tmp_path / "emulator").mkdir()
    if _cuda_emu.build(tmp_path / "emulator") is None:
        pytest.skip("no C++ compiler for the CUDA emulator")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", "2", sys.executable, str(SCRIPT), str(tmp_path),
           "cuda", str(tmp_path / "emulator")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads((tmp_path / "cuda.json").read_text())
    for graphs in ("False", "True"):
        assert [r["device"] for r in info[graphs]] == ["cuda:0", "cuda:1"]
        assert all(r["calls"] == 3 * 6 for r in info[graphs])  # one NCCL all-reduce per step, replayed ones too
        got = np.load(tmp_path / f"cuda-{graphs}.npz")
        for i, w in enumerate(single["adam"][0].get_weights()):  # float64: the CUDA kernels agree with the CPU
            np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=0, atol=1e-10)
    # cuda_graph=True: every full batch (5 of each epoch's 6) is a replay but the very first (run eagerly, then
    # captured); the calls above count NCCL's work when it runs, so the captured all-reduce ran in each replay
    assert [r["replays"] for r in info["True"]] == [3 * 5 - 1] * 2


def test_an_exception_on_one_rank_ends_the_job_with_its_message(launched):
    code, out, _ = launched["fail"]
    assert code not in (0, None), out
    assert "[nnxp rank 1/2]" in out and "ValueError: rank one fails on purpose" in out
    assert "finished" not in out


def test_a_killed_rank_ends_the_job_and_its_last_checkpoint_resumes_exactly(launched, single):
    code, out, tmp_path = launched["killed"]
    assert code not in (0, None), out
    assert (tmp_path / "ckpt-1.nnxp").exists() and not (tmp_path / "ckpt-2.nnxp").exists()
    resumed = nnxp.load_model(tmp_path / "ckpt-1.nnxp")  # in one process: the file format is the ordinary one
    x, y, _ = cases.data()
    resumed.fit(x, y, epochs=3, initial_epoch=1, batch_size=32, validation_split=0.2, verbose=0)
    for a, b in zip(resumed.get_weights(), single["adam"][0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_ranks_given_different_runs_are_refused_naming_the_difference(launched):
    code, out, _ = launched["mismatch"]
    assert code not in (0, None), out
    assert "rank 1 has optimizer.learning_rate=0.02 but rank 0 has optimizer.learning_rate=0.01" in out
    assert "finished" not in out


def test_a_batch_smaller_than_the_number_of_ranks_is_refused(launched):
    code, out, _ = launched["smallbatch"]
    assert code not in (0, None), out
    assert "must be at least the number of ranks (3)" in out and "Received: batch_size=2" in out


def test_cli_train_distributed_prints_once_and_matches_one_process(launched):
    from nnxp import cli

    code, text, _ = launched["cli"]
    assert code == 0, text
    lines = [line for line in text.splitlines() if line.startswith("{")]
    assert len(lines) == 1, text  # only the main rank prints
    got = json.loads(lines[0])
    args = cli.make_parser().parse_args(list(RUNS["cli"][3:]))
    args.distributed = False
    want = cli.train(args)
    assert got["epochs"] == want["epochs"] == 2
    for key, values in want["history"].items():
        np.testing.assert_allclose(got["history"][key], values, rtol=0, atol=1e-10, err_msg=key)


# --- in one process ---------------------------------------------------------------------------------------------
def test_init_without_a_launcher_is_the_single_process_communicator(monkeypatch):
    for var in distributed._LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(distributed, "_current", None)
    comm = distributed.init()
    assert comm is distributed.init() is distributed.current()
    assert (comm.rank, comm.size, comm.local_rank, comm.is_main) == (0, 1, 0, True)
    g = np.arange(4.0)
    assert comm.allreduce(g) is g and comm.bcast(g) is g
    assert comm.allreduce([1.5, 2.0]).tolist() == [1.5, 2.0]


def test_shards_cover_the_rows_with_sizes_differing_by_at_most_one():
    for size in (1, 2, 3, 5):
        for n in (0, 1, 2, 7, 32):
            parts = []
            for rank in range(size):
                comm = distributed.Communicator()
                comm.rank, comm.size = rank, size
                parts.append(comm.shard(n))
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            sizes = [hi - lo for lo, hi in parts]
            assert max(sizes) - min(sizes) <= 1


def test_sharded_generator_gives_each_rank_its_rows_of_the_whole_batch_draw():
    whole = np.random.default_rng(3).random((10, 4))
    out = np.empty((3, 4))
    gen = distributed.ShardedGenerator(np.random.default_rng(3), [10, 4, 7])
    gen.random(out=out, dtype=np.float64)
    np.testing.assert_array_equal(out, whole[4:7])
    # a draw that is not a batch's mask (a seed for a mask made on the device) is each rank's own, reproducibly
    seeds = [distributed.ShardedGenerator(np.random.default_rng(3), [10, 4, 7], rank).random(size=2)
             for rank in (0, 1, 0)]
    assert not np.array_equal(seeds[0], seeds[1]) and np.array_equal(seeds[0], seeds[2])


def test_check_same_names_the_first_difference():
    class Two(distributed.Communicator):
        def allgather_object(self, obj):
            return [obj, {**obj, "fit.batch_size": 64}]

    with pytest.raises(nnxp.NnxpError, match=r"rank 1 has fit.batch_size=64 but rank 0 has fit.batch_size=32"):
        distributed.check_same(Two(), {"fit": {"batch_size": 32}, "loss": "mse"})
    distributed.check_same(distributed.Communicator(), {"fit": {"batch_size": 32}})  # one rank: nothing to compare


def test_the_stand_in_nccl_has_the_real_modules_names_and_codes():
    real = pytest.importorskip("cupy_backends.cuda.libs.nccl", reason="needs libnccl.so.2", exc_type=ImportError)
    from mpi4py import MPI

    fake = cases.stand_in_nccl(MPI.COMM_SELF)
    for name in ("NCCL_FLOAT32", "NCCL_FLOAT64", "NCCL_SUM"):
        assert getattr(real, name) == getattr(fake, name), name
    for method in ("allReduce", "bcast"):
        assert hasattr(real.NcclCommunicator, method) and hasattr(fake.NcclCommunicator, method)
    assert isinstance(real.get_unique_id(), tuple) and len(real.get_unique_id()) == len(fake.get_unique_id())


def test_sharded_plan_covers_every_ranks_rows_once_and_ranks_that_run_out_get_empty_shares():
    rows, batch = [5, 0, 9], 6
    plans = []
    for rank in range(3):
        comm = distributed.Communicator()
        comm.rank, comm.size, comm.data, comm.rank_rows = rank, 3, "sharded", rows
        plans.append(comm.batches(rows[rank], batch))
    assert len({len(p) for p in plans}) == 1 and len(plans[0]) == 5  # every rank runs the same number of steps
    for rank, plan in enumerate(plans):
        covered = [i for lo, hi, _, _ in plan for i in range(lo, hi)]
        assert covered == list(range(rows[rank]))
    for step in zip(*plans):  # the global batch is the sum of the shares, and each rank knows where its rows sit
        sizes = [hi - lo for lo, hi, _, _ in step]
        assert all(nb == sum(sizes) for _, _, nb, _ in step)
        assert [first for _, _, _, first in step] == [0, sizes[0], sizes[0] + sizes[1]]


def test_cuda_without_an_index_is_the_default_gpu_that_init_sets_to_the_local_rank(monkeypatch):
    from nnxp import backend

    monkeypatch.setattr(backend, "_require_cuda", lambda index: None)  # no GPU needed to name one
    monkeypatch.setattr(backend, "_DEFAULT_CUDA_INDEX", 0)
    assert backend.get_device("cuda").index == 0
    backend.set_default_cuda_index(3)
    assert backend.get_device("cuda").index == 3 and backend.get_device("cuda:1").index == 1


def test_replicated_data_in_a_different_row_order_is_refused():
    # the fingerprint once summed the data, so rows reordered on one rank (exact sums: small integers) passed
    # and the ranks silently trained on different batches (found by helper distbreak under mpiexec -n 2)
    seen = []

    class Recorder(distributed.Communicator):
        size = 2

        def allgather_object(self, obj):
            seen.append(obj)
            return [obj, obj]

        def bcast_object(self, obj, root=0):
            return obj

        def bcast(self, x, root=0):
            return x

    x = (np.arange(30, dtype=np.float64).reshape(10, 3) % 7) - 3
    y = np.array([0, 1] * 5)
    for xs, ys in ((x, y), (x[::-1].copy(), y[::-1].copy())):
        model = nnxp.Sequential([nnxp.Dense(4, "relu", input_dim=3), nnxp.Dense(2, "softmax")], seed=1, dtype="float64")
        model.compile("sgd", "sparse_categorical_crossentropy")
        model.build(3)
        distributed.start_fit(Recorder(), model, (xs, ys, None), None, batch_size=4, epochs=1)
    with pytest.raises(nnxp.NnxpError, match=r"rank 1 has fit.data"):
        distributed.check_same(type("Two", (distributed.Communicator,), {
            "allgather_object": lambda self, obj: [seen[0], seen[1]]})(), {})


def test_evaluate_under_mpi_refuses_ranks_given_different_rows(monkeypatch):
    # evaluate is collective: ranks given different rows (or weights on one rank only) returned different answers,
    # or died in MPI_ERR_TRUNCATE (found by helper distbreak); now the first difference is named before any reduce
    class Two(distributed.Communicator):
        size = 2

        def __init__(self, other):
            self.other = other

        def allgather_object(self, obj):
            return [obj, self.other]

    model = nnxp.Sequential([nnxp.Dense(2, "softmax", input_dim=3)], seed=0, dtype="float64")
    model.compile("sgd", "sparse_categorical_crossentropy")
    x, y = np.arange(30.0).reshape(10, 3), np.array([0, 1] * 5)
    fp = {"evaluate": distributed.data_fingerprint(Two(None), model.device.asarray(x), y, None)}
    flat = distributed._flatten("", fp, {})
    for other_x, w, key in ((x[:7], None, "evaluate.x"), (x, np.ones(10), "evaluate.weighted")):
        theirs = distributed.data_fingerprint(Two(None), other_x, y[: len(other_x)], None)
        other = distributed._flatten("", {"evaluate": theirs}, {})
        comm = Two(other)
        monkeypatch.setattr(distributed, "_current", comm)
        with pytest.raises(nnxp.NnxpError, match=rf"rank 1 has {key}"):
            model.evaluate(x, y, verbose=0, sample_weight=w)
    distributed.check_same(Two(flat), fp)  # the same rows everywhere: no complaint
