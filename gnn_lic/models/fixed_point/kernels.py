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


@compiled.jit
def _requantized(acc, off, s, b, has_bias, bound):  # pragma: no cover - compiled
    return _clamp(np.rint((acc + off) * s) + b if has_bias else np.rint((acc + off) * s), bound)


@compiled.jit
def _table_row(row, table):  # pragma: no cover - compiled
    # the table read of a row just written, while it is in the cache (None: a separate compilation, no read);
    # the table's fields are read once per row: read per element, they slowed the whole loop (README, 2026-12-07)
    if table is not None:
        grid, lim, shift, inv_step, identity_above = table
        for j in range(row.shape[0]):
            row[j] = _table_value_c(row[j], grid, lim, shift, inv_step, identity_above)


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
                out[o, j] = _requantized(acc[j - j0, o], off, s, b, has_bias, bound)
            _table_row(out[o, j0:j1], table)


@compiled.jit(parallel=True)
def _combine_rows_loop(g, base, offset, scale, bias, has_bias, bound, table, out):  # pragma: no cover - compiled
    O, P, L = g.shape
    for o in prange(O):  # one output channel per task: its digit sums and its outputs are contiguous rows
        off, s, b = offset[o], scale[o], bias[o]
        row = out[o]
        if P <= 3:  # the usual digit counts, combined in one pass (the same products and sums as below)
            for j in range(L):
                acc = np.float64(g[o, P - 1, j])
                if P >= 2:
                    acc = acc * base + g[o, P - 2, j]
                if P == 3:
                    acc = acc * base + g[o, 0, j]
                row[j] = _requantized(acc, off, s, b, has_bias, bound)
        else:
            for j in range(L):
                row[j] = g[o, P - 1, j]
            for k in range(P - 2, -1, -1):
                for j in range(L):
                    row[j] = row[j] * base + g[o, k, j]
            for j in range(L):
                row[j] = _requantized(row[j], off, s, b, has_bias, bound)
        _table_row(row, table)


def combine_requantize(g: Tensor, offset: Tensor, scale: Tensor, bias: Tensor | None, bound: float,
                       table=None, base: int = 256, outputs_on_rows: bool = False,
                       out: Tensor | None = None) -> Tensor:
    """Scheme w8's output ``(out, L)`` from its digit sums ``g`` ``(p, L, out)`` (int32, least significant
    digit first, one row per output pixel as the integer product gives them; with ``outputs_on_rows``,
    ``(out, p, L)``, one row per output channel as the product of the weights by the columns gives them,
    written into ``out`` ``(out, L)`` if given, a view allowed):
    ``clamp(round((sum_k base^k g_k + offset) * scale) + bias)`` (``base`` 256 for byte digits, 128 for
    seven-bit ones), with per-output ``(out, 1)`` float64
    ``offset``, ``scale`` (powers of two) and ``bias``; the digit sums are combined from the most
    significant down, in float64 (exact, :func:`~gnn_lic.models.fixed_point.int8.check_fan_in`).
    With ``table`` (a :class:`~gnn_lic.models.fixed_point.tables.FixedTable`) the output is then read
    through it (:func:`table_lookup`), in the same pass."""
    if outputs_on_rows:
        O, P, L = g.shape
    else:
        P, L, O = g.shape
    if _use_compiled(g, dtype=torch.int32) and g.is_contiguous() and (out is None or out.stride(-1) == 1):
        out = torch.empty((O, L), dtype=torch.float64) if out is None else out
        b = bias if bias is not None else scale
        compiled.parallel(_combine_rows_loop if outputs_on_rows else _combine_loop, g.numpy(), float(base),
                          offset.reshape(-1).numpy(), scale.reshape(-1).numpy(), b.reshape(-1).numpy(),
                          bias is not None, float(bound), None if table is None else _grid_args(table), out.numpy())
        return out
    digit = (lambda k: g[:, k]) if outputs_on_rows else (lambda k: g[k].t())
    acc = digit(P - 1).to(torch.float64)
    for k in range(P - 2, -1, -1):
        acc = acc.mul_(float(base)).add_(digit(k))
    result = round_bias_clamp_(acc.add_(offset).mul_(scale), bias, bound, table)
    return result if out is None else out.copy_(result)


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


@compiled.jit
def _digits_into(dst, src, mask, sh):  # pragma: no cover - compiled
    # dst[j] = byte digit (shift sh) of src[j] ^ mask: plain range indexes, so the loop vectorises
    for j in range(dst.shape[0]):
        dst[j] = (((np.int64(src[j]) ^ mask) >> sh) & 255 ^ 128) - 128


@compiled.jit
def _copy_into(dst, src):  # pragma: no cover - compiled
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@compiled.jit(parallel=True)
def _digit_rows_loop(x, mask, ph, pw, dy, dx, i0, j0, out):  # pragma: no cover - compiled
    # out[(t, c), k, i, j]: byte digit k of (a ^ mask), a the input of channel c under tap t at output (i0 + i, j0 + j)
    # (i0, j0 may be negative: x is then the part of a map that a band of outputs reads)
    C, H, W = x.shape
    R, P, n, m = out.shape
    digits = np.empty((C, P, H * W), np.int8)  # every input's digits, made once, then copied per tap
    for c in prange(C):
        xc = x[c].reshape(H * W)
        for k in range(P):
            _digits_into(digits[c, k], xc, mask, 8 * k)
    flat = out.reshape(R, P, n * m)
    whole = m == W  # output rows as wide as the input's: each tap's window is one run of the input
    for r in prange(R):
        t, c = r // C, r % C
        d = j0 + dx[t] - pw  # input column = output column + d
        lo = min(m, max(0, -d))  # the outputs whose input lies inside the map: [lo, hi)
        hi = max(lo, min(m, W - d))
        y0 = i0 + dy[t] - ph  # input row of output row 0
        ia, ib = min(n, max(0, -y0)), max(0, min(n, H - y0))  # output rows whose input row is inside the map
        ib = max(ia, ib)
        for k in range(P):
            zero = (((0 ^ mask) >> (8 * k)) & 255 ^ 128) - 128  # the digit of 0, the padding
            dst, src = flat[r, k], digits[c, k]
            dst[: ia * m] = zero
            dst[ib * m :] = zero
            if whole and ia < ib:  # one run from the first to the last output inside, then the edges zeroed
                qa, qb = ia * m + lo, (ib - 1) * m + hi
                start = (y0 + ia) * W + lo + d
                _copy_into(dst[qa:qb], src[start : start + qb - qa])
            for i in range(ia, ib):
                for j in range(lo):  # at most the padding's width: element by element
                    dst[i * m + j] = zero
                for j in range(hi, m):
                    dst[i * m + j] = zero
                if not whole:
                    start = (y0 + i) * W + lo + d
                    _copy_into(dst[i * m + lo : i * m + hi], src[start : start + hi - lo])


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
