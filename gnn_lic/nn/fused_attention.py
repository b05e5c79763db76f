r"""Sparse softmax attention under autograd in compiled passes over a CSR graph (CPU, float32).

:func:`~gnn_lic.nn.functional.sparse_attention` computes, for every node :math:`i` and head,

.. math::
    \mathrm{out}_i = \sum_{j \in \mathcal{N}_i} p_{ij}\, v_j, \qquad
    p_{ij} = \frac{\exp(l_{ij} - c_i)}{\sum_{u \in \mathcal{N}_i} \exp(l_{iu} - c_i)}, \qquad
    l_{ij} = q_i^\top k_j,

with a shift :math:`c_i` that changes nothing but the floats' range: the logit bound where one is given
(cosine logits are at most the temperature), the row's largest logit where none is or where the bound
lets the row's denominator underflow. Under autograd its batched path runs six sparse products and keeps
several ``(H, E)`` edge tensors. Here the forward is one pass over the rows (the logits, their
exponentials and both sums per row and head, keeping only the output, the shift and the denominator) and
the backward two, with the softmax's gradient

.. math::
    D_i = \mathrm{d}o_i^\top \mathrm{out}_i, \quad \mathrm{d}s_{ij} = p_{ij}\,(\mathrm{d}o_i^\top v_j - D_i),
    \quad \mathrm{d}q_i = \sum_j \mathrm{d}s_{ij}\, k_j, \quad
    \mathrm{d}k_j = \sum_i \mathrm{d}s_{ij}\, q_i, \quad \mathrm{d}v_j = \sum_i p_{ij}\, \mathrm{d}o_i :

the first over the rows (targets, :math:`\mathrm{d}q`, and :math:`p, \mathrm{d}s` per edge), the second over
the graph's transpose (sources, :math:`\mathrm{d}k, \mathrm{d}v`), so every sum is one thread's loop and
nothing is scattered. The values are the batched path's up to float rounding (another order of the sums).

Every pass visits the nodes in the graph's node order (:attr:`~gnn_lic.graph.CSRGraph.order`: a global
grid's lattice classes, a block window's query blocks), so that the keys and values that consecutive rows
read are the same few rows of the maps, in the cache; the maps are read in place, never copied into that
order. Each row's (or column's) sums are one loop whatever the order, so the results are the same bit for bit.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch
from numba import prange
from torch import Tensor

from gnn_lic import compiled
from gnn_lic.graph.sparse import CSRGraph
from gnn_lic.nn.gate import exp2_neg

__all__ = ["FusedAttention", "fused_attention", "fused_attention_fits", "UNDERFLOW"]

#: smallest denominator taken as is (as the batched path's): a row below it is shifted by its maximum
UNDERFLOW = 1e-30
_TINY = np.float32(UNDERFLOW)
# exp(x) = 2^(x log2 e); below 2^-126 (x < -87) a weight is 0 for float32 sums
_LOG2E, _EXP2_LIMIT = np.float32(1 / math.log(2)), np.float32(126)
_FAST = set(compiled.FAST_DOTS)


@compiled.jit(inline="always", fastmath=_FAST)
def _dot(a, b):  # pragma: no cover - compiled
    s = np.float32(0)
    for t in range(a.shape[0]):
        s += a[t] * b[t]
    return s


@compiled.jit(inline="always", fastmath=_FAST)
def _row_logits(q_i, k, k0, col, lo, hi, buf, m):  # pragma: no cover - compiled
    # buf[h, :hi - lo] = the row's logits of head h (keys: heads k0, k0 + 1, ... of k's rows), m[h] their maximum;
    # neighbour by neighbour, so that each key row (all heads) is read once
    m[:] = -np.inf
    for e in range(lo, hi):
        k_j = k[col[e]]
        for h in range(q_i.shape[0]):
            l_e = _dot(q_i[h], k_j[k0 + h])
            buf[h, e - lo] = l_e
            m[h] = max(m[h], l_e)


@compiled.jit(inline="always", fastmath=_FAST)
def _exp_shifted(buf, n, c, w):  # pragma: no cover - compiled
    # w[:n] = exp(buf[:n] - c) (arguments <= 0, below -87 taken as 0); returns their sum
    s = np.float32(0)
    for t in range(n):
        w_t = exp2_neg(min((c - buf[t]) * _LOG2E, _EXP2_LIMIT))
        w[t] = w_t
        s += w_t
    return s


@compiled.jit(parallel=True, fastmath=_FAST)
def _forward(order, crow, col, q, q0, k, k0, v, v0, bound, has_bound, max_degree, out, shift, den):  # pragma: no cover
    # q, k, v: (N, R, d) rows whose heads start at q0, k0, v0 (views of wider node-major maps; compiled);
    # rows visited in the node order ``order``
    N, H = out.shape[0], out.shape[1]
    for t in prange(N):
        i = order[t]
        lo, hi = crow[i], crow[i + 1]
        n = hi - lo
        buf, w = np.empty((H, max_degree), np.float32), np.empty((H, max_degree), np.float32)
        m, inv = np.empty(H, np.float32), np.empty(H, np.float32)
        _row_logits(q[i, q0:q0 + H], k, k0, col, lo, hi, buf, m)
        for h in range(H):
            c = bound[h] if has_bound else m[h]
            s = _exp_shifted(buf[h], n, c, w[h])
            if n and has_bound and not s >= _TINY:  # the row underflows under the bound: shift by its maximum
                c = m[h]
                s = _exp_shifted(buf[h], n, c, w[h])
            shift[h, i], den[h, i] = c, s
            inv[h] = np.float32(1) / max(s, _TINY)  # rows without edges: 0
        o = out[i]
        o[:] = 0
        for e in range(lo, hi):  # each value row (all heads) read once
            v_j = v[col[e]]
            for h in range(H):
                w_e, o_h, v_jh = w[h, e - lo], o[h], v_j[v0 + h]
                for u in range(o_h.shape[0]):
                    o_h[u] += w_e * v_jh[u]
        for h in range(H):
            o_h = o[h]
            for u in range(o_h.shape[0]):
                o_h[u] *= inv[h]


@compiled.jit(parallel=True, fastmath=_FAST)
def _backward_rows(order, crow, col, q, k, v, out, grad, shift, den, max_degree, p, ds, dq):  # pragma: no cover
    N, H = q.shape[0], q.shape[1]
    for t in prange(N):
        i = order[t]
        lo, hi = crow[i], crow[i + 1]
        buf, w = np.empty((H, max_degree), np.float32), np.empty((H, max_degree), np.float32)
        m, inv, d = np.empty(H, np.float32), np.empty(H, np.float32), np.empty(H, np.float32)
        g_i, dq_i = grad[i], dq[i]
        _row_logits(q[i], k, 0, col, lo, hi, buf, m)
        for h in range(H):
            _exp_shifted(buf[h], hi - lo, shift[h, i], w[h])
            inv[h] = np.float32(1) / max(den[h, i], _TINY)
            d[h] = _dot(g_i[h], out[i, h])
        dq_i[:] = 0
        for e in range(lo, hi):
            k_j, v_j = k[col[e]], v[col[e]]
            for h in range(H):
                p_e = w[h, e - lo] * inv[h]
                ds_e = p_e * (_dot(g_i[h], v_j[h]) - d[h])
                p[e, h], ds[e, h] = p_e, ds_e
                dq_ih, k_jh = dq_i[h], k_j[h]
                for u in range(dq_ih.shape[0]):
                    dq_ih[u] += ds_e * k_jh[u]


@compiled.jit(parallel=True, fastmath=_FAST)
def _backward_cols(order, crow_t, row_t, perm_t, q, grad, p, ds, dk, dv):  # pragma: no cover - compiled
    M, H = dk.shape[0], dk.shape[1]
    for s in prange(M):
        j = order[s]
        dk[j] = 0
        dv[j] = 0
        for t in range(crow_t[j], crow_t[j + 1]):
            e, i = perm_t[t], row_t[t]
            for h in range(H):
                p_e, ds_e = p[e, h], ds[e, h]
                dk_j, dv_j, q_i, g_i = dk[j, h], dv[j, h], q[i, h], grad[i, h]
                for u in range(dk_j.shape[0]):
                    dk_j[u] += ds_e * q_i[u]
                for u in range(dv_j.shape[0]):
                    dv_j[u] += p_e * g_i[u]


def fused_attention_fits(q: Tensor, k: Tensor, v: Tensor, edge_bias: Optional[Tensor]) -> bool:
    """Whether :class:`FusedAttention` can take the ``(H, N, d)`` heads: float32 CPU tensors, compiled loops on,
    no per-edge logit terms."""
    return (compiled.enabled() and edge_bias is None
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 3 for t in (q, k, v)))


def _node_major(t: Tensor) -> Tensor:
    """``(H, N, d)`` -> a contiguous ``(N, H, d)`` (a view where the heads were a view of node-major memory)."""
    return t.detach().transpose(0, 1).contiguous()


def _rows(t: Tensor) -> Tuple[Tensor, int]:
    """Heads ``(H, N, d)`` as ``(rows, h0)``: a C-contiguous ``(N, R, d)`` tensor whose heads ``h0 .. h0 + H - 1``
    are ``t``'s. Where ``t``'s node-major memory holds each node's heads as a run of whole head vectors every
    ``R * d`` values (the queries and keys sliced out of one projection) this is a view of that memory, with
    no copy of a whole map; otherwise :func:`_node_major`'s copy."""
    n = t.detach().transpose(0, 1)
    N, H, d = n.shape
    s0, s1, s2 = n.stride()
    if N > 1 and d > 0 and s2 == 1 and s1 == d and s0 % d == 0 and s0 >= H * d:
        R, offset = s0 // d, n.storage_offset()
        h0 = min(R - H, offset // d)
        start = offset - h0 * d
        if start >= 0 and start + N * s0 <= n.untyped_storage().nbytes() // n.element_size():
            return torch.as_strided(n, (N, R, d), (s0, d, 1), start), h0
    return _node_major(t), 0


def _visit_order(graph: CSRGraph, count: int) -> np.ndarray:
    """Nodes ``0 .. count - 1`` in the order the passes visit them: the graph's node order
    (:attr:`~gnn_lic.graph.CSRGraph.order`, whose neighbourhoods lie close together in memory) then the zero
    node where ``count`` includes it, else in id order. Each node's sums are the same in any order."""
    if graph.order is None:
        return np.arange(count, dtype=np.int64)
    order = graph.order.numpy()
    return order if count == order.shape[0] else np.concatenate([order, np.arange(order.shape[0], count)])


def _forward_pass(graph: CSRGraph, q: Tensor, k: Tensor, v: Tensor, logit_bound: Optional[Tensor]):
    """The forward pass on the heads ``(H, N, d)`` read in place (:func:`_rows`): ``(out, shift, den,
    max_degree)``, ``out`` ``(N, H, d_v)``."""
    (qr, q0), (kr, k0), (vr, v0) = _rows(q), _rows(k), _rows(v)
    H, N = q.shape[:2]
    out = q.new_empty(N, H, v.shape[2])
    shift, den = q.new_empty(H, N), q.new_empty(H, N)
    has_bound = logit_bound is not None
    bound = logit_bound.detach().float().contiguous() if has_bound else q.new_zeros(H)
    max_degree = max(1, int(graph.degree().max())) if N else 1
    compiled.parallel(_forward, _visit_order(graph, N), graph.crow.numpy(), graph.col.numpy(), qr.numpy(), q0,
                      kr.numpy(), k0, vr.numpy(), v0, bound.numpy(), has_bound, max_degree, out.numpy(), shift.numpy(),
                      den.numpy())
    return out, shift, den, max_degree


def fused_attention(graph: CSRGraph, q: Tensor, k: Tensor, v: Tensor, logit_bound: Optional[Tensor]) -> Tensor:
    """The forward pass alone (no autograd) for heads ``(H, N, d)`` where :func:`fused_attention_fits`:
    ``(H, N, d_v)``. Each row is one thread's loop over its edges in order, so its numbers depend on that row
    alone: not on the thread count, nor on which rows a call holds. Queries and keys that are slices of one
    projection's output are read in place."""
    return _forward_pass(graph, q, k, v, logit_bound)[0].transpose(0, 1)


class FusedAttention(torch.autograd.Function):
    r""":func:`~gnn_lic.nn.functional.sparse_attention` under autograd for heads ``(H, N, d)`` where
    :func:`fused_attention_fits` (module docstring): returns ``(H, N, d_v)``. ``logit_bound`` ``(H,)`` or None."""

    @staticmethod
    def forward(ctx, graph: CSRGraph, q: Tensor, k: Tensor, v: Tensor, logit_bound: Optional[Tensor]) -> Tensor:
        out, shift, den, max_degree = _forward_pass(graph, q, k, v, logit_bound)
        ctx.graph, ctx.max_degree = graph, max_degree
        ctx.save_for_backward(_node_major(q), _node_major(k), _node_major(v), out, shift, den)
        return out.transpose(0, 1)

    @staticmethod
    def backward(ctx, grad: Tensor):
        qn, kn, vn, out, shift, den = ctx.saved_tensors
        graph = ctx.graph
        g = _node_major(grad)
        E, H = graph.num_edges, qn.shape[1]
        p, ds = qn.new_empty(E, H), qn.new_empty(E, H)
        dq, dk, dv = torch.empty_like(qn), torch.empty_like(kn), torch.empty_like(vn)
        compiled.parallel(_backward_rows, _visit_order(graph, graph.num_nodes), graph.crow.numpy(), graph.col.numpy(),
                          qn.numpy(), kn.numpy(), vn.numpy(), out.numpy(), g.numpy(), shift.numpy(), den.numpy(),
                          ctx.max_degree, p.numpy(), ds.numpy(), dq.numpy())
        crow_t, row_t, perm_t = graph.transpose
        compiled.parallel(_backward_cols, _visit_order(graph, graph.num_cols), crow_t.numpy(), row_t.numpy(),
                          perm_t.numpy(), qn.numpy(), g.numpy(), p.numpy(), ds.numpy(), dk.numpy(), dv.numpy())
        return None, dq.transpose(0, 1), dk.transpose(0, 1), dv.transpose(0, 1), None
