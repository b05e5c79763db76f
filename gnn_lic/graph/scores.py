"""Complexity scores and degree quotas: *how much to connect* (GLIC Sec. 3.3.2).

All scores are computed without gradient from a feature map ``(B, C, H, W)`` and
return ``(B, H, W)`` non-negative maps. Borders are handled by replicate padding
(the papers do not specify a rule; replicate avoids fake edges at the border).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from gnn_lic.graph import _rowkernels

__all__ = [
    "SCORES",
    "rms_gradient",
    "blurred_rms_gradient",
    "sobel_gradients",
    "local_entropy",
    "rescaling_residual",
    "complexity_score",
    "degree_quota",
]

def check_feature_map(x: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` has the shape ``(B, C, H, W)``."""
    if x.dim() != 4:
        raise ValueError(f"expected a feature map of shape (B, C, H, W), got {tuple(x.shape)}")


def sobel_gradients(x: Tensor) -> Tensor:
    r"""Per-channel Sobel gradient magnitudes, GLIC eqs. (3)-(4).

    .. math::
        S_{x,c} = F_c * K_x, \quad S_{y,c} = F_c * K_y, \quad
        |\nabla F_c| = \sqrt{S_{x,c}^2 + S_{y,c}^2}

    with :math:`K_x = [1, 2, 1]^\top [-1, 0, 1]` and :math:`K_y = K_x^\top`, applied
    separably (differences and ``[1, 2, 1]`` smoothing on slices of the
    replicate-padded map, cheaper than a grouped convolution).

    Returns the squared magnitude ``S_x^2 + S_y^2`` of shape ``(B, C, H, W)``
    (callers take the square root where the equation needs it).
    """
    check_feature_map(x)
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = xp[..., :, 2:] - xp[..., :, :-2]  # horizontal central difference, (H+2, W)
    sx = torch.add(dx[..., :-2, :], dx[..., 1:-1, :], alpha=2).add_(dx[..., 2:, :])  # vertical [1, 2, 1]
    sm = torch.add(xp[..., :, :-2], xp[..., :, 1:-1], alpha=2).add_(xp[..., :, 2:])  # horizontal [1, 2, 1]
    sy = sm[..., 2:, :] - sm[..., :-2, :]
    return sx.square_().addcmul_(sy, sy)


@torch.no_grad()
def rms_gradient(x: Tensor) -> Tensor:
    r"""RMS-Gradient (RMS-G) complexity score, GLIC eqs. (3)-(5).

    .. math::
        s(u, v) = \sqrt{\frac{1}{C} \sum_{c=1}^{C} |\nabla F_c(u, v)|^2}

    No smoothing is applied (the paper's definition). On a CPU with the compiled kernels on (the default) this is
    one compiled pass over the map (:mod:`gnn_lic.graph._rowkernels`), equal to
    the PyTorch expression up to float rounding.

    Args:
        x (Tensor): feature map ``(B, C, H, W)``.

    Returns:
        Tensor: ``(B, H, W)`` scores, ``>= 0``.

    Example:
        >>> rms_gradient(torch.randn(2, 8, 5, 7)).shape
        torch.Size([2, 5, 7])
    """
    check_feature_map(x)
    if _rowkernels.enabled(x) and x.numel() > 0:
        return _rowkernels.rms_gradient(x)
    return sobel_gradients(x).mean(1).sqrt_()


@torch.no_grad()
def local_entropy(x: Tensor, bins: int = 8, window: int = 3) -> Tensor:
    r"""Local histogram entropy per channel (the "Local Entropy" row of GLIC Table 4).

    Each channel is quantised into ``bins`` equal bins over its range in the
    image; the entropy :math:`-\sum_b p_b \log_2 p_b` of the bin histogram of the
    ``window x window`` neighbourhood is returned per channel, ``(B, C, H, W)``.
    """
    check_feature_map(x)
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    q = ((x - lo) / (hi - lo).clamp_min(1e-12) * bins).long().clamp_(0, bins - 1)
    B, C, H, W = x.shape
    out = torch.zeros_like(x)
    pad = window // 2
    for b in range(bins):  # one bin at a time keeps memory at O(B C H W)
        onehot = F.pad((q == b).to(x.dtype), (pad, pad, pad, pad), mode="replicate")
        p = F.avg_pool2d(onehot.reshape(B * C, 1, H + 2 * pad, W + 2 * pad), window, stride=1).view(B, C, H, W)
        out -= torch.where(p > 0, p * p.clamp_min(1e-12).log2(), torch.zeros_like(p))
    return out


@torch.no_grad()
def rescaling_residual(x: Tensor, factor: int = 2) -> Tensor:
    r"""Down/up-sampling residual :math:`|F - \mathrm{up}(\mathrm{down}(F))|` per channel.

    The "Rescaling Residual" proxy of GLIC Table 4 (IPG, the paper's ref. [66]):
    average-pool by ``factor`` (ceil mode), bilinear upsampling back to ``(H, W)``.
    """
    check_feature_map(x)
    H, W = x.shape[-2:]
    down = F.avg_pool2d(x, factor, ceil_mode=True) if min(H, W) >= 1 else x
    up = F.interpolate(down, size=(H, W), mode="bilinear", align_corners=False)
    return (x - up).abs()


