"""The authors'-code rules of the graph API against brute-force references.

BlockWindow (query blocks sharing a window, three borders), quota groups,
relative-position indices, the blurred RMS-G score, the official bisection and
TopK's skip-first rule, each written here from its definition with loops.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gnn_lic.graph import (
    AdaptiveDegree,
    BlockWindow,
    GlobalGrid,
    TopK,
    blurred_rms_gradient,
    build_graph,
    build_graphs,
    candidates,
    degree_quota,
)


def block_axis(u: int, n: int, Q: int, S: int, border: str) -> list:
    """Window positions of the block of ``u`` along one axis (``None`` = zero padding)."""
    start = (u // Q) * Q - (S - Q) // 2
    if border == "shift":
        if S >= n:
            return list(range(n))
        start = min(max(start, 0), n - S)
    out = []
    for p in range(start, start + S):
        inside = 0 <= p < n
        if inside:
            out.append(p)
        elif border == "zero":
            out.append(None)
    return out


@pytest.mark.parametrize("border", ["shift", "drop", "zero"])
@pytest.mark.parametrize("H,W", [(16, 16), (19, 13), (5, 24), (1, 1)])
def test_block_window_candidates(border, H, W):
    cs = BlockWindow(4, 8, border=border)
    c = candidates(cs, H, W)
    ids = torch.where(c.valid, c.index, torch.full_like(c.index, -7))
    zero = None if c.zero is None else c.zero[c.row_of_node]
    for u in range(H):
        for v in range(W):
            i = u * W + v
            want = []
            for r in block_axis(u, H, 4, 8, border):
                for s in block_axis(v, W, 4, 8, border):
                    want.append(None if r is None or s is None else r * W + s)
            got = []
            for k in range(ids.shape[1]):
                if zero is not None and zero[i, k]:
                    got.append(None)
                elif ids[i, k] >= 0:
                    got.append(int(ids[i, k]))
            assert got == want, (u, v)
            assert int(c.num_candidates[i]) == len(want)


def test_block_window_shares_candidates_within_a_block():
    c = candidates(BlockWindow(8, 16, border="zero"), 32, 40)
    idx = c.index.view(32, 40, -1)
    assert torch.equal(idx[0, 0], idx[7, 7]) and not torch.equal(idx[0, 0], idx[8, 0])
    assert c.index.shape[1] == 256 and int(c.num_candidates.min()) == 256


def test_quota_groups_and_coords():
    H, W = 32, 48
    c = candidates(BlockWindow(8, 16, group_quota=True), H, W)
    for u, v in [(0, 0), (9, 17), (31, 47)]:
        assert int(c.groups[u * W + v]) == (u // 8) * (W // 8) + v // 8
        assert int(c.coords[0][u * W + v]) == u % 8 and int(c.coords[1][u * W + v]) == v % 8
    g = candidates(GlobalGrid(16, groups=8), H, W)
    for u, v in [(0, 0), (9, 17), (31, 47)]:
        assert int(g.groups[g.row_of_node.new_tensor(u * W + v)]) == (u % (H // 8)) * (W // 8) + v % (W // 8)
        assert int(g.coords[0][u * W + v]) == u // (H // 8)
    assert candidates(BlockWindow(8, 16), H, W).groups is None
    assert candidates(GlobalGrid(16), H, W).groups is None


def rel_index(qy, qx, ky, kx, Q, S):
    side = Q + S - 1
    return (((ky - qy) - (Q - 1)) * side + ((kx - qx) - (Q - 1))) % (side * side)


@pytest.mark.parametrize("cs", [BlockWindow(4, 8, border="zero"), GlobalGrid(8, groups=4)])
def test_relative_position_index(cs):
    H, W = 16, 24
    x = torch.randn(1, 6, H, W)
    g = build_graphs(x, {"g": cs}, AdaptiveDegree(10), positions=True)["g"]
    Q, S = cs.position_window
    for e in range(0, g.num_edges, 7):
        i, j = int(g.row[e]), int(g.col[e])
        u, v = divmod(i, W)
        if isinstance(cs, BlockWindow):
            qy, qx = u % Q, v % Q
            rows, cols = block_axis(u, H, Q, S, "zero"), block_axis(v, W, Q, S, "zero")
        else:
            qy, qx = u // (H // Q), v // (W // Q)
            rows = [u % (H // S) + a * (H // S) for a in range(S)]
            cols = [v % (W // S) + b * (W // S) for b in range(S)]
        if j == H * W:  # the zero node: its slot is not recoverable from the id; check the range
            assert 0 <= int(g.rel_index[e]) < (Q + S - 1) ** 2
            continue
        ju, jv = divmod(j, W)
        assert int(g.rel_index[e]) == rel_index(qy, qx, rows.index(ju), cols.index(jv), Q, S)


def test_zero_padded_candidates_become_the_zero_node():
    x = torch.randn(2, 4, 8, 8)
    # keep everything: every node sees its whole 16x16 window, 192 of it padding
    g = build_graphs(x, {"g": BlockWindow(8, 16, border="zero")}, TopK(256, loop=True))["g"]
    assert g.num_cols == 2 * 64 + 1
    deg = g.degree()
    assert int(deg.min()) == int(deg.max()) == 256
    assert int((g.col == 128).sum()) == 2 * 64 * (256 - 64)
    assert "zero node" in repr(g)


def reference_blurred_score(x, pull=1.5, sigma=0.8):
    """Authors' score from its description: /4 Sobel, eps 1e-9, 3-tap Gaussian, RMS, mean pull."""
    C = x.shape[1]
    kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=x.dtype) / 4
    ky = kx.t().contiguous()
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(xp, kx.expand(C, 1, 3, 3), groups=C)
    gy = F.conv2d(xp, ky.expand(C, 1, 3, 3), groups=C)
    mag = torch.sqrt(gx**2 + gy**2 + 1e-9)
    t = torch.exp(-0.5 * ((torch.arange(3, dtype=x.dtype) - 1) / sigma) ** 2)
    t = t / t.sum()
    mag = F.conv2d(F.pad(mag, (1, 1, 0, 0), mode="replicate"), t.view(1, 1, 1, 3).expand(C, 1, 1, 3), groups=C)
    mag = F.conv2d(F.pad(mag, (0, 0, 1, 1), mode="replicate"), t.view(1, 1, 3, 1).expand(C, 1, 3, 1), groups=C)
    heat = mag.pow(2).mean(1).sqrt()
    mu = heat.mean(dim=(-2, -1), keepdim=True)
    return mu + (heat - mu) / pull


