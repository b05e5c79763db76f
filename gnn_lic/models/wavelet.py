r"""Auxiliary wavelet transform branch (GLIC ref. [38], "AuxT", as in the authors' released code).

A cheap, near-orthogonal side path that runs beside the main analysis and
synthesis transforms and is added to them at every resolution. It speeds up
training (GLIC Sec. 4.1.1: "training acceleration strategy introduced by [38]").

* :class:`HaarDWT` / :class:`HaarIDWT`: one level of the orthonormal 2-D Haar
  transform, channel layout **subband-major** ``[LL | LH | HL | HH]`` (each
  block has the ``C`` input channels in order). The four 2x2 kernels form an
  orthonormal basis, so the IDWT is the exact inverse.
* :class:`OLP`: orthogonal linear projection, a pointwise linear map whose
  Gram matrix is pushed towards the identity by :meth:`OLP.loss`.
* :class:`WLS` (down, ``in -> out``, stride 2) and :class:`iWLS` (up, ``in -> out``,
  x2): DWT, per-subband learnable scaling :math:`e^{s}` and OLP, in the order

  .. math::
      \mathrm{WLS}(x) = P\,\big(e^{s} \odot \mathrm{DWT}(x)\big), \qquad
      \mathrm{iWLS}(x) = \mathrm{IDWT}\big(e^{-s} \odot P\,x\big)

  with :math:`s` initialised to 0.5 on LL, LH, HL and 0 on HH.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HaarDWT", "HaarIDWT", "OLP", "WLS", "iWLS", "haar_dwt", "haar_idwt", "haar_kernels", "ortho_loss"]


def _check_even(x: Tensor) -> None:
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"haar_dwt needs an even height and width, got {tuple(x.shape[-2:])}")


def haar_dwt(x: Tensor) -> Tensor:
    """One-level orthonormal 2-D Haar DWT, ``(B, C, H, W) -> (B, 4C, H/2, W/2)``.

    ``H`` and ``W`` must be even. With ``a, b`` the top-left/top-right and ``c, d``
    the bottom-left/bottom-right pixels of a 2x2 block:
    ``LL = (a+b+c+d)/2``, ``LH = (a+b-c-d)/2`` (high-pass along the height),
    ``HL = (a-b+c-d)/2`` (high-pass along the width), ``HH = (a-b-c+d)/2``.
    """
    _check_even(x)
    a = x[..., 0::2, 0::2]
    b = x[..., 0::2, 1::2]
    c = x[..., 1::2, 0::2]
    d = x[..., 1::2, 1::2]
    s, t = a + b, c + d
    u, v = a - b, c - d
    return 0.5 * torch.cat([s + t, s - t, u + v, u - v], dim=1)


def haar_idwt(x: Tensor) -> Tensor:
    """Inverse of :func:`haar_dwt`, ``(B, 4C, H, W) -> (B, C, 2H, 2W)``."""
    if x.shape[1] % 4:
        raise ValueError(f"haar_idwt needs 4*C channels, got {x.shape[1]}")
    ll, lh, hl, hh = x.chunk(4, dim=1)
    s, t = ll + lh, ll - lh
    u, v = hl + hh, hl - hh
    a, b, c, d = 0.5 * (s + u), 0.5 * (s - u), 0.5 * (t + v), 0.5 * (t - v)
    B, C, H, W = a.shape
    # interleave the four phases: out[..., 2i+p, 2j+q]
    top = torch.stack([a, b], dim=-1).reshape(B, C, H, 2 * W)
    bottom = torch.stack([c, d], dim=-1).reshape(B, C, H, 2 * W)
    return torch.stack([top, bottom], dim=-2).reshape(B, C, 2 * H, 2 * W)


class HaarDWT(nn.Module):
    """Module form of :func:`haar_dwt` (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return haar_dwt(x)


class HaarIDWT(nn.Module):
    """Module form of :func:`haar_idwt` (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return haar_idwt(x)


def ortho_loss(weight: Tensor) -> Tensor:
    r"""Orthogonality penalty of a ``(out, in)`` matrix :math:`W`.

    .. math:: \mathcal{L}_\perp = \mathrm{MSE}(G, I), \quad
        G = \begin{cases} W W^\top & \text{in} > \text{out} \\ W^\top W & \text{otherwise} \end{cases}

    i.e. the smaller Gram matrix, which is the identity exactly when the rows
    (or columns) of :math:`W` are orthonormal.
    """
    out_f, in_f = weight.shape
    gram = weight @ weight.t() if in_f > out_f else weight.t() @ weight
    eye = torch.eye(gram.shape[0], dtype=weight.dtype, device=weight.device)
    return F.mse_loss(gram, eye)


class OLP(nn.Module):
    """Orthogonal linear projection: a pointwise ``Linear(in, out)`` on ``(B, C, H, W)`` maps.

    Orthogonality is encouraged, not imposed: add ``weight * loss()`` to the
    training loss (GLIC uses 0.1).
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.linear = nn.Linear(in_ch, out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.linear.weight[:, :, None, None], self.linear.bias)

    def loss(self) -> Tensor:
        return ortho_loss(self.linear.weight)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.linear.in_features}, {self.linear.out_features})"


