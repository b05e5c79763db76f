r"""WACNN: the window-attention CNN codec of Zou et al. (CVPR 2022), GABIC's baseline.

Zou, Song and Zhang, *The Devil Is in the Details: Window-based Attention for Image
Compression*, CVPR 2022 (their "CNN-based model"; "Zou2022" in GABIC's Table 1 and
Fig. 4). GABIC (ICIP 2024) is this model with each window block replaced by a graph
window block, so the two share everything else here: the transforms' layout
(:func:`~gnn_lic.models.gabic.window_codec_transforms`, Zou et al., CVPR 2022) and the
channel-slice entropy model with LRP (:class:`~gnn_lic.models.channel_slice.ChannelSliceLatentCodec`).

.. code-block:: none

    x ─► conv s2 ─► GDN ─► conv s2 ─► GDN ─► WAB(N, 8/4) ─► conv s2 ─► GDN ─► conv s2 ─► WAB(M, 4/2) ─► y
         3→N                N→N              (1/4)            N→N              N→M        (1/16)

    y ─► channel-slice latent codec (h_a, EB, h_mean_s | h_scale_s, slice nets, LRP) ─► y_hat

    y_hat ─► WAB(M, 4/2) ─► deconv ─► IGDN ─► deconv ─► IGDN ─► WAB(N, 8/4) ─► deconv ─► IGDN ─► deconv ─► x_hat

``WAB(C, M/s)`` is a :class:`~gnn_lic.nn.WindowAttentionBlock` on ``C`` channels with
window ``M`` and cyclic shift ``s``: :math:`a(x) \odot \sigma(b(x)) + x`, where ``b``
starts with a shifted-window attention layer (Swin's SW-MSA with its learned
``(2M-1)^2 x heads`` relative-position bias). As in the authors' released code, that
layer is ``x + SW-MSA(x)`` with no LayerNorm or MLP; ``swin_pair=True`` puts a Swin
W-MSA + SW-MSA block pair there instead (see :mod:`gnn_lic.nn.window_attention` for
what was followed and from where).

Registered name: ``wacnn`` (sizes ``tiny``, ``small``, ``paper``; the size presets are
GABIC's, :data:`~gnn_lic.models.gabic.GABIC_PRESETS`).
"""

from __future__ import annotations

from typing import Optional, Sequence

from gnn_lic.models.base import PaddedCompressionModel
from gnn_lic.models.channel_slice import ChannelSliceLatentCodec
from gnn_lic.models.gabic import GABIC_PRESETS, window_codec_transforms
from gnn_lic.models.registry import register_model
from gnn_lic.nn.window_attention import WindowAttentionBlock

__all__ = ["WACNN", "build_wacnn"]


class WACNN(PaddedCompressionModel):
    r"""Zou et al.'s window-attention CNN codec (CVPR 2022).

    Args:
        N (int): channels of the transforms and of ``z`` (192).
        M (int): latent channels (320).
        num_slices (int): channel slices of the entropy model (10).
        max_support_slices (int): how many of the first decoded slices condition the later ones (5).
        heads (int): attention heads (8).
        windows (pair of int): window sides at 1/4 and 1/16 resolution ((8, 4)).
        shifts (pair of int): cyclic shifts at 1/4 and 1/16 resolution ((4, 2)).
        swin_pair (bool): a Swin W-MSA + SW-MSA block pair instead of the single
            ``x + SW-MSA(x)`` layer of the authors' code (False).
        mlp_ratio (float): MLP width of the Swin pair (4); unused otherwise.
        cc_hidden (sequence of int): hidden widths of the slice networks ((224, 176, 128, 64)).
        rate_lambdas (sequence of float, optional): variable rate (:mod:`~gnn_lic.models.variable_rate`).

    Images of any size are padded (replicate, bottom/right) to :attr:`pad_multiple` = 64.
    """

    pad_multiple = 64

    def __init__(
        self,
        N: int = 192,
        M: int = 320,
        num_slices: int = 10,
        max_support_slices: int = 5,
        heads: int = 8,
        windows: Sequence[int] = (8, 4),
        shifts: Sequence[int] = (4, 2),
        swin_pair: bool = False,
        mlp_ratio: float = 4.0,
        cc_hidden: Sequence[int] = (224, 176, 128, 64),
        rate_lambdas: Optional[Sequence[float]] = None,
    ):
        super().__init__()
        self.N, self.M = N, M
        shift = {"high": shifts[0], "low": shifts[1]}

        def block(ch: int, window: int, stage: str) -> WindowAttentionBlock:
            return WindowAttentionBlock(ch, window=window, shift=shift[stage], heads=heads, swin_pair=swin_pair,
                                        mlp_ratio=mlp_ratio)

        self.g_a, self.g_s = window_codec_transforms(N, M, block, windows)
        self.latent_codec = ChannelSliceLatentCodec(
            M=M, N=N, num_slices=num_slices, max_support_slices=max_support_slices, cc_hidden=cc_hidden
        )
        self._init_rate(rate_lambdas, M)


@register_model("wacnn")
def build_wacnn(size: str = "paper", **kwargs) -> WACNN:
    """WACNN (shifted-window attention blocks) at ``size``; kwargs override the size preset."""
    if size not in GABIC_PRESETS:
        raise ValueError(f"unknown size {size!r}; choose one of {sorted(GABIC_PRESETS)}")
    return WACNN(**{**GABIC_PRESETS[size], **kwargs})
