r"""Compiled elementwise passes of the fixed-point networks: the same numbers in fewer sweeps.

After a product, a fixed-point layer rounds and clamps its accumulators
(:func:`round_clamp_`), a GELU or tanh reads its table (:func:`table_lookup`) and the
gated FFN multiplies ``GELU(a)`` by ``b`` and re-quantises (:func:`table_gate`). In
PyTorch each is two to six sweeps over a map (bounds, an integer index, a gather, each
product and rounding a pass of its own); on a CPU these sweeps, not the products, are
most of what the fixed-point path costs beyond the float one. Here each is one parallel
loop (numba) that applies the very same IEEE operations in the same order to each
element: ``rint`` (round half to even, as ``torch.round``), comparisons, a table read and
correctly rounded products. No element depends on another, so neither the thread count
nor the split of the loop changes a bit; the PyTorch path, used where the loops are
switched off (``GNN_LIC_NUMBA=0``, :mod:`gnn_lic.compiled`), on other devices, for
other dtypes or small maps, gives identical results (tested).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import prange
from torch import Tensor

from gnn_lic import compiled

__all__ = ["round_clamp_", "round_bias_clamp_", "table_lookup", "table_gate", "combine_requantize", "layer_norm"]

#: maps with fewer elements than this take the PyTorch path (starting the loop's threads costs more)
MIN_ELEMENTS = 1 << 14


def _use_compiled(*tensors: Tensor, dtype: torch.dtype = torch.float64) -> bool:
    return (compiled.enabled() and tensors[0].numel() >= MIN_ELEMENTS
            and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors))


@compiled.jit
def _clamp(v, bound):  # pragma: no cover - compiled
    # comparisons only, as torch.clamp: a NaN passes through
    if v > bound:
        return bound
    if v < -bound:
        return -bound
    return v


@compiled.jit(parallel=True)
def _round_clamp_loop(x, bound):  # pragma: no cover - compiled
    for i in prange(x.shape[0]):
        x[i] = _clamp(np.rint(x[i]), bound)


def _table_value(a, grid, lim, shift, inv_step, identity_above):  # pragma: no cover - compiled
    if a > lim:  # beyond the table: GELU continues as x, tanh as its last value
        return a if identity_above else grid[grid.shape[0] - 1]
    if a >= -lim:  # linear interpolation on the coarse grid, exactly as dense_table computes it
        half = (grid.shape[0] - 1) // 2
        ia = np.int64(a)
        pos = min(ia >> shift, half - 1)  # the left grid point (floor), the last interval closed
        frac = ia - (pos << shift)
        lo = grid[pos + half]
        return np.rint(lo + ((grid[pos + half + 1] - lo) * frac) * inv_step)
    if a < -lim:
        return grid[0]
    return a  # NaN (never an activation): passed on, not read as an index


_table_value_c = compiled.jit(_table_value)


@compiled.jit(parallel=True)
def _table_loop(x, grid, lim, shift, inv_step, identity_above, out):  # pragma: no cover - compiled
    for r in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[r, j] = _table_value_c(x[r, j], grid, lim, shift, inv_step, identity_above)


@compiled.jit(parallel=True)
def _table_gate_loop(a, b, grid, lim, shift, inv_step, identity_above, scale, bound, out):  # pragma: no cover
    B, C, L = out.shape
    for r in prange(B * C):
        i, c = r // C, r % C
        for j in range(L):
            g = _table_value_c(a[i, c, j], grid, lim, shift, inv_step, identity_above)
            out[i, c, j] = _clamp(np.rint((g * b[i, c, j]) * scale), bound)


def round_clamp_(x: Tensor, bound: float) -> Tensor:
    """``x.round_().clamp_(-bound, bound)`` (round half to even), in place."""
    if _use_compiled(x) and x.is_contiguous():
        compiled.parallel(_round_clamp_loop, x.view(-1).numpy(), float(bound))
        return x
    return x.round_().clamp_(-bound, bound)


def _torch_table(x: Tensor, table: Tensor, lim: int, identity_above: bool) -> Tensor:
    lo, hi = torch.aminmax(x)
    if float(lo) >= -lim and float(hi) <= lim:  # the usual case: no clamp, no tail
        i = x.to(torch.int32).add_(lim)  # integers 0 .. 2 lim, exact
        return table.index_select(0, i.reshape(-1)).reshape(x.shape)
    i = torch.clamp(x, -lim, lim).add_(lim).to(torch.int32)
    y = table.index_select(0, i.reshape(-1)).reshape(x.shape)
    return torch.where(x > lim, x, y) if identity_above else y


def _grid_args(table):
    """The compiled loops' view of a table: its coarse grid, limit, interpolation step, tail."""
    return table.grid.numpy(), int(table.limit), int(table.step_bits), 2.0**-table.step_bits, bool(table.identity_above)


