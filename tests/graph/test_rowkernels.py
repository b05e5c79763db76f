"""The compiled kernels (numba) against the pure-PyTorch path.

Every other graph test already runs on both paths (``conftest.py``); these tests
compare the two paths directly, on inputs where the selection is not trivial:
batches, padded blocks, invalid candidates, both float types.

- The row loops (bisection, CSR output) give exactly the PyTorch graphs from the
  same similarities and scores: compared entry by entry.
- The feature passes (RMS-G score, unit features) and the local-window dot
  products sum in their own order: compared with float tolerances.
"""

import pytest
import torch

from gnn_lic.graph import (
    AdaptiveDegree,
    CSRGraph,
    GlobalGrid,
    KeepAll,
    LocalWindow,
    TopK,
    WindowPartition,
    build_graph,
    build_graphs,
    candidates,
    row_similarity,
    rms_gradient,
    unit_features,
    _rowkernels,
)

from gnn_lic.graph import build as build_module
from gnn_lic.graph.sparse import stable_key_order


CSETS = [
    LocalWindow(8),
    LocalWindow(5, border="drop"),
    LocalWindow(4, block=3),
    GlobalGrid(4),
    GlobalGrid(16),
    WindowPartition(4),
]
SELECTORS = [AdaptiveDegree(6), AdaptiveDegree(16, score=None), AdaptiveDegree(3, score="entropy", iters=3)]
SHAPES = [(1, 8, 13, 11), (2, 4, 6, 7), (1, 1, 1, 1), (3, 5, 1, 9), (2, 16, 24, 20)]


def _both(fn):
    out = {}
    for flag in (True, False):
        previous = _rowkernels.set_enabled(flag)
        try:
            out[flag] = fn()
        finally:
            _rowkernels.set_enabled(previous)
    return out[True], out[False]


def _torch_only(fn):
    """``fn`` run with the compiled kernels off."""

    def wrapped(*args):
        previous = _rowkernels.set_enabled(False)
        try:
            return fn(*args)
        finally:
            _rowkernels.set_enabled(previous)

    return wrapped


@pytest.fixture
def torch_features(monkeypatch):
    """Compiled row loops fed the PyTorch path's features, scores and similarities."""
    monkeypatch.setattr(_rowkernels, "rms_gradient", _torch_only(rms_gradient))
    monkeypatch.setattr(_rowkernels, "unit_features", _torch_only(unit_features))
    monkeypatch.setattr(build_module, "row_similarity", _torch_only(row_similarity))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cset", CSETS, ids=repr)
def test_row_loops_equal_torch(cset, shape, dtype, torch_features):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)
    for sel in SELECTORS:
        (ei_c, info_c), (ei_t, info_t) = _both(lambda: build_graph(x, cset, sel, return_info=True))
        assert torch.equal(ei_c, ei_t), f"{cset} {sel} {shape}"
        assert torch.equal(info_c.degree, info_t.degree)
        assert torch.equal(info_c.threshold, info_t.threshold)
        assert torch.equal(info_c.target_degree, info_t.target_degree)


def test_row_loops_equal_torch_on_ties_and_zero_vectors(torch_features):
    """One-hot features: similarities are exactly 0 or 1, so thresholds hit ties."""
    g = torch.Generator().manual_seed(3)
    label = torch.randint(-1, 4, (2, 1, 9, 10), generator=g)
    x = torch.zeros(2, 4, 9, 10).scatter_(1, label.clamp_min(0), 1.0) * (label >= 0)
    for cset in CSETS:
        (a, _), (b, _) = _both(lambda: build_graph(x, cset, AdaptiveDegree(5), return_info=True))
        assert torch.equal(a, b), cset


def test_bisection_threshold_compiled_equals_torch_with_invalid_entries():
    from gnn_lic.graph import bisection_threshold

    g = torch.Generator().manual_seed(0)
    sim = torch.rand(50, 12, generator=g) * 2 - 1
    valid = torch.rand(50, 12, generator=g) > 0.3
    valid[0] = False  # a row without candidates
    target = torch.randint(1, 12, (50,), generator=g)
    a, b = _both(lambda: bisection_threshold(sim, valid, target, iters=6))
    assert torch.equal(a, b)
    # the compiled loop also counts the final degrees: valid entries >= theta only
    from gnn_lic.graph.selectors import _bisection

    theta, degree, _ = _both(lambda: _bisection(sim, valid, target, 6))[0]
    assert torch.equal(degree, ((sim >= theta.unsqueeze(-1)) & valid).sum(-1))
    assert degree[0] == 0


