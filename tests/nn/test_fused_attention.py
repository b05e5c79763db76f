"""The compiled sparse attention under autograd (gnn_lic.nn.fused_attention) against the batched path in float64."""

import math

import pytest
import torch

from gnn_lic import compiled
from gnn_lic.graph.sparse import CSRGraph
from gnn_lic.nn import functional
from gnn_lic.nn.fused_attention import FusedAttention, fused_attention_fits
from gnn_lic.nn.gate import exp2_neg

needs_compiled = pytest.mark.skipif(not compiled.enabled(), reason="the fused attention is compiled loops")


def _graph(n, max_degree, seed, zero_node=False):
    """Random in-neighbours (repeats allowed), some rows without edges; with ``zero_node`` a source ``n``."""
    gen = torch.Generator().manual_seed(seed)
    degree = torch.randint(0, max_degree + 1, (n,), generator=gen)
    degree[::5] = 0
    dst = torch.repeat_interleave(torch.arange(n), degree)
    m = n + 1 if zero_node else n
    src = torch.randint(0, m, (dst.numel(),), generator=gen)
    crow = torch.cat([torch.zeros(1, dtype=torch.long), degree.cumsum(0)])
    return CSRGraph(crow, src, dst, n, num_cols=m)


def _heads(H, n, m, d, tau, seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(H, n, d, generator=gen), dim=-1) * tau
    k = torch.nn.functional.normalize(torch.randn(H, m, d, generator=gen), dim=-1)
    v = torch.randn(H, m, d + 1, generator=gen)
    return q, k, v


def _run(graph, q, k, v, bound, weights, fused):
    q, k, v = (t.clone().requires_grad_(True) for t in (q, k, v))
    if fused:
        out = FusedAttention.apply(graph, q, k, v, bound)
    else:  # the batched path (float64 here, which the fused path does not take)
        out = functional.sparse_attention(graph, q, k, v, logit_bound=bound)
    (out * weights).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


@needs_compiled
@pytest.mark.parametrize("tau, bounded, zero_node", [(10.0, True, False), (10.0, False, False), (200.0, True, False),
                                                      (5.0, True, True), (30.0, False, True)])
def test_fused_attention_is_the_batched_path(tau, bounded, zero_node):
    """Output and the gradients of q, k, v against the batched path in float64: with and without the logit
    bound, rows that underflow under it (tau 200: logits down to -2 tau), rows without edges, a zero node."""
    H, n, d = 3, 40, 6
    graph = _graph(n, 9, seed=1, zero_node=zero_node)
    q, k, v = _heads(H, n, graph.num_cols, d, tau, seed=2)
    bound = torch.full((H,), tau) if bounded else None
    weights = torch.randn(H, n, d + 1, generator=torch.Generator().manual_seed(3))
    have = _run(graph, q, k, v, bound, weights, fused=True)
    want = _run(graph, q.double(), k.double(), v.double(), None if bound is None else bound.double(),
                weights.double(), fused=False)
    for a, b in zip(have, want):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * b.abs().max().item())
    assert bool((have[0][:, ::5] == 0).all())  # rows without edges give 0
    # the check can fail: other values give other gradients
    other = _run(graph, q, k, v.flip(1), bound, weights, fused=True)
    assert not torch.allclose(other[1].double(), want[1], atol=1e-3)


@needs_compiled
def test_sparse_attention_takes_the_fused_path_where_it_fits(monkeypatch):
    graph = _graph(12, 4, seed=4)
    q, k, v = (t.requires_grad_(True) for t in _heads(2, 12, 12, 3, 10.0, seed=5))
    calls = []

    class Counted(FusedAttention):
        @staticmethod
        def forward(ctx, *args):
            calls.append(1)
            return FusedAttention.forward(ctx, *args)

    monkeypatch.setattr(functional, "FusedAttention", Counted)
    functional.sparse_attention(graph, q, k, v, logit_bound=torch.full((2,), 10.0))
    assert calls == [1]
    bias = torch.zeros(2, graph.num_edges, requires_grad=True)
    functional.sparse_attention(graph, q, k, v, edge_bias=bias)  # per-edge terms: the batched path
    functional.sparse_attention(graph, q.double(), k.double(), v.double())
    with torch.no_grad():
        functional.sparse_attention(graph, q, k, v)
    assert calls == [1]
    assert not fused_attention_fits(q, k, v, bias) and not fused_attention_fits(q.double(), k, v, None)
    previous = compiled.set_enabled(False)
    try:
        assert not fused_attention_fits(q, k, v, None)
    finally:
        compiled.set_enabled(previous)


@needs_compiled
def test_exp2_neg_is_within_float_rounding():
    """The vectorisable 2^-v of the fused kernels against the exact power, over its whole range."""
    for v in [0.0, 1e-7, 0.5, 1.0, 1.999, 7.25, 31.5, 64.0, 100.3, 125.9]:
        v32 = torch.tensor(v, dtype=torch.float32).numpy()[()]
        want, have = 2.0 ** -float(v32), float(exp2_neg(v32))
        assert abs(have / want - 1) < 3e-7, v
    assert math.isclose(float(exp2_neg(torch.tensor(3.0).numpy()[()])), 0.125, rel_tol=0, abs_tol=1e-9)


