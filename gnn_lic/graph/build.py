"""``build_graph``: the one graph-construction entry point of gnn_lic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from gnn_lic.graph import _rowkernels
from gnn_lic.graph.candidates import CandidateSet
from gnn_lic.graph.scores import check_feature_map
from gnn_lic.graph.selectors import Selector
from gnn_lic.graph.similarity import Candidates, candidates, row_similarity, unit_features
from gnn_lic.graph.sparse import CSRGraph, crow_from_degree

__all__ = ["build_graph", "build_graphs", "GraphInfo", "to_data"]


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


#: similarities of at most this many bytes are computed at once when a graph of a row-wise
#: selector is built in chunks of blocks (large maps, see :func:`_columns_by_chunks`)
GRAPH_CHUNK_BYTES = 4 << 20


def _block_order(cands, B: int, N: int) -> Tensor:
    """The node order in which a scattered candidate set aggregates: each block's members together."""
    real = cands.rows[cands.rows >= 0]
    return (torch.arange(B, device=real.device)[:, None] * N + real).reshape(-1)


def _columns_by_chunks(xn: Tensor, x: Tensor, cands, selector: Selector, valid: Optional[Tensor], n: Tensor,
                       scores: Optional[Tensor], step: int) -> Tuple[Tensor, Tensor]:
    """``(crow, col)`` of a row-wise selector's graph, ``step`` blocks of similarity rows at a time.

    Every row's threshold and kept candidates depend on that row's similarities and target
    alone, so the graph is the one the whole ``(B, R, K)`` computation gives. Two passes:
    thresholds and degrees, then (the similarities computed again) the columns, each row
    written at its place in the CSR order.
    """
    B = x.shape[0]
    nb, Q = cands.query.shape
    R = nb * Q
    target, _ = selector.row_targets(x, cands=cands, num_candidates=n, scores=scores, dtype=xn.dtype)
    theta = xn.new_empty(B, R)
    degree = torch.empty(B, R, dtype=torch.long, device=x.device)
    chunks = [(s0, min(nb, s0 + step)) for s0 in range(0, nb, step)]

    def rows_of(s0: int, s1: int) -> Tuple[Tensor, Optional[Tensor]]:
        sim = row_similarity(xn, cands, blocks=(s0, s1))
        return sim, None if valid is None else valid[s0 * Q : s1 * Q].expand(B, -1, -1)

    for s0, s1 in chunks:
        sim, v = rows_of(s0, s1)
        th, deg, _ = selector.threshold_rows(sim, v, target[:, s0 * Q : s1 * Q])
        theta[:, s0 * Q : s1 * Q], degree[:, s0 * Q : s1 * Q] = th, deg
    crow = crow_from_degree(degree[:, cands.row_of_node].reshape(-1))
    col = torch.empty(int(crow[-1]), dtype=torch.long)
    for s0, s1 in chunks:
        sim, v = rows_of(s0, s1)
        if v is not None:
            sim.masked_fill_(~v, float("-inf"))
        _rowkernels.fill_rows(sim, theta[:, s0 * Q : s1 * Q], cands.key, cands.cand, cands.rows, s0 * Q, crow, col)
    return crow, col


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
    nb, Q = cands.query.shape
    K = cands.valid_rows.shape[-1]
    per_block = B * Q * K * xn.element_size()
    if (selector.row_wise and not return_info and not positions and cands.zero is None and cands.window is None
            and _rowkernels.enabled(xn) and nb * per_block > GRAPH_CHUNK_BYTES):
        crow, col = _columns_by_chunks(xn, x, cands, selector, None if full else valid, n, scores,
                                       max(1, GRAPH_CHUNK_BYTES // per_block))
        order = _block_order(cands, B, N) if cset.scattered else None
        return CSRGraph(crow, col, None, B * N, order=order), None
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
        crow = crow_from_degree(degree)
        masked = sim if sel.masked_sim is None else sel.masked_sim
        col = _rowkernels.fill_columns(masked.reshape(-1, K), sel.threshold.reshape(-1), cands.key, cands.cand,
                                       cands.row_of_node, crow)
    else:
        keep = sel.keep
        if keep is None:
            compare = torch.gt if sel.strict else torch.ge
            keep = compare(sim, sel.threshold.unsqueeze(-1))
            if not full:
                keep &= valid
        keep = keep[:, cands.row_of_node]  # (B, N, K), node order
        degree = keep.sum(-1).reshape(-1)
        crow = crow_from_degree(degree)
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
    # aggregate in block order (each block's candidates are its keys)
    order = _block_order(cands, B, N) if cset.scattered else None
    num_cols = B * N + 1 if zero_col is not None else None
    # the targets are implied by crow: made again only if a layer needs them (training, gather path)
    graph = CSRGraph(crow, col, None, B * N, order=order, num_cols=num_cols, rel_index=rel_index)
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
        >>> from gnn_lic.graph import AdaptiveDegree, LocalWindow
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
