"""Reading images as 8-bit RGB arrays and writing files atomically.

:func:`read_image` returns a ``uint8`` array of shape (H, W, 3).  8-bit RGB files are
read as they are; everything else Pillow can open is converted to 8-bit RGB and a
one-line notice saying what was converted goes to stderr:

* grayscale (``L``), bilevel (``1``), palette (``P``/``PA``), CMYK, YCbCr, LAB, HSV:
  converted to RGB;
* alpha (``RGBA``, ``LA``, ``PA``, palette transparency): the alpha channel is dropped
  (colour values are kept as stored, not composited);
* 16-bit grayscale (``I;16*``, ``I``): scaled to 8 bits with rounding
  (``round(v * 255 / 65535)``); 16-bit colour PNG/TIFF files are reduced to 8 bits by
  Pillow itself (it keeps the high byte), which is reported too;
* animated images: the first frame is used.

Floating point images (mode ``F``) are refused.  Anything that is not an image raises
:class:`ImageReadError` with a one-line message.

Writes (:func:`write_image`, :func:`write_bytes`; :func:`check_output_free` checks before any work) go through
:func:`gnn_lic.utils.atomic_write`, so a failure never leaves a partial output file.
Without ``force`` an existing file is never overwritten (:class:`OutputExistsError`);
where the file system supports hard links the no-overwrite move is itself atomic.
"""

from __future__ import annotations

import io
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from gnn_lic.errors import CodecError, ImageReadError, OutputExistsError
from gnn_lic.utils import atomic_write

__all__ = ["read_image", "read_bytes", "write_image", "write_bytes", "check_output_free", "encode_png"]

PathLike = Union[str, os.PathLike]


