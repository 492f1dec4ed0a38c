"""The numerics, each op generic over the array module (NumPy or CuPy).

``dense`` (matmul + bias + activation and its backward), ``activation``
(elementwise forward/backward), ``loss`` (value and gradient in one pass) and
``optim`` (in-place updates of one flat parameter buffer). The ``*_ref``
functions are the definitions; fused device kernels must match them.
"""
