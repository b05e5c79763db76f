"""Message-passing layers, image-domain graph blocks and (shifted) window attention."""

from gnn_lic.nn.attention_base import SparseAttentionConv, as_csr
from gnn_lic.nn.functional import sddmm, sparse_attention, spmm
from gnn_lic.nn.graph_aggregation_conv import GraphAggregationConv
from gnn_lic.nn.graph_attention_conv import GraphAttentionConv

__all__ = [
    "GraphAggregationConv",
    "GraphAttentionConv",
    "SparseAttentionConv",
    "as_csr",
    "sparse_attention",
    "sddmm",
    "spmm",
]

from gnn_lic.nn.blocks import (  # noqa: E402
    GFA_ORDERS,
    GatedFFN,
    GFABlock,
    GFALayer,
    GraphWindowBlock,
    LayerNorm2d,
    ResidualUnit,
)

__all__ += ["GFABlock", "GFALayer", "GraphWindowBlock", "LayerNorm2d", "GatedFFN", "ResidualUnit", "GFA_ORDERS"]

from gnn_lic.nn.window_attention import (  # noqa: E402
    WindowAttention,
    WindowAttentionBlock,
    WindowAttentionLayer,
    relative_position_index,
    window_mask,
)

from gnn_lic.nn.convs import DepthwiseConv2d, PointwiseConv2d  # noqa: E402
from gnn_lic.nn.winograd import WinogradConv2d  # noqa: E402

__all__ += ["DepthwiseConv2d", "PointwiseConv2d", "WinogradConv2d"]

__all__ += ["WindowAttention", "WindowAttentionLayer", "WindowAttentionBlock", "relative_position_index", "window_mask"]
