"""GELU (exact erf form), fast on channels-last maps; under autograd its output is marked as made again from
its input (:func:`gnn_lic.nn.recompute.mark`), so a layer after it keeps the GELU's input, which the GELU's
own gradient keeps anyway, instead of a second map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnn_lic.nn.banded import memory_layout
from gnn_lic.nn.recompute import mark

__all__ = ["gelu", "GELU"]


def gelu(x: Tensor, inplace: bool = False) -> Tensor:
    """``F.gelu`` (exact erf form). A channels-last map goes through its NHWC view, which is contiguous:
    PyTorch's CPU GELU takes a slow scalar path on channels-last memory (several times slower on inputs
    of magnitude a few units). The same function; the last bit may differ from ``F.gelu`` on that layout.
    ``inplace`` (no autograd) overwrites ``x``."""
    if inplace:
        return _through_nhwc(torch.ops.aten.gelu_, x)
    return mark(_gelu(x), _gelu, x)


def _through_nhwc(fn, x: Tensor) -> Tensor:
    """``fn`` (elementwise) of ``x``, on its NHWC view where ``x`` is a channels-last map."""
    if memory_layout(x) == torch.channels_last:
        return fn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    return fn(x)


def _gelu(x: Tensor) -> Tensor:
    return _through_nhwc(F.gelu, x)


class GELU(nn.GELU):
    """``nn.GELU`` computed by :func:`gelu` (fast on channels-last maps); no parameters, the same state dict."""

    def forward(self, x: Tensor) -> Tensor:
        return gelu(x)
