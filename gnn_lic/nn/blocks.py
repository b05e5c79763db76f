"""Image-domain graph blocks: ``(B, C, H, W)`` in, graphs built, ``(B, C, H, W)`` out.

Blocks never build graphs their own way: they call :func:`gnn_lic.graph.build_graphs`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnn_lic.graph import (
    AdaptiveDegree,
    CSRGraph,
    GlobalGrid,
    KeepAll,
    LocalWindow,
    TopK,
    WindowPartition,
    build_graphs,
)
from gnn_lic.nn.graph_aggregation_conv import GraphAggregationConv
from gnn_lic.nn.graph_attention_conv import GraphAttentionConv

__all__ = ["LayerNorm2d", "GatedDWFeedForward", "GFALayer", "GFABlock", "GraphWindowBlock", "ResidualUnit", "GFA_ORDERS"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every pixel of a ``(B, C, H, W)`` map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class GatedDWFeedForward(nn.Module):
    """Gated depthwise feed-forward: 1x1 -> depthwise 3x3 -> GELU gate -> 1x1.

    The feed-forward part of a GFA layer (as in the authors' code): the
    depthwise convolution gives the aggregation a positional signal.
    """

    def __init__(self, channels: int, expansion: float = 2.0):
        super().__init__()
        hidden = int(channels * expansion)
        self.proj_in = nn.Conv2d(channels, 2 * hidden, 1, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False)
        self.proj_out = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.dwconv(self.proj_in(x)).chunk(2, dim=1)
        return self.proj_out(F.gelu(a) * b)


class GFALayer(nn.Module):
    """One GFA layer: ``x + Agg(LN(x))`` on a graph, then ``x + FFN(LN(x))``."""

    def __init__(self, channels: int, heads: int = 8, mlp_ratio: float = 2.0, impl: str = "sparse"):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.conv = GraphAggregationConv(channels, heads=heads, impl=impl)
        self.norm2 = LayerNorm2d(channels)
        self.ffn = GatedDWFeedForward(channels, mlp_ratio)

    def forward(self, x: Tensor, graph: CSRGraph) -> Tensor:
        B, C, H, W = x.shape
        tokens = x.permute(0, 2, 3, 1).reshape(-1, C)
        agg = self.conv(self.norm1(tokens), graph)
        x = x + agg.view(B, H, W, C).permute(0, 3, 1, 2)
        return x + self.ffn(self.norm2(x))


#: layer orders of a GFA block; "local-global" alternates starting with local
GFA_ORDERS = ("local-global", "global-local", "local", "global")


def _layer_kinds(order: str, depth: int) -> List[str]:
    if order not in GFA_ORDERS:
        raise ValueError(f"order must be one of {GFA_ORDERS}, got {order!r}")
    if order in ("local", "global"):
        return [order] * depth
    first, second = order.split("-")
    return [first if i % 2 == 0 else second for i in range(depth)]


class GFABlock(nn.Module):
    r"""Graph-based Feature Aggregation block, GLIC (CVPR 2026) Sec. 3.3 and Fig. 2(b).

    From the block's input features it builds, once and without gradient, a
    local graph (:class:`~gnn_lic.graph.LocalWindow` candidates) and a global
    graph (:class:`~gnn_lic.graph.GlobalGrid` candidates), both with
    :class:`~gnn_lic.graph.AdaptiveDegree` selection driven by one shared
    complexity-score map (RMS-G by default); then ``depth`` :class:`GFALayer`
    s alternate between the two graphs (local first by default: depth 5 gives
    local, global, local, global, local, as in the authors' code).

    Args:
        channels (int): channels ``C``.
        depth (int): number of layers.
        mlp_ratio (float): feed-forward expansion.
        heads (int): attention heads.
        local_window (int): ``L`` (default 8).
        global_grid (int): ``G`` (default 16).
        avg_degree (float): :math:`\bar{d}` (default 64).
        iters (int): bisection steps ``T`` (default 5).
        score (str or None): complexity score (default ``"rms"``, GLIC Table 4).
        order (str): one of :data:`GFA_ORDERS` (GLIC Table 3 ablations).
        impl (str): aggregation path of the layers.
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        mlp_ratio: float = 2.0,
        heads: int = 8,
        local_window: int = 8,
        global_grid: int = 16,
        avg_degree: float = 64,
        iters: int = 5,
        score: Optional[str] = "rms",
        order: str = "local-global",
        impl: str = "sparse",
    ):
        super().__init__()
        self.kinds = _layer_kinds(order, depth)
        self.order = order
        self.local = LocalWindow(local_window)
        self.global_ = GlobalGrid(global_grid)
        self.selector = AdaptiveDegree(avg_degree, score=score, iters=iters)
        self.layers = nn.ModuleList(GFALayer(channels, heads, mlp_ratio, impl) for _ in range(depth))
        self.last_info: Dict[str, object] = {}
        self.keep_info = False  # set True to keep GraphInfo of the last forward (analysis)

    def build_graphs(self, x: Tensor, return_info: bool = False) -> Tuple[Dict[str, CSRGraph], Dict[str, object]]:
        """The block's graphs for input ``x`` (shared by all its layers)."""
        csets = {kind: self.local if kind == "local" else self.global_ for kind in sorted(set(self.kinds))}
        if return_info:
            return build_graphs(x, csets, self.selector, return_info=True)
        return build_graphs(x, csets, self.selector), {}

    def forward(self, x: Tensor) -> Tensor:
        graphs, infos = self.build_graphs(x, return_info=self.keep_info)
        if self.keep_info:
            self.last_info = {k: (graphs[k], infos[k]) for k in graphs}
        for kind, layer in zip(self.kinds, self.layers):
            x = layer(x, graphs[kind])
        return x


class ResidualUnit(nn.Module):
    """1x1 (C -> C/2), GELU, 3x3, GELU, 1x1 (-> C), plus identity, then GELU (WACNN)."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.body = nn.Sequential(
            nn.Conv2d(channels, half, 1),
            nn.GELU(),
            nn.Conv2d(half, half, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(half, channels, 1),
        )
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.body(x))


class GraphWindowBlock(nn.Module):
    r"""Graph-based window attention module, GABIC (ICIP 2024) Fig. 2(b).

    .. math:: \mathrm{out} = a(x) \odot \sigma(b(x)) + x

    where :math:`a` is three residual units and :math:`b` is a graph attention
    layer (:class:`~gnn_lic.nn.GraphAttentionConv`, eqs. 5-6) over a k-NN graph
    built inside non-overlapping ``window x window`` tiles (eq. 7), then three
    residual units and a 1x1 convolution. ``knn=None`` keeps every window node
    (self included): window self-attention, the WACNN baseline (GABIC eqs. 8-12).

    Args:
        channels (int): channels ``C``.
        window (int): window side ``M``.
        knn (int or None): neighbours per node (default 9); ``None`` keeps all.
        heads (int): attention heads (default 8).
        impl (str): aggregation path.
    """

    def __init__(self, channels: int, window: int = 8, knn: Optional[int] = 9, heads: int = 8, impl: str = "sparse"):
        super().__init__()
        self.window = WindowPartition(window)
        self.selector = KeepAll() if knn is None else TopK(knn)
        self.attn = GraphAttentionConv(channels, heads=heads, impl=impl)
        self.branch_a = nn.Sequential(*(ResidualUnit(channels) for _ in range(3)))
        self.branch_b = nn.Sequential(*(ResidualUnit(channels) for _ in range(3)), nn.Conv2d(channels, channels, 1))
        self.last_info: Dict[str, object] = {}
        self.keep_info = False  # set True to keep the graph and GraphInfo of the last forward (analysis)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if self.keep_info:
            graphs, infos = build_graphs(x, {"window": self.window}, self.selector, return_info=True)
            self.last_info = {"window": (graphs["window"], infos["window"])}
        else:
            graphs = build_graphs(x, {"window": self.window}, self.selector)
        graph = graphs["window"]
        tokens = x.permute(0, 2, 3, 1).reshape(-1, C)
        g = self.attn(tokens, graph).view(B, H, W, C).permute(0, 3, 1, 2)
        return self.branch_a(x) * torch.sigmoid(self.branch_b(g)) + x
