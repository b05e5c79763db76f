"""Benchmarks that print numbers: ``python -m gnn_lic.bench graph|codec``.

``codec`` measures whole models (:mod:`gnn_lic.bench.codec`), ``graph`` graph
construction and aggregation (:mod:`gnn_lic.bench.graph`); each configuration runs in a
fresh process (:mod:`gnn_lic.bench.runner`). Bad arguments print one line and exit with
status 2 (:mod:`gnn_lic.cli`).
"""

from __future__ import annotations

import json
import os
import sys
from typing import List, Optional

import torch

from gnn_lic.bench import codec, graph
from gnn_lic.cli import ArgumentParser, UsageError, run_main


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m gnn_lic.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("graph", help="graph construction and aggregation benchmark")
    g.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    g.add_argument("--json", default=None, help="also write the figures to this JSON file")
    k = sub.add_parser("codec", help="whole-model forward/encode/decode/training-step benchmark")
    k.add_argument("--models", nargs="+", default=["glic", "gabic"])
    k.add_argument("--sizes", nargs="+", default=None,
                   help="model sizes (tiny, small, paper; default: small paper) and image sizes WIDTHxHEIGHT "
                        "(noise images; default 768x512), space- or comma-separated: with several image sizes the "
                        "log-log slopes of time and memory against pixels are printed (default model size then: paper)")
    k.add_argument("--image", default=None, help="image file (default: 768x512 noise)")
    k.add_argument("--runs", type=int, default=1, help="timed runs after one warm-up forward")
    k.add_argument("--no-train", dest="train", action="store_false", help="skip the training step")
    k.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    k.add_argument("--json", default=None, help="also write the figures to this JSON file")
    k.add_argument("--authors-glic", metavar="DIR", default=None,
                   help="a checkout of the GLIC authors' code: time their paper model side by side")
    k.add_argument("--authors-gabic", metavar="DIR", default=None,
                   help="a checkout of the GABIC authors' code (its src/ holds the comp package)")
    k.add_argument("--rounds", type=int, default=1, help="alternating rounds with --authors-* (best of each)")
    c = sub.add_parser("_child")
    c.add_argument("task")
    c.add_argument("args")
    return parser


def _check(args) -> None:
    """Usage errors found before any benchmark child starts."""
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.command != "codec":
        return
    from gnn_lic.models import SIZES, list_models  # noqa: PLC0415

    for name in args.models:
        if name not in list_models():
            raise UsageError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    tokens = [t for item in (args.sizes or []) for t in item.split(",") if t]
    args.image_sizes = []
    model_sizes = []
    for token in tokens:
        if token in SIZES:
            model_sizes.append(token)
            continue
        try:
            codec.parse_image_size(token)
        except ValueError:
            raise UsageError(f"unknown size '{token}'; choose model sizes ({', '.join(SIZES)}) or image sizes "
                             "WIDTHxHEIGHT") from None
        args.image_sizes.append(token.lower())
    args.sizes = model_sizes or (["paper"] if args.image_sizes else ["small", "paper"])
    if args.image and args.image_sizes:
        raise UsageError("give --image or image sizes in --sizes, not both")
    if args.image and not os.path.isfile(args.image):
        raise UsageError(f"--image: '{args.image}' is not a file")
    if args.runs < 1:
        raise UsageError(f"--runs must be >= 1, got {args.runs}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {args.rounds}")
    for flag, path, marker in (("--authors-glic", args.authors_glic, "glic_model"),
                               ("--authors-gabic", args.authors_gabic, os.path.join("src", "comp"))):
        if path and not os.path.isdir(os.path.join(path, marker)):
            raise UsageError(f"{flag}: '{path}' has no {marker} folder (expected a checkout of the authors' code)")


def _run(argv: Optional[List[str]]) -> int:
    args = build_parser().parse_args(argv)
    from gnn_lic.utils import tune_malloc  # noqa: PLC0415

    tune_malloc()
    if args.command == "_child":
        if os.environ.get("GNN_LIC_BENCH_THREADS"):
            torch.set_num_threads(int(os.environ["GNN_LIC_BENCH_THREADS"]))
        fn = {**graph.CHILD_TASKS, **codec.CHILD_TASKS}[args.task]
        print(json.dumps(fn(*json.loads(args.args))))
        return 0
    _check(args)
    if args.threads:
        os.environ["GNN_LIC_BENCH_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    if args.command == "codec":
        # training steps: the main job's batch for small/tiny, the authors' 2 x 256^2 for paper
        authors = {k: v for k, v in (("glic", args.authors_glic), ("gabic", args.authors_gabic)) if v}
        result = codec.bench_codec(args.models, args.sizes, args.image, args.runs,
                             {"tiny": 8, "small": 8, "paper": 2}, {"tiny": 128, "small": 128, "paper": 256},
                             args.train, authors, args.rounds, args.image_sizes)
    else:
        result = graph.bench_graph(quick=args.quick, threads=args.threads)
    if args.json:
        from gnn_lic.evaluation.results import write_json  # noqa: PLC0415

        write_json(result, args.json)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run a benchmark; bad arguments print one line and return 2 (:mod:`gnn_lic.cli`)."""
    return run_main(lambda: _run(argv), "python -m gnn_lic.bench")


if __name__ == "__main__":
    sys.exit(main())
