"""Image-domain graph blocks: ``(B, C, H, W)`` in, graphs built, ``(B, C, H, W)`` out.

Blocks never build graphs their own way: they call :func:`gnn_lic.graph.build_graphs`.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnn_lic.graph import (
    AdaptiveDegree,
    CandidateSet,
    CSRGraph,
    BlockWindow,
    GlobalGrid,
    KeepAll,
    Selector,
    TopK,
    WindowPartition,
    build_graphs,
)
from gnn_lic.nn.activations import GELU, gelu
from gnn_lic.nn.banded import banded_residual, band_pixels, memory_layout, use_bands
from gnn_lic.nn.convs import PointwiseConv2d
from gnn_lic.nn.gate import DepthwiseGeluGate, GeluGate, depthwise_gelu_gate, gate_fits, gelu_gate
from gnn_lic.nn.graph_aggregation_conv import GraphAggregationConv
from gnn_lic.nn.graph_attention_conv import GraphAttentionConv
from gnn_lic.nn.winograd import WinogradConv2d

__all__ = ["LayerNorm2d", "GatedFFN", "ffn_residual", "GFALayer", "GFABlock", "GraphWindowBlock", "ResidualUnit", "GFA_ORDERS",
           "window_offset_attr"]


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of every pixel of a ``(B, C, H, W)`` map."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps).permute(0, 3, 1, 2)


class GatedFFN(nn.Module):
    r"""Gated feed-forward network of GLIC's blocks (as in the authors' code), all convolutions without bias.

    .. math:: \mathrm{FFN}(x) = W_2\,(\mathrm{GELU}(a) \odot b), \qquad [a \,|\, b] = D(W_1 x)

    with 1x1 convolutions :math:`W_1: C \to 2eC` and :math:`W_2: eC \to C`. :math:`D` is a
    3x3 depthwise convolution with ``depthwise=True`` (the feed-forward of a GFA layer: it
    gives the aggregation a positional signal), else the identity (pointwise, so it can sit
    inside a checkerboard entropy-parameter network: GLIC Fig. 2(c)).

    Args:
        channels (int): channels ``C``.
        expansion (float): hidden expansion ``e`` (default 4).
        depthwise (bool): the 3x3 depthwise convolution :math:`D` (default ``False``).
    """

    def __init__(self, channels: int, expansion: float = 4.0, depthwise: bool = False):
        super().__init__()
        hidden = int(channels * expansion)
        self.proj_in = PointwiseConv2d(channels, 2 * hidden, bias=False)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=False) if depthwise else None
        self.proj_out = PointwiseConv2d(hidden, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj_in(x)
        if self.dwconv is not None:
            if gate_fits(h, self.dwconv.weight):  # the convolution and the gate in one pass (the same function)
                if torch.is_grad_enabled():
                    return self.proj_out(DepthwiseGeluGate.apply(h, self.dwconv.weight))
                return self.proj_out(depthwise_gelu_gate(h, self.dwconv.weight))
            h = self.dwconv(h)
        elif gate_fits(h):  # the gate in one pass
            return self.proj_out(GeluGate.apply(h) if torch.is_grad_enabled() else gelu_gate(h))
        if torch.is_grad_enabled():
            return self.proj_out(_GeluGate.apply(h))
        # no autograd: the gate in place in a dense copy of ``a`` (the halves of ``h`` are strided views, on
        # which GELU and oneDNN's 1x1 convolution run slowly), the same numbers as :class:`_GeluGate`
        a, b = h.chunk(2, dim=1)
        a = a.contiguous(memory_format=memory_layout(h))
        return self.proj_out(gelu(a, inplace=True).mul_(b))


class _GeluGate(torch.autograd.Function):
    r"""The gate :math:`\mathrm{GELU}(a) \odot b` of ``h = [a | b]`` (split over channels) under autograd.

    Forward as :class:`GatedFFN` computes it without autograd (GELU of a dense copy of ``a``, times ``b``).
    The backward writes both halves' gradients,
    :math:`\partial a = g \odot b \odot \mathrm{GELU}'(a)` and :math:`\partial b = g \odot \mathrm{GELU}(a)`,
    into one map in the layout of ``h``, instead of two maps and their concatenation. (Where the compiled loops
    can take the map, :class:`~gnn_lic.nn.gate.GeluGate` runs instead.)"""

    @staticmethod
    def forward(ctx, h: Tensor) -> Tensor:
        fmt = memory_layout(h)
        a, b = h.chunk(2, dim=1)
        gelu_a = gelu(a.contiguous(memory_format=fmt))
        ctx.save_for_backward(h, gelu_a)
        return gelu_a * b

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, gelu_a = ctx.saved_tensors
        # channels as the last dimension (views); the halves are then slices of it
        hv = h.movedim(1, -1)
        half = hv.shape[-1] // 2
        out = torch.empty_like(h)
        ov = out.movedim(1, -1)
        g = grad.contiguous(memory_format=memory_layout(h)).movedim(1, -1)
        torch.mul(g, gelu_a.movedim(1, -1), out=ov[..., half:])
        torch.ops.aten.gelu_backward.grad_input(g * hv[..., half:], hv[..., :half], grad_input=ov[..., :half])
        return out


def ffn_residual(x: Tensor, norm: nn.Module, ffn: nn.Module) -> Tensor:
    """``x + ffn(norm(x))``; without autograd computed band of rows by band into ``x``
    (:func:`gnn_lic.nn.banded.banded_residual`, bands sized for a :class:`GatedFFN`'s hidden
    width, one row of halo for its depthwise convolution): the same numbers, without
    map-sized hidden tensors. Another ``ffn`` (no band size known) runs on the whole map."""
    def residual(t: Tensor) -> Tensor:
        return ffn(norm(t))

    if isinstance(ffn, GatedFFN):
        pixels = band_pixels(ffn.proj_in.out_channels, x.element_size())
        if use_bands(x, pixels):
            return banded_residual(x, residual, halo=0 if ffn.dwconv is None else 1, pixels=pixels, inplace=True)
    return x + residual(x)


class GFALayer(nn.Module):
    """One GFA layer: ``x + Agg(LN(x))`` on a graph, then ``x + FFN(LN(x))`` (:func:`ffn_residual`).

    Args:
        channels, heads, mlp_ratio, impl: widths and aggregation path.
        position_bias (pair of int, optional): relative-position table ``(Q, S)`` of
            the aggregation (see :class:`GraphAggregationConv`).
        norm_eps (float): epsilon of the feed-forward's layer norm (default ``1e-6``).
        max_temperature (float): temperature cap of the aggregation (default ``100``).
    """

    def __init__(self, channels: int, heads: int = 8, mlp_ratio: float = 2.0, impl: str = "sparse",
                 position_bias: Optional[Tuple[int, int]] = None, norm_eps: float = 1e-6,
                 max_temperature: float = 100.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.conv = GraphAggregationConv(channels, heads=heads, impl=impl, position_bias=position_bias,
                                         max_temperature=max_temperature)
        self.norm2 = LayerNorm2d(channels, eps=norm_eps)
        self.ffn = GatedFFN(channels, mlp_ratio, depthwise=True)

    def forward(self, x: Tensor, graph: CSRGraph) -> Tensor:
        B, C, H, W = x.shape
        if torch.is_grad_enabled():
            agg = self.conv(self.norm1(x.permute(0, 2, 3, 1).reshape(-1, C)), graph)
        else:  # the same operations, each map dropped as soon as the next no longer needs it
            q, k, v, tau = self.conv.project(self.norm1(x.permute(0, 2, 3, 1).reshape(-1, C)))
            agg = self.conv.attention(q, k, v, tau, graph)
            del q, k, v
            agg = self.conv.out(agg)
        x = x + agg.view(B, H, W, C).permute(0, 3, 1, 2)
        del agg
        return ffn_residual(x, self.norm2, self.ffn)


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
    local graph and a global graph (*where to connect*: two
    :class:`~gnn_lic.graph.CandidateSet` s) with one
    :class:`~gnn_lic.graph.Selector` (*how much*: by default
    :class:`~gnn_lic.graph.AdaptiveDegree`, whose complexity scores are computed
    once and shared by both graphs); then ``depth`` :class:`GFALayer` s alternate
    between the two graphs (local first by default: depth 5 gives local, global,
    local, global, local, as in the authors' code).

    Args:
        channels (int): channels ``C``.
        depth (int): number of layers.
        mlp_ratio (float): feed-forward expansion.
        heads (int): attention heads.
        local (CandidateSet): local candidates (default
            :class:`~gnn_lic.graph.BlockWindow` ``(8, 16)``, the local rule of the GLIC authors' code).
        global_ (CandidateSet): global candidates (default ``GlobalGrid(16)``).
        selector (Selector): selection rule (default ``AdaptiveDegree(64)``: RMS-G,
            5 bisection steps).
        order (str): one of :data:`GFA_ORDERS` (GLIC Table 3 ablations).
        impl (str): aggregation path of the layers.
        position_bias (bool): relative-position terms in the aggregation (the
            authors' code); both candidate sets must define
            :attr:`~gnn_lic.graph.CandidateSet.position_window`, and it must agree.
        norm_eps (float), max_temperature (float): see :class:`GFALayer`.
    """

    def __init__(
        self,
        channels: int,
        depth: int,
        mlp_ratio: float = 2.0,
        heads: int = 8,
        local: Optional[CandidateSet] = None,
        global_: Optional[CandidateSet] = None,
        selector: Optional[Selector] = None,
        order: str = "local-global",
        impl: str = "sparse",
        position_bias: bool = False,
        norm_eps: float = 1e-6,
        max_temperature: float = 100.0,
    ):
        super().__init__()
        self.kinds = _layer_kinds(order, depth)
        self.order = order
        self.local = BlockWindow(8, 16) if local is None else local
        self.global_ = GlobalGrid(16) if global_ is None else global_
        self.selector = AdaptiveDegree(64) if selector is None else selector
        window = None
        if position_bias:
            windows = {self._cset(kind).position_window for kind in set(self.kinds)}
            if len(windows) != 1 or None in windows:
                raise ValueError(f"position_bias needs candidate sets with one position window, got {windows}")
            window = windows.pop()
        self.position_bias = bool(position_bias)
        self.layers = nn.ModuleList(
            GFALayer(channels, heads, mlp_ratio, impl, position_bias=window, norm_eps=norm_eps,
                     max_temperature=max_temperature)
            for _ in range(depth)
        )
        self.last_info: Dict[str, object] = {}
        self.keep_info = False  # set True to keep GraphInfo of the last forward (analysis)

    def _cset(self, kind: str) -> CandidateSet:
        return self.local if kind == "local" else self.global_

    def build_graphs(self, x: Tensor, return_info: bool = False) -> Tuple[Dict[str, CSRGraph], Dict[str, object]]:
        """The block's graphs for input ``x`` (shared by all its layers)."""
        csets = {kind: self._cset(kind) for kind in sorted(set(self.kinds))}
        out = build_graphs(x, csets, self.selector, return_info=return_info, positions=self.position_bias)
        return out if return_info else (out, {})

    def forward(self, x: Tensor) -> Tensor:
        graphs, infos = self.build_graphs(x, return_info=self.keep_info)
        if self.keep_info:
            self.last_info = {k: (graphs[k], infos[k]) for k in graphs}
        for kind, layer in zip(self.kinds, self.layers):
            x = layer(x, graphs[kind])
        return x


