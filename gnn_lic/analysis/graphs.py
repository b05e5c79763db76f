r"""What the graphs of a model look like on an image (GLIC Fig. 7, GABIC Fig. 3).

:func:`graph_stages` runs a model once and returns, for every graph stage (each
:class:`~gnn_lic.nn.GFABlock` of GLIC, each :class:`~gnn_lic.nn.GraphWindowBlock` of
GABIC/WACNN, in ``g_a`` and ``g_s``):

* the complexity-score map :math:`s_i` (RMS-G, GLIC eqs. 3-5, for the default score),
* the target in-degree :math:`d_i^*` (eq. 6) and the realised in-degree
  :math:`|\mathcal N_i|` of each graph (Algorithm 1),
* the graphs themselves, so :func:`neighbours` can tell, for any pixel, which nodes its
  feature-map node actually receives messages from, in image coordinates.

Nothing here builds graphs: the blocks keep what they built in their own forward pass
(``keep_info``), so what is shown is exactly what the model used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from gnn_lic.graph import CSRGraph
from gnn_lic.models.base import pad_to_multiple
from gnn_lic.nn.blocks import GFABlock, GraphWindowBlock

__all__ = ["GraphStage", "graph_blocks", "graph_stages", "neighbours"]


@dataclass
class GraphStage:
    """The graphs one block built for one image.

    Attributes:
        name: the block's module name (e.g. ``"g_a.blocks.1"``).
        shape: ``(h, w)`` of its feature map.
        stride: ``(sy, sx)``, image pixels per feature-map node along each axis.
        scores: complexity scores ``(h, w)`` (``None`` for k-NN window graphs).
        target_degree: ``{kind: (h, w)}`` targets ``d_i^*`` (adaptive graphs only).
        degree: ``{kind: (h, w)}`` realised in-degrees.
        graphs: ``{kind: CSRGraph}`` over the ``h * w`` nodes of this image.

    ``kind`` is ``"local"``/``"global"`` for GLIC and ``"window"`` for GABIC.
    """

    name: str
    shape: Tuple[int, int]
    stride: Tuple[float, float]
    scores: Optional[Tensor]
    target_degree: Dict[str, Tensor] = field(default_factory=dict)
    degree: Dict[str, Tensor] = field(default_factory=dict)
    graphs: Dict[str, CSRGraph] = field(default_factory=dict)

    def node_of_pixel(self, pixel: Tuple[int, int]) -> Tuple[int, int]:
        """Feature-map node ``(row, col)`` covering image pixel ``(y, x)``."""
        r = min(int(pixel[0] // self.stride[0]), self.shape[0] - 1)
        c = min(int(pixel[1] // self.stride[1]), self.shape[1] - 1)
        return r, c

    def pixel_of_node(self, node: Tuple[int, int]) -> Tuple[float, float]:
        """Image coordinates ``(y, x)`` of the centre of node ``(row, col)``."""
        return (node[0] + 0.5) * self.stride[0] - 0.5, (node[1] + 0.5) * self.stride[1] - 0.5


def graph_blocks(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """``(name, block)`` of every graph-building block of ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (GFABlock, GraphWindowBlock))]


@torch.no_grad()
def graph_stages(model: nn.Module, x: Tensor) -> List[GraphStage]:
    """Run ``model`` on one image ``x`` ``(1, 3, H, W)`` and collect every block's graphs.

    The image is padded like the model pads it (to ``model.pad_multiple``); strides are
    relative to the padded image, whose top-left part is ``x``. The model is run in eval
    mode and left in the mode it was in.
    """
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected one image (1, 3, H, W), got {tuple(x.shape)}")
    blocks = graph_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no graph blocks")
    was_training = model.training
    model.eval()
    for _, b in blocks:
        b.keep_info, b.last_info = True, {}
    try:
        x_pad, _ = pad_to_multiple(x, getattr(model, "pad_multiple", 1))
        model(x_pad)
        Hp, Wp = x_pad.shape[-2:]
        stages = []
        for name, b in blocks:
            if not b.last_info:
                continue
            first_info = next(iter(b.last_info.values()))[1]
            h, w = first_info.degree.shape[-2:]
            st = GraphStage(name=name, shape=(h, w), stride=(Hp / h, Wp / w),
                            scores=None if first_info.scores is None else first_info.scores[0])
            for kind, (graph, info) in b.last_info.items():
                st.graphs[kind] = graph
                st.degree[kind] = info.degree[0]
                if info.target_degree is not None:
                    st.target_degree[kind] = info.target_degree[0]
            stages.append(st)
    finally:
        for _, b in blocks:
            b.keep_info, b.last_info = False, {}
        model.train(was_training)
    return stages


def neighbours(stage: GraphStage, kind: str, pixel: Tuple[int, int]) -> Tensor:
    """Image coordinates ``(K, 2)`` (``y, x``, node centres) of the in-neighbours that the
    node covering ``pixel`` receives messages from in graph ``kind`` of ``stage``."""
    if kind not in stage.graphs:
        raise ValueError(f"stage {stage.name} has graphs {sorted(stage.graphs)}, not {kind!r}")
    h, w = stage.shape
    r, c = stage.node_of_pixel(pixel)
    g = stage.graphs[kind]
    i = r * w + c
    src = g.col[int(g.crow[i]) : int(g.crow[i + 1])]
    rows, cols = (src // w).double(), (src % w).double()
    return torch.stack([(rows + 0.5) * stage.stride[0] - 0.5, (cols + 0.5) * stage.stride[1] - 0.5], 1)
