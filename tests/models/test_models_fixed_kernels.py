"""Fixed-point kernels against brute-force references: the fast paths give the same integers.

The convolution reference accumulates in int64 and re-quantises with integer division
(round half to even), so it depends on nothing but integer arithmetic; the inputs include
the worst case, where one output's sum reaches the bound the layer was converted for.
"""

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from compressai.layers import CheckerboardMaskedConv2d
from torch import nn

from gnn_lic.models import fixed_point as fp
from gnn_lic.models.fixed_point.tables import TABLE_RANGE, dense_table


def _round_half_even_shift(acc: torch.Tensor, bits: int) -> torch.Tensor:
    """``round(acc / 2**bits)``, half to even, in int64."""
    if bits == 0:
        return acc
    q = torch.div(acc, 2**bits, rounding_mode="floor")
    r = acc - q * 2**bits
    half = 2 ** (bits - 1)
    return q + ((r > half) | ((r == half) & (q % 2 == 1))).long()


def reference_conv(f: fp.FixedConv2d, x: torch.Tensor) -> torch.Tensor:
    """``clamp(round((b + sum w a) / 2**F_w))`` with int64 sums, tap by tap."""
    (kh, kw), (sh, sw), (ph, pw) = f.kernel_size, f.stride, f.padding
    B, C, H, W = x.shape
    O = f.out_channels
    xi = F.pad(x.clamp(-f.in_max, f.in_max).long(), (pw, pw, ph, ph))
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    w = f.weight.long().reshape(O, -1, kh, kw)
    acc = torch.zeros(B, O, Ho, Wo, dtype=torch.long)
    if f.bias is not None:
        acc += f.bias.long().reshape(1, O, 1, 1)
    for dy in range(kh):
        for dx in range(kw):
            patch = xi[:, :, dy : dy + sh * (Ho - 1) + 1 : sh, dx : dx + sw * (Wo - 1) + 1 : sw]
            if f.depthwise:
                acc += w[:, 0, dy, dx].reshape(1, O, 1, 1) * patch
            else:
                acc += (w[:, :, dy, dx].reshape(1, O, C, 1, 1) * patch.unsqueeze(1)).sum(2)
    return _round_half_even_shift(acc, f.frac_bits).clamp(-fp.ACT_MAX, fp.ACT_MAX).double()


def _conv(kind: str) -> nn.Conv2d:
    if kind == "1x1":
        return nn.Conv2d(12, 7, 1)
    if kind == "3x3":
        return nn.Conv2d(9, 6, 3, padding=1)
    if kind == "3x3-nobias-nopad":
        return nn.Conv2d(5, 4, 3, bias=False)
    if kind == "5x5-checkerboard":
        return CheckerboardMaskedConv2d(4, 8, kernel_size=5, padding=2)
    if kind == "5x5-depthwise":
        return nn.Conv2d(6, 6, 5, padding=2, groups=6)
    if kind == "3x3-stride2":
        return nn.Conv2d(5, 3, 3, stride=2, padding=1)
    if kind == "1x3-asymmetric":
        return nn.Conv2d(4, 3, (1, 3), padding=(0, 1))
    raise ValueError(kind)


KINDS = ["1x1", "3x3", "3x3-nobias-nopad", "5x5-checkerboard", "5x5-depthwise", "3x3-stride2", "1x3-asymmetric"]


def _seeded(conv: nn.Conv2d, seed: int, same_sign_per_input: bool = False) -> nn.Conv2d:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = torch.randn(conv.weight.shape, generator=g) * 0.3
        if same_sign_per_input:  # every weight of input channel c has the sign s_c
            s = torch.where(torch.arange(w.shape[1]) % 2 == 0, 1.0, -1.0).reshape(1, -1, 1, 1)
            w = w.abs() * s
        conv.weight.copy_(w)
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g).abs() * 3)
    return conv.eval()


@pytest.mark.parametrize("kind", KINDS)
def test_conv_equals_the_int64_reference_on_random_inputs(kind):
    f = fp.FixedConv2d(_seeded(_conv(kind), seed=1), kind)
    g = torch.Generator().manual_seed(2)
    (kh, kw), (ph, pw) = f.kernel_size, f.padding
    for B, H, W, scale in [(1, 7, 9, 4.0), (2, 6, 5, 300.0), (1, 1, 1, 1.0), (3, 4, 11, 2.0**14)]:
        if H + 2 * ph < kh or W + 2 * pw < kw:
            continue
        x = fp.to_act(torch.randn(B, f.in_channels, H, W, generator=g) * scale)
        got = f(x.clone())
        assert torch.equal(got, reference_conv(f, x)), (kind, B, H, W, scale)
        assert got.dtype == torch.float64


