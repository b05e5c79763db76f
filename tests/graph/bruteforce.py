"""Brute-force references for the graph-construction tests.

Everything here is written straight from the equations (GLIC eqs. 1-9 and
Algorithm 1, GABIC eq. 7) and the documented border rules, with explicit
Python loops over nodes and pixels in float64 (Python floats). Nothing from
``gnn_lic.graph`` is used except the public attributes of the rule objects
(``size``, ``border``, ``k``, ``loop``, ``avg_degree``, ``score``, ``iters``).
"""

from __future__ import annotations

import math
from collections import defaultdict

# ----------------------------------------------------------------------------
# candidate sets (GLIC eqs. 1-2, GABIC Sec. 3.3)
# ----------------------------------------------------------------------------


def local_axis(u: int, n: int, L: int, border: str) -> list[int]:
    """Positions of the local window along one axis (offsets -L//2 .. L-1-L//2)."""
    offsets = range(-(L // 2), L - L // 2)
    if border == "drop":
        return [u + d for d in offsets if 0 <= u + d < n]
    assert border == "shift"
    start = u - L // 2
    start = min(max(start, 0), max(n - L, 0))
    return list(range(start, start + min(L, n)))


def grid_axis(u: int, n: int, G: int) -> list[int]:
    """Stride lattice aligned with ``u``: ``u mod Omega + a*Omega``, ``a < G``, inside the map."""
    omega = max(1, n // G)
    r = u % omega
    return [r + a * omega for a in range(G) if r + a * omega < n]


def partition_axis(u: int, n: int, M: int) -> list[int]:
    """The node's own tile ``[M*floor(u/M), M*floor(u/M) + M)`` cut at the map border."""
    s = (u // M) * M
    return list(range(s, min(s + M, n)))


def axis_candidates(cset, u: int, n: int) -> list[int]:
    name = type(cset).__name__
    if name == "LocalWindow":
        return local_axis(u, n, cset.size, cset.border)
    if name == "GlobalGrid":
        return grid_axis(u, n, cset.size)
    if name == "WindowPartition":
        return partition_axis(u, n, cset.size)
    raise AssertionError(f"no reference for {name}")


def candidate_lists(cset, H: int, W: int) -> list[list[int]]:
    """Candidates of every node ``u*W + v`` (local ids), in row-major window order."""
    out = []
    for u in range(H):
        rows = axis_candidates(cset, u, H)
        for v in range(W):
            cols = axis_candidates(cset, v, W)
            out.append([a * W + b for a in rows for b in cols])
    return out


# ----------------------------------------------------------------------------
# features, similarity (eq. 7), scores (eqs. 3-5)
# ----------------------------------------------------------------------------


def node_features(x) -> list[list[list[float]]]:
    """``x`` (B, C, H, W) tensor -> ``feats[b][u*W+v] = [x[b, c, u, v] for c]`` (Python floats)."""
    xl = x.detach().double().tolist()
    B, C, H, W = len(xl), len(xl[0]), len(xl[0][0]), len(xl[0][0][0])
    return [[[xl[b][c][u][v] for c in range(C)] for u in range(H) for v in range(W)] for b in range(B)]


def cosine(a: list[float], b: list[float]) -> float:
    """Eq. (7); a zero vector has similarity 0 to everything (documented rule)."""
    dot = sum(p * q for p, q in zip(a, b))
    na = math.sqrt(sum(p * p for p in a))
    nb = math.sqrt(sum(q * q for q in b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return dot / (na * nb)


SOBEL_X = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
SOBEL_Y = [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]


def sobel_pixel(img: list[list[float]], u: int, v: int) -> tuple[float, float]:
    """``(S_x, S_y)`` at ``(u, v)`` of one channel, 3x3 Sobel, replicate padding."""
    H, W = len(img), len(img[0])
    sx = sy = 0.0
    for a in range(3):
        for b in range(3):
            p = img[min(max(u + a - 1, 0), H - 1)][min(max(v + b - 1, 0), W - 1)]
            sx += SOBEL_X[a][b] * p
            sy += SOBEL_Y[a][b] * p
    return sx, sy


def score_maps(x, score) -> list[list[float]]:
    """``scores[b][u*W+v]`` for ``score`` in ``"rms"`` (eq. 5), ``"mean"`` or ``None``."""
    xl = x.detach().double().tolist()
    out = []
    for img in xl:
        C, H, W = len(img), len(img[0]), len(img[0][0])
        s = []
        for u in range(H):
            for v in range(W):
                if score is None:
                    s.append(1.0)
                    continue
                mags2 = []
                for c in range(C):
                    sx, sy = sobel_pixel(img[c], u, v)
                    mags2.append(sx * sx + sy * sy)
                if score == "rms":
                    s.append(math.sqrt(sum(mags2) / C))
                elif score == "mean":
                    s.append(sum(math.sqrt(m) for m in mags2) / C)
                else:
                    raise AssertionError(score)
        out.append(s)
    return out


# ----------------------------------------------------------------------------
# quota (eq. 6), bisection (Algorithm 1), selectors
# ----------------------------------------------------------------------------


def quota(scores: list[float], avg_degree: float, n_cand: list[int]) -> tuple[list[float], list[int]]:
    """``q_i = N * avg * s_i / sum_k s_k`` (uniform if the sum is 0), ``d* = clip(round(q), 1, n_i)``."""
    N = len(scores)
    total = 0.0
    for s in scores:
        total += s
    q = [N * avg_degree * (s / total if total > 0 else 1.0 / N) for s in scores]
    d = [min(max(round(qi), 1), max(n, 1)) for qi, n in zip(q, n_cand)]  # round = half to even
    return q, d


def bisection(sims: list[float], target: int, iters: int, strict: bool = False) -> float:
    """GLIC Algorithm 1 for one node (initial mean capped at the maximum).

    ``strict=True`` counts ``S > theta`` instead of eq. (8)'s ``S >= theta``
    (a wrong variant, used only to show that a test can tell them apart).
    """
    lo, hi = min(sims), max(sims)
    theta = min(sum(sims) / len(sims), hi)
    for _ in range(iters):
        m = sum(1 for s in sims if (s > theta if strict else s >= theta))
        if m > target:
            lo = theta
        else:
            hi = theta
        theta = (lo + hi) / 2
    return theta


def adaptive_reference(x, cset, avg_degree: float, score, iters: int):
    """Full GLIC pipeline per node. Returns ``(edges, per-node dict of maps)``.

    ``edges`` is ``{target_global_id: [source_global_id, ...]}`` (candidate order);
    the maps are lists over global node ids.
    """
    B, C, H, W = x.shape
    N = H * W
    feats = node_features(x)
    cands = candidate_lists(cset, H, W)
    smaps = score_maps(x, score)
    edges = {}
    maps = defaultdict(list)
    for b in range(B):
        q, d = quota(smaps[b], avg_degree, [len(c) for c in cands])
        for i in range(N):
            sims = [cosine(feats[b][i], feats[b][j]) for j in cands[i]]
            theta = bisection(sims, d[i], iters)
            kept = [b * N + j for j, s in zip(cands[i], sims) if s >= theta]
            edges[b * N + i] = kept
            maps["scores"].append(smaps[b][i])
            maps["quota"].append(q[i])
            maps["target"].append(d[i])
            maps["threshold"].append(theta)
            maps["num_candidates"].append(len(cands[i]))
            maps["sims"].append(sims)
    return edges, maps


def topk_reference(x, cset, k: int, loop: bool = False):
    """``min(k, n_i)`` most similar candidates, ties by candidate order (GABIC eq. 7)."""
    B, C, H, W = x.shape
    N = H * W
    feats = node_features(x)
    cands = candidate_lists(cset, H, W)
    edges = {}
    for b in range(B):
        for i in range(N):
            cs = [j for j in cands[i] if loop or j != i]
            ranked = sorted(range(len(cs)), key=lambda t: (-cosine(feats[b][i], feats[b][cs[t]]), t))
            chosen = sorted(ranked[:k])  # back to candidate order
            edges[b * N + i] = [b * N + cs[t] for t in chosen]
    return edges


def keepall_reference(cset, B: int, H: int, W: int, loop: bool = True):
    N = H * W
    cands = candidate_lists(cset, H, W)
    return {b * N + i: [b * N + j for j in cands[i] if loop or j != i] for b in range(B) for i in range(N)}


def edges_by_target(edge_index, num_nodes: int) -> dict[int, list[int]]:
    """``(2, E)`` tensor -> ``{target: [sources in edge order]}`` with every node present."""
    out = {i: [] for i in range(num_nodes)}
    for j, i in edge_index.t().tolist():
        out[i].append(j)
    return out
