r"""GABIC: Graph-based Attention Block for Image Compression (ICIP 2024), and its keep-all variant.

Architecture (GABIC Fig. 2(a), Sec. 3.2, and the authors' released model): the WACNN
layout of Zou et al. (CVPR 2022) with its window-attention blocks replaced by
graph window blocks (:class:`gnn_lic.nn.GraphWindowBlock`, k-NN graphs inside
windows, GABIC Sec. 3.3), and a channel-wise entropy model with LRP.

.. code-block:: none

    x ─► conv s2 ─► GDN ─► conv s2 ─► GDN ─► GWB(N, 8) ─► conv s2 ─► GDN ─► conv s2 ─► GWB(M, 4) ─► y
         3→N                N→N              (1/4)         N→N              N→M        (1/16)

    y ─► channel-slice latent codec (h_a, EB, h_mean_s | h_scale_s, slice nets, LRP) ─► y_hat

    y_hat ─► GWB(M, 4) ─► deconv ─► IGDN ─► deconv ─► IGDN ─► GWB(N, 8) ─► deconv ─► IGDN ─► deconv ─► x_hat
                           M→N               N→N                            N→N               N→3

``conv`` = 5x5 stride-2 convolution, ``deconv`` = 5x5 stride-2 transposed
convolution (CompressAI's ``conv``/``deconv``; the last one computed as a convolution and a pixel
shuffle, :class:`~gnn_lic.models.layers.SubpixelConvTranspose2d`, the others between feature maps
:class:`~gnn_lic.models.layers.Stride2Conv2d` and :class:`~gnn_lic.models.layers.Stride2ConvTranspose2d`,
which run Winograd's F(4x4, 3x3) without autograd). Registered names:

=================  ==========================================================
``gabic``          GABIC, k-NN graphs with ``k = 9`` (no self loop), 8 heads
``gabic-keepall``  the same code with ``knn=None``: every window node attends to
                   every other node of its window (GABIC eqs. 8-12: window
                   attention written as a graph, without Swin's shift and
                   relative-position bias)
=================  ==========================================================

Zou et al.'s own model, with shifted-window attention, is ``wacnn``
(:mod:`gnn_lic.models.wacnn`); it shares :func:`window_codec_transforms` and the
entropy model with GABIC.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from compressai.models.utils import conv
from torch import nn

from gnn_lic.graph import TopK
from gnn_lic.models.base import PaddedCompressionModel
from gnn_lic.models.channel_slice import ChannelSliceLatentCodec
from gnn_lic.models.layers import GDN, Stride2Conv2d, Stride2ConvTranspose2d, SubpixelConvTranspose2d
from gnn_lic.models.registry import register_model
from gnn_lic.nn.banded import banded_stage, channels_last_call, conv_radius, image_rows
from gnn_lic.nn.blocks import GraphWindowBlock
from gnn_lic.nn.winograd43 import TILE_ROWS

__all__ = ["GABIC", "GABIC_PRESETS", "build_gabic", "window_codec_transforms", "BandedSequential",
           "ChannelsLastSequential"]


#: most image pixels of one band of the banded layers of either transform (a band holds whole rows)
STAGE_PIXELS = 2 << 20


class ChannelsLastSequential(nn.Sequential):
    """``nn.Sequential`` run on a channels-last (NHWC) copy of its input, its result made contiguous again
    (:func:`~gnn_lic.nn.banded.channels_last_call`, with and without autograd): oneDNN's 5x5 stride-2
    convolutions and transposed convolutions are faster on NHWC memory, the graph layers read nodes as
    rows of channels, and one layout for the whole transform spares the conversions that mixed layouts
    cost in the backward pass. The values are those of ``nn.Sequential`` up to float rounding (the same
    products summed in another order); the state dict is the plain ``nn.Sequential``'s."""

    def forward(self, x):
        return channels_last_call(self.run, x)

    def run(self, x):
        return super().forward(x)


class BandedSequential(ChannelsLastSequential):
    """:class:`ChannelsLastSequential` whose layers ``[start, stop)`` run band by band without autograd
    (:func:`~gnn_lic.nn.banded.banded_stage`, with ``geometry`` its keywords); its state dict is the
    plain ``nn.Sequential``'s. The layers must be local (convolutions, GDN, window blocks whose
    windows the bands' ``align`` keeps on the map's grid). ``stride`` is the image rows per row
    of the input; a band covers at most :data:`STAGE_PIXELS` image pixels, so the bands depend on
    the image size alone."""

    def __init__(self, *layers: nn.Module, band: Tuple[int, int], stride: int, **geometry: Any):
        super().__init__(*layers)
        self.band, self.stride, self.geometry = band, stride, geometry

    def run(self, x):
        if torch.is_grad_enabled():
            return super().run(x)
        start, stop = self.band
        layers = list(self)
        for layer in layers[:start]:
            x = layer(x)
        max_rows = image_rows(STAGE_PIXELS, x.shape[-1], self.stride)
        x = banded_stage([x], nn.Sequential(*layers[start:stop]), max_rows=max_rows, **self.geometry)
        for layer in layers[stop:]:
            x = layer(x)
        return x