def test_blurred_score_matches_reference():
    x = torch.randn(2, 5, 9, 7, dtype=torch.float64)
    torch.testing.assert_close(blurred_rms_gradient(x), reference_blurred_score(x), rtol=1e-12, atol=1e-12)
    flat = torch.ones(1, 3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(blurred_rms_gradient(flat), torch.full((1, 4, 4), math.sqrt(1e-9), dtype=torch.float64))


def test_group_quota_matches_reference():
    torch.manual_seed(0)
    s = torch.rand(2, 12, dtype=torch.float64)
    groups = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1, 2])
    n = torch.full((12,), 5)
    q, t = degree_quota(s, 4.0, n, groups=groups, rounding=False)
    for b in range(2):
        for i in range(12):
            members = [j for j in range(12) if groups[j] == groups[i]]
            want = float(s[b, i]) / sum(float(s[b, j]) for j in members) * len(members) * 4.0
            assert abs(float(q[b, i]) - want) < 1e-12
            assert abs(float(t[b, i]) - min(max(want, 1.0), 5.0)) < 1e-12
    assert t.dtype == torch.float64  # real-valued targets
    _, rounded = degree_quota(s, 4.0, n)
    assert rounded.dtype == torch.long


def official_bisection(row, quota, iters=5):
    """The authors' search as described: [wall, lo, hi] = [mean, min, 1], strict counts."""
    wall, lo, hi = sum(row) / len(row), min(row), 1.0
    for _ in range(iters):
        count = sum(1 for s in row if s > wall)
        if count > quota:
            lo, wall = wall, (wall + hi) / 2
        else:
            hi, wall = wall, (wall + lo) / 2
    return [s > wall for s in row]