@pytest.mark.parametrize("kind", KINDS)
def test_conv_is_exact_at_the_accumulation_bound(kind):
    """Inputs at +-in_max with the weights' signs: an interior output sums |w| * in_max + |b|,
    the worst case the layer's fractional bits were chosen for (within 2**52)."""
    conv = _seeded(_conv(kind), seed=3, same_sign_per_input=True)
    f = fp.FixedConv2d(conv, kind)
    bound = float(f.weight.abs().sum(1).max()) * f.in_max + (0.0 if f.bias is None else float(f.bias.abs().max()))
    assert 2**50 < bound <= fp.ACC_LIMIT  # the conversion pushed the weights to the bound
    s = torch.where(torch.arange(f.in_channels) % 2 == 0, 1.0, -1.0).double().reshape(1, -1, 1, 1)
    for sign in (1.0, -1.0):
        x = (sign * s * fp.ACT_MAX).expand(2, -1, 7, 8).contiguous()
        got = f(x.clone())
        assert torch.equal(got, reference_conv(f, x)), (kind, sign)
    # alternating extremes everywhere, beyond the layer's own input range too
    g = torch.Generator().manual_seed(4)
    x = torch.where(torch.rand(1, f.in_channels, 6, 7, generator=g) < 0.5, -1.0, 1.0).double() * fp.ACT_MAX
    assert torch.equal(f(x.clone()), reference_conv(f, x))


def test_conv_skips_the_masked_taps_of_a_checkerboard_context():
    f = fp.FixedConv2d(_seeded(_conv("5x5-checkerboard"), seed=5), "ctx")
    assert len(f._taps) == 12  # 12 of 25 taps are unmasked


