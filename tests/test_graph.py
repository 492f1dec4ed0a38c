"""fit(cuda_graph=True) (nnxp/_graph.py) on the stand-in CuPy and the CPU emulator of CUDA, without a GPU.

The stand-in records what a capturing stream is given and runs it only at replay (tests/_stand_in_cupy.py), so
a step that read a value at capture time, or allocated outside the captured buffers, would diverge from eager
training here. The one seam: nnxp.ops._cublas._gemm calls cuBLAS through ctypes while capturing, which cannot
load without a GPU; _stand_in_cupy.captured_gemm replaces it (a gemm on the current stream, recorded while
capturing). Eager and replayed steps then use the same NumPy matmul, so they must agree bit for bit; on a GPU
they may differ in the last bits (cuBLAS gemm vs CuPy's GemmEx, see test_model.py's GPU tests).
"""

from __future__ import annotations

import warnings

import _stand_in_cupy
import numpy as np
import pytest

import nnxp
from nnxp import Dense, Sequential, _graph
from nnxp.backend import tf32_active
from nnxp.ops import _cublas


@pytest.fixture
def graph_seam(fake_cupy, monkeypatch):
    monkeypatch.setattr(_cublas, "_gemm", _stand_in_cupy.captured_gemm)
    monkeypatch.setattr(_cublas, "_prepare_capture", lambda device_id: None)  # cuBLAS handle + workspace (gpufix)
    return fake_cupy


def _data(n=400):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(n, 20)).astype(np.float32)
    y = (x[:, :5].sum(axis=1) > 0).astype(np.int64) + (x[:, 5] > 0.5)
    return x, y


def _model(optimizer, precision="highest"):
    model = Sequential([Dense(32, "relu", input_dim=20), Dense(16, "gelu"), Dense(3, "softmax")], device="cuda",
                       seed=3, precision=precision)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


OPTIMIZERS = {
    "adam-cosine-clipnorm": lambda: nnxp.optimizers.Adam(nnxp.schedules.CosineDecay(0.01, 40), clipnorm=1.0),
    "sgd-nesterov-wd": lambda: nnxp.optimizers.SGD(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    "rmsprop-centered": lambda: nnxp.optimizers.RMSprop(0.002, centered=True),
    "lion-decay-wd": lambda: nnxp.optimizers.Lion(nnxp.schedules.ExponentialDecay(0.003, 10, 0.9), weight_decay=0.01),
}


def _fit_both(optimizer, precision="highest", epochs=2, batch_size=64):
    x, y = _data()
    eager, graphed = _model(OPTIMIZERS[optimizer](), precision), _model(OPTIMIZERS[optimizer](), precision)
    h_eager = eager.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a failed capture falls back to eager steps with a warning: not here
        h_graph = graphed.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, cuda_graph=True)
    assert nnxp.training.graph_replays(graphed) == epochs * (len(x) // batch_size) - 1  # all but the warm-up batch
    return eager, graphed, h_eager, h_graph


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_replayed_steps_equal_eager_steps_on_the_stand_in(graph_seam, optimizer):
    eager, graphed, h_eager, h_graph = _fit_both(optimizer)
    assert h_graph.history == h_eager.history
    assert graphed.optimizer.iterations == eager.optimizer.iterations
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_replays_wait_for_a_pinned_slot_only_while_the_gpu_has_not_read_it(graph_seam, monkeypatch):
    # the optimizer's scalars go through a ring of pinned slots: a slot is rewritten only after the copy that
    # last read it has run (its event is done), else the host waits for it (Event.synchronize). With events that
    # never report done, every replay past the first lap of the ring waits once, and training is unchanged.
    _, _, h_eager, _ = _fit_both("adam-cosine-clipnorm")
    monkeypatch.setattr(_stand_in_cupy.Event, "done", property(lambda self: False))
    waits = []
    monkeypatch.setattr(_stand_in_cupy.Event, "synchronize", lambda self: waits.append(self.ptr))
    x, y = _data()
    model = _model(OPTIMIZERS["adam-cosine-clipnorm"]())
    h = model.fit(x, y, epochs=2, batch_size=64, verbose=0, cuda_graph=True)
    assert h.history == h_eager.history
    replays = nnxp.training.graph_replays(model)
    assert replays > _graph._RING and len(waits) == replays - _graph._RING
    assert len(set(waits)) == _graph._RING  # one event per slot, reused


def test_replays_compute_at_replay_not_at_capture(graph_seam):
    # the capture itself must not train: after capturing, the weights are what the eager warm-up step left
    x, y = _data(128)
    model = _model(OPTIMIZERS["sgd-nesterov-wd"]())
    model.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)  # warm-up: builds kernels and state
    before = model.get_weights()
    xb = model.device.asarray(x[64:])
    yb = model.device.asarray(y[64:])
    step = nnxp.training.GraphStep(nnxp.training.EagerStep(model), batch_size=64).capture(xb, yb)
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.isnan(float(step.loss))  # poison until the first replay
    loss, _ = step.run()
    assert np.isfinite(float(loss))
    assert any(not np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))


