"""Message-passing layers vs brute-force loops over target nodes.

``GraphAggregationConv``: GLIC eqs. (10)-(11) with per-head cosine logits scaled
by the capped temperature and the output mixing ``W_o``;
``GraphAttentionConv``: GABIC eqs. (5)-(6) (with the logit scale ``s``).
The references read the layer's own weights (``qk``, ``phi``, ``out``,
``log_temperature``; ``theta_phi_g``, ``w_z``, ``scale``) and use the documented
layouts: ``qk`` = [W_q | W_k], ``theta_phi_g`` = [W_theta | W_phi | W_g], each
split into ``heads`` contiguous blocks of ``C / heads`` rows.
"""

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn.functional as F

from gnn_lic import compiled
from gnn_lic.graph import CSRGraph
from gnn_lic.nn import GraphAggregationConv, GraphAttentionConv
from gnn_lic.nn.graph_aggregation_conv import UnitHeads
from gnn_lic.nn.functional import sparse_attention

N = 12
ISOLATED = 5  # a node without in-edges (it is still a source)


def _graph(seed=0, n=N, isolated=ISOLATED, shuffle=True):
    """Random directed graph with 1..4 in-edges per node (self-loops possible), unsorted."""
    g = torch.Generator().manual_seed(seed)
    src, dst = [], []
    for i in range(n):
        if i == isolated:
            continue
        deg = int(torch.randint(1, 5, (1,), generator=g))
        nb = torch.randperm(n, generator=g)[:deg].tolist()
        src += nb
        dst += [i] * deg
    ei = torch.tensor([src, dst])
    if shuffle:
        ei = ei[:, torch.randperm(ei.shape[1], generator=g)]
    return ei


def _in_neighbours(ei, n=N):
    nbrs = {i: [] for i in range(n)}
    for j, i in ei.t().tolist():
        nbrs[i].append(j)
    return nbrs


def _softmax(logits):
    m = max(float(t.detach()) for t in logits)
    e = [torch.exp(t - m) for t in logits]
    s = sum(e)
    return [t / s for t in e]


def ref_aggregation(conv: GraphAggregationConv, x, ei):
    """z_i = W_o ||_h sum_{j in N_i} alpha^h_{i<-j} phi^h(z_j) + b_o,
    alpha^h_{i<-j} = softmax_j(tau_h cos(W_q^h z_i, W_k^h z_j)), tau_h = min(e^{t_h}, tau_max)."""
    C, H = conv.channels, conv.heads
    d = C // H
    Wqk, bqk = conv.qk.weight, conv.qk.bias
    Wphi, bphi = conv.phi.weight, conv.phi.bias
    nbrs = _in_neighbours(ei, x.shape[0])
    rows = []
    for i in range(x.shape[0]):
        heads = []
        for h in range(H):
            r = slice(h * d, (h + 1) * d)
            rk = slice(C + h * d, C + (h + 1) * d)
            tau = torch.minimum(conv.log_temperature[h].exp(), torch.tensor(conv.max_temperature, dtype=x.dtype))
            acc = torch.zeros(d, dtype=x.dtype)
            if nbrs[i]:
                q = Wqk[r] @ x[i] + bqk[r]
                logits = []
                for j in nbrs[i]:
                    k = Wqk[rk] @ x[j] + bqk[rk]
                    logits.append(tau * (q @ k) / (q.norm() * k.norm()))
                for a, j in zip(_softmax(logits), nbrs[i]):
                    acc = acc + a * (Wphi[r] @ x[j] + bphi[r])
            heads.append(acc)
        rows.append(conv.out.weight @ torch.cat(heads) + conv.out.bias)
    return torch.stack(rows)