@needs_compiled
def test_without_autograd_rows_depend_on_their_row_alone():
    """No autograd: the forward pass of the autograd path bit for bit; one thread gives the bits of two, and
    a graph of some of the rows (their edges as they are) gives those rows' bits."""
    graph = _graph(60, 12, seed=6)
    q, k, v = _heads(4, 60, 60, 5, 20.0, seed=7)
    bound = torch.full((4,), 20.0)
    with torch.no_grad():
        whole = functional.sparse_attention(graph, q, k, v, logit_bound=bound)
    train = FusedAttention.apply(graph, q.requires_grad_(True), k, v, bound).detach()
    assert torch.equal(whole, train)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            one = functional.sparse_attention(graph, q, k, v, logit_bound=bound)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, whole)
    a, b = 17, 41
    crow = graph.crow[a:b + 1] - graph.crow[a]
    col = graph.col[int(graph.crow[a]):int(graph.crow[b])]
    part = CSRGraph(crow, col, None, b - a, num_cols=None)
    part.num_cols = 60  # sources are all nodes: a block of target rows
    with torch.no_grad():
        rows = functional.sparse_attention(part, q[:, a:b], k, v, logit_bound=bound)
    assert torch.equal(rows, whole[:, a:b])


@needs_compiled
def test_slices_of_one_projection_are_read_in_place():
    """Queries and keys sliced out of one ``(N, 2, H, d)`` projection (as GLIC's layers make them) are read where
    they lie, with no copy of the map, and give the bits of contiguous copies; other layouts are copied."""
    from gnn_lic.nn import fused_attention as fa

    H, n, d = 4, 50, 8
    graph = _graph(n, 7, seed=5)
    gen = torch.Generator().manual_seed(6)
    qk = torch.nn.functional.normalize(torch.randn(n, 2, H, d, generator=gen), dim=-1)
    q, k = (t.transpose(0, 1) for t in qk.unbind(1))  # heads (H, N, d), not contiguous
    v = torch.randn(n, H, d, generator=gen).transpose(0, 1)
    for t, h0 in ((q, 0), (k, H)):
        rows, first = fa._rows(t)
        assert first == h0 and rows.shape == (n, 2 * H, d) and rows.data_ptr() == qk.data_ptr()
        assert torch.equal(rows[:, first:first + H], t.transpose(0, 1))
    rows, first = fa._rows(v)
    assert first == 0 and rows.data_ptr() == v.data_ptr()
    rows, first = fa._rows(q.transpose(1, 2).contiguous().transpose(1, 2))  # channels not contiguous: a copy
    assert first == 0 and rows.is_contiguous() and torch.equal(rows, q.transpose(0, 1))
    bound = torch.full((H,), 3.0)
    with torch.no_grad():
        got = fa.fused_attention(graph, q, k, v, bound)
        want = fa.fused_attention(graph, q.contiguous(), k.contiguous(), v.contiguous(), bound)
    assert torch.equal(got, want)
    torch.testing.assert_close(got.double(), functional.sparse_attention(graph, q.double(), k.double(), v.double(),
                                                                          logit_bound=bound.double()),
                               rtol=1e-5, atol=1e-5)


@needs_compiled
@pytest.mark.parametrize("zero_node", [False, True])
def test_rows_visited_in_the_graph_order_give_the_same_bits(zero_node):
    """The passes visit the nodes in the graph's node order (then the zero node): output and gradients are
    those of id order bit for bit, under autograd and without, with one thread and two."""
    from gnn_lic.nn import fused_attention as fa

    H, n, d = 3, 70, 5
    plain = _graph(n, 11, seed=8, zero_node=zero_node)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(9))
    ordered = CSRGraph(plain.crow, plain.col, plain.row, n, order=order, num_cols=plain.num_cols)
    visit = fa._visit_order(ordered, ordered.num_cols)
    assert visit.tolist() == order.tolist() + ([n] if zero_node else [])
    assert fa._visit_order(plain, plain.num_cols).tolist() == list(range(plain.num_cols))
    assert fa._visit_order(ordered, n).tolist() == order.tolist()
    q, k, v = _heads(H, n, plain.num_cols, d, 10.0, seed=10)
    bound = torch.full((H,), 10.0)
    weights = torch.randn(H, n, d + 1, generator=torch.Generator().manual_seed(11))
    want = _run(plain, q, k, v, bound, weights, fused=True)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            have = _run(ordered, q, k, v, bound, weights, fused=True)
            assert all(torch.equal(a, b) for a, b in zip(have, want))
            with torch.no_grad():
                assert torch.equal(fa.fused_attention(ordered, q, k, v, bound), want[0])
    finally:
        torch.set_num_threads(threads)


@needs_compiled
def test_layers_take_the_order_into_the_fused_passes_without_relabelling(monkeypatch):
    """A graph with a node order: the fused path reads the maps in place (no relabelled copy), and gives the
    bits of the same graph without the order; paths that cannot (float64) still relabel, unless a zero node."""
    from gnn_lic.graph import AdaptiveDegree, BlockWindow, GlobalGrid, build_graphs
    from gnn_lic.nn import GraphAggregationConv

    torch.manual_seed(3)
    x = torch.randn(1, 16, 24, 20)
    graphs = build_graphs(x, {"global": GlobalGrid(4), "local": BlockWindow(4, 8, border="zero")}, AdaptiveDegree(9))
    layer = GraphAggregationConv(16, heads=2).eval()
    tokens = x[0].flatten(1).t().contiguous()
    relabels = []
    real = CSRGraph.relabelled
    monkeypatch.setattr(CSRGraph, "relabelled", lambda self: relabels.append(self) or real(self))
    for name, graph in graphs.items():
        assert graph.order is not None, name
        plain = CSRGraph(graph.crow, graph.col, None, graph.num_nodes, num_cols=graph.num_cols)
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                assert torch.equal(layer(tokens, graph), layer(tokens, plain)), (name, grad)
        assert not relabels
        layer.double()(tokens.double(), graph)
        assert relabels == ([graph] if name == "global" else []), name  # the zero node keeps id order
        relabels.clear()
        layer.float()
