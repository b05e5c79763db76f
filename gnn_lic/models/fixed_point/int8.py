r"""Integer products with 8-bit weights: the fast exact kernel of scheme ``w8``.

The float64 products of :mod:`~gnn_lic.models.fixed_point.conv` are exact but run at
float64 speed. Scheme ``w8`` (:data:`~gnn_lic.models.fixed_point.arith.SCHEME_W8`) keeps
the activations of scheme fx16 (integers in units of :math:`2^{-16}`, :math:`|a| \le 2^{30}`)
and changes the weights of every convolution that is not depthwise:

* **weights**: per output channel :math:`o`, integers :math:`\hat w_{o,i}` with
  :math:`|\hat w_{o,i}| \le 127` standing for :math:`\hat w_{o,i} 2^{-f_o}`, where
  :math:`f_o` is the largest exponent that keeps the channel's largest weight within 127
  after rounding (:func:`int8_weights`; exact: ``frexp``, products with powers of two and
  ``round`` only);
* **inputs**: unchanged, read as the ``p`` low bytes of a 32-bit integer, all but the top
  one offset by -128 so that every digit is a signed byte:
  :math:`a = \sum_{k<p} 256^k d_k + 128 \sum_{k<p-1} 256^k` (:func:`byte_digits`). ``p``
  (1 to 4) is the fewest digits that hold the layer's inputs of this call
  (:func:`digit_planes`: every :math:`a` in :math:`[-2^{8p-1}, 2^{8p-1})`); a different
  ``p`` writes the same integers with more or fewer digits, so the result does not depend
  on it;
* **products**: for each digit, :math:`\Sigma_k = \sum_i \hat w_{o,i} d_{k,i}` is an
  integer matrix product with 32-bit accumulation (``torch._int_mm``, one call for the
  ``p`` digits side by side), exact, hence independent of the summation order. ``torch._int_mm``
  is fast only on CPUs that multiply bytes natively (VNNI, AMX) and many times slower than a
  float product elsewhere: there a layer whose inputs fit in few seven-bit digits multiplies
  those by oneDNN's unsigned-by-signed byte kernel (:mod:`~gnn_lic.models.fixed_point.onednn`),
  and otherwise, as on other devices, the whole integer inputs by its 8-bit weights in one
  float64 product (:func:`w8_products`), exact because every partial sum stays below :math:`2^{53}`;
  :math:`\mathrm{acc}_o = \sum_k 256^k \Sigma_k + 128 \sum_{k<p-1} 256^k \sum_i \hat w_{o,i}`
  is exact in float64 for fewer than
  :math:`2^{15}` terms (checked at conversion, :func:`check_fan_in`);
* **output**: :math:`o = \mathrm{round}(2^{-f_o}\,\mathrm{acc}_o) + \hat b_o`, with the
  bias :math:`\hat b_o` rounded to activation units at conversion, then clamped to the
  activation range.

Every step is an integer operation or a correctly rounded IEEE operation on integers, so
the result is the same on every machine; where ``torch._int_mm`` is not used (a device
other than the CPU), the same integer products come from a float64 matrix product, exact
because every partial sum stays below :math:`2^{53}`. Only the weights are rounded
further than in scheme fx16 (to 8 bits per output channel): each output is a function of
its own receptive field, exactly as in the float network.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gnn_lic import compiled
from gnn_lic.models.fixed_point import kernels, onednn
from gnn_lic.models.fixed_point.arith import DTYPE

__all__ = ["WEIGHT_MAX", "int8_weights", "powers_of_two", "digit_planes", "digit_offset", "byte_digits",
           "digit_columns", "digit_rows", "DIGIT_OFFSET", "check_fan_in", "W8_PRODUCTS", "PRODUCT_KINDS", "w8_products",
           "int8_products"]

#: largest |integer weight| of scheme w8
WEIGHT_MAX = 127


def int8_weights(w: Tensor) -> Tuple[Tensor, Tensor]:
    """``(out, fan_in)`` float weights -> integer weights (float64, ``|w| <= 127``) and ``f`` per row.

    ``f_o`` is the largest exponent with ``max_i |round(w_{o,i} 2^f_o)| <= 127``: with
    ``max_i |w_{o,i}| = q 2^E`` (``frexp``, ``q`` in [0.5, 1)), ``f_o = 7 - E`` unless the
    largest weight then rounds to 128, in which case ``6 - E``. Rows of zeros get ``f = 0``.

    >>> w8, f = int8_weights(torch.tensor([[0.5, -0.25], [3.0, 0.0]], dtype=torch.float64))
    >>> w8.tolist(), f.tolist()
    ([[64.0, -32.0], [96.0, 0.0]], [7.0, 5.0])
    """
    w = w.to(DTYPE)
    m = w.abs().amax(1)
    _, E = torch.frexp(m)
    f = (7 - E).to(DTYPE)
    f = torch.where(torch.round(m * powers_of_two(f)) > WEIGHT_MAX, f - 1, f)
    f = torch.where(m > 0, f, torch.zeros_like(f))
    return torch.round(w * powers_of_two(f)[:, None]), f


def powers_of_two(n: Tensor) -> Tensor:
    """``2**n`` for integer-valued ``n`` (float64), exactly: ``math.ldexp`` per distinct value, not ``pow``."""
    exps, where = torch.unique(n, return_inverse=True)
    values = torch.tensor([math.ldexp(1.0, int(v)) for v in exps.tolist()], dtype=DTYPE, device=n.device)
    return values[where].reshape(n.shape)


def digit_planes(lo: float, hi: float) -> int:
    """The fewest signed base-256 digits ``p`` (1 to 4) that hold every integer in ``[lo, hi]``
    (:func:`byte_digits`): ``-2^(8p-1) <= lo`` and ``hi < 2^(8p-1)``.

    >>> digit_planes(-128, 127), digit_planes(-129, 0), digit_planes(0, 2.0**23), digit_planes(-2.0**30, 0)
    (1, 2, 4, 4)
    """
    for p in (1, 2, 3):
        if lo >= -(1 << (8 * p - 1)) and hi < (1 << (8 * p - 1)):
            return p
    return 4


def digit_offset(planes: int) -> int:
    """``a - sum_k 256^k d_k`` for ``planes`` digits of :func:`byte_digits`: 128 for every offset (low) digit.

    >>> [digit_offset(p) for p in (1, 2, 4)] == [0, 128, 128 * (1 + 256 + 256**2)]
    True
    """
    return 128 * sum(256**k for k in range(planes - 1))


#: ``a = sum_k 256^k d_k + DIGIT_OFFSET`` for the four digits of :func:`byte_digits`
DIGIT_OFFSET = digit_offset(4)


def byte_digits(a: Tensor, planes: int = 4) -> Tensor:
    """Integers (float64 or int32, ``(..., n)``) that :func:`digit_planes` gives ``planes`` or fewer digits
    -> ``(..., planes, n)`` contiguous int8 digits, least significant first.

    ``a = sum_{k < planes} 256^k d_k + digit_offset(planes)``: the low bytes of ``a`` as an
    int32, all but the top one shifted to [-128, 127] (so every product fits int8) and the
    top one signed (two's complement: the bytes above it are its sign). Read from the bytes,
    not computed: exact and cheap.

    >>> d = byte_digits(torch.tensor([2.0**30, -129.0, 127.0, 0.0]))
    >>> d.t().tolist()
    [[-128, -128, -128, 64], [-1, 127, 127, -1], [-1, -128, -128, 0], [-128, -128, -128, 0]]
    >>> ((d.double() * torch.tensor([1.0, 256.0, 65536.0, 2.0**24])[:, None]).sum(0) + DIGIT_OFFSET).tolist()
    [1073741824.0, -129.0, 127.0, 0.0]
    >>> byte_digits(torch.tensor([-129.0, 127.0]), planes=2).t().tolist()
    [[-1, -1], [-1, 0]]
    """
    if sys.byteorder != "little":  # the byte view below assumes the little-endian layout
        raise RuntimeError("scheme w8 reads int32 bytes in little-endian order")
    mask = digit_offset(planes)  # 0x80 in every offset (low) byte: flipping it subtracts the offset
    a32 = a.to(torch.int32)
    if mask:
        a32 = a32 ^ mask
    return a32.unsqueeze(-1).view(torch.int8)[..., :planes].transpose(-1, -2).contiguous()  # (..., n, 4) -> (..., p, n)


def digit_columns(x: Tensor, planes: int, kernel_size, padding, taps, seven_bit: bool = False) -> Tensor:
    r"""Scheme w8's columns of a stride-1 convolution: ``(planes * Ho * Wo, len(taps) * C)`` int8 (uint8
    with ``seven_bit``).

    ``x`` ``(C, H, W)`` holds integers that :func:`digit_planes` (with ``seven_bit``,
    :func:`~gnn_lic.models.fixed_point.onednn.seven_bit_planes`) gives ``planes`` digits. Row
    :math:`(k, i, j)` (digit, output pixel), column :math:`(t, c)` (tap in use, channel) holds
    digit :math:`k` (:func:`byte_digits`, or
    :func:`~gnn_lic.models.fixed_point.onednn.seven_bit_digits`) of the zero-padded input at
    :math:`(i + d_{y,t}, j + d_{x,t})` of channel :math:`c`, where tap :math:`t` sits at
    :math:`(d_y, d_x)` = ``divmod(taps[t], kw)``. With the output pixels on the rows the integer
    product ``columns @ weights^T`` runs faster than the transposed one, and each row is made by
    copying whole runs of ``C`` digits.
    """
    (kh, kw), (ph, pw) = kernel_size, padding
    C, H, W = x.shape
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    dy = [t // kw for t in taps]
    dx = [t % kw for t in taps]
    dtype = torch.uint8 if seven_bit else torch.int8
    out = torch.empty((planes, Ho, Wo, len(taps), C), dtype=dtype, device=x.device)
    if kernels._use_compiled(x) and x.is_contiguous():
        # digit k: bits [k bits, (k + 1) bits) of (a ^ mask) + add (see byte_digits and seven_bit_digits)
        mask, add, bits = (0, onednn.seven_bit_offset(planes), 7) if seven_bit else (digit_offset(planes), 0, 8)
        padded = torch.empty((planes, Hp, Wp, C), dtype=dtype)
        compiled.parallel(kernels._digit_columns_loop, x.numpy(), planes, mask, add, bits, not seven_bit, ph, pw,
                          np.array(dy, dtype=np.int64), np.array(dx, dtype=np.int64), padded.numpy(), out.numpy())
    else:
        split = onednn.seven_bit_digits if seven_bit else byte_digits
        padded = F.pad(x.to(torch.int32), (pw, pw, ph, ph)).permute(1, 2, 0)  # (Hp, Wp, C)
        padded = split(padded, planes).permute(2, 0, 1, 3)  # (Hp, Wp, planes, C) -> (planes, Hp, Wp, C)
        for t, (a, b) in enumerate(zip(dy, dx)):
            out[:, :, :, t] = padded[:, a : a + Ho, b : b + Wo]
    return out.reshape(planes * Ho * Wo, len(taps) * C)


def digit_rows(x: Tensor, planes: int, kernel_size, padding, taps, rows: Tuple[int, int],
               cols: Optional[Tuple[int, int]] = None) -> Tensor:
    r"""Scheme w8's columns of a stride-1 convolution, transposed: ``(len(taps) * C, planes * n * m)`` int8 for
    the ``n`` output rows ``rows = (i0, i1)`` and the ``m`` output columns ``cols = (j0, j1)`` (default: all).

    ``x`` ``(C, H, W)`` holds integers that :func:`digit_planes` gives ``planes`` digits. Row
    :math:`(t, c)` (tap in use, channel), column :math:`(k, i, j)` (digit, output pixel) holds
    :func:`byte_digits` digit :math:`k` of the zero-padded input at :math:`(i + d_{y,t}, j + d_{x,t})` of
    channel :math:`c`, where tap :math:`t` sits at :math:`(d_y, d_x)` = ``divmod(taps[t], kw)``: the
    columns of :func:`digit_columns` for one digit after another, transposed. The product
    ``weights @ rows`` then gives each output channel's digit sums as one contiguous row, and each row
    here is made from one channel's contiguous inputs, so neither side needs a transposition.
    """
    (kh, kw), (ph, pw) = kernel_size, padding
    C, H, W = x.shape
    Wo = W + 2 * pw - kw + 1
    (i0, i1), (j0, j1) = rows, (cols if cols is not None else (0, Wo))
    dy = [t // kw for t in taps]
    dx = [t % kw for t in taps]
    mask = digit_offset(planes)
    if kernels._use_compiled(x) and x.is_contiguous():
        out = torch.empty((len(taps) * C, planes, i1 - i0, j1 - j0), dtype=torch.int8)
        if taps:  # the loop splits the inputs the band reads (every one inside the map): those rows and columns
            ya, yb = max(0, i0 - ph + min(dy)), max(0, min(H, i1 - ph + max(dy)))
            xa, xb = max(0, j0 - pw + min(dx)), max(0, min(W, j1 - pw + max(dx)))
            part = x[:, ya : max(ya, yb), xa : max(xa, xb)]
            compiled.parallel(kernels._digit_rows_loop, part.contiguous().numpy(), mask, ph, pw,
                              np.array(dy, dtype=np.int64), np.array(dx, dtype=np.int64), i0 - ya, j0 - xa,
                              out.numpy())
        return out.reshape(len(taps) * C, -1)
    if not taps:
        return torch.empty((0, planes * (i1 - i0) * (j1 - j0)), dtype=torch.int8, device=x.device)
    padded = F.pad(x.to(torch.int32), (pw, pw, ph, ph))
    windows = [padded[:, i0 + a : i1 + a, j0 + b : j1 + b].reshape(C, -1) for a, b in zip(dy, dx)]
    return byte_digits(torch.cat(windows), planes).reshape(len(taps) * C, -1)


def check_fan_in(terms: int, name: str) -> None:
    """Refuse a layer whose digit sums could leave float64's exact integers.

    Each digit sum is below ``terms * 127 * 128`` (32-bit accumulation needs it below
    ``2^31``) and the combination multiplies the top one by ``256^3``: the total stays
    below ``2^53`` for fewer than ``2^15`` terms.
    """
    if terms * WEIGHT_MAX * 128 * (256**3 + 256**2 + 256 + 1) >= 2**53:
        raise ValueError(f"{name}: a fan-in of {terms} terms is too large for scheme w8")


#: a CPU integer product whose output is larger than this is computed in blocks of rows of half this
#: size: ``torch._int_mm`` slows down several times once its output no longer fits the cache
INT_MM_BLOCK_BYTES = 32 << 20


def int8_products(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` of an int8 ``(M, K)`` and an int8 ``(K, N)`` matrix (either may be a transposed view),
    exactly, as int32: the weights times the columns, or the columns times the transposed weights.

    On the CPU ``torch._int_mm`` (32-bit accumulation, exact for ``K`` below
    ``2^31 / (127 * 128)`` terms), in blocks of output rows when the output is large (the
    same integers: each row is its own sums); elsewhere a float64 product of the same
    integers (every partial sum below ``2^53``: exact). All give the same integers.
    """
    if a.device.type != "cpu":
        return (a.to(DTYPE) @ b.to(DTYPE)).to(torch.int32)
    if a.shape[1] == 0:  # no term: every sum is 0
        return torch.zeros((a.shape[0], b.shape[1]), dtype=torch.int32)
    if a.shape[1] == 1:  # torch._int_mm misreads the strides of a (1, N) transposed view: the outer product
        return a.to(torch.int32) * b.to(torch.int32)
    M, N = a.shape[0], b.shape[1]
    if M * N * 4 <= INT_MM_BLOCK_BYTES:
        return torch._int_mm(a, b)
    rows = max(256, INT_MM_BLOCK_BYTES // (8 * N))
    out = torch.empty((M, N), dtype=torch.int32)
    for r in range(0, M, rows):
        torch._int_mm(a[r : r + rows], b, out=out[r : r + rows])
    return out


#: how scheme-w8 layers multiply on the CPU: ``"digits"`` (integer products of the inputs' signed byte digits,
#: ``torch._int_mm``), ``"onednn"`` (products of their seven-bit digits by oneDNN's unsigned-by-signed byte
#: kernel, :mod:`~gnn_lic.models.fixed_point.onednn`), ``"float64"`` (one float64 product of the whole inputs)
#: or ``"auto"`` (the fastest on this machine, timed once per process); the same integers every way
W8_PRODUCTS = os.environ.get("GNN_LIC_W8_PRODUCTS", "auto")
PRODUCT_KINDS = ("digits", "onednn", "float64")
_fastest: Optional[str] = None


#: a kernel whose first timed call is this many times slower than float64's best product is not timed
#: further: ``torch._int_mm`` without byte dot products is many times slower, and timing it again would take
#: most of the choice's time
GIVE_UP = 20.0


def _best_time(fn: Callable, args: Tuple, give_up: float = math.inf) -> float:
    """The best of three timed calls of ``fn(*args)`` after one untimed call, fewer once one is past ``give_up``.

    The untimed call carries what a kernel does once per process or shape (oneDNN generates its AMX
    and VNNI kernels on the first call, many times the product's own time), so that it does not
    decide the choice.
    """
    fn(*args)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
        if best > give_up:
            break
    return best


def _time_products() -> str:
    """How to multiply on this CPU, from layer-sized products timed once: the inputs as three byte digits
    where that beats float64 (they serve inputs of any size); else as
    :data:`~gnn_lic.models.fixed_point.onednn.FAST_PLANES` seven-bit digits where that does (the
    layers' larger inputs then take float64); else float64."""
    g = torch.Generator().manual_seed(0)
    w8 = torch.randint(-127, 128, (256, 1024), generator=g, dtype=torch.int8)
    f64 = _best_time(torch.mm, (torch.randn(128, 1024, generator=g, dtype=DTYPE), w8.t().to(DTYPE)))
    digits = torch.randint(-128, 128, (3 * 128, 1024), generator=g, dtype=torch.int8)
    if _best_time(torch._int_mm, (digits, w8.t()), give_up=GIVE_UP * f64) < f64:
        return "digits"
    if onednn.available():
        cols = torch.randint(0, 128, (onednn.FAST_PLANES * 128, 1024), generator=g, dtype=torch.uint8)
        if _best_time(onednn.u8_products, (cols, onednn._pack(w8))) < f64:
            return "onednn"
    return "float64"


def w8_products(device: torch.device) -> str:
    """How scheme-w8 layers on ``device`` multiply (:data:`W8_PRODUCTS`): ``"digits"``, ``"onednn"`` or
    ``"float64"``; off the CPU always ``"float64"``.

    ``"auto"`` times, once per process, the ways this CPU offers on a layer-sized product
    (:func:`_time_products`): where it multiplies bytes natively (VNNI, AMX) the byte digits win;
    elsewhere (AVX2) ``torch._int_mm`` falls back to a loop far slower than float64, and oneDNN's
    seven-bit digits serve the layers whose inputs have few of them.
    """
    global _fastest
    if torch.device(device).type != "cpu":
        return "float64"
    if W8_PRODUCTS in PRODUCT_KINDS:
        if W8_PRODUCTS == "onednn" and not onednn.available():
            raise RuntimeError("GNN_LIC_W8_PRODUCTS=onednn, but this PyTorch has no exact oneDNN byte product")
        return W8_PRODUCTS
    if W8_PRODUCTS != "auto":
        raise ValueError(f"GNN_LIC_W8_PRODUCTS must be auto, {', '.join(PRODUCT_KINDS)}, got {W8_PRODUCTS!r}")
    if _fastest is None:
        _fastest = _time_products()
    return _fastest

