"""Scheme w8's products through oneDNN's seven-bit digits: the same integers as int64 products.

The digits must rebuild every input they hold, the kernel's sums must be exact however
large (chunks of the fan-in), a layer must take the kernel exactly where its rule says and
give the bits of the float64 products, and a PyTorch without a working kernel must be
detected rather than trusted.
"""

import platform

import pytest
import torch

from gnn_lic import compiled
from gnn_lic.models import fixed_point as fp
from gnn_lic.models.fixed_point import int8, onednn

needs_kernel = pytest.mark.skipif(not onednn.available(), reason="this PyTorch has no exact oneDNN byte product")


@pytest.mark.parametrize("planes", [1, 2, 3, 4])
def test_seven_bit_digits_rebuild_every_input_they_hold(planes):
    top = 2 ** (7 * planes - 1)
    g = torch.Generator().manual_seed(planes)
    a = torch.cat([torch.randint(-top, top, (3000,), generator=g).double(),
                   torch.tensor([top - 1.0, -top, 0.0, -1.0, 63.0, -64.0], dtype=torch.float64)])
    assert onednn.seven_bit_planes(float(a.min()), float(a.max())) == planes
    d = onednn.seven_bit_digits(a, planes)
    assert d.dtype == torch.uint8 and d.shape == (planes, a.numel()) and int(d.max()) <= 127
    rebuilt = sum(128**k * d[k].long() for k in range(planes)) - onednn.seven_bit_offset(planes)
    assert torch.equal(rebuilt, a.long())
    assert onednn.seven_bit_planes(-top - 1.0, 0.0) != planes and onednn.seven_bit_planes(0.0, float(top)) != planes


def test_inputs_beyond_four_seven_bit_digits_are_refused():
    assert onednn.seven_bit_planes(0.0, 2.0**27 - 1) == 4
    assert onednn.seven_bit_planes(0.0, 2.0**27) is None
    assert onednn.seven_bit_planes(-(2.0**27) - 1, 0.0) is None


@needs_kernel
@pytest.mark.parametrize("K, top", [(1, 127), (5, 127), (1040, 127), (1041, 127), (2087, 127), (4200, 31), (9000, 20)])
def test_the_kernel_products_are_exact_at_any_fan_in(K, top):
    """1041 terms of 127 * 127 sum to an odd number above 2^24, which float32 cannot hold: exact only
    because the fan-in is cut into chunks. Small weights go uncut over long fan-ins, with sums near 2^24."""
    g = torch.Generator().manual_seed(K)
    M, N = 37, 19
    cols = torch.randint(0, 128, (M, K), generator=g, dtype=torch.uint8)
    w8 = torch.randint(-top, top + 1, (N, K), generator=g, dtype=torch.int8)
    cols[0], w8[0], w8[1] = 127, top, -top  # the largest sums of both signs
    got = onednn.u8_products(cols, onednn._pack(w8))
    assert got.dtype == torch.int32 and torch.equal(got.long(), cols.long() @ w8.long().t())
    if top * K <= onednn.CHUNK_WEIGHT_SUM:
        assert len(onednn._pack(w8)) == 1