def test_official_selection_matches_reference():
    torch.manual_seed(1)
    H, W = 16, 16
    x = torch.randn(1, 6, H, W, dtype=torch.float64)
    cs = BlockWindow(8, 16, border="zero", group_quota=True)
    sel = AdaptiveDegree(20, score="rms-official", bisection="official")
    ei, info = build_graph(x, cs, sel, return_info=True)
    c = info.candidates
    xn = F.normalize(x[0].flatten(1).t(), dim=-1)
    edges = set(zip(ei[1].tolist(), ei[0].tolist()))
    quota = info.target_degree.flatten()
    for i in range(0, H * W, 5):
        ids = c.index[i].tolist()
        zero = c.zero[c.row_of_node[i]].tolist()
        row = [0.0 if z else float(xn[i] @ xn[j]) for j, z in zip(ids, zero)]
        keep = official_bisection(row, float(quota[i]))
        want = {(i, H * W if z else j) for j, z, k in zip(ids, zero, keep) if k}
        got = {e for e in edges if e[0] == i}
        assert got == want, i


def test_official_quota_is_group_normalised_and_unrounded():
    torch.manual_seed(2)
    x = torch.randn(1, 8, 16, 16)
    _, info = build_graph(x, BlockWindow(8, 16, border="zero", group_quota=True),
                          AdaptiveDegree(64, score="rms-official", bisection="official"), return_info=True)
    q = info.quota.view(2, 8, 2, 8).permute(0, 2, 1, 3).reshape(4, 64)
    torch.testing.assert_close(q.sum(1), torch.full((4,), 64.0 * 64))
    assert not torch.equal(info.target_degree, info.target_degree.round())


def test_topk_skip_first_drops_the_most_similar():
    x = torch.randn(1, 5, 4, 4, dtype=torch.float64)
    from gnn_lic.graph import WindowPartition

    ei = build_graph(x, WindowPartition(4), TopK(3, skip_first=True))
    xn = F.normalize(x[0].flatten(1).t(), dim=-1)
    sim = xn @ xn.t()
    for i in range(16):
        order = sorted(range(16), key=lambda j: -float(sim[i, j]))
        assert order[0] == i  # the node itself is its own nearest
        assert sorted(ei[0][ei[1] == i].tolist()) == sorted(order[1:4])
    with pytest.raises(ValueError):
        TopK(3, loop=True, skip_first=True)


def official_threshold(row, quota, iters=5):
    """The authors' search; also whether a wall it counted against equalled a similarity."""
    wall, lo, hi = sum(row) / len(row), min(row), 1.0
    tie = False
    for _ in range(iters):
        tie |= wall in row
        if sum(1 for s in row if s > wall) > quota:
            lo, wall = wall, (wall + hi) / 2
        else:
            hi, wall = wall, (wall + lo) / 2
    return wall, tie


@pytest.mark.parametrize("iters", [1, 2, 5])
def test_official_bisection_with_exact_ties(iters):
    """Dyadic similarities hit the walls exactly: the counts must use ``>``."""
    from gnn_lic.graph import bisection_threshold

    g = torch.Generator().manual_seed(3)
    rows = (torch.randint(-4, 3, (400, 8), generator=g) / 4).double()  # max <= 0.5: the upper bound 1 matters
    quota = torch.randint(1, 8, (400,), generator=g).double()
    theta = bisection_threshold(rows, None, quota, iters=iters, rule="official")
    ref = [official_threshold(r.tolist(), float(q), iters) for r, q in zip(rows, quota)]
    assert torch.equal(theta, torch.tensor([w for w, _ in ref], dtype=torch.float64))
    assert sum(t for _, t in ref) > 20  # the ties the rule is about do occur
