"""Small process-level helpers shared by the entry points."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_tuned = False


def tune_malloc() -> bool:
    """Keep freed memory in the process instead of returning it to the OS.

    glibc serves large blocks (tensors) with ``mmap`` and unmaps them on free, so
    every large temporary of a forward pass is fresh memory that page-faults on
    first touch; on a small CPU this costs more than the arithmetic (measured on
    a GLIC GFA block at 1/4 resolution: about 2.5x slower). This switches
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
