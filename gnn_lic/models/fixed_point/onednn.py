r"""Scheme w8's integer products through oneDNN's unsigned-by-signed byte product: seven-bit digits.

``torch._int_mm`` multiplies signed bytes; on a CPU without byte dot-product instructions
(AVX2 without VNNI) it runs a loop many times slower than a float64 product. oneDNN's
quantized linear kernel (``torch.ops.onednn.qlinear_pointwise``) multiplies *unsigned* by
signed bytes with the instructions such CPUs have (``vpmaddubsw``, then ``vpmaddwd``), at
several times the float64 rate. Its first step adds two byte products into a 16-bit
integer and saturates there, so the unsigned operand is kept to seven bits:

* **digits**: ``p`` (1 to :data:`MAX_PLANES`) digits :math:`0 \le d_k \le 127` with
  :math:`a + 2^{7p-1} = \sum_{k<p} 128^k d_k` (:func:`seven_bit_digits`), for every
  :math:`a` in :math:`[-2^{7p-1}, 2^{7p-1})` (:func:`seven_bit_planes`); two products with
  weights :math:`|\hat w| \le 127` sum to at most :math:`2 \cdot 127^2 < 2^{15}`: no
  saturation, on any instruction set;
* **products**: the kernel accumulates in 32-bit integers and returns them as float32 times
  unit scales, exact while every sum stays within :math:`2^{24}`. With digits in
  :math:`[0, 127]` a sum lies between :math:`-127` times the magnitudes of the negative
  weights and :math:`127` times the positive ones, so the fan-in is cut, in order, into the
  fewest chunks in which each output's positive weights, and its negative ones, add up to
  at most :data:`CHUNK_WEIGHT_SUM` (:func:`fan_in_chunks`; at least 1040 terms of any
  weights, the whole fan-in of most layers); the chunks' sums are added as int32
  (:func:`u8_products`);
* **combination**: :math:`\mathrm{acc}_o = \sum_k 128^k \Sigma_k - 2^{7p-1} \sum_i \hat w_{o,i}`,
  in float64 as for the byte digits
  (:func:`~gnn_lic.models.fixed_point.kernels.combine_requantize` with base 128; exact
  for fewer than :math:`2^{15}` terms and :math:`p \le 4`).

So the products are the same integers as ``torch._int_mm``'s or float64's, and the layer's
output the same bits. :func:`available` checks the kernel once per process against
integer products (extreme operands included) before any layer uses it.
"""

from __future__ import annotations

import weakref
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from gnn_lic.nn.functional import row_chunks

__all__ = ["MAX_PLANES", "FAST_PLANES", "WINOGRAD_PLANES", "CHUNK_WEIGHT_SUM", "fan_in_chunks", "seven_bit_planes",
           "seven_bit_offset", "seven_bit_digits", "available", "packed_weights", "forget", "u8_products"]

#: most seven-bit digits: inputs in [-2^27, 2^27); larger ones take the float64 products
MAX_PLANES = 4
#: most seven-bit digits of a layer's inputs for which the layer takes these products rather than float64
#: ones: ``p`` digits make ``p`` products, plus the columns and their combination; with more, the float64
#: products are as fast (``python -m gnn_lic.bench.entropy``)
FAST_PLANES = 3
#: the same for a 3x3 layer whose float64 products would run Winograd's F(2x2, 3x3), which multiplies
#: 2.25 times fewer operands
WINOGRAD_PLANES = 2
#: most sum of one sign of an output's weights in one product of the kernel: times the largest digit (127),
#: every sum of the chunk stays within 2^24, exact in float32
CHUNK_WEIGHT_SUM = (1 << 24) // 127

_available: Optional[bool] = None
_packs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def seven_bit_planes(lo: float, hi: float) -> Optional[int]:
    """The fewest seven-bit digits ``p`` (1 to :data:`MAX_PLANES`) that hold every integer in ``[lo, hi]``
    (``-2^(7p-1) <= lo`` and ``hi < 2^(7p-1)``), or ``None`` if more are needed.

    >>> seven_bit_planes(-64, 63), seven_bit_planes(-65, 0), seven_bit_planes(0, 2.0**26), seven_bit_planes(0, 2.0**27)
    (1, 2, 4, None)
    """
    for p in range(1, MAX_PLANES + 1):
        if lo >= -(1 << (7 * p - 1)) and hi < (1 << (7 * p - 1)):
            return p
    return None


def seven_bit_offset(planes: int) -> int:
    """What the digits add to every input: ``2^(7 planes - 1)``."""
    return 1 << (7 * planes - 1)


