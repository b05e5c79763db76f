"""The compiled row loops (numba) give exactly the graphs of the pure-PyTorch path.

Every other graph test already runs on both paths (``conftest.py``); these tests
compare the two paths directly, entry by entry, on inputs where the selection is
not trivial: batches, padded blocks, invalid candidates, both float types.
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
    _rowkernels,
)

needs_numba = pytest.mark.skipif(_rowkernels.numba is None, reason="numba is not installed")

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


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cset", CSETS, ids=repr)
def test_compiled_equals_torch(cset, shape, dtype):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)
    for sel in SELECTORS:
        (ei_c, info_c), (ei_t, info_t) = _both(lambda: build_graph(x, cset, sel, return_info=True))
        assert torch.equal(ei_c, ei_t), f"{cset} {sel} {shape}"
        assert torch.equal(info_c.degree, info_t.degree)
        assert torch.equal(info_c.threshold, info_t.threshold)
        assert torch.equal(info_c.target_degree, info_t.target_degree)


@needs_numba
def test_compiled_equals_torch_on_ties_and_zero_vectors():
    """One-hot features: similarities are exactly 0 or 1, so thresholds hit ties."""
    g = torch.Generator().manual_seed(3)
    label = torch.randint(-1, 4, (2, 1, 9, 10), generator=g)
    x = torch.zeros(2, 4, 9, 10).scatter_(1, label.clamp_min(0), 1.0) * (label >= 0)
    for cset in CSETS:
        (a, _), (b, _) = _both(lambda: build_graph(x, cset, AdaptiveDegree(5), return_info=True))
        assert torch.equal(a, b), cset


@needs_numba
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


def test_build_graphs_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty batch"):
        build_graphs(torch.randn(0, 3, 4, 4), {"g": LocalWindow(3)}, AdaptiveDegree(4))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        build_graphs(torch.randn(3, 4, 4), {"g": LocalWindow(3)}, AdaptiveDegree(4))


def test_switch(monkeypatch):
    previous = _rowkernels.set_enabled(False)
    try:
        assert not _rowkernels.enabled(torch.zeros(2, 2))
        if _rowkernels.numba is None:
            with pytest.raises(ImportError):
                _rowkernels.set_enabled(True)
        else:
            _rowkernels.set_enabled(True)
            assert _rowkernels.enabled(torch.zeros(2, 2))
            assert not _rowkernels.enabled(torch.zeros(2, 2, dtype=torch.float16))
    finally:
        _rowkernels.set_enabled(previous)


@needs_numba
def test_jit_falls_back_without_a_cache_directory(monkeypatch):
    calls = []

    def fake_njit(**kwargs):
        calls.append(kwargs)
        if kwargs.get("cache"):
            raise RuntimeError("cannot cache function: no locator available")
        return lambda fn: fn

    monkeypatch.setattr(_rowkernels.numba, "njit", fake_njit)

    def f():
        return 1

    assert _rowkernels._jit(f) is f
    assert calls == [{"cache": True, "nogil": True}, {"nogil": True}]
