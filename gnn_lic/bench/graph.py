"""Graph construction and aggregation: ``python -m gnn_lic.bench graph``.

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

import math
from typing import Dict, List, Optional

import torch

from gnn_lic.bench.runner import run_child, timeit
from gnn_lic.evaluation.complexity import process_memory, reset_peak_memory

__all__ = ["bench_graph", "CHILD_TASKS"]


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
        t_build = timeit(lambda: build_graph(x, cset, sel))
        graph = build_graphs(x, {"g": cset}, sel)["g"]  # as the blocks get it (CSR, node order hint)
        t_agg = timeit(lambda: conv(tokens, graph))
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
            out[f"{impl}_fwd_s"] = timeit(lambda: conv(tokens, graph))
        t = tokens.clone().requires_grad_()
        out[f"{impl}_fwdbwd_s"] = timeit(lambda: conv(t, graph).sum().backward(), grad=True)
    dense = _dense_grouped(x, GlobalGrid(16), sel)
    with torch.no_grad():
        out["dense_fwd_s"] = timeit(dense)
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
        t_block = timeit(lambda: block(x), repeat=3)
        t_graph = timeit(lambda: block.build_graphs(x), repeat=10)
        # the same graphs without the compiled kernels (pure PyTorch), side by side
        previous = _rowkernels.set_enabled(False)
        t_torch = timeit(lambda: block.build_graphs(x), repeat=10)
        _rowkernels.set_enabled(previous)
    return {"map": f"{h}x{w}", "block_s": t_block, "graphs_s": t_graph, "share": t_graph / t_block,
            "compiled": compiled, "graphs_torch_s": t_torch, "share_torch": t_torch / t_block}


def _slope(ns: List[int], ts: List[float]) -> float:
    lx = [math.log(n) for n in ns]
    ly = [math.log(t) for t in ts]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


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
                r = run_child("config", [size, channels, degree, kind])
                rows.append({"graph": kind, "C": channels, "degree": degree, **r})
                ns.append(r["N"])
                tb.append(r["build_s"])
                ta.append(r["agg_s"])
                print(f"{kind:7} {channels:4d} {degree:4d} {r['N']:7d} {r['E']:9d} {r['build_s']:9.4f} {r['agg_s']:8.4f} {r['peak_mb']:8.1f}")
            print(f"{'':7} {'':4} {'':4} log-log slope vs N: construction {_slope(ns, tb):.2f}, aggregation {_slope(ns, ta):.2f} (target <= 1.1)")
    print("\n== aggregation paths side by side (global graph, C=192, avg degree 64) ==")
    path_rows = []
    for size in [32, 64] if quick else [64, 96]:
        r = run_child("paths", [size, 192, 64])
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
        r = run_child("share", [h, w, ratio])
        shares.append(r)
        path = "compiled kernels" if r["compiled"] else "pure PyTorch (numba missing or off)"
        print(f"map {r['map']:8} (mlp ratio {ratio}): block {r['block_s']:.3f} s, graphs {r['graphs_s']:.3f} s, "
              f"share {100 * r['share']:.1f}% (target <= 5%; {path})")
        print(f"{'':14} pure PyTorch construction: graphs {r['graphs_torch_s']:.3f} s, share {100 * r['share_torch']:.1f}%")
    return {"configs": rows, "paths": path_rows, "gfa_share": shares}


#: the tasks a child process of this benchmark runs
CHILD_TASKS = {"config": _one_config, "paths": _paths, "share": _gfa_share}
