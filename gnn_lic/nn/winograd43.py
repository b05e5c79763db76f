r"""5x5 stride-2 convolutions and transposed convolutions by Winograd's :math:`F(4 \times 4, 3 \times 3)`
on channels-last CPU maps.

Both reduce to a stride-1 3x3 convolution:

* a convolution (kernel 5, stride 2, padding 2) is a *valid* 3x3 convolution over the four
  polyphase components :math:`P_{ab}[m, n] = x_p[2m + a, 2n + b]` of the input zero-padded by 2,
  :math:`y[i, j] = \sum_{s,t < 3} \sum_{a,b} w[2s + a, 2t + b]\, P_{ab}[i + s, j + t]`, whose taps
  with :math:`2s + a > 4` (or :math:`2t + b > 4`) are zero (:func:`polyphase_weight`, input channels
  ordered ``(a, b, c)``);
* a transposed convolution (kernel 5, stride 2, padding 2, output padding 1) is a *same* 3x3
  convolution into the four output phases followed by a pixel shuffle
  (:meth:`~gnn_lic.models.layers.SubpixelConvTranspose2d.phase_weight`).

Each 4x4 block of the 3x3 convolution's outputs comes from the 6x6 patch of its input around it
(Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, points
:math:`0, \pm 1, \pm 2`):

.. math::
    Y = A^\top \Big[ \sum_c \big(G\, w_{o,c}\, G^\top\big) \odot \big(B^\top d_c\, B\big) \Big] A,

    B^\top = \begin{bmatrix} 4 & 0 & -5 & 0 & 1 & 0 \\ 0 & -4 & -4 & 1 & 1 & 0 \\ 0 & 4 & -4 & -1 & 1 & 0 \\
    0 & -2 & -1 & 2 & 1 & 0 \\ 0 & 2 & -1 & -2 & 1 & 0 \\ 0 & 4 & 0 & -5 & 0 & 1 \end{bmatrix},\quad
    G = \begin{bmatrix} \frac14 & 0 & 0 \\ -\frac16 & -\frac16 & -\frac16 \\ -\frac16 & \frac16 & -\frac16 \\
    \frac1{24} & \frac1{12} & \frac16 \\ \frac1{24} & -\frac1{12} & \frac16 \\ 0 & 0 & 1 \end{bmatrix},\quad
    A^\top = \begin{bmatrix} 1 & 1 & 1 & 1 & 1 & 0 \\ 0 & 1 & -1 & 2 & -2 & 0 \\ 0 & 1 & 1 & 4 & 4 & 0 \\
    0 & 1 & -1 & 8 & -8 & 1 \end{bmatrix}.

The sum over input channels is, for each of the 36 positions of a transformed patch, one matrix
product ``(tiles, in) x (in, out)``: 36 products per 16 outputs where the direct 3x3 convolution
needs 144 (4 times fewer), and 2.8 times fewer than the direct 5x5 stride-2 convolution (25 per
output, against 36 / 16 times 4 polyphase channels). The transforms are compiled loops (numba)
over the channels, contiguous in channels-last memory; the tiles run in chunks of tile rows so that
the transformed patches and their products stay within :data:`CHUNK_BYTES` each.

Inside :func:`~gnn_lic.nn.banded.banded_stage` each image's rows of tiles are multiplied in groups of
:data:`TILES_PER_PRODUCT` from its first (the same shapes and operands wherever the group lies), so a band
that starts on their grid (:data:`TILE_ROWS`) gives the whole map's rows bit for bit; elsewhere one product
per chunk of rows, faster. (One row of tiles per product made matrices of one tile row's width, on which
the products run well below their speed on larger ones.)

Under autograd (training) :mod:`gnn_lic.nn.winograd43_train` runs both layers' backward passes the same way.

The values are the convolution's up to float rounding (a few float32 ulps more than the direct
convolution's, from the transforms' factors up to 8), not bit for bit: for transforms whose
outputs are floats anyway (the models' analysis and synthesis), never for the entropy networks.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import torch
from numba import prange
from torch import Tensor

from gnn_lic import compiled
from gnn_lic.nn.banded import in_band

__all__ = ["polyphase_weight", "transposed_phase_weight", "filter_tiles43", "shuffle_tiles43", "conv_tiles43",
           "deconv_tiles43", "winograd43", "winograd43_pays", "CHUNK_BYTES", "MIN_CHANNELS", "TILES_PER_PRODUCT",
           "TILE_ROWS"]

#: most bytes of the transformed input patches, or of their products, of one chunk of tile rows
CHUNK_BYTES = 8 << 20
#: rows of tiles per matrix product inside :func:`~gnn_lic.nn.banded.banded_stage` (from each image's first row)
TILES_PER_PRODUCT = 2
#: output rows of the 3x3 convolution per product inside :func:`~gnn_lic.nn.banded.banded_stage`: a band's rows
#: come out as the whole map's when the band starts on a multiple of it (in the 3x3 convolution's output rows)
TILE_ROWS = 4 * TILES_PER_PRODUCT
#: fewest input and output channels that take the Winograd path: with fewer (an RGB input), the 36 small
#: matrix products lose to the direct convolution
MIN_CHANNELS = 32

_G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
_F2, _F4, _F5, _F8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)


@compiled.jit
def _gather(x, b, y0, x0, row):  # pragma: no cover - compiled
    """``row[:] = x[b, y0, x0]`` (channels), zeros outside the map."""
    _, H, W, C = x.shape
    if 0 <= y0 < H and 0 <= x0 < W:
        src = x[b, y0, x0]
        for c in range(C):
            row[c] = src[c]
    else:
        for c in range(C):
            row[c] = 0


@compiled.jit
def _bt(d0, d1, d2, d3, d4, d5, out):  # pragma: no cover - compiled
    """``out[k] = (B^T d)_k`` for vectors ``d0 .. d5`` over the channels."""
    for c in range(out.shape[1]):
        out[0, c] = _F4 * d0[c] - _F5 * d2[c] + d4[c]
        out[1, c] = -_F4 * (d1[c] + d2[c]) + d3[c] + d4[c]
        out[2, c] = _F4 * (d1[c] - d2[c]) - d3[c] + d4[c]
        out[3, c] = _F2 * (d3[c] - d1[c]) - d2[c] + d4[c]
        out[4, c] = _F2 * (d1[c] - d3[c]) - d2[c] + d4[c]
        out[5, c] = _F4 * d1[c] - _F5 * d3[c] + d5[c]


@compiled.jit(parallel=True)
def _input_tiles(x, poly, th, tw, r0, v):  # pragma: no cover - compiled
    # x (B, H, W, C); v (36, rows, tw, K): B^T d B of the 6x6 patches of tile rows r0 .. r0 + rows (r = b th + i)
    # of the 3x3 convolution's input: the polyphase components (K = 4C, channels (a, b, c)) or x (K = C) padded by 1
    C = x.shape[3]
    K = v.shape[3]
    for rr in prange(v.shape[1]):
        r = r0 + rr
        b, i = r // th, r % th
        d = np.empty((6, 6, K), dtype=x.dtype)
        tmp = np.empty((6, 6, K), dtype=x.dtype)
        for j in range(tw):
            for m in range(6):
                for n in range(6):
                    pm, pn = 4 * i + m, 4 * j + n
                    if poly:
                        for ab in range(4):
                            _gather(x, b, 2 * pm + ab // 2 - 2, 2 * pn + ab % 2 - 2, d[m, n, ab * C : (ab + 1) * C])
                    else:
                        _gather(x, b, pm - 1, pn - 1, d[m, n])
            for n in range(6):  # B^T d, column n
                _bt(d[0, n], d[1, n], d[2, n], d[3, n], d[4, n], d[5, n], tmp[:, n])
            for m in range(6):  # ... B
                _bt(tmp[m, 0], tmp[m, 1], tmp[m, 2], tmp[m, 3], tmp[m, 4], tmp[m, 5], v[6 * m : 6 * m + 6, rr, j])


@compiled.jit
def _at(e0, e1, e2, e3, e4, e5, out):  # pragma: no cover - compiled
    """``out[p] = (A^T e)_p`` for vectors ``e0 .. e5`` over the channels."""
    for c in range(out.shape[1]):
        s1, d1, s2, d2 = e1[c] + e2[c], e1[c] - e2[c], e3[c] + e4[c], e3[c] - e4[c]
        out[0, c] = e0[c] + s1 + s2
        out[1, c] = d1 + _F2 * d2
        out[2, c] = s1 + _F4 * s2
        out[3, c] = d1 + _F8 * d2 + e5[c]


@compiled.jit(parallel=True)
def _output_tiles(m, bias, shuffle, th, tw, r0, y):  # pragma: no cover - compiled
    # m (36, rows, tw, K) products of tile rows r0 ..; y (B, Ho, Wo, O) channels-last = A^T m A + bias (K), cropped;
    # with shuffle K = 4 O, channels (p, q, o): output phase (p, q) of the pixel shuffle
    O = y.shape[3]
    Ho, Wo = y.shape[1], y.shape[2]
    K = m.shape[3]
    for rr in prange(m.shape[1]):
        r = r0 + rr
        b, i = r // th, r % th
        cols = np.empty((6, 4, K), dtype=m.dtype)
        res = np.empty((4, 4, K), dtype=m.dtype)
        mr = m[:, rr]
        for j in range(tw):
            for q in range(6):  # A^T m, column q
                _at(mr[q, j], mr[6 + q, j], mr[12 + q, j], mr[18 + q, j], mr[24 + q, j], mr[30 + q, j], cols[q])
            for p in range(4):  # ... A
                _at(cols[0, p], cols[1, p], cols[2, p], cols[3, p], cols[4, p], cols[5, p], res[p])
            for p in range(4):
                for q in range(4):
                    rp, cq = 4 * i + p, 4 * j + q
                    for ph in range(4 if shuffle else 1):
                        yy, xx = (2 * rp + ph // 2, 2 * cq + ph % 2) if shuffle else (rp, cq)
                        if yy < Ho and xx < Wo:
                            dst, src, beta = y[b, yy, xx], res[p, q, ph * O : (ph + 1) * O], bias[ph * O : (ph + 1) * O]
                            for o in range(O):
                                dst[o] = src[o] + beta[o]


def polyphase_weight(weight: Tensor) -> Tensor:
    """``(O, C, 5, 5)`` weights of a stride-2 convolution -> ``(O, 4C, 3, 3)`` of the valid 3x3 convolution
    over the polyphase components, input channels ``(a, b, c)``: tap ``(s, t)`` of component ``(a, b)`` is
    ``weight[..., 2s + a, 2t + b]``, zero past the kernel."""
    O, C = weight.shape[:2]
    w = torch.nn.functional.pad(weight, (0, 1, 0, 1))  # (O, C, 6, 6): taps 2s + a <= 5
    w = w.view(O, C, 3, 2, 3, 2)  # (o, c, s, a, t, b)
    return w.permute(0, 3, 5, 1, 2, 4).reshape(O, 4 * C, 3, 3)


#: tap of the 5x5 kernel that phase ``r`` of a stride-2 transposed convolution (padding 2) applies at input offset
#: ``e - 1`` (:math:`r + 2 - 2(e - 1)`); 5 (none: a zero appended to the kernel) past its edge
_PHASE_TAPS = torch.tensor([[4, 2, 0], [5, 3, 1]])


def transposed_phase_weight(weight: Tensor) -> Tensor:
    r"""``(C, O, 5, 5)`` weights of a 5x5 stride-2 transposed convolution (padding 2, output padding 1) ->
    ``(4O, C, 3, 3)`` of the *same* 3x3 convolution into its output phases, channels ``(o, r, q)``: output
    pixel :math:`(2a + r, 2b + q)` takes tap :math:`(r + 2 - 2e,\, q + 2 - 2f)` at input offset :math:`(e, f)`
    (:meth:`~gnn_lic.models.layers.SubpixelConvTranspose2d.phase_weight` for any kernel and stride)."""
    C, O = weight.shape[:2]
    w = torch.nn.functional.pad(weight, (0, 1, 0, 1))[:, :, _PHASE_TAPS][..., _PHASE_TAPS]  # (c, o, r, e, q, f)
    return w.permute(1, 2, 4, 0, 3, 5).reshape(4 * O, C, 3, 3)


def filter_tiles43(weight: Tensor) -> Tensor:
    r"""``(O, K, 3, 3)`` -> ``(36, K, O)``: :math:`G w G^\top` per channel pair, position-major (one product
    by :math:`G \otimes G`)."""
    O, K = weight.shape[:2]
    g = _G.to(weight.dtype)
    return torch.mm(torch.kron(g, g), weight.detach().permute(2, 3, 1, 0).reshape(9, K * O)).view(36, K, O)


def shuffle_tiles43(weight: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """``(4O, K, 3, 3)`` weights and ``(4O,)`` bias of a 3x3 convolution followed by ``pixel_shuffle(2)``
    (channels ``(o, p, q)``) -> the filter tiles and bias :func:`winograd43` takes with ``shuffle``, whose
    channels are ``(p, q, o)`` (:func:`phases_first`)."""
    return filter_tiles43(phases_first(weight)), None if bias is None else phases_first(bias)


def conv_tiles43(weight: Tensor) -> Tensor:
    """``(O, C, 5, 5)`` weights of a 5x5 stride-2 convolution -> the filter tiles :func:`winograd43` takes with
    ``polyphase``."""
    return filter_tiles43(polyphase_weight(weight))


def deconv_tiles43(weight: Tensor, bias: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
    """``(C, O, 5, 5)`` weights and ``(O,)`` bias of a 5x5 stride-2 transposed convolution (padding 2, output
    padding 1) -> the filter tiles and bias :func:`winograd43` takes with ``shuffle``."""
    return shuffle_tiles43(transposed_phase_weight(weight), None if bias is None else bias.repeat_interleave(4))


def phases_first(t: Tensor) -> Tensor:
    """Channels ``(o, p, q)`` (dimension 0) of a sub-pixel convolution -> ``(p, q, o)``."""
    return t.unflatten(0, (-1, 4)).transpose(0, 1).flatten(0, 1)


def winograd43_pays(x: Tensor, in_channels: int, out_channels: int) -> bool:
    """Whether :func:`winograd43` may and should take ``x``: a float32 CPU map with compiled loops on, no
    autograd, at least :data:`MIN_CHANNELS` input and output channels."""
    return (compiled.enabled() and not torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and x.dtype == torch.float32 and min(in_channels, out_channels) >= MIN_CHANNELS)


def winograd43(x: Tensor, tiles: Tensor, bias: Optional[Tensor], polyphase: bool, shuffle: bool) -> Tensor:
    r"""The 3x3 convolution of ``(B, C, H, W)`` ``x`` by :math:`F(4 \times 4, 3 \times 3)`, ``tiles`` =
    :func:`filter_tiles43` of its weights; result channels-last.

    ``polyphase``: ``x`` is the input of a 5x5 stride-2 convolution with padding 2 (weights
    :func:`polyphase_weight`); output ``ceil(H / 2) x ceil(W / 2)``. Otherwise a 3x3 convolution with
    padding 1; with ``shuffle`` its ``4 O`` channels ``(p, q, o)`` are pixel-shuffled into a
    ``2H x 2W`` output of ``O`` channels (a 5x5 stride-2 transposed convolution, or a sub-pixel
    convolution; :func:`shuffle_tiles43`). ``bias`` is per channel of the 3x3 convolution (``tiles.shape[2]``)."""
    B, C, H, W = x.shape
    K, out = tiles.shape[1], tiles.shape[2]
    O = out // 4 if shuffle else out
    gh, gw = ((H + 1) // 2, (W + 1) // 2) if polyphase else (H, W)
    th, tw = -(-gh // 4), -(-gw // 4)
    Ho, Wo = (2 * H, 2 * W) if shuffle else (gh, gw)
    xl = x.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    y = torch.empty((B, Ho, Wo, O), dtype=x.dtype)
    b = (bias if bias is not None else x.new_zeros(out)).detach().contiguous().numpy()
    rows = max(1, CHUNK_BYTES // (36 * tw * max(K, out) * x.element_size()))
    for r0, n, groups in _chunks(B, th, rows, in_band()):
        v = torch.empty((36, n, tw, K), dtype=x.dtype)
        compiled.parallel(_input_tiles, xl.numpy(), polyphase, th, tw, r0, v.numpy())
        m = torch.empty((36, n, tw, out), dtype=x.dtype)
        for a, c in groups:  # rows [a, c) of the chunk: one product each
            torch.bmm(v[:, a:c].reshape(36, (c - a) * tw, K), tiles, out=m[:, a:c].view(36, (c - a) * tw, out))
        del v
        compiled.parallel(_output_tiles, m.numpy(), b, shuffle, th, tw, r0, y.numpy())
    return y.permute(0, 3, 1, 2)


def _chunks(batch: int, th: int, rows: int, grouped: bool) -> List[Tuple[int, int, List[Tuple[int, int]]]]:
    """Chunks ``(r0, n, products)`` of the ``batch * th`` rows of tiles (row ``b th + i``: image ``b``, tile row
    ``i``) of at most ``rows`` rows where a product allows, with their products as row ranges within the chunk:
    with ``grouped`` one per :data:`TILES_PER_PRODUCT` rows of an image from its first (a chunk holds whole
    groups), otherwise one per chunk."""
    total = batch * th
    if not grouped:
        return [(r0, min(rows, total - r0), [(0, min(rows, total - r0))]) for r0 in range(0, total, rows)]
    chunks: List[Tuple[int, int, List[Tuple[int, int]]]] = []
    for b in range(batch):
        for i in range(0, th, TILES_PER_PRODUCT):
            a, c = b * th + i, b * th + min(th, i + TILES_PER_PRODUCT)
            if chunks and c - chunks[-1][0] <= rows:  # the group joins the open chunk
                r0, _, products = chunks[-1]
                chunks[-1] = (r0, c - r0, products + [(a - r0, c - r0)])
            else:
                chunks.append((a, c - a, [(0, c - a)]))
    return chunks
