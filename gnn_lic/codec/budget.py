"""Large images on the command line: a memory budget, estimates of memory and time, a progress bar.

``python -m gnn_lic compress/decompress --max-memory SIZE`` (:func:`job_plan`) refuses an image
whose estimated need (:func:`job_need`) exceeds the budget: the process's resident memory when the
job is planned (libraries and model loaded), plus :data:`CODING_BYTES`, plus what the model's
:meth:`~gnn_lic.models.base.PaddedCompressionModel.memory_estimate` adds to its weights. The
model's own bands and chunks (a function of the image size alone, so the budget changes no bit)
keep the need near linear in the pixels. Where
the budget holds :data:`TUNE_HEADROOM` times the need, the allocator keeps freed memory for reuse
(:func:`gnn_lic.utils.tune_malloc`: faster, the same bits, a higher resident peak); for a model that
names a ``partial_mmap_threshold``, where the budget holds the need plus that size, only freed blocks
below it are kept (bands and other temporaries; whole maps go back to the system). For
images of :data:`ANNOUNCE_PIXELS` and more it prints the memory and time estimates first (time
fitted to two calibration crops, times :data:`SLOWDOWN` of the allocator's setting) and, on a
terminal, shows a progress bar over the estimated time.
Where the allocator is not wholly tuned, that line suggests :data:`THP_ENV` (huge pages under large
tensors: faster there, slower on small images and with the tuned allocator, so never set here).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from typing import Callable, Iterator, Optional

import numpy as np

from gnn_lic.codec.image_codec import decode_image, encode_image
from gnn_lic.errors import MemoryBudgetError
from gnn_lic.utils import module_bytes, process_memory, tune_malloc

__all__ = ["parse_memory", "job_plan", "job_need", "time_encode", "time_decode", "RUNTIME_BYTES", "CODING_BYTES",
           "ANNOUNCE_PIXELS", "CALIBRATION_SIDE", "TUNE_HEADROOM", "SLOWDOWN", "THP_ENV"]

#: memory of the Python process, torch and its libraries, besides the model's own, where the resident
#: memory cannot be read (for --max-memory)
RUNTIME_BYTES = 600 << 20
#: memory a job adds to the process besides the model's feature maps, whatever the image size: the
#: coding's own work and buffers, the allocator's slack (for --max-memory)
CODING_BYTES = 512 << 20
#: the allocator keeps freed memory (:func:`gnn_lic.utils.tune_malloc`) when the budget holds this many
#: times the estimated need: faster, the same bits, but the resident memory stays at a higher peak
TUNE_HEADROOM = 1.3
#: images of at least this many pixels get a line with their memory estimate before the job starts
ANNOUNCE_PIXELS = 4_000_000
#: a large job's time over the time estimated from the calibration crops (whose temporaries are too small to
#: be returned to the system), by the allocator's setting in :func:`job_plan`: left as it is, every large
#: temporary faults in page by page; with the partial setting, only whole maps do (measured on 12-MP jobs of
#: both paper models: the README's memory sections)
SLOWDOWN = {"tuned": 1.0, "partial": 1.5, "system": 1.6}
#: PyTorch's switch for 2 MB pages under large tensors (read before the process's first tensor): where the
#: allocator is not tuned, a large image's temporaries fault in 512 times fewer pages with it
THP_ENV = "THP_MEM_ALLOC_ENABLE"
THP_HINT = "{} goes back to the system, which is slower; " + THP_ENV + "=1 in the environment speeds that up"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """``"8G"``, ``"8GB"``, ``"8GiB"``, ``"512M"``, ``"1.5g"`` or plain bytes -> bytes (powers of 1024).

    >>> parse_memory("1.5G") == 3 << 29, parse_memory("512 MiB") == 1 << 29
    (True, True)
    """
    m = _SIZE.match(text)
    if m is None:
        raise MemoryBudgetError(f"--max-memory: '{text}' is not a size such as 8G, 512M or 2000000000")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise MemoryBudgetError(f"--max-memory must be positive, got '{text}'")
    return value


def job_need(net, height: int, width: int) -> int:
    """Estimated peak bytes of the process for a job on a ``height x width`` image: the resident memory
    now plus :data:`CODING_BYTES` plus what ``net.memory_estimate`` adds to the weights (already
    resident); where the resident memory cannot be read, :data:`RUNTIME_BYTES` plus the whole estimate.
    A model without ``memory_estimate`` counts as its weights."""
    weights = module_bytes(net)
    estimate = getattr(net, "memory_estimate", None)  # models outside gnn_lic may not estimate
    model = weights if estimate is None else estimate(height, width)
    resident = process_memory("VmRSS")
    if not resident:  # unreadable (not Linux)
        return RUNTIME_BYTES + model
    return resident + CODING_BYTES + max(0, model - weights)


def _available_memory() -> int:
    """``MemAvailable`` of ``/proc/meminfo``, else the free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


