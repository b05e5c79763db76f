r"""Sparse attention kernels over a :class:`~gnn_lic.graph.CSRGraph`.

Softmax attention over in-neighbours,

.. math::
    \mathrm{out}_i = \sum_{j \in \mathcal{N}_i}
    \frac{\exp(q_i^\top k_j)}{\sum_{u \in \mathcal{N}_i} \exp(q_i^\top k_u)} v_j,

is computed with two sparse operations that never materialise one feature
vector per edge: an SDDMM (``torch.sparse.sampled_addmm``) for the logits and
an SpMM (CSR x dense) for the weighted sum (the softmax denominator comes from
the same SpMM, see :func:`sparse_attention`). Both have hand-written backwards
made of the same two primitives (using the graph's cached transpose), so
training memory stays at ``O(E * heads + N * C)`` instead of ``O(E * C)``. Under autograd on float32
CPU tensors with the compiled loops on (and no per-edge logit terms), :mod:`gnn_lic.nn.fused_attention`
computes the same function in three compiled passes instead, keeping no edge tensor between forward
and backward; without autograd its forward pass alone, no edge tensor at all.

Tensors are head-major: ``q, k`` are ``(H, N, d)``, ``v`` is ``(H, N, d_v)``,
edge values are ``(H, E)`` in the graph's CSR order.
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor
from torch.autograd import Function

from gnn_lic.graph.sparse import CSRGraph, crow_from_degree
from gnn_lic.nn.fused_attention import FusedAttention, fused_attention, fused_attention_fits

__all__ = ["sddmm", "spmm", "sparse_attention", "row_chunks", "CHUNK_EDGES"]

_UNDERFLOW = 1e-30

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def _csr(crow: Tensor, col: Tensor, values: Tensor, n: int, m: int) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, values, (n, m), check_invariants=False)


def _spmm(crow: Tensor, col: Tensor, w: Tensor, v: Tensor) -> Tensor:
    """``out[h] = A_h @ v[h]`` with ``A_h`` the CSR matrix holding ``w[h]``."""
    n = crow.numel() - 1
    out = v.new_empty(w.shape[0], n, v.shape[-1])
    for h in range(w.shape[0]):
        torch.mm(_csr(crow, col, w[h], n, v.shape[1]), v[h], out=out[h])  # no temporary per head
    return out


def _sampled_products(crow: Tensor, col: Tensor, out: Tensor, a: Tensor, bt: Tensor) -> None:
    """``out[e] = a[row_e] . bt[:, col_e]`` for the edges of the CSR pattern ``(crow, col)``, written into the
    zero-filled ``(E,)`` buffer ``out``: on a CPU in place (``out=`` a CSR matrix over the buffer, no copy of the
    edge values); elsewhere through a copy."""
    pattern = _csr(crow, col, out, crow.numel() - 1, bt.shape[1])
    if out.device.type == "cpu":
        torch.sparse.sampled_addmm(pattern, a, bt, beta=0.0, out=pattern)
    else:
        out.copy_(torch.sparse.sampled_addmm(pattern, a, bt, beta=0.0).values())


def _sddmm(graph: CSRGraph, a: Tensor, b: Tensor) -> Tensor:
    """``out[h, e] = a[h, row_e] . b[h, col_e]`` for every edge ``e``."""
    out = a.new_zeros(a.shape[0], graph.num_edges)
    for h in range(a.shape[0]):
        _sampled_products(graph.crow, graph.col, out[h], a[h], b[h].t())
    return out


def _segment(values: Tensor, graph: CSRGraph, reduce: str) -> Tensor:
    """Reduce ``(H, E)`` edge values over each CSR row -> ``(H, N)``."""
    offsets = graph.crow.expand(values.shape[0], -1)
    return torch.segment_reduce(values, reduce, offsets=offsets, axis=1)


class _SDDMM(Function):
    @staticmethod
    def forward(ctx, graph: CSRGraph, q: Tensor, k: Tensor) -> Tensor:
        ctx.graph = graph
        ctx.save_for_backward(q, k)
        return _sddmm(graph, q, k)

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k = ctx.saved_tensors
        graph = ctx.graph
        grad = grad.contiguous()
        gq = gk = None
        if ctx.needs_input_grad[1]:
            gq = _spmm(graph.crow, graph.col, grad, k)
        if ctx.needs_input_grad[2]:
            crow_t, col_t, _ = graph.transpose
            gk = _spmm(crow_t, col_t, graph.transposed_values(grad), q)
        return None, gq, gk


class _SpMM(Function):
    @staticmethod
    def forward(ctx, graph: CSRGraph, w: Tensor, v: Tensor) -> Tensor:
        ctx.graph = graph
        ctx.save_for_backward(w, v)
        return _spmm(graph.crow, graph.col, w, v)

    @staticmethod
    def backward(ctx, grad: Tensor):
        w, v = ctx.saved_tensors
        graph = ctx.graph
        grad = grad.contiguous()
        gw = gv = None
        if ctx.needs_input_grad[1]:
            gw = _sddmm(graph, grad, v)
        if ctx.needs_input_grad[2]:
            crow_t, col_t, _ = graph.transpose
            gv = _spmm(crow_t, col_t, graph.transposed_values(w), grad)
        return None, gw, gv


def sddmm(graph: CSRGraph, q: Tensor, k: Tensor) -> Tensor:
    """Edge logits ``(H, E)``: ``q[h, i] . k[h, j]`` for every edge ``j -> i``."""
    return _SDDMM.apply(graph, q.contiguous(), k.contiguous())


def spmm(graph: CSRGraph, w: Tensor, v: Tensor) -> Tensor:
    """Weighted sum ``(H, N, d_v)``: ``sum_j w[h, e_ji] v[h, j]`` over in-edges of ``i``."""
    return _SpMM.apply(graph, w.contiguous(), v.contiguous())


def _row_max(graph: CSRGraph, logits: Tensor) -> Tensor:
    """Per-edge max of its target's logits, ``(H, E)`` (no gradient needed:
    softmax is invariant to a per-row shift)."""
    with torch.no_grad():
        m = _segment(logits, graph, "max")
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows without edges
        return m.index_select(1, graph.row)


def sparse_attention(graph: CSRGraph, q: Tensor, k: Tensor, v: Tensor, logit_bound: Optional[Tensor] = None,
                     edge_bias: Optional[Tensor] = None) -> Tensor:
    r"""``sum_j softmax_j(q_i . k_j + b_ij) v_j`` over in-neighbours, ``(H, N, d_v)``.

    ``k`` and ``v`` have ``graph.num_cols`` rows (sources), ``q`` ``graph.num_nodes``.

    The softmax is never normalised edge by edge: with :math:`e_{ij} = \exp(l_{ij} - c_i)`,
    one SpMM of :math:`e` with ``[v, 1]`` yields both :math:`\sum_j e_{ij} v_j` and
    :math:`\sum_j e_{ij}`, and the division happens per node.

    Without autograd the heads run one after the other (:func:`_attention_by_head`):
    the same operations on each head's slice, with ``(E,)`` temporaries instead of
    ``(H, E)`` ones.

    Args:
        logit_bound (Tensor, optional): ``(H,)`` upper bounds of the logits of each
            head (e.g. the temperature for cosine logits). When given, it is the
            shift :math:`c_i` and no per-row maximum is needed; if a row underflows
            (all its logits far below the bound) the exact row maximum is used.
            With ``edge_bias`` it must bound the sum.
        edge_bias (Tensor, optional): ``(H, E)`` additive logit terms :math:`b_{ij}`
            in the graph's CSR order (relative-position or edge-attribute terms).
    """
    fits = fused_attention_fits(q, k, v, edge_bias)  # compiled passes, no per-edge tensors
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, edge_bias))):
        return fused_attention(graph, q, k, v, logit_bound) if fits else _attention_by_head(
            graph, q, k, v, logit_bound, edge_bias)
    if fits:
        return FusedAttention.apply(graph, q, k, v, logit_bound)
    logits = sddmm(graph, q, k)
    if edge_bias is not None:
        logits = logits + edge_bias
    H, M = v.shape[0], v.shape[1]
    v1 = torch.cat([v, v.new_ones(H, M, 1)], -1)
    if logit_bound is not None:
        e = (logits - logit_bound.detach().view(-1, 1)).exp()
        out = spmm(graph, e, v1)
        num, den = out[..., :-1], out[..., -1:]
        if not bool(((den < _UNDERFLOW) & (graph.degree() > 0).view(1, -1, 1)).any()):
            return num / den.clamp_min(_UNDERFLOW)
    e = (logits - _row_max(graph, logits)).exp()
    out = spmm(graph, e, v1)
    num, den = out[..., :-1], out[..., -1:]
    return num / den.clamp_min(_UNDERFLOW)  # rows without edges: 0 / tiny = 0


#: edges per chunk of rows of the no-autograd path (bounds its per-edge temporaries)
CHUNK_EDGES = 1 << 22
#: edge buffers are padded to a multiple of this times the thread count, so the vectorised
#: ``exp`` never meets the scalar tail loop: each logit's ``exp`` is then the same whatever the
#: chunk it falls in (the scalar and vectorised ``exp`` may differ in the last bit)
_EXP_ALIGN = 64


def row_chunks(crow: Tensor, max_edges: int) -> List[Tuple[int, int]]:
    """Rows ``[(a, b), ...]`` of a CSR matrix, in order, each with at most ``max_edges`` entries
    (or one row, when a row alone holds more). ``crow`` may also be ``(R, n + 1)``: several
    non-decreasing running sums over the same ``n`` positions, each chunk then the longest within
    the limit in every one of them.

    >>> row_chunks(torch.tensor([0, 2, 5, 5, 9]), 5)
    [(0, 3), (3, 4)]
    >>> row_chunks(torch.tensor([[0, 2, 5, 5, 9], [0, 0, 0, 6, 6]]), 5)
    [(0, 2), (2, 3), (3, 4)]
    """
    sums = crow.reshape(-1, crow.shape[-1])
    n = sums.shape[1] - 1
    chunks, a = [], 0
    while a < n:
        limit = sums[:, a : a + 1] + max_edges
        b = int(torch.searchsorted(sums, limit, right=True).min()) - 1  # last row end within the limit
        b = min(n, max(a + 1, b))
        chunks.append((a, b))
        a = b
    return chunks


def _attention_by_head(graph: CSRGraph, q: Tensor, k: Tensor, v: Tensor, logit_bound: Optional[Tensor],
                       edge_bias: Optional[Tensor], max_edges: Optional[int] = None) -> Tensor:
    """:func:`sparse_attention` without autograd: one head and one chunk of rows at a time.

    Each head of each chunk goes through the operations of the batched path on its own
    slice (SDDMM, bias, shift, ``exp``, SpMM with ``[v, 1]``) in one ``(E_chunk,)`` buffer.
    With a logit bound, the rows whose denominator underflows in some head are computed
    again, shifted by their row maximum. Every row's numbers depend on that row alone, so
    they are the same for every chunking (``max_edges``, default :data:`CHUNK_EDGES`); they
    equal the batched path's up to float rounding.
    """
    H, M, dv = v.shape
    N = graph.num_nodes
    out = v.new_empty(N, H, dv)  # node-major, so the caller's (N, H * dv) view needs no copy
    den = v.new_empty(H, N)
    ones = v.new_ones(M, 1)
    align = _EXP_ALIGN * max(1, torch.get_num_threads())
    bound = None if logit_bound is None else logit_bound.detach()

    def run(h: int, kt: Tensor, v1: Tensor, rows: Union[slice, Tensor], crow: Tensor, edges, use_bound: bool) -> None:
        """Head ``h`` of output rows ``rows`` (a slice, or the indices of rows anywhere), whose edges are ``edges``
        of the graph (CSR pointers ``crow``)."""
        n, col = crow.numel() - 1, graph.col[edges]
        E = col.numel()
        buf = q.new_zeros(-(-max(E, 1) // align) * align)
        logits = buf[:E]
        _sampled_products(crow, col, logits, q[h][rows] if isinstance(rows, slice) else q[h].index_select(0, rows), kt)
        if edge_bias is not None:
            logits.add_(edge_bias[h][edges])
        if use_bound:
            logits.sub_(bound[h])
        else:
            m = torch.segment_reduce(logits, "max", offsets=crow, axis=0)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            logits.sub_(torch.repeat_interleave(m, crow.diff(), output_size=E))
        buf.exp_()
        num = torch.mm(_csr(crow, col, logits, n, M), v1)
        if isinstance(rows, slice):  # a run of rows: copies, not index operations
            out[rows, h].copy_(num[:, :-1])
            den[h, rows].copy_(num[:, -1])
        else:
            out[:, h].index_copy_(0, rows, num[:, :-1])
            den[h].index_copy_(0, rows, num[:, -1])

    def run_rows(rows: Optional[Tensor], crow: Tensor, edges, use_bound: bool, chunks) -> None:
        """``rows`` ``None``: every row in order."""
        for h in range(H):
            kt, v1 = k[h].contiguous().t(), torch.cat([v[h], ones], -1)
            for a, b in chunks:
                lo, hi = int(crow[a]), int(crow[b])
                sub = edges[lo:hi] if isinstance(edges, Tensor) else slice(lo, hi)
                run(h, kt, v1, slice(a, b) if rows is None else rows[a:b], crow[a : b + 1] - lo, sub, use_bound)

    run_rows(None, graph.crow, None, bound is not None, row_chunks(graph.crow, max_edges or CHUNK_EDGES))
    if bound is not None:
        degree = graph.degree()
        bad = ((den < _UNDERFLOW).any(0) & (degree > 0)).nonzero().squeeze(1)
        if bad.numel():  # these rows again, shifted by their own maximum
            sub_degree = degree[bad]
            crow = crow_from_degree(sub_degree)
            E = int(crow[-1])
            first = torch.repeat_interleave(graph.crow[bad] - crow[:-1], sub_degree, output_size=E)
            edges = first + torch.arange(E, device=first.device)
            run_rows(bad, crow, edges, False, row_chunks(crow, max_edges or CHUNK_EDGES))
    out.div_(den.t().unsqueeze(-1).clamp_min(_UNDERFLOW))  # rows without edges: 0 / tiny = 0
    return out.transpose(0, 1)