@pytest.mark.parametrize("int8", [False, True])
def test_conv_is_the_same_with_one_and_two_threads(int8):
    f_conv = _seeded(nn.Conv2d(64, 48, 3, padding=1), seed=6)
    f = fp.FixedConv2d(f_conv, "c", int8=int8)
    x = fp.to_act(torch.randn(1, 64, 24, 20, generator=torch.Generator().manual_seed(7)) * 3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = f(x.clone())
        torch.set_num_threads(2)
        two = f(x.clone())
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert torch.equal(one, reference_conv_w8(f_conv, x) if int8 else reference_conv(f, x))


_POW2 = torch.tensor([2.0**k for k in range(64)], dtype=torch.float64)


def reference_layer_norm(n: fp.FixedLayerNorm, x: torch.Tensor) -> torch.Tensor:
    """The layer norm's defining sequence of operations, each one separate and unfused."""
    C = n.channels
    d = x * C - x.sum(1, keepdim=True)
    _, e = torch.frexp(d.abs().amax(1, keepdim=True))
    pow2 = _POW2[(e.long() - 21).clamp(min=0)]
    dq = torch.round(d / pow2)
    var = (dq * dq).sum(1, keepdim=True) * pow2 * pow2 * 2.0**-32 / float(C**3)
    r = torch.sqrt(var + n.eps)
    out = torch.round(d / (r * float(C))) * n.weight + n.bias
    return torch.round(out * 2.0**-n.frac_bits).clamp(-fp.ACT_MAX, fp.ACT_MAX)


def test_layer_norm_equals_its_defining_operations():
    norm = nn.Module()
    g = torch.Generator().manual_seed(8)
    norm.weight = nn.Parameter(torch.randn(24, generator=g))
    norm.bias = nn.Parameter(torch.randn(24, generator=g))
    norm.eps = 1e-6
    n = fp.FixedLayerNorm(norm)
    for scale in (1e-4, 1.0, 50.0, 2.0**14):
        x = fp.to_act(torch.randn(2, 24, 5, 6, generator=g) * scale)
        x[0, :, 0, 0] = fp.ACT_MAX  # a constant pixel (zero variance)
        x[1, ::2, 1, 1], x[1, 1::2, 1, 1] = fp.ACT_MAX, -fp.ACT_MAX  # the largest spread
        assert torch.equal(n(x.clone()), reference_layer_norm(n, x)), scale


def _reference_table(table, kind: str, a: int) -> int:
    """Exact interpolation in Python integers (round half to even), GELU's tail beyond 8."""
    lim = TABLE_RANGE << fp.ACT_FRAC_BITS
    if kind == "gelu" and a > lim:
        return a
    c = max(-lim, min(lim, a))
    half = TABLE_RANGE << fp.TABLE_FRAC_BITS
    step = 1 << (fp.ACT_FRAC_BITS - fp.TABLE_FRAC_BITS)
    pos = min(max(c // step, -half), half - 1)
    lo, hi = table[pos + half], table[pos + half + 1]
    return round(Fraction(lo * step + (hi - lo) * (c - pos * step), step))


@pytest.mark.parametrize("kind", ["gelu", "tanh"])
def test_table_lookup_equals_exact_interpolation(kind):
    table = fp.gelu_table() if kind == "gelu" else fp.tanh_table()
    f = fp.FixedTable(table, kind)
    lim = TABLE_RANGE << fp.ACT_FRAC_BITS
    g = torch.Generator().manual_seed(9)
    edges = [0, 1, -1, 255, 256, 257, lim - 1, lim, lim + 1, -lim + 1, -lim, -lim - 1, fp.ACT_MAX, -fp.ACT_MAX]
    inside = torch.randint(-lim, lim + 1, (3000,), generator=g).tolist()
    beyond = torch.randint(-fp.ACT_MAX, fp.ACT_MAX + 1, (500,), generator=g).tolist()
    for values in (inside + edges[:6], inside + edges, beyond):  # in range only (fast path), then mixed
        x = torch.tensor(values, dtype=torch.float64).reshape(1, -1, 1, 1)
        expected = torch.tensor([_reference_table(table, kind, v) for v in values], dtype=torch.float64)
        assert torch.equal(f(x).reshape(-1), expected)
    # the dense table is the exact interpolation at every grid point
    dense = dense_table(tuple(table))
    idx = torch.randint(0, 2 * lim + 1, (2000,), generator=g)
    assert all(float(dense[i]) == _reference_table(table, "tanh", int(i) - lim) for i in idx.tolist())


def test_empty_inputs_give_empty_outputs():
    """A checkerboard pass over no positions (the parameter network on an empty selection)."""
    t = fp.FixedTable(fp.gelu_table(), "gelu")
    assert t(torch.zeros(1, 4, 0, 1, dtype=torch.float64)).shape == (1, 4, 0, 1)
    f = fp.FixedConv2d(_seeded(_conv("1x1"), seed=10))
    assert f(torch.zeros(1, 12, 0, 1, dtype=torch.float64)).shape == (1, 7, 0, 1)


def test_scale_indexes_equal_build_indexes():
    from compressai.entropy_models import GaussianConditional
    from compressai.models.google import get_scale_table

    gc = GaussianConditional(None)
    gc.update_scale_table(get_scale_table())
    t = gc.scale_table.double()
    # at, just below and just above every table entry and the lower bound, on and off the 2**-16 grid
    near = torch.cat([t, torch.nextafter(t, t - 1), torch.nextafter(t, t + 1), torch.tensor([0.0, 1e-9, 0.109, 0.11, 1e6])])
    on_grid = torch.round(near * 2**16)
    g = torch.Generator().manual_seed(11)
    scales = torch.cat([on_grid, on_grid - 1, on_grid + 1, torch.randint(-fp.ACT_MAX, fp.ACT_MAX, (5000,), generator=g).double()])
    scales = scales.reshape(1, 1, -1, 1)
    got = fp.scale_indexes(gc, scales)
    assert got.dtype == torch.int32
    assert torch.equal(got, gc.build_indexes(fp.from_act(scales, torch.float64)))


def _frac_bits_by_full_scan(w, b):
    """Every weight fractional bits from the top, each checked on the rounded integers."""
    for drop in range(7):
        in_max = fp.ACT_MAX >> drop
        for bits in range(fp.MAX_WEIGHT_FRAC_BITS, -1, -1):
            wi = torch.round(w * 2.0**bits)
            bound = wi.abs().sum(1) * in_max
            if b is not None:
                bound = bound + torch.round(b * 2.0 ** (bits + fp.ACT_FRAC_BITS)).abs()
            if float(bound.max()) <= fp.ACC_LIMIT:
                levels = float(wi.abs().max())
                if levels == 0 or levels >= fp.MIN_WEIGHT_LEVELS:
                    return bits, in_max
                break
    return None


def test_frac_bits_equal_a_full_scan():
    from gnn_lic.models.fixed_point.arith import choose_frac_bits

    g = torch.Generator().manual_seed(12)
    cases = []
    for fan_in, scale, bias_scale in [(1, 1.0, 1.0), (9, 0.3, 3.0), (300, 0.05, 0.1), (4608, 0.015, 0.0), (64, 1e-7, 1e3),
                                      (16, 30.0, None), (2, 2.0**-30, 2.0**-40), (5000, 1.0, None), (3, 0.0, None),
                                      (8, 1.0, 2.0**20), (300, 0.1, 2.0**12)]:  # the bias sets the bits
        w = torch.randn(7, fan_in, generator=g, dtype=torch.float64) * scale
        b = None if bias_scale is None else torch.randn(7, generator=g, dtype=torch.float64) * bias_scale
        cases.append((w, b))
    w = torch.full((3, 8), 0.5**10, dtype=torch.float64)  # sums at a power of two: bound exactly at the limit
    cases.append((w, None))
    # a bias one unit above the limit at the top bits: its lower bound passes, the rounded bound does not
    top = fp.MAX_WEIGHT_FRAC_BITS + fp.ACT_FRAC_BITS
    cases.append((torch.zeros(1, 4, dtype=torch.float64), torch.tensor([(fp.ACC_LIMIT + 1) * 2.0**-top], dtype=torch.float64)))
    for w, b in cases:
        expected = _frac_bits_by_full_scan(w, b)
        if expected is None:
            with pytest.raises(ValueError, match="too large"):
                choose_frac_bits(w, b, "layer")
        else:
            assert choose_frac_bits(w, b, "layer") == expected


# --- scheme w8: 8-bit weights, integer products of the inputs' byte digits ---------------------


def reference_conv_w8(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Scheme w8's definition with Python integers: ``round(2^-f_o sum w8 a) + round(2^16 b)``."""
    from gnn_lic.models.fixed_point.int8 import int8_weights

    w = conv.weight.detach().double()
    if isinstance(conv, CheckerboardMaskedConv2d):
        w = w * conv.mask.double()
    O = w.shape[0]
    w8, f = int8_weights(w.reshape(O, -1))
    cols = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # (B, K, L)
    B, _, L = cols.shape
    out = torch.empty(B, O, L, dtype=torch.float64)
    rows = [[int(v) for v in r] for r in w8.tolist()]
    bias = [0] * O if conv.bias is None else [round(Fraction(float(b)) * 2**16) for b in conv.bias.detach().double()]
    for b in range(B):
        for j, col in enumerate(cols[b].t().tolist()):
            for o in range(O):
                acc = sum(wi * int(ci) for wi, ci in zip(rows[o], col))
                out[b, o, j] = round(Fraction(acc, 2 ** int(f[o])) if f[o] >= 0 else Fraction(acc * 2 ** -int(f[o]))) \
                    + bias[o]
    Ho = (x.shape[2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
    return out.clamp(-fp.ACT_MAX, fp.ACT_MAX).reshape(B, O, Ho, L // Ho)


@pytest.fixture(params=["digits", "onednn", "float64"])
def w8_products(request, monkeypatch):
    """Scheme w8's CPU products forced to the signed byte digits (``torch._int_mm``), to oneDNN's seven-bit
    digits (for every digit count they can hold, not only the ones that pay) or to float64 products of the
    whole inputs; the runs other than ``digits`` fail if they reach ``torch._int_mm``."""
    from gnn_lic.models.fixed_point import int8, onednn

    monkeypatch.setattr(int8, "W8_PRODUCTS", request.param)
    if request.param == "onednn":
        if not onednn.available():
            pytest.skip("this PyTorch has no exact oneDNN byte product")
        monkeypatch.setattr(onednn, "FAST_PLANES", onednn.MAX_PLANES)
        monkeypatch.setattr(onednn, "WINOGRAD_PLANES", onednn.MAX_PLANES)
    if request.param != "digits":
        def refuse(*args, **kwargs):
            raise AssertionError(f"torch._int_mm called with {request.param} products")

        monkeypatch.setattr(torch, "_int_mm", refuse)
    return request.param


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "5x5-depthwise"])
def test_w8_conv_equals_its_definition_in_python_integers(kind, w8_products):
    conv = _seeded(_conv(kind), seed=11)
    f = fp.FixedConv2d(conv, kind, int8=True)
    assert f.int8 and f.weight8.abs().max() <= 127
    g = torch.Generator().manual_seed(12)
    for B, H, W, scale in [(1, 5, 6, 3.0), (2, 4, 5, 2.0**14)]:
        x = fp.to_act(torch.randn(B, f.in_channels, H, W, generator=g) * scale)
        x[0, :, 0, 0] = fp.ACT_MAX  # the digits' extremes
        x[-1, :, -1, -1] = -fp.ACT_MAX
        assert torch.equal(f(x.clone()), reference_conv_w8(conv, x)), (kind, B, H, W)


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "5x5-depthwise"])
def test_w8_conv_with_fewer_digits_equals_its_definition(kind, w8_products):
    """Inputs that fit in 1, 2 or 3 signed bytes are split into that many digits: same integers."""
    from gnn_lic.models.fixed_point.int8 import digit_planes

    conv = _seeded(_conv(kind), seed=18)
    f = fp.FixedConv2d(conv, kind, int8=True)
    g = torch.Generator().manual_seed(19)
    for planes, top in [(1, 127), (2, 2**15 - 1), (3, 2**23 - 1)]:
        x = torch.randint(-top, top + 1, (1, f.in_channels, 4, 5), generator=g).double()
        x[0, 0, 0, 0], x[0, -1, -1, -1] = top, -top - 1  # the digits' extremes
        assert digit_planes(float(x.min()), float(x.max())) == planes
        assert torch.equal(f(x.clone()), reference_conv_w8(conv, x)), (kind, planes)


@pytest.mark.parametrize("kind", ["1x1", "3x3", "3x3-stride2"])
def test_w8_conv_with_all_weights_zero_gives_its_bias(kind, w8_products):
    """No tap in use (a pruned or zeroed layer): every kernel gives the definition, the bias alone."""
    conv = _seeded(_conv(kind), seed=23)
    with torch.no_grad():
        conv.weight.zero_()
    f = fp.FixedConv2d(conv, kind, int8=True)
    x = fp.to_act(torch.randn(2, f.in_channels, 5, 6, generator=torch.Generator().manual_seed(24)) * 3)
    out = f(x.clone())
    assert torch.equal(out, reference_conv_w8(conv, x)) and out.abs().max() > 0


def test_w8_depthwise_keeps_the_float64_products():
    conv = _seeded(_conv("5x5-depthwise"), seed=13)
    f = fp.FixedConv2d(conv, "dw", int8=True)
    x = fp.to_act(torch.randn(1, 6, 5, 7, generator=torch.Generator().manual_seed(14)) * 5)
    assert not f.int8 and torch.equal(f(x.clone()), reference_conv(f, x))


def test_w8_weights_use_the_byte_and_are_exact_powers():
    from gnn_lic.models.fixed_point.int8 import int8_weights

    g = torch.Generator().manual_seed(15)
    w = torch.randn(64, 30, generator=g, dtype=torch.float64) * torch.logspace(-6, 3, 64, dtype=torch.float64)[:, None]
    w[5] = 0.0
    w8, f = int8_weights(w)
    top = w8.abs().amax(1)
    assert top.max() <= 127 and bool((top[torch.arange(64) != 5] >= 64).all()) and top[5] == 0
    for o in (0, 17, 63):  # f_o is the largest exponent that keeps the row within 127
        assert round(Fraction(float(w[o].abs().max())) * 2 ** (int(f[o]) + 1)) > 127
        assert w8[o].tolist() == [round(Fraction(float(v)) * 2 ** int(f[o])) for v in w[o]]


def test_w8_digits_rebuild_every_activation():
    from gnn_lic.models.fixed_point.int8 import DIGIT_OFFSET, byte_digits, digit_offset

    g = torch.Generator().manual_seed(16)
    a = torch.cat([torch.randint(-fp.ACT_MAX, fp.ACT_MAX + 1, (5000,), generator=g).double(),
                   torch.tensor([fp.ACT_MAX, -fp.ACT_MAX, 0, -1, 127, 128, -128, -129, 255, 256])])
    d = byte_digits(a).long()
    assert d.dtype == torch.long and d.shape == (4, a.numel())
    rebuilt = d[0] + 256 * d[1] + 256**2 * d[2] + 256**3 * d[3] + DIGIT_OFFSET
    assert torch.equal(rebuilt, a.long())
    for planes in (1, 2, 3):  # integers within p signed bytes, split into p digits
        top = 2 ** (8 * planes - 1)
        b = torch.cat([a[a.abs() < top], torch.tensor([top - 1.0, -top, 0.0])])
        d = byte_digits(b, planes).long()
        assert d.shape == (planes, b.numel()) and int(d.min()) >= -128 and int(d.max()) <= 127
        rebuilt = sum(256**k * d[k] for k in range(planes)) + digit_offset(planes)
        assert torch.equal(rebuilt, b.long()), planes


def test_w8_products_on_other_devices_are_the_same_integers():
    """Off the CPU the products come from float64: the same integers as ``torch._int_mm``."""
    from gnn_lic.models.fixed_point.int8 import int8_products

    g = torch.Generator().manual_seed(17)
    w = torch.randint(-127, 128, (9, 3000), generator=g, dtype=torch.int8)
    c = torch.randint(-128, 128, (3000, 40), generator=g, dtype=torch.int8)
    w[0], c[:, 0] = 127, -128  # the largest sum
    exact = w.long() @ c.long()
    assert torch.equal(int8_products(w, c).long(), exact)
    assert torch.equal((w.double() @ c.double()).to(torch.int32).long(), exact)


@pytest.mark.parametrize("K", [1, 2, 3, 7, 8, 17, 100])
def test_w8_products_of_columns_and_transposed_weights_are_exact(K):
    """The layers multiply columns by a transposed view of the weights; one input channel (K = 1)
    included, whose (1, N) view ``torch._int_mm`` misreads."""
    from gnn_lic.models.fixed_point.int8 import int8_products

    g = torch.Generator().manual_seed(K)
    for M, N in [(1, 5), (3, 2), (40, 17), (96, 64)]:
        w = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
        c = torch.randint(-128, 128, (M, K), generator=g, dtype=torch.int8)
        assert torch.equal(int8_products(c, w.t()).long(), c.long() @ w.t().long()), (M, K, N)


def test_w8_products_in_blocks_of_rows_are_the_same_integers(monkeypatch):
    """A large output is computed in blocks of rows: the same integers as one product."""
    from gnn_lic.models.fixed_point import int8

    g = torch.Generator().manual_seed(18)
    w = torch.randint(-127, 128, (700, 64), generator=g, dtype=torch.int8)
    c = torch.randint(-128, 128, (64, 50), generator=g, dtype=torch.int8)
    whole = int8.int8_products(w, c)
    monkeypatch.setattr(int8, "INT_MM_BLOCK_BYTES", 4 * 50 * 3)  # blocks of 256 rows: 3 blocks, the last partial
    assert torch.equal(int8.int8_products(w, c), whole)
    assert torch.equal(whole.long(), w.long() @ c.long())


def test_w8_products_are_chosen_once_per_process_and_by_the_environment(monkeypatch):
    """``auto`` times the kernels once and keeps the answer; ``digits``/``onednn``/``float64`` force one;
    other devices always use float64; anything else is refused."""
    from gnn_lic.models.fixed_point import int8, onednn

    kinds = ["digits", "float64"] + (["onednn"] if onednn.available() else [])
    for forced in kinds:
        monkeypatch.setattr(int8, "W8_PRODUCTS", forced)
        assert int8.w8_products(torch.device("cpu")) == forced
        assert int8.w8_products(torch.device("cuda")) == "float64"
    monkeypatch.setattr(int8, "W8_PRODUCTS", "auto")
    monkeypatch.setattr(int8, "_fastest", None)
    choice = int8.w8_products(torch.device("cpu"))
    assert choice in kinds and int8._fastest == choice
    other = next(k for k in kinds if k != choice)
    monkeypatch.setattr(int8, "_fastest", other)  # kept, not timed again
    assert int8.w8_products(torch.device("cpu")) == other
    monkeypatch.setattr(int8, "W8_PRODUCTS", "int")
    with pytest.raises(ValueError, match="GNN_LIC_W8_PRODUCTS must be auto, digits, onednn, float64"):
        int8.w8_products(torch.device("cpu"))


def test_a_slow_byte_product_is_timed_once_and_a_fast_one_three_times(monkeypatch):
    """``auto``'s timing stops at the first timed call of a kernel far slower than float64 (``torch._int_mm``
    without byte dot products), and picks the byte digits when they are the fastest; each kernel's first
    call (its one-time set-up) is not timed."""
    import time

    from gnn_lic.models.fixed_point import int8

    calls = []

    def float64_product(a, b):  # a fixed time, whatever the host's load
        time.sleep(0.01)

    def slow(a, b):  # far past GIVE_UP times float64's
        calls.append(1)
        time.sleep(1.0)

    monkeypatch.setattr(int8, "GIVE_UP", 20.0)
    monkeypatch.setattr(torch, "mm", float64_product)
    monkeypatch.setattr(torch, "_int_mm", slow)
    assert int8._time_products() in ("onednn", "float64") and len(calls) == 2  # the untimed call and one timed
    calls.clear()
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(1))
    assert int8._time_products() == "digits" and len(calls) == 4


def test_a_byte_product_slow_only_on_its_first_call_is_chosen(monkeypatch):
    """A kernel whose first call sets itself up (past ``GIVE_UP`` times float64's product, as oneDNN's AMX
    kernels on their first call) and then multiplies faster than float64 is chosen."""
    import time

    from gnn_lic.models.fixed_point import int8

    calls = []

    def float64_product(a, b):
        time.sleep(0.01)

    def set_up_then_fast(a, b):
        calls.append(1)
        time.sleep(0.5 if len(calls) == 1 else 0.001)

    monkeypatch.setattr(int8, "GIVE_UP", 20.0)
    monkeypatch.setattr(torch, "mm", float64_product)
    monkeypatch.setattr(torch, "_int_mm", set_up_then_fast)
    assert int8._time_products() == "digits" and len(calls) == 4


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "5x5-depthwise"])
def test_w8_conv_gives_the_same_output_with_digit_and_float64_products(kind, monkeypatch):
    """The CPU kernels of scheme w8 are the same function: every digit count, batches, a table read in
    the same pass, and the float64 operands made once and then reused."""
    from gnn_lic.models.fixed_point import int8, onednn
    from gnn_lic.models.fixed_point.tables import FixedTable, gelu_table

    modes = ("digits", "float64") + (("onednn",) if onednn.available() else ())
    monkeypatch.setattr(onednn, "FAST_PLANES", onednn.MAX_PLANES)  # oneDNN for every digit count it holds
    monkeypatch.setattr(onednn, "WINOGRAD_PLANES", onednn.MAX_PLANES)

    conv = _seeded(_conv(kind), seed=21)
    f = fp.FixedConv2d(conv, kind, int8=True)
    table = FixedTable(gelu_table(), "gelu")
    g = torch.Generator().manual_seed(22)
    for top in (127, 2**15 - 1, 2**23 - 1, fp.ACT_MAX):
        x = torch.randint(-int(top), int(top) + 1, (2, f.in_channels, 5, 6), generator=g).double()
        x[0, 0, 0, 0], x[1, -1, -1, -1] = top, -top
        out = {}
        for mode in modes:
            monkeypatch.setattr(int8, "W8_PRODUCTS", mode)
            out[mode] = (f(x.clone()), f(x.clone(), table))
        for mode in modes[1:]:
            assert torch.equal(out["digits"][0], out[mode][0]), (kind, top, mode)
            assert torch.equal(out["digits"][1], out[mode][1]), (kind, top, mode)
    held = [v for v in vars(f).values() if isinstance(v, torch.Tensor) and v.numel() >= f._w8.numel()]
    assert [v.dtype for v in held] == [torch.int8]  # the float64 kernels' operands are not kept


