"""Counted budgets of one training step on CUDA (issue 11), on the stand-in CuPy and the CPU emulator of CUDA.

What the host asks of CUDA in a step decides small-batch GPU speed: launches, memory-pool allocations, host
synchronisations, copies from pageable host memory, cudaSetDevice calls. tests/_stand_in_cupy.py counts each
of them where CuPy 14.2's source makes the call, so the budgets are exact counts here, without a GPU and
without timing anything. The model is the issue's: 784-512-256-10, ReLU, softmax + sparse CE, Adam,
metrics=["accuracy"], batch 128, on a device with 132 SMs (an H100 SXM; the block counts depend on it).

A step is what happens between two on_train_batch_end calls in one epoch (the gather, forward, loss, backward,
metrics, the optimizer and the epoch's bookkeeping); each epoch's first batch also carries the epoch's set-up
and is left out. Budgets that do not hold yet are xfail(strict=True) with today's count as the reason: when a
change meets one, its test fails until the mark is removed.
"""

from __future__ import annotations

import _stand_in_cupy
import numpy as np
import pytest

import nnxp
import nnxp.backend as backend
from nnxp.callbacks import Callback
from nnxp.ops import _cublas, _cuda

BATCH, BATCHES, EPOCHS = 128, 3, 2
SMS = 132  # an H100 SXM's multiprocessors: how many blocks nnxp launches (and so the launch count) depend on it


def _fit_counting(graph: bool, dropout: bool = False,
                  launch_lists: bool = True) -> list[tuple[int, int, _stand_in_cupy.Counts]]:
    """(epoch, batch, counts of that step) for each step after the first of its epoch (`dropout`: with a Dropout
    after each hidden layer; `launch_lists`: an eager fit keeps its step as a launch list, else every step is
    made call by call)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(BATCH * BATCHES, 784)).astype(np.float32)
    y = rng.integers(0, 10, BATCH * BATCHES)
    drop = [nnxp.Dropout(0.2)] if dropout else []
    drop2 = [nnxp.Dropout(0.1)] if dropout else []
    model = nnxp.Sequential([nnxp.Dense(512, "relu", input_dim=784), *drop, nnxp.Dense(256, "relu"), *drop2,
                             nnxp.Dense(10, "softmax")], device="cuda", seed=0)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    steps: list[tuple[int, int, _stand_in_cupy.Counts]] = []
    where = {"epoch": -1, "last": None}

    # patched on the base class, so no callback "overrides" on_train_batch_end: fit then reads no batch loss
    # (a host sync it makes only for such callbacks), exactly as with History alone
    def on_epoch_begin(self, epoch, logs=None):
        where["epoch"], where["last"] = epoch, None

    def on_train_batch_end(self, batch, logs=None):
        now = _stand_in_cupy.COUNTS.snapshot()
        if where["last"] is not None:
            steps.append((where["epoch"], batch, now.minus(where["last"])))
        where["last"] = now

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Callback, "on_epoch_begin", on_epoch_begin)
        mp.setattr(Callback, "on_train_batch_end", on_train_batch_end)
        mp.setattr(nnxp.training, "LAUNCH_LISTS", launch_lists)
        model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, cuda_graph=graph)
    kept = EPOCHS * BATCHES - 1  # all but the eager warm-up
    assert nnxp.training.graph_replays(model) == (kept if graph else 0)
    assert nnxp.training.launched_steps(model) == (kept if launch_lists and not graph else 0)
    return steps


@pytest.fixture(scope="module")
def counted(emulator):
    """{"eager": [...], "graph": [...]}: the counts of every step after an epoch's first, of one fit each."""
    with pytest.MonkeyPatch.context() as mp:
        # device.pyx Device.attributes, as an H100 reports them (the stand-in's own device has 1 SM)
        mp.setattr(_stand_in_cupy.Device, "attributes",
                   property(lambda self: {"MultiProcessorCount": SMS, "MaxThreadsPerBlock": 1024, "WarpSize": 32}))
        mp.setattr(backend, "_cupy", _stand_in_cupy.stand_in_cupy(emulator))
        mp.setattr(_cuda, "_KERNELS", _cuda.LazyKernels())
        mp.setattr(_cuda, "_SCRATCH", {})
        mp.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)  # the graph seam of tests/test_graph.py
        mp.setattr(_cublas, "_prepare_capture", lambda device_id: None)
        eager = _fit_counting(graph=False, launch_lists=False)
        launched = _fit_counting(graph=False)
        launched_dropout = _fit_counting(graph=False, dropout=True)
        graph = _fit_counting(graph=True)
        dropout = _fit_counting(graph=True, dropout=True)
    # a kept step's first epoch holds the eager warm-up and the capture (or recording): only later epochs are
    # steady replays
    return {"eager": [c for _, _, c in eager], "graph": [c for epoch, _, c in graph if epoch > 0],
            "graph_dropout": [c for epoch, _, c in dropout if epoch > 0],
            "launched": [c for epoch, _, c in launched if epoch > 0],
            "launched_dropout": [c for epoch, _, c in launched_dropout if epoch > 0]}


