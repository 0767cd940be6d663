"""minicrate: CRATE, the white-box transformer, from scratch with hand-derived gradients.

Tokens are rows: arrays of tokens have shape ``(..., N, d)``.  Every function
takes arrays of any array-API backend (NumPy, CuPy, torch, array_api_strict)
and computes in that backend.  Each block is a pure pair
``*_forward(...) -> (out, cache)`` / ``*_backward(dout, cache) -> (dinput, grads)``.
"""

__version__ = "0.1.0"

from .backend import cupy_available, get_backend, to_numpy
from .gradcheck import check_vjp, numerical_vjp, rel_error
from .rates import (
    coding_rate,
    coding_rate_grad,
    compression_rate,
    compression_rate_grad,
    measured_compression_rate,
    nonzero_fraction,
    rate_reduction,
    sparse_rate_reduction,
)
