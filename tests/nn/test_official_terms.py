"""The authors'-code logit terms of both layers against dense brute-force references.

GLIC: relative-position terms ``16 sigmoid(MLP(c))`` indexed per edge, and
zero-padding candidates (the zero node: zero keys and values, cosine 0).
GABIC: the edge attribute ``(du + dv)^2`` through ``W_e`` summed per head.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from gnn_lic.graph import AdaptiveDegree, BlockWindow, GlobalGrid, TopK, WindowPartition, build_graphs
from gnn_lic.nn import GraphAggregationConv, GraphAttentionConv
from gnn_lic.nn.blocks import GFABlock, GraphWindowBlock, window_offset_attr
from gnn_lic.nn.graph_aggregation_conv import position_coords


def test_position_coords_table():
    t = position_coords(8, 16)
    assert t.shape == (23 * 23, 2)
    # row-major over offsets -15..7 (rows first), scaled by 8/7, then log-spaced
    def f(o):
        v = o / 7 * 8
        return math.copysign(math.log2(abs(v) + 1) / 3, v) if v else 0.0

    for idx, (dy, dx) in [(0, (-15, -15)), (22, (-15, 7)), (23 * 15 + 15, (0, 0)), (528, (7, 7))]:
        assert torch.allclose(t[idx], torch.tensor([f(dy), f(dx)]), atol=1e-6)


def dense_reference(conv: GraphAggregationConv, x, graph):
    """Loop over targets: logits tau_h cos(q_i, k_j) + bias[rel_index], zero node = zero k, v."""
    N, C = x.shape
    H = conv.heads
    d = C // H
    qk = conv.qk(x)
    q, k = qk[:, :C], qk[:, C:]
    v = conv.phi(x)
    k = torch.cat([k, k.new_zeros(1, C)])
    v = torch.cat([v, v.new_zeros(1, C)])
    tau = conv.log_temperature.clamp(max=math.log(conv.max_temperature)).exp()
    table = conv.position_table() if conv.position_bias is not None else None
    out = torch.zeros(N, C, dtype=x.dtype)
    for i in range(N):
        es = (graph.row == i).nonzero().flatten()
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            qi = F.normalize(q[i, sl], dim=0)
            logits = []
            for e in es.tolist():
                j = int(graph.col[e])
                kj = F.normalize(k[j, sl], dim=0)
                b = table[int(graph.rel_index[e]), h] if table is not None else 0.0
                logits.append(tau[h] * (qi @ kj) + b)
            if not logits:
                continue
            a = torch.softmax(torch.stack(logits), 0)
            out[i, sl] = sum(a[n] * v[int(graph.col[e]), sl] for n, e in enumerate(es.tolist()))
    return conv.out(out)


@pytest.mark.parametrize("impl", ["sparse", "gather"])
def test_position_bias_and_zero_node_match_reference(impl):
    torch.manual_seed(0)
    x = torch.randn(1, 8, 8, 12, dtype=torch.float64)
    graph = build_graphs(x, {"g": BlockWindow(4, 8, border="zero", group_quota=True)},
                         AdaptiveDegree(20, bisection="official"), positions=True)["g"]
    assert graph.num_cols == graph.num_nodes + 1 and bool((graph.col == graph.num_nodes).any())
    conv = GraphAggregationConv(8, heads=2, position_bias=(4, 8), impl=impl).double()
    with torch.no_grad():
        conv.cpb_mlp[2].weight.normal_(0, 0.5)
    nodes = x[0].flatten(1).t().contiguous()
    got = conv(nodes, graph)
    torch.testing.assert_close(got, dense_reference(conv, nodes, graph), rtol=1e-10, atol=1e-10)
    got.sum().backward()
    assert conv.cpb_mlp[0].weight.grad is not None and conv.cpb_mlp[0].weight.grad.abs().sum() > 0


def test_position_bias_needs_positions():
    x = torch.randn(1, 4, 8, 8)
    graph = build_graphs(x, {"g": GlobalGrid(4, groups=2)}, AdaptiveDegree(4))["g"]
    conv = GraphAggregationConv(4, heads=2, position_bias=(2, 4))
    with pytest.raises(ValueError, match="positions=True"):
        conv(x[0].flatten(1).t(), graph)


def test_global_graph_relabelled_keeps_positions():
    """Global graphs aggregate in block order; the relabelled graph carries its edges' indices."""
    torch.manual_seed(1)
    x = torch.randn(1, 8, 16, 16, dtype=torch.float64)
    graph = build_graphs(x, {"g": GlobalGrid(8, groups=4)}, AdaptiveDegree(10), positions=True)["g"]
    assert graph.order is not None
    conv = GraphAggregationConv(8, heads=2, position_bias=(4, 8)).double()
    nodes = x[0].flatten(1).t().contiguous()
    torch.testing.assert_close(conv(nodes, graph), dense_reference(conv, nodes, graph), rtol=1e-10, atol=1e-10)


def test_gfa_block_with_position_bias_runs_and_checks_windows():
    blk = GFABlock(8, 3, heads=2, local=BlockWindow(4, 8, border="zero"), global_=GlobalGrid(8, groups=4),
                   selector=AdaptiveDegree(8, bisection="official"), position_bias=True)
    assert blk(torch.randn(2, 8, 16, 16)).shape == (2, 8, 16, 16)
    with pytest.raises(ValueError, match="position window"):
        GFABlock(8, 2, heads=2, local=BlockWindow(4, 8), global_=GlobalGrid(8), position_bias=True)


@pytest.mark.parametrize("impl", ["sparse", "gather"])
def test_edge_attribute_matches_reference(impl):
    torch.manual_seed(2)
    B, C, H, W = 2, 8, 8, 8
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    graph = build_graphs(x, {"w": WindowPartition(4)}, TopK(3, skip_first=True))["w"]
    attr = window_offset_attr(graph, W)
    # (du + dv)^2 from the coordinates, by hand
    for e in range(0, graph.num_edges, 11):
        i, j = int(graph.row[e]) % (H * W), int(graph.col[e]) % (H * W)
        assert int(attr[e]) == ((j // W - i // W) + (j % W - i % W)) ** 2
    conv = GraphAttentionConv(C, heads=2, edge_dim=1, impl=impl).double()
    nodes = x.permute(0, 2, 3, 1).reshape(-1, C)
    got = conv(nodes, graph, attr.unsqueeze(-1).double())
    qkv = conv.theta_phi_g(nodes)
    d = C // 2
    we = conv.w_e.weight[:, 0]
    ref = torch.zeros_like(nodes)
    for i in range(nodes.shape[0]):
        es = (graph.row == i).nonzero().flatten().tolist()
        for h in range(2):
            sl = slice(h * d, (h + 1) * d)
            logits = torch.stack([(qkv[i, sl] * conv.scale) @ qkv[int(graph.col[e]), C + h * d:C + (h + 1) * d]
                                  + attr[e] * we[sl].sum() for e in es])
            a = torch.softmax(logits, 0)
            ref[i, sl] = sum(a[n] * qkv[int(graph.col[e]), 2 * C + h * d:2 * C + (h + 1) * d] for n, e in enumerate(es))
    torch.testing.assert_close(got, nodes + conv.w_z(ref), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="edge_attr"):
        conv(nodes, graph)


def test_graph_window_block_official_options():
    blk = GraphWindowBlock(8, window=4, heads=2, selector=TopK(3, skip_first=True), edge_attr=True)
    assert blk.attn.w_e is not None and blk.selector.skip_first
    assert blk(torch.randn(1, 8, 8, 8)).shape == (1, 8, 8, 8)