def _subband_scale_init(channels: int) -> Tensor:
    """0.5 for the LL, LH and HL blocks, 0 for HH (each block ``channels`` long)."""
    s = torch.full((4 * channels,), 0.5)
    s[3 * channels :] = 0.0
    return s


def haar_kernels(dtype: torch.dtype = torch.float32, device=None) -> Tensor:
    """``(4, 2, 2)`` kernels of :func:`haar_dwt`'s subbands LL, LH, HL, HH over a 2x2 block ``[[a, b], [c, d]]``;
    also the weights of each subband in the block's pixels in :func:`haar_idwt` (the basis is orthonormal)."""
    k = torch.tensor([[[1, 1], [1, 1]], [[1, 1], [-1, -1]], [[1, -1], [1, -1]], [[1, -1], [-1, 1]]], dtype=dtype,
                     device=device)
    return 0.5 * k


class WLS(nn.Module):
    r"""Wavelet down-sampling step ``(B, in, H, W) -> (B, out, H/2, W/2)``: DWT, scale, OLP.

    All three are linear and act on each 2x2 block, so the step is computed as one 2x2 stride-2
    convolution whose weight is :math:`P\,\mathrm{diag}(e^{s})` times the Haar kernels
    (:meth:`block_weight`): the function of :func:`haar_dwt` then the projection, up to float rounding,
    without the subband maps."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.log_scale = nn.Parameter(_subband_scale_init(in_ch))
        self.proj = OLP(4 * in_ch, out_ch)

    def block_weight(self) -> Tensor:
        """``(out, in, 2, 2)``: ``w[o, c, p, q] = sum_b P[o, b in + c] e^{s[b in + c]} haar[b, p, q]``."""
        w = self.proj.linear.weight * self.log_scale.exp()
        w = w.view(w.shape[0], 4, -1)  # (out, subband, in)
        return torch.einsum("obc,bpq->ocpq", w, haar_kernels(w.dtype, w.device))

    def forward(self, x: Tensor) -> Tensor:
        _check_even(x)
        return F.conv2d(x, self.block_weight(), self.proj.linear.bias, stride=2)


class iWLS(nn.Module):  # noqa: N801 - the paper's name
    r"""Wavelet up-sampling step ``(B, in, H, W) -> (B, out, 2H, 2W)``: OLP, unscale, IDWT.

    Computed as one 1x1 convolution to the ``4 out`` values of each output 2x2 block, weight
    :math:`\mathrm{haar} \cdot \mathrm{diag}(e^{-s})\,P` (:meth:`block_weight`), and a pixel shuffle: the
    function of the projection then :func:`haar_idwt`, up to float rounding."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.proj = OLP(in_ch, 4 * out_ch)
        self.log_scale = nn.Parameter(_subband_scale_init(out_ch))

    def block_weight(self) -> Tensor:
        """``(4 out, in, 1, 1)`` weight and ``(4 out,)`` bias of the 1x1 convolution, channels ``(c, p, q)``."""
        lin = self.proj.linear
        unscale = (-self.log_scale).exp()
        haar = haar_kernels(lin.weight.dtype, lin.weight.device)
        w = (lin.weight * unscale[:, None]).view(4, -1, lin.in_features)  # (subband, out, in)
        weight = torch.einsum("bci,bpq->cpqi", w, haar).reshape(-1, lin.in_features, 1, 1)
        bias = None
        if lin.bias is not None:
            bias = torch.einsum("bc,bpq->cpq", (lin.bias * unscale).view(4, -1), haar).reshape(-1)
        return weight, bias

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.block_weight()
        return F.pixel_shuffle(F.conv2d(x, weight, bias), 2)
