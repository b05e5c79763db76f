"""Convolutional layers of the GLIC transforms and entropy model.

The graph blocks live in :mod:`gnn_lic.nn.blocks`; this module holds the
lightweight CNN pieces around them (GLIC Fig. 2(c), as the authors' released code builds them) and
the small helpers the entropy models share. Everything here is pointwise or a
plain convolution: no graph is built.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from compressai import layers as compressai_layers
from compressai.layers import conv3x3, subpel_conv3x3
from torch import Tensor, nn

from gnn_lic.nn.banded import memory_layout, row_bands
from gnn_lic.nn.blocks import GatedFFN, LayerNorm2d, ffn_residual
from gnn_lic.nn.convs import DepthwiseConv2d, PointwiseConv2d
from gnn_lic.nn.gdn import gdn, gdn_trains
from gnn_lic.nn.recompute import active, mark
from gnn_lic.nn.winograd import WinogradConv2d
from gnn_lic.nn.winograd43 import conv_tiles43, deconv_tiles43, shuffle_tiles43, winograd43, winograd43_pays
from gnn_lic.nn.winograd43_train import stride2_conv43, stride2_conv_transpose43, winograd43_trains

__all__ = [
    "conv1x1",
    "conv3x3",
    "SubpixelConvTranspose2d",
    "Stride2Conv2d",
    "Stride2ConvTranspose2d",
    "SubpelConv3x3",
    "subpel_conv3x3",
    "GDN",
    "GDN_BAND_BYTES",
    "DepthwiseConvBlock",
    "GatedTransformCNN",
    "ParameterAggregationBlock",
    "channel_ramp",
    "ramp_widths",
    "conv_stack",
    "ConvStack",
]


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    """1x1 convolution (:class:`~gnn_lic.nn.PointwiseConv2d`: ``nn.Conv2d``'s parameters and function)."""
    return PointwiseConv2d(in_ch, out_ch)


class SubpixelConvTranspose2d(nn.ConvTranspose2d):
    r"""A transposed convolution computed as one convolution and a pixel shuffle; the parameters,
    state dict and function of ``nn.ConvTranspose2d`` (up to float rounding: the same products).

    With stride :math:`s`, output row :math:`o = s a + r` of a transposed convolution takes
    :math:`\sum_i w[o - s i + p]\, x[i]`: for each phase :math:`r` a correlation of :math:`x` with the
    taps :math:`w[r + p - s e]` at input offsets :math:`e = i - a`. The :math:`s^2` phases (rows and
    columns) are the output channels of one convolution over :math:`x`, interleaved by
    ``pixel_shuffle``. For CompressAI's ``deconv(C, 3, 5, 2)`` (the last layer of a synthesis) that is a
    3x3 convolution with 12 outputs, which oneDNN runs faster than the transposed convolution with 3.
    Needs ``kernel_size + output_padding - 2 padding = stride`` (every phase the input's size), no
    dilation or groups.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2,
                 padding: Optional[int] = None, output_padding: Optional[int] = None):
        padding = kernel_size // 2 if padding is None else padding
        output_padding = stride - 1 if output_padding is None else output_padding
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         output_padding=output_padding)
        k, s, p = kernel_size, stride, padding
        if k + output_padding - 2 * p != s:
            raise ValueError(f"SubpixelConvTranspose2d needs kernel_size + output_padding - 2 * padding == stride, "
                             f"got {k} + {output_padding} - 2 * {p} != {s}")
        # input offsets e with a tap t = r + p - s e inside the kernel for some phase r
        offsets = [e for e in range(-k, k + 1) if any(0 <= r + p - s * e < k for r in range(s))]
        self.phase_padding = (-offsets[0], offsets[-1])
        taps = torch.full((s, len(offsets)), -1, dtype=torch.long)  # [phase, offset] -> tap or -1
        for r in range(s):
            for j, e in enumerate(offsets):
                if 0 <= r + p - s * e < k:
                    taps[r, j] = r + p - s * e
        # tap of phase (r, q) at offset (e, f) in the flattened k x k kernel, k^2 (a zero appended) where none
        rows, cols = taps[:, None, :, None], taps[None, :, None, :]  # (r, q, e, f)
        flat = torch.where((rows >= 0) & (cols >= 0), rows * k + cols, k * k)
        self.register_buffer("_flat_taps", flat.reshape(-1), persistent=False)
        self._offsets = len(offsets)

    def phase_weight(self) -> Tensor:
        """The ``(C_out s^2, C_in, E, E)`` weight of the phase convolution, channels ``(c, r, q)``."""
        s, E = self.stride[0], self._offsets
        C_in, C_out = self.weight.shape[:2]
        w = nn.functional.pad(self.weight.reshape(C_in, C_out, -1), (0, 1))  # (C_in, C_out, k^2 + 1)
        w = w.index_select(2, self._flat_taps).view(C_in, C_out, s, s, E, E)  # (i, o, r, q, e, f)
        return w.permute(1, 2, 3, 0, 4, 5).reshape(-1, C_in, E, E)

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if output_size is not None:
            raise ValueError("SubpixelConvTranspose2d has no output_size")
        top, bottom = self.phase_padding
        s = self.stride[0]
        h = nn.functional.pad(x, (top, bottom, top, bottom)) if top != bottom else x
        y = nn.functional.conv2d(h, self.phase_weight(), self.bias.repeat_interleave(s * s) if self.bias is not None
                                 else None, padding=0 if top != bottom else top)
        return nn.functional.pixel_shuffle(y, s)


class Stride2Conv2d(nn.Conv2d):
    """CompressAI's ``conv(in_channels, out_channels, 5, 2)`` (``nn.Conv2d``'s parameters, state dict and
    function) whose forward without autograd, where :func:`~gnn_lic.nn.winograd43.winograd43_pays`, runs
    Winograd's F(4x4, 3x3) over the input's polyphase components (:mod:`gnn_lic.nn.winograd43`; the same
    values up to float rounding); under autograd, where
    :func:`~gnn_lic.nn.winograd43_train.winograd43_trains` (large maps),
    :func:`~gnn_lic.nn.winograd43_train.stride2_conv43` (every pass by Winograd). Elsewhere it is ``nn.Conv2d``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 5, stride=2, padding=2)

    def forward(self, x: Tensor) -> Tensor:
        if winograd43_pays(x, self.in_channels, self.out_channels):
            return winograd43(x, conv_tiles43(self.weight), self.bias, polyphase=True, shuffle=False)
        if winograd43_trains(x, self.in_channels, self.out_channels, transposed=False):
            return stride2_conv43(x, self.weight, self.bias)
        return super().forward(x)


