"""Rate-distortion plots (PNG, matplotlib's Agg renderer; no display needed).

The figure is drawn with :class:`matplotlib.figure.Figure` and
:class:`matplotlib.backends.backend_agg.FigureCanvasAgg` directly, so it neither
depends on nor changes pyplot's global backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .results import METRIC_KEYS, get_metric, results_of

__all__ = ["plot_rd", "rd_figure"]


def rd_figure(
    curves: Mapping[str, Mapping],
    metric: str = "psnr-rgb",
    title: str | None = None,
    highlight: Sequence[str] = (),
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    dpi: int = 120,
):
    """Build the RD figure (a :class:`matplotlib.figure.Figure` on an Agg canvas).

    ``curves`` maps a label to a results document (or its ``results`` mapping).
    ``metric`` is ``"psnr-rgb"``, ``"ms-ssim-rgb"`` or ``"ms-ssim-db"`` (derived from
    ``ms-ssim-rgb`` when needed). Curves lacking the metric are left out (and named in
    the figure's footnote). Names in ``highlight`` are drawn thicker.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(7, 5), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    skipped = []
    plotted = 0
    for label, doc in curves.items():
        try:
            y = get_metric(doc, metric)
        except KeyError:
            skipped.append(label)
            continue
        x = np.asarray(results_of(doc)["bpp"], dtype=np.float64)
        order = np.argsort(x)
        lw = 2.5 if label in highlight else 1.5
        ax.plot(x[order], y[order], marker="o", markersize=3.5, linewidth=lw, label=str(label))
        plotted += 1
    if plotted == 0:
        raise ValueError(f"none of the curves has metric {metric!r}")
    ax.set_xlabel("Rate [bits per pixel, bpp]")
    ax.set_ylabel(METRIC_KEYS.get(metric, metric))
    if title:
        ax.set_title(title)
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    if skipped:
        fig.text(0.01, 0.005, f"no {metric}: " + ", ".join(skipped), fontsize="x-small")
    fig.tight_layout()
    return fig


def plot_rd(
    curves: Mapping[str, Mapping],
    metric: str = "psnr-rgb",
    path: str | os.PathLike = "rd.png",
    title: str | None = None,
    highlight: Sequence[str] = (),
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    dpi: int = 120,
) -> Path:
    """Plot quality vs bpp for every curve (legend, labelled axes) and save a PNG.

    Arguments as :func:`rd_figure`; returns the path written.
    """
    fig = rd_figure(curves, metric, title, highlight, xlim, ylim, dpi)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