def table_lookup(x: Tensor, table) -> Tensor:
    """``table.dense[x + lim]`` for integer-valued ``x`` (float64) in ``[-lim, lim]`` (``lim = table.limit``);
    below, its first value; above, ``x`` itself (``table.identity_above``, GELU) or its last value (tanh).

    ``table`` (a :class:`~gnn_lic.models.fixed_point.tables.FixedTable`) holds the values on
    every integer (``dense``, ``2 lim + 1``) and the coarse grid they interpolate (``grid``,
    every ``2^step_bits``); the compiled loop interpolates the coarse grid itself, with the
    operations that made ``dense`` (:func:`~gnn_lic.models.fixed_point.tables.dense_table`),
    and so reads a table that stays in the cache.
    """
    if x.numel() == 0:
        return x.clone()
    if _use_compiled(x, table.dense):
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        flat = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x.reshape(1, -1)
        compiled.parallel(_table_loop, flat.numpy(), *_grid_args(table), out.view(flat.shape).numpy())
        return out
    return _torch_table(x, table.dense, table.limit, table.identity_above)


def table_gate(a: Tensor, b: Tensor, table, scale: float, bound: float) -> Tensor:
    """``round_clamp_(table_lookup(a, table) * b * scale, bound)`` for ``(B, C, L)`` maps ``a`` and ``b``
    (views allowed): one product, one product by ``scale`` (a power of two), one rounding."""
    if a.numel() and _use_compiled(a, b, table.dense):
        out = a.new_empty(a.shape)
        compiled.parallel(_table_gate_loop, a.numpy(), b.numpy(), *_grid_args(table), float(scale), float(bound),
                          out.numpy())
        return out
    g = _torch_table(a, table.dense, table.limit, table.identity_above) if a.numel() else a.clone()
    return g.mul_(b).mul_(scale).round_().clamp_(-bound, bound)


