"""Image-quality and rate metrics on 8-bit images.

Conventions
-----------
* numpy arrays are channel-last: ``(H, W)`` or ``(H, W, C)`` (the usual layout of a
  decoded ``uint8`` image).
* torch tensors are channel-first like CompressAI: ``(C, H, W)`` or ``(N, C, H, W)``.
* Values are taken on the ``[0, data_range]`` scale whatever the dtype: an ``uint8``
  image uses the default ``data_range=255``; a float tensor in ``[0, 1]`` needs
  ``data_range=1``. Nothing is rescaled implicitly.

PSNR is "RGB PSNR" as CompressAI reports it (key ``psnr-rgb``): one mean squared error
over all pixels and all channels of the image, then ``10*log10(data_range**2 / mse)``.
Identical images give ``inf``.

MS-SSIM uses :func:`pytorch_msssim.ms_ssim` with its default 5 scales, 11x11 Gaussian
window (sigma 1.5) and the standard scale weights. That implementation needs the short
side of the image to be larger than ``(11 - 1) * 2**4 = 160`` pixels (it asserts
otherwise). Smaller images are handled according to ``small``:

* ``"reflect"`` (default): the image pair is extended symmetrically (mirror padding,
  edge sample repeated, repeated as often as needed) on all sides up to the minimum
  size and MS-SSIM is computed on the padded pair. The value is then *not* exactly the
  MS-SSIM of the original image (mirrored content is counted again), which is why a
  :class:`SmallImageWarning` is emitted. Large test sets (Kodak 768x512, CLIC,
  Tecnick) never need it; it exists so that small images (unit tests, crops) give a
  finite, comparable number instead of crashing.
* ``"nan"``: return ``nan`` and emit a :class:`SmallImageWarning`.
* ``"raise"``: raise :class:`ValueError`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Union

import numpy as np
import torch

__all__ = [
    "SmallImageWarning",
    "MS_SSIM_MIN_SIZE",
    "psnr",
    "mse",
    "ms_ssim",
    "ms_ssim_db",
    "bpp",
    "likelihood_bits",
    "to_tensor",
    "to_uint8_array",
]

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Smallest short side (pixels) that pytorch_msssim accepts with 5 scales and an
#: 11-pixel window: it requires ``min(H, W) > (11 - 1) * 2**(5 - 1)``.
MS_SSIM_MIN_SIZE = (11 - 1) * 2 ** (5 - 1) + 1  # 161


class SmallImageWarning(UserWarning):
    """Emitted when an image is too small for 5-scale MS-SSIM (see module docs)."""


def to_tensor(img: ArrayLike) -> torch.Tensor:
    """Return ``img`` as a float64 tensor of shape ``(N, C, H, W)``.

    numpy input is channel-last (``HxW`` or ``HxWxC``); torch input is channel-first
    (``CxHxW`` or ``NxCxHxW``), a 2-D tensor being one ``HxW`` channel. Values are
    not rescaled.
    """
    if isinstance(img, np.ndarray):
        arr = np.ascontiguousarray(img)
        if not arr.flags.writeable:  # torch.from_numpy warns on read-only arrays
            arr = arr.copy()
        t = torch.from_numpy(arr)
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t.permute(2, 0, 1)[None]
        else:
            raise ValueError(f"numpy image must be HxW or HxWxC, got shape {img.shape}")
    elif isinstance(img, torch.Tensor):
        t = img.detach()
        if t.ndim == 2:
            t = t[None, None]
        elif t.ndim == 3:
            t = t[None]
        elif t.ndim != 4:
            raise ValueError(f"tensor image must be HxW, CxHxW or NxCxHxW, got {tuple(t.shape)}")
    else:
        raise TypeError(f"expected numpy array or torch tensor, got {type(img).__name__}")
    return t.to(device="cpu", dtype=torch.float64)


def to_uint8_array(img: ArrayLike, data_range: float = 255) -> np.ndarray:
    """Convert an image to a channel-last ``uint8`` numpy array.

    numpy uint8 input is returned unchanged (as a contiguous array). Other inputs are
    rescaled from ``[0, data_range]`` to ``[0, 255]``, rounded and clipped. A torch
    tensor may be ``CxHxW`` or ``1xCxHxW``.
    """
    if isinstance(img, np.ndarray) and img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if isinstance(img, torch.Tensor):
        t = img.detach().to("cpu")
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ValueError("to_uint8_array takes a single image, got a batch")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        arr = t.to(torch.float64).numpy()
    else:
        arr = np.asarray(img, dtype=np.float64)
    arr = arr * (255.0 / float(data_range))
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def _pair(a: ArrayLike, b: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = to_tensor(a), to_tensor(b)
    if ta.shape != tb.shape:
        raise ValueError(f"image shapes differ: {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return ta, tb


def mse(a: ArrayLike, b: ArrayLike) -> float:
    """Mean squared error over all pixels and channels (on the given value scale)."""
    ta, tb = _pair(a, b)
    return float(torch.mean((ta - tb) ** 2))


def psnr(a: ArrayLike, b: ArrayLike, data_range: float = 255) -> float:
    """RGB PSNR in dB: ``10*log10(data_range**2 / mse)`` over all pixels and channels.

    Returns ``inf`` for identical images.
    """
    m = mse(a, b)
    if m == 0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / m)


def _reflect_index(n: int, before: int, after: int) -> torch.Tensor:
    """Indices that extend a length-``n`` axis by symmetric (edge-repeating) mirroring.

    Works for paddings larger than ``n`` (the mirroring is repeated with period 2n).
    """
    idx = torch.arange(-before, n + after)
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def _pad_to_min(t: torch.Tensor, min_size: int) -> torch.Tensor:
    h, w = t.shape[-2:]
    ph, pw = max(0, min_size - h), max(0, min_size - w)
    if ph:
        t = t.index_select(-2, _reflect_index(h, ph // 2, ph - ph // 2))
    if pw:
        t = t.index_select(-1, _reflect_index(w, pw // 2, pw - pw // 2))
    return t


def ms_ssim(
    a: ArrayLike,
    b: ArrayLike,
    data_range: float = 255,
    small: str = "reflect",
) -> float:
    """Multi-scale SSIM (5 scales, pytorch_msssim) between two images.

    ``a`` and ``b`` follow the layout conventions of this module; for a batch
    ``(N, C, H, W)`` the mean over the batch is returned. ``small`` selects what to do
    when ``min(H, W) < MS_SSIM_MIN_SIZE`` (161): ``"reflect"`` (default, mirror-pad and
    warn), ``"nan"`` (warn and return nan) or ``"raise"``. See the module docstring.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    if small not in ("reflect", "nan", "raise"):
        raise ValueError(f"small must be 'reflect', 'nan' or 'raise', got {small!r}")
    ta, tb = _pair(a, b)
    h, w = ta.shape[-2:]
    if min(h, w) < MS_SSIM_MIN_SIZE:
        msg = (
            f"image {h}x{w} is smaller than the {MS_SSIM_MIN_SIZE} px short side that "
            f"5-scale MS-SSIM needs"
        )
        if small == "raise":
            raise ValueError(msg)
        if small == "nan":
            warnings.warn(msg + "; returning nan", SmallImageWarning, stacklevel=2)
            return math.nan
        warnings.warn(
            msg + "; computing it on a mirror-padded copy (value is approximate)",
            SmallImageWarning,
            stacklevel=2,
        )
        ta = _pad_to_min(ta, MS_SSIM_MIN_SIZE)
        tb = _pad_to_min(tb, MS_SSIM_MIN_SIZE)
    # float32 is what pytorch_msssim is written and validated for.
    val = _ms_ssim(ta.float(), tb.float(), data_range=float(data_range), size_average=True)
    return float(val)


