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

:func:`banded_stage` does the same for a whole chain of local layers that may change
the resolution (strided and sub-pixel convolutions): its output rows come from bands of
input rows plus a halo covering the chain's receptive field, so no map of the chain's
inner resolution is ever whole. The bands are a function of the map's size alone (the
transforms size them by image pixels) and run one after another, each on all of
``torch.get_num_threads()`` threads, so no memory budget changes the result; the tests
find it equal to the whole map's bit for bit. Like every float layer, it depends on the
thread count only as far as the libraries' kernels do (the entropy coder's parameters never
do: they are computed in fixed point, :mod:`gnn_lic.models.fixed_point`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["BAND_PIXELS", "band_pixels", "row_bands", "banded_residual", "use_bands", "banded_stage", "stage_bands",
           "image_rows", "conv_radius", "channels_last_call", "dense", "memory_layout", "in_band"]

#: default pixels per band (see :func:`band_pixels` for bands sized by hidden width)
BAND_PIXELS = 16384
#: bytes of the widest hidden tensor of one band (:func:`band_pixels`)
BAND_BYTES = 32 << 20


def band_pixels(hidden: int, element_size: int = 4) -> int:
    """Pixels per band such that a ``hidden``-channel tensor of one band holds :data:`BAND_BYTES`.

    >>> band_pixels(1024) == BAND_BYTES // (1024 * 4)
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


def memory_layout(x: Tensor) -> torch.memory_format:
    """Channels-last for a 4-D map stored channels-last (and not also contiguous), else contiguous."""
    cl = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def dense(x: Tensor, fmt: torch.memory_format = torch.contiguous_format) -> Tensor:
    """``x`` in memory layout ``fmt`` with the strides an empty tensor of that layout has: ``x`` itself if it has
    them, else a copy. ``Tensor.contiguous`` keeps any stride of a size-1 dimension (an image read as
    ``HWC`` and permuted has a batch stride of 3), and oneDNN then takes a slow path."""
    if x.stride() == torch.empty(x.shape, memory_format=fmt, device="meta").stride():
        return x
    return x.clone(memory_format=fmt)


class _Layout(torch.autograd.Function):
    """``x`` copied to memory layout ``fmt`` (:func:`dense`); its gradient copied to ``grad_fmt`` (the layout of
    the side the gradient goes back to)."""

    @staticmethod
    def forward(ctx, x: Tensor, fmt: torch.memory_format, grad_fmt: torch.memory_format) -> Tensor:
        ctx.grad_fmt = grad_fmt
        return dense(x, fmt)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad.contiguous(memory_format=ctx.grad_fmt), None, None


def channels_last_call(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn`` on a channels-last (NHWC) copy of ``x``, its result made contiguous again.

    oneDNN's convolutions are faster on NHWC memory and graph layers read nodes as rows of
    channels; the values are those of NCHW memory up to float rounding (the same products
    summed in another order). Under autograd the gradients cross the two conversions the
    other way, so ``fn``'s backward also runs on channels-last gradients: elementwise backward
    steps that mix a channels-last activation with an NCHW gradient run many times slower.
    """
    nhwc, nchw = torch.channels_last, torch.contiguous_format
    if not torch.is_grad_enabled():
        return dense(fn(dense(x, nhwc)), nchw)
    return _Layout.apply(fn(_Layout.apply(x, nhwc, nchw)), nchw, nhwc)