@pytest.mark.parametrize("seed", range(6))
def test_fan_in_chunks_are_the_fewest_exact_ones(seed):
    """Brute force: the chunks cover the fan-in in order, every output's positive and negative weights in a
    chunk stay within the limit, and no chunk could take one more term."""
    g = torch.Generator().manual_seed(seed)
    N, K = 1 + seed, 300 + 1700 * seed
    w8 = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    if seed % 2:  # mostly one sign in some outputs, as trained layers have
        w8[0] = w8[0].abs()
        w8[-1] = -w8[-1].abs()
    w8[:, : K // 3] //= 1 + seed  # smaller weights at the start: chunks of varying length
    chunks = onednn.fan_in_chunks(w8)
    assert chunks[0][0] == 0 and chunks[-1][1] == K and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
    w = w8.long()

    def fits(k0, k1):
        part = w[:, k0:k1]
        return bool((part.clamp(min=0).sum(1) <= onednn.CHUNK_WEIGHT_SUM).all()
                    and ((-part).clamp(min=0).sum(1) <= onednn.CHUNK_WEIGHT_SUM).all())

    for k0, k1 in chunks:
        assert k1 > k0 and fits(k0, k1)
        assert k1 == K or not fits(k0, k1 + 1)
    assert 127 * onednn.CHUNK_WEIGHT_SUM <= 2**24 < 127 * (onednn.CHUNK_WEIGHT_SUM + 1)


def _conv_and_input(top: int, seed: int, channels: int = 40, size=(6, 7)):
    g = torch.Generator().manual_seed(seed)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
    x = torch.randint(-top, top, (2, channels, *size), generator=g).double()
    x[0, 0, 0, 0], x[1, -1, -1, -1] = top - 1, -top
    return fp.FixedConv2d(conv, "conv", int8=True), x


@needs_kernel
@pytest.mark.parametrize("winograd", [False, True])
@pytest.mark.parametrize("planes", [1, 2, 3, 4, 5])
def test_layers_take_the_kernel_where_their_inputs_have_few_digits(planes, winograd, monkeypatch):
    """Up to ``FAST_PLANES`` seven-bit digits (``WINOGRAD_PLANES`` for a layer whose float64 products run
    Winograd's) the layer multiplies through oneDNN, beyond it in float64; the output is the float64
    products' either way."""
    if winograd and not compiled.enabled():
        pytest.skip("Winograd's products need the compiled loops")
    shape = dict(channels=128, size=(32, 64)) if winograd else {}
    f, x = _conv_and_input(2 ** (7 * planes - 1), planes, **shape)
    assert f._winograd_applies(x) is winograd
    monkeypatch.setattr(int8, "W8_PRODUCTS", "float64")
    expected = f(x.clone())
    calls = []
    real = onednn.u8_products
    monkeypatch.setattr(onednn, "u8_products", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(int8, "W8_PRODUCTS", "onednn")
    assert torch.equal(f(x.clone()), expected)
    assert bool(calls) is (planes <= (onednn.WINOGRAD_PLANES if winograd else onednn.FAST_PLANES))


@needs_kernel
def test_a_layer_packs_its_weights_once_and_again_after_moving(monkeypatch):
    f, x = _conv_and_input(50, seed=7)
    monkeypatch.setattr(int8, "W8_PRODUCTS", "onednn")
    packs = []
    real = onednn._pack
    monkeypatch.setattr(onednn, "_pack", lambda w: packs.append(1) or real(w))
    first = f(x.clone())
    assert torch.equal(f(x.clone()), first) and len(packs) == 1
    f.to(torch.device("cpu"))
    assert torch.equal(f(x.clone()), first) and len(packs) == 2


def test_a_kernel_that_fails_or_is_wrong_is_not_used(monkeypatch):
    def broken(*args):
        raise RuntimeError("no such kernel")

    for kernel in (broken, lambda x, w, ones, zeros: torch.zeros(x.shape[0], ones.numel()) + 1):
        monkeypatch.setattr(onednn, "_available", None)
        monkeypatch.setattr(onednn, "_kernel", kernel)
        monkeypatch.setattr(onednn, "_pack", lambda w8: [(0, w8.shape[1], None, torch.ones(w8.shape[0]), None)])
        assert onednn.available() is False
        monkeypatch.setattr(int8, "W8_PRODUCTS", "onednn")
        with pytest.raises(RuntimeError, match="no exact oneDNN byte product"):
            int8.w8_products(torch.device("cpu"))
        monkeypatch.setattr(int8, "W8_PRODUCTS", "auto")
        monkeypatch.setattr(int8, "_fastest", None)
        assert int8.w8_products(torch.device("cpu")) in ("digits", "float64")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not torch.backends.mkldnn.is_available(),
                    reason="oneDNN's byte kernel is checked on x86-64 builds with oneDNN")
def test_the_kernel_is_found_exact_on_x86_builds_with_onednn():
    """Where PyTorch ships oneDNN on x86-64 the check must pass: a failing one would silently send every
    layer to the float64 products (and skip the tests above)."""
    assert onednn.available()


@pytest.mark.parametrize("products", ["digits", "onednn"])
@pytest.mark.parametrize("kernel, padding", [(3, 1), (5, 2), ((1, 3), (0, 1)), (1, 0)])
def test_digit_products_in_bands_of_rows_give_the_same_outputs(products, kernel, padding, monkeypatch):
    """Columns over the size limit are made and multiplied band by band of output rows (the rows'
    inputs and their zero padding): the same bits as the whole map, for every band height."""
    from gnn_lic.models.fixed_point import conv8 as fconv

    if products == "onednn" and not onednn.available():
        pytest.skip("this PyTorch has no exact oneDNN byte product")
    monkeypatch.setattr(int8, "W8_PRODUCTS", products)
    g = torch.Generator().manual_seed(9)
    layer = torch.nn.Conv2d(12, 7, kernel, padding=padding)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.3)
    f = fp.FixedConv2d(layer, "conv", int8=True)
    x = torch.randint(-(2**12), 2**12, (2, 12, 11, 9), generator=g).double()
    whole = f(x.clone())
    per_row = 2 * 9 * len(f._taps8) * 12  # bytes of one output row's columns (two digits here)
    for rows in (1, 2, 4, 10):
        monkeypatch.setattr(fconv, "MAX_COLUMN_BYTES", rows * per_row)
        assert torch.equal(f(x.clone()), whole), rows