def ref_attention(conv: GraphAttentionConv, x, ei):
    """x'_i = x_i + W_z ||_h sum_{j in N(i)} alpha^h_ij W_g^h x_j + b_z,
    alpha^h_ij = softmax_j(s (W_theta^h x_i)^T (W_phi^h x_j))."""
    C, H = conv.channels, conv.heads
    d = C // H
    Wt, bt = conv.theta_phi_g.weight, conv.theta_phi_g.bias
    nbrs = _in_neighbours(ei, x.shape[0])
    rows = []
    for i in range(x.shape[0]):
        heads = []
        for h in range(H):
            rq = slice(h * d, (h + 1) * d)
            rk = slice(C + h * d, C + (h + 1) * d)
            rv = slice(2 * C + h * d, 2 * C + (h + 1) * d)
            acc = torch.zeros(d, dtype=x.dtype)
            if nbrs[i]:
                q = Wt[rq] @ x[i] + bt[rq]
                logits = [conv.scale * (q @ (Wt[rk] @ x[j] + bt[rk])) for j in nbrs[i]]
                for a, j in zip(_softmax(logits), nbrs[i]):
                    acc = acc + a * (Wt[rv] @ x[j] + bt[rv])
            heads.append(acc)
        rows.append(x[i] + conv.w_z.weight @ torch.cat(heads) + conv.w_z.bias)
    return torch.stack(rows)


def _make(kind, impl="sparse", C=8, heads=2, seed=0, **kw):
    torch.manual_seed(seed)
    if kind == "aggregation":
        conv = GraphAggregationConv(C, heads=heads, impl=impl, **kw).double()
        with torch.no_grad():  # distinct temperatures, one above the cap (tau = 100)
            conv.log_temperature.copy_(torch.tensor([math.log(1000.0), math.log(3.0), 0.5, 1.0][:heads]))
        return conv
    return GraphAttentionConv(C, heads=heads, impl=impl, **kw).double()


REF = {"aggregation": ref_aggregation, "attention": ref_attention}
KINDS = ["aggregation", "attention"]


