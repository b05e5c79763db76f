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
    torch.manual_seed(0)
    for ffn in (GatedFFN(24, 4), GatedFFN(24, 2, depthwise=True)):
        x = torch.randn(2, 24, 9, 13)
        a, b = ffn.dwconv(ffn.proj_in(x)).chunk(2, 1) if ffn.dwconv is not None else ffn.proj_in(x).chunk(2, 1)
        ref = ffn.proj_out(F.gelu(a) * b)
        with torch.no_grad():
            assert torch.equal(ffn(x), ref)


@pytest.mark.parametrize("in_ch, make", [(16, lambda: GatedTransformCNN(16, expansion=4)),
                                         (8, lambda: GatedTransformCNN(8, 16)),
                                         (12, lambda: ParameterAggregationBlock(12, 16))])
def test_conv_blocks_banded_equal_whole_map(in_ch, make, monkeypatch):
    torch.manual_seed(0)
    block = make()
    x = torch.randn(2, in_ch, 13, 10)
    ref = block(x).detach()  # autograd on: the whole-map path
    hidden = block.ffn.proj_in.out_channels
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
    ref = block(x).detach()
    monkeypatch.setattr(banded, "BAND_BYTES", 20 * 64 * 4)  # 20 pixels of the 64 hidden channels
    with torch.no_grad():
        out = block(x)
    assert torch.equal(out, ref)
