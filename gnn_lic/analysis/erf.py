r"""Effective receptive fields (Luo et al., NeurIPS 2016; GLIC ref. [52], Fig. 6).

The effective receptive field (ERF) of a latent position ``p`` of a stage ``f`` of the
analysis transform is the gradient magnitude of that position with respect to the input
pixels:

.. math::

    \mathrm{ERF}_p(u, v) = \sum_{c \in \{R,G,B\}}
        \Big| \frac{\partial \sum_k f_k(x)_p}{\partial x_c(u, v)} \Big|

i.e. Luo et al.'s recipe: a gradient of one at every channel of position ``p`` and zero
elsewhere, back-propagated to the image (absolute value, summed over the colour
channels). Graphs are built without gradient (as in training), so the ERF follows the
attention paths of the graphs each image actually induced: that is how GLIC's ERF
adapts to content.

Numbers, not only pictures:

* :func:`erf_mass_area` -- the smallest number of pixels that holds 50% / 90% of the
  gradient mass (the "size" of the ERF, robust to its long tail);
* :func:`erf_difference` -- how different two ERFs are: the total-variation distance of
  the two normalised maps, optionally after shifting one by the distance between the
  two positions, so that a translation-equivariant network (a CNN) scores near 0 and a
  content-adaptive one does not.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "stage_module",
    "stage_features",
    "effective_receptive_field",
    "average_erf",
    "erf_mass_area",
    "erf_difference",
    "center_crop",
]


class _Stop(Exception):
    """Raised by a forward hook to end a forward pass once the stage is computed."""


def stage_module(model: nn.Module, stage: Optional[str] = None) -> nn.Module:
    """The module whose output is the ERF's target: ``stage`` is a dotted name
    (``model.get_submodule``), default ``"g_a"`` (the latent ``y``)."""
    name = stage or "g_a"
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n.startswith("g_a")][:12]
        raise ValueError(f"model has no module {name!r}; e.g. {names}") from None


def stage_features(model: nn.Module, x: Tensor, stage: Optional[str] = None) -> Tensor:
    """Output of ``stage`` (default ``g_a``) for input ``x``, computed by ``model.g_a``.

    For an intermediate stage the forward pass stops as soon as the stage's output
    exists (a forward hook), so nothing after it is computed.
    """
    target = stage_module(model, stage)
    if target is model.g_a:
        return model.g_a(x)
    captured: List[Tensor] = []

    def hook(_m, _inp, out):
        captured.append(out)
        raise _Stop

    handle = target.register_forward_hook(hook)
    try:
        model.g_a(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"stage {stage!r} is not used by model.g_a")
    return captured[0]


def _check_image(x: Tensor) -> Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
    return x


def effective_receptive_field(
    model: nn.Module,
    x: Tensor,
    positions: Optional[Sequence[Tuple[int, int]]] = None,
    stage: Optional[str] = None,
) -> Tensor:
    """ERFs of ``positions`` of ``stage`` for images ``x``.

    Args:
        model: a gnn_lic (CompressAI) model with ``g_a``.
        x (Tensor): images ``(B, 3, H, W)`` in ``[0, 1]`` (or one ``(3, H, W)``); use
            sizes that are multiples of the stage's stride so positions line up.
        positions: ``(row, col)`` positions in the stage's feature map; default its centre.
        stage (str): dotted module name of the target (default ``"g_a"``).

    Returns:
        Tensor ``(B, P, H, W)``: the ERF of each position for each image (not normalised).
    """
    x = _check_image(x).detach().clone().requires_grad_(True)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            feat = stage_features(model, x, stage)
            h, w = feat.shape[-2:]
            if positions is None:
                positions = [(h // 2, w // 2)]
            maps = []
            for n, (r, c) in enumerate(positions):
                if not (0 <= r < h and 0 <= c < w):
                    raise ValueError(f"position {(r, c)} outside the {h}x{w} feature map of stage {stage or 'g_a'}")
                (g,) = torch.autograd.grad(feat[:, :, r, c].sum(), x, retain_graph=n + 1 < len(positions))
                maps.append(g.abs().sum(1))
    finally:
        model.train(was_training)
    return torch.stack(maps, 1)


def center_crop(x: Tensor, size: int) -> Tensor:
    """Centre ``size x size`` crop of ``(..., H, W)``; smaller sides are reflection-padded first."""
    H, W = x.shape[-2:]
    ph, pw = max(0, size - H), max(0, size - W)
    if ph or pw:
        # reflection needs the pad to be smaller than the side; else repeat the border
        mode = "reflect" if ph < H and pw < W else "replicate"
        batched = x.dim() == 4
        x = nn.functional.pad(x if batched else x[None], (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode=mode)
        x = x if batched else x[0]
        H, W = x.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    return x[..., top : top + size, left : left + size]


def average_erf(
    model: nn.Module,
    images: Iterable[Tensor],
    size: int = 256,
    stage: Optional[str] = None,
) -> Tensor:
    """Luo et al.'s averaged ERF: the centre position's ERF over ``images``.

    Each image (``(3, H, W)`` in ``[0, 1]``) is centre-cropped to ``size x size``; every
    ERF is normalised to unit mass before averaging, so each image counts equally.
    Returns the ``(size, size)`` average (unit mass).
    """
    total, n = None, 0
    for img in images:
        x = center_crop(_check_image(img), size)
        e = effective_receptive_field(model, x, stage=stage)[:, 0]
        e = e / e.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
        total = e.sum(0) if total is None else total + e.sum(0)
        n += e.shape[0]
    if n == 0:
        raise ValueError("average_erf needs at least one image")
    return total / n


def erf_mass_area(erf: Tensor, fractions: Sequence[float] = (0.5, 0.9)) -> Dict[float, int]:
    """Smallest number of pixels holding each fraction of an ERF's gradient mass.

    The pixels are taken in decreasing order of gradient magnitude; for fraction ``f``
    the result is the least ``n`` with ``sum of the n largest >= f * total``.
    """
    v = erf.detach().flatten().double().clamp_min(0)
    total = float(v.sum())
    if total <= 0:
        raise ValueError("the ERF has no gradient mass")
    cum = torch.sort(v, descending=True).values.cumsum(0) / total
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {f}")
        out[float(f)] = min(int(torch.searchsorted(cum, torch.tensor(f - 1e-12, dtype=cum.dtype))) + 1, v.numel())
    return out


def _shift(m: Tensor, dy: int, dx: int) -> Tensor:
    """``out[u, v] = m[u - dy, v - dx]`` with zeros where that falls outside."""
    H, W = m.shape
    out = torch.zeros_like(m)
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    if abs(dy) < H and abs(dx) < W:
        out[yd, xd] = m[ys, xs]
    return out


def erf_difference(a: Tensor, b: Tensor, offset: Optional[Tuple[int, int]] = None) -> float:
    """Total-variation distance between two ERFs, in ``[0, 1]``.

    Both maps are normalised to unit mass; with ``offset = (dy, dx)`` (pixels from the
    position of ``a`` to that of ``b``), ``a`` is first moved by the offset, so two ERFs
    that differ only by that translation score 0. Returns
    ``0.5 * sum |a' - b'|`` (0: same shape, 1: disjoint).
    """
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"expected two (H, W) maps of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.detach().double()
    b = b.detach().double()
    if offset is not None:
        a = _shift(a, int(offset[0]), int(offset[1]))
    sa, sb = float(a.sum()), float(b.sum())
    if sa <= 0 or sb <= 0:
        raise ValueError("an ERF has no gradient mass (inside the shifted window)")
    return 0.5 * float((a / sa - b / sb).abs().sum())

