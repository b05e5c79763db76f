"""Scheme w8's side of :class:`~gnn_lic.models.fixed_point.conv.FixedConv2d`: 8-bit weights times the inputs' digits.

:mod:`~gnn_lic.models.fixed_point.int8` describes the arithmetic; here a layer holds its int8
operands and multiplies one image at a time, by ``torch._int_mm`` on the inputs' byte digits
(the weights times the digits, one contiguous row of digit sums per output channel) or by
oneDNN's product of their seven-bit digits (:mod:`~gnn_lic.models.fixed_point.onednn`).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gnn_lic.models.fixed_point import kernels, onednn
from gnn_lic.models.fixed_point.arith import ACT_MAX, DTYPE
from gnn_lic.models.fixed_point.int8 import (
    byte_digits,
    check_fan_in,
    digit_columns,
    digit_offset,
    digit_planes,
    digit_rows,
    int8_products,
    powers_of_two,
)
from gnn_lic.nn.winograd import filter_tiles

__all__ = ["W8Layer", "MAX_COLUMN_BYTES", "taps_in_use"]

#: most bytes of a stride-1 scheme-w8 layer's digit columns at once: larger maps are multiplied in bands of
#: output rows (the same integers: each output is its own sum)
MAX_COLUMN_BYTES = 64 << 20


def taps_in_use(used: Tensor) -> List[int]:
    """The indexes of the ``True`` entries of a tap mask ``(kh * kw,)``."""
    return used.nonzero().flatten().tolist()


class W8Layer:
    """Scheme w8's operands and products, mixed into :class:`~gnn_lic.models.fixed_point.conv.FixedConv2d`
    (which sets ``kind``, ``kernel_size``, ``stride``, ``padding``, the channel counts and ``bias16``)."""

    def _prepare_int8(self, weight8: Tensor) -> None:
        """Scheme w8's operands: ``(out, taps in use * in)`` int8 weights, tap-major, and ``2^-f`` per output."""
        kh, kw = self.kernel_size
        taps = weight8.reshape(self.out_channels, self.in_channels, kh * kw).permute(0, 2, 1)
        if self.kind == "taps":
            self._taps8 = taps_in_use(taps.ne(0).any(2).any(0))
            taps = taps[:, self._taps8]
        else:  # pointwise: one tap; unfold: F.unfold's channel-major order
            self._taps8 = list(range(kh * kw))
            taps = weight8.reshape(self.out_channels, 1, -1)
        check_fan_in(taps.shape[1] * taps.shape[2], self.name)
        self._w8 = taps.reshape(self.out_channels, -1).to(torch.int8).contiguous()
        self._wsum8 = weight8.sum(1).reshape(-1, 1)  # times the digits' offset: its share of the sums
        self._scale8 = powers_of_two(-self.weight_exp).reshape(-1, 1)

    @property
    def weight8(self) -> Tensor:
        """Scheme w8's integer weights ``(out, in * kh * kw)`` (float64, ``|w| <= 127``, units ``2^-f`` per
        output), read back exactly from the int8 operands."""
        if not self.int8:
            raise AttributeError(f"{self.name}: not a scheme-w8 layer")
        kh, kw = self.kernel_size
        if self.kind != "taps":
            return self._w8.to(DTYPE)
        full = torch.zeros(self.out_channels, self.in_channels, kh * kw, dtype=DTYPE, device=self._w8.device)
        if self._taps8:  # no tap in use: the weights are all zero
            w = self._w8.to(DTYPE).reshape(self.out_channels, len(self._taps8), self.in_channels)
            full[:, :, self._taps8] = w.permute(0, 2, 1)
        return full.reshape(self.out_channels, -1)

    def _seven_bit_planes(self, x: Tensor) -> Optional[int]:
        """The seven-bit digits of ``x`` for oneDNN's byte products, or ``None`` where the float64 products
        take it (more than :data:`~gnn_lic.models.fixed_point.onednn.FAST_PLANES` digits, or
        :data:`~gnn_lic.models.fixed_point.onednn.WINOGRAD_PLANES` where Winograd applies)."""
        if not self._w8.shape[1]:  # no weight in use: nothing to multiply
            return None
        lo, hi = torch.aminmax(x)
        planes = onednn.seven_bit_planes(float(lo), float(hi))
        most = onednn.WINOGRAD_PLANES if self._winograd_applies(x) else onednn.FAST_PLANES
        return planes if planes is not None and planes <= most else None

    def _winograd_tiles8(self) -> Tensor:
        """Scheme w8's Winograd filter tiles ``4 G w G^T`` ``(16, out, in)`` of its integer weights, as int16
        (exact: ``2G`` is an integer matrix whose rows sum to at most 3 in absolute value, so
        ``|4 G w G^T| <= 3 * 3 * 127 = 1143``), made on first use."""
        if self._tiles16 is None:
            full = self.weight8.reshape(self.out_channels, self.in_channels, 3, 3)
            self._tiles16 = (filter_tiles(full) * 4).to(torch.int16)
        return self._tiles16

    def _finish8(self, acc: Tensor, table=None) -> Tensor:
        """Scheme w8's output from float64 sums ``(B, out, L)`` already scaled by ``2^-f`` per output,
        as :func:`~gnn_lic.models.fixed_point.kernels.combine_requantize` gives it from the digit sums."""
        bias = None if self.bias16 is None else self.bias16.reshape(1, -1, 1)
        return kernels.round_bias_clamp_(acc, bias, ACT_MAX, table)

    def _int8(self, x: Tensor, table=None, seven_bit: Optional[int] = None) -> Tensor:
        """Scheme ``w8`` for one image ``(1, C, H, W)``: one integer product of the input digits.

        The inputs are split into the fewest digits ``p`` that hold them all
        (:func:`~gnn_lic.models.fixed_point.int8.digit_planes`; zero, the padding, in every
        range), the same integers whatever ``p``. Zero padding is applied to the integers
        before they are split, so padded inputs carry the digits of 0. With ``seven_bit`` (``p``)
        the digits are seven-bit ones and oneDNN multiplies them (:meth:`_seven_bit`). Otherwise
        ``torch._int_mm`` multiplies the weights by the byte digits: at stride 1 (the taps in use,
        or the one tap of a pointwise layer) one row per tap and channel, one column per digit and
        output pixel (:func:`~gnn_lic.models.fixed_point.int8.digit_rows`), in bands of output rows
        (of output pixels for a map one pixel wide) where the columns would exceed
        :data:`MAX_COLUMN_BYTES` or the sums :data:`~gnn_lic.models.fixed_point.int8.INT_MM_BLOCK_BYTES`;
        otherwise the columns of ``unfold``, each input's ``p`` digits one after another.
        Either way each output channel's ``p`` partial sums come out as one contiguous row.
        """
        if seven_bit is not None:
            return self._seven_bit(x, table, seven_bit)
        H, W = x.shape[-2:]
        O = self.out_channels
        Ho, Wo = self.output_size(H, W)
        lo, hi = torch.aminmax(x)
        p = digit_planes(float(lo), float(hi))
        if self.kind == "unfold":
            cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)[0]
            cols = byte_digits(cols, p).reshape(cols.shape[0], -1)  # (C*k, p L)
            return self._digit_sums(cols, p, table).reshape(1, O, Ho, Wo)
        out = x.new_empty((O, Ho * Wo))
        per_pixel = p * max(len(self._taps8) * self.in_channels, 4 * O)  # bytes of its columns, or of its sums
        x = x[0].contiguous()
        pointwise = self.kind == "pointwise"
        if pointwise:  # one tap, no padding: the map as one row of pixels, in bands of pixels
            x = x.reshape(x.shape[0], 1, H * W)
        units, unit = (H * W, 1) if pointwise else (Ho, Wo)
        band = max(1, MAX_COLUMN_BYTES // (per_pixel * unit))
        for s0 in range(0, units, band):
            s1 = min(units, s0 + band)
            rows, cols = ((0, 1), (s0, s1)) if pointwise else ((s0, s1), None)
            digits = digit_rows(x, p, self.kernel_size, self.padding, self._taps8, rows, cols)
            self._digit_sums(digits, p, table, out[:, s0 * unit : s1 * unit])
        return out.reshape(1, O, Ho, Wo)

    def _digit_sums(self, digits: Tensor, p: int, table=None, out: Optional[Tensor] = None) -> Tensor:
        """Scheme ``w8``'s outputs ``(out, L)`` (into ``out`` if given) from the byte digits ``(K, p L)`` of the
        inputs: one integer product by the weights, then each output's digit sums combined and re-quantised."""
        O = self.out_channels
        bias = None if self.bias16 is None else self.bias16.reshape(-1, 1)
        g = int8_products(self._w8, digits).view(O, p, -1)
        return kernels.combine_requantize(g, self._wsum8 * digit_offset(p), self._scale8, bias, ACT_MAX, table,
                                          outputs_on_rows=True, out=out)

    def _seven_bit(self, x: Tensor, table, p: int) -> Tensor:
        """Scheme ``w8`` for one image by oneDNN's products of ``p`` seven-bit digits: one row of columns per
        digit and output pixel (:func:`~gnn_lic.models.fixed_point.int8.digit_columns`; at stride 1 in bands of
        output rows where the columns would exceed :data:`MAX_COLUMN_BYTES`, otherwise ``unfold``'s)."""
        kh, ph, pw = self.kernel_size[0], *self.padding
        H, W = x.shape[-2:]
        O = self.out_channels
        Ho, Wo = self.output_size(H, W)
        if self.kind == "unfold":
            cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)[0]
            cols = onednn.seven_bit_digits(cols.t(), p).transpose(0, 1).reshape(p * Ho * Wo, -1)  # (p L, C*k)
            return self._seven_bit_outputs(cols, p, table).reshape(1, O, Ho, Wo)
        rows = max(1, MAX_COLUMN_BYTES // max(1, p * Wo * len(self._taps8) * self.in_channels))
        if rows >= Ho:
            cols = digit_columns(x[0], p, self.kernel_size, self.padding, self._taps8, True)
            return self._seven_bit_outputs(cols, p, table).reshape(1, O, Ho, Wo)
        # bands of output rows, each from its rows of the input padded with zero rows (split like the padding)
        xp = F.pad(x[0], (0, 0, ph, ph))
        out = x.new_empty((O, Ho * Wo))
        for i0 in range(0, Ho, rows):
            i1 = min(Ho, i0 + rows)
            band = xp[:, i0 : i1 + kh - 1].contiguous()
            cols = digit_columns(band, p, self.kernel_size, (0, pw), self._taps8, True)
            out[:, i0 * Wo : i1 * Wo] = self._seven_bit_outputs(cols, p, table)
        return out.reshape(1, O, Ho, Wo)

    def _seven_bit_outputs(self, cols: Tensor, p: int, table=None) -> Tensor:
        """Scheme ``w8``'s outputs ``(out, L)`` from the columns ``(p L, K)`` of ``p`` seven-bit digits: one
        product by oneDNN, then the digits' sums combined and re-quantised."""
        O = self.out_channels
        bias = None if self.bias16 is None else self.bias16.reshape(-1, 1)
        g = onednn.u8_products(cols, onednn.packed_weights(self, self._w8)).view(p, -1, O)
        offset = self._wsum8 * -onednn.seven_bit_offset(p)
        return kernels.combine_requantize(g, offset, self._scale8, bias, ACT_MAX, table, 128)
