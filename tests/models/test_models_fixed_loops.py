"""The compiled elementwise passes of the fixed-point networks give the PyTorch path's bits.

Each case runs the same function with the compiled loops on and off
(:func:`gnn_lic.compiled.set_enabled`) and asks for identical tensors, on inputs that
reach every branch: half-integers (round half to even), values beyond the clamp bound,
table arguments at and beyond both ends, zeros of both signs, strided views and batches.
"""

import pytest
import torch

from gnn_lic import compiled
from gnn_lic.models import fixed_point as fp
from gnn_lic.models.fixed_point import kernels
from gnn_lic.models.fixed_point.tables import TABLE_RANGE

LIM = TABLE_RANGE << fp.ACT_FRAC_BITS


def _both(fn):
    previous = compiled.set_enabled(True)
    try:
        on = fn()
        compiled.set_enabled(False)
        off = fn()
    finally:
        compiled.set_enabled(previous)
    return on, off


def _same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.view(torch.int64), b.view(torch.int64))  # bit for bit, -0.0 included


def _accumulators(shape, seed, scale=2.0**20):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    flat = x.view(-1)
    flat[::7] = torch.round(flat[::7]) + 0.5  # ties: half to even
    flat[1::11] = -torch.round(flat[1::11]).abs() - 0.5
    flat[2::13] *= 2.0**12  # beyond the activation bound
    flat[3::17] = -0.25  # rounds to -0.0
    return x


@pytest.fixture(autouse=True)
def _big_enough(monkeypatch):
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 1)  # small maps take the compiled loops too


def test_the_compiled_loops_are_taken_on_the_cpu():
    x = _accumulators((4, 4096), 0)
    assert kernels._use_compiled(x) == compiled.enabled()
    assert not kernels._use_compiled(x.float())


@pytest.mark.parametrize("shape", [(3, 50, 70), (1, 1), (2, 4096 * 5 + 3)])
def test_round_clamp_matches_torch(shape):
    x = _accumulators(shape, sum(shape))
    on, off = _both(lambda: kernels.round_clamp_(x.clone(), fp.ACT_MAX))
    _same_bits(on, off)
    assert torch.equal(off, torch.round(x).clamp(-fp.ACT_MAX, fp.ACT_MAX))
    if x.numel() > 1:  # the inputs reach both bounds
        assert on.eq(-fp.ACT_MAX).any() and on.eq(fp.ACT_MAX).any()


def _table_inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.round(torch.randn(*shape, generator=g, dtype=torch.float64) * LIM / 2)
    flat = x.view(-1)
    flat[:6] = torch.tensor([LIM, -LIM, LIM + 1, -LIM - 1, 3.0 * LIM, -5.0 * LIM], dtype=torch.float64)
    return x


@pytest.mark.parametrize("kind", ["gelu", "tanh"])
@pytest.mark.parametrize("tails", [True, False])
def test_table_lookup_matches_torch(kind, tails):
    table = fp.FixedTable(fp.gelu_table() if kind == "gelu" else fp.tanh_table(), kind)
    x = _table_inputs((2, 3, 17, 19), 1)
    if not tails:
        x = x.clamp(-LIM, LIM)
    on, off = _both(lambda: table(x))
    _same_bits(on, off)
    strided = x[:, :, ::2, 1::3]  # a view, not contiguous
    on, off = _both(lambda: table(strided))
    _same_bits(on, off)
    assert torch.equal(on, table(strided.contiguous()))


@pytest.mark.parametrize("kind", ["gelu", "tanh"])
def test_the_coarse_grid_interpolated_equals_the_dense_table_everywhere(kind):
    """The compiled loop interpolates the 2**-8 grid; the PyTorch path reads the dense table."""
    table = fp.FixedTable(fp.gelu_table() if kind == "gelu" else fp.tanh_table(), kind)
    x = torch.arange(-LIM - 3, LIM + 4, dtype=torch.float64)  # every activation the table holds, and beyond
    on, off = _both(lambda: table(x))
    _same_bits(on, off)
    assert torch.equal(on[3:-3], table.dense)


