"""The numerics, each op generic over the array module (NumPy or CuPy).

``dense`` (matmul + bias + activation and its backward), ``activation``
(elementwise forward/backward), ``loss`` (value and gradient in one pass),
``optim`` (in-place updates of one flat parameter buffer) and ``dropout``.
The ``*_ref`` functions are the definitions. A public op with a fused CUDA
kernel is an :class:`nnxp.ops._cuda.Op`: its override sits beside its
reference (``@op.override``) and must match it (tests/test_ops_cuda.py walks
``_cuda.OPS``). ``_cuda`` loads and launches ``kernels.cu``; ``_cublas`` is
the matmul that also works under CUDA-graph capture; ``_cpu`` the Numba loops.
"""