@torch.no_grad()
def blurred_rms_gradient(x: Tensor, pull: float = 1.5, sigma: float = 0.8) -> Tensor:
    r"""The RMS-G score of the GLIC authors' code (not the paper's eqs. 3-5).

    Per channel, the Sobel magnitude :math:`\sqrt{(S_{x,c}/4)^2 + (S_{y,c}/4)^2 + 10^{-9}}`
    (replicate padding) is smoothed by a separable 3-tap Gaussian of standard
    deviation ``sigma`` (replicate padding, rows then columns); the RMS over
    channels :math:`g` is then pulled towards its image mean :math:`\mu`:
    :math:`s = \mu + (g - \mu) / \mathrm{pull}`.
    """
    check_feature_map(x)
    g = (sobel_gradients(x) / 16 + 1e-9).sqrt()
    taps = torch.exp(-0.5 * ((torch.arange(3, dtype=x.dtype, device=x.device) - 1) / sigma) ** 2)
    taps = taps / taps.sum()
    g = F.pad(g, (1, 1, 0, 0), mode="replicate")
    g = g[..., :, :-2] * taps[0] + g[..., :, 1:-1] * taps[1] + g[..., :, 2:] * taps[2]
    g = F.pad(g, (0, 0, 1, 1), mode="replicate")
    g = g[..., :-2, :] * taps[0] + g[..., 1:-1, :] * taps[1] + g[..., 2:, :] * taps[2]
    heat = g.square().mean(1).sqrt()
    mu = heat.mean(dim=(-2, -1), keepdim=True)
    return mu + (heat - mu) / pull


# name -> (per-channel measure, channel pooling); see GLIC Table 4
SCORES = {
    "rms": ("sobel", "rms"),
    "rms-official": ("sobel-blur", "rms"),
    "mean": ("sobel", "mean"),
    "entropy": ("entropy", "rms"),
    "residual": ("residual", "rms"),
    "residual-mean": ("residual", "mean"),
}


@torch.no_grad()
def complexity_score(x: Tensor, score: Optional[str] = "rms") -> Tensor:
    """Complexity score map ``(B, H, W)`` for one of :data:`SCORES` or ``None``.

    ``"rms"`` is RMS-G (eqs. 3-5), ``"mean"`` the mean of the Sobel magnitudes over
    channels, ``"entropy"`` and ``"residual"`` the other proxies of GLIC Table 4
    with RMS channel pooling; ``None`` gives uniform scores (a fixed-k graph).
    """
    check_feature_map(x)
    B, C, H, W = x.shape
    if score is None:
        return x.new_ones(B, H, W)
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}; choose one of {sorted(SCORES)} or None")
    measure, pooling = SCORES[score]
    if measure == "sobel-blur":
        return blurred_rms_gradient(x)
    if measure == "sobel":
        if pooling == "rms":
            return rms_gradient(x)
        return sobel_gradients(x).sqrt().mean(1)
    per_channel = local_entropy(x) if measure == "entropy" else rescaling_residual(x)
    if pooling == "rms":
        return per_channel.square().mean(1).sqrt()
    return per_channel.mean(1)


@torch.no_grad()
def degree_quota(scores: Tensor, avg_degree: float, num_candidates: Tensor, groups: Optional[Tensor] = None,
                 rounding: bool = True) -> tuple[Tensor, Tensor]:
    r"""Per-node quotas and target degrees, GLIC Sec. 3.3.2 and eq. (6).

    .. math::
        w_i = \frac{s_i}{\sum_{k=1}^{N} s_k}, \quad q_i = N \bar{d}\, w_i, \quad
        d_i^* = \mathrm{clip}(\mathrm{round}(q_i), 1, n_i)

    The sum runs over the ``N`` nodes of each image, or with ``groups`` over the
    nodes of each node's group, whose ``|g|`` nodes share :math:`|g| \bar{d}` (the
    GLIC authors' code). A group whose scores sum to zero gets uniform weights.
    ``round`` is round-half-to-even; ``rounding=False`` keeps the real quota
    (clipped to ``[1, n_i]``) as the target, as the authors' code does.

    Args:
        scores (Tensor): ``(B, N)`` non-negative scores.
        avg_degree (float): target average in-degree :math:`\bar{d}`.
        num_candidates (Tensor): ``(B, N)`` or ``(N,)`` candidate counts ``n_i``.
        groups (Tensor, optional): ``(N,)`` group id of every node, ``0 .. G-1``.
        rounding (bool): round the quotas (eq. 6, default) or not.

    Returns:
        (Tensor, Tensor): real quotas ``q`` ``(B, N)`` and targets ``d*`` ``(B, N)``
        (``long`` when rounded, else of the scores' dtype).
    """
    B, N = scores.shape
    if groups is None:
        total = scores.sum(1, keepdim=True)
        size = torch.full_like(total, float(N))
    else:
        G = int(groups.max()) + 1
        total = scores.new_zeros(B, G).index_add_(1, groups, scores)
        size = torch.bincount(groups, minlength=G).to(scores.dtype).expand(B, G)
        total, size = total[:, groups], size[:, groups]
    w = torch.where(total > 0, scores / total.clamp_min(torch.finfo(scores.dtype).tiny), 1.0 / size)
    q = size * float(avg_degree) * w
    n = num_candidates.expand(B, N).to(q.dtype)
    if not rounding:
        return q, torch.minimum(q.clamp_min(1.0), n.clamp_min(1.0))
    target = torch.minimum(q.round().clamp_min(1.0), n.clamp_min(1.0))
    return q, target.long()