def _each(counted, kind, field):
    steps = counted[kind]
    assert len(steps) >= BATCHES - 1
    return sorted({getattr(c, field) for c in steps})


# --- fit(cuda_graph=True): each full batch is one graph launch and nothing else ---------------------------------


def test_graphed_step_is_one_graph_launch(counted):
    assert _each(counted, "graph", "graph_launches") == [1]


def test_graphed_step_launches_nothing_beside_the_graph(counted):
    # (was 4: 2 gathers (take) into the batch buffers, 2 copies into the epoch's record (the loss, the accuracy
    # sum); 6 before that, with loss*nb and loss_sum+=. The graph now gathers, records and advances its step
    # counter itself, nnxp/_graph.py)
    assert _each(counted, "graph", "launches") == [0]


def test_graphed_step_sets_no_device(counted):
    # (was 2 per replay: ndarray.set of the step's scalars calls setDevice there and back, core.pyx set)
    assert _each(counted, "graph", "set_device") == [0]


def test_graphed_step_allocates_nothing(counted):
    # (was 1 per step: loss * nb, before the epoch's loss was summed from batch_losses at its end)
    assert _each(counted, "graph", "allocations") == [0]


def test_graphed_step_never_waits_for_the_device(counted):
    assert _each(counted, "graph", "syncs") == [0]


def test_graphed_step_copies_nothing_from_pageable_memory(counted):
    # (was 1: hp.set of the optimizer's scalars from a NumPy array; then 1 from a ring of pinned slots; now none:
    # the epoch's scalars are one table, uploaded at the epoch's first replay, read on the device per step)
    assert _each(counted, "graph", "h2d_pageable") == [0]
    assert _each(counted, "graph", "h2d_pinned") == [0]


@pytest.mark.parametrize("field", ["launches", "allocations", "syncs", "h2d_pageable", "h2d_pinned", "set_device"])
def test_graphed_step_with_dropout_is_one_graph_launch_and_nothing_else(counted, field):
    # Dropout's mask comes from its (seed, step) device state, bumped by a node of the graph (nnxp/layers.py)
    assert _each(counted, "graph_dropout", "graph_launches") == [1]
    assert _each(counted, "graph_dropout", field) == [0]


# --- eager steps ------------------------------------------------------------------------------------------------


EAGER = ["eager", "launched", "launched_dropout"]  # made call by call; kept as a launch list (nnxp._graph)


@pytest.mark.parametrize("kind", EAGER)
def test_eager_step_allocates_nothing_after_the_first(counted, kind):
    # (was 10: loss * nb, 3 bias partials, argmax, ==, sum, and the loss's value, partials and ticket counter,
    # which the head's loss_out and the stream's kept scratch now hold; 5 for a while with the softmax of the
    # metrics' probabilities by the reference)
    assert _each(counted, kind, "allocations") == [0]


def test_eager_step_launches_at_most_22_kernels(counted):
    # (was 29; 22, then 20 with accuracy's count in one launch (nnxp_count_correct): bench/results/launch-list.md)
    assert max(_each(counted, "eager", "launches")) == 20
    # kept as a launch list, the step gathers x and y and copies its scalars on the device and writes its record
    # column (4 launches) where the call-by-call step gathers x (the labels once per epoch) and sets the record
    assert _each(counted, "launched", "launches") == [22]
    assert _each(counted, "launched_dropout", "launches") == [22 + 2 * 3]  # each Dropout: step, forward, backward


@pytest.mark.parametrize("kind", EAGER)
def test_eager_step_sets_no_device_when_it_is_current(counted, kind):
    # (was 17 per step: a `with Device(dev)` around each launch, whose __exit__ always calls cudaSetDevice)
    assert _each(counted, kind, "set_device") == [0]


@pytest.mark.parametrize("kind", EAGER)
def test_eager_step_never_waits_for_the_device(counted, kind):
    assert _each(counted, kind, "syncs") == [0]
    assert _each(counted, kind, "h2d_pageable") == [0] and _each(counted, kind, "h2d_pinned") == [0]


def test_the_steps_are_counted_at_all(counted):
    # the counters see the step: guards the budgets above against a counter that stopped counting
    for kind in EAGER:
        names = counted[kind][0].names
        assert names.count("gemm") == 8  # 3 forward + 5 backward GEMMs (no dx for the first layer)
        assert names.count("nnxp_adam<float>") == 1 and names.count("nnxp_count_correct<float>") == 1
        assert all(c.names == names for c in counted[kind])  # every steady step launches the same list


def test_a_launch_list_step_launches_what_the_eager_step_launches(counted):
    # the same kernels in the same order; only the batch's bookkeeping differs (the gather and the record,
    # read on the device at the step's cursor, and the optimizer's scalars read from the epoch's table)
    eager, launched = counted["eager"][0].names, counted["launched"][0].names
    assert eager[0] == "ndarray.take" and eager[-1] == "setitem"
    assert launched[:3] == ["nnxp_gather_rows<float>", "nnxp_gather_rows<double>", "nnxp_gather_rows<float>"]
    assert launched[-1] == "nnxp_record_step<float>"
    assert launched[3:-1] == eager[1:-1]
