"""Shared machinery of gnn_lic's attention ``MessagePassing`` layers."""

from __future__ import annotations

import threading
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.utils import softmax

from gnn_lic.graph.sparse import CSRGraph
from gnn_lic.nn import functional
from gnn_lic.nn.functional import sparse_attention

__all__ = ["SparseAttentionConv", "as_csr"]

IMPLS = ("sparse", "gather")

#: per thread, ``{id(layer): (graph, logit bound, edge bias)}`` of the sparse aggregations in progress: a
#: caller may run one layer on several threads at once
_CALLS = threading.local()


def _calls() -> Dict[int, Tuple[CSRGraph, Optional[Tensor], Optional[Tensor]]]:
    calls = getattr(_CALLS, "by_layer", None)
    if calls is None:
        calls = _CALLS.by_layer = {}
    return calls


def as_csr(edge_index: Union[Tensor, CSRGraph], num_nodes: int) -> CSRGraph:
    """Accept a ``(2, E)`` ``edge_index`` or an already converted :class:`CSRGraph`."""
    if isinstance(edge_index, CSRGraph):
        if edge_index.num_nodes != num_nodes:
            raise ValueError(f"graph has {edge_index.num_nodes} nodes but x has {num_nodes} rows")
        return edge_index
    return CSRGraph.from_edge_index(edge_index, num_nodes)


class _RowPermutation(torch.autograd.Function):
    """``t.index_select(0, index)`` for a permutation ``index`` whose inverse is ``inverse``; its gradient is
    the inverse gather (``index_select``'s own backward scatters with ``index_add``, slower on these
    head-strided tensors). The same numbers either way: a permutation adds nothing up."""

    @staticmethod
    def forward(ctx, t: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return t.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


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

    def attend(self, q: Tensor, k: Tensor, v: Tensor, edge_index: Union[Tensor, CSRGraph], logit_bound: Optional[Tensor] = None,
               edge_bias: Optional[Callable[[CSRGraph], Tensor]] = None) -> Tensor:
        """Attention-weighted sum of ``v`` over in-neighbours -> ``(N, H, d_v)``.

        ``logit_bound`` (``(H,)``) is an upper bound of the logits per head that
        lets the sparse path skip the per-row maximum (see
        :func:`gnn_lic.nn.functional.sparse_attention`). ``edge_bias`` maps the
        graph the aggregation runs on to ``(E, H)`` additive logit terms in its edge
        order. A graph with a zero node (``num_cols = N + 1``) gets zero keys and
        values for it."""
        N = q.shape[0]
        graph = as_csr(edge_index, N)
        if graph.num_cols > N:
            k, v = (torch.cat([t, t.new_zeros(1, *t.shape[1:])]) for t in (k, v))
        if self.impl == "gather":
            bias = None if edge_bias is None else edge_bias(graph)
            return self.propagate(graph.edge_index, q=q, k=k, v=v, bias=bias, size=(graph.num_cols, N))
        chunked = not torch.is_grad_enabled() and graph.num_edges > functional.CHUNK_EDGES
        fused = edge_bias is None and functional.fused_attention_fits(q, k, v, None)
        if graph.order is not None and graph.num_cols == N and not (chunked or fused):
            # run in the graph's cache-friendly node order; the same sums, bit for bit (not when the rows run
            # in chunks: the relabelled copies would be whole maps; the fused passes visit the rows in that
            # order themselves, reading the maps in place)
            order, inverse, graph = graph.relabelled()
            q, k, v = (_RowPermutation.apply(t, order, inverse) for t in (q, k, v))
            return _RowPermutation.apply(self._attend_sparse(graph, q, k, v, logit_bound, edge_bias), inverse, order)
        return self._attend_sparse(graph, q, k, v, logit_bound, edge_bias)

    def _attend_sparse(self, graph: CSRGraph, q: Tensor, k: Tensor, v: Tensor, logit_bound: Optional[Tensor],
                       edge_bias: Optional[Callable[[CSRGraph], Tensor]] = None) -> Tensor:
        N = q.shape[0]
        # PyG's generated ``propagate`` only forwards the message's arguments, so the graph (with its
        # cached transpose) reaches ``message_and_aggregate`` through this thread's record of the call
        calls, key = _calls(), id(self)
        previous = calls.get(key)
        calls[key] = (graph, logit_bound, None if edge_bias is None else edge_bias(graph).t())
        try:
            return self.propagate(graph.structure(q.dtype), q=q, k=k, v=v, bias=None, size=(graph.num_cols, N))
        finally:
            if previous is None:
                del calls[key]
            else:
                calls[key] = previous

    def message(self, q_i: Tensor, k_j: Tensor, v_j: Tensor, bias: Optional[Tensor], index: Tensor,
                ptr: Optional[Tensor], size_i: Optional[int]) -> Tensor:
        logits = (q_i * k_j).sum(-1)  # (E, H)
        if bias is not None:
            logits = logits + bias
        alpha = softmax(logits, index, ptr, size_i)
        return alpha.unsqueeze(-1) * v_j

    def message_and_aggregate(self, adj_t: Tensor, q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        graph, bound, stored_bias = _calls().get(id(self), (None, None, None))
        if graph is None:  # called directly with a sparse adjacency
            crow, col = adj_t.crow_indices(), adj_t.col_indices()
            row = torch.repeat_interleave(torch.arange(adj_t.shape[0], device=crow.device), crow.diff())
            graph = CSRGraph(crow, col, row, adj_t.shape[0], num_cols=adj_t.shape[1])
        heads_first = [t.transpose(0, 1) for t in (q, k, v)]  # (H, N, d)
        bias = stored_bias if bias is None else bias.t()
        return sparse_attention(graph, *heads_first, logit_bound=bound, edge_bias=bias).transpose(0, 1)
