r"""Fixed-point evaluation of the entropy-parameter networks: bit-identical on any machine.

A range decoder only stays in sync with its encoder when both derive the very same CDF
index and mean for every symbol. Float networks do not guarantee that: a different thread
count, BLAS kernel, SIMD width or device changes the summation order, a mean or scale moves
by one ulp, and a scale that sits on a table boundary picks another CDF. JPEG AI avoids
this with integer arithmetic in every network that feeds the entropy coder; Koyuncu et
al., "Device interoperability for learned image compression with weights and activations
quantization" (ICASSP 2024), do the same for a hyperprior codec. This module does it for
the networks of GLIC's SCCTX and GABIC's channel-slice model.

Representation
--------------
An activation is an integer :math:`a` standing for :math:`a\,2^{-F}` with
:data:`ACT_FRAC_BITS` :math:`F = 16`, held in a float64 tensor and clamped to
:math:`|a| \le A = 2^{F}\cdot` :data:`ACT_LIMIT`. A layer's weights are integers
:math:`w` standing for :math:`w\,2^{-F_w}`; its bias is an integer in units of
:math:`2^{-(F + F_w)}`. A convolution accumulates exact integer products and is
re-quantised once:

.. math::
    o = \mathrm{clamp}\Big(\mathrm{round}\big(2^{-F_w}\,(b + \textstyle\sum_i w_i a_i)\big), -A, A\Big).

:math:`F_w` is chosen per layer, at conversion, as the largest value (at most
:data:`MAX_WEIGHT_FRAC_BITS`) for which every output's bound
:math:`|b| + A\sum_i |w_i| \le 2^{52}` holds. Every partial sum, in any order, is then
an integer below :math:`2^{53}` and therefore exact in float64: the result does not
depend on the summation order, so not on threads, BLAS, SIMD width or device.

Only three kinds of operation occur, and each is deterministic:

* reductions (convolutions as ``unfold`` + matrix product, channel sums of the layer
  norm) over integers whose absolute sum is bounded below :math:`2^{53}`: exact;
* single elementwise IEEE-754 operations (``+ - * /``, ``sqrt``, ``round``, ``frexp``,
  comparisons): correctly rounded, hence identical on every conforming machine. No fused
  operation (``addcmul``, ``alpha=``) is used, so no FMA contraction can differ;
* GELU and tanh: tables of their values on a :math:`2^{-8}` grid over
  :math:`[-8, 8]`, computed once with Python's :mod:`decimal` (software arithmetic,
  ``exp`` correctly rounded), read with exact linear interpolation.

The networks are converted from the trained float modules (:func:`to_fixed`) when a
latent codec first compresses or decompresses, and again whenever a parameter changes (the
conversion is itself exact, so it gives the same integers everywhere): every checkpoint,
the shipped weights included, gains the property; :data:`SCHEME` names this arithmetic in the model
identity, since changing it changes the decoded symbols.
"""

from __future__ import annotations

import decimal
import functools
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from compressai.layers import CheckerboardMaskedConv2d
from torch import Tensor, nn

__all__ = [
    "SCHEME",
    "ACT_FRAC_BITS",
    "ACT_LIMIT",
    "ACC_LIMIT",
    "to_act",
    "from_act",
    "FixedConv2d",
    "FixedLayerNorm",
    "FixedTable",
    "FixedLeakyReLU",
    "FixedSequential",
    "to_fixed",
    "gelu_table",
    "tanh_table",
]

#: name of this arithmetic, part of the model identity of fixed-point streams
SCHEME = "fx16-a14-t8-v1"
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
#: table grid: 2**-TABLE_FRAC_BITS over [-TABLE_RANGE, TABLE_RANGE]
TABLE_FRAC_BITS = 8
TABLE_RANGE = 8

_DTYPE = torch.float64


def to_act(x: Tensor) -> Tensor:
    """Float tensor -> fixed-point activation (float64 integers), NaN -> 0, clamped.

    ``x * 2**16`` is exact for float32/float64 input, so the result depends on ``x`` only.
    """
    a = torch.round(x.to(_DTYPE) * float(2**ACT_FRAC_BITS))
    return torch.nan_to_num(a, nan=0.0).clamp_(-ACT_MAX, ACT_MAX)


