"""The fixed-point number format: constants, conversions, re-quantisation, accumulation bounds.

See :mod:`gnn_lic.models.fixed_point` for the representation and why each operation is
deterministic.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from gnn_lic.models.fixed_point import kernels

__all__ = [
    "SCHEME",
    "SCHEME_W8",
    "ACT_FRAC_BITS",
    "ACT_LIMIT",
    "ACT_MAX",
    "ACC_LIMIT",
    "MAX_WEIGHT_FRAC_BITS",
    "MIN_WEIGHT_LEVELS",
    "DTYPE",
    "to_act",
    "from_act",
    "shift",
    "requantize_",
    "choose_frac_bits",
]

#: name of this arithmetic with float64 products (scheme fx16), part of the model identity
#: of the fixed-point streams that use it
SCHEME = "fx16-a14-t8-v1"
#: name of the arithmetic with 8-bit weights and integer products (scheme w8,
#: :mod:`~gnn_lic.models.fixed_point.int8`), which the streams that use it flag
SCHEME_W8 = "fx16-a14-t8-w8a15-v1"
#: fractional bits of every activation
ACT_FRAC_BITS = 16
#: activations are clamped to [-ACT_LIMIT, ACT_LIMIT] (real units)
ACT_LIMIT = 2**14
#: largest |integer| an activation may hold
ACT_MAX = ACT_LIMIT << ACT_FRAC_BITS
#: bound on the absolute sum of one accumulation; below 2**53, so every partial sum is exact
ACC_LIMIT = 2**52
#: weight fractional bits are at most this
MAX_WEIGHT_FRAC_BITS = 24
#: a layer whose largest weight would get fewer integer levels than this is refused
MIN_WEIGHT_LEVELS = 2**10

#: activations, weights and accumulators: integers held in float64
DTYPE = torch.float64


def to_act(x: Tensor) -> Tensor:
    """Float tensor -> fixed-point activation (float64 integers), NaN -> 0, clamped.

    ``x * 2**16`` is exact for float32/float64 input, so the result depends on ``x`` only.
    """
    a = torch.round(x.to(DTYPE) * float(2**ACT_FRAC_BITS))
    return torch.nan_to_num(a, nan=0.0).clamp_(-ACT_MAX, ACT_MAX)


def from_act(a: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed-point activation -> float tensor (``a * 2**-16``, one correctly rounded cast)."""
    return (a * 2.0**-ACT_FRAC_BITS).to(dtype)


def shift(x: Tensor, bits: int) -> Tensor:
    """``x * 2**bits``: exact, a product with a power of two (a Python float, itself exact).

    ``torch.ldexp`` is not used: it multiplies by ``pow(2, bits)``, whose accuracy is the
    math library's.
    """
    return x * (2.0**bits)


def requantize_(acc: Tensor) -> Tensor:
    r"""Round (half to even) and clamp to the activation range, in place.

    ``acc`` is an accumulator already scaled to activation units: a layer multiplies its
    integer weights and bias by :math:`2^{-F_w}` once, at conversion (exact, a power of
    two), so every product and partial sum is the integer one times :math:`2^{-F_w}`,
    still exact, and ``round(acc)`` is the re-quantisation
    :math:`\mathrm{round}(2^{-F_w}(b + \sum_i w_i a_i))` without a separate scaling pass.
    """
    return kernels.round_clamp_(acc, ACT_MAX)


def choose_frac_bits(w: Tensor, b: Tensor | None, what: str) -> Tuple[int, int]:
    r"""Weight fractional bits and input clamp of one layer, for exact accumulation.

    The largest weight fractional bits (at most :data:`MAX_WEIGHT_FRAC_BITS`) whose
    accumulation bound ``sum_i |w_i| * in_max + |b|`` stays within :data:`ACC_LIMIT`,
    with the input clamp ``in_max`` = :data:`ACT_MAX`; a layer with a large fan-in whose
    weights would then keep fewer than :data:`MIN_WEIGHT_LEVELS` levels clamps its own
    input to a smaller power of two instead (down to 2^-6 of the activation range).
    ``w`` is ``(out, fan_in)`` float64; the bound is checked on the rounded integers.

    The weights are rounded only where the bound is in doubt: since
    :math:`|y| - 1/2 \le |\mathrm{round}(y)| \le |y| + 1/2`, the bound lies between
    :math:`A'\,(2^{F_w}\sum_i |w_i| \mp n/2) + 2^{F_w + 16}|b| \mp 1/2` per output. Where the
    lower end (with a relative margin far above its float error) exceeds the limit, the rounded
    check fails too; where the upper end stays within it, it passes, and the largest rounded
    weight is the rounded largest weight (rounding is monotone). The result is the one of
    checking every value from the top.
    """
    n = w.shape[1]
    w_abs = w.abs()
    w_sum, w_max = w_abs.sum(1), float(w_abs.max())
    b_abs = b.abs() if b is not None else torch.zeros_like(w_sum)
    rounded = None  # |round(w 2^bits)| = round(|w| 2^bits), made only where the bound is in doubt
    for drop in range(0, 7):
        in_max = ACT_MAX >> drop
        for bits in range(MAX_WEIGHT_FRAC_BITS, -1, -1):
            low = in_max * (shift(w_sum, bits) - n / 2).clamp(min=0) + (shift(b_abs, bits + ACT_FRAC_BITS) - 0.5).clamp(min=0)
            if float(low.max()) * (1 - 2**-30) > ACC_LIMIT:
                continue
            high = in_max * (shift(w_sum, bits) + n / 2) + shift(b_abs, bits + ACT_FRAC_BITS) + 0.5
            if float(high.max()) * (1 + 2**-30) <= ACC_LIMIT:
                levels = round(w_max * 2.0**bits)  # exact product; Python's round is half to even
            else:
                rounded = torch.mul(w_abs, 2.0**bits, out=rounded).round_()
                bound = rounded.sum(1) * in_max
                if b is not None:
                    bound = bound + torch.round(shift(b, bits + ACT_FRAC_BITS)).abs()
                if float(bound.max()) > ACC_LIMIT:
                    continue
                levels = float(rounded.max())
            if levels == 0 or levels >= MIN_WEIGHT_LEVELS:
                return bits, in_max
            break
    raise ValueError(f"{what}: weights too large for exact fixed-point accumulation; lower ACT_LIMIT")
