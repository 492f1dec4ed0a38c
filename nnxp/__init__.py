"""nnxp: a readable from-scratch neural-network library with a Keras-like API.

NumPy on the CPU, CuPy on CUDA GPUs (``device="cuda"``), one flat parameter
buffer per model, fused loss/activation pairs. This module re-exports the
public API only.
"""

from __future__ import annotations

from . import (
    activations,
    callbacks,
    datasets,
    distributed,
    initializers,
    losses,
    models,
    optimizers,
    regularizers,
    schedules,
    utils,
)
from ._version import __version__
from .backend import Device, cuda_available, get_device, to_numpy
from .errors import NnxpError
from .io import load_model
from .layers import Activation, Dense, Dropout, Flatten, Input, InputLayer, Layer
from .model import Sequential

__all__ = [
    "__version__",
    "Activation",
    "Dense",
    "Device",
    "Dropout",
    "Flatten",
    "Input",
    "InputLayer",
    "Layer",
    "NnxpError",
    "Sequential",
    "activations",
    "callbacks",
    "cuda_available",
    "datasets",
    "distributed",
    "get_device",
    "initializers",
    "load_model",
    "losses",
    "models",
    "optimizers",
    "regularizers",
    "schedules",
    "to_numpy",
    "utils",
]
