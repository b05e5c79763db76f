"""GELU and tanh in fixed point: tables computed in software decimal arithmetic.

The values on a :math:`2^{-8}` grid over :math:`[-8, 8]` are computed once with Python's
:mod:`decimal` (``exp`` correctly rounded, 60 digits) and rounded to the :math:`2^{-16}`
grid; between grid points the table is read with exact linear interpolation, expanded
once to every point of the :math:`2^{-16}` grid (:func:`dense_table`). Nothing depends on
a math library, so the values are the same on every machine.
"""

from __future__ import annotations

import decimal
import functools
from typing import Callable, List, Sequence, Tuple

import torch
from torch import Tensor

from gnn_lic.models.fixed_point import kernels
from gnn_lic.models.fixed_point.arith import ACT_FRAC_BITS, DTYPE, shift

__all__ = ["TABLE_FRAC_BITS", "TABLE_RANGE", "gelu_table", "tanh_table", "dense_table", "FixedTable"]

#: table grid: 2**-TABLE_FRAC_BITS over [-TABLE_RANGE, TABLE_RANGE]
TABLE_FRAC_BITS = 8
TABLE_RANGE = 8


def _decimal_gelu(x: decimal.Decimal) -> decimal.Decimal:
    """GELU(x) = x Phi(x) with erf from its Taylor series (x >= 0, |x| <= 8)."""
    t = x / decimal.Decimal(2).sqrt()
    t2, term, total, n = t * t, t, decimal.Decimal(0), 0
    eps = decimal.Decimal(10) ** -45
    while True:
        c = term / (2 * n + 1)
        total += c
        if abs(c) < eps:
            break
        n += 1
        term = -term * t2 / n
    erf = 2 * total / _decimal_pi().sqrt()
    return x * (1 + erf) / 2


def _decimal_pi() -> decimal.Decimal:
    return decimal.Decimal("3.14159265358979323846264338327950288419716939937510582097494459")


def _decimal_tanh(x: decimal.Decimal) -> decimal.Decimal:
    return 1 - 2 / ((2 * x).exp() + 1)


def _build_table(fn: Callable[[decimal.Decimal], decimal.Decimal], odd: bool) -> List[int]:
    """Values (integers, units 2**-16) of ``fn`` on the grid k 2**-8, k = -2048..2048."""
    n = TABLE_RANGE << TABLE_FRAC_BITS
    with decimal.localcontext(decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)):
        scale = decimal.Decimal(2) ** ACT_FRAC_BITS
        pos = []
        for k in range(n + 1):
            x = decimal.Decimal(k) / (1 << TABLE_FRAC_BITS)
            pos.append(int((fn(x) * scale).to_integral_value()))
        # GELU(-x) = GELU(x) - x; tanh(-x) = -tanh(x), exactly, before rounding
        neg = [-v for v in pos[1:]] if odd else [v - (k << (ACT_FRAC_BITS - TABLE_FRAC_BITS)) for k, v in enumerate(pos[1:], 1)]
    return neg[::-1] + pos


@functools.lru_cache(maxsize=None)
def gelu_table() -> Tuple[int, ...]:
    """GELU (exact erf form) on the table grid, integers in units of 2**-16."""
    return tuple(_build_table(_decimal_gelu, odd=False))


@functools.lru_cache(maxsize=None)
def tanh_table() -> Tuple[int, ...]:
    """tanh on the table grid, integers in units of 2**-16."""
    return tuple(_build_table(_decimal_tanh, odd=True))


@functools.lru_cache(maxsize=None)
def dense_table(table: Tuple[int, ...], device: str = "cpu") -> Tensor:
    """The interpolated table at every point of the 2**-16 grid in [-8, 8] (2**20 + 1 values).

    Linear interpolation between the 2**-8 grid points, each value computed with exact
    integer arithmetic then rounded once (half to even): the table is the same everywhere.
    One copy per table and device, shared by every layer that reads it.
    """
    step = ACT_FRAC_BITS - TABLE_FRAC_BITS
    t = torch.tensor(table, dtype=DTYPE)
    x = torch.arange(-(TABLE_RANGE << ACT_FRAC_BITS), (TABLE_RANGE << ACT_FRAC_BITS) + 1, dtype=DTYPE)
    half = TABLE_RANGE << TABLE_FRAC_BITS
    pos = torch.floor(shift(x, -step)).clamp_(-half, half - 1)  # left grid point, exact
    frac = x - shift(pos, step)  # 0 .. 2**step (the top end only at x = 8), exact
    i = (pos + half).long()
    lo, hi = t[i], t[i + 1]
    return torch.round(lo + shift((hi - lo) * frac, -step)).to(device)


class FixedTable:
    """A scalar function from a table, linear interpolation between grid points.

    Outside ``[-8, 8]`` GELU continues as ``0`` / ``x`` and tanh as ``-1`` / ``1``, values
    the tables already hold at their ends (to the 2**-16 grid). ``dense`` holds the value
    at every activation in ``[-limit, limit]`` (:func:`dense_table`), ``grid`` the values
    it interpolates, one every ``2**step_bits`` activations
    (:func:`~gnn_lic.models.fixed_point.kernels.table_lookup` reads either, with the same result).
    """

    #: activations between two grid points of the table, as a power of two
    step_bits = ACT_FRAC_BITS - TABLE_FRAC_BITS
    #: largest |activation| the table holds (8 in units of 2**-16)
    limit = TABLE_RANGE << ACT_FRAC_BITS

    def __init__(self, table: Sequence[int], kind: str):
        if kind not in ("gelu", "tanh"):
            raise ValueError(f"unknown table kind {kind!r}")
        self.kind = kind
        self.identity_above = kind == "gelu"
        self._values = tuple(table)
        self.to("cpu")

    def to(self, device: torch.device) -> "FixedTable":
        self.dense = dense_table(self._values, str(torch.device(device)))
        self.grid = torch.tensor(self._values, dtype=DTYPE, device=device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return kernels.table_lookup(x, self)
