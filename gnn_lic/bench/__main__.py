"""Benchmarks that print numbers: ``python -m gnn_lic.bench graph|codec``.

``codec`` measures whole models on one image (default: a 768x512 noise image, or
``--image FILE``): eval forward, encode and decode time (real bitstreams through
:mod:`gnn_lic.codec`), the share of the forward spent building graphs, peak memory
(process high-water mark), and one training step (2 crops of 256x256 for the paper
models). Given a checkout of the authors' code (``--authors-glic DIR``,
``--authors-gabic DIR``), their paper models run the same steps in alternating fresh
processes (``--rounds``), and the ratios of the best figures are printed: a host's speed
drifts, so only figures measured side by side compare.

``graph`` measures, for square feature maps of 32x32 to 256x256 nodes, C = 64 and
192, average degree 16 and 64 (the paper preset's local graph, 8x8 query blocks sharing
a 16x16 window, and its global 16x16 grid, T = 5): graph-construction time, aggregation time (one
:class:`~gnn_lic.nn.GraphAggregationConv`, forward), peak memory, and the log-log
slope of time against N. It then compares the aggregation paths (per-edge
gather/scatter, sparse SDDMM/SpMM, dense grouped attention over candidate
blocks) side by side, and reports graph construction as a share of a GFA
block's forward at the paper setting (graphs built once per block and shared by
its five layers), with and without the compiled kernels of
:mod:`gnn_lic.graph._rowkernels`. Each configuration runs in a fresh subprocess
so that peak memory is its own.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from gnn_lic.cli import ArgumentParser, UsageError, run_main
from gnn_lic.evaluation.complexity import measure_latency, process_memory, reset_peak_memory


def _timeit(fn, repeat: int = 3, grad: bool = False) -> float:
    """Best of ``repeat`` timed calls after one warm-up (candidate caches, allocator)."""
    return measure_latency(fn, n_runs=repeat, warmup=1, grad=grad)["min_s"]


def _one_config(size: int, channels: int, degree: int, kind: str) -> Dict:
    """Construction + aggregation of one graph; run inside a subprocess."""
    from gnn_lic.graph import AdaptiveDegree, BlockWindow, GlobalGrid, build_graph, build_graphs  # noqa: PLC0415
    from gnn_lic.nn import GraphAggregationConv  # noqa: PLC0415

    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size)
    cset = BlockWindow(8, 16) if kind == "local" else GlobalGrid(16)  # the paper preset's graphs
    sel = AdaptiveDegree(degree, score="rms", iters=5)
    conv = GraphAggregationConv(channels, heads=8)
    tokens = x.permute(0, 2, 3, 1).reshape(-1, channels)
    reset_peak_memory()
    base = process_memory("VmRSS")
    with torch.no_grad():
        t_build = _timeit(lambda: build_graph(x, cset, sel))
        graph = build_graphs(x, {"g": cset}, sel)["g"]  # as the blocks get it (CSR, node order hint)
        t_agg = _timeit(lambda: conv(tokens, graph))
    peak = process_memory("VmHWM") - base
    return {"N": size * size, "E": graph.num_edges, "build_s": t_build, "agg_s": t_agg, "peak_mb": peak / 2**20}


def _dense_grouped(x: torch.Tensor, cset, keep_fn, heads: int = 8):
    """Masked dense attention over each candidate block (the 'dense grouped' path)."""
    from gnn_lic.graph import build_graph, candidates  # noqa: PLC0415

    B, C, H, W = x.shape
    c = candidates(cset, H, W)
    ei = build_graph(x, cset, keep_fn)
    nb, Q = c.query.shape
    Kb = c.key.shape[1]
    src, dst = ei
    # edges are in CSR order: recover each edge's candidate slot k in its target's row
    k_of_edge = (c.index[dst] == src[:, None]).float().argmax(1)
    kept = torch.zeros_like(c.index, dtype=torch.bool)
    kept[dst, k_of_edge] = True
    # keep mask per (block, query, key): node rows in block order, scattered to key slots
    kept_blk = kept[c.query.clamp_min(0).flatten()].view(nb, Q, -1) & (c.query >= 0).unsqueeze(-1)
    cand = c.cand if c.cand is not None else torch.arange(Kb).expand(nb, Q, Kb)
    mask = torch.zeros(nb, Q, Kb, dtype=torch.bool).scatter_(-1, cand, kept_blk)
    d = C // heads
    xs = torch.cat([x.reshape(C, -1).t(), x.new_zeros(1, C)])
    q = xs[c.query].view(nb, Q, heads, d).transpose(1, 2)
    k = xs[c.key].view(nb, Kb, heads, d).transpose(1, 2)
    v = k

    def run():
        logits = (q @ k.transpose(-1, -2)).masked_fill(~mask.unsqueeze(1), float("-inf"))
        return torch.nan_to_num(logits.softmax(-1)) @ v

    return run


def _paths(size: int, channels: int, degree: int) -> Dict:
    """Aggregation paths side by side on the global graph (fwd and fwd+bwd)."""
    from gnn_lic.graph import AdaptiveDegree, GlobalGrid, build_graphs  # noqa: PLC0415
    from gnn_lic.nn import GraphAggregationConv  # noqa: PLC0415

    torch.manual_seed(0)
    x = torch.randn(1, channels, size, size)
    sel = AdaptiveDegree(degree)
    graph = build_graphs(x, {"g": GlobalGrid(16)}, sel)["g"]
    tokens = x.permute(0, 2, 3, 1).reshape(-1, channels)
    out = {"N": size * size, "E": graph.num_edges}
    for impl in ("gather", "sparse"):
        conv = GraphAggregationConv(channels, heads=8, impl=impl)
        with torch.no_grad():
            out[f"{impl}_fwd_s"] = _timeit(lambda: conv(tokens, graph))
        t = tokens.clone().requires_grad_()
        out[f"{impl}_fwdbwd_s"] = _timeit(lambda: conv(t, graph).sum().backward(), grad=True)
    dense = _dense_grouped(x, GlobalGrid(16), sel)
    with torch.no_grad():
        out["dense_fwd_s"] = _timeit(dense)
    return out


def _gfa_share(h: int, w: int, ratio: float) -> Dict:
    from gnn_lic.graph import _rowkernels  # noqa: PLC0415
    from gnn_lic.nn import GFABlock  # noqa: PLC0415

    torch.manual_seed(0)
    block = GFABlock(192, depth=5, mlp_ratio=ratio)  # BlockWindow(8, 16), GlobalGrid(16), AdaptiveDegree(64), T=5
    x = torch.randn(1, 192, h, w)
    compiled = _rowkernels.enabled(x)
    with torch.no_grad():
        # best of several runs each; construction is short, so it gets more runs
        t_block = _timeit(lambda: block(x), repeat=3)
        t_graph = _timeit(lambda: block.build_graphs(x), repeat=10)
        # the same graphs without the compiled kernels (pure PyTorch), side by side
        previous = _rowkernels.set_enabled(False)
        t_torch = _timeit(lambda: block.build_graphs(x), repeat=10)
        _rowkernels.set_enabled(previous)
    return {"map": f"{h}x{w}", "block_s": t_block, "graphs_s": t_graph, "share": t_graph / t_block,
            "compiled": compiled, "graphs_torch_s": t_torch, "share_torch": t_torch / t_block}


def _bench_image(image: Optional[str]):
    import numpy as np  # noqa: PLC0415

    from gnn_lic.codec.image_io import read_image  # noqa: PLC0415

    if image:
        return read_image(image)
    return (np.random.default_rng(0).random((512, 768, 3)) * 255).astype(np.uint8)


def _time_codec(net, img, runs: int, encode, decode, train: bool, train_batch: int, train_patch: int,
                graph_time: Optional[List[float]] = None) -> Dict:
    """Forward (best of ``runs`` after a warm-up), encode, decode, peak RSS and a training step of ``net``."""
    from gnn_lic.evaluation.images import image_to_tensor  # noqa: PLC0415
    from gnn_lic.training import RateDistortionLoss  # noqa: PLC0415

    x = image_to_tensor(img)
    base = process_memory("VmRSS")
    with torch.no_grad():
        fwd, share = [], []
        for _ in range(runs + 1):
            if graph_time is not None:
                graph_time[0] = 0.0
            t = time.perf_counter()
            net(x)
            fwd.append(time.perf_counter() - t)
            share.append(graph_time[0] / fwd[-1] if graph_time is not None else float("nan"))
    enc, dec = [], []
    for _ in range(runs):
        t = time.perf_counter()
        blob, nbytes = encode(img)
        enc.append(time.perf_counter() - t)
        t = time.perf_counter()
        decode(blob)
        dec.append(time.perf_counter() - t)
    r = {"params_M": sum(p.numel() for p in net.parameters()) / 1e6, "image": f"{img.shape[1]}x{img.shape[0]}",
         "forward_s": min(fwd[1:]), "first_forward_s": fwd[0], "graph_share": share[-1],
         "encode_s": min(enc), "decode_s": min(dec), "bpp": 8 * nbytes / (img.shape[0] * img.shape[1]),
         "peak_gb": process_memory("VmHWM") / 1e9, "baseline_gb": base / 1e9}
    if train:
        net.train()
        crit = RateDistortionLoss(lmbda=0.013)
        opt = torch.optim.Adam(net.parameters(), 1e-5)
        xs = torch.rand(train_batch, 3, train_patch, train_patch)
        reset_peak_memory()
        steps = []
        for _ in range(2):
            t = time.perf_counter()
            out = net(xs)
            loss = crit(out, xs)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps.append(time.perf_counter() - t)
        r.update(train_step_s=min(steps), train_batch=f"{train_batch}x{train_patch}x{train_patch}",
                 train_peak_gb=process_memory("VmHWM") / 1e9)
    return r


def _codec_one(name: str, size: str, image: Optional[str], runs: int, train_batch: int, train_patch: int,
               train: bool) -> Dict:
    from gnn_lic.codec import decode_image, encode_image  # noqa: PLC0415
    from gnn_lic.models import create_model  # noqa: PLC0415
    from gnn_lic.nn import blocks  # noqa: PLC0415

    torch.manual_seed(0)
    img = _bench_image(image)
    net = create_model(name, size=size).eval()
    net.update(force=True)
    graph_time = [0.0]
    real_build = blocks.build_graphs

    def timed_build(*a, **k):
        t = time.perf_counter()
        out = real_build(*a, **k)
        graph_time[0] += time.perf_counter() - t
        return out

    def encode(im):
        blob = encode_image(net, im)
        return blob, len(blob)

    blocks.build_graphs = timed_build  # every graph of GFABlock and GraphWindowBlock goes through it
    try:
        r = _time_codec(net, img, runs, encode, lambda blob: decode_image(net, blob), train, train_batch,
                        train_patch, graph_time)
    finally:
        blocks.build_graphs = real_build
    return {"model": name, "size": size, **r}


def _authors_model(name: str, code: str):
    """The authors' paper model from their own checkout ``code`` (GLIC: the repository root with
    ``glic_model``; GABIC: the repository root, whose ``src`` holds the ``comp`` package)."""
    import contextlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    if name == "glic":
        sys.path.insert(0, code)
        from glic_model import GLICModel  # noqa: PLC0415

        return GLICModel()
    sys.path.insert(0, os.path.join(code, "src"))
    from comp.models import WinGraph_WA  # noqa: PLC0415

    with contextlib.redirect_stdout(io.StringIO()):  # their constructor prints its settings
        return WinGraph_WA(knn=9, graph_conv="transf_custom", heads=8, use_edge_attr=True, dissimilarity=False)


def _codec_authors(name: str, code: str, image: Optional[str], runs: int, train_batch: int, train_patch: int,
                   train: bool) -> Dict:
    """:func:`_codec_one` for the authors' model (their forward, compress and decompress)."""
    from gnn_lic.evaluation.images import image_to_tensor  # noqa: PLC0415

    torch.manual_seed(0)
    img = _bench_image(image)
    net = _authors_model(name, code).eval()
    net.update(force=True)

    def encode(im):
        with torch.no_grad():
            out = net.compress(image_to_tensor(im))
        return out, sum(len(s[0]) for s in out["strings"])

    def decode(out):
        with torch.no_grad():
            return net.decompress(out["strings"], out["shape"])

    r = _time_codec(net, img, runs, encode, decode, train, train_batch, train_patch)
    return {"model": name, "size": "authors", **r}