def _x(seed=1, n=N, C=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("impl", ["sparse", "gather"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_bruteforce(kind, impl):
    conv = _make(kind, impl)
    x, ei = _x(), _graph()
    out = conv(x, ei)
    assert out.shape == (N, 8) and out.dtype == torch.float64
    with torch.no_grad():
        ref = REF[kind](conv, x, ei)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_match_bruteforce(kind):
    """The hand-written sparse backward equals autograd through the reference loops."""
    conv = _make(kind, "sparse", seed=3)
    x, ei = _x(4).requires_grad_(True), _graph(5)
    w = torch.randn(N, 8, dtype=torch.float64)
    params = [x] + list(conv.parameters())
    g_layer = torch.autograd.grad((conv(x, ei) * w).sum(), params)
    g_ref = torch.autograd.grad((REF[kind](conv, x, ei) * w).sum(), params)
    for a, b in zip(g_layer, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_attention_unscaled_eq6_matches_bruteforce():
    conv = _make("attention", scale=1.0)
    assert conv.scale == 1.0
    assert _make("attention", C=8, heads=2).scale == pytest.approx(4**-0.5)
    x, ei = _x(2), _graph(2)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, ei), ref_attention(conv, x, ei), rtol=1e-10, atol=1e-10)


def test_aggregation_temperature_is_capped():
    conv = _make("aggregation", max_temperature=100.0)
    x, ei = _x(3), _graph(3)
    with torch.no_grad():
        out = conv(x, ei)
        conv.log_temperature[0] = math.log(100.0)  # exactly the cap: same result
        torch.testing.assert_close(conv(x, ei), out, rtol=1e-12, atol=1e-12)
        conv.log_temperature[0] = math.log(50.0)  # below the cap: different
        assert not torch.allclose(conv(x, ei), out)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_and_gather_agree(kind):
    sp = _make(kind, "sparse", seed=6)
    ga = _make(kind, "gather", seed=6)
    ga.load_state_dict(sp.state_dict())
    x, ei = _x(7), _graph(7)
    w = torch.randn(N, 8, dtype=torch.float64)
    outs, grads = [], []
    for conv in (sp, ga):
        xx = x.clone().requires_grad_(True)
        out = conv(xx, ei)
        (out * w).sum().backward()
        outs.append(out.detach())
        grads.append([xx.grad] + [p.grad for p in conv.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-10)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("impl", ["sparse", "gather"])
@pytest.mark.parametrize("kind", KINDS)
def test_output_depends_only_on_in_neighbours(kind, impl):
    conv = _make(kind, impl, seed=8)
    x, ei = _x(9), _graph(9)
    nbrs = _in_neighbours(ei)
    with torch.no_grad():
        base = conv(x, ei)
        for i in (0, 3, 7):
            others = [j for j in range(N) if j not in nbrs[i] and j != i]
            assert others and nbrs[i]
            xp = x.clone()
            xp[others] += 5.0 * torch.randn(len(others), 8, dtype=torch.float64)
            torch.testing.assert_close(conv(xp, ei)[i], base[i], rtol=1e-12, atol=1e-12)
            j = next(j for j in nbrs[i] if j != i)
            xp = x.clone()
            xp[j] += 1.0
            assert (conv(xp, ei)[i] - base[i]).abs().max() > 1e-6


@pytest.mark.parametrize("impl", ["sparse", "gather"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_reaches_every_parameter(kind, impl):
    conv = _make(kind, impl, seed=10)
    x = _x(11).requires_grad_(True)
    (conv(x, _graph(11)) * torch.randn(N, 8, dtype=torch.float64)).sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("impl", ["sparse", "gather"])
@pytest.mark.parametrize("kind", KINDS)
def test_nodes_without_in_edges(kind, impl):
    """Empty sum: aggregation gives W_o 0 + b_o, attention gives x_i + W_z 0 + b_z."""
    conv = _make(kind, impl, seed=12)
    x = _x(13).requires_grad_(True)
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = conv(x, empty)
    assert bool(torch.isfinite(out).all())
    if kind == "aggregation":
        want = conv.out.bias.expand(N, -1)
    else:
        want = x + conv.w_z.bias
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    out.sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    # an isolated target inside a non-empty graph gets the same value
    out = conv(x, _graph(14))
    torch.testing.assert_close(out[ISOLATED], want[ISOLATED], rtol=0, atol=1e-12)


@pytest.mark.parametrize("impl", ["sparse", "gather"])
@pytest.mark.parametrize("kind", KINDS)
def test_csr_graph_input_equals_edge_index(kind, impl):
    conv = _make(kind, impl, seed=15)
    x, ei = _x(16), _graph(16)
    g = CSRGraph.from_edge_index(ei, N)
    with torch.no_grad():
        torch.testing.assert_close(conv(x, g), conv(x, ei), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(conv(x, g), conv(x, g.edge_index), rtol=1e-12, atol=1e-12)
    if impl == "sparse":
        with pytest.raises(ValueError):
            conv(x, CSRGraph.from_edge_index(ei, N + 3))  # graph/feature size mismatch


@pytest.mark.parametrize("kind", KINDS)
def test_graph_node_order_changes_nothing(kind):
    """A graph with a node order aggregates in that order: same output, same gradients."""
    conv = _make(kind, "sparse", seed=17)
    x, ei = _x(18), _graph(18)
    g = CSRGraph.from_edge_index(ei, N)
    ordered = CSRGraph(g.crow, g.col, g.row, N, order=torch.randperm(N, generator=torch.Generator().manual_seed(1)))
    outs, grads = [], []
    for graph in (g, ordered):
        xg = x.clone().requires_grad_()
        out = conv(xg, graph)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([xg.grad] + [p.grad.clone() for p in conv.parameters()])
        conv.zero_grad()
    # each row sums the same edges in the same order: the forward is bit for bit the same
    assert torch.equal(outs[0], outs[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_row_permutation_gradient_is_the_inverse_gather():
    from gnn_lic.nn.attention_base import _RowPermutation

    gen = torch.Generator().manual_seed(4)
    order = torch.randperm(11, generator=gen)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(11)
    t = torch.randn(3, 11, 2, generator=gen).transpose(0, 1).requires_grad_()  # strided, as the heads are
    g = torch.randn(11, 3, 2, generator=gen)
    out = _RowPermutation.apply(t, order, inverse)
    out.backward(g)
    ref = t.detach().clone().requires_grad_()
    ref.index_select(0, order).backward(g)
    assert torch.equal(out, t.index_select(0, order)) and torch.equal(t.grad, ref.grad)


def test_aggregation_float32_rows_far_below_the_temperature():
    """tau = 100 and cos = -1 on every edge of a row: exp(-2 tau) underflows in float32;
    the output must still be the (uniform) softmax average of phi(z_j)."""
    C, H = 4, 1
    torch.manual_seed(17)
    conv = GraphAggregationConv(C, heads=H, temperature=100.0)
    with torch.no_grad():
        conv.qk.weight.copy_(torch.cat([torch.eye(C), -torch.eye(C)]))
        conv.qk.bias.zero_()
    x = torch.randn(6, C)
    x[1] = x[2] = x[3] = x[0]  # node 0's in-neighbours are copies of itself: cos(q_0, k_j) = -1
    ei = torch.tensor([[1, 2, 3, 0, 4], [0, 0, 0, 5, 5]])
    with torch.no_grad():
        out = conv(x, ei)
        ref = ref_aggregation(conv.double(), x.double(), ei)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


def test_sparse_attention_gradcheck_with_isolated_node():
    H, d, dv = 2, 3, 2
    ei = _graph(18, n=6, isolated=2)
    g = CSRGraph.from_edge_index(ei, 6)
    gen = torch.Generator().manual_seed(19)
    q = torch.randn(H, 6, d, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(H, 6, d, generator=gen, dtype=torch.float64, requires_grad=True)
    v = torch.randn(H, 6, dv, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: sparse_attention(g, q, k, v), (q, k, v))
    # forward against the definition; the isolated node gets 0
    out = sparse_attention(g, q, k, v).detach()
    nbrs = _in_neighbours(ei, 6)
    for h in range(H):
        for i in range(6):
            if not nbrs[i]:
                assert bool((out[h, i] == 0).all())
                continue
            a = _softmax([q[h, i] @ k[h, j] for j in nbrs[i]])
            want = sum(w * v[h, j] for w, j in zip(a, nbrs[i]))
            torch.testing.assert_close(out[h, i], want.detach(), rtol=1e-12, atol=1e-12)


def test_sparse_attention_logit_bound_is_only_a_shift():
    ei = _graph(20, n=6, isolated=4)
    g = CSRGraph.from_edge_index(ei, 6)
    gen = torch.Generator().manual_seed(21)
    q, k = (torch.randn(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(2, 6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    bound = torch.tensor([20.0, 40.0], dtype=torch.float64)  # above every |q.k| here
    torch.testing.assert_close(sparse_attention(g, q, k, v, logit_bound=bound), sparse_attention(g, q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: sparse_attention(g, q, k, v, logit_bound=bound), (q, k, v))


def test_heads_must_divide_channels_and_impl_is_checked():
    for cls in (GraphAggregationConv, GraphAttentionConv):
        with pytest.raises(ValueError):
            cls(10, heads=4)
        with pytest.raises(ValueError):
            cls(8, heads=2, impl="dense")
        assert cls(12, heads=4).heads == 4


def test_repr():
    assert repr(GraphAggregationConv(16, heads=4)) == "GraphAggregationConv(16, heads=4, impl='sparse')"
    assert repr(GraphAttentionConv(8, heads=2, impl="gather")) == "GraphAttentionConv(8, heads=2, impl='gather')"


def test_parameter_shapes():
    agg = GraphAggregationConv(8, heads=2)
    assert agg.qk.weight.shape == (16, 8) and agg.phi.weight.shape == (8, 8) and agg.out.weight.shape == (8, 8)
    assert agg.log_temperature.shape == (2,)
    torch.testing.assert_close(agg.log_temperature.exp(), torch.full((2,), 10.0))  # default temperature
    att = GraphAttentionConv(8, heads=2)
    assert att.theta_phi_g.weight.shape == (24, 8) and att.w_z.weight.shape == (8, 8)


@pytest.mark.parametrize("case", ["row-max", "bound", "bound+bias", "bound-underflows", "zero-node"])
def test_sparse_attention_without_autograd_equals_batched_path(case):
    """No autograd: heads one at a time (``_attention_by_head``); the same numbers as the batched path."""
    H, d, dv, n = 3, 4, 5, 9
    ei = _graph(22, n=n, isolated=3)
    g = CSRGraph.from_edge_index(ei, n)
    if case == "zero-node":  # a source N that is never a target (zero-padding candidates)
        g = CSRGraph(g.crow, torch.where(g.col == 0, n, g.col), g.row, n, num_cols=n + 1)
    M = g.num_cols
    gen = torch.Generator().manual_seed(23)
    q = torch.randn(n, H, d, generator=gen).transpose(0, 1)  # head-major views, as the layers pass them
    k, v = torch.randn(M, H, d, generator=gen).transpose(0, 1), torch.randn(M, H, dv, generator=gen).transpose(0, 1)
    bound = {"bound": torch.full((H,), 30.0), "bound+bias": torch.full((H,), 40.0),
             "bound-underflows": torch.full((H,), 300.0), "zero-node": torch.full((H,), 30.0)}.get(case)
    bias = torch.randn(H, g.num_edges, generator=gen) if case == "bound+bias" else None
    ref = sparse_attention(g, q.clone().requires_grad_(), k, v, logit_bound=bound, edge_bias=bias).detach()
    with torch.no_grad():
        out = sparse_attention(g, q, k, v, logit_bound=bound, edge_bias=bias)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert bool((out[:, 3] == 0).all())  # the node without in-edges


def test_row_chunks_cover_the_rows_within_the_edge_limit():
    from gnn_lic.nn.functional import row_chunks

    crow = torch.tensor([0, 2, 5, 5, 9, 20, 21])
    for limit in (1, 3, 5, 9, 100):
        chunks = row_chunks(crow, limit)
        assert chunks[0][0] == 0 and chunks[-1][1] == 6 and all(x[1] == y[0] for x, y in zip(chunks, chunks[1:]))
        for a, b in chunks:
            assert b - a == 1 or int(crow[b] - crow[a]) <= limit


@pytest.mark.parametrize("position_bias", [False, True])
def test_chunked_aggregation_gives_the_same_bits_for_every_chunk_size(position_bias, monkeypatch):
    """No autograd: rows run in chunks of edges; every chunking (and the relabelled block order
    the layer uses when the graph fits one chunk) gives the same bits."""
    from gnn_lic.graph import BlockWindow, GlobalGrid, AdaptiveDegree, build_graphs
    from gnn_lic.nn import functional

    torch.manual_seed(0)
    x = torch.randn(1, 32, 40, 48)
    window = (4, 8)
    graphs = build_graphs(x, {"local": BlockWindow(*window), "global": GlobalGrid(8, groups=4 if position_bias else None)},
                          AdaptiveDegree(16), positions=position_bias)
    layer = GraphAggregationConv(32, heads=4, position_bias=window if position_bias else None).eval()
    if position_bias:
        graphs.pop("global")
    tokens = x.permute(0, 2, 3, 1).reshape(-1, 32)
    for name, graph in graphs.items():
        outs = []
        for limit in (1 << 40, graph.num_edges - 1, 5000, 777):
            monkeypatch.setattr(functional, "CHUNK_EDGES", limit)
            with torch.no_grad():
                outs.append(layer(tokens, graph))
        assert all(torch.equal(o, outs[0]) for o in outs[1:]), name
        torch.testing.assert_close(outs[0], layer(tokens, graph).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bound", [None, 30.0, 300.0])
def test_attention_rows_do_not_depend_on_the_chunking(bound):
    """Row-max shift, logit bound, and a bound so large that rows underflow and are redone alone."""
    from gnn_lic.nn.functional import _attention_by_head

    H, n = 3, 300
    gen = torch.Generator().manual_seed(5)
    ei = _graph(4000, n=n, isolated=7)
    g = CSRGraph.from_edge_index(ei, n)
    q, k, v = (torch.randn(H, n, 6, generator=gen) for _ in range(3))
    b = None if bound is None else torch.full((H,), bound)
    outs = [_attention_by_head(g, q, k, v, b, None, max_edges=m) for m in (1 << 30, 999, 64, 1)]
    assert all(torch.equal(o, outs[0]) for o in outs[1:])
    assert bool(torch.isfinite(outs[0]).all())
    if bound == 300.0:  # the underflowing rows were redone: not all zeros
        assert bool((outs[0].abs().sum(-1) > 0).sum() > n // 2)


def test_aggregation_without_autograd_normalises_in_place_to_the_same_numbers():
    torch.manual_seed(0)
    layer = GraphAggregationConv(16, heads=4)
    x = torch.randn(40, 16)
    g = CSRGraph.from_edge_index(_graph(3, n=40), 40)
    ref = layer(x, g).detach()
    with torch.no_grad():
        out = layer(x, g)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)


def _normalized_heads(qk, tau):
    """The separate operations that :class:`UnitHeads` fuses: ``F.normalize`` of each head, queries times tau."""
    q, k = qk.unbind(1)
    return F.normalize(q, dim=-1) * tau.view(1, -1, 1), F.normalize(k, dim=-1)


@pytest.mark.skipif(not compiled.enabled(), reason="UnitHeads' backward is a compiled loop")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("used", ["both", "queries", "keys"])
def test_unit_heads_give_normalize_and_its_gradients(dtype, used):
    """Forward: ``F.normalize``'s numbers bit for bit; backward: autograd's gradients of the separate operations,
    for ordinary heads, zero heads and heads under the norm's floor, with either output unused."""
    gen = torch.Generator().manual_seed(5)
    n, H, d = 30, 3, 5
    qk = torch.randn(n, 2, H, d, generator=gen, dtype=dtype) * 3
    qk[4] = 0
    qk[6, 0, 1] = 1e-14  # norms below F.normalize's floor: x / eps, no gradient through the norm
    qk[7, 1, 2] = -3e-13
    tau = torch.rand(H, generator=gen, dtype=dtype) * 10 + 1
    grads = [torch.randn(n, H, d, generator=gen, dtype=dtype) for _ in range(2)]
    results = []
    for fn in (_normalized_heads, UnitHeads.apply):
        x, t = qk.clone().requires_grad_(), tau.clone().requires_grad_()
        outs = fn(x, t)
        pairs = [(o, g) for o, g, name in zip(outs, grads, ("queries", "keys")) if used in ("both", name)]
        torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        results.append((outs, x.grad, t.grad))
    (ref_q, ref_k), ref_dx, ref_dt = results[0]
    (q, k), dx, dt = results[1]
    assert torch.equal(q, ref_q) and torch.equal(k, ref_k)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    scale = ref_dx.abs().amax((-1, -3), keepdim=True)  # each head's gradient against its own size
    assert bool(((dx - ref_dx).abs() <= tol * scale).all())
    floors = {"queries": dx[6, 0, 1], "keys": dx[7, 1, 2]}  # the floor's large gradients are there, not lost
    assert all(bool(g.abs().max() > 1e11) == (used in ("both", name)) for name, g in floors.items())
    if used == "keys":  # tau reaches only the queries
        assert dt is None and ref_dt is None
    else:
        torch.testing.assert_close(dt, ref_dt, rtol=tol, atol=tol * float(ref_dt.abs().max()))


@pytest.mark.skipif(not compiled.enabled(), reason="UnitHeads' backward is a compiled loop")
def test_aggregation_trains_through_unit_heads_with_the_same_gradients():
    """Under autograd the layer's queries and keys come from :class:`UnitHeads`; every parameter's gradient is
    the separate operations' (compiled loops off), the output the same numbers."""
    torch.manual_seed(1)
    layer = GraphAggregationConv(16, heads=4).double()
    x = torch.randn(40, 16, dtype=torch.float64)
    g = CSRGraph.from_edge_index(_graph(3, n=40), 40)
    runs = []
    for on in (True, False):
        previous = compiled.set_enabled(on)
        try:
            layer.zero_grad()
            calls = []
            real = UnitHeads.apply
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(UnitHeads, "apply", lambda *a: calls.append(1) or real(*a))
                out = layer(x, g)
                (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
            assert bool(calls) == on
            runs.append((out.detach(), {n: p.grad.clone() for n, p in layer.named_parameters()}))
        finally:
            compiled.set_enabled(previous)
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-12, atol=1e-12)
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(grad, runs[1][1][name], rtol=1e-10, atol=1e-12, msg=name)
    assert float(runs[0][1]["log_temperature"].abs().max()) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_one_layer_on_two_threads_at_once(kind):
    """One layer called from two threads at once (a caller's thread pool): each call aggregates over
    its own graph, whatever the other does between setting up and running its aggregation."""
    conv = _make(kind)
    calls = [(_x(seed=1), _graph(seed=0)), (_x(seed=2, n=N + 3), _graph(seed=3, n=N + 3, isolated=0))]
    alone = [conv(x, ei).detach() for x, ei in calls]
    barrier, propagate = threading.Barrier(2, timeout=30), conv.propagate

    def both_set_up(*args, **kwargs):  # neither runs its aggregation before both have set theirs up
        barrier.wait()
        return propagate(*args, **kwargs)

    conv.propagate = both_set_up
    with ThreadPoolExecutor(2) as pool:
        together = [out.detach() for out in pool.map(lambda call: conv(*call), calls)]
    assert all(torch.equal(a, b) for a, b in zip(alone, together))
