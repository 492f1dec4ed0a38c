"""Training-step benchmarks: nnxp against PyTorch eager (and CUDA graphs), scikit-learn and a per-sample loop.

Every implementation trains the same ReLU MLP with softmax cross-entropy on random data that is
already on the device (two preallocated batches, used in turn). nnxp, PyTorch and scikit-learn take
one Adam step per batch (lr 1e-3, epsilon 1e-7, Glorot-uniform weights, zero biases); the
per-sample loop is the tutorial version: plain SGD, one example at a time, on a small slice.
The builders here are shared with test_inference.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

import nnxp

from .conftest import CLASSES, Case, blas_threads

KIND = "train"
LR, EPS, SEED = 1e-3, 1e-7, 0
SGD_LR = 0.01  # the per-sample loop's plain SGD


class Impl:
    """One implementation, ready to run: ``train()`` one timed call, ``infer()`` one forward call,
    ``sync()`` waits for the device, ``check()`` asserts the weights are still finite."""

    def __init__(self, train: Callable, infer: Callable, sync: Callable = lambda: None,
                 check: Callable = lambda: True, info: dict | None = None) -> None:
        self.train, self.infer, self.sync, self.check = train, infer, sync, check
        self.info: dict[str, Any] = info or {}


def host_data(n: int, dim: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs in [0, 1) (n, dim) float32 and labels (n,) int64: throughput does not depend on them."""
    rng = np.random.default_rng(seed)
    return rng.random((n, dim), dtype=np.float32), rng.integers(0, CLASSES, n)


def two_batches(case: Case) -> list[tuple[np.ndarray, np.ndarray]]:
    x, y = host_data(2 * case.batch, case.layers[0])
    return [(x[i * case.batch : (i + 1) * case.batch], y[i * case.batch : (i + 1) * case.batch]) for i in range(2)]


# --- nnxp ----------------------------------------------------------------------------------------


def nnxp_model(case: Case) -> nnxp.Sequential:
    """The case's ReLU MLP with a softmax output and Adam, built on the case's device."""
    sizes = case.layers
    layers = [nnxp.Dense(sizes[1], "relu", input_dim=sizes[0])]
    layers += [nnxp.Dense(units, "relu") for units in sizes[2:-1]] + [nnxp.Dense(sizes[-1], "softmax")]
    model = nnxp.Sequential(layers, device=case.device, seed=SEED, dtype="float32")
    model.compile(nnxp.optimizers.Adam(learning_rate=LR, epsilon=EPS), "sparse_categorical_crossentropy")
    model.build(sizes[0])
    return model


def build_nnxp(case: Case) -> Impl:
    """The internals ``fit`` runs per batch: ``_train_step`` then ``optimizer.apply`` on the flat buffers."""
    model = nnxp_model(case)
    batches = itertools.cycle([model._prepare(x, y) for x, y in two_batches(case)])  # on the device

    def train() -> None:
        xb, yb = next(batches)
        model._train_step(xb, yb)
        model.optimizer.apply(model.params, model.grads)

    def infer() -> None:
        model._forward(next(batches)[0], training=False)  # logits: the fused softmax is left out

    def check() -> bool:
        return bool(model.device.xp.isfinite(model.params).all())

    return Impl(train, infer, model.device.synchronize, check, {"optimizer": "nnxp Adam (one flat buffer)"})


def build_nnxp_cudagraph(case: Case) -> Impl:
    """What ``fit(cuda_graph=True)`` runs per full batch: copy the batch into the static buffers, replay."""
    from nnxp.training import EagerStep, GraphStep

    model = nnxp_model(case)
    batches = [model._prepare(x, y) for x, y in two_batches(case)]
    static_x, static_y = batches[0][0].copy(), batches[0][1].copy()
    model._train_step(static_x, static_y)  # warm-up: kernels built, optimizer state allocated
    model.optimizer.apply(model.params, model.grads)
    step = GraphStep(EagerStep(model), static_x.shape[0]).capture(static_x, static_y)
    turn = itertools.cycle(batches)

    def train() -> None:
        xb, yb = next(turn)
        static_x[...] = xb
        static_y[...] = yb
        step.run()

    def infer() -> None:
        model._forward(next(turn)[0], training=False)

    def check() -> bool:
        return bool(model.device.xp.isfinite(model.params).all())

    return Impl(train, infer, model.device.synchronize, check,
                {"optimizer": "nnxp Adam (one flat buffer) in a CUDA graph"})


