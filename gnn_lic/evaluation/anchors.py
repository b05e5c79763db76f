"""Classical-codec anchors measured with Pillow: JPEG, WebP and AVIF.

Every image is encoded in memory at each quality of a sweep, decoded again, and
measured on the 8-bit RGB result:

* ``bpp`` = encoded byte length * 8 / (H * W): the real file size, container and
  headers included;
* ``psnr-rgb`` and ``ms-ssim-rgb`` with :mod:`gnn_lic.evaluation.metrics`
  (data range 255). Per-image values are averaged per quality, as CompressAI does;
  ``ms-ssim-db`` is ``-10*log10(1 - mean MS-SSIM)``.

Encoder settings (all through Pillow's bundled libraries):

* **JPEG** (libjpeg/libjpeg-turbo): chroma subsampling **4:4:4** (``subsampling=0``),
  optimised Huffman tables (``optimize=True``), baseline, no EXIF/ICC.
* **WebP** (libwebp, lossy): ``method=6`` (slowest, best), which is always 4:2:0 YUV
  in lossy mode -- libwebp has no 4:4:4 lossy mode.
* **AVIF** (libavif through Pillow's AVIF plugin; needs ``PIL.features.check("avif")``,
  skipped with a notice otherwise): chroma **4:4:4**, ``speed=6`` (Pillow's default),
  full range.

Published JPEG/WebP curves (e.g. CompressAI's) come from other tools and settings; that
does not matter here: these are anchors we measure ourselves, with the settings above, on
whatever images we give them.
"""

from __future__ import annotations

import io
import warnings
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, features

from .metrics import bpp as _bpp
from .metrics import SmallImageWarning, ms_ssim, psnr
from .results import make_results

__all__ = [
    "DEFAULT_QUALITIES",
    "CODEC_SETTINGS",
    "available_codecs",
    "encode_pil",
    "decode_bytes",
    "measure_image",
    "measure_codec",
    "measure_anchors",
]

#: Default quality sweeps (Pillow's 0-100 quality scale for each codec), from each codec's
#: lowest distinct setting (libjpeg gives quality 1 and 2 the same tables) so that the
#: low-rate end of a learned codec's curve overlaps them.
DEFAULT_QUALITIES: dict[str, tuple[int, ...]] = {
    "jpeg": (3, 4, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "webp": (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95),
    "avif": (0, 10, 20, 30, 40, 50, 60, 70, 80, 90),
}

#: Pillow ``save`` arguments per codec (besides ``quality``).
CODEC_SETTINGS: dict[str, dict] = {
    "jpeg": {"format": "JPEG", "subsampling": 0, "optimize": True},
    "webp": {"format": "WEBP", "method": 6, "lossless": False},
    "avif": {"format": "AVIF", "subsampling": "4:4:4", "speed": 6, "range": "full"},
}

_DESCRIPTIONS = {
    "jpeg": "JPEG via Pillow/libjpeg, 4:4:4, optimized Huffman tables",
    "webp": "WebP via Pillow/libwebp, lossy (4:2:0), method=6",
    "avif": "AVIF via Pillow/libavif, 4:4:4, speed=6",
}


def available_codecs() -> list[str]:
    """Codecs this Pillow build can write (JPEG always; WebP/AVIF if compiled in)."""
    out = ["jpeg"]
    if features.check("webp"):
        out.append("webp")
    if features.check("avif"):
        out.append("avif")
    return out


def encode_pil(image: np.ndarray, codec: str, quality: int) -> bytes:
    """Encode an ``HxWx3`` uint8 RGB image; returns the complete file as bytes."""
    codec = codec.lower()
    if codec not in CODEC_SETTINGS:
        raise ValueError(f"unknown codec {codec!r}; use one of {sorted(CODEC_SETTINGS)}")
    if codec == "avif" and not features.check("avif"):
        raise RuntimeError("this Pillow build has no AVIF support")
    img = _as_rgb_uint8(image)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, quality=int(quality), **CODEC_SETTINGS[codec])
    return buf.getvalue()


