r"""Fixed-point evaluation of the entropy-parameter networks: bit-identical on any machine.

A range decoder only stays in sync with its encoder when both derive the very same CDF
index and mean for every symbol. Float networks do not guarantee that: a different thread
count, BLAS kernel, SIMD width or device changes the summation order, a mean or scale moves
by one ulp, and a scale that sits on a table boundary picks another CDF. JPEG AI avoids
this with integer arithmetic in every network that feeds the entropy coder; Koyuncu et
al., "Device interoperability for learned image compression with weights and activations
quantization" (ICASSP 2024), do the same for a hyperprior codec. This package does it for
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

* reductions (convolutions as matrix products, channel sums of the layer norm) over
  integers whose absolute sum is bounded below :math:`2^{53}`: exact, however the sum is
  split or ordered and whether or not products are fused into the additions
  (:mod:`~gnn_lic.models.fixed_point.conv`);
* single elementwise IEEE-754 operations (``+ - * /``, ``sqrt``, ``round``, ``frexp``,
  comparisons): correctly rounded, hence identical on every conforming machine. A fused
  multiply-add appears only where its product is an exact integer, so it rounds the sum
  once exactly as the separate operations would;
* GELU and tanh: tables of their values on a :math:`2^{-8}` grid over
  :math:`[-8, 8]`, computed once with Python's :mod:`decimal` (software arithmetic,
  ``exp`` correctly rounded), read with exact linear interpolation
  (:mod:`~gnn_lic.models.fixed_point.tables`).

Two schemes
-----------
Scheme **fx16** (:data:`SCHEME`, arithmetic ``"fixed"``) is the one above:
float64 products of 16-bit-fraction weights. Scheme **w8** (:data:`SCHEME_W8`, arithmetic
``"fixed8"``, flagged in the streams that use it) keeps the activations, layer
norms, tables and depthwise convolutions of fx16 and rounds the weights of every other
convolution to 8 bits per output channel; their products are integer matrix products of
the inputs' byte digits with 32-bit accumulation (:mod:`~gnn_lic.models.fixed_point.int8`),
exact like fx16's and faster for wide layers (paper-size models) on CPUs that multiply bytes
natively (VNNI, AMX); elsewhere (AVX2, other devices) the same integers come from one float64
product of the whole inputs, at fx16's speed. Its 8-bit weights move
the means by a fraction of a quantisation step: on the trained shipped models the rate is
the same, but untrained or tiny models drift further from their float forward than with
fx16. Each latent codec names its default (``arithmetic``): w8 for both GABIC's channel-slice
codec and GLIC's SCCTX (since 2026-12-07; fx16 before), whose networks run faster with integer
products. A stream names its scheme, so both decode.

Scaling by a power of two is exact, so a layer multiplies its integer weights and bias by
:math:`2^{-F_w}` once, at conversion: products and sums are then the integer ones times
:math:`2^{-F_w}`, still exact, and the output needs only ``round`` and ``clamp``.

The networks are converted from the trained float modules (:func:`to_fixed`) by the model's
``update`` or, failing that, when a latent codec first compresses (before the analysis transform
runs) or decompresses, and again whenever a parameter changes (the
conversion is itself exact, so it gives the same integers everywhere): every checkpoint,
the shipped weights included, gains the property; :data:`SCHEME` names this arithmetic in the model
identity, since changing it changes the decoded symbols.

Modules: :mod:`~gnn_lic.models.fixed_point.arith` (format, conversions, bounds),
:mod:`~gnn_lic.models.fixed_point.conv`, :mod:`~gnn_lic.models.fixed_point.int8` and
:mod:`~gnn_lic.models.fixed_point.conv8` (scheme w8), :mod:`~gnn_lic.models.fixed_point.tables`,
:mod:`~gnn_lic.models.fixed_point.blocks` (layer norm, activations, composite blocks),
:mod:`~gnn_lic.models.fixed_point.kernels` (the elementwise passes, compiled: rounding, tables, the gate),
:mod:`~gnn_lic.models.fixed_point.convert` (:func:`to_fixed`) and
:mod:`~gnn_lic.models.fixed_point.coding` (scale -> CDF index).
"""

from gnn_lic.models.fixed_point.arith import (
    ACC_LIMIT,
    ACT_FRAC_BITS,
    ACT_LIMIT,
    ACT_MAX,
    MAX_WEIGHT_FRAC_BITS,
    MIN_WEIGHT_LEVELS,
    SCHEME,
    SCHEME_W8,
    from_act,
    to_act,
)
from gnn_lic.models.fixed_point.blocks import FixedLayerNorm, FixedLeakyReLU, FixedSequential
from gnn_lic.models.fixed_point.coding import scale_indexes
from gnn_lic.models.fixed_point.conv import FixedConv2d
from gnn_lic.models.fixed_point.convert import fixed_networks, to_fixed
from gnn_lic.models.fixed_point.tables import TABLE_FRAC_BITS, TABLE_RANGE, FixedTable, gelu_table, tanh_table

#: the fixed-point arithmetics of :data:`gnn_lic.models.entropy.ARITHMETICS` -> scheme names
SCHEMES = {"fixed": SCHEME, "fixed8": SCHEME_W8}

__all__ = [
    "SCHEME",
    "SCHEME_W8",
    "SCHEMES",
    "ACT_FRAC_BITS",
    "ACT_LIMIT",
    "ACT_MAX",
    "ACC_LIMIT",
    "MAX_WEIGHT_FRAC_BITS",
    "MIN_WEIGHT_LEVELS",
    "TABLE_FRAC_BITS",
    "TABLE_RANGE",
    "to_act",
    "from_act",
    "FixedConv2d",
    "FixedLayerNorm",
    "FixedTable",
    "FixedLeakyReLU",
    "FixedSequential",
    "to_fixed",
    "fixed_networks",
    "gelu_table",
    "tanh_table",
    "scale_indexes",
]