def _codec_row(r: Dict) -> str:
    return (f"{r['model']:6} {r['size']:7} {r['params_M']:9.2f} {r['forward_s']:7.2f} {100 * r['graph_share']:8.1f} "
            f"{r['encode_s']:7.2f} {r['decode_s']:7.2f} {r['peak_gb']:8.2f} "
            f"{r.get('train_step_s', float('nan')):8.2f} {r.get('train_peak_gb', float('nan')):9.2f}  "
            f"{r.get('train_batch', '-')}")


def bench_codec(models: List[str], sizes: List[str], image: Optional[str], runs: int, train_batch: Dict[str, int],
                train_patch: Dict[str, int], train: bool, authors: Optional[Dict[str, str]] = None,
                rounds: int = 1) -> List[Dict]:
    """Whole models, each in a fresh process. With ``authors`` (model name -> the authors'
    checkout), the paper models alternate with the authors' own, process by process, for
    ``rounds`` rounds, and the ratios of the best figures of each side are printed."""
    authors = authors or {}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, image {image or '768x512 noise'}")
    print(f"{'model':6} {'size':7} {'params M':>9} {'fwd s':>7} {'graph %':>8} {'enc s':>7} {'dec s':>7} "
          f"{'peak GB':>8} {'train s':>8} {'train GB':>9}  batch")
    rows = []
    for size in sizes:
        for name in models:
            side_by_side = size == "paper" and name in authors
            ours, theirs = [], []
            for _ in range(rounds if side_by_side else 1):
                r = _child("codec", [name, size, image, runs, train_batch[size], train_patch[size], train])
                ours.append(r)
                print(_codec_row(r), flush=True)
                if side_by_side:
                    a = _child("authors", [name, authors[name], image, runs, train_batch[size], train_patch[size], train])
                    theirs.append(a)
                    print(_codec_row(a), flush=True)
            rows += ours + theirs
            if theirs:
                keys = ["forward_s", "encode_s", "decode_s", "peak_gb"] + (["train_step_s", "train_peak_gb"] if train else [])
                best = {k: (min(r[k] for r in ours), min(r[k] for r in theirs)) for k in keys}
                print(f"{'':14} ours / authors (best of {rounds}): "
                      + ", ".join(f"{k} {a / b:.2f}x" for k, (a, b) in best.items()), flush=True)
    return rows


