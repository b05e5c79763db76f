"""``build_graph``: the one graph-construction entry point of gnn_lic."""

from __future__ import annotations

from dataclasses import dataclass
from collections import OrderedDict
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from gnn_lic.graph.candidates import AxisLayout, CandidateSet
from gnn_lic.graph.selectors import Selector

__all__ = ["build_graph", "GraphInfo", "Candidates", "candidates", "candidate_similarity", "to_data"]


@dataclass
class Candidates:
    """Per-node candidate sets of one ``H x W`` map (node ids local to an image).

    Attributes:
        index: ``(N, K)`` candidate node ids ``u*W + v``, rows in node order.
        valid: ``(N, K)`` bool, which entries are real candidates.
        query: ``(num_blocks, Q)`` node ids of each block's members (``-1`` = padding).
        key: ``(num_blocks, Kb)`` node ids of each block's keys (``-1`` = padding).
        cand: ``(num_blocks, Q, K)`` index of each member's candidates in ``key``,
            or ``None`` (all keys).
        row_of_node: ``(N,)`` position of each node in ``query.flatten()``.
    """

    index: Tensor
    valid: Tensor
    query: Tensor
    key: Tensor
    cand: Optional[Tensor]
    row_of_node: Tensor

    @property
    def full(self) -> bool:
        """Whether every entry of ``index`` is a real candidate."""
        if not hasattr(self, "_full"):
            self._full = bool(self.valid.all())
        return self._full

    @property
    def num_candidates(self) -> Tensor:
        """``(N,)`` true candidate counts ``n_i``."""
        return self.valid.sum(-1)


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
    if cand is None:
        index = key.unsqueeze(1).expand(-1, query.shape[1], -1)
    else:
        index = key.gather(1, cand.flatten(1)).view_as(cand)
    index = index.reshape(-1, index.shape[-1])[row_of_node]
    valid = index >= 0
    return Candidates(index.clamp_min(0), valid, query, key, cand, row_of_node)


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


def candidate_similarity(x: Tensor, cands: Candidates, eps: float = 1e-12, mask: bool = True) -> Tensor:
    r"""Cosine similarity to every candidate, GLIC eq. (7), as ``(B, N, K)``.

    .. math:: S_{ij} = \frac{\langle x_i, x_j \rangle}{\|x_i\|_2 \|x_j\|_2}

    Computed block by block as one batched matrix product of the L2-normalised
    features (a zero vector has similarity 0 to everything). Entries of invalid
    candidates are 0 (unspecified with ``mask=False``).
    """
    B, C, H, W = x.shape
    N = H * W
    xn = F.normalize(x.reshape(B, C, N).transpose(1, 2), dim=-1, eps=eps)  # (B, N, C)
    xn = torch.cat([xn, xn.new_zeros(B, 1, C)], 1)  # row N = padding (-1 ids)
    q = xn[:, cands.query]  # (B, nb, Q, C)
    k = xn[:, cands.key]  # (B, nb, Kb, C)
    s = q @ k.transpose(-1, -2)  # (B, nb, Q, Kb)
    if cands.cand is not None:
        s = s.gather(-1, cands.cand.expand(B, -1, -1, -1))
    s = s.reshape(B, -1, s.shape[-1])[:, cands.row_of_node]
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
    if x.dim() != 4:
        raise ValueError(f"expected a feature map of shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point feature map, got {x.dtype}")
    B, C, H, W = x.shape
    if C < 1:
        raise ValueError(f"feature map has no channels: {tuple(x.shape)}")
    N = H * W
    x = x.detach()
    cands = candidates(candidate_set, H, W, x.device)
    if B == 0:
        empty = torch.empty(2, 0, dtype=torch.long, device=x.device)
        if return_info:
            raise ValueError("return_info needs a non-empty batch")
        return empty
    valid = cands.valid
    if not selector.self_loops:
        valid = valid & (cands.index != torch.arange(N, device=x.device)[:, None])
    sim = candidate_similarity(x, cands, mask=not cands.full)
    valid_b = None if (cands.full and selector.self_loops) else valid.expand(B, -1, -1)
    keep, sel_info = selector.select(sim, valid_b, x, scores=scores)
    b, i, k = keep.nonzero(as_tuple=True)
    src = cands.index[i, k] + b * N
    dst = i + b * N
    edge_index = torch.stack([src, dst])
    if not return_info:
        return edge_index

    def as_map(t: Optional[Tensor]) -> Optional[Tensor]:
        return None if t is None else t.reshape(B, H, W)

    info = GraphInfo(
        num_candidates=valid.sum(-1).expand(B, -1).reshape(B, H, W),
        degree=keep.sum(-1).reshape(B, H, W),
        scores=as_map(sel_info.get("scores")),
        quota=as_map(sel_info.get("quota")),
        target_degree=as_map(sel_info.get("target_degree")),
        threshold=as_map(sel_info.get("threshold")),
        candidates=cands,
    )
    return edge_index, info


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
