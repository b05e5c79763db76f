"""``build_graph``: the one graph-construction entry point of gnn_lic."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from gnn_lic.graph import _rowkernels
from gnn_lic.graph.candidates import AxisLayout, CandidateSet, LocalWindow
from gnn_lic.graph.scores import check_feature_map
from gnn_lic.graph.selectors import Selector
from gnn_lic.graph.sparse import CSRGraph

__all__ = [
    "build_graph",
    "build_graphs",
    "GraphInfo",
    "Candidates",
    "candidates",
    "unit_features",
    "row_similarity",
    "candidate_similarity",
    "to_data",
]


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
        window: ``(L, H, W)`` when the candidates are a :class:`LocalWindow` with
            the shift border (computed by a compiled kernel on a CPU), else ``None``.
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
    window = (cset.size, H, W) if isinstance(cset, LocalWindow) and cset.border == "shift" else None
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
    """Candidate sets of every node of an ``H x W`` map (cached per rule, shape and device)."""
    if H < 1 or W < 1:
        raise ValueError(f"feature map must be at least 1x1, got {H}x{W}")
    device = torch.device(device or "cpu")
    key = (repr(cset), int(H), int(W), str(device))
    hit = _CACHE.get(key)
    if hit is None:
        hit = _CACHE[key] = _make_candidates(cset, int(H), int(W), device)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return hit


def unit_features(x: Tensor, eps: float = 1e-12) -> Tensor:
    r"""L2-normalised node features ``(B, N, C)`` of a map, in node order.

    Row ``b, i`` is :math:`x_i / \max(\|x_i\|_2, \epsilon)` (``F.normalize``).
    Computed once per map and shared by every graph built from it
    (:func:`build_graphs`). On a CPU with numba the normalisation is one compiled
    pass (:mod:`gnn_lic.graph._rowkernels`), equal to this up to float rounding.
    """
    if _rowkernels.enabled(x) and x.numel() > 0:
        return _rowkernels.unit_features(x, eps)
    B, C, H, W = x.shape
    xn = x.detach().reshape(B, C, H * W).transpose(1, 2).contiguous()
    return xn.div_(torch.linalg.vector_norm(xn, dim=-1, keepdim=True).clamp_min_(eps))


#: bytes of temporaries per chunk of blocks in :func:`row_similarity` on a CPU
#: (cache-sized, so the per-block products never leave the cache)
SIMILARITY_CHUNK_BYTES = 4 << 20


def row_similarity(xn: Tensor, cands: Candidates) -> Tensor:
    r"""Cosine similarities, GLIC eq. (7), as ``(B, R, K)`` rows in block order.

    .. math:: S_{ij} = \frac{\langle x_i, x_j \rangle}{\|x_i\|_2 \|x_j\|_2}

    One matrix product of the normalised features per block of the candidate
    layout (dense BLAS), run over cache-sized chunks of blocks on a CPU; entries
    that are not candidates, and the rows of padding queries, are unspecified.
    ``xn`` comes from :func:`unit_features`. On a CPU with numba, a shift-border
    :class:`LocalWindow` is computed as exactly the needed dot products
    (:func:`gnn_lic.graph._rowkernels.local_window_similarity`).
    """
    if cands.window is not None and _rowkernels.enabled(xn):
        L, H, W = cands.window
        return _rowkernels.local_window_similarity(xn, L, H, W, cands.row_of_node, cands.rows.numel())
    B, _, C = xn.shape
    nb, Q = cands.query.shape
    Kb = cands.key.shape[1]
    K = Kb if cands.cand is None else cands.cand.shape[-1]
    out = xn.new_empty(B, nb * Q, K)
    qr, kr = cands.query_rows.view(nb, Q), cands.key_rows.view(nb, Kb)
    step = nb
    if xn.device.type == "cpu":
        per_block = (Q * C + (0 if cands.shared_keys else Kb * C) + Q * Kb) * xn.element_size()
        step = max(1, SIMILARITY_CHUNK_BYTES // per_block)
    for b in range(B):
        for s0 in range(0, nb, step):
            s1 = min(nb, s0 + step)
            # index_select copies whole rows: about 2x faster than advanced indexing
            q = xn[b].index_select(0, qr[s0:s1].flatten()).view(s1 - s0, Q, C)
            k = q if cands.shared_keys else xn[b].index_select(0, kr[s0:s1].flatten()).view(s1 - s0, Kb, C)
            dst = out[b, s0 * Q : s1 * Q].view(s1 - s0, Q, K)
            if cands.cand is None:
                torch.bmm(q, k.transpose(1, 2), out=dst)
            else:
                torch.gather(torch.bmm(q, k.transpose(1, 2)), 2, cands.cand[s0:s1], out=dst)
    return out


def candidate_similarity(x: Tensor, cands: Candidates, eps: float = 1e-12, mask: bool = True) -> Tensor:
    r"""Cosine similarity to every candidate, GLIC eq. (7), as ``(B, N, K)`` in node order.

    A zero vector has similarity 0 to everything. Entries of invalid candidates
    are 0 (unspecified with ``mask=False``).
    """
    s = row_similarity(unit_features(x, eps), cands)[:, cands.row_of_node]
    return s.masked_fill_(~cands.valid, 0) if mask else s


@dataclass
class GraphInfo:
    """What :func:`build_graph` computed, for analysis (maps are ``(B, H, W)``).

    Attributes:
        num_candidates: true candidate counts ``n_i``.
        degree: realised in-degrees ``d_i = |N_i|``.
        scores: complexity scores ``s_i`` (``AdaptiveDegree`` only, else ``None``).
        quota: real-valued quotas ``q_i`` (idem).
        target_degree: targets ``d_i^*`` of eq. (6) (idem).
        threshold: bisection thresholds ``theta_i`` (idem).
        candidates: the :class:`Candidates` (node ids local to one image).
    """

    num_candidates: Tensor
    degree: Tensor
    scores: Optional[Tensor] = None
    quota: Optional[Tensor] = None
    target_degree: Optional[Tensor] = None
    threshold: Optional[Tensor] = None
    candidates: Optional[Candidates] = None


def _build_one(xn: Tensor, x: Tensor, cset: CandidateSet, selector: Selector, scores: Optional[Tensor],
               return_info: bool, positions: bool = False) -> Tuple[CSRGraph, Optional[GraphInfo]]:
    """One graph of a map whose normalised features ``xn`` are already computed."""
    B, C, H, W = x.shape
    N = H * W
    cands = candidates(cset, H, W, x.device)
    valid, n = cands.valid_rows, cands.num_candidates  # n_i in node order
    full = cands.full
    if not selector.self_loops:
        valid, n = cands.without_self_loops()
        full = False
    sim = row_similarity(xn, cands)  # (B, R, K)
    if cands.zero is not None:  # zero-feature candidates: cosine similarity 0
        sim.masked_fill_(cands.zero, 0.0)
    if positions and cands.coords is None:
        raise ValueError(f"{cset!r} defines no relative positions (see CandidateSet.position_window)")
    sel = selector.select(sim, None if full else valid.expand(B, -1, -1), x, cands=cands, num_candidates=n,
                          scores=scores)
    K = sim.shape[-1]
    zero_col = rel_index = None
    if sel.keep is None and sel.degree is not None and cands.zero is None and not positions:
        # threshold rule whose degrees the compiled loop counted: columns written straight from the rows
        degree = sel.degree[:, cands.row_of_node].reshape(-1)
        crow = _crow(degree)
        masked = sim if sel.masked_sim is None else sel.masked_sim
        col, row = _rowkernels.fill_columns(masked.reshape(-1, K), sel.threshold.reshape(-1), cands.key,
                                            cands.cand, cands.row_of_node, crow)
    else:
        keep = sel.keep
        if keep is None:
            compare = torch.gt if sel.strict else torch.ge
            keep = compare(sim, sel.threshold.unsqueeze(-1))
            if not full:
                keep &= valid
        keep = keep[:, cands.row_of_node]  # (B, N, K), node order
        degree = keep.sum(-1).reshape(-1)
        crow = _crow(degree)
        flat = keep.reshape(-1).nonzero().squeeze(1)  # in target order, then candidate order
        local = flat % (N * K)
        col = cands.index.reshape(-1)[local]
        if B > 1:
            col = col + flat // (N * K) * N
        if cands.zero is not None:  # zero-padding candidates -> the zero node B*N
            zero_col = cands.zero[cands.row_of_node].reshape(-1)[local]
            col = torch.where(zero_col, torch.full_like(col, B * N), col)
        if positions:
            qy, qx, kw = cands.coords
            node, slot = local // K, local % K
            rel_index = _relative_index(qy[node], qx[node], slot // kw, slot % kw, *cset.position_window)
        row = torch.repeat_interleave(degree, output_size=col.numel())
    order = None
    if cset.scattered:  # aggregate in block order (each block's candidates are its keys)
        real = cands.rows[cands.rows >= 0]
        order = (torch.arange(B, device=real.device)[:, None] * N + real).reshape(-1)
    num_cols = B * N + 1 if zero_col is not None else None
    if num_cols is not None:
        order = None  # the zero node has no place in a block order
    graph = CSRGraph(crow, col, row, B * N, order=order, num_cols=num_cols, rel_index=rel_index)
    if not return_info:
        return graph, None

    def as_map(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.reshape(B, H, W)

    info = GraphInfo(
        num_candidates=n.expand(B, -1).reshape(B, H, W),
        degree=degree.reshape(B, H, W),
        scores=as_map(sel.info.get("scores")),
        quota=as_map(sel.info.get("quota")),
        target_degree=as_map(sel.info.get("target_degree")),
        threshold=as_map(sel.info.get("threshold")),
        candidates=cands,
    )
    return graph, info


def _relative_index(qy: Tensor, qx: Tensor, ky: Tensor, kx: Tensor, Q: int, S: int) -> Tensor:
    r"""Index of a query -> key offset in a ``(Q + S - 1)^2`` relative-position table.

    A query at ``(qy, qx)`` in its ``Q x Q`` group and a key at ``(ky, kx)`` in its
    ``S x S`` window have the offset ``(ky - qy, kx - qx)``; the index is
    :math:`((k_y - q_y) - (Q - 1))(Q + S - 1) + ((k_x - q_x) - (Q - 1))` taken modulo
    the table size, the indexing of the GLIC authors' code (a bijection between
    offsets and table rows).
    """
    side = Q + S - 1
    return (((ky - qy) - (Q - 1)) * side + ((kx - qx) - (Q - 1))).remainder(side * side)


def _crow(degree: Tensor) -> Tensor:
    crow = degree.new_zeros(degree.numel() + 1)
    torch.cumsum(degree, 0, out=crow[1:])
    return crow


def _check_map(x: Tensor) -> None:
    check_feature_map(x)
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point feature map, got {x.dtype}")
    if x.shape[1] < 1:
        raise ValueError(f"feature map has no channels: {tuple(x.shape)}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"feature map must be at least 1x1, got {x.shape[2]}x{x.shape[3]}")


@torch.no_grad()
def build_graphs(
    x: Tensor,
    candidate_sets: Mapping[str, CandidateSet],
    selector: Selector,
    *,
    scores: Optional[Tensor] = None,
    return_info: bool = False,
    positions: bool = False,
) -> Union[Dict[str, CSRGraph], Tuple[Dict[str, CSRGraph], Dict[str, GraphInfo]]]:
    r"""Several graphs of one feature map, as :class:`CSRGraph` s (what the layers consume).

    The graphs of a GFA block (local and global) share the normalised features
    and the complexity scores, which are computed once here. Each graph is the
    one :func:`build_graph` returns for the same arguments, already in CSR form.

    Args:
        x (Tensor): feature map ``(B, C, H, W)``.
        candidate_sets (Mapping[str, CandidateSet]): name -> candidate rule.
        selector (Selector): selection rule shared by all graphs.
        scores (Tensor, optional): precomputed ``(B, H, W)`` complexity scores.
        return_info (bool): also return a :class:`GraphInfo` per graph.
        positions (bool): give every edge its relative-position index
            (:attr:`CSRGraph.rel_index`); the candidate sets must define
            :attr:`~gnn_lic.graph.CandidateSet.position_window`.

    Zero-padding candidates (``border="zero"``) that are selected become edges from
    one extra node ``B*H*W`` whose features are zero (:attr:`CSRGraph.num_cols`).

    Returns:
        dict of :class:`CSRGraph` (and dict of :class:`GraphInfo`), keyed by name.
    """
    _check_map(x)
    if x.shape[0] == 0:
        raise ValueError("build_graphs needs a non-empty batch")
    x = x.detach()
    if scores is None:
        scores = selector.prepare(x)
    xn = unit_features(x)
    graphs, infos = {}, {}
    for name, cset in candidate_sets.items():
        graphs[name], infos[name] = _build_one(xn, x, cset, selector, scores, return_info, positions)
    return (graphs, infos) if return_info else graphs


@torch.no_grad()
def build_graph(
    x: Tensor,
    candidate_set: CandidateSet,
    selector: Selector,
    *,
    scores: Optional[Tensor] = None,
    return_info: bool = False,
) -> Union[Tensor, Tuple[Tensor, GraphInfo]]:
    r"""Build the directed graph of a feature map.

    *Where to connect* is given by ``candidate_set`` (:class:`LocalWindow`,
    :class:`GlobalGrid`, :class:`WindowPartition`), *how much* by ``selector``
    (:class:`AdaptiveDegree`, :class:`TopK`, :class:`KeepAll`). Similarities are
    the cosine similarities of the input features (GLIC eq. 7). Construction is
    gradient-free and deterministic.

    Args:
        x (Tensor): feature map ``(B, C, H, W)``, any ``H, W >= 1``.
        candidate_set (CandidateSet): candidate rule.
        selector (Selector): selection rule.
        scores (Tensor, optional): precomputed ``(B, H, W)`` complexity scores for
            :class:`AdaptiveDegree` (e.g. shared by the two graphs of a GFA block).
        return_info (bool): also return a :class:`GraphInfo`.

    Returns:
        Tensor: ``edge_index`` ``(2, E)`` int64, row 0 the source ``j``, row 1 the
        target ``i`` (PyG ``source_to_target``), sorted by target then by candidate
        order. Node ids are ``b*H*W + u*W + v`` (the order of
        ``x.permute(0, 2, 3, 1).reshape(-1, C)``); graphs of different batch items
        never connect.

    Example:
        >>> x = torch.randn(2, 16, 12, 12)
        >>> ei = build_graph(x, LocalWindow(8), AdaptiveDegree(avg_degree=16))
        >>> ei.shape[0], int(ei.max()) < 2 * 12 * 12
        (2, True)
    """
    _check_map(x)
    if x.shape[0] == 0:
        if return_info:
            raise ValueError("return_info needs a non-empty batch")
        return torch.empty(2, 0, dtype=torch.long, device=x.device)
    out = build_graphs(x, {"graph": candidate_set}, selector, scores=scores, return_info=return_info)
    if return_info:
        return out[0]["graph"].edge_index, out[1]["graph"]
    return out["graph"].edge_index


def to_data(x: Tensor, edge_index: Tensor):
    """Wrap a feature map and its graph as a :class:`torch_geometric.data.Data`.

    ``x`` becomes node features ``(B*H*W, C)``, ``pos`` the ``(u, v)`` coordinates
    and ``batch`` the image index; the result passes ``Data.validate()``.
    """
    from torch_geometric.data import Data  # noqa: PLC0415

    B, C, H, W = x.shape
    u, v = torch.meshgrid(torch.arange(H, device=x.device), torch.arange(W, device=x.device), indexing="ij")
    pos = torch.stack([u.flatten(), v.flatten()], 1).repeat(B, 1)
    batch = torch.arange(B, device=x.device).repeat_interleave(H * W)
    return Data(x=x.permute(0, 2, 3, 1).reshape(-1, C), edge_index=edge_index, pos=pos, batch=batch, num_nodes=B * H * W)
