"""Small helpers shared by every layer: the device of a module, process-level malloc tuning."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import torch

__all__ = ["module_device", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_tuned = False


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (else first buffer); CPU for a module without either."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of returning it to the OS.

    glibc serves large blocks (tensors) with ``mmap`` and unmaps them on free, so
    every large temporary of a forward pass is fresh memory that page-faults on
    first touch; on a small CPU this can cost more than the arithmetic (the
    README's "Measured figures" has the slowdown measured on a GFA block). This switches
    ``mmap`` off for ``malloc`` and disables heap trimming (``mallopt``), so
    freed tensors are reused. The price: resident memory stays at its peak.

    Called by gnn_lic's entry points (command line, ``experiments/run.py``,
    benchmarks), never on import. Set ``GNN_LIC_TUNE_MALLOC=0`` to skip it.
    Returns whether the settings were applied (glibc only).
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("GNN_LIC_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _tuned = ok
    return ok
