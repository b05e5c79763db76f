"""The switch and the decorator for the package's compiled loops (numba).

Graph construction (:mod:`gnn_lic.graph._rowkernels`) and the fixed-point entropy
networks (:mod:`gnn_lic.models.fixed_point.kernels`) each have loops compiled with numba
beside a pure-PyTorch path that gives the same results. ``GNN_LIC_NUMBA=0`` in the
environment, or :func:`set_enabled`, turns all of them off at once.
"""

from __future__ import annotations

import os

import numba
import torch

__all__ = ["enabled", "set_enabled", "jit", "parallel", "FAST_DOTS"]

_enabled = os.environ.get("GNN_LIC_NUMBA", "1") != "0"

#: ``fastmath`` flags of the float loops whose short dot products (over a head's channels) should vectorise:
#: reassociation changes their rounding, so only loops whose results need not be bit-exact use them
FAST_DOTS = frozenset({"reassoc", "contract", "nsz", "arcp"})


def set_enabled(flag: bool) -> bool:
    """Switch the compiled loops on or off; returns the previous setting."""
    global _enabled
    previous, _enabled = _enabled, bool(flag)
    return previous


def enabled() -> bool:
    """Whether the compiled loops are switched on."""
    return _enabled


def jit(fn=None, **extra):
    """``numba.njit`` without the GIL, caching the machine code on disk where a cache directory is writable.

    NumPy's error model: a float division by zero gives ``inf``/``nan`` instead
    of a Python check in the loop, which would stop the loop from vectorising.
    Usable bare (``@jit``) or with options (``jit(fn, parallel=True)``).
    """
    if fn is None:
        return lambda f: jit(f, **extra)
    options = dict(nogil=True, error_model="numpy", **extra)
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # no writable cache location: compile once per process instead
        return numba.njit(**options)(fn)


def parallel(kernel, *args):
    """Call a parallel compiled loop (``jit(..., parallel=True)``) on as many threads as PyTorch uses, and
    leave PyTorch's thread count as it was.

    numba's OpenMP threading layer shares the OpenMP runtime with PyTorch, and its first parallel
    region can reset the runtime's thread count to numba's: later convolutions and matrix products
    would then run on another number of threads, with other float rounding, than the caller chose.
    """
    threads = torch.get_num_threads()
    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        return kernel(*args)
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
