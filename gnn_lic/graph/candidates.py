"""Candidate sets: *where to connect* (GLIC Sec. 3.3.1, GABIC Sec. 3.3).

Every candidate set used by gnn_lic is *separable*: the candidates of node
``(u, v)`` are the product of a set of rows that depends only on ``u`` and a set
of columns that depends only on ``v``. Each axis is described by an
:class:`AxisLayout`, which groups the positions of that axis into blocks whose
members share one list of *key* positions; each member then picks its
candidates from its block's keys. The 2-D layout is the outer product of the
row and column layouts. This lets :func:`gnn_lic.graph.build_graph` compute all
cosine similarities as one batched matrix product per block (dense BLAS)
instead of one gather per edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["AxisLayout", "CandidateSet", "LocalWindow", "BlockWindow", "GlobalGrid", "WindowPartition", "BORDERS"]

#: border rules of the window candidate sets
BORDERS = ("shift", "drop", "zero")


@dataclass
class AxisLayout:
    """Block layout of one image axis of length ``n``.

    Attributes:
        query: ``(num_blocks, Q)`` positions of the block's members, ``-1`` = padding.
        key: ``(num_blocks, K)`` positions the members may connect to, ``-1`` = padding.
        cand: ``(num_blocks, Q, C)`` indices into ``key`` of each member's
            candidates, or ``None`` when every member's candidates are all keys.
        group: ``(n,)`` quota group of every position (quotas normalised within
            groups, see :class:`~gnn_lic.graph.AdaptiveDegree`), or ``None``.
        coord: ``(n,)`` coordinate of every position inside its query group, for
            relative-position terms (the key coordinate is the key's slot), or ``None``.
    """

    query: Tensor
    key: Tensor
    cand: Optional[Tensor] = None
    group: Optional[Tensor] = None
    coord: Optional[Tensor] = None


def _blocks(n: int, size: int, device) -> Tensor:
    """``(ceil(n/size), size)`` consecutive positions, ``-1`` past the end."""
    pos = torch.arange(-(-n // size) * size, device=device).view(-1, size)
    return torch.where(pos < n, pos, torch.full_like(pos, -1))


class CandidateSet:
    """Base class: a rule giving every node its candidate set ``C_i``."""

    #: the candidates of nodes that follow each other in node (raster) order lie far
    #: apart (a lattice across the map, a window across many rows), so aggregation is
    #: faster in the layout's block order (:attr:`gnn_lic.graph.CSRGraph.order`)
    scattered: bool = False
    #: positions outside the map are candidates with zero features (``border="zero"``)
    zero_padded: bool = False
    #: ``(Q, S)``: side of the query groups and of the shared key window, when the
    #: layout defines relative positions (:attr:`AxisLayout.coord`), else ``None``
    position_window: Optional[tuple] = None

    def axis_layout(self, n: int, device=None) -> AxisLayout:  # pragma: no cover - abstract
        raise NotImplementedError

    def window_side(self) -> Optional[int]:
        """``L`` when every node's candidates are the ``L x L`` window around it, moved inside the
        map at its borders (a compiled kernel then computes exactly those similarities,
        :func:`gnn_lic.graph._rowkernels.local_window_similarity`); ``None`` otherwise."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{self.__class__.__name__}({args})"


class LocalWindow(CandidateSet):
    r"""Dense local sampling, GLIC eq. (1): the ``L x L`` window centred on the node.

    .. math::
        \mathcal{C}_i^{loc} = \{ j : \pi(j) = (u_i + \Delta_u, v_i + \Delta_v),\;
        \Delta_u, \Delta_v \in \{-\lfloor L/2 \rfloor, \dots, L - 1 - \lfloor L/2 \rfloor\} \}

    For odd ``L`` the offsets are :math:`|\Delta| \le (L-1)/2` as in eq. (1); for
    even ``L`` they run from ``-L/2`` to ``L/2 - 1``.

    Args:
        size (int): window side ``L``.
        border (str): what happens to windows that cross the map border.
            ``"shift"`` (default) moves the window inside the map, as
            neighbourhood attention does, so every node keeps
            ``min(L, H) * min(L, W)`` candidates (the node itself included);
            ``"drop"`` keeps the centred window and drops the positions outside
            the map, so border nodes have fewer candidates. ``n_i`` is always the
            true number of candidates.
        block (int, optional): side of the query tiles used to batch the
            similarity computation (an implementation detail; default ``L``).
    """

    def __init__(self, size: int, border: str = "shift", block: Optional[int] = None):
        if size < 1:
            raise ValueError(f"LocalWindow size must be >= 1, got {size}")
        if border not in ("shift", "drop"):
            raise ValueError(f"border must be 'shift' or 'drop', got {border!r}")
        self.size = int(size)
        self.border = border
        self.block = int(block or size)

    def window_side(self) -> Optional[int]:
        return self.size if self.border == "shift" else None

    def axis_layout(self, n: int, device=None) -> AxisLayout:
        L, b = self.size, self.block
        query = _blocks(n, b, device)  # (nb, b)
        nb = query.shape[0]
        start = torch.arange(nb, device=device) * b  # first member of each tile
        pos = torch.arange(nb * b, device=device).view(nb, b)  # member positions (may pass n)
        if self.border == "shift":
            lw = min(L, n)
            # window start of every member, clamped so the window lies inside [0, n)
            ws = (pos - L // 2).clamp(0, max(n - L, 0))
            halo = min(b + L - 1, n)
            h0 = torch.minimum((start - L // 2).clamp(0, max(n - L, 0)), torch.tensor(n - halo, device=device))
            key = h0[:, None] + torch.arange(halo, device=device)  # always inside [0, n)
            cand = (ws - h0[:, None])[:, :, None] + torch.arange(lw, device=device)
            # padded members (pos >= n) get a harmless in-range window
            cand = cand.clamp(0, halo - 1)
        else:
            halo = b + L - 1
            h0 = start - L // 2
            key = h0[:, None] + torch.arange(halo, device=device)
            key = torch.where((key >= 0) & (key < n), key, torch.full_like(key, -1))
            cand = (pos - start[:, None])[:, :, None] + torch.arange(L, device=device)
        return AxisLayout(query, key, cand)


class BlockWindow(CandidateSet):
    r"""Query blocks sharing one window: the local candidate rule of the GLIC authors' code.

    The map is tiled by non-overlapping ``Q x Q`` query blocks; every node of a
    block has the same ``S x S`` candidates, the window centred on its block
    (rows ``Q a - (S - Q)/2 .. Q a + (S + Q)/2 - 1`` for block row ``a``). GLIC
    Sec. 4.1.3 states "dense sampling size 8" and "average degree 64"; with a
    per-node 8x8 window (:class:`LocalWindow`) an average degree of 64 keeps
    almost every candidate, while the authors' code (``Q = 8``, ``S = 16``) lets
    each node choose 64 of 256 candidates, as it does in the global graph.

    Args:
        query (int): query block side ``Q`` (default 8).
        size (int): window side ``S >= Q`` (default 16).
        border (str): window positions outside the map:
            ``"shift"`` (default) moves the window inside the map (every node keeps
            ``min(S, H) * min(S, W)`` candidates); ``"drop"`` drops them;
            ``"zero"`` keeps them as candidates with zero features (similarity 0,
            zero keys and values in aggregation), as the authors' code does.
        group_quota (bool): quotas are normalised within each query block (the
            authors' code) instead of over the whole image (default ``False``).

    A node's coordinate for relative positions is its place in its block
    (``0..Q-1`` per axis) and a candidate's is its slot in the window (``0..S-1``).
    """

    scattered = True  # a block's window spans S rows: its queries are close together in memory in block order

    def __init__(self, query: int = 8, size: int = 16, border: str = "shift", group_quota: bool = False):
        if query < 1 or size < query:
            raise ValueError(f"BlockWindow needs 1 <= query <= size, got query={query}, size={size}")
        if border not in BORDERS:
            raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
        self.query = int(query)
        self.size = int(size)
        self.border = border
        self.group_quota = bool(group_quota)

    @property
    def zero_padded(self) -> bool:  # type: ignore[override]
        return self.border == "zero"

    @property
    def position_window(self) -> tuple:  # type: ignore[override]
        return (self.query, self.size)

    def axis_layout(self, n: int, device=None) -> AxisLayout:
        Q, S = self.query, self.size
        query = _blocks(n, Q, device)
        start = torch.arange(query.shape[0], device=device) * Q - (S - Q) // 2
        if self.border == "shift" and S >= n:
            key = torch.arange(n, device=device).expand(query.shape[0], n)
        else:
            if self.border == "shift":
                start = start.clamp(0, n - S)
            key = start[:, None] + torch.arange(S, device=device)
            key = torch.where((key >= 0) & (key < n), key, torch.full_like(key, -1))
        pos = torch.arange(n, device=device)
        group = pos // Q if self.group_quota else None
        return AxisLayout(query, key.contiguous(), None, group=group, coord=pos % Q)


class GlobalGrid(CandidateSet):
    r"""Sparse global sampling, GLIC eq. (2): the stride lattice aligned with the node.

    .. math::
        \Omega_h = \max(1, \lfloor H / G \rfloor), \quad r_i = u_i \bmod \Omega_h, \\
        \mathcal{C}_i^{glo} = \{ j : \pi(j) = (r_i + a\,\Omega_h,\; c_i + b\,\Omega_w),\;
        a, b \in \{0, \dots, G-1\} \} \cap \text{map}

    Nodes with the same residues ``(r_i, c_i)`` share one lattice, so each residue
    class is one block. When ``H >= G`` all ``G`` lattice rows lie inside the map
    (``r + (G-1)\Omega \le H - 1``); when ``H < G`` the stride is 1 and the lattice
    is clipped to the ``H`` rows of the map. Either way every node has
    ``min(G, H) * min(G, W)`` candidates, with no divisibility requirement.

    Args:
        size (int): grid side ``G``.
        groups (int, optional): quota groups of the authors' code: nodes with the
            same residues modulo ``(H // groups, W // groups)`` form one group
            (``groups x groups`` nodes when ``groups`` divides the map) within which
            quotas are normalised, and a node's coordinate for relative positions is
            its place ``u // (H // groups)`` in its group (a candidate's is its lattice
            slot). ``None`` (default): quotas over the whole image, as in the paper.
    """

    scattered = True

    def __init__(self, size: int, groups: Optional[int] = None):
        if size < 1:
            raise ValueError(f"GlobalGrid size must be >= 1, got {size}")
        if groups is not None and groups < 1:
            raise ValueError(f"GlobalGrid groups must be >= 1, got {groups}")
        self.size = int(size)
        self.groups = None if groups is None else int(groups)

    @property
    def position_window(self) -> Optional[tuple]:  # type: ignore[override]
        return None if self.groups is None else (self.groups, self.size)

    def axis_layout(self, n: int, device=None) -> AxisLayout:
        G = self.size
        omega = max(1, n // G)
        members = -(-n // omega)  # ceil(n / omega): rows sharing one residue
        r = torch.arange(omega, device=device)[:, None]
        query = r + omega * torch.arange(members, device=device)
        query = torch.where(query < n, query, torch.full_like(query, -1))
        key = r + omega * torch.arange(min(G, n), device=device)  # inside [0, n) by construction
        group = coord = None
        if self.groups is not None:
            stride = max(1, n // self.groups)
            pos = torch.arange(n, device=device)
            group, coord = pos % stride, pos // stride
        return AxisLayout(query, key, None, group=group, coord=coord)


class WindowPartition(CandidateSet):
    r"""The node's own non-overlapping ``M x M`` window (GABIC Sec. 3.3).

    Windows tile the map from the top-left corner; the windows on the right and
    bottom edges are partial when ``M`` does not divide ``H`` or ``W``.

    Args:
        size (int): window side ``M``.
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"WindowPartition size must be >= 1, got {size}")
        self.size = int(size)

    def axis_layout(self, n: int, device=None) -> AxisLayout:
        win = _blocks(n, min(self.size, n), device)
        return AxisLayout(win, win, None)
