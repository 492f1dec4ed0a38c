"""Data sets as host NumPy arrays: bundled digits, MNIST-family loaders, toy makers, splits.

Nothing here knows about devices; ``Sequential.fit`` moves the arrays where they need to be.
"""

from nnxp.datasets import fashion_mnist, mnist  # Keras's spellings: fashion_mnist.load_data()
from nnxp.datasets.digits import load_digits, load_digits_split
from nnxp.datasets.idx import read_idx, write_idx
from nnxp.datasets.mnist import load_fashion_mnist, load_mnist
from nnxp.datasets.synthetic import make_circles, make_moons, make_sine, make_spirals
from nnxp.datasets.utils import one_hot, standardize, train_test_split

__all__ = [
    "fashion_mnist",
    "load_digits",
    "load_digits_split",
    "load_fashion_mnist",
    "load_mnist",
    "make_circles",
    "make_moons",
    "make_sine",
    "make_spirals",
    "mnist",
    "one_hot",
    "read_idx",
    "standardize",
    "train_test_split",
    "write_idx",
]
