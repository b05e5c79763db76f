r"""GDN and inverse GDN (Ballé et al., ICLR 2016) under autograd, with the elementwise steps of the backward
pass in two compiled passes:

.. math:: y = x\, r, \qquad r = \big(\beta + \Gamma\, x^2\big)^{\mp 1/2}

(:math:`\Gamma` a 1x1 convolution over the channels; :math:`-1/2` for GDN, :math:`+1/2` for the inverse).
Given :math:`g = \partial L / \partial y`: :math:`\partial L / \partial n = \mp \tfrac12\, g\, x\, r^3` (GDN) or
:math:`\tfrac12\, g\, x / r` (inverse), the 1x1 convolution's backward gives :math:`\partial L / \partial (x^2)`,
:math:`\partial L / \partial \Gamma` and :math:`\partial L / \partial \beta`, and
:math:`\partial L / \partial x = g\, r + 2 x\, \partial L / \partial (x^2)`. The values are those of the
operations one by one (CompressAI's ``GDN.forward`` under autograd) up to float rounding. The forward keeps
:math:`x` and :math:`r` for the backward; :math:`x^2`, which the 1x1 convolution's weight gradient needs, is
made again in the backward's first pass (the same products, so the same bits) rather than kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from numba import prange
from torch import Tensor

from gnn_lic import compiled
from gnn_lic.nn.banded import memory_layout
from gnn_lic.nn.recompute import active, mark

__all__ = ["gdn", "gdn_trains"]


@compiled.jit(parallel=True)
def _norm_grads(g, x, r, inverse, gn, gx, s):  # pragma: no cover - compiled
    # flat maps: gx = g r (the direct term of x's gradient), gn = the gradient of the normaliser's argument,
    # s = x^2 again (the 1x1 convolution's input, for its weight gradient)
    if inverse:
        for i in prange(g.shape[0]):
            gx[i] = g[i] * r[i]
            gn[i] = 0.5 * g[i] * x[i] / r[i]
            s[i] = x[i] * x[i]
    else:
        for i in prange(g.shape[0]):
            r_i = r[i]
            gx[i] = g[i] * r_i
            gn[i] = -0.5 * g[i] * x[i] * r_i * r_i * r_i
            s[i] = x[i] * x[i]


@compiled.jit(parallel=True)
def _add_square_grad(gx, x, gs):  # pragma: no cover - compiled
    for i in prange(gx.shape[0]):
        gx[i] += 2 * x[i] * gs[i]


def _flat(t: Tensor):
    """The elements of a channels-last map in memory order, as a NumPy view."""
    return t.detach().permute(0, 2, 3, 1).reshape(-1).numpy()


class _GDN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, gamma: Tensor, beta: Tensor, inverse: bool) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        s = x * x
        r = F.conv2d(s, gamma, beta).contiguous(memory_format=torch.channels_last)
        r = r.sqrt_() if inverse else r.rsqrt_()
        ctx.save_for_backward(x, r, gamma)
        ctx.inverse = inverse
        return x * r

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, r, gamma = ctx.saved_tensors
        g = grad.contiguous(memory_format=torch.channels_last)
        gn, gx, s = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
        compiled.parallel(_norm_grads, _flat(g), _flat(x), _flat(r), ctx.inverse, _flat(gn), _flat(gx), _flat(s))
        gs, ggamma, gbeta = torch.ops.aten.convolution_backward(
            gn, s, gamma, [gamma.shape[0]], [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        if ctx.needs_input_grad[0]:
            gs = gs.contiguous(memory_format=torch.channels_last)
            compiled.parallel(_add_square_grad, _flat(gx), _flat(x), _flat(gs))
        return (gx if ctx.needs_input_grad[0] else None), ggamma, gbeta, None


def gdn_trains(x: Tensor) -> bool:
    """Whether :func:`gdn` takes ``x``: a float32 channels-last CPU map under autograd, compiled loops on."""
    return (compiled.enabled() and torch.is_grad_enabled() and x.device.type == "cpu" and x.dim() == 4
            and x.dtype == torch.float32 and memory_layout(x) == torch.channels_last)


def gdn(x: Tensor, gamma: Tensor, beta: Tensor, inverse: bool) -> Tensor:
    """GDN (``inverse``: inverse GDN) of ``x`` with the ``(C, C, 1, 1)`` weights ``gamma`` and the bias ``beta``
    (both after their reparametrisation), under autograd; result channels-last. Inside
    :class:`~gnn_lic.nn.recompute.recomputed_saves` the result is marked as the product of the input and
    the normaliser that the backward keeps (:func:`~gnn_lic.nn.recompute.mark`)."""
    y = _GDN.apply(x, gamma, beta, inverse)
    if active() is not None and y.grad_fn is not None:
        kept_x, r, _ = y.grad_fn.saved_tensors
        mark(y, torch.mul, kept_x, r)
    return y