@compiled.jit(parallel=True)
def _combine_loop(g, base, offset, scale, bias, has_bias, bound, table, out):  # pragma: no cover - compiled
    P, L, O = g.shape
    block = 16  # output pixels per task: their sums are read row by row and written out per channel
    for t in prange((L + block - 1) // block):
        j0 = t * block
        j1 = min(j0 + block, L)
        acc = np.empty((j1 - j0, O))
        for j in range(j0, j1):
            for o in range(O):
                acc[j - j0, o] = g[P - 1, j, o]
            for k in range(P - 2, -1, -1):
                for o in range(O):
                    acc[j - j0, o] = acc[j - j0, o] * base + g[k, j, o]
        for o in range(O):
            off, s, b = offset[o], scale[o], bias[o]
            for j in range(j0, j1):
                v = np.rint((acc[j - j0, o] + off) * s)
                v = _clamp(v + b if has_bias else v, bound)
                if table is not None:  # a table read in the same pass (None: a separate compilation without it)
                    grid, lim, shift, inv_step, identity_above = table
                    v = _table_value_c(v, grid, lim, shift, inv_step, identity_above)
                out[o, j] = v


def combine_requantize(g: Tensor, offset: Tensor, scale: Tensor, bias: Tensor | None, bound: float,
                       table=None, base: int = 256) -> Tensor:
    """Scheme w8's output ``(out, L)`` from its digit sums ``g`` ``(p, L, out)`` (int32, least significant
    digit first, one row per output pixel as the integer product gives them):
    ``clamp(round((sum_k base^k g_k + offset) * scale) + bias)`` (``base`` 256 for byte digits, 128 for
    seven-bit ones), with per-output ``(out, 1)`` float64
    ``offset``, ``scale`` (powers of two) and ``bias``; the digit sums are combined from the most
    significant down, in float64 (exact, :func:`~gnn_lic.models.fixed_point.int8.check_fan_in`).
    With ``table`` (a :class:`~gnn_lic.models.fixed_point.tables.FixedTable`) the output is then read
    through it (:func:`table_lookup`), in the same pass."""
    P, L, O = g.shape
    if _use_compiled(g, dtype=torch.int32) and g.is_contiguous():
        out = torch.empty((O, L), dtype=torch.float64)
        b = bias if bias is not None else scale
        compiled.parallel(_combine_loop, g.numpy(), float(base), offset.reshape(-1).numpy(),
                          scale.reshape(-1).numpy(),
                          b.reshape(-1).numpy(), bias is not None, float(bound),
                          None if table is None else _grid_args(table), out.numpy())
        return out
    acc = g[-1].t().to(torch.float64)
    for k in range(P - 2, -1, -1):
        acc = acc.mul_(float(base)).add_(g[k].t())
    return round_bias_clamp_(acc.add_(offset).mul_(scale), bias, bound, table)


def round_bias_clamp_(acc: Tensor, bias: Tensor | None, bound: float, table=None) -> Tensor:
    """Scheme w8's output from sums already scaled to activation units: ``clamp(round(acc) + bias)``
    (round half to even, in place; ``bias`` broadcast against ``acc``), then read through ``table``
    (:func:`table_lookup`) if given. The bias is added after rounding, so it is an integer."""
    acc = acc.round_()
    if bias is not None:
        acc += bias
    acc = acc.clamp_(-bound, bound)
    return acc if table is None else table_lookup(acc, table)


@compiled.jit(parallel=True)
def _digit_columns_loop(x, planes, mask, add, bits, signed, ph, pw, dy, dx, padded, out):  # pragma: no cover
    # digit k of an input a: the bits [k bits, (k + 1) bits) of (a ^ mask) + add, read as a signed byte if signed
    C, H, W = x.shape
    _, Hp, Wp, _ = padded.shape
    _, Ho, Wo, T, _ = out.shape
    low = (1 << bits) - 1
    zero = np.empty(planes, np.int64)  # the digits of 0, the padding
    for k in range(planes):
        b = ((mask + add) >> (bits * k)) & low
        zero[k] = b - 256 if signed and b >= 128 else b
    for i in prange(Hp):  # the padded map's digits, channels last: (planes, Hp, Wp, C)
        for j in range(Wp):
            for k in range(planes):
                padded[k, i, j, :] = zero[k]
        y = i - ph
        if 0 <= y < H:
            for c in range(C):
                for xs in range(W):
                    v = (np.int64(x[c, y, xs]) ^ mask) + add
                    for k in range(planes):
                        b = (v >> (bits * k)) & low
                        padded[k, i, xs + pw, c] = b - 256 if signed and b >= 128 else b
    for r in prange(planes * Ho):  # each tap's window, a copy of C digits per output pixel
        k, i = r // Ho, r % Ho
        for j in range(Wo):
            for t in range(T):
                src = padded[k, i + dy[t], j + dx[t]]
                dst = out[k, i, j, t]
                for c in range(C):
                    dst[c] = src[c]


@compiled.jit(parallel=True)
def _layer_norm_loop(x, C, var_bits, scale, c3, eps, weight, bias, bound, out):  # pragma: no cover - compiled
    B, _, L = x.shape
    block = 64
    nblk = (L + block - 1) // block
    for t in prange(B * nblk):
        b, j0 = t // nblk, (t % nblk) * block
        j1 = min(j0 + block, L)
        n = j1 - j0
        s = np.zeros(n)
        m = np.zeros(n)
        v = np.zeros(n)
        for c in range(C):
            for j in range(n):
                s[j] += x[b, c, j0 + j]
        for c in range(C):
            for j in range(n):
                m[j] = max(m[j], abs(x[b, c, j0 + j] * C - s[j]))
        inv = np.empty(n)
        pw = np.empty(n)
        for j in range(n):
            k = max(math.frexp(m[j])[1] - var_bits, 0)
            inv[j] = math.ldexp(1.0, -k)
            pw[j] = math.ldexp(1.0, k)
        for c in range(C):
            for j in range(n):
                q = np.rint((x[b, c, j0 + j] * C - s[j]) * inv[j])
                v[j] += q * q
        rc = np.empty(n)
        for j in range(n):
            var = (((v[j] * pw[j]) * pw[j]) * scale) / c3
            rc[j] = np.sqrt(var + eps) * C
        for c in range(C):
            w, bc = weight[c], bias[c]
            for j in range(n):
                out[b, c, j0 + j] = _clamp(np.rint(bc + np.rint((x[b, c, j0 + j] * C - s[j]) / rc[j]) * w), bound)


def layer_norm(x: Tensor, var_bits: int, eps: float, weight: Tensor, bias: Tensor, bound: float) -> Tensor | None:
    """:class:`~gnn_lic.models.fixed_point.blocks.FixedLayerNorm` of a ``(B, C, H, W)`` map in one compiled
    loop (the same operations per pixel, see there), or ``None`` where the loops do not apply."""
    if not (_use_compiled(x) and x.is_contiguous()):
        return None
    B, C, H, W = x.shape
    out = torch.empty_like(x)
    compiled.parallel(_layer_norm_loop, x.view(B, C, H * W).numpy(), C, int(var_bits), 2.0**-32, float(C**3),
                      float(eps), weight.reshape(-1).numpy(), bias.reshape(-1).numpy(), float(bound),
                      out.view(B, C, H * W).numpy())
    return out