def test_build_graphs_matches_build_graph_and_csr():
    """The CSR graphs the blocks consume are exactly the edge_index of build_graph."""
    x = torch.randn(2, 6, 11, 9, generator=torch.Generator().manual_seed(1))
    sel = AdaptiveDegree(7)
    csets = {"local": LocalWindow(4), "global": GlobalGrid(3)}
    graphs, infos = build_graphs(x, csets, sel, return_info=True)
    for name, cset in csets.items():
        ei, info = build_graph(x, cset, sel, return_info=True)
        g = graphs[name]
        assert torch.equal(g.edge_index, ei)
        ref = CSRGraph.from_edge_index(ei, 2 * 11 * 9)
        assert ref.perm is None  # build_graph's edges are already in CSR order
        assert torch.equal(g.crow, ref.crow) and torch.equal(g.row, ref.row)
        assert torch.equal(infos[name].degree, info.degree)
        assert torch.equal(g.degree().view(2, 11, 9), info.degree)
    # the window graph of GABIC goes through the mask path
    knn = build_graphs(x, {"w": WindowPartition(4)}, TopK(5))["w"]
    assert torch.equal(knn.edge_index, build_graph(x, WindowPartition(4), TopK(5)))
    assert torch.equal(build_graphs(x, {"w": WindowPartition(4)}, KeepAll())["w"].edge_index,
                       build_graph(x, WindowPartition(4), KeepAll()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k, first", [(1, 0), (5, 0), (10, 1), (17, 0), (17, 1), (3, 3)])
def test_top_rows_match_a_stable_sort(k, first, dtype):
    """TopK's compiled selection keeps exactly the places a stable descending sort gives,
    on rows full of ties, -inf (not a candidate) and NaN."""
    g = torch.Generator().manual_seed(k + first)
    sim = torch.randint(-3, 4, (2, 40, 17), generator=g).to(dtype) / 4  # few values: many ties
    sim[0, :5] = float("-inf")
    sim[1, 3, ::2] = float("nan")
    sim[1, 7] = float("nan")
    sim[1, 9, 4:] = float("-inf")
    order = torch.sort(sim, dim=-1, descending=True, stable=True).indices[..., first:k]
    want = torch.zeros(sim.shape, dtype=torch.bool).scatter_(-1, order, True)
    got = _rowkernels.top_rows(sim, k, first)
    assert got.shape == sim.shape and torch.equal(got, want)
    assert (got.sum(-1) == max(0, k - first)).all()
    # TopK on both paths gives the same graph from the same similarities
    x = torch.randn(2, 6, 8, 8, generator=g, dtype=dtype)
    for sel in (TopK(min(k, 15)), TopK(min(k, 14), skip_first=True)):
        a, b = _both(lambda: build_graph(x, WindowPartition(4), sel))
        assert torch.equal(a, b)


def test_build_graphs_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty batch"):
        build_graphs(torch.randn(0, 3, 4, 4), {"g": LocalWindow(3)}, AdaptiveDegree(4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        build_graphs(torch.randn(3, 4, 4), {"g": LocalWindow(3)}, AdaptiveDegree(4))


def test_switch(monkeypatch):
    previous = _rowkernels.set_enabled(False)
    try:
        assert not _rowkernels.enabled(torch.zeros(2, 2))
        _rowkernels.set_enabled(True)
        assert _rowkernels.enabled(torch.zeros(2, 2))
        assert not _rowkernels.enabled(torch.zeros(2, 2, dtype=torch.float16))
    finally:
        _rowkernels.set_enabled(previous)


FEATURE_SHAPES = [(1, 192, 16, 24), (2, 5, 7, 9), (1, 3, 1, 6), (2, 4, 5, 1), (1, 1, 1, 1), (3, 2, 2, 2)]


@pytest.mark.parametrize("compiled_on", [True, False])
def test_graphs_leave_a_channels_last_map_unchanged(compiled_on):
    """A channels-last map's transposed node view is already contiguous: normalising it in place (the
    PyTorch path once did) changed the caller's map, and every layer after the graph read wrong features."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 8, 8, generator=g)
    xcl = x.contiguous(memory_format=torch.channels_last)
    previous = _rowkernels.set_enabled(compiled_on)
    try:
        assert torch.equal(unit_features(xcl), unit_features(x))
        graphs = build_graphs(xcl, {"window": WindowPartition(4), "local": LocalWindow(4, block=2)}, AdaptiveDegree(5))
    finally:
        _rowkernels.set_enabled(previous)
    assert torch.equal(xcl, x) and graphs["window"].num_nodes == 128


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", FEATURE_SHAPES)
def test_feature_passes_match_torch(shape, dtype, compiled_on):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g, dtype=dtype) * torch.rand(shape[0], 1, shape[2], shape[3], generator=g, dtype=dtype)
    x[..., 0, 0] = 0  # a zero vector: unit features 0, as F.normalize gives
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for fn in (rms_gradient, unit_features):
        got, want = _both(lambda: fn(x))
        assert got.dtype == want.dtype == dtype and got.shape == want.shape
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, **tol)
    assert torch.equal(unit_features(x)[:, 0], torch.zeros(shape[0], shape[1], dtype=dtype))
    # any input layout and autograd state: the compiled passes' result is a detached function of the values
    xt = x.transpose(2, 3).contiguous().transpose(2, 3).requires_grad_()
    xcl = x.contiguous(memory_format=torch.channels_last).requires_grad_()  # unit features: the row-by-row kernel
    for fn in (rms_gradient, unit_features):
        for other in (xt, xcl):
            torch.testing.assert_close(fn(other), fn(x), rtol=0, atol=0)
            assert not fn(other).requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size, block, shape", [(8, None, (1, 192, 20, 27)), (8, None, (2, 5, 13, 11)),
                                                 (5, None, (1, 3, 3, 17)), (4, 3, (1, 4, 6, 7)),
                                                 (8, None, (1, 2, 1, 1)), (3, 2, (2, 3, 5, 4))])
def test_local_window_products_match_torch(size, block, shape, dtype):
    cset = LocalWindow(size, block=block)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)
    xn = unit_features(x)
    cands = candidates(cset, *shape[2:])
    assert cands.window == (size, *shape[2:])
    got, want = _both(lambda: row_similarity(xn, cands))
    assert got.shape == want.shape
    real = cands.rows >= 0
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[:, real], want[:, real], **tol)
    assert not got[:, ~real].any()  # padding rows are 0
    # the drop border and other rules keep the generic path
    assert candidates(LocalWindow(size, border="drop"), *shape[2:]).window is None
    assert candidates(GlobalGrid(4), *shape[2:]).window is None


def test_compiled_graphs_match_torch_graphs():
    """End to end, the two paths' features differ only by rounding, so on random maps
    (no similarity within rounding of a threshold) the graphs are the same."""
    x = torch.randn(2, 32, 24, 20, generator=torch.Generator().manual_seed(5))
    csets = {"local": LocalWindow(8), "global": GlobalGrid(8)}
    got, want = _both(lambda: build_graphs(x, csets, AdaptiveDegree(16), return_info=True))
    for name in csets:
        assert torch.equal(got[0][name].edge_index, want[0][name].edge_index)
        torch.testing.assert_close(got[1][name].threshold, want[1][name].threshold, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1][name].scores, want[1][name].scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposed_values_gather_exactly(dtype):
    g = torch.Generator().manual_seed(3)
    n, E = 37, 70_000  # more edges than one chunk of the parallel loop
    dst = torch.randint(0, n, (E,), generator=g)
    src = torch.randint(0, n, (E,), generator=g)
    graph = CSRGraph.from_edge_index(torch.stack([src, dst]), num_nodes=n)
    values = torch.randn(3, E, generator=g, dtype=dtype)
    expected = values[:, graph.transpose[2]]
    compiled_out = graph.transposed_values(values)
    assert compiled_out.dtype == dtype and torch.equal(compiled_out, expected)
    previous = _rowkernels.set_enabled(False)
    try:
        assert torch.equal(graph.transposed_values(values), expected)
    finally:
        _rowkernels.set_enabled(previous)
    # the transposed order lists the edges by source: each source's edge values together, in row order
    assert torch.equal(graph.col[graph.transpose[2]], torch.sort(graph.col, stable=True).values)


def test_stable_key_order_is_a_stable_argsort():
    g = torch.Generator().manual_seed(5)
    for n, E in [(7, 0), (7, 1), (300, 20_000), (1, 50)]:
        keys = torch.randint(0, n, (E,), generator=g)
        assert torch.equal(stable_key_order(keys, n), torch.argsort(keys, stable=True))
    with pytest.raises(ValueError, match="keys"):
        stable_key_order(torch.tensor([0, 3]), 3)
    # the graph's transpose uses it, and equals the sorted order on both paths
    graph = CSRGraph.from_edge_index(torch.randint(0, 40, (2, 900), generator=g), num_nodes=40)
    compiled_t = graph.transpose
    previous = _rowkernels.set_enabled(False)
    try:
        graph._transpose = None
        torch_t = graph.transpose
    finally:
        _rowkernels.set_enabled(previous)
    assert all(torch.equal(a, b) for a, b in zip(compiled_t, torch_t))
