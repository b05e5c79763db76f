"""Winograd F(2x2, 3x3) convolutions: the same function as ``nn.Conv2d`` up to float rounding."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gnn_lic import compiled
from gnn_lic.nn import winograd
from gnn_lic.nn.winograd import WinogradConv2d, filter_tiles, winograd_conv3x3


def _reference(x, weight, bias):
    """The direct convolution in float64: the brute-force sum the transforms must reproduce."""
    return F.conv2d(x.double(), weight.double(), None if bias is None else bias.double(), padding=1)


@pytest.mark.skipif(not compiled.enabled(), reason="the Winograd path is a compiled loop")
@pytest.mark.parametrize("shape", [(1, 5, 7, 9), (2, 3, 4, 4), (1, 4, 1, 1), (3, 6, 6, 3), (1, 2, 2, 5)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_winograd_conv3x3_is_the_convolution(shape, with_bias):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=g)
    weight = torch.randn(4, shape[1], 3, 3, generator=g)
    bias = torch.randn(4, generator=g) if with_bias else None
    got = winograd_conv3x3(x, weight, bias)
    assert got.shape == (shape[0], 4, *shape[2:]) and got.dtype == torch.float32
    assert torch.allclose(got.double(), _reference(x, weight, bias), atol=1e-5, rtol=1e-5)


def test_filter_tiles_is_g_w_gt():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    G = winograd._G.double()
    tiles = filter_tiles(weight)
    for o in range(3):
        for c in range(2):
            assert torch.allclose(tiles[:, o, c].reshape(4, 4), G @ weight[o, c] @ G.t())


@pytest.mark.skipif(not compiled.enabled(), reason="the Winograd path is a compiled loop")
def test_winograd_conv2d_takes_the_winograd_path_without_autograd_only(monkeypatch):
    torch.manual_seed(0)
    conv, plain = WinogradConv2d(6, 5), nn.Conv2d(6, 5, 3, padding=1)
    plain.load_state_dict(conv.state_dict())  # the same parameters and state dict
    assert list(conv.state_dict()) == ["weight", "bias"]
    x = torch.randn(2, 6, 9, 8)
    calls = []
    monkeypatch.setattr(winograd, "winograd_conv3x3", lambda *a: calls.append(1) or winograd_conv3x3(*a))
    monkeypatch.setattr(winograd, "MIN_TILE_PRODUCTS", 1 << 30)
    with torch.no_grad():
        assert torch.equal(conv(x), plain(x)) and not calls  # too small: nn.Conv2d
    monkeypatch.setattr(winograd, "MIN_TILE_PRODUCTS", 0)
    monkeypatch.setattr(winograd, "MAX_TILE_BYTES", 16 * 6 * 2 * 5 * 4 * 4 - 1)  # one byte short of the tiles
    with torch.no_grad():
        assert torch.equal(conv(x), plain(x)) and not calls
    monkeypatch.setattr(winograd, "MAX_TILE_BYTES", 16 * 6 * 2 * 5 * 4 * 4)
    with torch.no_grad():
        got = conv(x)
        assert calls and torch.allclose(got.double(), _reference(x, conv.weight, conv.bias), atol=1e-5, rtol=1e-5)
        assert torch.equal(conv(x.to(memory_format=torch.channels_last)), plain(x.to(memory_format=torch.channels_last)))
    calls.clear()
    y = conv(x)  # autograd on: nn.Conv2d, with its gradients
    y.square().sum().backward()
    assert not calls and torch.equal(y, plain(x)) and conv.weight.grad is not None


def test_winograd_conv2d_is_nn_conv2d_with_the_compiled_loops_off(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_TILE_PRODUCTS", 0)
    torch.manual_seed(1)
    conv = WinogradConv2d(3, 2)
    x = torch.randn(1, 3, 5, 5)
    previous = compiled.set_enabled(False)
    try:
        with torch.no_grad():
            assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    finally:
        compiled.set_enabled(previous)
