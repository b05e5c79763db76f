r"""3x3 convolutions by Winograd's minimal filtering :math:`F(2 \times 2, 3 \times 3)` on a CPU.

A stride-1 3x3 convolution with padding 1 computes each 2x2 block of outputs from the 4x4 patch
of the zero-padded input around it (Lavin and Gray, "Fast Algorithms for Convolutional Neural
Networks", CVPR 2016):

.. math::
    Y = A^\top \Big[ \sum_c \big(G\, w_{o,c}\, G^\top\big) \odot \big(B^\top d_c\, B\big) \Big] A,

    B^\top = \begin{bmatrix} 1 & 0 & -1 & 0 \\ 0 & 1 & 1 & 0 \\ 0 & -1 & 1 & 0 \\ 0 & 1 & 0 & -1 \end{bmatrix},\quad
    G = \begin{bmatrix} 1 & 0 & 0 \\ \frac12 & \frac12 & \frac12 \\ \frac12 & -\frac12 & \frac12 \\ 0 & 0 & 1 \end{bmatrix},\quad
    A^\top = \begin{bmatrix} 1 & 1 & 1 & 0 \\ 0 & 1 & -1 & -1 \end{bmatrix}.

The sum over input channels is, for each of the 16 positions of the transformed tile, one
matrix product ``(out, in) x (in, tiles)``: 16 products of ``in * out * tiles`` multiply-adds
where the direct convolution needs ``9 * 4 * in * out * tiles``, 2.25 times fewer. The
transforms of the input patches (:math:`B^\top d B`) and of the products (:math:`A^\top m A`)
are compiled loops (numba), the products one batched ``torch.bmm``.

The values are the convolution's up to float rounding (other products summed in another
order), not bit for bit. The fixed-point entropy networks use it only where every value is an
exact float64 integer (in units of a power of two): :math:`G` holds halves, :math:`B` and
:math:`A` hold :math:`0, \pm 1`, so for integer inputs and weights every transformed value,
product and partial sum is an integer in units of a quarter of the weights' unit, exact while
their absolute sum stays below :math:`2^{53}`; the result is then the direct convolution's, bit
for bit (:class:`~gnn_lic.models.fixed_point.FixedConv2d`).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from numba import prange
from torch import Tensor, nn

from gnn_lic import compiled
from gnn_lic.nn.banded import memory_layout
from gnn_lic.nn.winograd43 import filter_tiles43, winograd43, winograd43_pays

__all__ = ["WinogradConv2d", "winograd_conv3x3", "winograd_pays", "filter_tiles", "MIN_TILE_PRODUCTS",
           "MAX_TILE_BYTES", "MIN_TILES43"]

#: smallest ``in * out * tiles`` (2x2 output tiles of all images) that takes the Winograd path: below it the
#: 16 matrix products are too small to beat oneDNN's direct kernel
MIN_TILE_PRODUCTS = 8 << 20
#: largest transformed input or product (``16 * channels * tiles`` floats) of the Winograd path: larger maps
#: take the direct convolution, which needs no such temporaries
MAX_TILE_BYTES = 64 << 20
#: fewest 4x4 output tiles (all images) for which a contiguous map takes F(4x4, 3x3) (converted to
#: channels-last) rather than F(2x2, 3x3): on smaller maps the layout change and the transforms cost more
#: than the products save
MIN_TILES43 = 80

_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


@compiled.jit(parallel=True)
def _input_tiles(xp, th, tw, v):  # pragma: no cover - compiled
    # xp (B, C, 2 th + 2, 2 tw + 2) zero-padded input; v (16, C, B th tw): B^T d B of every 4x4 patch
    B, C, _, Wp = xp.shape
    for r in prange(B * C):
        b, c = r // C, r % C
        x = xp[b, c]
        rows = np.empty((4, Wp), dtype=xp.dtype)
        for i in range(th):
            r0, r1, r2, r3 = x[2 * i], x[2 * i + 1], x[2 * i + 2], x[2 * i + 3]
            for q in range(Wp):  # B^T d for every column of the four rows at once
                rows[0, q] = r0[q] - r2[q]
                rows[1, q] = r1[q] + r2[q]
                rows[2, q] = r2[q] - r1[q]
                rows[3, q] = r1[q] - r3[q]
            base = (b * th + i) * tw
            for a in range(4):  # ... times B: the same combinations of each tile's four columns
                u, o0, o1, o2, o3 = rows[a], v[4 * a, c], v[4 * a + 1, c], v[4 * a + 2, c], v[4 * a + 3, c]
                for j in range(tw):
                    z = 2 * j
                    o0[base + j] = u[z] - u[z + 2]
                    o1[base + j] = u[z + 1] + u[z + 2]
                    o2[base + j] = u[z + 2] - u[z + 1]
                    o3[base + j] = u[z + 1] - u[z + 3]


@compiled.jit
def _column_pair(m, q, o, t):  # pragma: no cover - compiled
    r"""Column ``q`` of :math:`A^\top m` (its two rows) for tile ``t`` of output channel ``o``."""
    e0, e1, e2, e3 = m[q, o, t], m[4 + q, o, t], m[8 + q, o, t], m[12 + q, o, t]
    return e0 + e1 + e2, e1 - e2 - e3


@compiled.jit(parallel=True)
def _output_tiles(m, bias, th, tw, y):  # pragma: no cover - compiled
    # m (16, O, B th tw): the products; y (B, O, H, W) = A^T m A + bias, the tiles cropped to H x W
    B, O, H, W = y.shape
    for r in prange(B * O):
        b, o = r // O, r % O
        out, beta = y[b, o], bias[o]
        for i in range(th):
            h = 2 * i
            for j in range(tw):
                t, w = (b * th + i) * tw + j, 2 * j
                p0, q0 = _column_pair(m, 0, o, t)
                p1, q1 = _column_pair(m, 1, o, t)
                p2, q2 = _column_pair(m, 2, o, t)
                p3, q3 = _column_pair(m, 3, o, t)
                # ... times A: the same combinations of the columns
                out[h, w] = p0 + p1 + p2 + beta
                if w + 1 < W:
                    out[h, w + 1] = p1 - p2 - p3 + beta
                if h + 1 < H:
                    out[h + 1, w] = q0 + q1 + q2 + beta
                    if w + 1 < W:
                        out[h + 1, w + 1] = q1 - q2 - q3 + beta


def filter_tiles(weight: Tensor) -> Tensor:
    r"""``(out, in, 3, 3)`` -> ``(16, out, in)``: :math:`G w G^\top` per channel pair, position-major,
    as one matrix product by :math:`G \otimes G` (``(16, 9)``)."""
    O, C = weight.shape[:2]
    g = _G.to(weight.dtype)
    return torch.mm(torch.kron(g, g), weight.reshape(O * C, 9).t()).view(16, O, C)


def winograd_conv3x3(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor] = None,
                     tiles: Optional[Tensor] = None) -> Tensor:
    r"""``F.conv2d(x, weight, bias, padding=1)`` for a ``(B, C, H, W)`` contiguous CPU map and ``(O, C, 3, 3)``
    weights of its dtype, by :math:`F(2 \times 2, 3 \times 3)` (module docstring), without autograd;
    ``tiles`` = :func:`filter_tiles` ``(weight)`` when already made."""
    B, C, H, W = x.shape
    if tiles is None:
        tiles = filter_tiles(weight)
    O = tiles.shape[1]
    th, tw = (H + 1) // 2, (W + 1) // 2
    xp = F.pad(x, (1, 2 * tw + 1 - W, 1, 2 * th + 1 - H)).contiguous()
    v = torch.empty((16, C, B * th * tw), dtype=x.dtype)
    compiled.parallel(_input_tiles, xp.numpy(), th, tw, v.numpy())
    m = torch.bmm(tiles, v)  # (16, O, tiles)
    y = torch.empty((B, O, H, W), dtype=x.dtype)
    b = bias if bias is not None else x.new_zeros(O)
    compiled.parallel(_output_tiles, m.numpy(), b.detach().contiguous().numpy(), th, tw, y.numpy())
    return y


def winograd_pays(x: Tensor, in_channels: int, out_channels: int) -> bool:
    """Whether :func:`winograd_conv3x3` may and should take the ``(B, C, H, W)`` map ``x``: a contiguous CPU
    map with compiled loops on, at least :data:`MIN_TILE_PRODUCTS` channel pairs times output tiles, and
    temporaries within :data:`MAX_TILE_BYTES`."""
    if not (compiled.enabled() and x.device.type == "cpu" and x.dim() == 4 and x.is_contiguous()):
        return False
    tiles = x.shape[0] * ((x.shape[2] + 1) // 2) * ((x.shape[3] + 1) // 2)
    return (in_channels * out_channels * tiles >= MIN_TILE_PRODUCTS
            and 16 * max(in_channels, out_channels) * tiles * x.element_size() <= MAX_TILE_BYTES)


class WinogradConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 3, padding=1)`` (the same parameters and state dict) whose
    forward without autograd, for float32 CPU maps with compiled loops on, runs Winograd's algorithm:
    :math:`F(4 \times 4, 3 \times 3)` (:func:`~gnn_lic.nn.winograd43.winograd43`, where
    :func:`~gnn_lic.nn.winograd43.winograd43_pays`) on channels-last maps and on contiguous maps of at least
    :data:`MIN_TILES43` output tiles (its result is channels-last); on other contiguous maps with at least
    :data:`MIN_TILE_PRODUCTS` channel pairs times output tiles and temporaries within
    :data:`MAX_TILE_BYTES`, :func:`winograd_conv3x3`. Elsewhere (training included) it is
    ``nn.Conv2d``. The weights' transform is made on every call: kept, it would hold 16/9 (36/9) of the
    weights in memory.

    Args:
        in_channels (int), out_channels (int): channels.
        bias (bool): a bias per output channel (default ``True``).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 3, padding=1, bias=bias)

    def _winograd(self, x: Tensor) -> bool:
        if torch.is_grad_enabled() or x.dtype != self.weight.dtype or x.dtype != torch.float32:
            return False
        return winograd_pays(x, self.in_channels, self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.weight.dtype == x.dtype and winograd43_pays(x, self.in_channels, self.out_channels) and (
                memory_layout(x) == torch.channels_last
                or x.shape[0] * -(-x.shape[2] // 4) * -(-x.shape[3] // 4) >= MIN_TILES43):
            return winograd43(x, filter_tiles43(self.weight), self.bias, polyphase=False, shuffle=False)
        if self._winograd(x):
            return winograd_conv3x3(x, self.weight, self.bias)
        return super().forward(x)
