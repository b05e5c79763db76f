"""Candidate tables and cosine similarities: what every graph of a map is built from.

:func:`candidates` turns a :class:`~gnn_lic.graph.CandidateSet` into the ids of every
node's candidates (cached per rule, shape and device); :func:`unit_features` and
:func:`row_similarity` compute GLIC eq. (7) for them, block by block.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from gnn_lic.graph import _rowkernels
from gnn_lic.graph.candidates import AxisLayout, CandidateSet

__all__ = ["Candidates", "candidates", "unit_features", "row_similarity", "SIMILARITY_CHUNK_BYTES"]


@dataclass
class Candidates:
    """Candidate sets of every node of an ``H x W`` map (node ids local to an image).

    Similarities are computed block by block (one matrix product per block of
    the candidate layout), so rows come in *block order*: row ``r`` belongs to
    node ``rows[r]`` (``-1`` for the padding rows of partial blocks).

    Attributes:
        query: ``(num_blocks, Q)`` node ids of each block's members (``-1`` = padding).
        key: ``(num_blocks, Kb)`` node ids of each block's keys (``-1`` = padding).
        cand: ``(num_blocks, Q, K)`` index of each member's candidates in ``key``,
            or ``None`` (all keys).
        rows: ``(R,)`` node id of each similarity row, ``R = num_blocks * Q``.
        row_of_node: ``(N,)`` row of each node.
        valid_rows: ``(R, K)`` bool, which entries are real candidates (padding
            rows have none).
        window: ``(L, H, W)`` when the candidate set is the ``L x L`` window of every
            node (:meth:`CandidateSet.window_side`; computed by a compiled kernel on a
            CPU), else ``None``.
        zero: ``(R, K)`` bool, which entries are zero-padding candidates (positions
            outside the map with zero features, ``border="zero"``), or ``None``.
        groups: ``(N,)`` quota group of every node, or ``None`` (one group per image).
        coords: ``(qy, qx, kw)`` for relative positions: ``(N,)`` coordinates of every
            node in its query group per axis, and the width of the key window
            (a key's slot ``k`` has window coordinates ``divmod(k, kw)``), or ``None``.

    The ``(R, K)`` and ``(N, K)`` id tables (:attr:`index_rows`, :attr:`index`)
    are made on first use only: the compiled construction path reads ids from
    ``key`` and ``cand`` and never needs them.
    """

    query: Tensor
    key: Tensor
    cand: Optional[Tensor]
    rows: Tensor
    row_of_node: Tensor
    valid_rows: Tensor
    window: Optional[Tuple[int, int, int]] = None
    zero: Optional[Tensor] = None
    groups: Optional[Tensor] = None
    coords: Optional[Tuple[Tensor, Tensor, int]] = None

    def __post_init__(self):
        real = self.rows >= 0
        #: every real row has all ``K`` candidates
        self.full = bool(self.valid_rows[real].all())
        #: queries and keys are the same nodes (one gather serves both)
        self.shared_keys = self.cand is None and torch.equal(self.query, self.key)
        # rows of unit_features() to gather; padding ids (-1) read node 0: the rows of
        # padding queries are never used, similarities to padding keys are masked
        self.query_rows = self.query.clamp_min(0).flatten()
        self.key_rows = self.key.clamp_min(0).flatten()
        self._derived: Dict[str, Tensor] = {}

    def _cached(self, name: str, make) -> Tensor:
        if name not in self._derived:
            self._derived[name] = make()
        return self._derived[name]

    @property
    def index_rows(self) -> Tensor:
        """``(R, K)`` candidate node ids of each row (``0`` where invalid)."""
        return self._cached("index_rows", lambda: _candidate_ids(self.key, self.cand, self.query.shape[1]).clamp_min(0))

    @property
    def index(self) -> Tensor:
        """``(N, K)`` candidate node ids ``u*W + v`` in node order (``0`` where invalid)."""
        return self._cached("index", lambda: self.index_rows[self.row_of_node])

    @property
    def valid(self) -> Tensor:
        """``(N, K)`` bool, which entries of :attr:`index` are real candidates."""
        return self._cached("valid", lambda: self.valid_rows[self.row_of_node])

    @property
    def num_candidates(self) -> Tensor:
        """``(N,)`` true candidate counts ``n_i``."""
        return self._cached("n", lambda: self.valid_rows.sum(-1)[self.row_of_node])

    def without_self_loops(self) -> Tuple[Tensor, Tensor]:
        """``valid_rows`` without the entries ``j = i``, and the node-order counts."""
        valid = self._cached("valid_noloop", lambda: self.valid_rows & (self.index_rows != self.rows[:, None]))
        return valid, self._cached("n_noloop", lambda: valid.sum(-1)[self.row_of_node])


def _combine(rows: AxisLayout, cols: AxisLayout, W: int):
    """Outer product of a row and a column layout -> 2-D blocks of node ids."""

    def ids(r: Tensor, c: Tensor) -> Tensor:
        out = r[:, None, :, None] * W + c[None, :, None, :]
        bad = (r < 0)[:, None, :, None] | (c < 0)[None, :, None, :]
        out = out.masked_fill(bad, -1)
        return out.reshape(r.shape[0] * c.shape[0], r.shape[1] * c.shape[1])

    query = ids(rows.query, cols.query)
    key = ids(rows.key, cols.key)
    if rows.cand is None and cols.cand is None:
        return query, key, None
    kh, kw = rows.key.shape[1], cols.key.shape[1]
    rc = rows.cand if rows.cand is not None else torch.arange(kh, device=query.device).expand(*rows.query.shape, kh)
    cc = cols.cand if cols.cand is not None else torch.arange(kw, device=query.device).expand(*cols.query.shape, kw)
    # (nbh, nbw, qh, qw, ch, cw) -> index into the flattened kh x kw key block
    cand = rc[:, None, :, None, :, None] * kw + cc[None, :, None, :, None, :]
    nb, q = query.shape
    return query, key, cand.reshape(nb, q, -1)


_CACHE: "OrderedDict[tuple, Candidates]" = OrderedDict()
_CACHE_SIZE = 64
#: tables larger than this are made again at every call instead of cached: a map of a
#: large photo has ``(N, K)`` tables of hundreds of megabytes, and a graph block builds
#: them once for all its layers, so keeping them for the process would only hold memory
_CACHE_MAX_BYTES = 16 << 20
_CACHE_LOCK = threading.Lock()  # bands of a map may build graphs on several threads at once


def _make_candidates(cset: CandidateSet, H: int, W: int, device) -> Candidates:
    rows, cols = cset.axis_layout(H, device), cset.axis_layout(W, device)
    query, key, cand = _combine(rows, cols, W)
    flat = query.flatten()
    real = flat >= 0
    row_of_node = torch.empty(H * W, dtype=torch.long, device=query.device)
    row_of_node[flat[real]] = torch.nonzero(real).flatten()
    ids = _candidate_ids(key, cand, query.shape[1])
    valid = (ids >= 0) & real[:, None]
    zero = None
    if cset.zero_padded:
        zero = (ids < 0) & real[:, None]
        valid = valid | zero
        zero = zero if bool(zero.any()) else None
    side = cset.window_side()
    window = None if side is None else (side, H, W)
    groups = None
    if rows.group is not None and cols.group is not None:
        ncols = int(cols.group.max()) + 1
        groups = (rows.group[:, None] * ncols + cols.group[None, :]).reshape(-1)
    coords = None
    if rows.coord is not None and cols.coord is not None and cand is None:
        qy = rows.coord[:, None].expand(H, W).reshape(-1)
        qx = cols.coord[None, :].expand(H, W).reshape(-1)
        coords = (qy, qx, cols.key.shape[1])
    return Candidates(query, key, cand, flat, row_of_node, valid, window, zero, groups, coords)


def _candidate_ids(key: Tensor, cand: Optional[Tensor], Q: int) -> Tensor:
    """``(R, K)`` candidate node ids of every row (``-1`` = padding key)."""
    if cand is None:
        return key.unsqueeze(1).expand(-1, Q, -1).reshape(-1, key.shape[1])
    return key.gather(1, cand.flatten(1)).view(-1, cand.shape[-1])


def candidates(cset: CandidateSet, H: int, W: int, device=None) -> Candidates:
    """Candidate sets of every node of an ``H x W`` map (cached per rule, shape and device,
    up to :data:`_CACHE_MAX_BYTES` of candidate entries per map)."""
    if H < 1 or W < 1:
        raise ValueError(f"feature map must be at least 1x1, got {H}x{W}")
    device = torch.device(device or "cpu")
    key = (repr(cset), int(H), int(W), str(device))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    made = _make_candidates(cset, int(H), int(W), device)
    if made.valid_rows.numel() > _CACHE_MAX_BYTES:  # one byte per (row, candidate) entry
        return made
    with _CACHE_LOCK:
        hit = _CACHE.setdefault(key, made)
        _CACHE.move_to_end(key)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return hit


def unit_features(x: Tensor, eps: float = 1e-12) -> Tensor:
    r"""L2-normalised node features ``(B, N, C)`` of a map, in node order.

    Row ``b, i`` is :math:`x_i / \max(\|x_i\|_2, \epsilon)` (``F.normalize``).
    Computed once per map and shared by every graph built from it
    (:func:`build_graphs`). On a CPU with the compiled kernels on the normalisation is one compiled
    pass (:mod:`gnn_lic.graph._rowkernels`), equal to this up to float rounding.
    """
    if _rowkernels.enabled(x) and x.numel() > 0:
        return _rowkernels.unit_features(x, eps)
    B, C, H, W = x.shape
    # always a copy: for a channels-last map the transposed view is already contiguous, and dividing it in
    # place would change the caller's map
    xn = x.new_empty((B, H * W, C)).copy_(x.detach().reshape(B, C, H * W).transpose(1, 2))
    return xn.div_(torch.linalg.vector_norm(xn, dim=-1, keepdim=True).clamp_min_(eps))


#: bytes of temporaries per chunk of blocks in :func:`row_similarity` on a CPU
#: (cache-sized, so the per-block products never leave the cache)
SIMILARITY_CHUNK_BYTES = 4 << 20


def row_similarity(xn: Tensor, cands: Candidates, blocks: Optional[Tuple[int, int]] = None) -> Tensor:
    r"""Cosine similarities, GLIC eq. (7), as ``(B, R, K)`` rows in block order.

    .. math:: S_{ij} = \frac{\langle x_i, x_j \rangle}{\|x_i\|_2 \|x_j\|_2}

    One matrix product of the normalised features per block of the candidate
    layout (dense BLAS), run over cache-sized chunks of blocks on a CPU; entries
    that are not candidates, and the rows of padding queries, are unspecified.
    ``xn`` comes from :func:`unit_features`. On a CPU with the compiled kernels on, a window candidate
    set (:meth:`~gnn_lic.graph.CandidateSet.window_side`) is computed as exactly the needed dot products
    (:func:`gnn_lic.graph._rowkernels.local_window_similarity`).

    ``blocks=(b0, b1)`` computes only the rows of blocks ``b0 .. b1 - 1`` (rows ``b0 Q .. b1 Q``),
    the same numbers as those rows of the whole computation (a graph built in chunks;
    not with the compiled window kernel).
    """
    if blocks is not None:
        if cands.window is not None and _rowkernels.enabled(xn):
            raise ValueError("row_similarity: blocks= needs the block-product path, not the compiled window kernel")
    elif cands.window is not None and _rowkernels.enabled(xn):
        L, H, W = cands.window
        return _rowkernels.local_window_similarity(xn, L, H, W, cands.row_of_node, cands.rows.numel())
    B, _, C = xn.shape
    nb, Q = cands.query.shape
    Kb = cands.key.shape[1]
    K = Kb if cands.cand is None else cands.cand.shape[-1]
    b0, b1 = (0, nb) if blocks is None else blocks
    out = xn.new_empty(B, (b1 - b0) * Q, K)
    qr, kr = cands.query_rows.view(nb, Q), cands.key_rows.view(nb, Kb)
    step = nb
    if xn.device.type == "cpu":
        per_block = (Q * C + (0 if cands.shared_keys else Kb * C) + Q * Kb) * xn.element_size()
        step = max(1, SIMILARITY_CHUNK_BYTES // per_block)
    for b in range(B):
        for s0 in range(b0, b1, step):
            s1 = min(b1, s0 + step)
            # index_select copies whole rows, which is faster than advanced indexing
            q = xn[b].index_select(0, qr[s0:s1].flatten()).view(s1 - s0, Q, C)
            k = q if cands.shared_keys else xn[b].index_select(0, kr[s0:s1].flatten()).view(s1 - s0, Kb, C)
            dst = out[b, (s0 - b0) * Q : (s1 - b0) * Q].view(s1 - s0, Q, K)
            if cands.cand is None:
                torch.bmm(q, k.transpose(1, 2), out=dst)
            else:
                torch.gather(torch.bmm(q, k.transpose(1, 2)), 2, cands.cand[s0:s1], out=dst)
    return out