def ms_ssim_db(v):
    """MS-SSIM in dB: ``-10*log10(1 - v)``. Accepts a scalar or an array.

    ``v == 1`` gives ``inf``.
    """
    arr = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore"):
        out = -10.0 * np.log10(1.0 - arr)
    if out.ndim == 0:
        return float(out)
    return out


def bpp(num_bytes: int, h: int, w: int) -> float:
    """Bits per pixel of a ``num_bytes``-long bitstream for an ``h`` x ``w`` image."""
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    return float(num_bytes) * 8.0 / (float(h) * float(w))


def _flatten(likelihoods: Any):
    if isinstance(likelihoods, torch.Tensor):
        yield likelihoods
    elif isinstance(likelihoods, Mapping):
        for v in likelihoods.values():
            yield from _flatten(v)
    elif isinstance(likelihoods, (list, tuple)):
        for v in likelihoods:
            yield from _flatten(v)
    else:
        raise TypeError(f"unexpected likelihoods of type {type(likelihoods).__name__}")


def likelihood_bits(likelihoods: Any, per_image: bool = False) -> torch.Tensor:
    """Estimated bits ``sum(-log2 p)`` over every tensor of ``likelihoods`` (dict, list or tensor).

    Differentiable (the rate term of training) and the rate of entropy-estimation evaluation.
    ``per_image=True`` sums over all but the first (batch) dimension: one count per image.
    """
    if per_image:
        return sum(torch.log(p).flatten(1).sum(1) for p in _flatten(likelihoods)) / -math.log(2)
    return sum(torch.log(p).sum() for p in _flatten(likelihoods)) / -math.log(2)
