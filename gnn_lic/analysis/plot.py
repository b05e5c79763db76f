"""Matplotlib figures of the analysis results (each returns the figure; ``path`` saves a PNG)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from gnn_lic.analysis.graphs import GraphStage, neighbours

__all__ = ["plot_panels", "plot_neighbours", "save_figure"]

PathLike = Union[str, os.PathLike]

#: marker colour per graph kind in neighbour overlays
KIND_COLORS = {"local": "tab:cyan", "global": "tab:orange", "window": "tab:green"}


def _np(a) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().cpu()
        if a.dim() == 4:
            a = a[0]
        if a.dim() == 3 and a.shape[0] in (1, 3):
            a = a.permute(1, 2, 0)
        a = a.float().numpy()
    a = np.asarray(a)
    return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a


def save_figure(fig, path: Optional[PathLike]) -> Optional[Path]:
    """Save ``fig`` as PNG at ``path`` (parent folders created); no-op for ``None``."""
    if path is None:
        return None
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    return p


def plot_panels(
    panels: Dict[str, object],
    ncols: int = 4,
    cmap: str = "viridis",
    size: float = 3.0,
    colorbar: bool = True,
    gamma: Optional[float] = None,
    symmetric: bool = False,
    suptitle: Optional[str] = None,
    path: Optional[PathLike] = None,
):
    """One panel per ``title: image or map``; RGB images are shown as such, maps with ``cmap``.

    ``gamma`` shows maps as ``(m / max) ** gamma`` (e.g. 0.5 for ERFs' long tails);
    ``symmetric`` centres the colour scale on 0 (difference maps, ``cmap="RdBu_r"``).
    """
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, value) in zip(axes.flat, panels.items()):
        a = _np(value)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        if a.ndim == 3:
            ax.imshow(np.clip(a, 0, 1))
            continue
        kw = {}
        if gamma is not None:
            a = (np.clip(a, 0, None) / max(a.max(), 1e-30)) ** gamma
        if symmetric:
            lim = float(np.abs(a).max()) or 1.0
            kw = dict(vmin=-lim, vmax=lim)
        im = ax.imshow(a, cmap=cmap, **kw)
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    save_figure(fig, path)
    return fig


def plot_neighbours(
    image: Tensor,
    stage: GraphStage,
    pixels: Sequence[Tuple[int, int]],
    kinds: Optional[Sequence[str]] = None,
    size: float = 5.0,
    path: Optional[PathLike] = None,
):
    """The in-neighbours of the nodes covering ``pixels`` (one panel per pixel), overlaid on ``image``."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    kinds = list(kinds or stage.graphs)
    img = _np(image)
    fig, axes = plt.subplots(1, len(pixels), figsize=(size * len(pixels), size * img.shape[0] / img.shape[1]),
                             squeeze=False)
    for ax, pixel in zip(axes[0], pixels):
        ax.imshow(np.clip(img, 0, 1))
        ax.axis("off")
        counts = []
        for kind in kinds:
            nb = neighbours(stage, kind, pixel).numpy()
            counts.append(f"{kind} {len(nb)}")
            ax.scatter(nb[:, 1], nb[:, 0], s=9, c=KIND_COLORS.get(kind, "w"), label=kind, edgecolors="k",
                       linewidths=0.3)
        cy, cx = stage.pixel_of_node(stage.node_of_pixel(pixel))
        ax.scatter([cx], [cy], s=60, marker="*", c="red", edgecolors="w", linewidths=0.5, label="node")
        ax.set_xlim(-0.5, img.shape[1] - 0.5)
        ax.set_ylim(img.shape[0] - 0.5, -0.5)
        ax.set_title(f"{stage.name} pixel {tuple(pixel)}: " + ", ".join(counts), fontsize=9)
    axes[0][0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return fig