def _slope(ns: List[int], ts: List[float]) -> float:
    lx = [math.log(n) for n in ns]
    ly = [math.log(t) for t in ts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _child(task: str, args: List) -> Dict:
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "gnn_lic.bench", "_child", task, json.dumps(args)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"benchmark child {task}{args} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_graph(quick: bool = False, threads: Optional[int] = None) -> Dict:
    sizes = [32, 64] if quick else [32, 64, 128, 256]
    configs = [(64, 16), (192, 64)] if quick else [(64, 16), (64, 64), (192, 16), (192, 64)]
    print(f"torch {torch.__version__}, threads {threads or torch.get_num_threads()}")
    print("\n== graph construction and aggregation (GraphAggregationConv forward, 8 heads) ==")
    print(f"{'graph':7} {'C':>4} {'deg':>4} {'nodes':>7} {'edges':>9} {'build s':>9} {'agg s':>8} {'peak MB':>8}")
    rows = []
    for kind in ("local", "global"):
        for channels, degree in configs:
            ns, tb, ta = [], [], []
            for size in sizes:
                r = _child("config", [size, channels, degree, kind])
                rows.append({"graph": kind, "C": channels, "degree": degree, **r})
                ns.append(r["N"])
                tb.append(r["build_s"])
                ta.append(r["agg_s"])
                print(f"{kind:7} {channels:4d} {degree:4d} {r['N']:7d} {r['E']:9d} {r['build_s']:9.4f} {r['agg_s']:8.4f} {r['peak_mb']:8.1f}")
            print(f"{'':7} {'':4} {'':4} log-log slope vs N: construction {_slope(ns, tb):.2f}, aggregation {_slope(ns, ta):.2f} (target <= 1.1)")
    print("\n== aggregation paths side by side (global graph, C=192, avg degree 64) ==")
    path_rows = []
    for size in [32, 64] if quick else [64, 96]:
        r = _child("paths", [size, 192, 64])
        path_rows.append(r)
        print(
            f"N={r['N']:6d} E={r['E']:8d}  gather fwd {r['gather_fwd_s']:.4f} s, fwd+bwd {r['gather_fwdbwd_s']:.4f} s | "
            f"sparse fwd {r['sparse_fwd_s']:.4f} s, fwd+bwd {r['sparse_fwdbwd_s']:.4f} s | dense grouped fwd {r['dense_fwd_s']:.4f} s"
        )
        print(f"         ratio gather/sparse: fwd {r['gather_fwd_s'] / r['sparse_fwd_s']:.1f}x, fwd+bwd {r['gather_fwdbwd_s'] / r['sparse_fwdbwd_s']:.1f}x; dense/sparse fwd {r['dense_fwd_s'] / r['sparse_fwd_s']:.1f}x")
    print("\n== graph construction share of a GFA block forward (paper setting: L=8, G=16, deg 64, C=192, T=5, depth 5) ==")
    shares = []
    maps = [(32, 48, 2.0)] if quick else [(64, 96, 2.0), (128, 192, 4.0)]
    for h, w, ratio in maps:
        r = _child("share", [h, w, ratio])
        shares.append(r)
        path = "compiled kernels" if r["compiled"] else "pure PyTorch (numba missing or off)"
        print(f"map {r['map']:8} (mlp ratio {ratio}): block {r['block_s']:.3f} s, graphs {r['graphs_s']:.3f} s, "
              f"share {100 * r['share']:.1f}% (target <= 5%; {path})")
        print(f"{'':14} pure PyTorch construction: graphs {r['graphs_torch_s']:.3f} s, share {100 * r['share_torch']:.1f}%")
    return {"configs": rows, "paths": path_rows, "gfa_share": shares}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m gnn_lic.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("graph", help="graph construction and aggregation benchmark")
    g.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    g.add_argument("--json", default=None, help="also write the figures to this JSON file")
    k = sub.add_parser("codec", help="whole-model forward/encode/decode/training-step benchmark")
    k.add_argument("--models", nargs="+", default=["glic", "gabic"])
    k.add_argument("--sizes", nargs="+", default=["small", "paper"])
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
    for size in args.sizes:
        if size not in SIZES:
            raise UsageError(f"unknown size '{size}'; choose one of: {', '.join(SIZES)}")
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
        fn = {"config": _one_config, "paths": _paths, "share": _gfa_share, "codec": _codec_one,
              "authors": _codec_authors}[args.task]
        print(json.dumps(fn(*json.loads(args.args))))
        return 0
    _check(args)
    if args.threads:
        os.environ["GNN_LIC_BENCH_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    if args.command == "codec":
        # training steps: the main job's batch for small/tiny, the authors' 2 x 256^2 for paper
        authors = {k: v for k, v in (("glic", args.authors_glic), ("gabic", args.authors_gabic)) if v}
        result = bench_codec(args.models, args.sizes, args.image, args.runs,
                             {"tiny": 8, "small": 8, "paper": 2}, {"tiny": 128, "small": 128, "paper": 256},
                             args.train, authors, args.rounds)
    else:
        result = bench_graph(quick=args.quick, threads=args.threads)
    if args.json:
        from gnn_lic.evaluation.results import write_json  # noqa: PLC0415

        write_json(result, args.json)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run a benchmark; bad arguments print one line and return 2 (:mod:`gnn_lic.cli`)."""
    return run_main(lambda: _run(argv), "python -m gnn_lic.bench")


if __name__ == "__main__":
    sys.exit(main())
