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
and :class:`GeluGate` run the same passes forward and keep only ``h``; their backward
(:func:`gelu_gate_grad`) is one pass too, computing :math:`a, b` again and

.. math:: \partial a = g \odot b \odot \mathrm{GELU}'(a), \qquad \partial b = g \odot \mathrm{GELU}(a),
    \qquad \mathrm{GELU}'(a) = \Phi(a) + a\, \varphi(a),

with :math:`\Phi(a) = \tfrac12 (1 + \mathrm{erf}(a/\sqrt2))` and the normal density :math:`\varphi`
as :math:`2^{-v}`, :math:`v = a^2 / (2 \ln 2)`: a polynomial for the fraction of :math:`v` and exact
powers of two for its integer part (the C library's ``exp`` would not vectorise either).

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

__all__ = ["DepthwiseGeluGate", "GeluGate", "depthwise_gelu_gate", "gelu_gate", "gelu_gate_grad", "gate_fits",
           "gate_pays", "erf", "exp2_neg", "ERF_TOLERANCE"]

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
# the normal density for GELU's derivative: 2^-f on [0, 1] by a polynomial of degree 6 (a least-squares fit in
# Chebyshev points, within 1e-8 relative; 2e-7 evaluated in float32), 2^-n as a product of its binary digits' powers
# (exact; a table lookup would not vectorise as well); |a| is clamped to 13, where the density (1e-37) is far below
# float32's resolution of GELU'(a)
_X0, _X1, _X2, _X3, _X4, _X5, _X6 = (np.float32(c) for c in (
    0.9999999967753697, -0.6931469986410774, 0.2402240283889675, -0.05549016281187108, 0.009579041700992382,
    -0.0012752586440670953, 0.00010935631078817292))
_D1, _D2, _D4, _D8, _D16, _D32, _D64 = (np.float32(2.0 ** -k) for k in (1, 2, 4, 8, 16, 32, 64))
_PDF_LIMIT, _HALF_LOG2E = np.float32(13), np.float32(0.5 / math.log(2))
_RSQRT_2PI = np.float32(1 / math.sqrt(2 * math.pi))


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


@compiled.jit(inline="always", fastmath=_FAST)
def exp2_neg(v):  # pragma: no cover - compiled
    """2^-v for float32 v in [0, 128), vectorisable: v = n + f, a polynomial of 2^-f times exact powers of two."""
    n = np.int32(v)
    f = v - np.float32(n)
    p = (((((_X6 * f + _X5) * f + _X4) * f + _X3) * f + _X2) * f + _X1) * f + _X0
    p = p * (_D1 if n & 1 else _ONE) * (_D2 if n & 2 else _ONE) * (_D4 if n & 4 else _ONE)
    p = p * (_D8 if n & 8 else _ONE) * (_D16 if n & 16 else _ONE) * (_D32 if n & 32 else _ONE)
    return p * (_D64 if n & 64 else _ONE)


@compiled.jit(inline="always", fastmath=_FAST)
def _normal_pdf(a):  # pragma: no cover - compiled
    # exp(-a²/2) / sqrt(2 pi) = 2^-v / sqrt(2 pi), v = a²/2 log2(e) in [0, 122]
    a = min(max(a, -_PDF_LIMIT), _PDF_LIMIT)
    return _RSQRT_2PI * exp2_neg(_HALF_LOG2E * (a * a))


@compiled.jit(inline="always", fastmath=_FAST)
def _gate_grads(a, v, g):  # pragma: no cover - compiled
    # the gradients of GELU(a) * v for the output's gradient g: (g v GELU'(a), g GELU(a))
    cdf = _HALF * (_ONE + _erf(a * _RSQRT2))
    return g * v * (cdf + a * _normal_pdf(a)), g * (a * cdf)


@compiled.jit(inline="always")
def _window(h, b, y, x, zero):  # pragma: no cover - compiled
    # the 3x3 neighbourhood of pixel (y, x) of image b of a channels-last map, row-major, zero past the borders
    H, W = h.shape[1], h.shape[2]
    up, down, left, right = y > 0, y + 1 < H, x > 0, x + 1 < W
    return (h[b, y - 1, x - 1] if up and left else zero, h[b, y - 1, x] if up else zero,
            h[b, y - 1, x + 1] if up and right else zero, h[b, y, x - 1] if left else zero, h[b, y, x],
            h[b, y, x + 1] if right else zero, h[b, y + 1, x - 1] if down and left else zero,
            h[b, y + 1, x] if down else zero, h[b, y + 1, x + 1] if down and right else zero)


@compiled.jit(inline="always", fastmath=_FAST)
def _taps(s, w, c):  # pragma: no cover - compiled
    # channel c of the depthwise convolution at a pixel: the nine taps summed in order
    return (s[0][c] * w[0][c] + s[1][c] * w[1][c] + s[2][c] * w[2][c] + s[3][c] * w[3][c] + s[4][c] * w[4][c]
            + s[5][c] * w[5][c] + s[6][c] * w[6][c] + s[7][c] * w[7][c] + s[8][c] * w[8][c])


@compiled.jit(parallel=True, fastmath=_FAST)
def _dw_gate(h, w, out):  # pragma: no cover - compiled
    # h (B, H, W, 2E) channels-last, w (9, 2E) taps row-major, out (B, H, W, E)
    B, H, W, C2 = h.shape
    E = C2 // 2
    zero = np.zeros(C2, dtype=h.dtype)
    taps = (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8])
    for r in prange(B * H):
        b, y = r // H, r % H
        for x in range(W):
            s = _window(h, b, y, x, zero)
            dst = out[b, y, x]
            for c in range(E):
                a = _taps(s, taps, c)
                dst[c] = _HALF * a * (_ONE + _erf(a * _RSQRT2)) * _taps(s, taps, E + c)


