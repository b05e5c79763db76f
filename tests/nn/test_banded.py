"""Banded (no-grad) feed-forwards give the whole-map numbers bit for bit."""

import pytest
import torch
import torch.nn.functional as F

from gnn_lic.graph import GlobalGrid, LocalWindow, TopK
from gnn_lic.models.layers import GatedTransformCNN, ParameterAggregationBlock
from gnn_lic.nn import banded
from gnn_lic.nn.banded import banded_residual, row_bands, use_bands
from gnn_lic.nn.blocks import GatedFFN, GFABlock, LayerNorm2d


def test_band_pixels_bound_the_hidden_tensor():
    assert banded.band_pixels(1024) * 1024 * 4 <= banded.BAND_BYTES
    assert banded.band_pixels(10**9) == 1


def test_row_bands_cover_every_row_once():
    assert row_bands(10, 4, pixels=12) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert row_bands(3, 100, pixels=10) == [(0, 1), (1, 2), (2, 3)]  # at least one row per band
    assert row_bands(5, 2, pixels=1000) == [(0, 5)]


def test_use_bands_only_without_autograd():
    x = torch.zeros(1, 1, 8, 8)
    assert not use_bands(x, pixels=16)  # autograd on
    with torch.no_grad():
        assert use_bands(x, pixels=16)
        assert not use_bands(x, pixels=64)  # one band
    with torch.inference_mode():
        assert use_bands(x, pixels=16)


def _dw_residual(ffn, norm):
    return lambda t: ffn(norm(t))


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("pixels", [1, 7, 24, 40, 10_000])
def test_banded_residual_with_halo_equals_whole_map(pixels, inplace):
    """A 3x3 depthwise FFN (halo 1): bands of 1 row up to the whole map, the same bits."""
    torch.manual_seed(0)
    ffn, norm = GatedFFN(16, 2.0, depthwise=True), LayerNorm2d(16)
    x = torch.randn(2, 16, 11, 8)
    fn = _dw_residual(ffn, norm)
    with torch.no_grad():
        ref = x + fn(x)
        x_in = x.clone()
        out = banded_residual(x_in, fn, halo=1, pixels=pixels, inplace=inplace)
    assert torch.equal(out, ref)
    assert (out.data_ptr() == x_in.data_ptr()) == inplace
    if not inplace:
        assert torch.equal(x_in, x)


def test_banded_residual_needs_the_halo():
    """Without the halo the band edges read zeros: the check above can fail."""
    torch.manual_seed(0)
    ffn, norm = GatedFFN(8, 2.0, depthwise=True), LayerNorm2d(8)
    x = torch.randn(1, 8, 9, 6)
    fn = _dw_residual(ffn, norm)
    with torch.no_grad():
        assert not torch.equal(banded_residual(x, fn, halo=0, pixels=12), x + fn(x))


def test_gelu_gate_in_place_is_bitwise():
    """Without autograd the gate is computed in place (NCHW) or by the fused pass (channels-last, compiled loops on,
    :mod:`gnn_lic.nn.gate`), as with autograd: bit for bit the autograd path, on either layout, and the formula
    W2 (GELU(a) * b) up to float rounding."""
    torch.manual_seed(0)
    for ffn in (GatedFFN(24, 4), GatedFFN(24, 2, depthwise=True)):
        x = torch.randn(2, 24, 9, 13) * 3
        a, b = ffn.dwconv(ffn.proj_in(x)).chunk(2, 1) if ffn.dwconv is not None else ffn.proj_in(x).chunk(2, 1)
        ref = ffn.proj_out(F.gelu(a) * b)
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            grad_path = ffn(inp)
            with torch.no_grad():
                out = ffn(inp)
            assert torch.equal(out, grad_path)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_ch, make", [(16, lambda: GatedTransformCNN(16, expansion=4)),
                                         (8, lambda: GatedTransformCNN(8, 16)),
                                         (12, lambda: ParameterAggregationBlock(12, 16))])
