"""Training-step benchmarks: nnxp against PyTorch eager (and CUDA graphs), scikit-learn and a per-sample loop.

Every implementation trains the same ReLU MLP with softmax cross-entropy on random data that is
already on the device. A timed call is one epoch over a fixed number of full batches (conftest.epoch_batches):
for nnxp it is ``model.fit`` itself (eager, and ``cuda_graph=True`` on a GPU), with accuracy as its metric;
PyTorch runs the same epoch as a loop (permutation, gather, step, loss and correct counts summed on the device
and read once); scikit-learn one ``partial_fit``. nnxp, PyTorch and scikit-learn take one Adam step per batch
(lr 1e-3, epsilon 1e-7, Glorot-uniform weights, zero biases); the per-sample loop is the tutorial version:
plain SGD, one example at a time, on a small slice.
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


# --- nnxp ----------------------------------------------------------------------------------------


def nnxp_model(case: Case) -> nnxp.Sequential:
    """The case's ReLU MLP with a softmax output, Adam and accuracy, built on the case's device."""
    sizes = case.layers
    layers = [nnxp.Dense(sizes[1], "relu", input_dim=sizes[0])]
    layers += [nnxp.Dense(units, "relu") for units in sizes[2:-1]] + [nnxp.Dense(sizes[-1], "softmax")]
    model = nnxp.Sequential(layers, device=case.device, seed=SEED, dtype="float32")
    model.compile(nnxp.optimizers.Adam(learning_rate=LR, epsilon=EPS), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.build(sizes[0])
    return model


def epoch_data(case: Case, device: str) -> tuple[Any, Any]:
    """One timed call's rows (samples_per_call of them), already on `device` as nnxp arrays."""
    x, y = host_data(case.samples_per_call, case.layers[0])
    return nnxp.backend.to_device(x, device), nnxp.backend.to_device(y, device)


def build_nnxp(case: Case, cuda_graph: bool = False) -> Impl:
    """``model.fit`` itself: one epoch over the call's batches (shuffled, loss and accuracy accumulated on the
    device and read once, as every fit does), with the data already on the device."""
    model = nnxp_model(case)
    x, y = epoch_data(case, case.device)
    batches = itertools.cycle([x[: case.batch], x[case.batch : 2 * case.batch] if len(x) >= 2 * case.batch
                               else x[: case.batch]])

    def train() -> None:
        model.fit(x, y, epochs=1, batch_size=case.batch, verbose=0, cuda_graph=cuda_graph)

    def infer() -> None:
        model.forward(next(batches), training=False)  # logits: the fused softmax is left out

    def check() -> bool:
        return all(np.isfinite(w).all() for w in model.get_weights())

    n = case.steps_per_call
    timed = f"model.fit over {n} full batch{'es' if n != 1 else ''}"
    if cuda_graph:
        timed += ", cuda_graph=True (warm-up batch and capture in every call)"
    info = {"optimizer": "nnxp Adam (one flat buffer)" + (" in a CUDA graph" if cuda_graph else ""), "timed": timed}
    return Impl(train, infer, model.device.synchronize, check, info)


def build_nnxp_cudagraph(case: Case) -> Impl:
    """``model.fit(..., cuda_graph=True)``: the first full batch eager, the second captured, the rest replayed."""
    return build_nnxp(case, cuda_graph=True)


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


def _torch_epoch(torch, case: Case, device: str):
    """What one nnxp fit call does, written in PyTorch: the call's rows on the device, a permutation, a gather
    per full batch, the loss summed and the correct predictions counted on the device, both read once at the end.
    ``run(step)`` runs `step(xb, yb) -> (loss, logits)` over the epoch and returns (mean loss, accuracy)."""
    x, y = host_data(case.samples_per_call, case.layers[0])
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    n, b = len(x), case.batch

    def run(step) -> tuple[float, float]:
        perm = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for lo in range(0, n - b + 1, b):
            idx = perm[lo : lo + b]
            loss, logits = step(x[idx], y[idx])
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == y[idx]).sum()
        return float(loss_sum) / (n // b), int(correct) / n

    return x, y, run


def build_torch(case: Case) -> Impl:
    """An epoch loop as close to nnxp's fit as PyTorch eager gets (see _torch_epoch)."""
    torch = _torch()
    device = "cuda" if case.device == "cuda" else "cpu"
    net = torch_net(torch, case.layers, device)
    opt, variant = torch_adam(torch, net.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    x, _, epoch = _torch_epoch(torch, case, device)
    batches = itertools.cycle([x[: case.batch], x[-case.batch :]])

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        logits = net(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        opt.step()
        return loss, logits

    def train() -> None:
        epoch(step)

    def infer() -> None:
        with torch.inference_mode():
            net(next(batches))

    def check() -> bool:
        return all(bool(torch.isfinite(p).all()) for p in net.parameters())

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    return Impl(train, infer, sync, check, {"optimizer": f"torch Adam ({variant})", "torch_threads":
                                             torch.get_num_threads(), "timed": "an epoch loop like fit's"})


def build_torch_cudagraph(case: Case) -> Impl:
    """The whole step (forward, backward, Adam) captured once in a CUDA graph and replayed, in the same epoch loop.

    Follows PyTorch's whole-network capture recipe: warm up on a side stream, capture with ``capturable`` Adam,
    then copy each batch into the static inputs and replay. Capture happens in the first call only (it is part
    of the first-call latency); nnxp's fit captures again in every call.
    """
    torch = _torch()
    net = torch_net(torch, case.layers, "cuda")
    opt, variant = torch_adam(torch, net.parameters(), capturable=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y, epoch = _torch_epoch(torch, case, "cuda")
    static_x, static_y = torch.empty_like(x[: case.batch]), torch.empty_like(y[: case.batch])
    graphs: dict[str, Any] = {}

    def warm_up(fn) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)

    def body():
        logits = net(static_x)
        loss = loss_fn(logits, static_y)
        loss.backward()
        opt.step()
        return loss, logits

    def step(xb, yb):
        static_x.copy_(xb)
        static_y.copy_(yb)
        if "train" not in graphs:
            warm_up(lambda: (opt.zero_grad(set_to_none=True), body()))
            graph = torch.cuda.CUDAGraph()
            opt.zero_grad(set_to_none=True)  # backward then allocates .grad from the graph's pool
            with torch.cuda.graph(graph):
                graphs["out"] = body()
            graphs["train"] = graph
        graphs["train"].replay()
        return graphs["out"]

    def train() -> None:
        epoch(step)

    def infer() -> None:
        static_x.copy_(x[: case.batch])
        if "infer" not in graphs:
            with torch.inference_mode():
                warm_up(lambda: net(static_x))
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    graphs["infer_out"] = net(static_x)
            graphs["infer"] = graph
        graphs["infer"].replay()

    def check() -> bool:
        return all(bool(torch.isfinite(p).all()) for p in net.parameters())

    return Impl(train, infer, torch.cuda.synchronize, check,
                {"optimizer": f"torch Adam ({variant}, capturable) in a CUDA graph", "timed": "an epoch loop like "
                                                                                              "fit's, replaying"})


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
