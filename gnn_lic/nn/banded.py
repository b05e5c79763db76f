r"""Residual feed-forwards computed band of rows by band of rows, without gradient.

The feed-forwards of GLIC (the gated FFN of the conv blocks, GLIC Fig. 2(c), and
the gated depthwise FFN of the GFA layers) widen every pixel to :math:`2eC`
hidden channels before narrowing it back to :math:`C`. Computed on the whole map
at once, their hidden tensors are the largest allocations of an inference pass
(at 1/2 resolution, :math:`e = 4` and :math:`C = 128`: 8x the map). Each output
row depends only on input rows :math:`r - h .. r + h` (:math:`h = 0` for a
pointwise network, 1 for a 3x3 depthwise convolution), so

.. math:: \mathrm{out}[r_0{:}r_1] = x[r_0{:}r_1] + f\big(x[r_0 - h{:}r_1 + h]\big)[h'{:}h' + r_1 - r_0]

(with the halo clipped at the map's border, where ``f``'s own zero padding
applies) computes the same rows from a band of ``r_1 - r_0`` rows plus its halo,
and the hidden tensors shrink to the band's size. Every row goes through the same
per-pixel operations as in the whole-map computation, so the result is the same
bit for bit (the tests check this for several band heights).

Only used when autograd is off (``torch.no_grad`` / ``torch.inference_mode``):
training keeps the whole-map path, whose intermediates the backward pass needs.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["BAND_PIXELS", "band_pixels", "row_bands", "banded_residual", "use_bands"]

#: default pixels per band (see :func:`band_pixels` for bands sized by hidden width)
BAND_PIXELS = 16384
#: bytes of the widest hidden tensor of one band (:func:`band_pixels`)
BAND_BYTES = 8 << 20


def band_pixels(hidden: int, element_size: int = 4) -> int:
    """Pixels per band such that a ``hidden``-channel tensor of one band holds :data:`BAND_BYTES`.

    >>> band_pixels(1024) == (8 << 20) // (1024 * 4)
    True
    """
    return max(1, BAND_BYTES // (hidden * element_size))


def row_bands(height: int, width: int, pixels: Optional[int] = None) -> List[Tuple[int, int]]:
    """``[(r0, r1), ...]`` bands of whole rows covering ``0 .. height``, each about ``pixels`` pixels.

    >>> row_bands(10, 4, pixels=12)
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    """
    pixels = BAND_PIXELS if pixels is None else int(pixels)
    rows = max(1, pixels // max(1, width))
    return [(r0, min(height, r0 + rows)) for r0 in range(0, height, rows)]


def use_bands(x: Tensor, pixels: Optional[int] = None) -> bool:
    """Whether :func:`banded_residual` would split ``x``: autograd off and more than one band."""
    pixels = BAND_PIXELS if pixels is None else int(pixels)
    return not torch.is_grad_enabled() and x.shape[-2] * x.shape[-1] > pixels


def banded_residual(x: Tensor, fn: Callable[[Tensor], Tensor], halo: int = 0, pixels: Optional[int] = None,
                    inplace: bool = False) -> Tensor:
    r"""``x + fn(x)`` for a ``(B, C, H, W)`` map, one band of rows at a time.

    Args:
        x (Tensor): the input map.
        fn (callable): a map-to-map function whose output row ``r`` depends on
            input rows ``r - halo .. r + halo`` only, zero-padded at the map's
            border (1x1 convolutions, per-pixel norms, depthwise ``(2 halo + 1)``
            convolutions with zero padding).
        halo (int): rows of context above and below each band (default 0).
        pixels (int, optional): pixels per band (default :data:`BAND_PIXELS`).
        inplace (bool): write the result into ``x`` itself (the caller owns it).
            Bands run top to bottom; the ``halo`` rows above a band, already
            overwritten, are read from a copy kept before they were.
    """
    H, W = x.shape[-2:]
    bands = row_bands(H, W, pixels)
    inplace = inplace and bands[0][1] >= halo  # the rows kept above a band lie in the band before it
    out = x if inplace else torch.empty_like(x)
    above: Optional[Tensor] = None  # original rows r0 - halo .. r0 - 1 of the current band
    for r0, r1 in bands:
        lo, hi = max(0, r0 - halo), min(H, r1 + halo)
        band = x[..., lo:hi, :]
        if inplace and lo < r0:
            band = torch.cat([above, x[..., r0:hi, :]], dim=-2)
        if inplace and halo and r1 < H:
            above = x[..., max(0, r1 - halo) : r1, :].clone()
        y = fn(band)
        if lo != r0 or hi != r1:
            y = y[..., r0 - lo : r1 - lo, :]
        torch.add(x[..., r0:r1, :], y, out=out[..., r0:r1, :])
    return out
