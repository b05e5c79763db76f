"""The analysis and synthesis transforms of GLIC (GLIC Fig. 2(a)): four resolutions of resampling
and blocks, with the optional wavelet chain; the blocks come from a :data:`StageFactory`
(:func:`gnn_lic.models.glic.glic_stages`)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from gnn_lic.models.layers import SubpelConv3x3, conv3x3
from gnn_lic.models.wavelet import WLS, iWLS
from gnn_lic.nn.banded import banded_stage, channels_last_call, conv_radius, image_rows
from gnn_lic.nn.winograd43 import TILE_ROWS

__all__ = ["StageFactory", "GLICAnalysis", "GLICSynthesis"]

#: most image pixels of one band of the banded layers (around the 1/2-resolution blocks) of either transform
STAGE_PIXELS = 1 << 19

#: ``stage(level, channels)``: the blocks of one resolution, ``level`` 1 (1/2), 2 (1/4) or 3 (1/8)
StageFactory = Callable[[int, int], nn.Module]


class _StagedTransform(nn.Module):
    """Four stages of ``resample[i]`` then ``blocks[i]``, plus the optional wavelet chain ``wavelet``."""

    #: checkpoints written before the wavelet chain got its name called it ``aux``
    renamed_keys = {"aux.": "wavelet."}

    resample: nn.ModuleList
    blocks: nn.ModuleList
    wavelet: Optional[nn.ModuleList]

    def _stages(self, x: Tensor, w: Optional[Tensor], stages: Sequence[int]) -> Tuple[Tensor, Optional[Tensor]]:
        """Stages ``stages`` from the main branch ``x`` and the wavelet chain's ``w``; both after them."""
        for i in stages:
            x = self.resample[i](x)  # the map of the previous resolution is not held during the blocks
            x = self.blocks[i](x)
            if self.wavelet is not None:
                w = self.wavelet[i](w)
                x = x + w
        return x, w

    def forward(self, x: Tensor) -> Tensor:
        """:meth:`run` on channels-last memory (:func:`~gnn_lic.nn.banded.channels_last_call`)."""
        return channels_last_call(self.run, x)

    def run(self, x: Tensor) -> Tensor:
        return self._stages(x, x, range(4))[0]


class GLICAnalysis(_StagedTransform):
    """GLIC analysis transform ``g_a``: ``(B, 3, H, W) -> (B, C4, H/16, W/16)``.

    Stage ``i`` = stride-2 conv, then ``stage(i + 1, C_{i+1})`` (nothing at 1/16), then
    (with ``wavelet``) the output of a chain of :class:`~gnn_lic.models.wavelet.WLS` fed
    from the image is added. The wavelet chain never reads the main branch.

    Without autograd the layers before the first graph block (full and 1/2 resolution,
    all local) run band by band of image rows (:func:`~gnn_lic.nn.banded.banded_stage`):
    no map of the 1/2 resolution is ever whole (the bands are a function of the image size).
    """

    def __init__(self, channels: Sequence[int], stage: StageFactory, wavelet: bool):
        super().__init__()
        c = [3, *channels]
        self.down = nn.ModuleList(conv3x3(c[i], c[i + 1], stride=2) for i in range(4))
        self.blocks = nn.ModuleList([stage(1, c[1]), stage(2, c[2]), stage(3, c[3]), nn.Identity()])
        self.wavelet = nn.ModuleList(WLS(c[i], c[i + 1]) for i in range(4)) if wavelet else None

    @property
    def resample(self) -> nn.ModuleList:
        return self.down

    def _head(self, x: Tensor) -> Tensor:
        """Input of the 1/4 blocks: ``down_1(blocks_0(down_0(x)) + wavelet_0(x))``."""
        return self.down[1](self._stages(x, x, range(1))[0])

    def _wavelet_quarter(self, x: Tensor) -> Tensor:
        return self.wavelet[1](self.wavelet[0](x))

    def run(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().run(x)
        # image rows a 1/4 row reads: 3x3 stride-2 convolutions around the blocks at 1/2
        halo = 2 * (1 + conv_radius(self.blocks[0])) + 1
        rows = image_rows(STAGE_PIXELS, x.shape[-1])
        h = banded_stage([x], self._head, down=4, halo=halo, max_rows=rows)
        h = self.blocks[1](h)
        w = None
        if self.wavelet is not None:
            w = banded_stage([x], self._wavelet_quarter, down=4, max_rows=rows)
            h = h + w
        return self._stages(h, w, range(2, 4))[0]


class GLICSynthesis(_StagedTransform):
    """GLIC synthesis transform ``g_s``: ``(B, C4, h, w) -> (B, 3, 16h, 16w)``, mirror of :class:`GLICAnalysis`.

    Up-sampling is CompressAI's ``subpel_conv3x3`` (3x3 conv + PixelShuffle(2), as
    :class:`~gnn_lic.models.layers.SubpelConv3x3`: Winograd's F(4x4, 3x3) without autograd);
    the optional :class:`~gnn_lic.models.wavelet.iWLS` chain is fed from ``y_hat``.
    Without autograd the layers after the last graph block (1/2 and full resolution) run
    band by band, as in :class:`GLICAnalysis`.
    """

    def __init__(self, channels: Sequence[int], stage: StageFactory, wavelet: bool):
        super().__init__()
        c = [3, *channels][::-1]  # C4, C3, C2, C1, 3
        self.up = nn.ModuleList(SubpelConv3x3(c[i], c[i + 1]) for i in range(4))
        self.blocks = nn.ModuleList([stage(3, c[1]), stage(2, c[2]), stage(1, c[3]), nn.Identity()])
        self.wavelet = nn.ModuleList(iWLS(c[i], c[i + 1]) for i in range(4)) if wavelet else None

    @property
    def resample(self) -> nn.ModuleList:
        return self.up

    def _tail(self, x: Tensor, w: Optional[Tensor] = None) -> Tensor:
        """The image from the output of the 1/4 blocks ``x`` (and the wavelet chain's ``w``)."""
        return self._stages(x, w, range(2, 4))[0]

    def run(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().run(x)
        x, w = self._stages(x, x, range(2))
        # 1/4 rows an image row reads: the sub-pixel convolutions around the blocks at 1/2
        halo = 2 + conv_radius(self.blocks[2])
        inputs = [x] if self.wavelet is None else [x, w]
        # bands start on the tile grid of up[2]'s Winograd products (at 1/4)
        return banded_stage(inputs, self._tail, up=4, halo=halo, max_rows=image_rows(STAGE_PIXELS, x.shape[-1], 4),
                            align=TILE_ROWS)
