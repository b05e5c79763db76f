"""Small helpers shared by every layer: the device of a module, atomic file writes,
process-level malloc tuning."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Optional, Union

if TYPE_CHECKING:  # PyTorch is imported where a module is asked about, so that file helpers start in no time
    import torch

__all__ = ["module_device", "module_bytes", "process_memory", "atomic_write", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
#: glibc's default of M_MMAP_MAX (DEFAULT_MMAP_MAX), restored by the partial setting
_DEFAULT_MMAP_MAX = 65536
_UNSET = object()
#: the setting in force: ``_UNSET`` (none applied), ``None`` (wholly tuned) or a threshold in bytes
_applied: object = _UNSET


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (else first buffer); CPU for a module without either."""
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    import torch  # noqa: PLC0415

    return torch.device("cpu")


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def process_memory(key: str = "VmRSS") -> int:
    """A memory figure of this process from ``/proc/self/status`` in bytes (``VmRSS``: now,
    ``VmHWM``: the high-water mark); 0 where the file is missing (not Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def atomic_write(path: Union[str, os.PathLike], data: Union[bytes, Callable[[BinaryIO], object]],
                 overwrite: bool = True) -> Path:
    """Write ``data`` (bytes, or ``fn(binary file)`` that writes them) to ``path`` atomically.

    Readers see the old file or the whole new one, never a part, and a crash leaves no
    partial file: the bytes go to a temporary file in the target's folder (so that the
    move stays on one file system), are flushed and ``fsync``-ed, then moved into place
    with ``os.replace`` (atomic on POSIX and Windows). With ``overwrite=False`` the move is
    a hard link, which fails atomically when the target exists (:class:`FileExistsError`);
    where the file system has no hard links, the check and the move are two steps. The
    file gets the usual permissions (``0o666`` less the umask). The temporary file is
    removed on every failure; errors are :class:`OSError`, which callers word for their
    own context. The folder must exist. Returns the path.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    tmp = folder / f".{p.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, p)
        else:
            try:
                os.link(tmp, p)  # raises FileExistsError atomically
            except FileExistsError:
                raise
            except OSError:  # no hard links on this file system: check, then move
                if p.exists():
                    raise FileExistsError(17, "File exists", str(p)) from None
                os.replace(tmp, p)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return p


def tune_malloc(mmap_threshold: Optional[int] = None) -> bool:
    """Keep freed memory in the process instead of returning it to the OS.

    glibc serves large blocks (tensors) with ``mmap`` and unmaps them on free, so
    every large temporary of a forward pass is fresh memory that page-faults on
    first touch; on a small CPU this can cost more than the arithmetic (the
    README's "Measured figures" has the slowdown measured on a GFA block). This switches
    ``mmap`` off for ``malloc`` and disables heap trimming (``mallopt``), so
    freed tensors are reused. The price: resident memory stays at its peak.

    With ``mmap_threshold`` (bytes), a middle setting: only blocks of at least that size are
    mapped (and returned on free), and the heap's free top is returned above twice that size.
    Temporaries below the threshold (bands, tiles) are then reused, while whole maps above it
    still leave when freed, so the resident memory stays close to the untuned allocator's. (glibc's
    own threshold adapts up to 32 MiB only; a glibc that refuses a larger fixed one sets nothing.)

    Called by gnn_lic's entry points (``experiments/run.py``, benchmarks, and the
    command line's compress and decompress where the memory budget leaves room:
    :func:`gnn_lic.codec.budget.job_plan`), never on import. Set
    ``GNN_LIC_TUNE_MALLOC=0`` to skip it. A later call with another setting replaces the one in
    force (a job under a tighter budget after a roomy one: the heap's free memory kept by the
    tuned setting is then returned, ``malloc_trim``). Returns whether the setting is in force (glibc only).
    """
    global _applied
    setting = None if mmap_threshold is None else min(int(mmap_threshold), 2**30)  # mallopt takes an int
    if _applied is not _UNSET and _applied == setting:
        return True
    if os.environ.get("GNN_LIC_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if setting is None:
            ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        else:  # twice the threshold is the trim threshold
            ok = (libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, setting) == 1
                  and libc.mallopt(_M_TRIM_THRESHOLD, 2 * setting) == 1)
            if ok and _applied is None:
                libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    if ok:
        _applied = setting
    return ok
