"""Compiled loops of graph construction (numba), with a switch to turn them off.

*Row loops.* Two loops of :func:`gnn_lic.graph.build_graph` touch every
similarity ``S_ij`` several times with little arithmetic each: the ``T``
counting passes of the bisection (Algorithm 1) and the final selection
``S_ij >= theta_i`` written out as CSR columns. In PyTorch each pass is a
separate sweep over the whole ``(N, K)`` similarity tensor plus temporaries;
here one row at a time stays in the L1 cache, which is faster on
a CPU. They reproduce the PyTorch expressions exactly (same comparisons, same
float updates ``theta = (lo + hi) / 2``): given the same similarities, both
paths give identical graphs; the test suite checks this.

*Top-k rows.* :class:`~gnn_lic.graph.TopK` keeps the ``k`` best of each row as a stable
descending sort ranks them, from an insertion list of ``k`` entries per row instead of a
sort of the whole row: the same places, so the same graphs.

*Local-window similarities.* The ``L x L`` window of :class:`LocalWindow`
(shift border) is computed as the ``L^2`` dot products each node needs, instead
of the dense products of a query tile with its whole halo, which compute about
3.5x the needed products at ``L = 8``.

*Feature passes.* The RMS-G score (GLIC eqs. 3-5) and the L2-normalised node
features each take one pass over the ``(B, C, H, W)`` map here instead of
several PyTorch sweeps with map-sized temporaries. They sum over channels in
their own order (the score in float64), so they agree with the PyTorch path to
float rounding, not bit for bit (tested with tolerances); so do the
local-window dot products, whose sums are vectorised in their own order.

All are used for CPU tensors; ``GNN_LIC_NUMBA=0`` (or :func:`set_enabled`) turns them
off, for the pure-PyTorch path.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from gnn_lic import compiled

__all__ = ["enabled", "set_enabled", "bisect_rows", "top_rows", "fill_columns", "fill_rows", "rms_gradient", "unit_features",
           "local_window_similarity"]


def set_enabled(flag: bool) -> bool:
    """Switch the compiled loops on or off (all of the package's, :func:`gnn_lic.compiled.set_enabled`);
    returns the previous setting."""
    return compiled.set_enabled(flag)


def enabled(*tensors: Tensor) -> bool:
    """Whether the compiled loops apply to these tensors (CPU, float32/float64)."""
    return compiled.enabled() and all(t.device.type == "cpu" for t in tensors) and tensors[0].dtype in (
        torch.float32, torch.float64)


_jit = compiled.jit


def _bisect_loop(sim, theta, lo, hi, target, iters, half, degree):  # pragma: no cover - compiled
    rows, K = sim.shape
    # counts are summed as floats of the similarities' dtype (exact: K < 2^24), which
    # vectorises over 8 lanes; numba would widen integer counts to int64
    one, zero = half + half, half - half
    for r in range(rows):
        t, a, b, d = theta[r], lo[r], hi[r], target[r]
        for _ in range(iters):
            m = zero
            for k in range(K):
                m += one if sim[r, k] >= t else zero
            if m > d:
                a = t
            else:
                b = t
            t = (a + b) * half
        m = zero
        for k in range(K):
            s = sim[r, k]
            m += one if (s >= t) & (s != -np.inf) else zero
        theta[r] = t
        degree[r] = np.int64(m)

# reassociating the count sums changes nothing (sums of 0/1 are exact) and lets them vectorise
_bisect_kernel = _jit(_bisect_loop, fastmath={"reassoc"})

@_jit
def _fill_kernel(sim, theta, key, cand, has_cand, row_of_node, crow, col):  # pragma: no cover - compiled
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
        for k in range(K):
            s = sim[fr, k]
            # branch-free (a kept/dropped branch would be unpredictable): always
            # write, advance only on a kept edge; col has a spare slot at the end
            col[p] = key[blk, cand[blk, q, k] if has_cand else k] + b * N
            p += (s >= t) & (s != -np.inf)

@_jit
def _sobel_rms_kernel(x, score):  # pragma: no cover - compiled
    # eqs. (3)-(5) with replicate padding, as scores.sobel_gradients: per channel
    # sx = dx[u-1] + 2 dx[u] + dx[u+1] (dx: central differences along v),
    # sy = sm[u+1] - sm[u-1] (sm: [1, 2, 1] along v); summed over channels in float64
    B, C, H, W = x.shape
    two = x.dtype.type(2)
    last = W - 1
    acc = np.empty((H, W), np.float64)
    for b in range(B):
        acc[:] = 0
        for c in range(C):
            for u in range(H):
                um, up = max(u - 1, 0), min(u + 1, H - 1)
                for v in range(1, last):  # interior columns: a branch-free loop that vectorises
                    sx = ((x[b, c, um, v + 1] - x[b, c, um, v - 1]) + two * (x[b, c, u, v + 1] - x[b, c, u, v - 1])
                          + (x[b, c, up, v + 1] - x[b, c, up, v - 1]))
                    sy = ((x[b, c, up, v - 1] + two * x[b, c, up, v] + x[b, c, up, v + 1])
                          - (x[b, c, um, v - 1] + two * x[b, c, um, v] + x[b, c, um, v + 1]))
                    acc[u, v] += sx * sx + sy * sy
                for v in range(0, W, max(last, 1)):  # first and last column (once when W = 1)
                    vm, vp = max(v - 1, 0), min(v + 1, last)
                    sx = ((x[b, c, um, vp] - x[b, c, um, vm]) + two * (x[b, c, u, vp] - x[b, c, u, vm])
                          + (x[b, c, up, vp] - x[b, c, up, vm]))
                    sy = ((x[b, c, up, vm] + two * x[b, c, up, v] + x[b, c, up, vp])
                          - (x[b, c, um, vm] + two * x[b, c, um, v] + x[b, c, um, vp]))
                    acc[u, v] += sx * sx + sy * sy
        for u in range(H):
            for v in range(W):
                score[b, u, v] = np.sqrt(acc[u, v] / C)

def _local_window_loop(xn, H, W, L, row_of_node, out):  # pragma: no cover - compiled
    # out[b, row_of_node[i], a * lw + c'] = <xn_i, xn_j>, j the (a, c')-th node of i's window
    # (LocalWindow, border "shift": the window start is clamped inside the map)
    B, N, C = xn.shape
    lh, lw = min(L, H), min(L, W)
    for b in range(B):
        for u in range(H):
            su = min(max(u - L // 2, 0), max(H - L, 0))
            for v in range(W):
                sv = min(max(v - L // 2, 0), max(W - L, 0))
                i = u * W + v
                r = row_of_node[i]
                for a in range(lh):
                    j0 = (su + a) * W + sv
                    for t in range(lw):
                        s = xn.dtype.type(0)
                        for c in range(C):
                            s += xn[b, i, c] * xn[b, j0 + t, c]
                        out[b, r, a * lw + t] = s

# reassociation lets the channel sum vectorise (the only difference from a plain loop)
_local_window_kernel = _jit(_local_window_loop, fastmath={"reassoc", "contract"})

@_jit
def _unit_kernel(x, out, eps):  # pragma: no cover - compiled
    # x (B, C, N) -> out (B, C, Np): out[b, :, i] = x[b, :, i] / max(||x[b, :, i]||, eps)
    B, C, N = x.shape
    norm = np.empty(N, x.dtype)
    for b in range(B):
        norm[:] = 0
        for c in range(C):
            for i in range(N):
                norm[i] += x[b, c, i] * x[b, c, i]
        for i in range(N):
            norm[i] = max(np.sqrt(norm[i]), eps)
        for c in range(C):
            for i in range(N):
                out[b, c, i] = x[b, c, i] / norm[i]


@_jit
def _unit_rows_kernel(x, out, eps):  # pragma: no cover - compiled
    # x (B, N, C) -> out (B, N, C): out[b, i] = x[b, i] / max(||x[b, i]||, eps), the squares summed in
    # channel order as in _unit_kernel (so both give the same numbers)
    B, N, C = x.shape
    for b in range(B):
        for i in range(N):
            s = x.dtype.type(0)
            for c in range(C):
                s += x[b, i, c] * x[b, i, c]
            n = max(np.sqrt(s), eps)
            for c in range(C):
                out[b, i, c] = x[b, i, c] / n


@_jit
def _top_rows_kernel(sim, k, first, keep):  # pragma: no cover - compiled
    # keep[r, j] = j is among places first .. k-1 of row r sorted descending, ties in candidate order (a stable
    # sort; NaN ranks above every number, as torch.sort puts it): an insertion list of the k best so far
    R, K = sim.shape
    idx = np.empty(k, np.int64)
    val = np.empty(k, sim.dtype)
    for r in range(R):
        n = 0
        for j in range(K):
            v = sim[r, j]
            if n == k and not (v > val[k - 1] or (v != v and val[k - 1] == val[k - 1])):
                continue  # not above the k-th: a tie keeps the earlier candidate
            if n < k:
                pos = n
                n += 1
            else:
                pos = k - 1
            while pos > 0 and (val[pos - 1] < v or (v != v and val[pos - 1] == val[pos - 1])):
                val[pos] = val[pos - 1]
                idx[pos] = idx[pos - 1]
                pos -= 1
            val[pos] = v
            idx[pos] = j
        for t in range(first, n):
            keep[r, idx[t]] = True


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


def top_rows(sim: Tensor, k: int, first: int = 0) -> Tensor:
    """Boolean mask ``(..., K)`` of the places ``first .. k - 1`` of each row of ``sim`` sorted descending by a
    stable sort (ties in candidate order, NaN first), as ``torch.sort(sim, descending=True, stable=True)``
    gives them; ``k <= K``."""
    K = sim.shape[-1]
    keep = torch.zeros(sim.shape, dtype=torch.bool)
    if sim.numel() and k > first:
        _top_rows_kernel(_np(sim.reshape(-1, K)), int(k), int(first), keep.view(-1, K).numpy())
    return keep


def fill_columns(sim: Tensor, theta: Tensor, key: Tensor, cand: Optional[Tensor], row_of_node: Tensor, crow: Tensor
                 ) -> Tensor:
    """CSR sources of the edges ``S_ij >= theta_i`` (rows of ``sim`` in block order; the targets follow from ``crow``).

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
        ``col``: sources of the edges, in CSR order.
    """
    num_edges = int(crow[-1])
    col = torch.empty(num_edges + 1, dtype=torch.long)  # + the spare slot
    has_cand = cand is not None
    cand_np = _np(cand) if has_cand else np.zeros((1, 1, 1), np.int64)
    _fill_kernel(_np(sim), _np(theta), _np(key), cand_np, has_cand, _np(row_of_node), _np(crow), col.numpy())
    return col[:num_edges]


@_jit
def _fill_rows_kernel(sim, theta, key, cand, has_cand, rows, r0, Q, N, crow, col):  # pragma: no cover - compiled
    B, rc, K = sim.shape
    for b in range(B):
        for i in range(rc):
            node = rows[r0 + i]
            if node < 0:  # padding row of a partial block
                continue
            r = r0 + i
            blk, q = r // Q, r % Q
            t = theta[b, i]
            p = crow[b * N + node]
            for k in range(K):
                s = sim[b, i, k]
                if (s >= t) & (s != -np.inf):  # rows come in block order: no write past a row's end
                    col[p] = key[blk, cand[blk, q, k] if has_cand else k] + b * N
                    p += 1


def fill_rows(sim: Tensor, theta: Tensor, key: Tensor, cand: Optional[Tensor], rows: Tensor, r0: int, crow: Tensor,
              col: Tensor) -> None:
    """:func:`fill_columns` for the similarity rows ``r0 .. r0 + rc`` only (block order), into ``col``.

    Args:
        sim: ``(B, rc, K)`` similarities of those rows, ``-inf`` where ``j`` is not a candidate.
        theta: ``(B, rc)`` their thresholds.
        key, cand: as for :func:`fill_columns`.
        rows: ``(R,)`` node id of every row of an image (``-1`` = padding).
        crow: ``(B * N + 1,)`` row pointers of the whole graph; ``col`` its ``(E,)`` sources.
    """
    has_cand = cand is not None
    cand_np = _np(cand) if has_cand else np.zeros((1, 1, 1), np.int64)
    N = (crow.shape[0] - 1) // sim.shape[0]
    Q = rows.shape[0] // key.shape[0]  # rows per block
    _fill_rows_kernel(_np(sim), _np(theta), _np(key), cand_np, has_cand, _np(rows), int(r0), Q, N, _np(crow),
                      col.numpy())


def rms_gradient(x: Tensor) -> Tensor:
    """RMS-G score ``(B, H, W)`` of a CPU map ``(B, C, H, W)`` (see :func:`gnn_lic.graph.rms_gradient`)."""
    B, C, H, W = x.shape
    score = x.new_empty(B, H, W)
    _sobel_rms_kernel(_np(x), score.numpy())
    return score


def unit_features(x: Tensor, eps: float) -> Tensor:
    """L2-normalised node features ``(B, H*W, C)`` of a CPU map (see :func:`gnn_lic.graph.unit_features`).

    The normalised map is written channel-major into a buffer whose channel
    stride is an odd number of cache lines, then transposed by PyTorch: a
    transposed copy whose source rows are a multiple of 4 KiB apart (e.g.
    ``H*W = 6144`` floats) maps them all to one L1 cache set and runs slowly. A channels-last map
    is already in node order: it is normalised row by row, the same numbers without the transposes.
    """
    B, C, H, W = x.shape
    N = H * W
    if x.is_contiguous(memory_format=torch.channels_last):
        out = x.new_empty(B, N, C)
        rows = x.detach().permute(0, 2, 3, 1).reshape(B, N, C)  # a view of the channels-last memory
        _unit_rows_kernel(rows.numpy(), out.numpy(), out.numpy().dtype.type(eps))
        return out
    line = max(1, 64 // x.element_size())  # elements per cache line
    stride = -(-N // line) * line
    if (stride // line) % 2 == 0:
        stride += line
    buf = x.new_empty(B, C, stride).numpy()
    _unit_kernel(_np(x.reshape(B, C, N)), buf, buf.dtype.type(eps))
    out = x.new_empty(B, N, C)
    out.copy_(torch.from_numpy(buf)[:, :, :N].transpose(1, 2))
    return out


def local_window_similarity(xn: Tensor, size: int, H: int, W: int, row_of_node: Tensor, num_rows: int) -> Tensor:
    """Cosine similarities ``(B, num_rows, K)`` of every node to its :class:`LocalWindow` candidates.

    ``xn`` are the unit features ``(B, H*W, C)``; rows are in the block order
    given by ``row_of_node``, candidates in the window's row-major order
    (``K = min(size, H) * min(size, W)``), as :func:`gnn_lic.graph.row_similarity`
    gives them for ``LocalWindow(size, border="shift")``. Padding rows are 0.
    """
    B, N, _ = xn.shape
    K = min(size, H) * min(size, W)
    out = xn.new_empty(B, num_rows, K) if num_rows == N else xn.new_zeros(B, num_rows, K)
    _local_window_kernel(_np(xn), H, W, size, _np(row_of_node), out.numpy())
    return out