class Stride2ConvTranspose2d(SubpixelConvTranspose2d):
    """CompressAI's ``deconv(in_channels, out_channels, 5, 2)`` (``nn.ConvTranspose2d``'s parameters, state
    dict and function) whose forward without autograd, where :func:`~gnn_lic.nn.winograd43.winograd43_pays`,
    runs its phase convolution (:meth:`SubpixelConvTranspose2d.phase_weight`) by Winograd's F(4x4, 3x3),
    the pixel shuffle folded in (the same values up to float rounding); under autograd, where
    :func:`~gnn_lic.nn.winograd43_train.winograd43_trains`,
    :func:`~gnn_lic.nn.winograd43_train.stride2_conv_transpose43`. Elsewhere it is ``nn.ConvTranspose2d``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 5, 2)

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if output_size is None and winograd43_pays(x, self.in_channels, self.out_channels):
            tiles, bias = deconv_tiles43(self.weight, self.bias)
            return winograd43(x, tiles, bias, polyphase=False, shuffle=True)
        if output_size is None and winograd43_trains(x, self.in_channels, self.out_channels, transposed=True):
            return stride2_conv_transpose43(x, self.weight, self.bias)
        return nn.ConvTranspose2d.forward(self, x, output_size)


class SubpelConv3x3(nn.Sequential):
    """CompressAI's ``subpel_conv3x3(in_ch, out_ch, 2)``: ``nn.Conv2d(in_ch, 4 out_ch, 3, padding=1)`` then
    ``nn.PixelShuffle(2)``, with their state dict, whose forward without autograd, where
    :func:`~gnn_lic.nn.winograd43.winograd43_pays`, runs the convolution by Winograd's F(4x4, 3x3), the
    pixel shuffle folded in (the same values up to float rounding)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.Conv2d(in_ch, out_ch * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        conv = self[0]
        if not winograd43_pays(x, conv.in_channels, conv.out_channels):
            return super().forward(x)
        tiles, bias = shuffle_tiles43(conv.weight, conv.bias)
        return winograd43(x, tiles, bias, polyphase=False, shuffle=True)


#: bytes of one band's temporaries in :class:`GDN` (a few MB, so that they stay in the caches)
GDN_BAND_BYTES = 4 << 20


class GDN(compressai_layers.GDN):
    r"""CompressAI's GDN and inverse GDN (Ballé et al., ICLR 2016) with its parameters, state dict and function:

    .. math:: y_i = x_i \Big/ \sqrt{\beta_i + \textstyle\sum_j \gamma_{ij}\, x_j^2}
        \qquad \Big(\text{inverse: } y_i = x_i \sqrt{\beta_i + \textstyle\sum_j \gamma_{ij}\, x_j^2}\Big).

    An output pixel reads its own input pixel alone. So without autograd a channels-last map (the layout
    of the models' transforms) is computed band of rows by band of rows (:data:`GDN_BAND_BYTES` per
    temporary) into one output map: every pixel goes through the same operations as on the whole map, while
    the temporaries (:math:`x^2`, the norm and its root) are a band's instead of three maps. The bits are
    CompressAI's because oneDNN's 1x1 convolution gives a pixel the same sum whatever the rows of the call
    on channels-last maps (the tests check 1, 2 and 3 threads; a map that fits one band is one call
    anyway). On contiguous (NCHW) maps it does not, so those take CompressAI's forward. Under autograd a
    channels-last float32 CPU map takes :func:`gnn_lic.nn.gdn.gdn` (the backward's elementwise steps in two
    compiled passes), others CompressAI's forward.
    """

    def forward(self, x: Tensor) -> Tensor:
        trains = gdn_trains(x) and x.dtype == self.gamma.dtype
        if not trains and (torch.is_grad_enabled() or memory_layout(x) != torch.channels_last):
            return super().forward(x)
        C = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(C, C, 1, 1)
        if trains:
            return gdn(x, gamma, beta, self.inverse)
        out = torch.empty_like(x)  # channels-last, as x
        for r0, r1 in row_bands(x.shape[-2], x.shape[-1], pixels=max(1, GDN_BAND_BYTES // (C * x.element_size()))):
            xb = x[:, :, r0:r1]
            norm = nn.functional.conv2d(xb**2, gamma, beta)
            norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
            torch.mul(xb, norm, out=out[:, :, r0:r1])
        return out


class DepthwiseConvBlock(nn.Module):
    """1x1 conv + LeakyReLU, depthwise 5x5, 1x1 conv, plus a residual path.

    The residual is the identity when ``in_ch == out_ch`` and a 1x1 "adaptor"
    convolution otherwise (the authors' code calls this block ``DepthwiseConv``).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 5):
        super().__init__()
        self.body = nn.Sequential(
            conv1x1(in_ch, in_ch),
            nn.LeakyReLU(0.01),
            DepthwiseConv2d(in_ch, kernel_size),
            conv1x1(in_ch, out_ch),
        )
        self.skip = nn.Identity() if in_ch == out_ch else conv1x1(in_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.skip(x) + self.body(x)
        # no autograd: the activation and the sum in place, the same numbers with two maps fewer
        conv_in, act, dw, conv_out = self.body
        h = conv_in(x)
        torch.nn.functional.leaky_relu_(h, act.negative_slope)
        h = conv_out(dw(h))
        return h.add_(self.skip(x))


class GatedTransformCNN(nn.Module):
    r"""Lightweight conv block of GLIC (Fig. 2(c)): depthwise conv, then a gated FFN.

    .. math::
        h = \mathrm{DWConv}(x), \qquad
        \mathrm{out} = h + \mathrm{FFN}(\mathrm{LN}(h))

    The second term is :func:`~gnn_lic.nn.blocks.ffn_residual` (band by band without autograd).

    Args:
        in_ch (int): input channels.
        out_ch (int or None): output channels (default ``in_ch``).
        expansion (float): FFN expansion (default 4; 2 inside the hyper transforms).
    """

    def __init__(self, in_ch: int, out_ch: int | None = None, expansion: float = 4):
        super().__init__()
        out_ch = in_ch if out_ch is None else out_ch
        self.dwconv = DepthwiseConvBlock(in_ch, out_ch)
        self.norm = LayerNorm2d(out_ch)
        self.ffn = GatedFFN(out_ch, expansion)

    def forward(self, x: Tensor) -> Tensor:
        return ffn_residual(self.dwconv(x), self.norm, self.ffn)


class ParameterAggregationBlock(nn.Module):
    """1x1 conv ``in -> out`` then ``x + FFN(LN(x))`` (:func:`~gnn_lic.nn.blocks.ffn_residual`): pointwise,
    for entropy parameters."""

    def __init__(self, in_ch: int, out_ch: int, expansion: float = 4):
        super().__init__()
        self.proj = conv1x1(in_ch, out_ch)
        self.norm = LayerNorm2d(out_ch)
        self.ffn = GatedFFN(out_ch, expansion)

    def forward(self, x: Tensor) -> Tensor:
        return ffn_residual(self.proj(x), self.norm, self.ffn)


def ramp_widths(in_ch: int, out_ch: int, num_layers: int, min_ch: int = 0) -> List[int]:
    """Channel widths of a linear ramp ``in_ch -> out_ch`` in ``num_layers`` steps.

    Widths are linearly interpolated and floored; hidden widths are clipped to at
    least ``min_ch`` (ELIC's "channel ramp", as the authors' code sizes its entropy-parameter networks).

    >>> ramp_widths(128, 384, 3, min_ch=192)
    [128, 213, 298, 384]
    >>> ramp_widths(416, 32, 3, min_ch=384)
    [416, 384, 384, 32]
    """
    widths = torch.linspace(in_ch, out_ch, num_layers + 1).floor().int().tolist()
    widths[1:-1] = [max(w, min_ch) for w in widths[1:-1]]
    return widths


def channel_ramp(in_ch: int, out_ch: int, *, min_ch: int, make_layer: Callable[[int, int], nn.Module]) -> nn.Sequential:
    """ELIC's three-layer ramp: ``make_layer(a, b)`` over :func:`ramp_widths` (each block carries its own nonlinearity)."""
    widths = ramp_widths(in_ch, out_ch, 3, min_ch)
    return nn.Sequential(*(make_layer(a, b) for a, b in zip(widths[:-1], widths[1:])))


class ConvStack(nn.Sequential):
    """Convolutions with ``nn.GELU`` s between them (:func:`conv_stack`): ``nn.Sequential``'s state dict and
    numbers; inside :class:`~gnn_lic.nn.recompute.recomputed_saves` the GELUs' outputs are marked as made
    again from their inputs (:func:`~gnn_lic.nn.recompute.mark`), so each convolution after a GELU keeps
    the GELU's input for its weight gradient instead of a second map."""

    def forward(self, x: Tensor) -> Tensor:
        if active() is None or not torch.is_grad_enabled():
            return super().forward(x)
        for layer in self:
            y = layer(x)
            x = mark(y, layer, x) if isinstance(layer, nn.GELU) else y
        return x


def conv_stack(widths: Sequence[int]) -> ConvStack:
    """Stride-1 3x3 convolutions through ``widths`` with GELUs between them (none after the last); the
    convolutions are :class:`~gnn_lic.nn.winograd.WinogradConv2d` (``nn.Conv2d``'s parameters and state dict)."""
    layers: List[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(WinogradConv2d(a, b))
        if i < len(widths) - 2:
            layers.append(nn.GELU())
    return ConvStack(*layers)
