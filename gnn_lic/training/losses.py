r"""Rate-distortion training loss (CompressAI's ``RateDistortionLoss`` conventions).

.. math::
    \mathcal{L} = R + \lambda \cdot D \;(+\; w_\perp \, \mathcal{L}_\perp),
    \qquad R = \frac{\sum_{\ell} \sum -\log_2 p(\hat{\ell})}{B\,H\,W}

with :math:`D = 255^2 \cdot \mathrm{MSE}` (images in :math:`[0, 1]`) or
:math:`D = 1 - \text{MS-SSIM}`, and :math:`\mathcal{L}_\perp` the orthogonality loss of
GLIC's auxiliary wavelet branch (GLIC Sec. 4.1.1, weight 0.1), added when the model
has ``ortho_loss()`` and its ``wavelet`` flag is on.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from torch import Tensor, nn

from gnn_lic.evaluation.metrics import likelihood_bits

__all__ = ["RateDistortionLoss", "bpp_from_likelihoods", "eval_loss", "has_ortho_loss", "ms_ssim_train"]

_MS_SSIM_WIN = 11
_WARNED_SIDES: set = set()


def bpp_from_likelihoods(likelihoods: Any, num_pixels: int) -> Tensor:
    """``sum(-log2 p) / num_pixels`` over every tensor of ``likelihoods`` (dict, list or tensor)."""
    return likelihood_bits(likelihoods) / num_pixels


def eval_loss(result: Mapping[str, Any], lmbda: float, metric: str) -> float:
    """``bpp + lambda * D`` of an :func:`~gnn_lic.evaluation.evaluate_model` result, D averaged per image.

    ``D = 255^2 * MSE`` (from each image's PSNR on 8-bit values) or ``1 - MS-SSIM``.
    """
    per = result["per_image"].values()
    if metric == "mse":
        d = [255.0**2 * 10 ** (-r["psnr-rgb"] / 10) for r in per]
    else:
        d = [1.0 - r["ms-ssim-rgb"] for r in per]
    return float(result["bpp"] + lmbda * sum(d) / len(d))


def has_ortho_loss(net: nn.Module | None) -> bool:
    """Whether ``net`` trains an orthogonality loss: it has ``ortho_loss()`` and ``wavelet`` is on."""
    return net is not None and callable(getattr(net, "ortho_loss", None)) and bool(getattr(net, "wavelet", False))


def ms_ssim_train(x_hat: Tensor, target: Tensor) -> Tensor:
    """MS-SSIM (5 scales, data range 1) as CompressAI trains with it.

    ``pytorch_msssim`` needs sides larger than 160 pixels for its 11-tap window; for
    smaller crops the window shrinks to the largest odd size that fits (7 for 128-pixel
    crops), with a one-time warning. Evaluation always uses the standard metric.
    """
    side = min(target.shape[-2:])
    win = _MS_SSIM_WIN
    if side <= (win - 1) * 16:
        win = (side - 1) // 16 + 1  # largest w with (w - 1) * 16 < side ...
        win = win if win % 2 == 1 else win - 1  # ... that is odd
        if win < 3:
            raise ValueError(f"MS-SSIM needs crops of at least 33 pixels, got {side}")
        if side not in _WARNED_SIDES:  # once per process and crop size, not once per step
            _WARNED_SIDES.add(side)
            warnings.warn(
                f"{side}-pixel crops are too small for MS-SSIM's 11-tap window; training with a {win}-tap window",
                stacklevel=2,
            )
    return ms_ssim(x_hat, target, data_range=1.0, win_size=win)


class RateDistortionLoss(nn.Module):
    r"""Rate + lambda * distortion (+ orthogonality), as a dict of named terms.

    Args:
        lmbda (float): trade-off :math:`\lambda` (GLIC: 0.0017..0.05 for MSE, 3..64 for MS-SSIM).
        metric (str): ``"mse"`` (:math:`D = 255^2\,\mathrm{MSE}`) or ``"ms-ssim"``
            (:math:`D = 1 - \text{MS-SSIM}`).
        ortho_weight (float): weight of ``net.ortho_loss()`` (0.1), used when
            :func:`has_ortho_loss` holds for the ``net`` passed to :meth:`forward`.

    ``forward(output, target, net=None)`` returns (scalar tensors)::

        {"bpp_loss", "mse_loss" | "ms_ssim_loss", "ortho_loss"?, "loss"}

    As in CompressAI, ``ms_ssim_loss`` holds the MS-SSIM value itself (the distortion
    is ``1 - ms_ssim_loss``).
    """

    def __init__(self, lmbda: float = 0.01, metric: str = "mse", ortho_weight: float = 0.1):
        super().__init__()
        if metric not in ("mse", "ms-ssim"):
            raise ValueError(f"metric must be 'mse' or 'ms-ssim', got {metric!r}")
        self.lmbda = float(lmbda)
        self.metric = metric
        self.ortho_weight = float(ortho_weight)

    def forward(self, output: Mapping[str, Any], target: Tensor, net: nn.Module | None = None,
                lmbda: Tensor | None = None) -> Dict[str, Tensor]:
        r"""The loss terms; ``lmbda`` (one per image) replaces the fixed trade-off (variable-rate training).

        With per-image trade-offs the loss is the batch mean of
        :math:`R_i + \lambda_i D_i`, each image's rate and distortion on its own.
        """
        N, _, H, W = target.shape
        out: Dict[str, Tensor] = {"bpp_loss": bpp_from_likelihoods(output["likelihoods"], N * H * W)}
        x_hat = output["x_hat"]
        if lmbda is not None:
            bits = likelihood_bits(output["likelihoods"], per_image=True)
            if self.metric == "mse":
                d = (x_hat - target).pow(2).flatten(1).mean(1)
                out["mse_loss"] = d.mean()
                distortion = 255**2 * d
            else:
                ms = torch.stack([ms_ssim_train(x_hat[i:i + 1], target[i:i + 1]) for i in range(N)])
                out["ms_ssim_loss"] = ms.mean()
                distortion = 1 - ms
            loss = (bits / (H * W) + lmbda.to(distortion) * distortion).mean()
        else:
            if self.metric == "mse":
                out["mse_loss"] = F.mse_loss(x_hat, target)
                distortion = 255**2 * out["mse_loss"]
            else:
                out["ms_ssim_loss"] = ms_ssim_train(x_hat, target)
                distortion = 1 - out["ms_ssim_loss"]
            loss = out["bpp_loss"] + self.lmbda * distortion
        if has_ortho_loss(net):
            out["ortho_loss"] = net.ortho_loss()
            loss = loss + self.ortho_weight * out["ortho_loss"]
        out["loss"] = loss
        return out

    def extra_repr(self) -> str:
        return f"lmbda={self.lmbda}, metric={self.metric!r}, ortho_weight={self.ortho_weight}"