def test_conv_blocks_banded_equal_whole_map(in_ch, make, monkeypatch):
    torch.manual_seed(0)
    block = make()
    x = torch.randn(2, in_ch, 13, 10)
    grad_path = block(x).detach()  # autograd on: the whole-map path
    hidden = block.ffn.proj_in.out_channels
    with torch.no_grad():
        assert not use_bands(x, banded.band_pixels(hidden))
        ref = block(x)  # the whole map without autograd (the fused gate on channels-last maps)
    torch.testing.assert_close(ref, grad_path, rtol=1e-5, atol=1e-5)
    for pixels in (10, 35, 64):
        monkeypatch.setattr(banded, "BAND_BYTES", pixels * hidden * 4)
        with torch.no_grad():
            assert use_bands(x, banded.band_pixels(hidden))
            assert torch.equal(block(x), ref)


@pytest.mark.parametrize("order", ["local-global", "global"])
def test_gfa_block_banded_equals_whole_map(order, monkeypatch):
    torch.manual_seed(0)
    block = GFABlock(16, 3, mlp_ratio=2.0, heads=2, local=LocalWindow(3), global_=GlobalGrid(4), selector=TopK(4),
                     order=order)
    x = torch.randn(1, 16, 12, 9)
    grad_path = block(x).detach()
    with torch.no_grad():
        ref = block(x)  # one band
        monkeypatch.setattr(banded, "BAND_BYTES", 20 * 64 * 4)  # 20 pixels of the 64 hidden channels
        out = block(x)
    assert torch.equal(out, ref)
    torch.testing.assert_close(ref, grad_path, rtol=1e-5, atol=1e-5)  # the fused gate: float rounding


# --- banded_stage: chains of local layers that change the resolution ---------------------------

from gnn_lic.nn.banded import banded_stage, image_rows, memory_layout, stage_bands  # noqa: E402


def test_stage_bands_fewest_bounded_aligned_and_a_function_of_the_height():
    for H, rows, step in [(512, 256, 4), (64, 256, 4), (40, 16, 4), (3072, 256, 4), (7, 2, 1), (128, 64, 1)]:
        bands = stage_bands(H, rows, step)
        assert bands[0][0] == 0 and bands[-1][1] == H
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))  # every row once
        assert all(r0 % step == 0 for r0, _ in bands)
        assert all(r1 - r0 <= -(-rows // step) * step for r0, r1 in bands)
        assert len(bands) <= -(-H // rows)  # no more bands than the bound needs
        assert (len(bands) == 1) == (H <= rows)
    assert stage_bands(512, 256, 4) == [(0, 256), (256, 512)]


def test_image_rows_bounds_the_image_pixels_of_a_band():
    for pixels, width, stride in [(3 << 20, 768, 1), (3 << 20, 96, 8), (1 << 19, 4032, 1), (1 << 19, 1008, 4), (10, 50, 1)]:
        rows = image_rows(pixels, width, stride)
        assert rows >= 1
        assert rows == 1 or rows * width * stride**2 <= pixels < (rows + 1) * width * stride**2


def _strided_chain(channels=64):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, 3, stride=2, padding=1),
        torch.nn.GELU(),
        torch.nn.Conv2d(channels, channels, 5, padding=2, groups=channels),
        torch.nn.Conv2d(channels, 2 * channels, 1),
        torch.nn.Conv2d(2 * channels, channels, 3, stride=2, padding=1),
    ).eval()


def _upsampling_chain(channels=64):
    torch.manual_seed(1)
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, 4 * channels, 3, padding=1),
        torch.nn.PixelShuffle(2),
        torch.nn.Conv2d(channels, channels, 5, padding=2, groups=channels),
        torch.nn.Conv2d(channels, 12, 3, padding=1),
        torch.nn.PixelShuffle(2),
    ).eval()


# receptive radii in input rows: 1 + 2 * (2 + 1) = 7 for the strided chain; 1 + ceil((2 + 1) / 2) = 3 upsampling
CHAINS = {"strided": (_strided_chain, dict(down=4, halo=7), 96), "upsampling": (_upsampling_chain, dict(up=4, halo=3), 48)}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("threads, fmt", [(1, torch.contiguous_format), (2, torch.contiguous_format),
                                          (2, torch.channels_last)])
