"""Compressed-sparse-row view of an ``edge_index`` (PyG's ``adj_t``).

Message passing in gnn_lic runs as sparse-matrix products over this structure
(see :mod:`gnn_lic.nn.functional`). A graph is converted once and shared by all
the layers (and heads) that use it; the transpose needed by the backward pass
is built lazily, once.

On a CPU (compiled loops on, :mod:`gnn_lic.compiled`) the transpose's edge order comes
from a counting sort and edge values are reordered to it by a parallel gather: the same
permutation and values as a stable ``argsort`` and ``values[:, perm]``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from numba import prange
from torch import Tensor

from gnn_lic import compiled
from gnn_lic.graph import _rowkernels

__all__ = ["CSRGraph", "crow_from_degree", "stable_key_order", "take_columns"]


@compiled.jit
def _counting_order_kernel(keys, count, out):  # pragma: no cover - compiled
    for e in range(keys.shape[0]):
        count[keys[e] + 1] += 1
    for k in range(count.shape[0] - 1):
        count[k + 1] += count[k]
    for e in range(keys.shape[0]):
        out[count[keys[e]]] = e
        count[keys[e]] += 1


@compiled.jit(parallel=True)
def _take_columns_kernel(src, index, out):  # pragma: no cover - compiled
    H, E = out.shape
    step = 1 << 14
    for c in prange((E + step - 1) // step):
        for h in range(H):
            for e in range(c * step, min(E, (c + 1) * step)):
                out[h, e] = src[h, index[e]]


def stable_key_order(keys: Tensor, num_keys: int) -> Tensor:
    """``torch.argsort(keys, stable=True)`` of CPU integer keys in ``[0, num_keys)``, by a counting sort
    (one pass to count, one to place: the same permutation)."""
    out = torch.empty(keys.numel(), dtype=torch.long)
    if keys.numel():
        if int(keys.min()) < 0 or int(keys.max()) >= num_keys:
            raise ValueError(f"keys must lie in [0, {num_keys})")
        _counting_order_kernel(keys.long().contiguous().numpy(), np.zeros(num_keys + 1, np.int64), out.numpy())
    return out


def take_columns(src: Tensor, index: Tensor) -> Tensor:
    """``src[:, index]`` of a 2-D CPU float tensor, by columns in parallel (a copy: the same values);
    ``index`` (int64) must lie in ``[0, src.shape[1])``, which is not checked."""
    out = src.new_empty(src.shape[0], index.numel())
    if out.numel():
        compiled.parallel(_take_columns_kernel, src.detach().contiguous().numpy(), index.contiguous().numpy(),
                          out.numpy())
    return out


def crow_from_degree(degree: Tensor) -> Tensor:
    """Row pointers ``(N + 1,)`` of a CSR matrix whose rows hold ``degree`` entries."""
    crow = degree.new_zeros(degree.numel() + 1)
    torch.cumsum(degree, 0, out=crow[1:])
    return crow


def _crow(sorted_index: Tensor, num_rows: int) -> Tensor:
    return crow_from_degree(torch.bincount(sorted_index, minlength=num_rows))


class CSRGraph:
    """Edges ``j -> i`` grouped by target ``i``.

    Attributes:
        crow (Tensor): ``(N + 1,)`` row pointers (rows = targets).
        col (Tensor): ``(E,)`` sources, in CSR order.
        row (Tensor): ``(E,)`` targets, in CSR order (pass ``None`` to make it from
            ``crow`` when first used: a graph that only meets row-wise kernels never holds it).
        num_nodes (int): ``N``.
        perm (Tensor or None): CSR position of each edge of the ``edge_index``
            this graph was built from (``None`` if it was already in CSR order).
        order (Tensor or None): a node order in which neighbourhoods are close
            together in memory (a permutation of ``0 .. N-1``), or ``None`` when
            node order already is. Aggregation runs in this order (the fused
            attention passes visit rows in it; other paths :meth:`relabelled`);
            results do not depend on it.
        num_cols (int): number of possible sources, ``N`` or ``N + 1``: source
            ``N`` is a *zero node* (zero-padding candidates, whose keys and values
            are zero vectors), which is never a target.
        rel_index (Tensor or None): ``(E,)`` relative-position index of every edge
            in CSR order (see :func:`gnn_lic.graph.build_graphs`), or ``None``.
    """

    def __init__(self, crow: Tensor, col: Tensor, row: Optional[Tensor], num_nodes: int, perm: Optional[Tensor] = None,
                 order: Optional[Tensor] = None, num_cols: Optional[int] = None, rel_index: Optional[Tensor] = None):
        self.crow, self.col, self._row = crow, col, row
        self.num_nodes = int(num_nodes)
        self.num_cols = self.num_nodes if num_cols is None else int(num_cols)
        if self.num_cols not in (self.num_nodes, self.num_nodes + 1):
            raise ValueError(f"num_cols must be num_nodes or num_nodes + 1, got {self.num_cols} for {self.num_nodes}")
        self.perm = perm
        if order is not None and order.shape != (self.num_nodes,):
            raise ValueError(f"order must hold the {self.num_nodes} node ids, got shape {tuple(order.shape)}")
        if rel_index is not None and rel_index.shape != col.shape:
            raise ValueError(f"rel_index must have one entry per edge, got {tuple(rel_index.shape)}")
        self.order = order
        self.rel_index = rel_index
        self._transpose: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self._pattern: Optional[Tensor] = None
        self._relabelled: Optional[Tuple[Tensor, Tensor, "CSRGraph"]] = None

    @classmethod
    def from_edge_index(cls, edge_index: Tensor, num_nodes: Optional[int] = None) -> "CSRGraph":
        """Build from a ``(2, E)`` ``edge_index`` (sorted by target or not)."""
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
        src, dst = edge_index[0].long(), edge_index[1].long()
        if num_nodes is None:
            num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"edge_index has node ids outside [0, {num_nodes})")
        perm = None
        if dst.numel() > 1 and bool((dst[1:] < dst[:-1]).any()):
            perm = torch.argsort(dst, stable=True)
            src, dst = src[perm], dst[perm]
        return cls(_crow(dst, num_nodes), src.contiguous(), dst.contiguous(), num_nodes, perm)

    @property
    def row(self) -> Tensor:
        """``(E,)`` targets, in CSR order."""
        if self._row is None:
            self._row = torch.repeat_interleave(torch.arange(self.num_nodes, device=self.crow.device), self.degree(),
                                                output_size=self.num_edges)
        return self._row

    @property
    def num_edges(self) -> int:
        return self.col.numel()

    @property
    def edge_index(self) -> Tensor:
        """``(2, E)`` edges in CSR order."""
        return torch.stack([self.col, self.row])

    def degree(self) -> Tensor:
        """In-degree of every node."""
        return self.crow.diff()

    @property
    def transpose(self) -> Tuple[Tensor, Tensor, Tensor]:
        """``(crow_t, col_t, perm_t)``: CSR of the reversed graph (rows = sources);
        ``perm_t`` maps its edges to positions in this graph's edge order."""
        if self._transpose is None:
            if compiled.enabled() and self.col.device.type == "cpu":
                perm_t = stable_key_order(self.col, self.num_cols)
            else:
                perm_t = torch.argsort(self.col, stable=True)
            self._transpose = (_crow(self.col[perm_t], self.num_cols), self.row[perm_t].contiguous(), perm_t)
        return self._transpose

    def transposed_values(self, values: Tensor) -> Tensor:
        """Edge values ``(H, E)`` in this graph's CSR order, reordered to the edges of :attr:`transpose`:
        ``values[:, perm_t]`` (on a CPU by a compiled gather, the same values)."""
        perm_t = self.transpose[2]
        if _rowkernels.enabled(values) and values.dim() == 2:
            return take_columns(values, perm_t)
        return values.index_select(1, perm_t)

    def relabelled(self) -> Tuple[Tensor, Tensor, "CSRGraph"]:
        """``(order, inverse, graph)``: this graph with node ``p`` standing for node ``order[p]``.

        A message ``j -> i`` becomes ``inverse[j] -> inverse[i]``, and each row keeps
        its edges in the same order, so a row-wise sum over the relabelled graph is
        bit for bit the sum over this one. A global-grid graph in node order sends
        each row's gathers all over the feature matrix; in its block order they stay
        within one block of rows, which fits in the cache (this matters most when
        another job shares the cache). Built once, cached.
        """
        if self.order is None:
            raise ValueError("this graph has no node order to relabel by")
        if self.num_cols != self.num_nodes:
            raise ValueError("a graph with a zero node cannot be relabelled (the zero node has no place in the order)")
        if self._relabelled is None:
            order, n = self.order, self.num_nodes
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(n, device=order.device)
            degree = self.degree()[order]
            crow = torch.zeros_like(self.crow)
            torch.cumsum(degree, 0, out=crow[1:])
            E = self.num_edges
            # position of each relabelled edge in this graph's CSR arrays
            offset = torch.arange(E, device=order.device) - torch.repeat_interleave(crow[:-1], degree, output_size=E)
            src = torch.repeat_interleave(self.crow[:-1][order], degree, output_size=E) + offset
            row = torch.repeat_interleave(torch.arange(n, device=order.device), degree, output_size=E)
            rel = None if self.rel_index is None else self.rel_index[src]
            self._relabelled = (order, inverse, CSRGraph(crow, inverse[self.col[src]], row, n, rel_index=rel))
        return self._relabelled

    def pattern(self, dtype=torch.float32) -> Tensor:
        """The adjacency as a ``torch.sparse_csr`` tensor of ones (``adj_t``)."""
        if self._pattern is None or self._pattern.dtype != dtype:
            ones = torch.ones(self.num_edges, dtype=dtype, device=self.col.device)
            self._pattern = torch.sparse_csr_tensor(self.crow, self.col, ones, (self.num_nodes, self.num_cols))
        return self._pattern

    def structure(self, dtype=torch.float32) -> Tensor:
        """The adjacency's shape and indices as a ``torch.sparse_csr`` tensor whose values are one
        broadcast ``1`` (no ``(E,)`` array): for passing the graph where only its structure is read
        (the ``adj_t`` of a fused ``propagate``); use :meth:`pattern` for arithmetic with it."""
        ones = torch.ones(1, dtype=dtype, device=self.col.device).expand(self.num_edges)
        return torch.sparse_csr_tensor(self.crow, self.col, ones, (self.num_nodes, self.num_cols))

    def __repr__(self) -> str:
        zero = ", zero node" if self.num_cols > self.num_nodes else ""
        return f"CSRGraph(num_nodes={self.num_nodes}, num_edges={self.num_edges}{zero})"