# --- PyTorch ------------------------------------------------------------------------------------

_TORCH_THREADS_SET = False


def _torch():
    """torch, using as many CPU threads as NumPy's BLAS (so both get the same cores)."""
    global _TORCH_THREADS_SET
    import torch

    if not _TORCH_THREADS_SET:
        torch.set_num_threads(blas_threads())
        _TORCH_THREADS_SET = True
    return torch


def torch_net(torch, sizes: tuple[int, ...], device: str):
    """The same MLP: Linear+ReLU blocks, Glorot-uniform weights (nnxp's default), zero biases."""
    torch.manual_seed(SEED)
    mods: list = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = torch.nn.Linear(n_in, n_out)
        torch.nn.init.xavier_uniform_(lin.weight)
        torch.nn.init.zeros_(lin.bias)
        mods += [lin] if i == len(sizes) - 2 else [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*mods).to(device)


def torch_adam(torch, params, **kw):
    """Fused Adam when this build has it for the device, else PyTorch's default implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=LR, eps=EPS, fused=True, **kw), "fused"
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=LR, eps=EPS, **kw), "default"


def _torch_batches(torch, case: Case, device: str) -> list:
    return [(torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) for x, y in two_batches(case)]


def build_torch(case: Case) -> Impl:
    torch = _torch()
    device = "cuda" if case.device == "cuda" else "cpu"
    net = torch_net(torch, case.layers, device)
    opt, variant = torch_adam(torch, net.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = itertools.cycle(_torch_batches(torch, case, device))

    def train() -> None:
        xb, yb = next(batches)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), yb).backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode():
            net(next(batches)[0])

    def check() -> bool:
        return all(bool(torch.isfinite(p).all()) for p in net.parameters())

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Impl(train, infer, sync, check, {"optimizer": f"torch Adam ({variant})", "torch_threads":
                                             torch.get_num_threads()})


def build_torch_cudagraph(case: Case) -> Impl:
    """The whole step (forward, backward, Adam) captured once in a CUDA graph and replayed.

    Follows PyTorch's whole-network capture recipe: warm up on a side stream, capture with
    ``capturable`` Adam, then copy each batch into the static inputs and replay. Capture happens
    in the first call, so it is part of the first-call latency.
    """
    torch = _torch()
    net = torch_net(torch, case.layers, "cuda")
    opt, variant = torch_adam(torch, net.parameters(), capturable=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    data = _torch_batches(torch, case, "cuda")
    batches = itertools.cycle(data)
    static_x, static_y = torch.empty_like(data[0][0]), torch.empty_like(data[0][1])
    graphs: dict[str, Any] = {}

    def warm_up(fn) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)

    def step() -> None:
        loss_fn(net(static_x), static_y).backward()
        opt.step()

    def train() -> None:
        xb, yb = next(batches)
        static_x.copy_(xb)
        static_y.copy_(yb)
        if "train" not in graphs:
            warm_up(lambda: (opt.zero_grad(set_to_none=True), step()))
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)  # backward then allocates .grad from the graph's pool
            with torch.cuda.graph(graph):
                step()
            graphs["train"] = graph
        graphs["train"].replay()

    def infer() -> None:
        static_x.copy_(next(batches)[0])
        if "infer" not in graphs:
            with torch.inference_mode():
                warm_up(lambda: net(static_x))
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    graphs["out"] = net(static_x)
            graphs["infer"] = graph
        graphs["infer"].replay()

    def check() -> bool:
        return all(bool(torch.isfinite(p).all()) for p in net.parameters())

    return Impl(train, infer, torch.cuda.synchronize, check,
                {"optimizer": f"torch Adam ({variant}, capturable) in a CUDA graph"})


# --- scikit-learn ---------------------------------------------------------------------------------


def build_sklearn(case: Case) -> Impl:
    """``MLPClassifier.partial_fit``: one epoch (Adam, mini-batches of `batch`) over a small slice."""
    from sklearn.neural_network import MLPClassifier

    dtype = np.float64 if case.impl == "sklearn_f64" else np.float32
    clf = MLPClassifier(hidden_layer_sizes=case.layers[1:-1], activation="relu", solver="adam", alpha=0.0,
                        batch_size=case.batch, learning_rate_init=LR, epsilon=EPS, max_iter=1, shuffle=False,
                        random_state=SEED)
    x, y = host_data(max(case.samples_per_call, case.batch), case.layers[0])
    x = x.astype(dtype)
    classes = np.arange(CLASSES)
    info: dict[str, Any] = {"optimizer": "sklearn Adam"}
    if case.kind == "infer":  # a fitted model to predict with (untimed)
        clf.partial_fit(x[: case.batch], y[: case.batch], classes=classes)
    xb = x[: case.batch]
    xe, ye = x[: case.samples_per_call], y[: case.samples_per_call]

    def train() -> None:
        clf.partial_fit(xe, ye, classes=classes)
        info["weights_dtype"] = str(clf.coefs_[0].dtype)

    def infer() -> None:
        clf.predict_proba(xb)
        info["weights_dtype"] = str(clf.coefs_[0].dtype)

    def check() -> bool:
        return all(np.isfinite(w).all() for w in clf.coefs_)

    return Impl(train, infer, check=check, info=info)


# --- the tutorials' per-sample loop ------------------------------------------------------------------


def build_per_sample(case: Case) -> Impl:
    """One example at a time with NumPy vectors and plain SGD: what batching replaces."""
    sizes = case.layers
    rng = np.random.default_rng(SEED)
    ws, bs = [], []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (n_in + n_out))
        ws.append(rng.uniform(-limit, limit, (n_in, n_out)).astype(np.float32))
        bs.append(np.zeros(n_out, dtype=np.float32))
    x, y = host_data(case.samples_per_call, sizes[0])

    def forward(xi):
        acts = [xi]
        for w, b in zip(ws[:-1], bs[:-1]):
            acts.append(np.maximum(acts[-1] @ w + b, 0))
        return acts, acts[-1] @ ws[-1] + bs[-1]

    def train() -> None:
        for xi, yi in zip(x, y):
            acts, z = forward(xi)
            p = np.exp(z - z.max())
            delta = p / p.sum()
            delta[yi] -= 1  # d loss / d logits for softmax + cross-entropy
            for i in range(len(ws) - 1, -1, -1):
                grad_w, grad_b = np.outer(acts[i], delta), delta
                if i > 0:
                    delta = (ws[i] @ delta) * (acts[i] > 0)
                ws[i] -= SGD_LR * grad_w
                bs[i] -= SGD_LR * grad_b

    def infer() -> None:
        for xi in x:
            forward(xi)

    def check() -> bool:
        return all(np.isfinite(w).all() for w in ws)

    return Impl(train, infer, check=check, info={"optimizer": "SGD per example"})


BUILDERS: dict[str, Callable[[Case], Impl]] = {
    "nnxp": build_nnxp,
    "nnxp_cudagraph": build_nnxp_cudagraph,
    "torch": build_torch,
    "torch_cudagraph": build_torch_cudagraph,
    "sklearn_f64": build_sklearn,
    "sklearn_f32": build_sklearn,
    "per_sample": build_per_sample,
}


def test_train_step(case: Case, run_case) -> None:
    impl, info = run_case(case, lambda: BUILDERS[case.impl](case))
    assert impl.check(), f"{case.id}: the weights became NaN or infinite"
    assert info["samples_per_call"] > 0 and info["first_call_s"] > 0
