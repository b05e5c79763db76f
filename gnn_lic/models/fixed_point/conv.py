r"""Fixed-point convolution: exact integer accumulation in float64, one re-quantisation.

.. math::
    o = \mathrm{clamp}\Big(\mathrm{round}\big(2^{-F_w}\,(b + \textstyle\sum_i w_i a_i)\big), -A, A\Big).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.layers import CheckerboardMaskedConv2d
from torch import Tensor, nn

from gnn_lic.models.fixed_point.arith import ACT_FRAC_BITS, ACT_MAX, DTYPE, choose_frac_bits, requantize_, shift

__all__ = ["FixedConv2d"]


class FixedConv2d:
    """A :class:`torch.nn.Conv2d` (groups 1 or depthwise, zero padding) in fixed point.

    Computed as ``unfold`` + matrix product (or product + sum for depthwise), never
    through a convolution algorithm that could transform the operands (FFT, Winograd).
    """

    def __init__(self, conv: nn.Conv2d, name: str = "conv"):
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
        self.frac_bits, self.in_max = choose_frac_bits(flat, b, name)
        self.weight = torch.round(shift(flat, self.frac_bits))  # (out, in/groups * kh * kw)
        self.bias = None if b is None else torch.round(shift(b, self.frac_bits + ACT_FRAC_BITS))
        self.pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def to(self, device: torch.device) -> "FixedConv2d":
        self.weight = self.weight.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, got {C}")
        if self.in_max < ACT_MAX:  # a large fan-in: this layer's own, smaller input range
            x = x.clamp(-self.in_max, self.in_max)
        if self.pointwise:
            acc = torch.matmul(self.weight, x.reshape(B, C, H * W))
            Ho, Wo = H, W
        else:
            (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
            Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
            cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (B, C*k, L)
            if self.depthwise:
                cols = cols.reshape(B, C, kh * kw, Ho * Wo)
                acc = (cols * self.weight.reshape(1, C, kh * kw, 1)).sum(2)
            else:
                acc = torch.matmul(self.weight, cols)
        if self.bias is not None:
            acc += self.bias.reshape(1, -1, 1)
        return requantize_(acc, self.frac_bits).reshape(B, self.out_channels, Ho, Wo)