@pytest.mark.parametrize("int8", [False, True])
def test_3x3_layers_take_winograd_only_where_it_is_exact(int8, monkeypatch):
    """Winograd's F(2x2, 3x3) in the float64 kernels (both schemes): the definition's output bit for bit;
    inputs above the layer's exact range take the shifted views instead."""
    from gnn_lic import compiled
    from gnn_lic.models.fixed_point import conv as conv_module
    from gnn_lic.models.fixed_point import int8 as int8_module
    from gnn_lic.nn import winograd

    monkeypatch.setattr(int8_module, "W8_PRODUCTS", "float64")
    monkeypatch.setattr(compiled, "_enabled", True)  # Winograd runs with the compiled loops only
    calls = []
    real = conv_module.winograd_conv3x3
    monkeypatch.setattr(conv_module, "winograd_conv3x3", lambda *a, **k: calls.append(1) or real(*a, **k))
    conv = _seeded(nn.Conv2d(12, 10, 3, padding=1), seed=31)
    f = fp.FixedConv2d(conv, "c3", int8=int8)
    x = fp.to_act(torch.randn(2, 12, 7, 9, generator=torch.Generator().manual_seed(32)) * 6)  # odd: cropped tiles
    x[0, :, 0, 0], x[1, :, -1, -1] = 2.0**24, -(2.0**24)
    reference = reference_conv_w8(conv, x) if int8 else reference_conv(f, x)
    monkeypatch.setattr(winograd, "MIN_TILE_PRODUCTS", 1 << 62)
    assert torch.equal(f(x.clone()), reference) and not calls
    monkeypatch.setattr(winograd, "MIN_TILE_PRODUCTS", 0)
    assert torch.equal(f(x.clone()), reference) and len(calls) == 1
    assert f._wino_limit > 2.0**24  # far below 2^53 at 12 input channels
    f._wino_limit = 2.0**20  # a smaller exact range: these inputs leave it
    assert torch.equal(f(x.clone()), reference) and len(calls) == 1


