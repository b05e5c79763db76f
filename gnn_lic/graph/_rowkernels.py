"""Compiled per-row loops of graph construction (numba), with a switch to turn them off.

Two loops of :func:`gnn_lic.graph.build_graph` touch every similarity ``S_ij``
several times with little arithmetic each: the ``T`` counting passes of the
bisection (Algorithm 1) and the final selection ``S_ij >= theta_i`` written out
as CSR columns. In PyTorch each pass is a separate sweep over the whole
``(N, K)`` similarity tensor plus temporaries; here one row at a time stays in
the L1 cache, which is several times faster on a CPU.

The loops reproduce the PyTorch expressions exactly (same comparisons, same
float updates ``theta = (lo + hi) / 2``), so both paths give identical graphs;
the test suite checks this. They are used for CPU tensors when numba is
installed; ``GNN_LIC_NUMBA=0`` (or :func:`set_enabled`) turns them off.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

try:  # numba is a dependency, but the package must work without it
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

__all__ = ["enabled", "set_enabled", "bisect_rows", "fill_columns"]

_enabled = numba is not None and os.environ.get("GNN_LIC_NUMBA", "1") != "0"


def set_enabled(flag: bool) -> bool:
    """Switch the compiled loops on or off; returns the previous setting.

    Switching on without numba installed raises :class:`ImportError`.
    """
    global _enabled
    if flag and numba is None:
        raise ImportError("numba is not installed")
    previous, _enabled = _enabled, bool(flag)
    return previous


def enabled(*tensors: Tensor) -> bool:
    """Whether the compiled loops apply to these tensors (CPU, float32/float64)."""
    return _enabled and all(t.device.type == "cpu" for t in tensors) and tensors[0].dtype in (torch.float32, torch.float64)


def _jit(fn):
    """``numba.njit``, caching the machine code on disk where a cache directory is writable."""
    try:
        return numba.njit(cache=True, nogil=True)(fn)
    except RuntimeError:  # no writable cache location: compile once per process instead
        return numba.njit(nogil=True)(fn)


if numba is not None:

    @_jit
    def _bisect_kernel(sim, theta, lo, hi, target, iters, half, degree):  # pragma: no cover - compiled
        rows, K = sim.shape
        for r in range(rows):
            t, a, b, d = theta[r], lo[r], hi[r], target[r]
            for _ in range(iters):
                m = 0
                for k in range(K):
                    if sim[r, k] >= t:
                        m += 1
                if m > d:
                    a = t
                else:
                    b = t
                t = (a + b) * half
            m = 0
            for k in range(K):
                s = sim[r, k]
                m += (s >= t) & (s != -np.inf)
            theta[r] = t
            degree[r] = m

    @_jit
    def _fill_kernel(sim, theta, key, cand, has_cand, row_of_node, crow, col, row):  # pragma: no cover - compiled
        K = sim.shape[1]
        N = row_of_node.shape[0]
        R = sim.shape[0] // ((crow.shape[0] - 1) // N)  # rows per image
        Q = R // key.shape[0]
        p = 0
        for target in range(crow.shape[0] - 1):  # targets in order: sequential writes
            b, node = target // N, target % N
            r = row_of_node[node]
            fr = b * R + r
            blk, q = r // Q, r % Q
            t = theta[fr]
            start = p
            for k in range(K):
                s = sim[fr, k]
                # branch-free (a kept/dropped branch would be unpredictable): always
                # write, advance only on a kept edge; col has a spare slot at the end
                col[p] = key[blk, cand[blk, q, k] if has_cand else k] + b * N
                p += (s >= t) & (s != -np.inf)
            row[start:p] = target


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def bisect_rows(sim: Tensor, theta: Tensor, lo: Tensor, hi: Tensor, target: Tensor, iters: int):
    """Algorithm 1's loop for every row of ``sim`` ``(M, K)`` (``-inf`` = not a candidate).

    ``theta`` ``(M,)`` holds the start values and receives the final thresholds.
    Returns the final in-degrees ``#{j : S_ij >= theta_i}`` ``(M,)`` int64.
    """
    degree = torch.empty(sim.shape[0], dtype=torch.long)
    theta_np = theta.numpy()  # written in place
    sim_np = _np(sim)
    # (lo + hi) * half with half of the similarities' dtype: the same float update as (lo + hi) / 2
    half = sim_np.dtype.type(0.5)
    _bisect_kernel(sim_np, theta_np, _np(lo), _np(hi), _np(target.long()), int(iters), half, degree.numpy())
    return degree


def fill_columns(sim: Tensor, theta: Tensor, key: Tensor, cand: Optional[Tensor], row_of_node: Tensor, crow: Tensor
                 ) -> Tuple[Tensor, Tensor]:
    """CSR sources and targets of the edges ``S_ij >= theta_i`` (rows of ``sim`` in block order).

    Args:
        sim: ``(B * R, K)`` similarities, ``-inf`` where ``j`` is not a candidate.
        theta: ``(B * R,)`` thresholds.
        key: ``(num_blocks, Kb)`` key node ids of each block (local to one image).
        cand: ``(num_blocks, Q, K)`` index of each row's candidates in its block's
            keys, or ``None`` (all keys, ``K = Kb``).
        row_of_node: ``(N,)`` row of each node of an image (rows per image:
            ``R = num_blocks * Q``).
        crow: ``(B * N + 1,)`` row pointers of the result.

    Returns:
        ``(col, row)``: sources and targets of the edges, in CSR order.
    """
    num_edges = int(crow[-1])
    col = torch.empty(num_edges + 1, dtype=torch.long)  # + the spare slot
    row = torch.empty(num_edges, dtype=torch.long)
    has_cand = cand is not None
    cand_np = _np(cand) if has_cand else np.zeros((1, 1, 1), np.int64)
    _fill_kernel(_np(sim), _np(theta), _np(key), cand_np, has_cand, _np(row_of_node), _np(crow), col.numpy(),
                 row.numpy())
    return col[:num_edges], row
