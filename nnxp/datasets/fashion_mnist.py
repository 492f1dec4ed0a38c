"""Keras's spelling: ``from nnxp.datasets import fashion_mnist; fashion_mnist.load_data()``.

The same arrays as :func:`nnxp.datasets.load_fashion_mnist`: uint8 images (N, 28, 28), uint8 labels (N,).
"""

from __future__ import annotations

from nnxp.datasets.mnist import Split, load_fashion_mnist


def load_data() -> tuple[Split, Split]:
    """``((x_train, y_train), (x_test, y_test))`` of Fashion-MNIST, as ``keras.datasets.fashion_mnist.load_data``."""
    return load_fashion_mnist()
