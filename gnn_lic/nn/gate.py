r"""The GELU gate of GLIC's feed-forward, with its depthwise convolution, in one pass over the map (CPU).

:class:`~gnn_lic.nn.blocks.GatedFFN` computes

.. math:: [a \,|\, b] = D(h), \qquad g = \mathrm{GELU}(a) \odot b,
    \qquad \mathrm{GELU}(a) = \tfrac12\, a\, \big(1 + \mathrm{erf}(a / \sqrt 2)\big),

:math:`D` a 3x3 depthwise convolution with zero padding 1 and no bias over the ``2E`` channels of
``h`` (or the identity). As separate operations that is up to five passes over map-sized memory
(the convolution's output, a dense copy of ``a``, GELU, the product). :func:`depthwise_gelu_gate`
computes each output pixel's ``E`` gated values from the 3x3 neighbourhood of ``h``, and
:func:`gelu_gate` from the pixel itself, in one compiled loop (numba) over the channels of a
channels-last map, contiguous, so it vectorises. Under autograd (training) :class:`DepthwiseGeluGate`
runs the same pass forward and keeps only ``h`` for its backward.

:math:`\mathrm{erf}` is a rational function of :math:`z^2` (:func:`erf`), vectorisable where a
call to the C library's ``erf`` is not: :math:`\mathrm{erf}(z) \approx z\, P(z^2) / Q(z^2)` with
:math:`P` of degree 6 and :math:`Q` of degree 4, :math:`z` clamped to :math:`[-4, 4]`
(:math:`1 - \mathrm{erf}(4) < 2 \cdot 10^{-8}`, below float32's resolution at 1) and the result to
:math:`[-1, 1]`. The coefficients were fitted here to :math:`\mathrm{erf}(z)/z` on :math:`[0, 4]` by
weighted least squares with Lawson's reweighting towards the smallest largest relative error;
evaluated in float32 the result is within :data:`ERF_TOLERANCE` of :math:`\mathrm{erf}` everywhere
(the tests check it).

The values are the separate operations' up to float rounding (another order of the nine taps'
sum, the rational :math:`\mathrm{erf}`): for transforms whose outputs are floats anyway (the
models' analysis and synthesis). Every pixel goes through the same operations whatever the rows
or the threads of the call, so a band of rows with its halo gives the whole map's bits.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from numba import prange
from torch import Tensor

from gnn_lic import compiled
from gnn_lic.nn.banded import memory_layout

__all__ = ["DepthwiseGeluGate", "depthwise_gelu_gate", "gelu_gate", "gate_fits", "gate_grad", "gate_pays", "erf",
           "ERF_TOLERANCE"]

#: largest absolute error of :func:`erf` in float32 against the exact function
ERF_TOLERANCE = 5e-7

_P = np.array([1.1283790940167437e+00, 2.0710196652359977e-01, 5.1521766789426472e-02, 3.9896277176865984e-03,
               1.4726790372386890e-04, -1.9423387527125584e-06, 1.9113118471121563e-08], dtype=np.float32)
_Q = np.array([1.0, 5.168705882590573e-01, 1.1796110108472722e-01, 1.495609360740011e-02,
               1.02089768511381e-03], dtype=np.float32)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (np.float32(c) for c in _P)
_Q1, _Q2, _Q3, _Q4 = (np.float32(c) for c in _Q[1:])
_ONE, _HALF, _LIMIT, _RSQRT2 = np.float32(1), np.float32(0.5), np.float32(4), np.float32(1 / math.sqrt(2))
# the clamp and the division vectorise only where NaNs and infinities need no care (a NaN input still gives NaN:
# it multiplies the result)
_FAST = {"nnan", "ninf", "nsz"}


@compiled.jit(inline="always", fastmath=_FAST)
def _erf(z):  # pragma: no cover - compiled
    z = min(max(z, -_LIMIT), _LIMIT)
    t = z * z
    p = (((((_P6 * t + _P5) * t + _P4) * t + _P3) * t + _P2) * t + _P1) * t + _P0
    q = (((_Q4 * t + _Q3) * t + _Q2) * t + _Q1) * t + _ONE
    return min(max(z * p / q, -_ONE), _ONE)  # within [-1, 1] as erf


@compiled.jit(parallel=True, fastmath=_FAST)
def _erf_array(z, out):  # pragma: no cover - compiled
    for i in prange(z.shape[0]):
        out[i] = _erf(z[i])


@compiled.jit(parallel=True, fastmath=_FAST)
def _dw_gate(h, w, out):  # pragma: no cover - compiled
    # h (B, H, W, 2E) channels-last, w (9, 2E) taps row-major, out (B, H, W, E); the nine taps summed in order,
    # a zero vector in place of a pixel past the border
    B, H, W, C2 = h.shape
    E = C2 // 2
    zero = np.zeros(C2, dtype=h.dtype)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8]
    for r in prange(B * H):
        b, y = r // H, r % H
        up, down = y > 0, y + 1 < H
        for x in range(W):
            left, right = x > 0, x + 1 < W
            s0 = h[b, y - 1, x - 1] if up and left else zero
            s1 = h[b, y - 1, x] if up else zero
            s2 = h[b, y - 1, x + 1] if up and right else zero
            s3 = h[b, y, x - 1] if left else zero
            s4 = h[b, y, x]
            s5 = h[b, y, x + 1] if right else zero
            s6 = h[b, y + 1, x - 1] if down and left else zero
            s7 = h[b, y + 1, x] if down else zero
            s8 = h[b, y + 1, x + 1] if down and right else zero
            dst = out[b, y, x]
            for c in range(E):
                a = (s0[c] * w0[c] + s1[c] * w1[c] + s2[c] * w2[c] + s3[c] * w3[c] + s4[c] * w4[c]
                     + s5[c] * w5[c] + s6[c] * w6[c] + s7[c] * w7[c] + s8[c] * w8[c])
                d = E + c
                g = (s0[d] * w0[d] + s1[d] * w1[d] + s2[d] * w2[d] + s3[d] * w3[d] + s4[d] * w4[d]
                     + s5[d] * w5[d] + s6[d] * w6[d] + s7[d] * w7[d] + s8[d] * w8[d])
                dst[c] = _HALF * a * (_ONE + _erf(a * _RSQRT2)) * g


@compiled.jit(parallel=True, fastmath=_FAST)
def _gate(h, out):  # pragma: no cover - compiled
    # h (pixels, 2E), out (pixels, E)
    E = h.shape[1] // 2
    for i in prange(h.shape[0]):
        src, dst = h[i], out[i]
        for c in range(E):
            a = src[c]
            dst[c] = _HALF * a * (_ONE + _erf(a * _RSQRT2)) * src[E + c]


def erf(z: Tensor) -> Tensor:
    """The rational :math:`\\mathrm{erf}` of :func:`depthwise_gelu_gate` on a float32 CPU tensor (module docstring)."""
    flat = z.detach().to(torch.float32).contiguous().view(-1)
    out = torch.empty_like(flat)
    compiled.parallel(_erf_array, flat.numpy(), out.numpy())
    return out.view(z.shape)


def gate_fits(h: Tensor, weight: Optional[Tensor] = None) -> bool:
    """Whether the compiled pass can take ``h`` (and ``weight``: ``(2E, 1, 3, 3)`` float32 depthwise weights, or
    None for :func:`gelu_gate`): a float32 channels-last CPU map of an even number of channels, compiled loops on."""
    return (compiled.enabled() and h.device.type == "cpu" and h.dim() == 4 and h.dtype == torch.float32
            and h.shape[1] % 2 == 0 and h.is_contiguous(memory_format=torch.channels_last)
            and (weight is None or (weight.dtype == torch.float32 and tuple(weight.shape) == (h.shape[1], 1, 3, 3))))


def gate_pays(h: Tensor, weight: Optional[Tensor] = None) -> bool:
    """Whether :func:`depthwise_gelu_gate` (``weight`` given) or :func:`gelu_gate` (``weight`` None) may take
    ``h``: :func:`gate_fits` and no autograd."""
    return not torch.is_grad_enabled() and gate_fits(h, weight)


def depthwise_gelu_gate(h: Tensor, weight: Tensor) -> Tensor:
    r""":math:`\mathrm{GELU}(a) \odot b` of :math:`[a \,|\, b]` = ``F.conv2d(h, weight, padding=1, groups=2E)``
    for a ``(B, 2E, H, W)`` map where :func:`gate_pays`; the ``(B, E, H, W)`` result is channels-last."""
    B, C2, H, W = h.shape
    out = torch.empty((B, H, W, C2 // 2), dtype=h.dtype)
    taps = weight.detach().reshape(C2, 9).t().contiguous()
    compiled.parallel(_dw_gate, h.detach().permute(0, 2, 3, 1).numpy(), taps.numpy(), out.numpy())
    return out.permute(0, 3, 1, 2)


def gelu_gate(h: Tensor) -> Tensor:
    r""":math:`\mathrm{GELU}(a) \odot b` of :math:`[a \,|\, b]` = ``h``, a ``(B, 2E, H, W)`` map where
    :func:`gate_pays`, in one pass; the ``(B, E, H, W)`` result is channels-last."""
    B, C2, H, W = h.shape
    out = torch.empty((B, H, W, C2 // 2), dtype=h.dtype)
    compiled.parallel(_gate, h.permute(0, 2, 3, 1).reshape(-1, C2).numpy(), out.view(-1, C2 // 2).numpy())
    return out.permute(0, 3, 1, 2)


def gate_grad(grad: Tensor, h: Tensor, gelu_a: Tensor) -> Tensor:
    r"""The gradient of :math:`\mathrm{GELU}(a) \odot b` for ``h = [a | b]`` (split over channels) given the
    output's ``grad`` and ``gelu_a`` = :math:`\mathrm{GELU}(a)`: both halves,
    :math:`\partial a = g \odot b \odot \mathrm{GELU}'(a)` and :math:`\partial b = g \odot \mathrm{GELU}(a)`,
    written into one map in the layout of ``h``, instead of two maps and their concatenation."""
    # channels as the last dimension (views); the halves are then slices of it
    hv = h.movedim(1, -1)
    half = hv.shape[-1] // 2
    out = torch.empty_like(h)
    ov = out.movedim(1, -1)
    g = grad.contiguous(memory_format=memory_layout(h)).movedim(1, -1)
    torch.mul(g, gelu_a.movedim(1, -1), out=ov[..., half:])
    torch.ops.aten.gelu_backward.grad_input(g * hv[..., half:], hv[..., :half], grad_input=ov[..., :half])
    return out


class DepthwiseGeluGate(torch.autograd.Function):
    r""":func:`depthwise_gelu_gate` under autograd (training), for maps where :func:`gate_fits`.

    The forward is the compiled pass and keeps ``h`` alone for the backward (not :math:`D(h)` nor
    :math:`\mathrm{GELU}(a)`, three map-sized tensors fewer per layer); the backward computes
    :math:`[a \,|\, b] = D(h)` again, the gate's gradients
    :math:`\partial a = g \odot b \odot \mathrm{GELU}'(a)`, :math:`\partial b = g \odot \mathrm{GELU}(a)`
    (PyTorch's exact GELU), and those of the depthwise convolution by ``convolution_backward``."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight)
        return depthwise_gelu_gate(h, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        C2 = h.shape[1]
        d = torch.nn.functional.conv2d(h, weight, padding=1, groups=C2)
        # GELU of the channels-last view's first half (contiguous in its last dimension), back as (B, E, H, W)
        gelu_a = torch.nn.functional.gelu(d.movedim(1, -1)[..., :C2 // 2]).movedim(-1, 1)
        grad_d = gate_grad(grad, d, gelu_a)
        del d, gelu_a
        grad_h, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_d, h, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], C2,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return grad_h, grad_w
