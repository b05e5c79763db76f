r"""Fixed-point convolution: exact integer accumulation in float64, one re-quantisation.

.. math::
    o = \mathrm{clamp}\Big(\mathrm{round}\big(2^{-F_w}\,(b + \textstyle\sum_i w_i a_i)\big), -A, A\Big).

Every product and partial sum is an integer (times :math:`2^{-F_w}`) of absolute value
below :math:`2^{52}` (:func:`~gnn_lic.models.fixed_point.arith.choose_frac_bits`), hence
exact in float64 in any order, fused or not. So the way a sum is split does not matter,
and the layer may use whichever split is fastest:

* ``1x1``: one matrix product per image, bias added by the product (``addmm``);
* stride 1, ``groups = 1``: one matrix product per kernel tap, accumulated into the
  output (``addmm_``) from shifted views of the zero-padded input flattened to rows of
  width :math:`W + 2p` (output pixel :math:`(i, j)` and tap :math:`(d_y, d_x)` read
  flat index :math:`i (W + 2p) + j + d_y (W + 2p) + d_x`), so no ``unfold`` copy with
  :math:`k^2` times the input is made; taps whose weights are all zero (the masked half
  of a checkerboard context) are skipped, their terms being exact zeros;
* stride 1, depthwise: one multiply-add per tap over the same shifted views;
* 3x3, padding 1, ``groups = 1``, large enough maps: Winograd's :math:`F(2 \times 2, 3 \times 3)`
  (:func:`~gnn_lic.nn.winograd.winograd_conv3x3`, 2.25 times fewer products), whose transforms
  hold only :math:`0, \pm 1` and halves, so every value is an integer in units of a quarter of
  the weights' unit: exact, and so the same output, when each output's
  :math:`4 \max|a| \sum |G w G^\top| + |b|` (in those units) stays below :math:`2^{52}`, checked
  on every call against the input's largest value (otherwise the shifted views);
* otherwise: ``unfold`` and one matrix product.

No path goes through a convolution algorithm whose intermediate values are not integers
(FFT, Winograd with larger tiles).

With ``int8=True`` (scheme ``w8``, :mod:`~gnn_lic.models.fixed_point.int8`) a layer that is
not depthwise multiplies 8-bit weights by the signed base-256 digits of its inputs
instead: one row of int8 columns per digit and output pixel (the taps in use at stride 1,
``unfold`` otherwise), one integer matrix product by the transposed weights, exact. Where
``torch._int_mm`` is slow (:func:`~gnn_lic.models.fixed_point.int8.w8_products`) inputs with
few seven-bit digits take oneDNN's unsigned-by-signed byte products instead
(:mod:`~gnn_lic.models.fixed_point.onednn`), and the others the float64 kernels above with its
8-bit weights times :math:`2^{-f_o}`: the same exact sums, the same output.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from compressai.layers import CheckerboardMaskedConv2d
from torch import Tensor, nn

from gnn_lic.models.fixed_point import onednn
from gnn_lic.models.fixed_point.arith import ACT_FRAC_BITS, ACT_MAX, DTYPE, choose_frac_bits, requantize_, shift
from gnn_lic.models.fixed_point.conv8 import W8Layer, taps_in_use
from gnn_lic.models.fixed_point.int8 import int8_weights, w8_products
from gnn_lic.nn.winograd import filter_tiles, winograd_conv3x3, winograd_pays

__all__ = ["FixedConv2d"]


class FixedConv2d(W8Layer):
    """A :class:`torch.nn.Conv2d` (groups 1 or depthwise, zero padding) in fixed point.

    ``weight`` ``(out, in/groups * kh * kw)`` and ``bias`` hold the integer weights
    (units :math:`2^{-F_w}`) and bias (units :math:`2^{-(16 + F_w)}`); the kernels use
    them times :math:`2^{-F_w}` (exact), so the output needs only rounding. With ``int8``
    (scheme ``w8``) a layer that is not depthwise uses 8-bit weights per output channel
    and integer products of the inputs' byte digits instead (:mod:`~gnn_lic.models.fixed_point.int8`).
    """

    def __init__(self, conv: nn.Conv2d, name: str = "conv", int8: bool = False):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise TypeError(f"{name}: only numeric zero padding is supported")
        if tuple(conv.dilation) != (1, 1):
            raise TypeError(f"{name}: dilation is not supported")
        self.groups = conv.groups
        self.depthwise = conv.groups > 1
        if self.depthwise and not (conv.groups == conv.in_channels == conv.out_channels):
            raise TypeError(f"{name}: only groups=1 or depthwise convolutions are supported")
        w = conv.weight.detach().to("cpu", DTYPE)
        if isinstance(conv, CheckerboardMaskedConv2d):
            w = w * conv.mask.detach().to("cpu", DTYPE)
        self.out_channels, self.in_channels = conv.out_channels, conv.in_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        b = conv.bias.detach().to("cpu", DTYPE) if conv.bias is not None else None
        flat = w.reshape(w.shape[0], -1)
        kh, kw = self.kernel_size
        if kh * kw == 1 and self.stride == (1, 1) and self.padding == (0, 0):
            self.kind = "pointwise"
        elif self.stride != (1, 1):
            self.kind = "unfold"
        else:
            self.kind = "depthwise" if self.depthwise else "taps"
        self.int8 = bool(int8) and not self.depthwise
        self.name = name
        self._wino_limit: Optional[float] = None  # Winograd's exact input range, found on first use
        self._tiles16: Optional[Tensor] = None  # scheme w8: 4 G w G^T as int16, made when Winograd first runs
        if self.int8:  # scheme w8 holds its 8-bit weights (and int16 Winograd tiles once they run), no float64
            weight8, self.weight_exp = int8_weights(flat)
            self.bias16 = None if b is None else torch.round(shift(b, ACT_FRAC_BITS))
            # fx16's weight bits, input clamp and bias: not made (scheme w8 neither clamps nor uses them)
            self.frac_bits, self.in_max, self.bias = None, ACT_MAX, None
            self._w = self._bias = None
            self._prepare_int8(weight8)
        else:
            self.frac_bits, self.in_max = choose_frac_bits(flat, b, name)
            self.bias = None if b is None else torch.round(shift(b, self.frac_bits + ACT_FRAC_BITS))
            self._prepare(torch.round(shift(flat, self.frac_bits)))  # (out, in/groups * kh * kw)

    @property
    def weight(self) -> Tensor:
        """The integer weights ``(out, in/groups * kh * kw)`` (units :math:`2^{-F_w}`), read back
        exactly from the kernels' operands: only one float64 copy of a layer's weights is held
        (none by a scheme-w8 layer, whose integer weights are :attr:`weight8`)."""
        if self._w is None:
            raise AttributeError(f"{self.name}: a scheme-w8 layer holds its 8-bit weights only (weight8)")
        kh, kw = self.kernel_size
        if self.kind == "depthwise":
            w = self._w.reshape(kh * kw, -1).t()
        elif self.kind == "taps":
            w = self._w.permute(1, 2, 0).reshape(self.out_channels, -1)
        else:
            w = self._w
        return shift(w, self.frac_bits)

    def _prepare(self, weight: Tensor) -> None:
        """The kernels' operands: integer weights and bias times 2**-F_w (exact)."""
        s = 2.0**-self.frac_bits
        self._bias = None if self.bias is None else (self.bias * s).reshape(-1, 1)
        self._w, self._taps = self._operands(weight * s)

    def _operands(self, w: Tensor) -> Tuple[Tensor, List[int]]:
        """The float64 kernels' weight operand for ``w`` ``(out, in/groups * kh * kw)`` (already scaled) and the
        taps in use: ``w`` itself (pointwise, unfold), one column of per-channel weights per tap ``(T, C, 1)``
        (depthwise) or one weight matrix per tap ``(T, out, in)``."""
        kh, kw = self.kernel_size
        if self.kind in ("pointwise", "unfold"):
            return w, []
        if self.kind == "depthwise":
            taps = w.t().reshape(kh * kw, -1, 1)
        else:
            taps = w.reshape(self.out_channels, self.in_channels, kh * kw).permute(2, 0, 1)
        return taps.contiguous(), taps_in_use(taps.ne(0).flatten(1).any(1))

    def to(self, device: torch.device) -> "FixedConv2d":
        self._tiles16 = None
        onednn.forget(self)
        self.bias = None if self.bias is None else self.bias.to(device)
        self._w = None if self._w is None else self._w.to(device)
        self._bias = None if self._bias is None else self._bias.to(device)
        if self.int8:
            self._w8, self._scale8, self._wsum8 = (t.to(device) for t in (self._w8, self._scale8, self._wsum8))
            self.bias16 = None if self.bias16 is None else self.bias16.to(device)
        return self

    def __call__(self, x: Tensor, table=None) -> Tensor:
        """The layer's output; with ``table`` (scheme w8 only), read through that
        :class:`~gnn_lic.models.fixed_point.tables.FixedTable` in the same pass."""
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, got {C}")
        products = w8_products(x.device) if self.int8 else None
        planes = self._seven_bit_planes(x) if products == "onednn" else None
        if products == "digits" or planes is not None:
            if B == 1:
                return self._int8(x, table, planes)
            return torch.cat([self._int8(x[b : b + 1], table, planes) for b in range(B)])
        if self.int8:  # the same sums from the float64 kernels, bias added after rounding as in the digit path
            bias = None

            def finish(acc: Tensor) -> Tensor:
                return self._finish8(acc, table)
        else:
            if table is not None:
                raise ValueError(f"{self.name}: only a scheme-w8 layer reads a table in its own pass")
            if self.in_max < ACT_MAX:  # a large fan-in: this layer's own, smaller input range
                x = x.clamp(-self.in_max, self.in_max)
            bias, finish = self._bias, requantize_
        if self._winograd_applies(x):
            if self.int8:  # the integer tiles times 2^-f / 4 per output: exact
                unit = self._scale8
                tiles = self._winograd_tiles8() * (unit.reshape(1, -1, 1) / 4)
            else:  # fx16 holds float64 weights already: its tiles are made per call (16/9 of them)
                unit = torch.full((self.out_channels, 1), 2.0**-self.frac_bits, dtype=DTYPE)
                tiles = filter_tiles(self._w.permute(1, 2, 0).reshape(self.out_channels, self.in_channels, 3, 3))
            if float(x.abs().max()) <= self._winograd_limit(tiles, bias, unit):
                b = None if bias is None else bias.reshape(-1)
                y = winograd_conv3x3(x, None, b, tiles=tiles)
                return finish(y.reshape(B, self.out_channels, H * W)).reshape(B, self.out_channels, H, W)
        # scheme w8's float64 operands are made per call: kept, they would hold eight times its int8 weights
        w, taps = self._operands(self.weight8 * self._scale8) if self.int8 else (self._w, self._taps)
        if self.kind == "pointwise":
            return finish(self._pointwise(x.reshape(B, C, H * W), w, bias)).reshape(B, self.out_channels, H, W)
        if self.kind == "unfold":
            return self._unfold(x, w, bias, finish)
        return self._shifted(x, w, taps, bias, finish)

    def _winograd_applies(self, x: Tensor) -> bool:
        """Whether the layer is a 3x3, padding-1 convolution and Winograd pays for ``x`` (the float layers' rule,
        :func:`~gnn_lic.nn.winograd.winograd_pays`)."""
        return (self.kind == "taps" and self.kernel_size == (3, 3) and self.padding == (1, 1)
                and winograd_pays(x, self.in_channels, self.out_channels))

    def _winograd_limit(self, tiles: Tensor, bias: Optional[Tensor], unit: Tensor) -> float:
        """The largest input magnitude for which every value of Winograd's products with ``tiles`` ``(16, out, in)``
        (exact: sums of weights times 1, 1/2 and 1/4) stays an exact integer: per output, in units of
        ``unit / 4`` (``unit`` the weights' unit per output, ``(out, 1)``), ``4 max|a| sum |tiles| + |b| < 2^52``.
        Found on the first call, then kept."""
        if self._wino_limit is None:
            quarter = unit.reshape(-1) / 4
            spread = tiles.abs().sum((0, 2)) / quarter
            b = 0.0 if bias is None else bias.abs().reshape(-1) / quarter
            room = (2.0**52 - b) / (4 * spread)
            self._wino_limit = float(room[spread > 0].min()) if bool((spread > 0).any()) else math.inf
        return self._wino_limit

    def _pointwise(self, x: Tensor, w: Tensor, bias: Optional[Tensor]) -> Tensor:
        """``(B, C, L)`` -> ``(B, out, L)`` accumulators ``w @ x + bias``."""
        out = x.new_empty((x.shape[0], self.out_channels, x.shape[2]))
        for b in range(x.shape[0]):
            if bias is None:
                torch.mm(w, x[b], out=out[b])
            else:
                torch.addmm(bias, w, x[b], out=out[b])
        return out

    def output_size(self, H: int, W: int) -> Tuple[int, int]:
        """``(Ho, Wo)`` of the output for an ``H x W`` input: ``(H + 2 p - k) // s + 1`` on each axis."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1

    def _unfold(self, x: Tensor, w: Tensor, bias: Optional[Tensor], finish: Callable[[Tensor], Tensor]) -> Tensor:
        kh, kw = self.kernel_size
        B, C, H, W = x.shape
        Ho, Wo = self.output_size(H, W)
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (B, C*k, L)
        if self.depthwise:
            cols = cols.reshape(B, C, kh * kw, Ho * Wo)
            acc = (cols * w.reshape(1, C, kh * kw, 1)).sum(2)
            if bias is not None:
                acc += bias.reshape(1, -1, 1)
        else:
            acc = self._pointwise(cols, w, bias)
        return finish(acc).reshape(B, self.out_channels, Ho, Wo)

    def _shifted(self, x: Tensor, w: Tensor, taps: List[int], bias: Optional[Tensor],
                 finish: Callable[[Tensor], Tensor]) -> Tensor:
        """Stride 1: one product (or multiply-add) per tap over shifted views of the padded input."""
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        B, C, H, W = x.shape
        Hp, Wp = H + 2 * ph, W + 2 * pw
        Ho, Wo = Hp - kh + 1, Wp - kw + 1
        L = Ho * Wp  # every output row at the padded width; the last kw - 1 columns are discarded
        # one more zero row at the bottom keeps the last row's discarded columns inside the buffer
        xp = F.pad(x, (pw, pw, ph, ph + 1)).reshape(B, C, (Hp + 1) * Wp)
        if bias is None:
            out = x.new_zeros((B, self.out_channels, L))
        else:
            out = bias.expand(B, -1, L).contiguous()
        for t in taps:
            off = (t // kw) * Wp + t % kw
            if self.kind == "depthwise":
                out.addcmul_(xp[:, :, off : off + L], w[t])
            else:
                for b in range(B):
                    out[b].addmm_(w[t], xp[b, :, off : off + L])
        return finish(out).reshape(B, self.out_channels, Ho, Wp)[..., :Wo]