def _notice(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _rawmode(img: Image.Image) -> str:
    """Raw mode of the first decoder tile (e.g. ``'RGB;16B'`` for a 16-bit RGB PNG)."""
    tile = getattr(img, "tile", None) or []
    if not tile:
        return ""
    args = getattr(tile[0], "args", None)
    if args is None and isinstance(tile[0], tuple) and len(tile[0]) > 3:
        args = tile[0][3]
    if isinstance(args, tuple):
        args = args[0] if args else ""
    return args if isinstance(args, str) else ""


def _to_rgb8(img: Image.Image, rawmode: str) -> "tuple[np.ndarray, Optional[str]]":
    """Convert a loaded Pillow image to uint8 (H, W, 3); also say what was converted."""
    mode = img.mode
    if mode == "RGB":
        arr = np.asarray(img, dtype=np.uint8)
        if ";16" in rawmode:
            return arr, "16-bit RGB reduced to 8 bits per channel"
        return arr, None
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        raw = np.asarray(img)
        what = "16-bit grayscale"
        if mode == "I":
            if raw.size and (raw.min() < 0 or raw.max() > 65535):
                raise ImageReadError(f"32-bit integer image with values outside 0..65535 ({mode}) is not supported")
            what = "32-bit integer grayscale (treated as 16-bit)"
        v = raw.astype(np.uint32)
        gray = ((v * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), f"{what} converted to 8-bit RGB"
    if mode == "F":
        raise ImageReadError("floating-point images (mode F) are not supported")
    if mode in ("RGBA", "RGBa", "RGBX"):
        arr = np.asarray(img.convert("RGBA") if mode == "RGBa" else img)[:, :, :3]
        what = "RGBA: alpha channel dropped" if mode != "RGBX" else "RGBX: padding channel dropped"
        if ";16" in rawmode:
            what = "16-bit " + what + ", reduced to 8 bits per channel"
        return np.ascontiguousarray(arr, dtype=np.uint8), what
    if mode in ("LA", "La"):
        gray = np.asarray(img.convert("LA"))[:, :, 0]
        return np.repeat(gray[:, :, None], 3, axis=2), "grayscale with alpha (LA) converted to RGB, alpha dropped"
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        rgb = np.asarray(img.convert("RGBA" if has_alpha else "RGB"))[:, :, :3]
        what = "palette image converted to RGB" + (", transparency dropped" if has_alpha else "")
        return np.ascontiguousarray(rgb, dtype=np.uint8), what
    if mode == "L":
        gray = np.asarray(img, dtype=np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), "grayscale (L) converted to RGB"
    if mode == "1":
        return np.asarray(img.convert("RGB"), dtype=np.uint8), "bilevel (1-bit) image converted to RGB"
    try:
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:
        raise ImageReadError(f"cannot convert image mode {mode} to RGB ({exc})") from None
    return rgb, f"{mode} image converted to RGB"


def _input_file(path: PathLike, error: type = CodecError, what: str = "a file") -> Path:
    """``path`` as a :class:`~pathlib.Path`, refused with ``error`` where it is missing or a folder."""
    p = Path(path)
    if not p.exists():
        raise error(f"input file '{p}' does not exist")
    if p.is_dir():
        raise error(f"input '{p}' is a folder, not {what}")
    return p


def read_image(path: PathLike, notify: Optional[Callable[[str], None]] = None) -> np.ndarray:
    """Read an image file as a ``uint8`` (H, W, 3) RGB array.

    Conversions are reported with one line on stderr (or through ``notify(message)``).
    Raises :class:`ImageReadError` (one-line message) for a missing or non-image file.
    """
    notify = notify or _notice
    p = _input_file(path, ImageReadError, "an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                frames = getattr(img, "n_frames", 1)
                rawmode = _rawmode(img)
                img.load()
                arr, what = _to_rgb8(img, rawmode)
    except ImageReadError as exc:
        raise ImageReadError(f"cannot read '{p}': {exc}") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"'{p}' is not an image file that can be read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"'{p}' is too large to read safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ImageReadError(f"cannot read image '{p}': {detail}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageReadError(f"'{p}' decoded to an unexpected array shape {arr.shape}")
    if frames and frames > 1:
        what = (what + "; " if what else "") + f"first of {frames} frames used"
    if what:
        notify(f"'{p}': {what} ({arr.shape[1]}x{arr.shape[0]})")
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if not arr.flags.writeable:
        arr = arr.copy()
    return arr


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 (H, W, 3) array as PNG bytes (deterministic for the same pixels)."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise CodecError(f"expected a uint8 array of shape (H, W, 3), got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def read_bytes(path: PathLike) -> bytes:
    """The bytes of the file ``path`` (a compressed stream); :class:`CodecError` (one line) where it
    is missing, a folder or unreadable."""
    p = _input_file(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise CodecError(f"cannot read '{p}': {exc.strerror or exc}") from None


def check_output_free(path: PathLike, force: bool = False) -> None:
    """Refuse (:class:`CodecError`, :class:`OutputExistsError` without ``force``) an output ``path`` that
    :func:`write_bytes` could not write: a folder, an existing file, a missing parent folder."""
    p = Path(path)
    if p.is_dir():
        raise CodecError(f"output '{p}' is a folder")
    if not force and p.exists():
        raise OutputExistsError(f"output file '{p}' already exists (use --force to overwrite)")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise CodecError(f"output folder '{folder}' does not exist")


def write_bytes(path: PathLike, data: bytes, force: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (:func:`gnn_lic.utils.atomic_write`); refuse to
    overwrite unless ``force`` (:func:`check_output_free`)."""
    check_output_free(path, force)
    p = Path(path)
    try:
        atomic_write(p, bytes(data), overwrite=force)
    except FileExistsError:
        raise OutputExistsError(f"output file '{p}' already exists (use --force to overwrite)") from None
    except OSError as exc:
        raise CodecError(f"cannot write '{p}': {exc.strerror or exc}") from None


def write_image(path: PathLike, array: np.ndarray, force: bool = False) -> None:
    """Write a uint8 (H, W, 3) array as a PNG file, atomically; refuse to overwrite unless ``force``."""
    write_bytes(path, encode_png(array), force=force)