@compiled.jit(parallel=True, fastmath=_FAST)
def _dw_gate_grad(h, w, grad, out):  # pragma: no cover - compiled
    # as _dw_gate; grad (B, H, W, E) the output's gradient, out (B, H, W, 2E) the gradient of D(h)
    B, H, W, C2 = h.shape
    E = C2 // 2
    zero = np.zeros(C2, dtype=h.dtype)
    taps = (w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], w[8])
    for r in prange(B * H):
        b, y = r // H, r % H
        for x in range(W):
            s = _window(h, b, y, x, zero)
            g, dst = grad[b, y, x], out[b, y, x]
            for c in range(E):
                dst[c], dst[E + c] = _gate_grads(_taps(s, taps, c), _taps(s, taps, E + c), g[c])


@compiled.jit(parallel=True, fastmath=_FAST)
def _gate(h, out):  # pragma: no cover - compiled
    # h (pixels, 2E), out (pixels, E)
    E = h.shape[1] // 2
    for i in prange(h.shape[0]):
        src, dst = h[i], out[i]
        for c in range(E):
            a = src[c]
            dst[c] = _HALF * a * (_ONE + _erf(a * _RSQRT2)) * src[E + c]


@compiled.jit(parallel=True, fastmath=_FAST)
def _gate_grad(h, grad, out):  # pragma: no cover - compiled
    # h (pixels, 2E), grad (pixels, E), out (pixels, 2E)
    E = h.shape[1] // 2
    for i in prange(h.shape[0]):
        src, g, dst = h[i], grad[i], out[i]
        for c in range(E):
            dst[c], dst[E + c] = _gate_grads(src[c], src[E + c], g[c])


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


def gelu_gate_grad(h: Tensor, grad: Tensor, weight: Optional[Tensor] = None) -> Tensor:
    r"""The gradient of the gate :math:`\mathrm{GELU}(a) \odot b` of :math:`[a \,|\, b]` =
    ``F.conv2d(h, weight, padding=1, groups=2E)`` (``weight`` given) or ``h`` (None), for the ``(B, E, H, W)``
    output gradient ``grad``, where :func:`gate_fits`: :math:`\partial a = g \odot b \odot \mathrm{GELU}'(a)`,
    :math:`\partial b = g \odot \mathrm{GELU}(a)` in one pass, :math:`a` and :math:`b` computed again as the
    forward computes them; :math:`\mathrm{GELU}'(a) = \Phi(a) + a\,\varphi(a)` with :func:`erf` for
    :math:`\Phi` and the normal density :math:`\varphi` as :func:`exp2_neg` (a polynomial times exact powers of
    two). The ``(B, 2E, H, W)`` result is channels-last."""
    B, C2, H, W = h.shape
    out = torch.empty((B, H, W, C2), dtype=h.dtype)
    g = grad.detach().to(h.dtype).permute(0, 2, 3, 1).contiguous()
    if weight is None:
        compiled.parallel(_gate_grad, h.detach().permute(0, 2, 3, 1).reshape(-1, C2).numpy(),
                          g.view(-1, C2 // 2).numpy(), out.view(-1, C2).numpy())
    else:
        taps = weight.detach().reshape(C2, 9).t().contiguous()
        compiled.parallel(_dw_gate_grad, h.detach().permute(0, 2, 3, 1).numpy(), taps.numpy(), g.numpy(), out.numpy())
    return out.permute(0, 3, 1, 2)


class GeluGate(torch.autograd.Function):
    r""":func:`gelu_gate` under autograd (training), for maps where :func:`gate_fits`: the compiled pass forward,
    keeping ``h`` alone, and :func:`gelu_gate_grad` backward."""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        ctx.save_for_backward(h)
        return gelu_gate(h)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return gelu_gate_grad(ctx.saved_tensors[0], grad)


class DepthwiseGeluGate(torch.autograd.Function):
    r""":func:`depthwise_gelu_gate` under autograd (training), for maps where :func:`gate_fits`.

    The forward is the compiled pass and keeps ``h`` alone for the backward (not :math:`D(h)` nor
    :math:`\mathrm{GELU}(a)`, three map-sized tensors fewer per layer); the backward computes the gradient of
    :math:`D(h)` in one compiled pass (:func:`gelu_gate_grad`, :math:`D(h)` again on the fly) and those of the
    depthwise convolution by ``convolution_backward``."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(h, weight)
        return depthwise_gelu_gate(h, weight)

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight = ctx.saved_tensors
        grad_d = gelu_gate_grad(h, grad, weight)
        grad_h, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_d, h, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], h.shape[1],
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return grad_h, grad_w