@pytest.mark.parametrize("batch", [1, 3])
def test_table_gate_matches_torch(batch):
    table = fp.FixedTable(fp.gelu_table(), "gelu")
    both = torch.cat([_table_inputs((batch, 8, 300), 2), _accumulators((batch, 8, 300), 3).round()], 1)
    a, b = both.reshape(batch, 2, 8, 300).unbind(1)  # views of one map, as the gated FFN takes them
    scale = 2.0**-fp.ACT_FRAC_BITS

    def gate():
        return kernels.table_gate(a, b, table, scale, fp.ACT_MAX)

    on, off = _both(gate)
    _same_bits(on, off)
    want = (table(a) * b * scale).round().clamp(-fp.ACT_MAX, fp.ACT_MAX)  # its defining operations
    assert torch.equal(off, want)
    assert on.abs().eq(fp.ACT_MAX).any()


def test_gated_ffn_is_the_same_with_the_loops_on_and_off():
    from gnn_lic.models.layers import GatedFFN  # noqa: PLC0415

    torch.manual_seed(0)
    ffn = GatedFFN(24, expansion=2).eval()
    fixed = fp.to_fixed(ffn)
    x = fp.to_act(torch.randn(2, 24, 9, 11) * 3)
    on, off = _both(lambda: fixed(x))
    _same_bits(on, off)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
@pytest.mark.parametrize("with_bias", [True, False])
def test_combine_requantize_matches_torch_and_integers(planes, with_bias):
    g = torch.Generator().manual_seed(planes)
    O, L = 5, 300
    sums = torch.randint(-(2**22), 2**22, (planes, L, O), generator=g, dtype=torch.int32)  # rows: pixels
    offset = torch.randint(-(2**30), 2**30, (O, 1), generator=g).double()
    scale = torch.tensor([2.0**-e for e in (0, 3, 9, 17, 24)], dtype=torch.float64).reshape(O, 1)
    bias = torch.randint(-(2**20), 2**20, (O, 1), generator=g).double() if with_bias else None
    on, off = _both(lambda: kernels.combine_requantize(sums, offset, scale, bias, fp.ACT_MAX))
    _same_bits(on, off)
    # the same in Python integers: exact sums, round half to even, clamp
    for o in range(O):
        for j in range(0, L, 37):
            acc = sum(256**k * int(sums[k, j, o]) for k in range(planes)) + int(offset[o])
            v = round(acc * float(scale[o])) if float(scale[o]) == 1.0 else round(acc / int(1 / float(scale[o])))
            v = v + (int(bias[o]) if with_bias else 0)
            assert off[o, j] == max(-fp.ACT_MAX, min(fp.ACT_MAX, v))