def seven_bit_digits(a: Tensor, planes: int) -> Tensor:
    """Integers ``(..., n)`` that :func:`seven_bit_planes` gives ``planes`` or fewer digits -> ``(..., planes, n)``
    contiguous uint8 digits in ``[0, 127]``, least significant first:
    ``a = sum_k 128^k d_k - seven_bit_offset(planes)``.

    >>> seven_bit_digits(torch.tensor([-8192.0, 8191.0, 0.0, -1.0]), 2).t().tolist()
    [[0, 0], [127, 127], [0, 64], [127, 63]]
    """
    u = a.to(torch.int64) + seven_bit_offset(planes)
    shifts = torch.arange(0, 7 * planes, 7, device=a.device).reshape(-1, 1)
    return ((u.unsqueeze(-2) >> shifts) & 127).to(torch.uint8).contiguous()


def _kernel(x: Tensor, w, ones: Tensor, zeros: Tensor) -> Tensor:
    return torch.ops.onednn.qlinear_pointwise(x, 1.0, 0, w, ones, zeros, None, 1.0, 0, torch.float32, "none", [], "")


def fan_in_chunks(w8: Tensor) -> List[Tuple[int, int]]:
    """The ranges ``[k0, k1)`` that cut the fan-in of ``w8`` ``(N, K)`` (``|w| <= 127``), in order, into the fewest
    chunks whose products stay exact: in every output, the positive weights of a chunk add up to at most
    :data:`CHUNK_WEIGHT_SUM`, and so do the magnitudes of its negative ones. Each chunk is the longest
    that does (greedy, hence the fewest); a single weight always fits.

    >>> fan_in_chunks(torch.full((2, 3000), 127, dtype=torch.int8))
    [(0, 1040), (1040, 2080), (2080, 3000)]
    >>> fan_in_chunks(torch.tensor([[60, -60] * 2000], dtype=torch.int8))
    [(0, 4000)]
    """
    w = w8.to(torch.int64)
    # per output, the running sums (from 0) of its positive weights and of its negative ones' magnitudes
    running = F.pad(torch.cat([w.clamp(min=0), (-w).clamp(min=0)]).cumsum(1), (1, 0))
    return row_chunks(running, CHUNK_WEIGHT_SUM)


def _pack(w8: Tensor) -> List[Tuple[int, int, object, Tensor, Tensor]]:
    """``(k0, k1, packed chunk, unit scales, zero points)`` for every chunk of ``w8`` ``(N, K)`` (:func:`fan_in_chunks`)."""
    n = w8.shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    return [(k0, k1, torch.ops.onednn.qlinear_prepack(w8[:, k0:k1].contiguous(), None), ones, zeros)
            for k0, k1 in fan_in_chunks(w8)]


def u8_products(cols: Tensor, packs) -> Tensor:
    """``cols @ w8^T`` (int32 ``(M, N)``) of uint8 columns ``(M, K)`` in ``[0, 127]`` and int8 weights ``(N, K)``
    (``|w| <= 127``) given as :func:`packed_weights`: one kernel call per chunk of the fan-in, exact."""
    out = None
    for k0, k1, w, ones, zeros in packs:
        part = cols if (k0, k1) == (0, cols.shape[1]) else cols[:, k0:k1]
        y = _kernel(part, w, ones, zeros).to(torch.int32)
        out = y if out is None else out.add_(y)
    return out


def packed_weights(owner, w8: Tensor):
    """The kernel's operands for ``w8`` ``(N, K)`` int8, made once per ``owner`` (a layer) and kept beside it
    (not on it: packed tensors cannot be copied)."""
    packs = _packs.get(owner)
    if packs is None:
        packs = _packs[owner] = _pack(w8)
    return packs


def forget(owner) -> None:
    """Drop ``owner``'s packed weights (its weights moved or changed)."""
    _packs.pop(owner, None)


def available() -> bool:
    """Whether this PyTorch has the kernel and it gives exact integer products here: checked once per process
    on operands that reach the largest pairwise sums and, in chunks of either length (weights as large as
    they come, cut every 1040 terms; small weights over a fan-in of 4200 in one chunk), sums near 2^24."""
    global _available
    if _available is None:
        try:
            g = torch.Generator().manual_seed(0)
            M, N = 40, 24
            ok = True
            for K, top in ((1077, 127), (4200, 31)):
                cols = torch.randint(0, 128, (M, K), generator=g, dtype=torch.uint8)
                w8 = torch.randint(-top, top + 1, (N, K), generator=g, dtype=torch.int8)
                cols[0], w8[0], w8[1] = 127, top, -top  # the largest sums of either sign
                w8[2, 0::2], w8[2, 1::2] = top, -top
                got = u8_products(cols, _pack(w8))
                ok = ok and bool(torch.equal(got.long(), cols.long() @ w8.long().t()))
            _available = ok
        except (AttributeError, RuntimeError, NotImplementedError):
            _available = False
    return _available
