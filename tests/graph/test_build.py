"""``build_graph`` contract: batching, determinism, no gradient, degenerate maps, PyG interop, CSR."""

import pytest
import torch

from gnn_lic.graph import (
    AdaptiveDegree,
    BlockWindow,
    CSRGraph,
    GlobalGrid,
    KeepAll,
    LocalWindow,
    TopK,
    WindowPartition,
    build_graph,
    build_graphs,
    to_data,
)

from .bruteforce import adaptive_reference, edges_by_target, keepall_reference, topk_reference

RULES = [
    (LocalWindow(3), AdaptiveDegree(avg_degree=4, score="rms", iters=5)),
    (LocalWindow(4, border="drop"), AdaptiveDegree(avg_degree=3, score="mean")),
    (GlobalGrid(3), AdaptiveDegree(avg_degree=4)),
    (WindowPartition(3), TopK(4)),
    (LocalWindow(3), TopK(3, loop=True)),
    (GlobalGrid(2), KeepAll()),
]
IDS = [f"{c}-{s}" for c, s in RULES]


def _x(seed=0, B=3, C=4, H=6, W=7, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, C, H, W, generator=g, dtype=dtype)


@pytest.mark.parametrize("cset,sel", RULES, ids=IDS)
def test_batch_is_the_union_of_per_item_graphs(cset, sel):
    x = _x()
    B, C, H, W = x.shape
    N = H * W
    ei = build_graph(x, cset, sel)
    parts = [build_graph(x[b : b + 1], cset, sel) + b * N for b in range(B)]
    assert torch.equal(ei, torch.cat(parts, 1))
    # graphs of different batch items never connect
    assert torch.equal(ei[0] // N, ei[1] // N)


@pytest.mark.parametrize("cset,sel", RULES, ids=IDS)
def test_edge_index_format(cset, sel):
    for dtype in (torch.float32, torch.float64):
        x = _x(dtype=dtype)
        B, C, H, W = x.shape
        ei = build_graph(x, cset, sel)
        assert ei.dtype == torch.int64 and ei.dim() == 2 and ei.shape[0] == 2 and ei.shape[1] > 0
        assert int(ei.min()) >= 0 and int(ei.max()) < B * H * W
        # sorted by target, then by candidate (= row-major, i.e. ascending source id) order
        key = ei[1] * (B * H * W) + ei[0]
        assert bool((key[1:] > key[:-1]).all())  # also: no duplicate edges


@pytest.mark.parametrize("cset,sel", RULES, ids=IDS)
def test_deterministic(cset, sel):
    x = _x(1)
    a = build_graph(x, cset, sel)
    b = build_graph(x.clone(), cset, sel)
    fresh = type(cset)(**vars(cset))  # a new rule object with the same parameters
    c = build_graph(x, fresh, sel)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_memory_layout_does_not_matter():
    x = _x(12)
    for cset, sel in RULES:
        ref = build_graph(x, cset, sel)
        assert torch.equal(build_graph(x.to(memory_format=torch.channels_last), cset, sel), ref)
        wide = torch.cat([x, torch.randn_like(x)], 1)[:, : x.shape[1]]  # a non-contiguous view
        assert not wide.is_contiguous()
        assert torch.equal(build_graph(wide, cset, sel), ref)


def test_no_gradient_and_input_untouched():
    x = _x(2).requires_grad_(True)
    (x.square().sum()).backward()
    grad_before = x.grad.clone()
    x_before = x.detach().clone()
    with torch.enable_grad():
        ei, info = build_graph(x, LocalWindow(3), AdaptiveDegree(4), return_info=True)
    assert not ei.requires_grad and ei.grad_fn is None
    for t in (info.scores, info.quota, info.threshold, info.degree):
        assert not t.requires_grad
    assert torch.equal(x.grad, grad_before)
    assert torch.equal(x.detach(), x_before)


def test_matches_bruteforce_on_a_batch():
    """End-to-end on a batch of 2 (global ids b*H*W + u*W + v)."""
    x = _x(3, B=2, C=3, H=4, W=5)
    for cset, sel in RULES:
        ei = build_graph(x, cset, sel)
        if isinstance(sel, AdaptiveDegree):
            want = adaptive_reference(x, cset, sel.avg_degree, sel.score, sel.iters)[0]
        elif isinstance(sel, TopK):
            want = topk_reference(x, cset, sel.k, sel.loop)
        else:
            want = keepall_reference(cset, 2, 4, 5)
        assert edges_by_target(ei, 40) == want


def test_one_by_one_map():
    x = torch.randn(2, 3, 1, 1)
    for cset in (LocalWindow(8), GlobalGrid(16), WindowPartition(8), LocalWindow(3, border="drop")):
        ei, info = build_graph(x, cset, AdaptiveDegree(16), return_info=True)
        assert ei.tolist() == [[0, 1], [0, 1]]  # the self-loop is the only candidate
        assert info.num_candidates.tolist() == [[[1]], [[1]]]
        assert info.target_degree.tolist() == [[[1]], [[1]]]  # clip(round(16), 1, n_i = 1)
        ei = build_graph(x, cset, TopK(9))
        assert ei.shape == (2, 0) and ei.dtype == torch.int64  # no candidate but itself


def test_single_channel_map():
    """C = 1: S_ij = sign(x_i) sign(x_j); ties resolved by candidate order."""
    x = _x(4, B=2, C=1, H=5, W=5)
    for cset in (LocalWindow(3), GlobalGrid(2)):
        ei = build_graph(x, cset, TopK(3))
        assert edges_by_target(ei, 50) == topk_reference(x, cset, 3)
        ei = build_graph(x, cset, AdaptiveDegree(3))
        assert edges_by_target(ei, 50) == adaptive_reference(x, cset, 3, "rms", 5)[0]


def test_map_smaller_than_grid():
    x = _x(5, B=1, C=3, H=3, W=2)
    ei, info = build_graph(x, GlobalGrid(16), KeepAll(), return_info=True)
    assert bool((info.num_candidates == 6).all())  # the whole map
    assert edges_by_target(ei, 6) == {i: list(range(6)) for i in range(6)}


def test_zero_feature_map():
    """Zero vectors: similarity 0 to everything; zero scores -> uniform quotas."""
    x = torch.zeros(2, 3, 4, 4)
    ei, info = build_graph(x, LocalWindow(3), AdaptiveDegree(4), return_info=True)
    assert bool(torch.isfinite(info.quota).all()) and bool((info.quota == 4).all())
    assert bool((info.target_degree == 4).all())
    # all similarities equal -> Algorithm 1 keeps every candidate
    assert torch.equal(info.degree, info.num_candidates)
    ei = build_graph(x, LocalWindow(3), TopK(2))
    assert edges_by_target(ei, 32) == topk_reference(x, LocalWindow(3), 2)


def test_constant_feature_map():
    x = torch.ones(1, 4, 5, 5)  # normalised features are exactly (0.5, 0.5, 0.5, 0.5): S = 1
    ei, info = build_graph(x, LocalWindow(3), AdaptiveDegree(2), return_info=True)
    assert bool((info.target_degree == 2).all())
    assert torch.equal(info.degree, info.num_candidates)  # S all equal: all kept
    ei = build_graph(x, LocalWindow(3), TopK(2))
    assert edges_by_target(ei, 25) == topk_reference(x, LocalWindow(3), 2)
    assert edges_by_target(ei, 25)[12] == [6, 7]  # the first two candidates other than itself


def test_graph_info_fields():
    x = _x(6, B=2, H=4, W=5)
    ei, info = build_graph(x, LocalWindow(3), AdaptiveDegree(4), return_info=True)
    for t in (info.num_candidates, info.degree, info.scores, info.quota, info.target_degree, info.threshold):
        assert t.shape == (2, 4, 5)
    assert int(info.degree.sum()) == ei.shape[1]
    assert torch.equal(info.degree.flatten(), torch.bincount(ei[1], minlength=40))
    ei, info = build_graph(x, LocalWindow(3), TopK(4), return_info=True)
    assert info.scores is None and info.quota is None and info.target_degree is None and info.threshold is None
    assert torch.equal(info.degree.flatten(), torch.bincount(ei[1], minlength=40))


def test_candidates_cache_does_not_mix_shapes():
    cset = LocalWindow(3)
    for H, W in ((4, 5), (5, 4), (4, 5), (2, 7)):
        x = torch.randn(1, 2, H, W, dtype=torch.float64)
        assert edges_by_target(build_graph(x, cset, KeepAll()), H * W) == keepall_reference(cset, 1, H, W)


def test_large_candidate_tables_are_not_cached_and_stay_the_same(monkeypatch):
    from gnn_lic.graph import similarity

    monkeypatch.setattr(similarity, "_CACHE_MAX_BYTES", 40 * 9 - 1)  # a 4x10 map's 3x3 tables: one byte too many
    cset = LocalWindow(3)
    first, second = similarity.candidates(cset, 4, 10), similarity.candidates(cset, 4, 10)
    assert first is not second and torch.equal(first.valid_rows, second.valid_rows)
    small = similarity.candidates(cset, 2, 10)
    assert small is similarity.candidates(cset, 2, 10)
    x = torch.randn(1, 2, 4, 10, dtype=torch.float64)
    assert edges_by_target(build_graph(x, cset, KeepAll()), 40) == keepall_reference(cset, 1, 4, 10)


def test_csr_structure_is_the_pattern_without_a_values_array():
    x = torch.randn(1, 3, 5, 6)
    g = CSRGraph.from_edge_index(build_graph(x, LocalWindow(3), TopK(4)), 30)
    s, p = g.structure(), g.pattern()
    assert s.shape == p.shape and s.values().stride() == (0,) and s.values().untyped_storage().nbytes() == 4
    assert torch.equal(s.crow_indices(), p.crow_indices()) and torch.equal(s.col_indices(), p.col_indices())
    assert torch.equal(s.values(), p.values())


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        build_graph(torch.randn(3, 5, 5), LocalWindow(3), TopK(3))
    with pytest.raises(ValueError):
        build_graph(torch.randn(1, 3, 0, 5), LocalWindow(3), TopK(3))
    with pytest.raises(ValueError):
        build_graph(torch.randn(1, 3, 5, 0), GlobalGrid(2), AdaptiveDegree(4))
    with pytest.raises(TypeError):
        build_graph(torch.ones(1, 3, 4, 4, dtype=torch.long), LocalWindow(3), TopK(3))


@pytest.mark.parametrize("sel", [TopK(3), AdaptiveDegree(4)], ids=repr)
def test_zero_channels_raise_value_error(sel):
    with pytest.raises(ValueError):
        build_graph(torch.randn(1, 0, 5, 5), LocalWindow(3), sel)


def test_empty_batch_is_rejected_or_empty():
    try:
        ei = build_graph(torch.randn(0, 3, 5, 5), LocalWindow(3), TopK(3))
    except ValueError:
        return
    assert ei.shape == (2, 0) and ei.dtype == torch.int64


def test_to_data_validates():
    x = _x(7, B=2, C=3, H=3, W=4)
    ei = build_graph(x, LocalWindow(3), AdaptiveDegree(4))
    data = to_data(x, ei)
    data.validate(raise_on_error=True)
    assert data.num_nodes == 24 and torch.equal(data.edge_index, ei)
    for b in range(2):
        for u in range(3):
            for v in range(4):
                n = b * 12 + u * 4 + v
                assert torch.equal(data.x[n], x[b, :, u, v])
                assert data.pos[n].tolist() == [u, v]
                assert int(data.batch[n]) == b


def test_pyg_convs_accept_edge_index():
    from torch_geometric.nn import GATConv, GCNConv

    torch.manual_seed(8)
    x = _x(8, B=2, C=3, H=4, W=4)
    cset = LocalWindow(3)
    ei = build_graph(x, cset, TopK(4))
    feats = x.permute(0, 2, 3, 1).reshape(-1, 3)
    # GCN without normalisation/self-loops and with identity weights = sum over in-neighbours:
    # checks the source/target orientation against the brute-force neighbour sets
    gcn = GCNConv(3, 3, normalize=False, add_self_loops=False, bias=False).double()
    with torch.no_grad():
        gcn.lin.weight.copy_(torch.eye(3))
    out = gcn(feats, ei)
    want = topk_reference(x, cset, 4)
    ref = torch.stack([feats[want[i]].sum(0) for i in range(32)])
    torch.testing.assert_close(out, ref)
    gat = GATConv(3, 5, heads=2).double()
    out = gat(feats, ei)
    assert out.shape == (32, 10) and bool(torch.isfinite(out).all())
    out.sum().backward()
    assert all(p.grad is not None for p in gat.parameters())
    gcn2 = GCNConv(3, 6).double()
    assert gcn2(feats, ei).shape == (32, 6)


# ----------------------------------------------------------------------------
# CSRGraph
# ----------------------------------------------------------------------------


def _bruteforce_csr(src, dst, n):
    """Stable grouping of edges by target: (crow, col, row, perm)."""
    order = []
    for i in range(n):
        order += [e for e in range(len(dst)) if dst[e] == i]
    crow = [0]
    for i in range(n):
        crow.append(crow[-1] + sum(1 for t in dst if t == i))
    return crow, [src[e] for e in order], [dst[e] for e in order], order


def test_csr_round_trip_sorted():
    x = _x(9, B=2, C=3, H=4, W=4)
    ei = build_graph(x, LocalWindow(3), AdaptiveDegree(3))
    g = CSRGraph.from_edge_index(ei, 32)
    assert g.perm is None  # build_graph output is already in CSR order
    assert torch.equal(g.edge_index, ei)
    crow, col, row, _ = _bruteforce_csr(ei[0].tolist(), ei[1].tolist(), 32)
    assert g.crow.tolist() == crow and g.col.tolist() == col and g.row.tolist() == row
    assert g.num_nodes == 32 and g.num_edges == ei.shape[1]
    assert torch.equal(g.degree(), torch.bincount(ei[1], minlength=32))
    assert repr(g) == f"CSRGraph(num_nodes=32, num_edges={ei.shape[1]})"


def test_csr_round_trip_unsorted():
    g0 = torch.Generator().manual_seed(10)
    n = 9
    src = torch.randint(0, n, (30,), generator=g0)
    dst = torch.randint(0, n - 2, (30,), generator=g0)  # the last two nodes are isolated
    ei = torch.stack([src, dst])
    g = CSRGraph.from_edge_index(ei, n)
    crow, col, row, order = _bruteforce_csr(src.tolist(), dst.tolist(), n)
    assert g.crow.tolist() == crow and g.col.tolist() == col and g.row.tolist() == row
    assert g.perm is not None and g.perm.tolist() == order
    assert torch.equal(ei[:, g.perm], g.edge_index)
    assert g.degree().tolist()[-2:] == [0, 0]
    # num_nodes inferred from the largest id
    assert CSRGraph.from_edge_index(ei).num_nodes == int(ei.max()) + 1
    # dense pattern: A[i, j] counts edges j -> i
    dense = torch.zeros(n, n)
    for j, i in zip(src.tolist(), dst.tolist()):
        dense[i, j] += 1
    torch.testing.assert_close(g.pattern(torch.float32).to_dense(), dense)


def test_csr_transpose():
    g0 = torch.Generator().manual_seed(11)
    n = 8
    ei = torch.stack([torch.randint(0, n, (25,), generator=g0), torch.randint(0, n, (25,), generator=g0)])
    g = CSRGraph.from_edge_index(ei, n)
    crow_t, col_t, perm_t = g.transpose
    col, row = g.col.tolist(), g.row.tolist()
    # reversed graph: rows = sources, in stable CSR edge order
    want_perm = [e for j in range(n) for e in range(len(col)) if col[e] == j]
    assert perm_t.tolist() == want_perm
    assert col_t.tolist() == [row[e] for e in want_perm]
    want_crow = [0]
    for j in range(n):
        want_crow.append(want_crow[-1] + col.count(j))
    assert crow_t.tolist() == want_crow
    assert g.transpose[1] is col_t  # built once, cached


def test_csr_empty_and_invalid():
    g = CSRGraph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), 5)
    assert g.num_edges == 0 and g.crow.tolist() == [0] * 6
    with pytest.raises(ValueError):
        CSRGraph.from_edge_index(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        CSRGraph.from_edge_index(torch.tensor([[0, 5], [1, 2]]), 5)  # id 5 out of range
    with pytest.raises(ValueError):
        CSRGraph.from_edge_index(torch.tensor([[0, -1], [1, 2]]), 5)


def test_csr_relabelled_is_the_same_graph():
    g0 = torch.Generator().manual_seed(12)
    n = 9
    ei = torch.stack([torch.randint(0, n, (30,), generator=g0), torch.randint(0, n, (30,), generator=g0)])
    ei[1, ei[1] == 4] = 3  # node 4 has no in-edges
    order = torch.randperm(n, generator=g0)
    g = CSRGraph.from_edge_index(ei, n)
    with pytest.raises(ValueError, match="no node order"):
        g.relabelled()
    g = CSRGraph(g.crow, g.col, g.row, n, order=order)
    o, inv, r = g.relabelled()
    assert o is order and torch.equal(inv[order], torch.arange(n))
    # row p of the relabelled graph is row order[p] here, edges in the same order
    for p in range(n):
        i = int(order[p])
        mine = g.col[g.crow[i]:g.crow[i + 1]]
        theirs = r.col[r.crow[p]:r.crow[p + 1]]
        assert torch.equal(order[theirs], mine)
        assert bool((r.row[r.crow[p]:r.crow[p + 1]] == p).all())
    assert g.relabelled()[2] is r  # built once, cached
    with pytest.raises(ValueError, match="order must hold"):
        CSRGraph(g.crow, g.col, g.row, n, order=order[:-1])


def test_global_graphs_carry_their_block_order():
    x = torch.randn(2, 6, 20, 18, generator=torch.Generator().manual_seed(2))
    graphs = build_graphs(x, {"local": LocalWindow(4), "global": GlobalGrid(4)}, AdaptiveDegree(5))
    assert graphs["local"].order is None  # a local window is already close together in raster order
    order = graphs["global"].order
    N = 20 * 18
    assert torch.equal(order.sort().values, torch.arange(2 * N))
    assert bool((order[:N] < N).all())  # each image's nodes stay in that image
    # consecutive nodes of the order share one lattice (residue class): (u, v) mod (5, 4)
    u, v = (order[:N] // 18) % 5, (order[:N] % 18) % 4
    cls = u * 4 + v
    assert int((cls[1:] != cls[:-1]).sum()) == 5 * 4 - 1


@pytest.mark.parametrize("cset", [BlockWindow(4, 8), GlobalGrid(4), LocalWindow(5, border="drop"),
                                  BlockWindow(4, 8, group_quota=True)])
@pytest.mark.parametrize("batch", [1, 2])
def test_graph_built_in_chunks_of_blocks_is_the_same_graph(cset, batch, monkeypatch):
    """Large maps of a row-wise selector are built a few blocks of similarity rows at a time."""
    from gnn_lic.graph import build as build_module

    torch.manual_seed(0)
    x = torch.randn(batch, 8, 21, 19)
    selector = AdaptiveDegree(6)
    ref = build_graphs(x, {"g": cset}, selector)["g"]
    seen = []
    real = build_module._columns_by_chunks
    monkeypatch.setattr(build_module, "_columns_by_chunks", lambda *a: seen.append(a[-1]) or real(*a))
    for limit in (1, 2000, 10**4):
        monkeypatch.setattr(build_module, "GRAPH_CHUNK_BYTES", limit)
        g = build_graphs(x, {"g": cset}, selector)["g"]
        assert torch.equal(g.crow, ref.crow) and torch.equal(g.col, ref.col)
        assert (g.order is None) == (ref.order is None) and (g.order is None or torch.equal(g.order, ref.order))
    from gnn_lic.graph import _rowkernels

    if _rowkernels.enabled(x):  # the chunks need the compiled kernels; else the whole-map path runs
        assert len(seen) == 3 and seen[0] == 1
    else:
        assert not seen


@pytest.mark.parametrize("border", ["shift", "zero"])
def test_block_window_graphs_carry_their_query_block_order(border):
    """Each Q x Q query block's nodes follow one another (they share one window of keys); a zero node keeps
    the order but cannot be relabelled by it."""
    x = torch.randn(2, 6, 10, 13, generator=torch.Generator().manual_seed(4))
    graph = build_graphs(x, {"g": BlockWindow(4, 8, border=border)}, AdaptiveDegree(5))["g"]
    N = 10 * 13
    order = graph.order
    assert torch.equal(order.sort().values, torch.arange(2 * N))
    assert bool((order[:N] < N).all())
    u, v = order[:N] // 13, order[:N] % 13
    block = (u // 4) * 4 + v // 4  # 3 x 4 blocks (partial at the right and bottom edges)
    assert int((block[1:] != block[:-1]).sum()) == 3 * 4 - 1
    assert torch.equal(order[N:], order[:N] + N)
    if border == "zero":
        assert graph.num_cols == 2 * N + 1
        with pytest.raises(ValueError, match="zero node cannot be relabelled"):
            graph.relabelled()
    else:
        assert graph.relabelled()[2].num_edges == graph.num_edges