def window_codec_transforms(
    N: int, M: int, block: Callable[[int, int, str], nn.Module], windows: Sequence[int], banded: bool = False
) -> Tuple[nn.Sequential, nn.Sequential]:
    """``(g_a, g_s)`` of the WACNN layout (Zou et al., CVPR 2022; GABIC Fig. 2(a)), blocks made by ``block``.

    ``block(channels, window, stage)`` is called for the four block positions, with
    ``stage`` = ``"high"`` (1/4 resolution, ``windows[0]``) or ``"low"`` (1/16,
    ``windows[1]``): ``g_a[4]`` (N, high), ``g_a[8]`` (M, low), ``g_s[0]`` (M, low),
    ``g_s[5]`` (N, high).

    With ``banded`` (blocks confined to their non-overlapping windows, as GABIC's are) the
    layers down to the 1/4-resolution block (``g_a[:5]``) and from it up (``g_s[3:]``) run
    band by band without autograd (:class:`BandedSequential`). Both run on channels-last memory
    (:class:`ChannelsLastSequential`).
    """
    w_hi, w_lo = windows
    layers_a = (
        conv(3, N, kernel_size=5, stride=2), GDN(N),
        Stride2Conv2d(N, N), GDN(N),
        block(N, w_hi, "high"),
        Stride2Conv2d(N, N), GDN(N),
        Stride2Conv2d(N, M),
        block(M, w_lo, "low"),
    )  # fmt: skip
    layers_s = (
        block(M, w_lo, "low"),
        Stride2ConvTranspose2d(M, N), GDN(N, inverse=True),
        Stride2ConvTranspose2d(N, N), GDN(N, inverse=True),
        block(N, w_hi, "high"),
        Stride2ConvTranspose2d(N, N), GDN(N, inverse=True),
        SubpixelConvTranspose2d(N, 3, kernel_size=5, stride=2),  # = deconv(N, 3, 5, 2), faster
    )  # fmt: skip
    if not banded:
        return ChannelsLastSequential(*layers_a), ChannelsLastSequential(*layers_s)
    # rows of context at 1/4 of the high block: its residual units, and the window a row shares
    quarter = max(conv_radius(layers_a[4].branch_a), conv_radius(layers_a[4].branch_b)) + w_hi
    # analysis, in image rows: two 5x5 stride-2 convolutions, then the block at 1/4; windows on the grid
    halo_a = 4 * (quarter + 1) + 2 * conv_radius(layers_a[2]) + conv_radius(layers_a[0])
    # bands start on the window grid at 1/4 and on the tile grid of g_a[2]'s Winograd products (at 1/4)
    g_a = BandedSequential(*layers_a, band=(0, 5), stride=1, down=4, align=4 * math.lcm(w_hi, TILE_ROWS), halo=halo_a)
    # synthesis, in rows at 1/8: the two last 5x5 stride-2 deconvolutions need one row of the block's output
    # beyond the band (at 1/4); that row, through the residual units, whole windows of the block's input
    # (the band starts on the window grid); a 5x5 stride-2 deconvolution makes them from (rows + 2) / 2 rows
    reach = 1 + max(conv_radius(layers_s[5].branch_a), conv_radius(layers_s[5].branch_b))
    window_rows = w_hi * -(-reach // w_hi)  # at 1/4
    halo_s = -(-(window_rows + 2) // 2)
    # bands start on the window grid (at 1/4) and on the tile grid of g_s[3]'s Winograd products (at 1/8)
    g_s = BandedSequential(*layers_s, band=(3, 9), stride=8, up=8, align=math.lcm(max(1, w_hi // 2), TILE_ROWS),
                           halo=halo_s)
    return g_a, g_s


class GABIC(PaddedCompressionModel):
    r"""GABIC codec (ICIP 2024).

    Args:
        N (int): channels of the transforms and of ``z`` (192).
        M (int): latent channels (320).
        num_slices (int): channel slices of the entropy model (10).
        max_support_slices (int): how many of the first decoded slices condition
            the later ones (5).
        knn (int or None): neighbours per node in the graph window blocks (9);
            ``None`` keeps all window nodes (``gabic-keepall``).
        heads (int): attention heads (8).
        windows (pair of int): window sides at 1/4 and 1/16 resolution ((8, 4)).
        cc_hidden (sequence of int): hidden widths of the slice networks ((224, 176, 128, 64)).
        hyper_widths (sequence of int, optional): widths of the hyper transforms from
            ``N`` to ``M`` (default: evenly spaced, 192..320), see
            :class:`~gnn_lic.models.channel_slice.ChannelSliceLatentCodec`.
        impl (str): aggregation path of the graph blocks.
        compat (str or None): ``"official"`` builds the authors' code's variant of
            the graph blocks: the ``k + 1`` most similar window nodes, the node itself
            included, minus the most similar (``TopK(k, skip_first=True)``), and the
            edge attribute :math:`(\Delta u + \Delta v)^2` through a learned
            projection (``use_edge_attr`` of the released models).
        rate_lambdas (sequence of float, optional): variable rate (:mod:`~gnn_lic.models.variable_rate`).

    Images of any size are padded (replicate, bottom/right) to :attr:`pad_multiple` = 64.
    """

    pad_multiple = 64
    #: GABIC's band temporaries are tens of MiB, above glibc's adaptive mmap ceiling (32 MiB); a larger
    #: threshold is faster still but holds more (the README's memory sections)
    partial_mmap_threshold = 64 << 20

    def __init__(
        self,
        N: int = 192,
        M: int = 320,
        num_slices: int = 10,
        max_support_slices: int = 5,
        knn: Optional[int] = 9,
        heads: int = 8,
        windows: Sequence[int] = (8, 4),
        cc_hidden: Sequence[int] = (224, 176, 128, 64),
        hyper_widths: Optional[Sequence[int]] = None,
        impl: str = "sparse",
        compat: Optional[str] = None,
        rate_lambdas: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        if compat not in (None, "official"):
            raise ValueError(f"compat must be None or 'official', got {compat!r}")
        if compat == "official" and knn is None:
            raise ValueError("compat='official' needs k-NN graphs (knn >= 1)")
        self.N, self.M = N, M
        self.compat = compat
        official = compat == "official"

        def block(ch: int, window: int, _stage: str) -> GraphWindowBlock:
            selector = TopK(knn, skip_first=True) if official else None
            return GraphWindowBlock(ch, window=window, knn=knn, heads=heads, impl=impl, selector=selector,
                                    edge_attr=official)

        self.g_a, self.g_s = window_codec_transforms(N, M, block, windows, banded=True)
        self.latent_codec = ChannelSliceLatentCodec(
            M=M, N=N, num_slices=num_slices, max_support_slices=max_support_slices, cc_hidden=cc_hidden,
            hyper_widths=hyper_widths,
        )
        self._init_rate(rate_lambdas, M)

    def map_bytes_per_pixel(self) -> float:
        """The whole maps at 1/4 resolution (the layers above run in bands): about 5 maps of ``N`` channels."""
        return 5 * self.N * 4 / 16

    def memory_estimate(self, height: int, width: int) -> int:
        """:meth:`~gnn_lic.models.base.PaddedCompressionModel.memory_estimate` plus one band of the layers
        above 1/4 resolution (at most :data:`STAGE_PIXELS` image pixels): about 1.5 maps of ``N`` channels
        at 1/2 resolution per pixel of the band. The counts of maps are fitted to measured peaks (the
        README's memory sections)."""
        band = min(height * width, STAGE_PIXELS)
        return super().memory_estimate(height, width) + int(band * 1.5 * self.N * 4 / 4)


#: per-size defaults. "paper": GABIC/WACNN (N=192, M=320, 10 slices, support 5);
#: "small": sized to train on a laptop CPU;
#: "tiny": the smallest configuration that runs every code path (tests).
GABIC_PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": dict(),
    "small": dict(N=64, M=128, num_slices=4, max_support_slices=2, cc_hidden=(96, 80, 64, 48)),
    "tiny": dict(N=16, M=32, num_slices=4, max_support_slices=2, cc_hidden=(16, 16, 16, 8)),
}


def build_gabic(size: str = "paper", **kwargs) -> GABIC:
    """``GABIC(**{**GABIC_PRESETS[size], **kwargs})``."""
    if size not in GABIC_PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(GABIC_PRESETS)}")
    return GABIC(**{**GABIC_PRESETS[size], **kwargs})


@register_model("gabic")
def build_gabic_model(size: str = "paper", **kwargs) -> GABIC:
    """GABIC (k-NN graph window blocks, k = 9) at ``size``."""
    return build_gabic(size, **kwargs)


@register_model("gabic-keepall")
def build_gabic_keepall(size: str = "paper", **kwargs) -> GABIC:
    """The GABIC code with keep-all windows (``knn=None``, GABIC eqs. 8-12) at ``size``."""
    if kwargs.get("knn") is not None:
        raise ValueError("model 'gabic-keepall' fixes knn=None; use 'gabic' for k-NN graphs")
    kwargs.pop("knn", None)
    return build_gabic(size, knn=None, **kwargs)