def conv_radius(module: torch.nn.Module) -> int:
    """Rows of context one output row of ``module`` needs on each side, at its resolution: the sum
    over its 2-D convolutions of ``dilation * (kernel - 1) / 2`` (a chain of stride-1 layers).

    >>> conv_radius(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.Conv2d(1, 1, 5, groups=1)))
    3
    """
    return sum(m.dilation[0] * (m.kernel_size[0] // 2) for m in module.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)))


def image_rows(pixels: int, width: int, stride: int = 1) -> int:
    """Most rows of a map of ``width`` columns, each covering ``stride x stride`` image pixels,
    in a band of at most ``pixels`` image pixels (at least one row): ``max_rows`` of
    :func:`banded_stage` for bands sized by the image.

    >>> image_rows(3 << 20, 768), image_rows(3 << 20, 96, stride=8)
    (4096, 512)
    """
    return max(1, pixels // (width * stride * stride))


_BANDS = threading.local()


def in_band() -> bool:
    """Whether this thread is inside :func:`banded_stage`'s chain: layers whose float rounding would depend on
    how their rows are grouped (:func:`~gnn_lic.nn.winograd43.winograd43`'s matrix products) then group them
    on a grid fixed from each image's first row, so that a band's rows come out as the whole map's."""
    return getattr(_BANDS, "depth", 0) > 0


@contextlib.contextmanager
def _band() -> Iterator[None]:
    _BANDS.depth = getattr(_BANDS, "depth", 0) + 1
    try:
        yield
    finally:
        _BANDS.depth -= 1


def stage_bands(height: int, max_rows: int, step: int = 1) -> List[Tuple[int, int]]:
    """The bands of :func:`banded_stage`: the fewest bands of at most ``max_rows`` rows (rounded
    up to ``step``), as equal as ``step`` allows; a function of the height alone.

    >>> stage_bands(512, 256, 4)
    [(0, 256), (256, 512)]
    >>> stage_bands(40, 16, 4)
    [(0, 16), (16, 32), (32, 40)]
    >>> stage_bands(40, 64, 4)
    [(0, 40)]
    """
    count = -(-height // max_rows)
    rows = -(-height // count)
    rows = -(-rows // step) * step
    return [(r0, min(height, r0 + rows)) for r0 in range(0, height, rows)]


def banded_stage(inputs: Sequence[Tensor], fn: Callable[..., Tensor], *, up: int = 1, down: int = 1, halo: int = 0,
                 max_rows: int = 256, align: Optional[int] = None) -> Tensor:
    r"""``fn(*inputs)`` for a chain of local layers, computed from bands of input rows.

    ``fn`` maps maps of ``h`` rows to maps of ``h * up / down`` rows (``h`` a multiple of
    ``down``), and its output row ``r`` depends on input rows within ``halo`` of
    ``r * down / up`` only, with the layers' own zero padding at the map's border
    (strided convolutions sample the rows ``0, down, 2 down, ...`` of every band, as of the
    map, because bands start at multiples of ``align``, a multiple of ``down``). The bands are
    :func:`stage_bands` ``(H, max_rows, align)``; band ``[r_0, r_1)`` runs ``fn`` on rows
    ``r_0 - h .. r_1 + h`` (``h`` = ``halo`` rounded up to a multiple of ``align``, clipped
    at the border) and keeps output rows ``r_0 up/down .. r_1 up/down``. A map of at most
    ``max_rows`` rows is one band: ``fn`` on the whole map.

    Args:
        inputs: maps ``(B, C_i, H, W)`` of one height ``H`` (a multiple of ``down``) and width.
        fn: the chain, called with one band of every input.
        up, down (int): output rows per input row, ``up / down``.
        halo (int): input rows of context above and below a band.
        max_rows (int): most input rows of a band (before the halo).
        align (int, optional): bands and halos start at multiples of ``align`` input rows, a
            multiple of ``down`` (default ``down``): e.g. the window grid of a windowed layer
            inside ``fn`` then falls on the same rows in every band as in the map.
    """
    H = inputs[0].shape[-2]
    if any(t.shape[-2] != H for t in inputs):
        raise ValueError("banded_stage: inputs of different heights")
    if H % down:
        raise ValueError(f"banded_stage: height {H} is not a multiple of {down}")
    align = down if align is None else int(align)
    if align < 1 or align % down:
        raise ValueError(f"banded_stage: align must be a positive multiple of {down}, got {align}")
    halo = -(-halo // align) * align
    bands = stage_bands(H, max_rows, align)
    if len(bands) == 1:
        with _band():
            return fn(*inputs)
    out: Optional[Tensor] = None
    for r0, r1 in bands:
        lo, hi = max(0, r0 - halo), min(H, r1 + halo)
        with _band():
            y = fn(*(t[..., lo:hi, :] for t in inputs))
        a, n = (r0 - lo) * up // down, (r1 - r0) * up // down
        if out is None:  # in the bands' memory layout, as ``fn`` on the whole map gives it
            out = torch.empty((*y.shape[:-2], H * up // down, y.shape[-1]), dtype=y.dtype, device=y.device,
                              memory_format=memory_layout(y))
        out[..., r0 * up // down : r0 * up // down + n, :] = y[..., a : a + n, :]
    return out
