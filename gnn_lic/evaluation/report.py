"""The report of a job: one results document, RD plots, anchors and BD-rates, printed tables.

:func:`report` writes, under ``<job>/results/``::

    <name>.json                  CompressAI-format results, one point per rate (lambda or checkpoint)
    rd_psnr.png, rd_ms-ssim-db.png   RD plots (with the anchors when asked)
    anchors/<codec>.json         JPEG / WebP / AVIF measured on the same images

and prints the table of points, the BD-rates against the anchors and where the files are.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .anchors import measure_anchors
from .bd import bd_table
from .plot import plot_rd
from .results import make_results, save_results, sort_results

__all__ = ["format_table", "report"]


def format_table(rows: Sequence[Dict[str, Any]], mode: str, n_images: int) -> str:
    """One line per evaluated point: lambda, bpp, PSNR, MS-SSIM."""
    lines = [f"{'lambda':>10}  {'bpp':>8}  {'PSNR [dB]':>9}  {'MS-SSIM':>8}   ({mode}, {n_images} test image(s))"]
    for r in rows:
        lam = "-" if r.get("lambda") is None else f"{r['lambda']:g}"
        lines.append(f"{lam:>10}  {r['bpp']:>8.4f}  {r['psnr-rgb']:>9.3f}  {r['ms-ssim-rgb']:>8.5f}")
    return "\n".join(lines)


def _print_bd_rates(name: str, doc: Dict[str, Any], curves: Dict[str, Any], metric: str) -> None:
    main_metric = "psnr-rgb" if metric == "mse" else "ms-ssim-db"
    print(f"BD-rate of {name} vs the anchors ({main_metric}; negative = fewer bits):")
    for codec in curves:
        if codec == name:
            continue
        row = bd_table({codec: curves[codec], name: doc}, codec, metric=main_metric)[name]
        if row["error"]:
            print(f"  vs {codec:<5} n/a ({row['error']})")
        else:
            print(f"  vs {codec:<5} BD-rate {row['bd_rate']:+8.2f} %   BD-quality {row['bd_quality']:+.3f}")


def report(job_dir: Path, name: str, description: str, rows: List[Dict[str, Any]], test_images, anchors: bool,
           metric: str) -> Dict[str, Any]:
    """Write the results JSON and RD plots, measure anchors, print the tables; returns the results doc.

    ``rows`` are :func:`~gnn_lic.evaluation.evaluate_model` results with ``lambda``, ``step``
    (and optionally ``checkpoint``) added; ``metric`` (``mse`` / ``ms-ssim``) picks the
    quality axis of the BD-rates.
    """
    results_dir = Path(job_dir) / "results"
    doc = make_results(
        name=name,
        description=description,
        bpp=[r["bpp"] for r in rows],
        psnr=[r["psnr-rgb"] for r in rows],
        ms_ssim=[r["ms-ssim-rgb"] for r in rows],
        per_image=[r["per_image"] for r in rows],
        **{key: [r.get(key) for r in rows] for key in ("lambda", "step", "encoding_time", "decoding_time")},
    )
    doc = sort_results(doc)
    path = save_results(doc, results_dir / f"{name}.json")
    curves = {name: doc}
    if anchors:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            measured = measure_anchors(test_images)
        for codec, adoc in measured.items():
            save_results(adoc, results_dir / "anchors" / f"{codec}.json")
            curves[codec] = adoc
    plots = [plot_rd(curves, metric=m, path=results_dir / f"rd_{m.replace('-rgb', '')}.png",
                     title=f"{name} on {len(test_images)} test image(s)", highlight=[name])
             for m in ("psnr-rgb", "ms-ssim-db")]
    print(format_table(rows, rows[0]["mode"], len(test_images)))
    if anchors and len(curves) > 1:
        _print_bd_rates(name, doc, curves, metric)
    print(f"results: {path}")
    print(f"RD plots: {', '.join(str(p) for p in plots)}")
    return doc
