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

__all__ = ["AxisLayout", "CandidateSet", "LocalWindow", "GlobalGrid", "WindowPartition"]


@dataclass
class AxisLayout:
    """Block layout of one image axis of length ``n``.

    Attributes:
        query: ``(num_blocks, Q)`` positions of the block's members, ``-1`` = padding.
        key: ``(num_blocks, K)`` positions the members may connect to, ``-1`` = padding.
        cand: ``(num_blocks, Q, C)`` indices into ``key`` of each member's
            candidates, or ``None`` when every member's candidates are all keys.
    """

    query: Tensor
    key: Tensor
    cand: Optional[Tensor] = None


def _blocks(n: int, size: int, device) -> Tensor:
    """``(ceil(n/size), size)`` consecutive positions, ``-1`` past the end."""
    pos = torch.arange(-(-n // size) * size, device=device).view(-1, size)
    return torch.where(pos < n, pos, torch.full_like(pos, -1))


class CandidateSet:
    """Base class: a rule giving every node its candidate set ``C_i``."""

    #: candidates lie far apart in node (raster) order, so aggregation is faster in
    #: the layout's block order (see :meth:`gnn_lic.graph.CSRGraph.relabelled`)
    scattered: bool = False

    def axis_layout(self, n: int, device=None) -> AxisLayout:  # pragma: no cover - abstract
        raise NotImplementedError

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
    """

    scattered = True

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"GlobalGrid size must be >= 1, got {size}")
        self.size = int(size)

    def axis_layout(self, n: int, device=None) -> AxisLayout:
        G = self.size
        omega = max(1, n // G)
        members = -(-n // omega)  # ceil(n / omega): rows sharing one residue
        r = torch.arange(omega, device=device)[:, None]
        query = r + omega * torch.arange(members, device=device)
        query = torch.where(query < n, query, torch.full_like(query, -1))
        key = r + omega * torch.arange(min(G, n), device=device)  # inside [0, n) by construction
        return AxisLayout(query, key, None)


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
