"""The report of a job: one results document, RD plots, anchors and BD-rates, printed tables.

:func:`report` writes, under ``<job>/results/``::

    <name>.json                  CompressAI-format results, one point per rate (lambda or checkpoint)
    rd_psnr.png, rd_ms-ssim-db.png   RD plots (with the anchors and the shipped model when asked)
    anchors/<codec>.json         JPEG / WebP / AVIF measured on the same images
    shipped/<name>.json          the shipped weights of the same model, on the same images

and prints the table of points, the BD-rates against the other curves and where the files are.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .anchors import measure_anchors
from .bd import bd_table
from .evaluate import evaluate_model
from .plot import plot_rd
from .results import make_results, save_results, sort_results

__all__ = ["format_table", "report", "shipped_curve"]


def format_table(rows: Sequence[Dict[str, Any]], mode: str, n_images: int) -> str:
    """One line per evaluated point: lambda, bpp, PSNR, MS-SSIM."""
    lines = [f"{'lambda':>10}  {'bpp':>8}  {'PSNR [dB]':>9}  {'MS-SSIM':>8}   ({mode}, {n_images} test image(s))"]
    for r in rows:
        lam = "-" if r.get("lambda") is None else f"{r['lambda']:g}"
        lines.append(f"{lam:>10}  {r['bpp']:>8.4f}  {r['psnr-rgb']:>9.3f}  {r['ms-ssim-rgb']:>8.5f}")
    return "\n".join(lines)


def _print_bd_rates(name: str, doc: Dict[str, Any], curves: Dict[str, Any], metric: str) -> None:
    main_metric = "psnr-rgb" if metric == "mse" else "ms-ssim-db"
    print(f"BD-rate of {name} vs the other curves ({main_metric}; negative = fewer bits):")
    width = max(len(c) for c in curves)
    for codec in curves:
        if codec == name:
            continue
        row = bd_table({codec: curves[codec], name: doc}, codec, metric=main_metric)[name]
        if row["error"]:
            print(f"  vs {codec:<{width}} n/a ({row['error']})")
            continue
        rate = f"{row['bd_rate']:+8.2f} %" if math.isfinite(row["bd_rate"]) else f"{'n/a':>10}"
        quality = f"{row['bd_quality']:+.3f}" if math.isfinite(row["bd_quality"]) else "n/a"
        note = f"  ({row['note']})" if row.get("note") else ""
        print(f"  vs {codec:<{width}} BD-rate {rate}   BD-quality {quality}{note}")


def _rows_doc(name: str, description: str, rows: List[Dict[str, Any]], extra: Sequence[str]) -> Dict[str, Any]:
    return sort_results(make_results(
        name=name,
        description=description,
        bpp=[r["bpp"] for r in rows],
        psnr=[r["psnr-rgb"] for r in rows],
        ms_ssim=[r["ms-ssim-rgb"] for r in rows],
        per_image=[r["per_image"] for r in rows],
        **{key: [r.get(key) for r in rows] for key in extra},
    ))


def shipped_curve(model: str, size: str, test_images, entropy_estimation: bool = False) -> Optional[Dict[str, Any]]:
    """The shipped weights of ``model``/``size`` evaluated on ``test_images`` (every quality), or None if none ship."""
    from gnn_lic.errors import NoPretrainedWeightsError  # noqa: PLC0415
    from gnn_lic.models import create_model  # noqa: PLC0415

    try:
        net = create_model(model, size=size, pretrained=True)
    except NoPretrainedWeightsError:
        return None
    qualities = list(range(1, net.qualities + 1)) if net.qualities > 1 else [None]
    rows = []
    for quality in qualities:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows.append({**evaluate_model(net, test_images, entropy_estimation=entropy_estimation, quality=quality),
                         "quality": quality})
    name = f"{model}-{size} (shipped)"
    return _rows_doc(name, f"the shipped {model}-{size} weights on the same images", rows, ("quality",))


def report(job_dir: Path, name: str, description: str, rows: List[Dict[str, Any]], test_images, anchors: bool,
           metric: str, compare: Sequence[Dict[str, Any]] = (), anchor_codecs: Optional[Sequence[str]] = None
           ) -> Dict[str, Any]:
    """Write the results JSON and RD plots, measure anchors, print the tables; returns the results doc.

    ``rows`` are :func:`~gnn_lic.evaluation.evaluate_model` results with ``lambda``, ``step``
    (and optionally ``checkpoint``) added; ``metric`` (``mse`` / ``ms-ssim``) picks the
    quality axis of the BD-rates. ``compare``: further results documents drawn and
    compared with (e.g. :func:`shipped_curve`); ``anchor_codecs``: which anchors
    (default: all of :func:`~gnn_lic.evaluation.anchors.measure_anchors`).
    """
    results_dir = Path(job_dir) / "results"
    doc = _rows_doc(name, description, rows, ("lambda", "quality", "step", "encoding_time", "decoding_time"))
    path = save_results(doc, results_dir / f"{name}.json")
    curves = {name: doc}
    if anchors:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measured = measure_anchors(test_images, **({"codecs": anchor_codecs} if anchor_codecs else {}))
        for codec, adoc in measured.items():
            save_results(adoc, results_dir / "anchors" / f"{codec}.json")
            curves[codec] = adoc
    for other in compare:
        save_results(other, results_dir / "shipped" / f"{other['name'].split(' ')[0]}.json")
        curves[other["name"]] = other
    plots = [plot_rd(curves, metric=m, path=results_dir / f"rd_{m.replace('-rgb', '')}.png",
                     title=f"{name} on {len(test_images)} test image(s)", highlight=[name])
             for m in ("psnr-rgb", "ms-ssim-db")]
    print(format_table(rows, rows[0]["mode"], len(test_images)))
    if len(curves) > 1:
        _print_bd_rates(name, doc, curves, metric)
    print(f"results: {path}")
    print(f"RD plots: {', '.join(str(p) for p in plots)}")
    return doc
