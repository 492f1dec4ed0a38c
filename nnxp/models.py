"""Keras's ``keras.models`` spellings: ``nnxp.models.Sequential`` and ``nnxp.models.load_model``."""

from __future__ import annotations

from .io import load_model
from .model import Sequential

__all__ = ["Sequential", "load_model"]
