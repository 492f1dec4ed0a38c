"""nnxp: a readable from-scratch neural-network library with a Keras-like API.

NumPy on the CPU, CuPy on CUDA GPUs (``device="cuda"``), one flat parameter
buffer per model, fused loss/activation pairs. This module re-exports the
public API only.
"""

from __future__ import annotations

from . import activations, callbacks, datasets, distributed, initializers, losses, optimizers, regularizers, schedules
from ._version import __version__
from .backend import Device, cuda_available, get_device, to_numpy
from .errors import NnxpError
from .io import load_model
from .layers import Activation, Dense, Dropout, Layer
from .model import Sequential

__all__ = [
    "__version__",
    "Activation",
    "Dense",
    "Device",
    "Dropout",
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
    "optimizers",
    "regularizers",
    "schedules",
    "to_numpy",
]