def from_act(a: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Fixed-point activation -> float tensor (``a * 2**-16``, one correctly rounded cast)."""
    return (a * 2.0**-ACT_FRAC_BITS).to(dtype)


def _shift(x: Tensor, bits: int) -> Tensor:
    """``x * 2**bits``: exact, a product with a power of two (a Python float, itself exact).

    ``torch.ldexp`` is not used: it multiplies by ``pow(2, bits)``, whose accuracy is the
    math library's.
    """
    return x * (2.0**bits)


#: exact powers of two 2**0 .. 2**1023, indexed by a per-element shift
_POW2 = torch.tensor([2.0**k for k in range(1024)], dtype=_DTYPE)


def _requantize(acc: Tensor, frac_bits: int) -> Tensor:
    """Drop ``frac_bits`` fractional bits (round half to even) and clamp, in place on ``acc``."""
    return acc.mul_(2.0**-frac_bits).round_().clamp_(-ACT_MAX, ACT_MAX)


def _choose_frac_bits(w: Tensor, b: Tensor | None, what: str) -> Tuple[int, int]:
    """Weight fractional bits and input clamp of one layer, for exact accumulation.

    The largest weight fractional bits (at most :data:`MAX_WEIGHT_FRAC_BITS`) whose
    accumulation bound ``sum_i |w_i| * in_max + |b|`` stays within :data:`ACC_LIMIT`,
    with the input clamp ``in_max`` = :data:`ACT_MAX`; a layer with a large fan-in whose
    weights would then keep fewer than :data:`MIN_WEIGHT_LEVELS` levels clamps its own
    input to a smaller power of two instead (down to 2^-6 of the activation range).
    ``w`` is ``(out, fan_in)`` float64; the bound is checked on the rounded integers.
    """
    for drop in range(0, 7):
        in_max = ACT_MAX >> drop
        for bits in range(MAX_WEIGHT_FRAC_BITS, -1, -1):
            wi = torch.round(_shift(w, bits))
            bound = wi.abs().sum(1) * in_max
            if b is not None:
                bound = bound + torch.round(_shift(b, bits + ACT_FRAC_BITS)).abs()
            if float(bound.max()) <= ACC_LIMIT:
                levels = float(wi.abs().max())
                if levels == 0 or levels >= MIN_WEIGHT_LEVELS:
                    return bits, in_max
                break
    raise ValueError(f"{what}: weights too large for exact fixed-point accumulation; lower ACT_LIMIT")


class FixedConv2d:
    """A :class:`torch.nn.Conv2d` (groups 1 or depthwise, zero padding) in fixed point.

    Computed as ``unfold`` + matrix product (or product + sum for depthwise), never
    through a convolution algorithm that could transform the operands (FFT, Winograd).
    """

    def __init__(self, conv: nn.Conv2d, name: str = "conv"):
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise TypeError(f"{name}: only numeric zero padding is supported")
        if tuple(conv.dilation) != (1, 1):
            raise TypeError(f"{name}: dilation is not supported")
        self.groups = conv.groups
        self.depthwise = conv.groups > 1
        if self.depthwise and not (conv.groups == conv.in_channels == conv.out_channels):
            raise TypeError(f"{name}: only groups=1 or depthwise convolutions are supported")
        w = conv.weight.detach().to("cpu", _DTYPE)
        if isinstance(conv, CheckerboardMaskedConv2d):
            w = w * conv.mask.detach().to("cpu", _DTYPE)
        self.out_channels, self.in_channels = conv.out_channels, conv.in_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = tuple(conv.padding)
        b = conv.bias.detach().to("cpu", _DTYPE) if conv.bias is not None else None
        flat = w.reshape(w.shape[0], -1)
        self.frac_bits, self.in_max = _choose_frac_bits(flat, b, name)
        self.weight = torch.round(_shift(flat, self.frac_bits))  # (out, in/groups * kh * kw)
        self.bias = None if b is None else torch.round(_shift(b, self.frac_bits + ACT_FRAC_BITS))
        self.pointwise = self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def to(self, device: torch.device) -> "FixedConv2d":
        self.weight = self.weight.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"expected {self.in_channels} channels, got {C}")
        if self.in_max < ACT_MAX:  # a large fan-in: this layer's own, smaller input range
            x = x.clamp(-self.in_max, self.in_max)
        if self.pointwise:
            acc = torch.matmul(self.weight, x.reshape(B, C, H * W))
            Ho, Wo = H, W
        else:
            (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
            Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
            cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)  # (B, C*k, L)
            if self.depthwise:
                cols = cols.reshape(B, C, kh * kw, Ho * Wo)
                acc = (cols * self.weight.reshape(1, C, kh * kw, 1)).sum(2)
            else:
                acc = torch.matmul(self.weight, cols)
        if self.bias is not None:
            acc += self.bias.reshape(1, -1, 1)
        return _requantize(acc, self.frac_bits).reshape(B, self.out_channels, Ho, Wo)


class FixedLayerNorm:
    r"""Layer norm over the channels of every pixel (:class:`gnn_lic.nn.blocks.LayerNorm2d`).

    With :math:`S = \sum_c a_c` (exact), :math:`d_c = C a_c - S = C\,2^{F}(x_c - \mu)`
    (exact), the variance sums :math:`d_c` rounded to their top 21 bits (a per-pixel
    power-of-two shift from ``frexp`` of the exact maximum, so :math:`C\,2^{42} < 2^{53}`)
    and the output is :math:`\mathrm{round}(d_c / (C\sqrt{\sigma^2 + \epsilon}))`
    followed by the affine map; every step is exact or one correctly rounded operation.
    """

    _VAR_BITS = 21

    def __init__(self, norm: nn.Module, name: str = "norm"):
        C = norm.weight.numel()
        if C > 2**11:
            raise ValueError(f"{name}: {C} channels exceed the exact-variance bound (2048)")
        self.channels = C
        self.eps = float(norm.eps)
        g = norm.weight.detach().to("cpu", _DTYPE)
        b = norm.bias.detach().to("cpu", _DTYPE)
        # normalised values are below sqrt(C) in magnitude: keep products under 2**52
        bits = MAX_WEIGHT_FRAC_BITS
        while bits > 0 and float(torch.round(_shift(g, bits)).abs().max()) * (C**0.5 + 1) * 2**ACT_FRAC_BITS > ACC_LIMIT:
            bits -= 1
        self.frac_bits = bits
        self.weight = torch.round(_shift(g, bits)).reshape(1, C, 1, 1)
        self.bias = torch.round(_shift(b, bits + ACT_FRAC_BITS)).reshape(1, C, 1, 1)
        self._pow2 = _POW2[:64]

    def to(self, device: torch.device) -> "FixedLayerNorm":
        self.weight, self.bias, self._pow2 = self.weight.to(device), self.bias.to(device), self._pow2.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        C = self.channels
        s = x.sum(1, keepdim=True)
        d = x * C - s
        _, e = torch.frexp(d.abs().amax(1, keepdim=True))
        shift = (e.long() - self._VAR_BITS).clamp_(min=0)
        pow2 = self._pow2[shift]
        dq = torch.round(d / pow2)
        v = (dq * dq).sum(1, keepdim=True)
        var = _shift(v * pow2 * pow2, -2 * ACT_FRAC_BITS) / float(C**3)
        r = torch.sqrt(var + self.eps)
        n = torch.round(d / (r * float(C)))
        return _requantize(n * self.weight + self.bias, self.frac_bits)


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


class FixedTable:
    """A scalar function from a table, linear interpolation between grid points.

    Outside ``[-8, 8]`` GELU continues as ``0`` / ``x`` and tanh as ``-1`` / ``1``, values
    the tables already hold at their ends (to the 2**-16 grid).
    """

    def __init__(self, table: Sequence[int], kind: str):
        if kind not in ("gelu", "tanh"):
            raise ValueError(f"unknown table kind {kind!r}")
        self.kind = kind
        self.table = _dense_table(tuple(table))

    def to(self, device: torch.device) -> "FixedTable":
        self.table = self.table.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        lim = float(TABLE_RANGE << ACT_FRAC_BITS)
        i = (x + lim).clamp_(0, 2 * lim).long().reshape(-1)
        y = self.table.index_select(0, i).reshape(x.shape)
        if self.kind == "gelu":
            y += (x - lim).clamp_(min=0)  # GELU(x) = x beyond 8 (to the grid)
        return y


@functools.lru_cache(maxsize=None)
def _dense_table(table: Tuple[int, ...]) -> Tensor:
    """The interpolated table at every point of the 2**-16 grid in [-8, 8] (2**20 + 1 values).

    Linear interpolation between the 2**-8 grid points, each value computed with exact
    integer arithmetic then rounded once (half to even): the table is the same everywhere.
    """
    step = ACT_FRAC_BITS - TABLE_FRAC_BITS
    t = torch.tensor(table, dtype=_DTYPE)
    x = torch.arange(-(TABLE_RANGE << ACT_FRAC_BITS), (TABLE_RANGE << ACT_FRAC_BITS) + 1, dtype=_DTYPE)
    half = TABLE_RANGE << TABLE_FRAC_BITS
    pos = torch.floor(_shift(x, -step)).clamp_(-half, half - 1)  # left grid point, exact
    frac = x - _shift(pos, step)  # 0 .. 2**step (the top end only at x = 8), exact
    i = (pos + half).long()
    lo, hi = t[i], t[i + 1]
    return torch.round(lo + _shift((hi - lo) * frac, -step))


class FixedLeakyReLU:
    """LeakyReLU with the slope rounded to 2**-20 and the product rounded to the grid."""

    _BITS = 20

    def __init__(self, slope: float):
        self.slope = float(round(slope * 2**self._BITS))

    def to(self, device: torch.device) -> "FixedLeakyReLU":
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, torch.round(_shift(x * self.slope, -self._BITS)))


def _mul(a: Tensor, b: Tensor) -> Tensor:
    """Product of two activations, rounded to the grid (one IEEE product, exact scaling)."""
    return _requantize(a * b, ACT_FRAC_BITS)


class FixedSequential:
    """Calls its fixed-point layers in order."""

    def __init__(self, layers: Sequence[Callable]):
        self.layers = list(layers)

    def to(self, device: torch.device) -> "FixedSequential":
        for layer in self.layers:
            layer.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class _PixelShuffle:
    def __init__(self, r: int):
        self.r = r

    def to(self, device):
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(x, self.r)


class _Identity:
    def to(self, device):
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return x


class _Residual:
    """``skip(x) + body(x)``, or with ``post``: ``h = first(x); h + post(h)``."""

    def __init__(self, first: Callable, post: Callable, mode: str):
        self.first, self.post, self.mode = first, post, mode

    def to(self, device):
        self.first.to(device)
        self.post.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        if self.mode == "parallel":
            out = self.first(x) + self.post(x)
        else:
            h = self.first(x)
            out = h + self.post(h)
        return out.clamp_(-ACT_MAX, ACT_MAX)


class _GatedFFN:
    def __init__(self, ffn: nn.Module, name: str):
        self.proj_in = FixedConv2d(ffn.proj_in, f"{name}.proj_in")
        self.proj_out = FixedConv2d(ffn.proj_out, f"{name}.proj_out")
        self.gelu = FixedTable(gelu_table(), "gelu")

    def to(self, device):
        for m in (self.proj_in, self.proj_out, self.gelu):
            m.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        a, b = self.proj_in(x).chunk(2, dim=1)
        return self.proj_out(_mul(self.gelu(a), b))


def _convert_children(seq: nn.Sequential, name: str) -> List[Callable]:
    return [to_fixed(m, f"{name}.{i}") for i, m in enumerate(seq)]


def to_fixed(module: nn.Module, name: str = "net") -> Callable[[Tensor], Tensor]:
    """Fixed-point twin of a float entropy-parameter network (input and output: activations).

    Supported: ``Conv2d`` (incl. CompressAI's masked convolutions), ``Sequential``,
    ``GELU`` (exact form), ``LeakyReLU``, ``PixelShuffle``, ``Identity``, and the gnn_lic
    blocks ``LayerNorm2d``, ``GatedFFN``, ``DepthwiseConvBlock``, ``GatedTransformCNN``,
    ``ParameterAggregationBlock``. Anything else raises ``TypeError``.
    """
    from gnn_lic.models.layers import (  # noqa: PLC0415 - layers imports the graph blocks
        DepthwiseConvBlock,
        GatedFFN,
        GatedTransformCNN,
        ParameterAggregationBlock,
    )
    from gnn_lic.nn.blocks import LayerNorm2d  # noqa: PLC0415

    if isinstance(module, nn.Conv2d):
        return FixedConv2d(module, name)
    if isinstance(module, nn.Sequential):
        return FixedSequential(_convert_children(module, name))
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise TypeError(f"{name}: only the exact (erf) GELU is supported")
        return FixedTable(gelu_table(), "gelu")
    if isinstance(module, nn.LeakyReLU):
        return FixedLeakyReLU(module.negative_slope)
    if isinstance(module, nn.PixelShuffle):
        return _PixelShuffle(module.upscale_factor)
    if isinstance(module, nn.Identity):
        return _Identity()
    if isinstance(module, LayerNorm2d):
        return FixedLayerNorm(module, name)
    if isinstance(module, GatedFFN):
        return _GatedFFN(module, name)
    if isinstance(module, DepthwiseConvBlock):
        return _Residual(to_fixed(module.skip, f"{name}.skip"), to_fixed(module.body, f"{name}.body"), "parallel")
    if isinstance(module, GatedTransformCNN):
        ffn = FixedSequential([FixedLayerNorm(module.norm, f"{name}.norm"), _GatedFFN(module.ffn, f"{name}.ffn")])
        return _Residual(to_fixed(module.dwconv, f"{name}.dwconv"), ffn, "serial")
    if isinstance(module, ParameterAggregationBlock):
        ffn = FixedSequential([FixedLayerNorm(module.norm, f"{name}.norm"), _GatedFFN(module.ffn, f"{name}.ffn")])
        return _Residual(FixedConv2d(module.proj, f"{name}.proj"), ffn, "serial")
    raise TypeError(f"{name}: no fixed-point version of {type(module).__name__}")


def fixed_networks(modules: Dict[str, nn.Module]) -> Dict[str, Callable[[Tensor], Tensor]]:
    """:func:`to_fixed` of every entry, named by its key (for error messages)."""
    return {k: to_fixed(m, k) for k, m in modules.items()}