#: side of the crop whose coding time, scaled by the pixel count, estimates a large image's
CALIBRATION_SIDE = 256


@contextlib.contextmanager
def _progress(seconds: float, label: str) -> Iterator[None]:
    """A progress bar on stderr over the estimated ``seconds`` of a job (it stops at 99 % until the job ends)."""
    from tqdm import tqdm  # noqa: PLC0415

    done = threading.Event()
    bar = tqdm(total=max(1, round(seconds)), desc=label, unit="s", file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} of about {total} s")
    start = time.perf_counter()

    def tick() -> None:
        while not done.wait(0.5):
            bar.n = min(bar.total - 1, round(time.perf_counter() - start))
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        bar.close()


def job_plan(net, height: int, width: int, max_memory: Optional[str], label: str,
             calibrate: Optional[Callable[[int], float]] = None) -> contextlib.ExitStack:
    """What runs a job on a ``height x width`` image: refuses one whose memory estimate (:func:`job_need`)
    exceeds ``--max-memory`` (or the available memory); tunes the allocator where the budget leaves
    :data:`TUNE_HEADROOM` room, partly where it leaves the model's ``partial_mmap_threshold``
    (:func:`_tune_allocator`); for a large image announces the memory and time estimates
    (``calibrate(side)``: seconds of the job on a ``side x side`` crop, scaled by the pixel count)
    and, on a terminal, shows a progress bar."""
    budget = parse_memory(max_memory) if max_memory else _available_memory()
    need = job_need(net, height, width)
    gb = 1 << 30
    if need > budget:
        source = "--max-memory allows" if max_memory else "the machine has available"
        raise MemoryBudgetError(f"a {width}x{height} image needs about {need / gb:.1f} GB with {label} (estimate); "
                                f"{source} {budget / gb:.1f} GB")
    threshold = getattr(net, "partial_mmap_threshold", None)  # models outside gnn_lic may not name one
    allocator = _tune_allocator(need, budget, threshold)
    stack = contextlib.ExitStack()
    if height * width >= ANNOUNCE_PIXELS:
        seconds = None if calibrate is None else _time_estimate(calibrate, height * width) * SLOWDOWN[allocator]
        when = "" if seconds is None else f" and {seconds / 60:.1f} min"
        suggest = allocator != "tuned" and os.environ.get(THP_ENV) != "1" and sys.platform.startswith("linux")
        returned = "freed memory" + (f" in blocks of {threshold >> 20} MiB and more" if allocator == "partial" else "")
        hint = "; " + THP_HINT.format(returned) if suggest else ""
        print(f"{width}x{height} image with {label}: about {need / gb:.1f} GB{when} (estimates; "
              f"{budget / gb:.1f} GB allowed{hint})", file=sys.stderr, flush=True)
        if seconds is not None and sys.stderr.isatty():  # a bar redrawn twice a second is no use in a log file
            stack.enter_context(_progress(seconds, label))
    return stack


def _tune_allocator(need: int, budget: int, threshold: Optional[int] = None) -> str:
    """The allocator's setting for a job of ``need`` bytes under ``budget`` (a key of :data:`SLOWDOWN`),
    applied: ``"tuned"`` (freed memory kept), ``"partial"`` (freed blocks below ``threshold`` bytes kept,
    where the budget holds the need plus that size) or ``"system"`` (left as it is, or not tunable here)."""
    if need * TUNE_HEADROOM <= budget and tune_malloc():
        return "tuned"
    if threshold and need + threshold <= budget and tune_malloc(threshold):
        return "partial"
    return "system"


def _time_estimate(calibrate: Callable[[int], float], pixels: int) -> float:
    """Seconds for ``pixels``: a fixed cost plus a cost per pixel, fitted to the times of two crops
    (sides ``CALIBRATION_SIDE`` and twice that) after one untimed run."""
    a = CALIBRATION_SIDE
    calibrate(a)  # first calls pay for caches and compilation
    t1, t2 = calibrate(a), calibrate(2 * a)
    per_pixel = max(t2 - t1, 0.0) / (3 * a * a)
    return max(t1 - per_pixel * a * a, 0.0) + per_pixel * pixels


def _noise(side: int) -> np.ndarray:
    """A ``side x side`` 8-bit noise image (the calibration crop)."""
    return np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)


def time_encode(net, quality) -> Callable[[int], float]:
    """``calibrate(side)`` for :func:`job_plan`: seconds to encode a ``side x side`` crop at ``quality``."""
    def run(side: int) -> float:
        crop = _noise(side)
        start = time.perf_counter()
        encode_image(net, crop, quality=quality)
        return time.perf_counter() - start

    return run


def time_decode(net) -> Callable[[int], float]:
    """``calibrate(side)`` for :func:`job_plan`: seconds to decode a ``side x side`` crop."""
    def run(side: int) -> float:
        blob = encode_image(net, _noise(side))
        start = time.perf_counter()
        decode_image(net, blob)
        return time.perf_counter() - start

    return run