def test_banded_stage_equals_the_whole_map(chain, threads, fmt):
    """The whole map's values, and its memory layout (the next layers' kernels depend on it)."""
    make, geometry, H = CHAINS[chain]
    fn = make()
    x = torch.randn(1, 64, H, 96).contiguous(memory_format=fmt)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            ref = fn(x)
            step = geometry.get("down", 1)
            for max_rows in (step * 4, step * 6, H // 2, H):
                out = banded_stage([x], fn, max_rows=max_rows, **geometry)
                assert (len(stage_bands(H, max_rows, step)) >= 2) == (max_rows < H)
                assert torch.equal(out, ref), (chain, max_rows)
                assert memory_layout(out) == memory_layout(ref), (chain, max_rows)
    finally:
        torch.set_num_threads(before)


def test_banded_stage_of_one_band_is_one_call_on_the_whole_map():
    calls = []
    x = torch.randn(1, 3, 32, 5)
    with torch.no_grad():
        out = banded_stage([x], lambda t: calls.append(t.shape) or t * 2, down=4, halo=8, max_rows=32)
    assert calls == [x.shape] and torch.equal(out, x * 2)


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_banded_stage_needs_its_halo(chain):
    make, geometry, H = CHAINS[chain]
    fn = make()
    x = torch.randn(1, 64, H, 96)
    with torch.no_grad():
        out = banded_stage([x], fn, max_rows=geometry.get("down", 1) * 4, **{**geometry, "halo": 0})
        assert (out - fn(x)).abs().max() > 1e-3


def test_banded_stage_several_inputs_and_bad_arguments():
    a, b = torch.randn(1, 4, 12, 5), torch.randn(1, 4, 12, 5)
    with torch.no_grad():
        assert torch.equal(banded_stage([a, b], torch.add, max_rows=2), a + b)
    with pytest.raises(ValueError, match="multiple of 4"):
        banded_stage([torch.zeros(1, 1, 10, 4)], lambda t: t, down=4)
    with pytest.raises(ValueError, match="different heights"):
        banded_stage([a, torch.zeros(1, 4, 11, 5)], torch.add)


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_banded_stage_keeps_the_callers_autograd_mode(mode):
    seen = []

    def fn(t):
        seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return t * 2

    x = torch.randn(1, 2, 16, 3, requires_grad=True)
    with getattr(torch, mode)():
        out = banded_stage([x], fn, max_rows=4)
    assert not out.requires_grad and len(seen) == 4
    assert all(s == (False, mode == "inference_mode") for s in seen)


def test_channels_last_call_keeps_gradients_in_each_sides_layout():
    """fn runs on channels-last memory and so does its backward; the caller's tensors stay NCHW both ways."""
    seen = {}

    def fn(t):
        seen["input"] = t.is_contiguous(memory_format=torch.channels_last)
        y = t * 2 + 1
        if y.requires_grad:
            y.register_hook(lambda g: seen.__setitem__("grad", g.is_contiguous(memory_format=torch.channels_last)))
        return y

    x = torch.randn(2, 5, 4, 3, requires_grad=True)
    y = banded.channels_last_call(fn, x)
    assert seen["input"] and y.is_contiguous() and not y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, x * 2 + 1, rtol=0, atol=0)
    (y * torch.arange(3.0)).sum().backward()  # an NCHW gradient comes back
    assert seen["grad"] and x.grad.is_contiguous()
    torch.testing.assert_close(x.grad, (2 * torch.arange(3.0)).expand(2, 5, 4, 3), rtol=0, atol=0)
    with torch.no_grad():
        assert banded.channels_last_call(fn, x).is_contiguous()


def test_dense_gives_the_strides_of_a_new_tensor():
    """An image read as HWC and permuted is 'channels-last contiguous' with a batch stride of 3: dense() and
    channels_last_call give fn the strides of a fresh channels-last tensor (oneDNN is slow on the others)."""
    img = torch.rand(6, 5, 3).permute(2, 0, 1)[None]  # an HWC image permuted
    assert img.is_contiguous(memory_format=torch.channels_last) and img.stride()[0] == 3
    want = torch.empty(1, 3, 6, 5, memory_format=torch.channels_last).stride()
    got = banded.dense(img, torch.channels_last)
    assert got.stride() == want and torch.equal(got, img)
    y = torch.rand(2, 3, 4, 5)
    assert banded.dense(y) is y and banded.dense(y, torch.channels_last).stride() == (60, 1, 15, 3)
    strides = []
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            out = banded.channels_last_call(lambda t: strides.append(t.stride()) or t + 1, img)
        torch.testing.assert_close(out, img + 1, rtol=0, atol=0)
        assert out.stride() == (90, 30, 5, 1)
    assert strides == [want, want]