def decode_bytes(data: bytes) -> np.ndarray:
    """Decode an image file held in memory to an ``HxWx3`` uint8 RGB array."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _as_rgb_uint8(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected HxWx3 RGB, got shape {arr.shape}")
    return np.ascontiguousarray(arr[..., :3])


def measure_image(
    image: np.ndarray, codec: str, quality: int, ms_ssim_small: str = "reflect"
) -> dict[str, float]:
    """Encode/decode one image at one quality: ``{"bpp", "psnr-rgb", "ms-ssim-rgb", "bytes"}``."""
    img = _as_rgb_uint8(image)
    data = encode_pil(img, codec, quality)
    rec = decode_bytes(data)
    h, w = img.shape[:2]
    with warnings.catch_warnings():
        # The small-image notice is issued once per call site otherwise; keep it quiet
        # here and let measure_codec report it once.
        warnings.simplefilter("ignore")
        m = ms_ssim(img, rec, data_range=255, small=ms_ssim_small)
    return {
        "bytes": len(data),
        "bpp": _bpp(len(data), h, w),
        "psnr-rgb": psnr(img, rec, data_range=255),
        "ms-ssim-rgb": m,
    }


def measure_codec(
    images: Sequence[tuple[str, np.ndarray]],
    codec: str,
    qualities: Iterable[int] | None = None,
    ms_ssim_small: str = "reflect",
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure one codec over a quality sweep; returns a results document.

    Points are sorted by bpp. ``results`` also holds the ``quality`` setting of each
    point; ``per_image`` holds the per-image metrics.
    """
    codec = codec.lower()
    qualities = list(qualities if qualities is not None else DEFAULT_QUALITIES[codec])
    if not images:
        raise ValueError("no images")
    small = [n for n, im in images if min(np.asarray(im).shape[:2]) < 161]
    if small and ms_ssim_small != "raise":
        warnings.warn(
            f"{len(small)} image(s) are smaller than 161 px (e.g. {small[0]}): MS-SSIM "
            f"handled with small={ms_ssim_small!r}",
            SmallImageWarning,
            stacklevel=2,
        )
    points = []
    for q in qualities:
        per = {name: measure_image(img, codec, q, ms_ssim_small) for name, img in images}
        avg = {
            k: float(np.mean([p[k] for p in per.values()]))
            for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")
        }
        points.append((q, avg, per))
        if progress:
            progress(f"{codec} q={q}: bpp={avg['bpp']:.4f} psnr={avg['psnr-rgb']:.3f}")
    points.sort(key=lambda p: p[1]["bpp"])
    return make_results(
        name=codec,
        description=f"{_DESCRIPTIONS[codec]}; measured on {len(images)} image(s) by gnn_lic.evaluation.anchors",
        bpp=[p[1]["bpp"] for p in points],
        psnr=[p[1]["psnr-rgb"] for p in points],
        ms_ssim=[p[1]["ms-ssim-rgb"] for p in points],
        quality=[p[0] for p in points],
        per_image=[p[2] for p in points],
    )


def measure_anchors(
    images: Iterable[tuple[str, np.ndarray]],
    codecs: Iterable[str] = ("jpeg", "webp", "avif"),
    qualities: Mapping[str, Iterable[int]] | Iterable[int] | None = None,
    ms_ssim_small: str = "reflect",
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict]:
    """Measure several codecs: ``{codec: results document}``.

    ``qualities`` is one sweep for all codecs, a ``{codec: sweep}`` mapping, or None
    for :data:`DEFAULT_QUALITIES`. Codecs this Pillow lacks (AVIF, WebP) are skipped
    with a warning.
    """
    images = [(str(n), _as_rgb_uint8(im)) for n, im in images]
    have = available_codecs()
    out: dict[str, dict] = {}
    for codec in codecs:
        codec = codec.lower()
        if codec not in CODEC_SETTINGS:
            raise ValueError(f"unknown codec {codec!r}")
        if codec not in have:
            warnings.warn(f"Pillow has no {codec.upper()} support here; skipping {codec}", stacklevel=2)
            continue
        if qualities is None:
            qs = None
        elif isinstance(qualities, Mapping):
            qs = qualities.get(codec)
        else:
            qs = list(qualities)
        out[codec] = measure_codec(images, codec, qs, ms_ssim_small, progress)
    return out