def test_w8_refuses_a_fan_in_beyond_exact_float64():
    from gnn_lic.models.fixed_point.int8 import check_fan_in

    check_fan_in(30000, "ok")
    with pytest.raises(ValueError, match="too large"):
        check_fan_in(40000, "big")


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 5, 1),  # pointwise
    nn.Conv2d(6, 5, 3, padding=1),  # taps
    nn.Conv2d(6, 6, 5, padding=2, groups=6),  # depthwise
    nn.Conv2d(6, 5, 5, stride=2, padding=2),  # unfold
    CheckerboardMaskedConv2d(6, 5, 5, padding=2),  # taps, half of them skipped
])
def test_integer_weights_are_read_back_from_the_one_copy_held(conv):
    """A converted layer holds its weights once, as the kernels' operands; ``weight`` gives back
    exactly the integers of the conversion, in the layout ``(out, in/groups * kh * kw)``."""
    torch.manual_seed(0)
    f = fp.FixedConv2d(conv)
    w = conv.weight.detach().double()
    if isinstance(conv, CheckerboardMaskedConv2d):
        w = w * conv.mask.double()
    expected = torch.round(w.reshape(w.shape[0], -1) * 2.0**f.frac_bits)
    assert torch.equal(f.weight, expected)
    held = [v for v in vars(f).values() if isinstance(v, torch.Tensor) and v.numel() >= expected.numel()]
    assert len(held) == 1  # the kernels' operand only


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 5, 1),  # pointwise
    nn.Conv2d(6, 5, 3, padding=1),  # taps
    nn.Conv2d(6, 5, 5, stride=2, padding=2),  # unfold
    CheckerboardMaskedConv2d(6, 5, 5, padding=2),  # taps, half of them skipped
])
def test_w8_layers_hold_their_8_bit_weights_only(conv):
    """A scheme-w8 layer keeps one int8 copy of its weights (no float64 operands of fx16);
    ``weight8`` reads back exactly the integers of the conversion."""
    from gnn_lic.models.fixed_point.int8 import int8_weights

    torch.manual_seed(0)
    f = fp.FixedConv2d(conv, int8=True)
    w = conv.weight.detach().double()
    if isinstance(conv, CheckerboardMaskedConv2d):
        w = w * conv.mask.double()
    expected, _ = int8_weights(w.reshape(w.shape[0], -1))
    assert torch.equal(f.weight8, expected)
    # tensors of at least a third of the weights' size (the checkerboard's operand keeps 12 of 25 taps)
    held = [v for v in vars(f).values() if isinstance(v, torch.Tensor) and v.numel() >= expected.numel() // 3]
    assert [v.dtype for v in held] == [torch.int8]
    with pytest.raises(AttributeError, match="8-bit weights only"):
        f.weight
