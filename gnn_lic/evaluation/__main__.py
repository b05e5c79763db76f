"""Command line: ``python -m gnn_lic.evaluation {anchors,bd,plot} ...``.

* ``anchors --data DIR --out DIR [--codecs jpeg webp avif] [--qualities Q ...]
  [--limit N]``: measure Pillow JPEG/WebP/AVIF on the images in DIR; writes
  ``<out>/<codec>.json`` and ``<out>/rd_psnr.png``, ``<out>/rd_ms-ssim-db.png``.
* ``bd --anchor vtm.json --test a.json [b.json ...] [--metric psnr-rgb]
  [--method pchip|cubic]``: print a BD-rate / BD-quality table. A ``--anchor`` or
  ``--test`` argument of the form ``ref:kodak/vtm`` names a reference curve
  (:func:`gnn_lic.evaluation.results.load_reference`).
* ``plot --out rd.png a.json [b.json ...] [--metric psnr-rgb]``: RD plot of files.

Bad arguments and unreadable inputs print one line and exit with status 2 (:mod:`gnn_lic.cli`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from gnn_lic.cli import ArgumentParser, UsageError, run_main
from gnn_lic.errors import ImageReadError

from .anchors import DEFAULT_QUALITIES, measure_anchors
from .bd import METHODS, bd_table, format_bd_table
from .images import DataError, load_images
from .plot import plot_rd
from .results import load_reference, load_results, save_results


def _load(spec: str) -> tuple[str, dict]:
    if spec.startswith("ref:"):
        dataset, _, name = spec[4:].partition("/")
        if not name:
            raise UsageError(f"bad reference spec {spec!r}; use ref:<dataset>/<name>")
        ref = load_reference(dataset)
        if name not in ref:
            raise UsageError(f"no reference {name!r} for {dataset}; have {sorted(ref)}")
        return name, ref[name]
    doc = load_results(spec)
    return str(doc.get("name") or Path(spec).stem), doc


def _unique(name: str, taken: dict) -> str:
    if name not in taken:
        return name
    i = 2
    while f"{name}-{i}" in taken:
        i += 1
    return f"{name}-{i}"


def _cmd_anchors(args) -> int:
    images = load_images(args.data, limit=args.limit)
    print(f"{len(images)} image(s) from {args.data}")
    qualities = args.qualities if args.qualities else None
    curves = measure_anchors(images, codecs=args.codecs, qualities=qualities, progress=print)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for codec, doc in curves.items():
        p = save_results(doc, out / f"{codec}.json")
        print(f"wrote {p}")
    for metric in ("psnr-rgb", "ms-ssim-db"):
        p = plot_rd(curves, metric=metric, path=out / f"rd_{metric.replace('-rgb', '')}.png",
                    title=f"Pillow anchors on {Path(args.data).name}")
        print(f"wrote {p}")
    return 0


def _cmd_bd(args) -> int:
    anchor_name, anchor = _load(args.anchor)
    curves = {anchor_name: anchor}
    for spec in args.test:
        name, doc = _load(spec)
        curves[_unique(name, curves)] = doc
    table = bd_table(curves, anchor_name, metric=args.metric, method=args.method)
    print(format_bd_table(table, anchor_name, metric=args.metric, method=args.method))
    return 0


def _cmd_plot(args) -> int:
    curves = {}
    for spec in args.files:
        name, doc = _load(spec)
        curves[_unique(name, curves)] = doc
    p = plot_rd(curves, metric=args.metric, path=args.out, title=args.title)
    print(f"wrote {p}")
    return 0


def build_parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m gnn_lic.evaluation", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("anchors", help="measure Pillow JPEG/WebP/AVIF on a folder of images")
    a.add_argument("--data", required=True, help="folder of images (png, jpg, ...)")
    a.add_argument("--out", required=True, help="output folder for JSON and plots")
    a.add_argument("--codecs", nargs="+", default=["jpeg", "webp", "avif"], choices=sorted(DEFAULT_QUALITIES))
    a.add_argument("--qualities", nargs="+", type=int, default=None,
                   help="one quality sweep for all codecs (default: per-codec sweeps)")
    a.add_argument("--limit", type=int, default=None, help="use only the first N images")
    a.set_defaults(func=_cmd_anchors)

    b = sub.add_parser("bd", help="BD-rate / BD-quality table against an anchor")
    b.add_argument("--anchor", required=True, help="anchor results JSON (or ref:<dataset>/<name>)")
    b.add_argument("--test", required=True, nargs="+", help="results JSON files to compare")
    b.add_argument("--metric", default="psnr-rgb", help="psnr-rgb (default), ms-ssim-db, ms-ssim-rgb")
    b.add_argument("--method", default="pchip", choices=METHODS)
    b.set_defaults(func=_cmd_bd)

    p = sub.add_parser("plot", help="RD plot of results files")
    p.add_argument("files", nargs="+", help="results JSON files (or ref:<dataset>/<name>)")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--metric", default="psnr-rgb")
    p.add_argument("--title", default=None)
    p.set_defaults(func=_cmd_plot)
    return ap


#: errors a user causes with an argument or an input file
EXPECTED_ERRORS = (DataError, ImageReadError, OSError, ValueError)  # JSONDecodeError is a ValueError


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad arguments and inputs print one line and return 2."""
    def body() -> int:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)

    return run_main(body, "python -m gnn_lic.evaluation", expected=EXPECTED_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
