"""The one graph-construction API of gnn_lic.

Every model variant builds its graphs here: a :class:`CandidateSet` says *where
to connect* (GLIC Sec. 3.3.1), a :class:`Selector` *how much* (Sec. 3.3.2-3.3.3),
and :func:`build_graph` returns a PyTorch Geometric ``edge_index``
(:func:`build_graphs`: several graphs of one map as :class:`CSRGraph` s, sharing
the normalised features and scores).

>>> import torch
>>> from gnn_lic.graph import build_graph, LocalWindow, GlobalGrid, WindowPartition, AdaptiveDegree, TopK
>>> x = torch.randn(1, 32, 16, 16)
>>> local = build_graph(x, LocalWindow(8), AdaptiveDegree(avg_degree=16, score="rms", iters=5))
>>> knn = build_graph(x, WindowPartition(8), TopK(9))
>>> knn.shape
torch.Size([2, 2304])
"""

from gnn_lic.graph.build import GraphInfo, build_graph, build_graphs, to_data
from gnn_lic.graph.candidates import BORDERS, AxisLayout, BlockWindow, CandidateSet, GlobalGrid, LocalWindow, WindowPartition
from gnn_lic.graph.scores import (
    SCORES,
    blurred_rms_gradient,
    complexity_score,
    degree_quota,
    local_entropy,
    rescaling_residual,
    rms_gradient,
    sobel_gradients,
)
from gnn_lic.graph.selectors import BISECTIONS, AdaptiveDegree, KeepAll, Selection, Selector, TopK, bisection_threshold
from gnn_lic.graph.similarity import Candidates, candidates, row_similarity, unit_features
from gnn_lic.graph.sparse import CSRGraph

__all__ = [
    "build_graph",
    "build_graphs",
    "to_data",
    "GraphInfo",
    "Candidates",
    "candidates",
    "unit_features",
    "row_similarity",
    "CandidateSet",
    "AxisLayout",
    "LocalWindow",
    "BlockWindow",
    "BORDERS",
    "GlobalGrid",
    "WindowPartition",
    "Selector",
    "Selection",
    "AdaptiveDegree",
    "TopK",
    "KeepAll",
    "bisection_threshold",
    "BISECTIONS",
    "SCORES",
    "rms_gradient",
    "blurred_rms_gradient",
    "sobel_gradients",
    "local_entropy",
    "rescaling_residual",
    "complexity_score",
    "degree_quota",
    "CSRGraph",
]