@pytest.mark.parametrize("shape", [(1, 24, 9, 11), (2, 192, 5, 70), (1, 7, 768, 1), (1, 3, 1, 1)])
def test_layer_norm_matches_torch(shape):
    from gnn_lic.nn.blocks import LayerNorm2d  # noqa: PLC0415

    g = torch.Generator().manual_seed(shape[1])
    norm = LayerNorm2d(shape[1])
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=g))
        norm.bias.copy_(torch.randn(shape[1], generator=g))
    fixed = fp.FixedLayerNorm(norm)
    x = fp.to_act(torch.randn(*shape, generator=g) * torch.rand(shape[0], 1, *shape[2:], generator=g) * 50)
    x[..., 0, 0] = 0  # a constant pixel: zero variance
    if x.shape[-1] > 1:
        x[0, :, -1, -1] = fp.ACT_MAX  # the largest activation in every channel
    on, off = _both(lambda: fixed(x))
    _same_bits(on, off)
    assert torch.allclose(fp.from_act(off, torch.float64), norm(fp.from_act(x, torch.float64).float()).double(),
                          atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
@pytest.mark.parametrize("kernel, padding, taps", [
    ((3, 3), (1, 1), list(range(9))),
    ((5, 5), (2, 2), [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]),  # a checkerboard context's taps in use
    ((1, 3), (0, 0), [0, 2]),  # no padding, a tap skipped
])
@pytest.mark.parametrize("seven_bit", [False, True])
def test_digit_columns_match_torch_and_their_definition(planes, kernel, padding, taps, seven_bit):
    from gnn_lic.models.fixed_point.int8 import byte_digits, digit_columns, digit_offset  # noqa: PLC0415
    from gnn_lic.models.fixed_point.onednn import seven_bit_digits, seven_bit_offset  # noqa: PLC0415

    g = torch.Generator().manual_seed(planes)
    bits, split = (7, seven_bit_digits) if seven_bit else (8, byte_digits)
    base, offset = 2**bits, (-seven_bit_offset(planes) if seven_bit else digit_offset(planes))
    top = 2 ** (bits * planes - 1)
    C, H, W = 5, 6, 7
    x = torch.randint(-top, top, (C, H, W), generator=g).double()
    x[0, 0, 0], x[-1, -1, -1] = top - 1, -top  # the digits' extremes
    on, off = _both(lambda: digit_columns(x, planes, kernel, padding, taps, seven_bit))
    assert on.dtype == (torch.uint8 if seven_bit else torch.int8) and torch.equal(on, off)
    (kh, kw), (ph, pw) = kernel, padding
    Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    cols = off.reshape(planes, Ho, Wo, len(taps), C).long()
    padded = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    for t, tap in enumerate(taps):  # row (k, i, j), column (t, c): digit k of the padded input under tap t
        dy, dx = divmod(tap, kw)
        window = padded[:, dy : dy + Ho, dx : dx + Wo]
        expected = split(window.reshape(C, -1), planes).reshape(C, planes, Ho, Wo).permute(1, 2, 3, 0)
        assert torch.equal(cols[:, :, :, t], expected.long()), (t, tap)
        rebuilt = sum(base**k * cols[k, :, :, t] for k in range(planes)) + offset
        assert torch.equal(rebuilt, window.permute(1, 2, 0).long())


@pytest.mark.parametrize("conv", [
    torch.nn.Conv2d(6, 5, 3, padding=1),
    torch.nn.Conv2d(6, 5, (3, 1), padding=(1, 0)),
    torch.nn.Conv2d(6, 5, 1),
    torch.nn.Conv2d(6, 5, 5, stride=2, padding=2),
])
@pytest.mark.parametrize("products", ["digits", "onednn", "float64"])
def test_w8_conv_is_the_same_with_the_loops_on_and_off(conv, products, monkeypatch):
    from gnn_lic.models.fixed_point import int8, onednn  # noqa: PLC0415

    if products == "onednn" and not onednn.available():
        pytest.skip("this PyTorch has no exact oneDNN byte product")
    monkeypatch.setattr(int8, "W8_PRODUCTS", products)
    monkeypatch.setattr(onednn, "FAST_PLANES", onednn.MAX_PLANES)
    monkeypatch.setattr(onednn, "WINOGRAD_PLANES", onednn.MAX_PLANES)
    torch.manual_seed(3)
    f = fp.FixedConv2d(conv, "conv", int8=True)
    x = fp.to_act(torch.randn(2, 6, 9, 11) * 40)
    # four byte digits, or four seven-bit ones (the most oneDNN's products take)
    x[0, :, 0, 0] = 2**27 - 1 if products == "onednn" else fp.ACT_MAX
    on, off = _both(lambda: f(x.clone()))
    _same_bits(on, off)


@pytest.mark.parametrize("kind", ["gelu", "tanh"])
def test_combine_requantize_reads_a_table_in_the_same_pass(kind):
    from gnn_lic.models.fixed_point.tables import FixedTable, gelu_table, tanh_table  # noqa: PLC0415

    table = FixedTable(gelu_table() if kind == "gelu" else tanh_table(), kind)
    g = torch.Generator().manual_seed(5)
    O, L, planes = 6, 400, 3
    sums = torch.randint(-(2**14), 2**14, (planes, L, O), generator=g, dtype=torch.int32)
    offset = torch.randint(-(2**20), 2**20, (O, 1), generator=g).double()
    scale = torch.tensor([2.0**-e for e in (0, 3, 5, 8, 10, 12)], dtype=torch.float64).reshape(O, 1)
    bias = torch.randint(-(2**19), 2**19, (O, 1), generator=g).double()
    on, off = _both(lambda: kernels.combine_requantize(sums, offset, scale, bias, fp.ACT_MAX, table))
    _same_bits(on, off)
    plain = kernels.combine_requantize(sums, offset, scale, bias, fp.ACT_MAX)
    assert plain.abs().max() > 2 * LIM and bool((plain.abs() < LIM).any())  # both sides of the table's range
    _same_bits(on, kernels.table_lookup(plain, table))


@pytest.mark.parametrize("products", ["digits", "float64"])
def test_w8_convolutions_read_the_next_gelu_in_their_own_pass(products, monkeypatch):
    from gnn_lic.models.fixed_point.blocks import FixedSequential  # noqa: PLC0415
    from gnn_lic.models.fixed_point.convert import to_fixed  # noqa: PLC0415
    from gnn_lic.models.layers import conv_stack  # noqa: PLC0415

    from gnn_lic.models.fixed_point import int8  # noqa: PLC0415

    monkeypatch.setattr(int8, "W8_PRODUCTS", products)
    torch.manual_seed(4)
    fixed = to_fixed(conv_stack([12, 16, 8, 4]), "stack", int8=True)
    assert isinstance(fixed, FixedSequential)
    assert [t is not None for _, t in fixed._steps] == [True, True, False]  # conv+GELU twice, the last conv alone
    x = fp.to_act(torch.randn(2, 12, 7, 9) * 3)
    one_by_one = x.clone()
    for layer in fixed.layers:
        one_by_one = layer(one_by_one)
    on, off = _both(lambda: fixed(x.clone()))
    _same_bits(on, one_by_one)
    _same_bits(off, one_by_one)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
@pytest.mark.parametrize("kernel, padding, taps", [
    ((3, 3), (1, 1), list(range(9))),
    ((5, 5), (2, 2), [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]),  # a checkerboard context's taps in use
    ((1, 3), (0, 0), [0, 2]),  # no padding (outputs narrower than the input), a tap skipped
    ((1, 1), (0, 0), [0]),  # pointwise
])
@pytest.mark.parametrize("rows, cols", [((0, 6), None), ((2, 5), None), ((0, 1), (2, 5))])
def test_digit_rows_are_the_digit_columns_transposed(planes, kernel, padding, taps, rows, cols):
    """Row (tap, channel), column (digit, output pixel): digit_columns' matrix transposed, digit by digit, for any
    band of output rows or columns, with the compiled loops on and off."""
    from gnn_lic.models.fixed_point.int8 import digit_columns, digit_rows  # noqa: PLC0415

    g = torch.Generator().manual_seed(planes + len(taps))
    top = 2 ** (8 * planes - 1)
    C, H, W = 5, 6, 7
    x = torch.randint(-top, top, (C, H, W), generator=g).double()
    x[0, 0, 0], x[-1, -1, -1] = top - 1, -top  # the digits' extremes
    on, off = _both(lambda: digit_rows(x, planes, kernel, padding, taps, rows, cols))
    assert on.dtype == torch.int8 and torch.equal(on, off)
    (kh, kw), (ph, pw) = kernel, padding
    Ho, Wo = H + 2 * ph - kh + 1, W + 2 * pw - kw + 1
    (i0, i1), (j0, j1) = rows, cols or (0, Wo)
    whole = digit_columns(x, planes, kernel, padding, taps).reshape(planes, Ho, Wo, len(taps) * C)
    expected = whole[:, i0:i1, j0:j1].permute(3, 0, 1, 2).reshape(len(taps) * C, -1)
    assert torch.equal(on, expected)


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
@pytest.mark.parametrize("table_kind", [None, "gelu"])
def test_combine_requantize_with_outputs_on_rows_is_the_same(planes, table_kind):
    """Digit sums with one row per output channel give the outputs of those with one row per pixel, into a
    view of a larger output too, with the compiled loops on and off."""
    from gnn_lic.models.fixed_point.tables import FixedTable, gelu_table  # noqa: PLC0415

    table = FixedTable(gelu_table(), "gelu") if table_kind else None
    g = torch.Generator().manual_seed(10 + planes)
    O, L = 6, 333
    sums = torch.randint(-(2**20), 2**20, (planes, L, O), generator=g, dtype=torch.int32)
    offset = torch.randint(-(2**28), 2**28, (O, 1), generator=g).double()
    scale = torch.tensor([2.0**-e for e in (0, 3, 9, 12, 17, 24)], dtype=torch.float64).reshape(O, 1)
    bias = torch.randint(-(2**19), 2**19, (O, 1), generator=g).double()
    pixels = kernels.combine_requantize(sums, offset, scale, bias, fp.ACT_MAX, table)
    by_rows = sums.permute(2, 0, 1).contiguous()  # (O, p, L)
    on, off = _both(lambda: kernels.combine_requantize(by_rows, offset, scale, bias, fp.ACT_MAX, table,
                                                       outputs_on_rows=True))
    _same_bits(on, pixels)
    _same_bits(off, pixels)
    wide = torch.full((O, L + 10), 7.0, dtype=torch.float64)
    into, into_off = _both(lambda: kernels.combine_requantize(by_rows, offset, scale, bias, fp.ACT_MAX, table,
                                                              outputs_on_rows=True, out=wide.clone()[:, 4 : 4 + L]))
    _same_bits(into, pixels)
    _same_bits(into_off, pixels)
