"""Shared machinery of gnn_lic's attention ``MessagePassing`` layers."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from gnn_lic.graph.sparse import CSRGraph
from gnn_lic.nn.functional import sparse_attention

__all__ = ["SparseAttentionConv", "as_csr"]

IMPLS = ("sparse", "gather")


def as_csr(edge_index: Union[Tensor, CSRGraph], num_nodes: int) -> CSRGraph:
    """Accept a ``(2, E)`` ``edge_index`` or an already converted :class:`CSRGraph`."""
    if isinstance(edge_index, CSRGraph):
        if edge_index.num_nodes != num_nodes:
            raise ValueError(f"graph has {edge_index.num_nodes} nodes but x has {num_nodes} rows")
        return edge_index
    return CSRGraph.from_edge_index(edge_index, num_nodes)


class SparseAttentionConv(MessagePassing):
    r"""Softmax attention over in-neighbours, with two interchangeable paths.

    Subclasses produce per-head queries, keys and values (``(N, H, d)``) and
    call :meth:`attend`, which computes
    :math:`\sum_{j \in \mathcal{N}_i} \mathrm{softmax}_j(q_i^\top k_j)\, v_j`:

    * ``impl="sparse"`` (default): ``propagate`` on the sparse adjacency runs
      :meth:`message_and_aggregate`, i.e. SDDMM -> segment softmax -> SpMM
      (:func:`gnn_lic.nn.functional.sparse_attention`), with no per-edge
      feature tensor;
    * ``impl="gather"``: PyG's per-edge :meth:`message` with
      ``torch_geometric.utils.softmax`` and a scatter-sum (the reference path).

    ``python -m gnn_lic.bench graph`` measures both side by side.
    """

    def __init__(self, impl: str = "sparse", **kwargs):
        kwargs.setdefault("aggr", "add")
        kwargs.setdefault("node_dim", 0)
        super().__init__(**kwargs)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.impl = impl
        self._graph: Optional[CSRGraph] = None
        self._bound: Optional[Tensor] = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, edge_index: Union[Tensor, CSRGraph], logit_bound: Optional[Tensor] = None) -> Tensor:
        """Attention-weighted sum of ``v`` over in-neighbours -> ``(N, H, d_v)``.

        ``logit_bound`` (``(H,)``) is an upper bound of ``q_i . k_j`` per head that
        lets the sparse path skip the per-row maximum (see
        :func:`gnn_lic.nn.functional.sparse_attention`)."""
        N = q.shape[0]
        if self.impl == "gather":
            ei = edge_index.edge_index if isinstance(edge_index, CSRGraph) else edge_index
            return self.propagate(ei, q=q, k=k, v=v, size=(N, N))
        graph = as_csr(edge_index, N)
        if graph.order is not None:
            # run in the graph's cache-friendly node order; the same sums, bit for bit
            order, inverse, graph = graph.relabelled()
            q, k, v = (t.index_select(0, order) for t in (q, k, v))
            return self._attend_sparse(graph, q, k, v, logit_bound).index_select(0, inverse)
        return self._attend_sparse(graph, q, k, v, logit_bound)

    def _attend_sparse(self, graph: CSRGraph, q: Tensor, k: Tensor, v: Tensor, logit_bound: Optional[Tensor]) -> Tensor:
        N = q.shape[0]
        # PyG's generated ``propagate`` only forwards the message's arguments, so
        # the graph (with its cached transpose) reaches ``message_and_aggregate``
        # through this attribute, set only for the duration of the call.
        self._graph, self._bound = graph, logit_bound
        try:
            return self.propagate(graph.pattern(q.dtype), q=q, k=k, v=v, size=(N, N))
        finally:
            self._graph, self._bound = None, None

    def message(self, q_i: Tensor, k_j: Tensor, v_j: Tensor, index: Tensor, ptr: Optional[Tensor], size_i: Optional[int]) -> Tensor:
        alpha = softmax((q_i * k_j).sum(-1), index, ptr, size_i)  # (E, H)
        return alpha.unsqueeze(-1) * v_j

    def message_and_aggregate(self, adj_t: Tensor, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        graph = self._graph
        if graph is None:  # called directly with a sparse adjacency
            crow, col = adj_t.crow_indices(), adj_t.col_indices()
            row = torch.repeat_interleave(torch.arange(adj_t.shape[0], device=crow.device), crow.diff())
            graph = CSRGraph(crow, col, row, adj_t.shape[0])
        heads_first = [t.transpose(0, 1) for t in (q, k, v)]  # (H, N, d)
        return sparse_attention(graph, *heads_first, logit_bound=self._bound).transpose(0, 1)
