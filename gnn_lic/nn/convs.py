r"""Convolutions with the parameters and forward of ``nn.Conv2d`` and faster gradients on a CPU.

**Depthwise.** For a depthwise ``k x k`` convolution with "same" padding ``p = k // 2``, the weight
gradient is

.. math:: \frac{\partial L}{\partial w_{c,i,j}} = \sum_{b,h,w} x_{b,c,h+i-p,w+j-p}\, g_{b,c,h,w}

(out-of-range ``x`` read as zero). oneDNN computes it slowly for the small channel counts of GLIC's
5x5 depthwise blocks. On a channels-last map the loop here runs over image rows, with the
``k^2 C`` accumulators of a row in the L1 cache and ``C`` contiguous channels in the innermost,
vectorised loop. Rows are summed in a fixed number of chunks, each into its own float64 partial,
and the partials in a fixed order, so the result does not depend on the thread count. The
input and bias gradients are PyTorch's.

**Pointwise.** A 1x1 convolution of a channels-last map is a matrix product of its
``(pixels, C_in)`` view: :math:`\partial x = g W`, :math:`\partial W = g^\top x`. On small maps
(the entropy networks at 1/16 resolution, the blocks at 1/8 on training crops) one GEMM each is
faster than oneDNN's backward; on larger maps oneDNN's is kept.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from numba import prange
from torch import Tensor, nn

from gnn_lic import compiled

__all__ = ["DepthwiseConv2d", "PointwiseConv2d", "depthwise_weight_grad"]

#: row chunks of the weight-gradient loop (a constant: the summation order must not follow the thread count)
_CHUNKS = 32
#: largest ``k^2 * C`` the compiled loop takes: its accumulators of a row stay in the L1 cache
MAX_ACCUMULATORS = 4096
#: largest map (batch x pixels) whose 1x1-convolution gradients come from matrix products
MAX_GEMM_PIXELS = 2048


@compiled.jit(fastmath=True)
def _row_taps(acc, x_row, g_row, shift, lo, hi):  # pragma: no cover - compiled
    for w in range(lo, hi):
        xv = x_row[w + shift]
        gv = g_row[w]
        for c in range(acc.shape[0]):
            acc[c] += xv[c] * gv[c]


@compiled.jit(parallel=True)
def _weight_grad_kernel(x, g, k, partial):  # pragma: no cover - compiled
    B, H, W, C = g.shape
    p = k // 2
    rows = B * H
    chunks = partial.shape[0]
    for t in prange(chunks):
        acc = np.zeros((k * k, C), dtype=x.dtype)
        total = partial[t]
        for r in range(t * rows // chunks, (t + 1) * rows // chunks):
            b = r // H
            h = r - b * H
            acc[:] = 0
            for i in range(k):
                hh = h + i - p
                if 0 <= hh < H:
                    for j in range(k):
                        _row_taps(acc[i * k + j], x[b, hh], g[b, h], j - p, max(0, p - j), min(W, W + p - j))
            for q in range(k * k):
                for c in range(C):
                    total[q, c] += acc[q, c]


def _rows(t: Tensor) -> Tensor:
    """``(B * H * W, C)`` pixel rows of a ``(B, C, H, W)`` map (a view of a channels-last one, else a copy)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def depthwise_weight_grad(x: Tensor, grad: Tensor, kernel_size: int) -> Tensor:
    """Weight gradient ``(C, 1, k, k)`` of a stride-1 depthwise convolution with padding ``k // 2``,
    from its input ``x`` and output gradient ``grad`` (CPU, ``(B, C, H, W)``, float32 or float64)."""
    C = x.shape[1]
    k = int(kernel_size)
    nhwc = [t.permute(0, 2, 3, 1).contiguous().numpy() for t in (x.detach(), grad.detach())]
    partial = np.zeros((_CHUNKS, k * k, C))
    compiled.parallel(_weight_grad_kernel, nhwc[0], nhwc[1], k, partial)
    return torch.from_numpy(partial.sum(0)).to(x.dtype).t().reshape(C, 1, k, k)


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return nn.functional.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        k, C = weight.shape[-1], weight.shape[0]
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [k // 2, k // 2], [1, 1], False,
                                                     [0, 0], C, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = depthwise_weight_grad(x, grad, k)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = _rows(grad).sum(0)
        return gx, gw, gb


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)`` (the same
    parameters and state dict). Under autograd on a CPU, for float32/float64 channels-last inputs with at
    most :data:`MAX_ACCUMULATORS` weights, the weight gradient comes from :func:`depthwise_weight_grad`;
    the forward is ``nn.Conv2d``'s in every case.

    Args:
        channels (int): input and output channels.
        kernel_size (int): odd kernel size ``k``.
        bias (bool): a bias per channel (default ``True``).
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True):
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=bias)

    def _compiled_backward(self, x: Tensor) -> bool:
        return (torch.is_grad_enabled() and self.weight.requires_grad and compiled.enabled()
                and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.dim() == 4
                and x.dtype == self.weight.dtype and self.weight.numel() <= MAX_ACCUMULATORS
                and x.is_contiguous(memory_format=torch.channels_last))

    def forward(self, x: Tensor) -> Tensor:
        if self._compiled_backward(x):
            return _DepthwiseConv.apply(x, self.weight, self.bias)
        return super().forward(x)


class _PointwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return nn.functional.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        B, _, H, W = x.shape
        w = weight.reshape(weight.shape[0], -1)
        g = _rows(grad)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = torch.mm(g, w).view(B, H, W, -1).permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            gw = torch.mm(g.t(), _rows(x)).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(0)
        return gx, gw, gb


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(in_channels, out_channels, 1)`` (the same parameters and state dict). Under autograd,
    for CPU maps of at most :data:`MAX_GEMM_PIXELS` pixels (all images of the batch), the gradients come
    from two matrix products of the maps' pixel rows (views of channels-last maps, small copies of
    others); the forward is ``nn.Conv2d``'s in every case.

    Args:
        in_channels (int), out_channels (int): channels.
        bias (bool): a bias per output channel (default ``True``).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def _gemm_backward(self, x: Tensor) -> bool:
        return (torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
                and x.shape[0] * x.shape[2] * x.shape[3] <= MAX_GEMM_PIXELS)

    def forward(self, x: Tensor) -> Tensor:
        if self._gemm_backward(x):
            return _PointwiseConv.apply(x, self.weight, self.bias)
        return super().forward(x)
