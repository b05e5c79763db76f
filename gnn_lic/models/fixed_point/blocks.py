r"""Fixed-point layer norm, activations and the composite blocks of the entropy networks.

Every function here is an exact integer operation or a single correctly rounded IEEE-754
operation per element (see :mod:`gnn_lic.models.fixed_point`); a fused multiply-add is
used only where the product is an exact integer (then fused or not, the sum is rounded
once, the same way).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gnn_lic.models.fixed_point import kernels
from gnn_lic.models.fixed_point.arith import ACC_LIMIT, ACT_FRAC_BITS, ACT_MAX, DTYPE, MAX_WEIGHT_FRAC_BITS, requantize_, shift
from gnn_lic.models.fixed_point.conv import FixedConv2d
from gnn_lic.models.fixed_point.tables import FixedTable, gelu_table

__all__ = [
    "FixedLayerNorm",
    "FixedLeakyReLU",
    "FixedSequential",
    "PixelShuffle",
    "Identity",
    "Residual",
    "GatedFFN",
]

#: exact powers of two 2**0 .. 2**63 and their reciprocals, indexed by a per-element shift
_POW2 = torch.tensor([2.0**k for k in range(64)], dtype=DTYPE)
_INV_POW2 = torch.tensor([2.0**-k for k in range(64)], dtype=DTYPE)


class FixedLayerNorm:
    r"""Layer norm over the channels of every pixel (:class:`gnn_lic.nn.blocks.LayerNorm2d`).

    With :math:`S = \sum_c a_c` (exact), :math:`d_c = C a_c - S = C\,2^{F}(x_c - \mu)`
    (exact), the variance sums :math:`d_c` rounded to their top 21 bits (a per-pixel
    power-of-two shift from ``frexp`` of the exact maximum, so :math:`C\,2^{42} < 2^{53}`)
    and the output is :math:`\mathrm{round}(d_c / (C\sqrt{\sigma^2 + \epsilon}))`
    followed by the affine map; every step is exact or one correctly rounded operation.
    The normalised values are below :math:`(\sqrt C + 1)\,2^{16}` in magnitude, so their
    products with the integer gains stay below :math:`2^{52}` (exact).
    """

    _VAR_BITS = 21

    def __init__(self, norm: nn.Module, name: str = "norm"):
        C = norm.weight.numel()
        if C > 2**11:
            raise ValueError(f"{name}: {C} channels exceed the exact-variance bound (2048)")
        self.channels = C
        self.eps = float(norm.eps)
        g = norm.weight.detach().to("cpu", DTYPE)
        b = norm.bias.detach().to("cpu", DTYPE)
        bits = MAX_WEIGHT_FRAC_BITS
        while bits > 0 and float(torch.round(shift(g, bits)).abs().max()) * (C**0.5 + 1) * 2**ACT_FRAC_BITS > ACC_LIMIT:
            bits -= 1
        self.frac_bits = bits
        self.weight = torch.round(shift(g, bits)).reshape(1, C, 1, 1)
        self.bias = torch.round(shift(b, bits + ACT_FRAC_BITS)).reshape(1, C, 1, 1)
        self._prepare()

    def _prepare(self) -> None:
        s = 2.0**-self.frac_bits  # the affine map in activation units (exact, as in FixedConv2d)
        self._weight, self._bias = self.weight * s, self.bias * s
        self._pow2, self._inv_pow2 = _POW2, _INV_POW2

    def to(self, device: torch.device) -> "FixedLayerNorm":
        self.weight, self.bias = self.weight.to(device), self.bias.to(device)
        self._weight, self._bias = self._weight.to(device), self._bias.to(device)
        self._pow2, self._inv_pow2 = self._pow2.to(device), self._inv_pow2.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        out = kernels.layer_norm(x, self._VAR_BITS, self.eps, self._weight, self._bias, ACT_MAX)
        if out is not None:  # the compiled loop: the same operations, pixel by pixel
            return out
        C = self.channels
        d = torch.mul(x, float(C)).sub_(x.sum(1, keepdim=True))
        _, e = torch.frexp(d.abs().amax(1, keepdim=True))  # of max |d_c|, exact
        k = (e.long() - self._VAR_BITS).clamp_(min=0)
        pow2 = self._pow2[k]
        dq = torch.mul(d, self._inv_pow2[k]).round_()  # round(d / 2**k): the product is exact
        v = dq.mul_(dq).sum(1, keepdim=True)
        var = shift(v * pow2 * pow2, -2 * ACT_FRAC_BITS) / float(C**3)
        r = torch.sqrt(var + self.eps)
        n = d.div_(r * float(C)).round_()
        return requantize_(torch.addcmul(self._bias, n, self._weight))


class FixedLeakyReLU:
    """LeakyReLU with the slope rounded to 2**-20 and the product rounded to the grid."""

    _BITS = 20

    def __init__(self, slope: float):
        self.slope = float(round(slope * 2**self._BITS))

    def to(self, device: torch.device) -> "FixedLeakyReLU":
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, x, torch.round(shift(x * self.slope, -self._BITS)))


class FixedSequential:
    """Calls its fixed-point layers in order.

    A scheme-w8 convolution followed by a table (GELU) reads its output through the table in
    its own output pass: the same values, one sweep fewer.
    """

    def __init__(self, layers: Sequence[Callable]):
        self.layers = list(layers)
        self._steps = []
        i = 0
        while i < len(self.layers):
            layer, after = self.layers[i], self.layers[i + 1] if i + 1 < len(self.layers) else None
            fused = isinstance(layer, FixedConv2d) and layer.int8 and isinstance(after, FixedTable)
            self._steps.append((layer, after if fused else None))
            i += 2 if fused else 1

    def to(self, device: torch.device) -> "FixedSequential":
        for layer in self.layers:
            layer.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        for layer, table in self._steps:
            x = layer(x) if table is None else layer(x, table)
        return x


class PixelShuffle:
    def __init__(self, r: int):
        self.r = r

    def to(self, device):
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(x, self.r)


class Identity:
    def to(self, device):
        return self

    def __call__(self, x: Tensor) -> Tensor:
        return x


class Residual:
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


class GatedFFN:
    """:class:`gnn_lic.models.layers.GatedFFN`: ``proj_out(GELU(a) * b)``, ``(a, b) = proj_in(x)``.

    ``GELU(a) * b`` is one IEEE product of two activations times ``2^-16`` (exact), rounded
    to the grid and clamped (:func:`~gnn_lic.models.fixed_point.kernels.table_gate`).
    """

    def __init__(self, ffn: nn.Module, name: str, int8: bool = False):
        self.proj_in = FixedConv2d(ffn.proj_in, f"{name}.proj_in", int8)
        self.proj_out = FixedConv2d(ffn.proj_out, f"{name}.proj_out", int8)
        self.gelu = FixedTable(gelu_table(), "gelu")

    def to(self, device):
        for m in (self.proj_in, self.proj_out, self.gelu):
            m.to(device)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        a, b = self.proj_in(x).reshape(B, 2, -1, H * W).unbind(1)
        g = kernels.table_gate(a, b, self.gelu, 2.0**-ACT_FRAC_BITS, ACT_MAX)
        return self.proj_out(g.reshape(B, -1, H, W))