def test_tf32_replays_equal_tf32_eager_and_differ_from_highest(graph_seam):
    eager, graphed, h_eager, h_graph = _fit_both("sgd-nesterov-wd", precision="tf32")
    assert not tf32_active()  # the model's scope restored CuPy's setting
    assert h_graph.history == h_eager.history
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    x, y = _data()
    highest = _model(OPTIMIZERS["sgd-nesterov-wd"]())
    highest.fit(x, y, epochs=2, batch_size=64, verbose=0)
    diffs = [np.abs(a - b).max() for a, b in zip(highest.get_weights(), eager.get_weights(), strict=True)]
    assert 0 < max(diffs) < 1e-2  # TF32 rounds matmul inputs to 10 mantissa bits: close, not equal


WEIGHT_DECAY = {  # every optimizer with weight decay (and each clipping mode once): one update function, both paths
    "sgd": lambda: nnxp.optimizers.SGD(0.05, weight_decay=0.01),
    "sgd-momentum": lambda: nnxp.optimizers.SGD(0.05, momentum=0.9, weight_decay=0.01, clipvalue=0.5),
    "rmsprop": lambda: nnxp.optimizers.RMSprop(0.002, momentum=0.5, centered=True, weight_decay=0.01),
    "adagrad": lambda: nnxp.optimizers.Adagrad(0.01, weight_decay=0.01),
    "adadelta": lambda: nnxp.optimizers.Adadelta(0.5, weight_decay=0.01),
    "adam": lambda: nnxp.optimizers.Adam(0.01, weight_decay=0.01, global_clipnorm=1.0),
    "adamax": lambda: nnxp.optimizers.Adamax(0.01, weight_decay=0.01),
    "adamw": lambda: nnxp.optimizers.AdamW(0.01),
}


@pytest.mark.parametrize("optimizer", sorted(WEIGHT_DECAY))
def test_weight_decay_replays_equal_eager_steps_for_every_optimizer(graph_seam, optimizer):
    x, y = _data(200)
    eager, graphed = _model(WEIGHT_DECAY[optimizer]()), _model(WEIGHT_DECAY[optimizer]())
    h_eager = eager.fit(x, y, epochs=2, batch_size=32, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h_graph = graphed.fit(x, y, epochs=2, batch_size=32, verbose=0, cuda_graph=True)
    assert nnxp.training.graph_replays(graphed) == 2 * (200 // 32) - 1
    assert h_graph.history == h_eager.history and graphed.optimizer.iterations == eager.optimizer.iterations
    for a, b in zip(graphed.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    state = eager.optimizer.get_state()
    assert graphed.optimizer.get_state().keys() == state.keys()
    for k, v in graphed.optimizer.get_state().items():
        np.testing.assert_array_equal(v, state[k])