class ResidualUnit(nn.Module):
    """1x1 (C -> C/2), GELU, 3x3, GELU, 1x1 (-> C), plus identity, then GELU (WACNN). The 3x3 convolution is
    :class:`~gnn_lic.nn.winograd.WinogradConv2d` (``nn.Conv2d``'s parameters and state dict)."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.body = nn.Sequential(
            nn.Conv2d(channels, half, 1),
            GELU(),
            WinogradConv2d(half, half),
            GELU(),
            nn.Conv2d(half, channels, 1),
        )
        self.act = GELU()

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return self.act(x + self.body(x))
        # no autograd: activations and the sum in place, the same numbers
        conv1, _, conv3, _, conv_out = self.body
        h = gelu(conv3(gelu(conv1(x), inplace=True)), inplace=True)
        return gelu(conv_out(h).add_(x), inplace=True)


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
        selector (Selector, optional): overrides ``knn`` (e.g.
            ``TopK(9, skip_first=True)``, the authors' k+1 rule).
        edge_attr (bool): the authors' edge attribute :math:`e_{ij} = (\Delta u + \Delta v)^2`
            of the window offset between ``j`` and ``i``, added to the logits through
            a learned ``1 -> C`` projection summed per head (default ``False``).
    """

    def __init__(self, channels: int, window: int = 8, knn: Optional[int] = 9, heads: int = 8, impl: str = "sparse",
                 selector: Optional[Selector] = None, edge_attr: bool = False):
        super().__init__()
        self.window = WindowPartition(window)
        if selector is None:
            selector = KeepAll() if knn is None else TopK(knn)
        self.selector = selector
        self.edge_attr = bool(edge_attr)
        self.attn = GraphAttentionConv(channels, heads=heads, impl=impl, edge_dim=1 if edge_attr else None)
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
        attr = window_offset_attr(graph, W).unsqueeze(-1).to(x.dtype) if self.edge_attr else None
        g = self.attn(tokens, graph, attr).view(B, H, W, C).permute(0, 3, 1, 2)
        if torch.is_grad_enabled():
            return self.branch_a(x) * torch.sigmoid(self.branch_b(g)) + x
        # no autograd: the gate, product and sum in place in branch b's output, the same numbers
        gate = torch.sigmoid_(self.branch_b(g))
        return gate.mul_(self.branch_a(x)).add_(x)


def window_offset_attr(graph: CSRGraph, width: int) -> Tensor:
    r"""``(E,)`` edge attribute :math:`(\Delta u + \Delta v)^2` of every edge ``j -> i`` of a
    map ``width`` nodes wide (node ids ``b*H*W + u*W + v``; GABIC authors' code)."""
    src, dst = graph.col, graph.row
    du = src // width - dst // width  # batch offsets cancel: edges stay inside an image
    dv = src % width - dst % width
    return (du + dv).square()
