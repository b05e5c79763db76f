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
  unit scales, exact while every sum stays below :math:`2^{24}`: the fan-in is cut into
  chunks of at most :data:`CHUNK` terms (:math:`1024 \cdot 127^2 < 2^{24}`), whose sums
  are added as int32 (:func:`u8_products`);
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
from torch import Tensor

__all__ = ["MAX_PLANES", "FAST_PLANES", "WINOGRAD_PLANES", "CHUNK", "seven_bit_planes", "seven_bit_offset",
           "seven_bit_digits", "available", "packed_weights", "forget", "u8_products"]

#: most seven-bit digits: inputs in [-2^27, 2^27); larger ones take the float64 products
MAX_PLANES = 4
#: most seven-bit digits of a layer's inputs for which the layer takes these products rather than float64
#: ones: ``p`` digits make ``p`` products, plus the columns and their combination; with more, the float64
#: products are as fast (``python -m gnn_lic.bench.entropy``)
FAST_PLANES = 3
#: the same for a 3x3 layer whose float64 products would run Winograd's F(2x2, 3x3), which multiplies
#: 2.25 times fewer operands
WINOGRAD_PLANES = 2
#: most terms of one product of the kernel: every sum of a chunk stays below 2^24, exact in float32
CHUNK = 1024

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


def _pack(w8: Tensor) -> List[Tuple[int, int, object, Tensor, Tensor]]:
    """``(k0, k1, packed chunk, unit scales, zero points)`` for every chunk of the fan-in of ``w8`` ``(N, K)``."""
    n = w8.shape[0]
    ones, zeros = torch.ones(n), torch.zeros(n, dtype=torch.int64)
    return [(k0, min(k0 + CHUNK, w8.shape[1]),
             torch.ops.onednn.qlinear_prepack(w8[:, k0 : k0 + CHUNK].contiguous(), None), ones, zeros)
            for k0 in range(0, w8.shape[1], CHUNK)]


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
    on operands that reach the largest pairwise sums and the largest chunk sums."""
    global _available
    if _available is None:
        try:
            g = torch.Generator().manual_seed(0)
            M, K, N = 40, CHUNK + 37, 24
            cols = torch.randint(0, 128, (M, K), generator=g, dtype=torch.uint8)
            w8 = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
            cols[0], w8[0], w8[1] = 127, 127, -127  # the largest sums of either sign
            w8[2, 0::2], w8[2, 1::2] = 127, -127
            got = u8_products(cols, _pack(w8))
            _available = bool(torch.equal(got.long(), cols.long() @ w8.long().t()))
        except (AttributeError, RuntimeError, NotImplementedError):
            _available = False
    return _available
