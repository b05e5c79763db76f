r"""Bit-allocation maps (GABIC paper Fig. 5).

The rate of a latent element is :math:`-\log_2 p(\hat y)`, its likelihood under the
entropy model (the quantity the real bitstream costs up to a few bytes). Summing over
the channels of each spatial position gives the bits spent there; spreading them over
the image pixels the position covers gives a map in **bits per pixel** whose mean over
the image is the estimated bpp. Hyper-latent (``z``) bits are spread the same way over
the (larger) block each ``z`` position covers.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnn_lic.models.base import pad_to_multiple

__all__ = ["bit_allocation", "bit_allocation_difference", "quality_for_rate"]


def _spread(bits: Tensor, size) -> Tensor:
    """``(B, h, w)`` bits per position -> ``(B, H, W)`` bits per pixel (each position covers an equal block)."""
    H, W = size
    h, w = bits.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"latent {h}x{w} does not tile the padded image {H}x{W}")
    per_pixel = bits / ((H // h) * (W // w))
    return F.interpolate(per_pixel[:, None], size=(H, W), mode="nearest")[:, 0]


@torch.no_grad()
def bit_allocation(model: nn.Module, x: Tensor, include_hyper: bool = True, quality: Optional[float] = None
                   ) -> Dict[str, Tensor]:
    """Bits-per-pixel maps of images ``x`` ``(B, 3, H, W)`` in ``[0, 1]`` (at ``quality`` for a variable-rate model).

    Returns a dict of ``(B, H, W)`` maps: one per likelihood tensor of the model (``"y"``,
    ``"z"``) and ``"total"`` (their sum; ``y`` only if ``include_hyper`` is false). Maps
    are computed on the padded image (as the model codes it) and cropped to ``H x W``, so
    ``total.mean()`` is the estimated bpp minus the bits spent on the padding.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
    was_training = model.training
    model.eval()
    try:
        x_pad, (H, W) = pad_to_multiple(x, getattr(model, "pad_multiple", 1))
        likelihoods = (model(x_pad) if quality is None else model(x_pad, quality=quality))["likelihoods"]
    finally:
        model.train(was_training)
    maps = {}
    for name, lik in likelihoods.items():
        bits = -torch.log2(lik.clamp_min(1e-30)).sum(1)
        maps[name] = _spread(bits, x_pad.shape[-2:])[..., :H, :W]
    keys = list(maps) if include_hyper else [k for k in maps if k == "y"]
    maps["total"] = sum(maps[k] for k in keys)
    return maps


def bit_allocation_difference(a: Dict[str, Tensor], b: Dict[str, Tensor], key: str = "total") -> Tensor:
    """``a[key] - b[key]``: where model A spends more (positive) or fewer (negative) bits than B."""
    if a[key].shape != b[key].shape:
        raise ValueError(f"maps of different shapes: {tuple(a[key].shape)} vs {tuple(b[key].shape)}")
    return a[key] - b[key]


def quality_for_rate(model: nn.Module, x: Tensor, bpp: float, iterations: int = 12) -> float:
    """The (real) quality at which variable-rate ``model`` spends ``bpp`` estimated bits per pixel on ``x``.

    Bisection on ``[1, L]`` (rate grows with quality); clamped to the ends when ``bpp`` is out of
    the model's range. Lets two codecs' bit allocations be compared at equal rate.
    """
    levels = getattr(model, "qualities", 1)
    if levels < 2:
        raise ValueError("quality_for_rate needs a variable-rate model (built with rate_lambdas)")

    def rate(q: float) -> float:
        return float(bit_allocation(model, x, quality=q)["total"].mean())

    lo, hi = 1.0, float(levels)
    if bpp <= rate(lo):
        return lo
    if bpp >= rate(hi):
        return hi
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if rate(mid) < bpp else (lo, mid)
    return 0.5 * (lo + hi)
