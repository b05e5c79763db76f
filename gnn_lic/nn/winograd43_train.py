r"""Training (autograd) path of the 5x5 stride-2 convolutions and transposed convolutions by Winograd's
:math:`F(4 \times 4, 3 \times 3)` (:mod:`gnn_lic.nn.winograd43`).

Both layers are a 3x3 convolution :math:`Y = A^\top [\sum_c (G w G^\top) \odot (B^\top d B)] A` per 4x4 output
tile (over the input's polyphase components, or into the output's phases), so all three passes run on the
same transformed tiles:

* forward: :func:`~gnn_lic.nn.winograd43.winograd43`;
* input gradient: a strided convolution's is the transposed convolution of its output gradient by the same
  weights, and a transposed convolution's the strided convolution, again :func:`~gnn_lic.nn.winograd43.winograd43`;
* weight gradient: :math:`Y` is linear in :math:`\tilde w = G w G^\top`, so
  :math:`\partial L / \partial \tilde w = \sum_{\text{tiles}} (B^\top d B) \odot (A\, \partial_Y L\, A^\top)`
  (36 matrix products ``(in, tiles) x (tiles, out)``, 4 times fewer multiplications than the direct sum) and
  :math:`\partial L / \partial w = G^\top (\partial L / \partial \tilde w)\, G`; the 3x3 weights' gradient then
  goes back to the 5x5 kernel through the (linear) polyphase or phase arrangement.

The values are the layers' and their gradients' up to float rounding.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from numba import prange
from torch import Tensor

from gnn_lic import compiled
from gnn_lic.nn import winograd43 as w43
from gnn_lic.nn.winograd43 import (_G, _F2, _F4, _F8, _chunks, _gather, _input_tiles, conv_tiles43, deconv_tiles43,
                                   phases_first, polyphase_weight, transposed_phase_weight, winograd43)

__all__ = ["winograd43_trains", "stride2_conv43", "stride2_conv_transpose43", "weight_grad43", "TRAIN_MIN_PIXELS"]

#: fewest positions per image of the 3x3 convolution's map (the output of a strided convolution, the input of a
#: transposed one) for which the training path (:func:`winograd43_trains`) is used: on smaller maps the
#: transforms, made afresh in every step, cost what the products save
TRAIN_MIN_PIXELS = 64 * 64


@compiled.jit
def _a(g0, g1, g2, g3, out):  # pragma: no cover - compiled
    """``out[k] = (A g)_k`` for vectors ``g0 .. g3`` over the channels (:math:`A` is 6 x 4)."""
    for c in range(out.shape[1]):
        s02, s13 = g0[c] + g2[c], g1[c] + g3[c]
        t02, t13 = g0[c] + _F4 * g2[c], _F2 * g1[c] + _F8 * g3[c]
        out[0, c] = g0[c]
        out[1, c] = s02 + s13
        out[2, c] = s02 - s13
        out[3, c] = t02 + t13
        out[4, c] = t02 - t13
        out[5, c] = g3[c]


@compiled.jit(parallel=True)
def _grad_tiles(g, th, tw, r0, u):  # pragma: no cover - compiled
    # g (B, H, W, O) channels-last gradient of the 3x3 convolution's output; u (36, rows, tw, O) = A g A^T of its
    # 4x4 tiles of tile rows r0 .. r0 + rows (r = b th + i), zeros past the map
    O = g.shape[3]
    for rr in prange(u.shape[1]):
        r = r0 + rr
        b, i = r // th, r % th
        d = np.empty((4, 4, O), dtype=g.dtype)
        tmp = np.empty((6, 4, O), dtype=g.dtype)
        for j in range(tw):
            for p in range(4):
                for q in range(4):
                    _gather(g, b, 4 * i + p, 4 * j + q, d[p, q])
            for q in range(4):  # A g, column q
                _a(d[0, q], d[1, q], d[2, q], d[3, q], tmp[:, q])
            for k in range(6):  # ... A^T
                _a(tmp[k, 0], tmp[k, 1], tmp[k, 2], tmp[k, 3], u[6 * k : 6 * k + 6, rr, j])


def weight_grad43(x: Tensor, grad: Tensor, polyphase: bool) -> Tensor:
    r"""The gradient of the 3x3 convolution's weights ``(O, K, 3, 3)`` (the layout :func:`filter_tiles43` takes)
    given its input ``x`` (as :func:`~gnn_lic.nn.winograd43.winograd43` takes it: ``polyphase`` for a 5x5 stride-2
    convolution's input) and the gradient ``grad`` ``(B, O, h, w)`` of its output (before any pixel shuffle)."""
    B, C, H, W = x.shape
    gh, gw = grad.shape[-2:]
    th, tw = -(-gh // 4), -(-gw // 4)
    K, O = 4 * C if polyphase else C, grad.shape[1]
    xl = x.detach().contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    gl = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    m = torch.zeros((36, K, O), dtype=x.dtype)
    rows = max(1, w43.CHUNK_BYTES // (36 * tw * max(K, O) * x.element_size()))
    for r0, n, _ in _chunks(B, th, rows, False):
        v = torch.empty((36, n, tw, K), dtype=x.dtype)
        compiled.parallel(_input_tiles, xl.numpy(), polyphase, th, tw, r0, v.numpy())
        u = torch.empty((36, n, tw, O), dtype=x.dtype)
        compiled.parallel(_grad_tiles, gl.numpy(), th, tw, r0, u.numpy())
        m.baddbmm_(v.view(36, n * tw, K).transpose(1, 2), u.view(36, n * tw, O))
    gg = torch.kron(_G, _G).to(x.dtype)  # (36, 9): G w G^T by position
    return torch.mm(gg.t(), m.view(36, K * O)).view(3, 3, K, O).permute(3, 2, 0, 1)


def winograd43_trains(x: Tensor, in_channels: int, out_channels: int, transposed: bool) -> bool:
    """Whether a 5x5 stride-2 layer under autograd takes :func:`stride2_conv43` (``transposed``:
    :func:`stride2_conv_transpose43`): a float32 CPU map with compiled loops on, at least
    :data:`~gnn_lic.nn.winograd43.MIN_CHANNELS` input and output channels, and a 3x3 map of at least
    :data:`TRAIN_MIN_PIXELS` positions."""
    if not (compiled.enabled() and torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and x.dtype == torch.float32 and min(in_channels, out_channels) >= w43.MIN_CHANNELS):
        return False
    h, w = x.shape[-2:]
    return (h * w if transposed else ((h + 1) // 2) * ((w + 1) // 2)) >= TRAIN_MIN_PIXELS


def _kernel_grad(arrange, weight: Tensor, grad3: Tensor) -> Tensor:
    """The 5x5 kernel's gradient from the gradient of its 3x3 arrangement ``arrange(weight)`` (linear)."""
    with torch.enable_grad():
        w = weight.detach().requires_grad_()
        return torch.autograd.grad(arrange(w), w, grad3)[0]


class _Stride2Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        return winograd43(x, conv_tiles43(weight), bias, polyphase=True, shuffle=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # the transposed convolution of grad, its rows past x's cut off
            tiles, _ = deconv_tiles43(weight, None)
            gx = winograd43(grad, tiles, None, polyphase=False, shuffle=True)[..., : x.shape[-2], : x.shape[-1]]
        if ctx.needs_input_grad[1]:
            gw = _kernel_grad(polyphase_weight, weight, weight_grad43(x, grad, polyphase=True))
        if ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


class _Stride2ConvTranspose(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(x, weight)
        tiles, b = deconv_tiles43(weight, bias)
        return winograd43(x, tiles, b, polyphase=False, shuffle=True)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:  # the strided convolution of grad by the same (C, O) weights
            gx = winograd43(grad, conv_tiles43(weight), None, polyphase=True, shuffle=False)
        if ctx.needs_input_grad[1]:  # the gradient of the phase map, channels (p, q, o), as the tiles' weights
            B, O, H2, W2 = grad.shape  # rows of 2 O values (q, o) stay together: a fast copy of channels-last memory
            phases = grad.permute(0, 2, 3, 1).reshape(B, H2 // 2, 2, W2 // 2, 2, O).transpose(2, 3)
            phases = phases.reshape(B, H2 // 2, W2 // 2, 4 * O).permute(0, 3, 1, 2)
            gw = _kernel_grad(lambda w: phases_first(transposed_phase_weight(w)), weight,
                              weight_grad43(x, phases, polyphase=False))
        if ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb


def stride2_conv43(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``conv2d(x, weight, bias, stride=2, padding=2)`` (5x5) under autograd, every pass by Winograd (the
    module's docstring); the values are the convolution's and its gradients' up to float rounding. Result
    channels-last."""
    return _Stride2Conv.apply(x, weight, bias)


def stride2_conv_transpose43(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``conv_transpose2d(x, weight, bias, stride=2, padding=2, output_padding=1)`` (5x5) under autograd, as
    :func:`stride2_conv43`."""
    return _Stride2ConvTranspose.apply(x, weight, bias)
